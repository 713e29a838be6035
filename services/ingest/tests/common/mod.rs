//! Starting ingest against a test broker, and reading what it published.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::time::Duration;

use ingest::IngestConfig;
use tributary_events::{Envelope, topics};
use tributary_runtime::{RuntimeConfig, Shutdown};
use tributary_testkit::{Record, TestBroker};

pub struct Ingest {
    pub base: String,
    pub admin: String,
    pub running: Option<ingest::Running>,
    pub shutdown: Shutdown,
    pub http: reqwest::Client,
}

impl Ingest {
    /// Polls `/readyz` until it answers 200 (the first broker check has passed).
    pub async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let res = self
                .http
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .unwrap();
            if res.status() == 200 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ingest never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(running) = self.running.take() {
            running.wait().await.unwrap();
        }
    }
}

pub fn config(broker: &TestBroker) -> IngestConfig {
    let mut runtime = RuntimeConfig::defaults();
    runtime.brokers = broker.bootstrap();
    runtime.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    runtime.statsd_addr = "127.0.0.1:9".into();
    // Each test's own idempotency journal (a shared one would restore another test's keys).
    runtime.data_dir = std::env::temp_dir().join(tributary_testkit::unique_name("ingest-data"));
    let mut config = IngestConfig::with_runtime(runtime);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.client_keys = ingest::config::Secret::default();
    config.client_keys_file = None;
    config.rate_limit = 0.0;
    config
}

/// The topics ingest writes, created once per broker.
pub async fn create_topics(broker: &TestBroker) {
    for topic in [
        topics::PRODUCTS,
        topics::PRICES,
        topics::STOCK,
        topics::ACTIVITY,
    ] {
        broker.create_named_topic(topic, 6).await.unwrap();
    }
}

pub async fn start(broker: &TestBroker, config: IngestConfig) -> Ingest {
    create_topics(broker).await;
    let shutdown = Shutdown::new();
    let running = ingest::start(config, shutdown.clone()).await.unwrap();
    Ingest {
        base: format!("http://{}", running.api_addr),
        admin: format!("http://{}", running.admin_addr),
        running: Some(running),
        shutdown,
        http: reqwest::Client::new(),
    }
}

/// Reads `topic` until every id in `ids` was seen; returns those records in topic order.
pub async fn published(
    broker: &TestBroker,
    topic: &str,
    ids: &[String],
) -> Vec<(Record, Envelope)> {
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let records = broker
        .consume_until(&[topic], Duration::from_secs(30), |records| {
            let seen: BTreeSet<String> = records
                .iter()
                .filter_map(|r| r.envelope().ok())
                .map(|e| e.id.to_string())
                .collect();
            wanted.iter().all(|id| seen.contains(*id))
        })
        .await
        .unwrap();
    records
        .into_iter()
        .filter_map(|r| {
            let e = r.envelope().ok()?;
            wanted.contains(e.id.to_string().as_str()).then_some((r, e))
        })
        .collect()
}

pub fn ids(body: &serde_json::Value) -> Vec<String> {
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}
