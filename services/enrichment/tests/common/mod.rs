//! Shared helpers of the enrichment tests: topics, configuration, events, reading results.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};

use enrichment::EnrichmentConfig;
use enrichment::merge::ProductState;
use serde_json::Value;
use tributary_events::{Envelope, Event, Price, Product, ProductDeleted, Stock};
use tributary_runtime::RuntimeConfig;
use tributary_testkit::{Record, TestBroker, unique_name};

/// One test's topics: three co-partitioned inputs and the output.
#[derive(Debug, Clone)]
pub struct Topics {
    pub products: String,
    pub prices: String,
    pub stock: String,
    pub output: String,
    pub group: String,
}

impl Topics {
    pub async fn create(broker: &TestBroker, name: &str, partitions: i32) -> Topics {
        Topics {
            products: broker
                .create_topic(&format!("{name}-products"), partitions)
                .await
                .unwrap(),
            prices: broker
                .create_topic(&format!("{name}-prices"), partitions)
                .await
                .unwrap(),
            stock: broker
                .create_topic(&format!("{name}-stock"), partitions)
                .await
                .unwrap(),
            output: broker
                .create_topic(&format!("{name}-enriched"), partitions)
                .await
                .unwrap(),
            group: unique_name(&format!("{name}-group")),
        }
    }

    pub fn dlq(&self) -> String {
        tributary_events::topics::dlq(&self.group)
    }

    /// The input topic an envelope belongs on.
    pub fn topic_of(&self, envelope: &Envelope) -> &str {
        match envelope.event {
            Event::PriceUpdated(_) => &self.prices,
            Event::StockChanged(_) => &self.stock,
            _ => &self.products,
        }
    }

    /// Environment for the enrichment binary.
    pub fn env(&self, broker: &TestBroker, data_dir: &Path) -> Vec<(String, String)> {
        [
            ("KAFKA_BROKERS", broker.bootstrap()),
            (
                "KAFKA_CONFIG",
                tributary_testkit::DEV_CLIENT_SETTING.to_owned(),
            ),
            ("GROUP_ID", self.group.clone()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("STATSD_ADDR", "127.0.0.1:9".to_owned()),
            ("SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("COMMIT_INTERVAL_MS", "200".to_owned()),
            ("SHUTDOWN_TIMEOUT_MS", "10000".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("ENRICHMENT_PRODUCTS_TOPIC", self.products.clone()),
            ("ENRICHMENT_PRICES_TOPIC", self.prices.clone()),
            ("ENRICHMENT_STOCK_TOPIC", self.stock.clone()),
            ("ENRICHMENT_OUTPUT_TOPIC", self.output.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Test-sized settings for an in-process enrichment.
pub fn config(broker: &TestBroker, topics: &Topics, data_dir: &Path) -> EnrichmentConfig {
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
    let mut config = EnrichmentConfig::with_runtime(runtime);
    config.products_topic = topics.products.clone();
    config.prices_topic = topics.prices.clone();
    config.stock_topic = topics.stock.clone();
    config.output_topic = topics.output.clone();
    config
}

pub fn product(id: &str, name: &str) -> Envelope {
    Envelope::new(
        "test",
        Event::ProductUpserted(Product {
            product_id: id.into(),
            brand_id: "brand-1".into(),
            sku: format!("sku-{id}"),
            name: name.into(),
            category: "shoes".into(),
            description: None,
            attributes: None,
            images: None,
        }),
    )
}

pub fn deleted(id: &str) -> Envelope {
    Envelope::new(
        "test",
        Event::ProductDeleted(ProductDeleted {
            product_id: id.into(),
        }),
    )
}

pub fn price(id: &str, retail: u64) -> Envelope {
    Envelope::new(
        "test",
        Event::PriceUpdated(Price {
            product_id: id.into(),
            currency: "EUR".into(),
            wholesale_minor: retail / 2,
            retail_minor: retail,
        }),
    )
}

pub fn stock(id: &str, quantity: u64) -> Envelope {
    Envelope::new(
        "test",
        Event::StockChanged(Stock {
            product_id: id.into(),
            quantity,
            warehouse: None,
        }),
    )
}

/// Publishes each envelope on its input topic, in order per topic.
pub async fn publish(broker: &TestBroker, topics: &Topics, envelopes: &[Envelope]) {
    for topic in [&topics.products, &topics.prices, &topics.stock] {
        let mine: Vec<Envelope> = envelopes
            .iter()
            .filter(|e| topics.topic_of(e) == topic.as_str())
            .cloned()
            .collect();
        if !mine.is_empty() {
            broker.produce_envelopes(topic, &mine).await.unwrap();
        }
    }
}

/// Reads the output from the start until `done` holds for what arrived.
pub async fn read_output(
    broker: &TestBroker,
    topic: &str,
    deadline: Duration,
    done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    broker
        .consume_until(&[topic], deadline, done)
        .await
        .unwrap()
}

/// The latest record per key: its decoded envelope JSON, or `None` for a tombstone.
pub fn latest(records: &[Record]) -> BTreeMap<String, Option<Value>> {
    let mut out = BTreeMap::new();
    for r in records {
        let value = r
            .value
            .as_deref()
            .map(|v| serde_json::from_slice::<Value>(v).unwrap());
        out.insert(r.key_str().unwrap().to_owned(), value);
    }
    out
}

/// `GET /status`, or `Null` while the admin server does not answer (a process starting).
pub async fn status(admin: SocketAddr) -> Value {
    match reqwest::get(format!("http://{admin}/status")).await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Polls `/status` until every input partition's position reached its high watermark
/// and at least `at_least` messages are behind the positions in total.
pub async fn wait_caught_up(admin: SocketAddr, at_least: i64, deadline: Duration) -> Value {
    let started = Instant::now();
    loop {
        let status = status(admin).await;
        let parts = status["partitions"].as_array().cloned().unwrap_or_default();
        let done: i64 = parts
            .iter()
            .map(|p| p["position"].as_i64().unwrap_or(0))
            .sum();
        let caught_up = !parts.is_empty()
            && parts
                .iter()
                .all(|p| p["lag"].as_i64() == Some(0) && p["in_flight"].as_u64() == Some(0));
        if caught_up && done >= at_least {
            return status;
        }
        assert!(
            started.elapsed() < deadline,
            "not caught up after {deadline:?} (want {at_least} processed); /status:\n{status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every store of `group` under `data_dir`, merged: product id → state.
pub fn stored_states(data_dir: &Path, group: &str) -> BTreeMap<String, ProductState> {
    let dir = data_dir.join(group).join(enrichment::STORE);
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let store = tributary_state::Store::open(&path).unwrap();
        for ((table, key), value) in store.dump().unwrap() {
            assert_eq!(table, enrichment::PRODUCTS.name());
            let previous = out.insert(key.clone(), serde_json::from_value(value).unwrap());
            assert!(previous.is_none(), "{key} is in two partitions' stores");
        }
    }
    out
}

/// The child process, killed if the test fails before it stopped.
pub struct Enrichment {
    pub child: Child,
    pub admin: SocketAddr,
}

impl Drop for Enrichment {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub fn spawn(
    broker: &TestBroker,
    topics: &Topics,
    data_dir: &Path,
    extra: &[(&str, &str)],
) -> Enrichment {
    let admin = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_enrichment"));
    command.envs(topics.env(broker, data_dir));
    command
        .env("ADMIN_ADDR", admin.to_string())
        // A rebalance waits up to max.poll.interval.ms for a known member to rejoin; a
        // killed one never does. The poll thread never waits on processing: 15 s is plenty.
        .env(
            "KAFKA_CONFIG",
            format!(
                "max.poll.interval.ms=15000;{}",
                tributary_testkit::DEV_CLIENT_SETTING
            ),
        )
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("LOG_FORMAT", "pretty")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .envs(extra.iter().copied());
    Enrichment {
        child: command.spawn().unwrap(),
        admin,
    }
}

pub fn terminate(enrichment: &mut Enrichment) {
    let pid = enrichment.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = enrichment.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Input positions finished (summed over partitions), or 0 while the admin port is not up.
pub async fn processed(admin: SocketAddr) -> i64 {
    let Ok(response) = reqwest::get(format!("http://{admin}/status")).await else {
        return 0;
    };
    let Ok(status) = response.json::<serde_json::Value>().await else {
        return 0;
    };
    status["partitions"].as_array().map_or(0, |ps| {
        ps.iter().map(|p| p["position"].as_i64().unwrap_or(0)).sum()
    })
}

/// A seeded stream of `count` updates over `products` products: products, prices and
/// stock mixed.
pub fn updates(seed: u64, count: u64, products: u64) -> Vec<Envelope> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..count)
        .map(|i| {
            let id = format!("p-{}", next() % products);
            match next() % 3 {
                0 => product(&id, &format!("name-{i}")),
                1 => price(&id, next() % 10_000),
                _ => stock(&id, next() % 50),
            }
        })
        .collect()
}

/// Checks the end state of a run over `updates`: each update applied exactly once to the
/// stores, and the enriched topic's latest value per product the merge of its latest facts.
pub async fn check_end_state(
    broker: &'static TestBroker,
    topics: &Topics,
    data_dir: &Path,
    partitions: i32,
    updates: &[Envelope],
) -> BTreeMap<String, ProductState> {
    let expected = expected(updates);
    let states = stored_states(data_dir, &topics.group);
    let applied: u64 = states.values().map(|s| s.updates).sum();
    assert_eq!(
        applied,
        updates.len() as u64,
        "updates applied (more: some twice; fewer: some skipped)"
    );
    assert_eq!(states.len(), expected.len());
    for (id, want) in &expected {
        assert_eq!(states.get(id), Some(want), "state of {id}");
    }
    let records = read_all(broker, &topics.output, partitions).await;
    let latest = latest(&records);
    let with_product = expected.values().filter(|s| s.product.is_some()).count();
    assert_eq!(latest.len(), with_product);
    for (id, state) in &expected {
        let Some(view) = state.view() else { continue };
        let got = latest[id].as_ref().expect("not a tombstone");
        let want = serde_json::to_value(view.enriched(chrono::Utc::now())).unwrap();
        for field in ["name", "price", "stock", "complete"] {
            assert_eq!(got["data"][field], want[field], "{field} of {id}");
        }
    }
    states
}

/// The state every product must end in: the last of each fact, `updates` counting them.
pub fn expected(updates: &[Envelope]) -> BTreeMap<String, ProductState> {
    let mut out: BTreeMap<String, ProductState> = BTreeMap::new();
    for e in updates {
        let state = out.entry(e.key.clone()).or_default();
        state.updates += 1;
        match &e.event {
            Event::ProductUpserted(p) => state.product = Some(p.clone()),
            Event::PriceUpdated(p) => state.price = Some(p.clone()),
            Event::StockChanged(s) => state.stock = Some(s.clone()),
            _ => unreachable!(),
        }
    }
    out
}

/// Every record of `topic`, read up to its high watermarks.
pub async fn read_all(
    broker: &'static TestBroker,
    topic: &str,
    partitions: i32,
) -> Vec<tributary_testkit::Record> {
    let topic_name = topic.to_owned();
    let total: i64 = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = broker.client_config().create().unwrap();
        (0..partitions)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic_name, p, Duration::from_secs(10))
                    .unwrap();
                high - low
            })
            .sum()
    })
    .await
    .unwrap();
    broker
        .consume_count(&[topic], total as usize, Duration::from_secs(120))
        .await
        .unwrap()
}
