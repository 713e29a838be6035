//! Ingest: the HTTP front door of every fact. It validates events (reporting every
//! violation), wraps them in envelopes, and answers 202 only once the broker acknowledged
//! every one; with signing, idempotency keys, size and rate limits and back-pressure.

pub mod body;
pub mod config;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod publish;
pub mod rate;
pub mod signing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tributary_events::TraceParent;
use tributary_runtime::rdkafka::producer::Producer;
use tributary_runtime::{Health, Shutdown, admin, metrics as runtime_metrics};

pub use config::IngestConfig;
use error::ApiError;
use events::{Ids, Route};
use idempotency::{Begin, Store};

/// The admin port of ingest (CONTRACTS.md).
pub const ADMIN_PORT: u16 = 9101;

/// Largest refused body that is still read to the end before answering 413.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Messages the producer queue holds; requests beyond it are answered 503.
const QUEUE_CAPACITY: usize = 100_000;

struct AppState {
    config: IngestConfig,
    verifier: signing::Verifier,
    limiter: rate::RateLimiter,
    idempotency: Arc<Store>,
    publisher: publish::Publisher,
}

/// A started ingest.
#[derive(Debug)]
pub struct Running {
    /// Public API address.
    pub api_addr: SocketAddr,
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Health shared with the admin endpoints.
    pub health: Health,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until ingest stopped (after its shutdown signal fired).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("ingest task")?
    }
}

/// Starts ingest: admin and API servers listen when this returns.
pub async fn start(config: IngestConfig, shutdown: Shutdown) -> anyhow::Result<Running> {
    let runtime = &config.runtime;
    let metrics = runtime_metrics::install(&runtime.metrics_prefix, &runtime.statsd_addr, "ingest");
    let health = Health::new("ingest", None);
    let admin_stop = Shutdown::new();
    let admin_addr = runtime
        .admin_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)));
    let (admin_addr, admin_task) = admin::serve(
        admin_addr,
        admin::router(health.clone(), metrics),
        admin_stop.clone(),
    )
    .await?;

    let keys = config.keys()?;
    if keys.is_empty() {
        tracing::warn!("No client keys configured: the API accepts unsigned requests");
    }
    let mut producer_config = runtime.producer_config("ingest")?;
    let overridden = runtime
        .properties()?
        .iter()
        .any(|(k, _)| k == "message.timeout.ms");
    if !overridden {
        // Give up on a message when the request gives up on it, so a 503 is not followed by
        // a late publication the client does not know about.
        producer_config.set(
            "message.timeout.ms",
            config.publish_timeout_ms.max(1).to_string(),
        );
    }
    producer_config.set("queue.buffering.max.messages", QUEUE_CAPACITY.to_string());
    let producer = Arc::new(publish::producer(&producer_config)?);

    let burst = config.rate_burst.unwrap_or(config.rate_limit.max(1.0));
    let state = Arc::new(AppState {
        verifier: signing::Verifier::new(keys, config.signature_max_age_secs, config.accept_v1),
        limiter: rate::RateLimiter::new(config.rate_limit, burst),
        idempotency: Store::with_journal(
            Duration::from_secs(config.idempotency_window_secs),
            config.idempotency_capacity,
            &config.runtime.data_dir.join("idempotency.journal"),
        ),
        publisher: publish::Publisher::new(
            producer.clone(),
            config.publish_timeout(),
            QUEUE_CAPACITY,
        ),
        config: config.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let api_addr = listener.local_addr()?;
    tracing::info!(api = %api_addr, admin = %admin_addr, "Ingest listening");

    let probe = producer.clone();
    let watch = tokio::spawn(tributary_runtime::watch_broker(
        move || tributary_runtime::kafka::reachable(probe.client()),
        health.clone(),
        shutdown.clone(),
    ));
    let app = router(state);
    let header_timeout = config.body_timeout();
    let task_health = health.clone();
    let task = tokio::spawn(async move {
        // Graceful: stop accepting, let in-flight requests finish (they await their acks).
        let served = serve(listener, app, header_timeout, shutdown.clone()).await;
        task_health.set_shutting_down();
        watch.abort();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "Producer flush incomplete");
        }
        let _ = tokio::task::spawn_blocking(runtime_metrics::flush).await;
        admin_stop.trigger();
        let _ = admin_task.await;
        served.context("API server")
    });
    Ok(Running {
        api_addr,
        admin_addr,
        health,
        task,
    })
}

/// Connections served at once, at most: past it, new connections wait in the listen
/// backlog (each open connection holds a task and buffers).
pub const MAX_CONNECTIONS: usize = 10_000;

/// Serves `app` on `listener` until `shutdown`, then lets in-flight requests finish.
/// Unlike `axum::serve`, hyper runs with a timer, so a client that sends its request
/// headers (or, on a kept-alive connection, its next request) slower than `header_timeout`
/// is disconnected (slow-loris), and open connections are capped.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.wait() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "Cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "Connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    let post_route = |route: Route| {
        move |State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap, body: Body| async move {
            handle(state, route, None, &uri, headers, body).await
        }
    };
    let routes = Router::new()
        .route("/v1/products", post(post_route(Route::Products)))
        .route("/v1/prices", post(post_route(Route::Prices)))
        .route("/v1/stock", post(post_route(Route::Stock)))
        .route("/v1/activity", post(post_route(Route::Activity)))
        .route(
            "/v1/products/{product_id}",
            delete(
                |State(state): State<Arc<AppState>>,
                 Path(product_id): Path<String>,
                 uri: Uri,
                 headers: HeaderMap,
                 body: Body| async move {
                    handle(
                        state,
                        Route::DeleteProduct,
                        Some(product_id),
                        &uri,
                        headers,
                        body,
                    )
                    .await
                },
            ),
        )
        .with_state(state);
    // Unknown paths and methods answer in JSON like every other error.
    admin::json_fallbacks(routes)
}

async fn handle(
    state: Arc<AppState>,
    route: Route,
    product_id: Option<String>,
    uri: &Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = match accept(&state, route, product_id, uri, &headers, body).await {
        Ok(body) => (StatusCode::ACCEPTED, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    };
    metrics::counter!("ingest.requests", "route" => route.label(), "status" => status_label(response.status()))
        .increment(1);
    metrics::histogram!("ingest.request.seconds", "route" => route.label())
        .record(started.elapsed().as_secs_f64());
    response
}

/// The status as a metric label, without allocating for the statuses ingest answers with.
fn status_label(status: StatusCode) -> metrics::SharedString {
    let known = match status.as_u16() {
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        503 => "503",
        _ => return status.as_u16().to_string().into(),
    };
    known.into()
}

async fn accept(
    state: &AppState,
    route: Route,
    product_id: Option<String>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    let now = Utc::now();
    let method = if route == Route::DeleteProduct {
        Method::DELETE
    } else {
        Method::POST
    };
    // Refused before a byte of the body is read: a signature header that is missing,
    // malformed, oversized or stale.
    state.verifier.precheck(headers, &method, now.timestamp())?;
    let limit = state.config.max_body_bytes;
    let too_large = || ApiError::TooLarge(format!("the body is larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        // Without signing, read and drop what the client is already sending (up to a
        // bound), so it reads our 413 instead of a connection reset while it still writes.
        // With signing, nothing of an unauthenticated body is read beyond what is needed.
        if n <= DRAIN_LIMIT && !state.verifier.enabled() {
            let _ = tokio::time::timeout(
                state.config.body_timeout(),
                axum::body::to_bytes(body, DRAIN_LIMIT),
            )
            .await;
        }
        return Err(too_large());
    }
    // A body trickled in byte by byte (slow-loris) is cut off at the deadline.
    let bytes = match tokio::time::timeout(
        state.config.body_timeout(),
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Ok(read) => read.map_err(|_| too_large())?,
        Err(_) => {
            return Err(ApiError::Timeout(format!(
                "the body did not arrive within {} ms",
                state.config.body_timeout_ms
            )));
        }
    };
    metrics::histogram!("ingest.body.bytes").record(bytes.len() as f64);

    let signed = signing::Signed {
        method: &method,
        path_and_query: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        body: &bytes,
    };
    let client = state.verifier.verify(headers, signed, now.timestamp())?;
    let client_label = client.clone().unwrap_or_else(|| "anonymous".to_owned());
    state
        .limiter
        .check(&client_label)
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;

    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if let Some(key) = idempotency_key {
        if key.len() > 255 {
            return Err(ApiError::Validation(vec![error::Detail {
                index: 0,
                path: String::new(),
                message: "the Idempotency-Key header is longer than 255 characters".into(),
            }]));
        }
        let store_key = (client_label.clone(), format!("{}:{key}", route.label()));
        // Each part length-prefixed: (product "ab", body "") and (product "a", body "b")
        // must differ.
        let mut fingerprint = Sha256::new();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map_or(&[][..], |v| v.as_bytes());
        for part in [
            route.label().as_bytes(),
            product_id.as_deref().unwrap_or("").as_bytes(),
            content_type,
            &bytes[..],
        ] {
            fingerprint.update((part.len() as u64).to_be_bytes());
            fingerprint.update(part);
        }
        let fingerprint: [u8; 32] = fingerprint.finalize().into();
        let derive = |accepted_at_ms: u64| Ids::Derived {
            client: client_label.clone(),
            key: store_key.1.clone(),
            fingerprint,
            accepted_at_ms,
        };
        let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let running = match state
            .idempotency
            .begin(&store_key, fingerprint, now_ms)
            .await
        {
            // The first answer, its ids derived again from its acceptance time.
            Begin::Replay {
                accepted,
                accepted_at_ms,
            } => {
                let ids = derive(accepted_at_ms);
                return Ok(answer((0..accepted).map(|i| ids.id(i))));
            }
            Begin::Conflict => return Err(ApiError::IdempotencyConflict),
            Begin::Proceed(running) => running,
        };
        // The ids' time part is the envelopes' time: the first attempt's, for a retry of a
        // request that failed (a 503 after an acknowledgement timeout may have been
        // published: the copies then share ids and content).
        let accepted_at_ms = running.accepted_at_ms();
        let ids = derive(accepted_at_ms);
        let now = i64::try_from(accepted_at_ms)
            .ok()
            .and_then(chrono::DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or(now);
        // Dropped without completing (an error, or this handler dropped mid-flight), the
        // key is forgotten and waiting retries run for real.
        let result = publish(state, route, product_id, headers, &bytes, now, &ids).await;
        if let Ok(body) = &result {
            running.complete(body["accepted"].as_u64().unwrap_or(0) as usize);
        }
        return result;
    }
    publish(state, route, product_id, headers, &bytes, now, &Ids::Fresh).await
}

async fn publish(
    state: &AppState,
    route: Route,
    product_id: Option<String>,
    headers: &HeaderMap,
    bytes: &[u8],
    now: chrono::DateTime<Utc>,
    ids: &Ids,
) -> Result<Value, ApiError> {
    let values = match product_id {
        Some(id) => vec![json!({"product_id": id})],
        None => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let format = body::format(content_type)?;
            body::events(bytes, format, state.config.max_events)?
        }
    };
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map_or_else(TraceParent::new_root, |parent| parent.child());
    let count = values.len() as u64;
    let envelopes = match events::envelopes(route, values, now, trace, ids) {
        Ok(envelopes) => envelopes,
        Err(e) => {
            // One invalid event rejects the request: every event of it counts as rejected.
            metrics::counter!("ingest.events.rejected", "type" => route.type_label())
                .increment(count);
            return Err(e);
        }
    };
    let publishing = Instant::now();
    state.publisher.publish(&envelopes).await?;
    metrics::histogram!("ingest.publish.seconds").record(publishing.elapsed().as_secs_f64());
    // One increment per type and request, not per event: each increment is a StatsD line.
    let mut by_type: Vec<(&'static str, u64)> = Vec::new();
    for envelope in &envelopes {
        let name = envelope.event_type().name();
        match by_type.iter_mut().find(|(t, _)| *t == name) {
            Some((_, n)) => *n += 1,
            None => by_type.push((name, 1)),
        }
    }
    for (name, n) in by_type {
        metrics::counter!("ingest.events.accepted", "type" => name).increment(n);
    }
    Ok(answer(envelopes.iter().map(|e| e.id)))
}

/// The 202 body: how many events were accepted, and their ids.
fn answer(ids: impl Iterator<Item = ulid::Ulid>) -> Value {
    let ids: Vec<String> = ids.map(|id| id.to_string()).collect();
    json!({"accepted": ids.len(), "ids": ids})
}
