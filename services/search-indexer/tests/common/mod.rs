//! Shared helpers of the search-indexer tests: topics, configuration, events, the search API
//! and the binary as a child process.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use search_indexer::SearchConfig;
use serde_json::Value;
use tributary_events::{
    Dimension, EnrichedProduct, Envelope, Event, Price, Product, WindowAggregate, WindowSize,
};
use tributary_runtime::RuntimeConfig;
use tributary_testkit::{RawRecord, TestBroker, unique_name};

/// One test's topics and group.
#[derive(Debug, Clone)]
pub struct Topics {
    pub products: String,
    pub aggregates: String,
    pub group: String,
}

impl Topics {
    pub async fn create(broker: &TestBroker, name: &str, partitions: i32) -> Topics {
        Topics {
            products: broker
                .create_topic(&format!("{name}-enriched"), partitions)
                .await
                .unwrap(),
            aggregates: broker
                .create_topic(&format!("{name}-aggregates"), partitions)
                .await
                .unwrap(),
            group: unique_name(&format!("{name}-group")),
        }
    }

    pub fn dlq(&self) -> String {
        tributary_events::topics::dlq(&self.group)
    }

    /// Environment for the search-indexer binary.
    pub fn env(&self, broker: &TestBroker, data_dir: &Path) -> Vec<(String, String)> {
        [
            ("KAFKA_BROKERS", broker.bootstrap()),
            (
                "KAFKA_CONFIG",
                format!(
                    "max.poll.interval.ms=15000;{}",
                    tributary_testkit::DEV_CLIENT_SETTING
                ),
            ),
            ("GROUP_ID", self.group.clone()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("STATSD_ADDR", "127.0.0.1:9".to_owned()),
            ("SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("COMMIT_INTERVAL_MS", "200".to_owned()),
            ("SHUTDOWN_TIMEOUT_MS", "10000".to_owned()),
            ("LOG_FORMAT", "pretty".to_owned()),
            ("SEARCH_PRODUCTS_TOPIC", self.products.clone()),
            ("SEARCH_AGGREGATES_TOPIC", self.aggregates.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Test-sized settings for an in-process search-indexer.
pub fn config(broker: &TestBroker, topics: &Topics, data_dir: &Path) -> SearchConfig {
    let mut runtime = RuntimeConfig::defaults();
    runtime.brokers = broker.bootstrap();
    runtime.group_id = Some(topics.group.clone());
    runtime.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    runtime.statsd_addr = "127.0.0.1:9".into();
    runtime.session_timeout_ms = 6000;
    runtime.commit_interval_ms = 200;
    runtime.shutdown_timeout_ms = 10_000;
    runtime.data_dir = data_dir.to_owned();
    runtime.kafka_config = vec![tributary_testkit::DEV_CLIENT_SETTING.into()];
    let mut config = SearchConfig::with_runtime(runtime);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.products_topic = topics.products.clone();
    config.aggregates_topic = topics.aggregates.clone();
    config
}

/// A catalogue entry of the tests.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub name: String,
    pub brand: String,
    pub category: String,
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub retail: u64,
    pub stock: u64,
}

impl Item {
    pub fn new(id: &str, name: &str, brand: &str, category: &str, retail: u64, stock: u64) -> Item {
        Item {
            id: id.into(),
            name: name.into(),
            brand: brand.into(),
            category: category.into(),
            description: None,
            attributes: BTreeMap::new(),
            retail,
            stock,
        }
    }

    pub fn product(&self) -> Product {
        Product {
            product_id: self.id.clone(),
            brand_id: self.brand.clone(),
            sku: format!("sku-{}", self.id),
            name: self.name.clone(),
            category: self.category.clone(),
            description: self.description.clone(),
            attributes: (!self.attributes.is_empty()).then(|| self.attributes.clone()),
            images: None,
        }
    }

    /// The enriched product: complete unless `complete` is false (then without stock).
    pub fn enriched(&self, complete: bool) -> Envelope {
        Envelope::new(
            "test",
            Event::ProductEnriched(EnrichedProduct {
                product: self.product(),
                price: Some(Price {
                    product_id: self.id.clone(),
                    currency: "EUR".into(),
                    wholesale_minor: self.retail / 2,
                    retail_minor: self.retail,
                }),
                stock: complete.then_some(self.stock),
                complete,
                updated_at: Utc::now(),
            }),
        )
    }
}

/// A product's 1-hour window with these counts.
pub fn hour(product: &str, start: DateTime<Utc>, views: u64, carts: u64, units: u64) -> Envelope {
    Envelope::new(
        "test",
        Event::WindowAggregated(WindowAggregate {
            dim: Dimension::Product,
            id: product.into(),
            window: WindowSize::Hour,
            start,
            end: start + chrono::Duration::hours(1),
            views,
            carts,
            orders: units.min(1),
            units,
            revenue_minor: units * 100,
            currency: (units > 0).then(|| "EUR".to_owned()),
            is_final: false,
        }),
    )
}

pub async fn publish(broker: &TestBroker, topic: &str, envelopes: &[Envelope]) {
    broker.produce_envelopes(topic, envelopes).await.unwrap();
}

pub async fn tombstone(broker: &TestBroker, topic: &str, key: &str) {
    let record = RawRecord {
        key: Some(key.as_bytes().to_vec()),
        value: None,
        headers: Vec::new(),
    };
    broker.produce_raw(topic, &[record]).await.unwrap();
}

/// `GET` a path of `base`: status and JSON body (`Null` when the body is not JSON).
pub async fn get(base: SocketAddr, path_and_query: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{base}{path_and_query}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET /v1/search?<query>`, asserting a 200.
pub async fn search(api: SocketAddr, query: &str) -> Value {
    let (status, body) = get(api, &format!("/v1/search?{query}")).await;
    assert_eq!(status, 200, "search {query}: {body}");
    body
}

/// Polls a search until `done` holds for its answer; returns that answer.
pub async fn search_until(
    api: SocketAddr,
    query: &str,
    deadline: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(format!("http://{api}/v1/search?{query}")).await {
            if response.status() == 200 {
                let body: Value = response.json().await.unwrap();
                if done(&body) {
                    return body;
                }
                assert!(
                    started.elapsed() < deadline,
                    "search {query} never satisfied its condition; last answer {body:#}"
                );
            }
        }
        assert!(
            started.elapsed() < deadline,
            "search {query} never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The product ids of a search answer's hits, in order.
pub fn ids(body: &Value) -> Vec<String> {
    body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["product_id"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /status`, or `Null` while the admin server does not answer.
pub async fn status(admin: SocketAddr) -> Value {
    match reqwest::get(format!("http://{admin}/status")).await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// A value of `/metrics` (Prometheus text): the sum of every series of `name`.
pub async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{admin}/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|series| series == name)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The search-indexer binary, a child process.
#[derive(Debug)]
pub struct Indexer {
    pub child: Child,
    pub admin: SocketAddr,
    pub api: SocketAddr,
}

pub fn spawn(
    broker: &TestBroker,
    topics: &Topics,
    data_dir: &Path,
    extra: &[(&str, &str)],
) -> Indexer {
    let (admin, api) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_search-indexer"));
    command
        .envs(topics.env(broker, data_dir))
        .env("ADMIN_ADDR", admin.to_string())
        .env("SEARCH_ADDR", api.to_string())
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .envs(extra.iter().copied());
    Indexer {
        child: command.spawn().unwrap(),
        admin,
        api,
    }
}

pub fn terminate(process: &mut Indexer) {
    let pid = process.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
