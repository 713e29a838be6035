//! Aggregation: per product and per brand, how many views, cart additions, orders, units
//! and how much revenue in each minute and each hour of event time, kept in effectively-once
//! state (crates/state) and published to `analytics.aggregates.v1`; served on the
//! aggregates API from the partitions this instance owns.
//!
//! Activity and products are co-partitioned by `product_id`; a brand's activity is re-keyed
//! through `aggregation.by-brand.repartition` (same partition count), whose partition p is
//! part of the same task as partition p of the other two.

pub mod aggregator;
pub mod api;
pub mod owners;
pub mod window;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tributary_events::topics;
use tributary_runtime::topics::TopicSpec;
use tributary_runtime::{Batching, RuntimeConfig, ServiceSpec, Shutdown};
use tributary_state::Stateful;

use aggregator::{Aggregator, Settings};

/// The service name: default group id, client id and metrics tag.
pub const NAME: &str = "aggregation";

/// The admin port of aggregation (CONTRACTS.md).
pub const ADMIN_PORT: u16 = 9103;

/// The store's name: the changelog is `<group>.windows-v2.changelog`. (v2: window keys
/// ordered by time; a store of the first layout is left alone, not misread.)
pub const STORE: &str = "windows-v2";

/// The internal topic activity is re-keyed by brand through.
pub const REPARTITION_TOPIC: &str = "aggregation.by-brand.repartition";

/// Aggregation's settings.
#[derive(Debug, Clone, Args)]
pub struct AggregationConfig {
    /// Settings shared by every service.
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// Where the aggregates API listens.
    #[arg(
        long = "listen",
        env = "AGGREGATION_ADDR",
        default_value = "0.0.0.0:8082"
    )]
    pub listen: SocketAddr,
    /// The address other instances give for keys this one serves (published on
    /// `<group>.instances`); default `http://<listen address, or the host name when it
    /// listens on all>:<port>`.
    #[arg(long, env = "AGGREGATION_ADVERTISED_URL")]
    pub advertised_url: Option<String>,
    /// Activity topic (input).
    #[arg(long, env = "AGGREGATION_ACTIVITY_TOPIC", default_value = topics::ACTIVITY)]
    pub activity_topic: String,
    /// Products topic (input: each product's brand).
    #[arg(long, env = "AGGREGATION_PRODUCTS_TOPIC", default_value = topics::PRODUCTS)]
    pub products_topic: String,
    /// Internal topic re-keying activity by brand (created with the activity topic's
    /// partition count).
    #[arg(long, env = "AGGREGATION_REPARTITION_TOPIC", default_value = REPARTITION_TOPIC)]
    pub repartition_topic: String,
    /// Aggregates topic (output).
    #[arg(long, env = "AGGREGATION_OUTPUT_TOPIC", default_value = topics::AGGREGATES)]
    pub output_topic: String,
    /// How late (event time behind the latest seen) an event may arrive for its window, ms.
    #[arg(long, env = "AGGREGATION_GRACE_MS", default_value_t = 300_000)]
    pub grace_ms: u64,
    /// How far the brand windows' clock may trail the most advanced activity partition,
    /// ms. Brand windows are judged by the slowest activity partition's event time (an
    /// event on time for its product is on time for its brand, however unevenly the
    /// partitions are read); a partition further behind than this, or gone quiet, stops
    /// holding the clock back, so brand windows still close.
    #[arg(long, env = "AGGREGATION_MAX_SKEW_MS", default_value_t = 900_000)]
    pub max_skew_ms: u64,
    /// A partition's changed windows are flushed to the topic at most this often (each
    /// once per flush), ms.
    #[arg(long, env = "AGGREGATION_INTERIM_MS", default_value_t = 1_000)]
    pub interim_ms: u64,
    /// How long a closed window stays queryable after its end, ms.
    #[arg(long, env = "AGGREGATION_RETENTION_MS", default_value_t = 86_400_000)]
    pub retention_ms: u64,
    /// Activity events held for products not yet known, per partition, at most; more are
    /// dead-lettered.
    #[arg(long, env = "AGGREGATION_MAX_HELD", default_value_t = 100_000)]
    pub max_held: u64,
    /// How long an activity event's id is remembered, ms of id time: a copy of it arriving
    /// within this (ingest publishing a request again after a crash, with the same ids) is
    /// not counted twice. 0 turns de-duplication off.
    #[arg(long, env = "AGGREGATION_DEDUPE_MS", default_value_t = 600_000)]
    pub dedupe_ms: u64,
    /// Messages per state commit (per partition), at most. Under a backlog a larger batch
    /// writes a busy window once per commit rather than once per 1,000 messages; at light
    /// load `STATE_BATCH_MS` ends batches first.
    #[arg(long, env = "STATE_BATCH_MESSAGES", default_value_t = 10_000)]
    pub batch_messages: usize,
    /// Milliseconds a state commit waits for more messages, at most.
    #[arg(long, env = "STATE_BATCH_MS", default_value_t = 100)]
    pub batch_ms: u64,
}

impl AggregationConfig {
    /// The defaults around `runtime`.
    pub fn with_runtime(runtime: RuntimeConfig) -> AggregationConfig {
        AggregationConfig {
            runtime,
            listen: "0.0.0.0:8082".parse().expect("a socket address"),
            advertised_url: None,
            activity_topic: topics::ACTIVITY.to_owned(),
            products_topic: topics::PRODUCTS.to_owned(),
            repartition_topic: REPARTITION_TOPIC.to_owned(),
            output_topic: topics::AGGREGATES.to_owned(),
            grace_ms: 300_000,
            max_skew_ms: 900_000,
            interim_ms: 1_000,
            retention_ms: 86_400_000,
            max_held: 100_000,
            dedupe_ms: 600_000,
            batch_messages: 10_000,
            batch_ms: 100,
        }
    }
}

/// A started aggregation.
#[derive(Debug)]
pub struct Running {
    /// The consumer service (admin address, health).
    pub service: tributary_runtime::Running,
    /// Where the aggregates API listens.
    pub api_addr: SocketAddr,
    api: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the service stopped (after its shutdown signal fired).
    pub async fn wait(self) -> Result<(), tributary_runtime::RuntimeError> {
        let result = self.service.wait().await;
        let _ = self.api.await;
        result
    }
}

/// Creates the repartition topic with the activity topic's partition count; returns that
/// count.
async fn ensure_repartition_topic(config: &AggregationConfig) -> anyhow::Result<i32> {
    let admin = config.runtime.admin_config(NAME)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let partitions = loop {
        let counts = tributary_runtime::topics::partition_counts(&admin)
            .await
            .context("reading the cluster's topics")?;
        if let Some(count) = counts.get(&config.activity_topic) {
            if let Some(existing) = counts.get(&config.repartition_topic) {
                anyhow::ensure!(
                    existing == count,
                    "{} has {existing} partitions and {} has {count}: they must be equal (a brand's events are re-keyed through it by partition)",
                    config.repartition_topic,
                    config.activity_topic
                );
            }
            break *count;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "input topic {} does not exist",
            config.activity_topic
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let spec = TopicSpec::new(&config.repartition_topic, partitions)
        // Internal and transient: a week covers any outage the service recovers from.
        .with_config("retention.ms", "604800000");
    tributary_runtime::topics::apply(&admin, &[spec], -1, false)
        .await
        .context("creating the repartition topic")?;
    Ok(partitions)
}

/// `http://<host>:<port>` of the API: the address it listens on, or the machine's host name
/// (`HOSTNAME`, `/etc/hostname`) when it listens on every interface.
fn default_url(api: SocketAddr) -> String {
    let host = if api.ip().is_unspecified() {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    } else {
        match api.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("http://{host}:{}", api.port())
}

/// Starts aggregation; its admin server and API listen when this returns.
pub async fn start(config: AggregationConfig, shutdown: Shutdown) -> anyhow::Result<Running> {
    let partitions = ensure_repartition_topic(&config).await?;
    let inputs = [
        config.activity_topic.as_str(),
        config.products_topic.as_str(),
        config.repartition_topic.as_str(),
    ];
    let spec = ServiceSpec::new(NAME, &inputs, ADMIN_PORT);
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let settings = Settings {
        activity: config.activity_topic.clone(),
        products: config.products_topic.clone(),
        repartition: config.repartition_topic.clone(),
        output: config.output_topic.clone(),
        grace_ms: ms(config.grace_ms),
        max_skew_ms: ms(config.max_skew_ms),
        activity_partitions: partitions,
        interim_ms: ms(config.interim_ms),
        retention_ms: ms(config.retention_ms),
        max_held: ms(config.max_held),
        dedupe_ms: ms(config.dedupe_ms),
        batching: Batching {
            max_messages: config.batch_messages.max(1),
            max_wait: Duration::from_millis(config.batch_ms.max(1)),
        },
    };
    let processor = Stateful::new(STORE, Aggregator::new(settings));
    let reader = processor.reader();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let api_addr = listener.local_addr()?;
    let url = config
        .advertised_url
        .clone()
        .unwrap_or_else(|| default_url(api_addr));
    let owners = owners::start(
        &config.runtime,
        NAME,
        &url,
        reader.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the instances registry")?;
    let service = tributary_runtime::start(spec, config.runtime, processor, shutdown.clone())
        .await
        .context("starting aggregation")?;
    let app = api::router(api::Api {
        reader,
        partitions,
        health: service.health.clone(),
        owners,
    });
    let api = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Aggregates API stopped");
        }
    });
    tracing::info!(addr = %api_addr, "Aggregates API listening");
    Ok(Running {
        service,
        api_addr,
        api,
    })
}
