//! The admin HTTP surface every service exposes: `/healthz`, `/readyz`, `/metrics`, `/status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};

use crate::metrics::MetricsHandle;
use crate::shutdown::Shutdown;

/// What `/status` reports for one assigned partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to be processed (everything before it is finished).
    pub position: Option<i64>,
    /// The partition's high watermark, as last seen.
    pub high_watermark: Option<i64>,
    /// `high_watermark - position`.
    pub lag: Option<i64>,
    /// Messages read and not yet finished.
    pub in_flight: usize,
    /// `assigning` (paused until the processor's assignment hook returns), `running`,
    /// `throttled` (paused at its in-flight budget) or `stuck` (see `problem`).
    pub state: String,
    /// Why the partition cannot make progress, while it cannot (deliveries failing, the
    /// assignment hook or a batch commit failing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// How often the fetch stream skipped offsets forward (compaction, transaction
    /// markers).
    pub offset_gaps: u64,
}

#[derive(Debug, Default)]
struct Inner {
    needs_assignment: bool,
    partitions: BTreeMap<(String, i32), PartitionStatus>,
    broker_reachable: bool,
    shutting_down: bool,
    blockers: BTreeMap<String, String>,
    dlq_topic: Option<String>,
    dead_letters: u64,
    extra: BTreeMap<String, Value>,
}

/// Health and status shared between a service's tasks and its admin endpoints.
#[derive(Debug, Clone)]
pub struct Health {
    service: String,
    group: Option<String>,
    inner: Arc<Mutex<Inner>>,
}

impl Health {
    /// Health of a consumer service: ready only with partitions assigned.
    pub fn consumer(service: &str, group: &str, dlq_topic: &str) -> Health {
        let health = Health::new(service, Some(group));
        {
            let mut inner = health.lock();
            inner.needs_assignment = true;
            inner.dlq_topic = Some(dlq_topic.to_owned());
        }
        health
    }

    /// Health of a service without a consumer group (ingest): ready when the broker is.
    pub fn new(service: &str, group: Option<&str>) -> Health {
        Health {
            service: service.to_owned(),
            group: group.map(str::to_owned),
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent (plain data);
        // recover rather than take the admin endpoints down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whether the broker answers.
    pub fn set_broker_reachable(&self, reachable: bool) {
        self.lock().broker_reachable = reachable;
    }

    /// Replaces the set of assigned partitions.
    pub fn set_partitions(&self, partitions: Vec<PartitionStatus>) {
        self.lock().partitions = partitions
            .into_iter()
            .map(|p| ((p.topic.clone(), p.partition), p))
            .collect();
    }

    /// Marks the service as stopping: no longer ready.
    pub fn set_shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    /// Blocks readiness for a named reason (e.g. `restore`), or clears it with `None`.
    pub fn set_blocker(&self, name: &str, reason: Option<String>) {
        let mut inner = self.lock();
        match reason {
            Some(reason) => inner.blockers.insert(name.to_owned(), reason),
            None => inner.blockers.remove(name),
        };
    }

    /// Counts a dead letter.
    pub fn add_dead_letter(&self) {
        self.lock().dead_letters += 1;
    }

    /// Sets a service-specific `/status` field (store size, index size, ...).
    pub fn set_extra(&self, key: &str, value: Value) {
        self.lock().extra.insert(key.to_owned(), value);
    }

    /// Why the service is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let inner = self.lock();
        let mut reasons = Vec::new();
        if inner.shutting_down {
            reasons.push("shutting down".to_owned());
        }
        if !inner.broker_reachable {
            reasons.push("broker unreachable".to_owned());
        }
        if inner.needs_assignment && inner.partitions.is_empty() {
            reasons.push("no partitions assigned".to_owned());
        }
        for p in inner.partitions.values() {
            if let Some(problem) = &p.problem {
                reasons.push(format!(
                    "partition {}/{} stuck: {problem}",
                    p.topic, p.partition
                ));
            } else if p.state == "assigning" {
                reasons.push(format!(
                    "partition {}/{} assigning (state not restored yet)",
                    p.topic, p.partition
                ));
            }
        }
        reasons.extend(inner.blockers.values().cloned());
        reasons
    }

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let inner = self.lock();
        let mut doc = json!({
            "service": self.service,
            "group": self.group,
            "partitions": inner.partitions.values().collect::<Vec<_>>(),
            "broker_reachable": inner.broker_reachable,
        });
        if let Some(topic) = &inner.dlq_topic {
            doc["dlq"] = json!({"topic": topic, "count": inner.dead_letters});
        }
        for (k, v) in &inner.extra {
            doc[k] = v.clone();
        }
        doc
    }
}

/// Where the admin endpoints read the service's health: one fixed [`Health`], or whichever
/// is current for a service that swaps its consumer (the search-indexer's rebuild).
type HealthSource = Arc<dyn Fn() -> Health + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    health: HealthSource,
    metrics: MetricsHandle,
}

/// The admin routes; a service may merge its own (the metrics-emitter adds `/lag`).
pub fn router(health: Health, metrics: MetricsHandle) -> Router {
    router_with(move || health.clone(), metrics)
}

/// The admin routes over the health `current` returns at each request: for a service whose
/// consumer (and so its health) is replaced while the admin port stays up.
pub fn router_with<F>(current: F, metrics: MetricsHandle) -> Router
where
    F: Fn() -> Health + Send + Sync + 'static,
{
    let health: HealthSource = Arc::new(current);
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json200(json!({"status": "alive"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .with_state(AdminState { health, metrics })
}

struct Json200(Value);

impl IntoResponse for Json200 {
    fn into_response(self) -> Response {
        (StatusCode::OK, axum::Json(self.0)).into_response()
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let reasons = (state.health)().not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, axum::Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    axum::Json((state.health)().status()).into_response()
}

/// Answers unknown paths (404) and unsupported methods (405, with `Allow`) with a JSON body
/// naming the problem, like every other error of the suite. Apply after every route is
/// added: the 405 answer covers the routes registered so far.
pub fn json_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "not_found", "message": "no such endpoint"})),
            )
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(json!({
                    "error": "method_not_allowed",
                    "message": format!("{method} is not supported here; see the Allow header"),
                })),
            )
        })
}

/// Binds `addr` (port 0 picks a free port) and serves `router` (with JSON 404 and 405
/// answers) until `shutdown`; returns the bound address and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = json_fallbacks(router);
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
    });
    Ok((bound, task))
}
