//! Metrics-emitter: turns every business fact on the topics into a DogStatsD metric, and
//! watches the lag of every consumer group on the cluster with Burrow's rules (`GET /lag`
//! on its admin port, and gauges an autoscaler can follow).

pub mod business;
pub mod config;
pub mod monitor;

/// Burrow's rules, shared with `trib lag`.
pub use tributary_cluster::lag::rules;

use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use tributary_events::topics;
use tributary_runtime::{ServiceSpec, Shutdown};

pub use config::EmitterConfig;
use monitor::{LagMonitor, LagReport};

/// The service name: default group id, client id and metrics tag.
pub const NAME: &str = "metrics-emitter";

/// The admin port of metrics-emitter (CONTRACTS.md).
pub const ADMIN_PORT: u16 = 9105;

/// Every topic that carries envelopes (ARCHITECTURE.md section 3).
pub const INPUTS: [&str; 6] = topics::ALL;

/// A started metrics-emitter.
#[derive(Debug)]
pub struct Running {
    /// The consumer service (admin address, health).
    pub service: tributary_runtime::Running,
    monitor: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the service stopped (after its shutdown signal fired).
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = self.service.wait().await;
        let _ = self.monitor.await;
        result.context("metrics-emitter")
    }
}

/// Starts the business-metrics consumer on `inputs` and the lag monitor; the admin server
/// (with `/lag`) listens when this returns.
pub async fn start_with_inputs(
    config: EmitterConfig,
    inputs: &[&str],
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let report = Arc::new(RwLock::new(LagReport::default()));
    let mut spec = ServiceSpec::new(NAME, inputs, ADMIN_PORT);
    let served = report.clone();
    spec.admin_routes = Some(Router::new().route(
        "/lag",
        get(move || {
            let report = served.read().unwrap_or_else(|e| e.into_inner()).clone();
            async move { axum::Json(report) }
        }),
    ));
    let base = config.runtime.admin_config(NAME)?;
    let cluster = tributary_cluster::ClusterConfig::from_properties(base.config_map())
        .and_then(tributary_cluster::Cluster::new)
        .context("lag monitor client")?;
    let lag_monitor = LagMonitor::new(cluster, config.lag_settings());
    let service = tributary_runtime::start(
        spec,
        config.runtime.clone(),
        business::BusinessMetrics::new(config.max_tag_values),
        shutdown.clone(),
    )
    .await?;
    let monitor = tokio::spawn(watch_lag(
        lag_monitor,
        config.lag_interval(),
        report,
        shutdown,
    ));
    Ok(Running { service, monitor })
}

/// Starts metrics-emitter on every envelope topic.
pub async fn start(config: EmitterConfig, shutdown: Shutdown) -> anyhow::Result<Running> {
    start_with_inputs(config, &INPUTS, shutdown).await
}

/// Observes the cluster every `interval` until `shutdown`, publishing each evaluation to
/// `/lag` and as gauges.
async fn watch_lag(
    mut monitor: LagMonitor,
    interval: std::time::Duration,
    report: Arc<RwLock<LagReport>>,
    shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_triggered() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => break,
        }
        let observed = tokio::select! {
            observed = monitor.observe() => observed,
            _ = shutdown.wait() => break,
        };
        monitor::export(&observed);
        *report.write().unwrap_or_else(|e| e.into_inner()) = observed;
    }
}
