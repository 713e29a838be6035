//! Search-indexer: complete products from `catalog.products-enriched.v1` (with a popularity
//! from `analytics.aggregates.v1`) in a tantivy index whose commits carry the offsets they
//! cover, served by the search API of CONTRACTS.md, and rebuilt blue/green beside the live
//! index on `POST /admin/rebuild` (or `--rebuild`) with no moment where search is down.

pub mod api;
pub mod generations;
pub mod index;
pub mod indexer;
pub mod query;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Args;
use serde_json::json;
use tributary_events::topics;
use tributary_runtime::{RuntimeConfig, RuntimeError, Shutdown, admin};

use generations::{Generations, RebuildError};

/// The service name: default group id, client id and metrics tag.
pub const NAME: &str = "search-indexer";

/// The admin port of search-indexer (CONTRACTS.md).
pub const ADMIN_PORT: u16 = 9104;

/// Search-indexer's settings.
#[derive(Debug, Clone, Args)]
pub struct SearchConfig {
    /// Settings shared by every service.
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// Where the search API listens.
    #[arg(long = "listen", env = "SEARCH_ADDR", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Enriched products topic (input).
    #[arg(long, env = "SEARCH_PRODUCTS_TOPIC", default_value = topics::PRODUCTS_ENRICHED)]
    pub products_topic: String,
    /// Aggregates topic (input: popularity); empty to index without popularity.
    #[arg(long, env = "SEARCH_AGGREGATES_TOPIC", default_value = topics::AGGREGATES)]
    pub aggregates_topic: String,
    /// Index commits at least this far apart, ms: a change is searchable within about
    /// this plus `STATE_BATCH_MS` (each commit also costs a segment and an fsync).
    #[arg(long, env = "SEARCH_COMMIT_MS", default_value_t = 200)]
    pub commit_ms: u64,
    /// Messages per batch (per partition), at most, before its offsets go to a commit.
    #[arg(long, env = "STATE_BATCH_MESSAGES", default_value_t = 5_000)]
    pub batch_messages: usize,
    /// Milliseconds a batch waits for more messages, at most.
    #[arg(long, env = "STATE_BATCH_MS", default_value_t = 100)]
    pub batch_ms: u64,
    /// The index writer's buffer, MB (at least 15).
    #[arg(long, env = "SEARCH_WRITER_MEMORY_MB", default_value_t = 64)]
    pub writer_memory_mb: u64,
    /// Rebuild the index at start: a new generation under a new consumer group from
    /// offset 0, swapped in once caught up (as `POST /admin/rebuild` does).
    #[arg(long)]
    pub rebuild: bool,
}

impl SearchConfig {
    /// The defaults around `runtime`.
    pub fn with_runtime(runtime: RuntimeConfig) -> SearchConfig {
        SearchConfig {
            runtime,
            listen: "0.0.0.0:8081".parse().expect("a socket address"),
            products_topic: topics::PRODUCTS_ENRICHED.to_owned(),
            aggregates_topic: topics::AGGREGATES.to_owned(),
            commit_ms: 200,
            batch_messages: 5_000,
            batch_ms: 100,
            writer_memory_mb: 64,
            rebuild: false,
        }
    }

    /// The input topics.
    pub fn inputs(&self) -> Vec<&str> {
        [self.products_topic.as_str(), self.aggregates_topic.as_str()]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// A started search-indexer.
#[derive(Debug)]
pub struct Running {
    /// Where the admin HTTP server listens.
    pub admin_addr: SocketAddr,
    /// Where the search API listens.
    pub api_addr: SocketAddr,
    /// The index generations.
    pub generations: Arc<Generations>,
    api: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
    admin_stop: Shutdown,
}

impl Running {
    /// Waits until the service stopped (after its shutdown signal fired).
    pub async fn wait(self) -> Result<(), RuntimeError> {
        let result = self.generations.wait().await;
        let _ = self.api.await;
        let _ = tokio::task::spawn_blocking(tributary_runtime::metrics::flush).await;
        self.admin_stop.trigger();
        let _ = self.admin.await;
        result
    }
}

async fn rebuild(State(generations): State<Arc<Generations>>) -> Response {
    match generations.rebuild().await {
        Ok(number) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "rebuild": "started",
                "generation": number,
                "status": "GET /status shows its progress under \"rebuild\"",
            })),
        )
            .into_response(),
        Err(RebuildError::InProgress(number)) => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "error": "rebuild_in_progress",
                "message": format!("generation {number} is being built already; GET /status shows its progress"),
                "generation": number,
            })),
        )
            .into_response(),
        Err(e @ RebuildError::Stopping) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "stopping", "message": e.to_string()})),
        )
            .into_response(),
        Err(e @ RebuildError::Failed(_)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "rebuild_failed", "message": e.to_string()})),
        )
            .into_response(),
    }
}

/// Starts search-indexer; its admin server and API listen when this returns.
pub async fn start(config: SearchConfig, shutdown: Shutdown) -> anyhow::Result<Running> {
    let runtime = config.runtime.clone();
    let metrics =
        tributary_runtime::metrics::install(&runtime.metrics_prefix, &runtime.statsd_addr, NAME);
    let api_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let api_addr = api_listener.local_addr()?;
    let generations = Generations::start(config, shutdown.clone()).await?;

    let live = generations.clone();
    let admin_router = admin::router_with(move || live.live().health.clone(), metrics).merge(
        Router::new()
            .route("/admin/rebuild", post(rebuild))
            .with_state(generations.clone()),
    );
    let admin_stop = Shutdown::new();
    let admin_addr = runtime
        .admin_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)));
    let (admin_addr, admin) = admin::serve(admin_addr, admin_router, admin_stop.clone())
        .await
        .with_context(|| format!("binding the admin address {admin_addr}"))?;

    let live = generations.clone();
    let app = api::router(Arc::new(move || live.live().index.clone()));
    let api_shutdown = shutdown.clone();
    let api = tokio::spawn(async move {
        let served = axum::serve(api_listener, app)
            .with_graceful_shutdown(async move { api_shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Search API stopped");
        }
    });
    tracing::info!(api = %api_addr, admin = %admin_addr, "Search API listening");
    Ok(Running {
        admin_addr,
        api_addr,
        generations,
        api,
        admin,
        admin_stop,
    })
}
