//! Shared helpers of the aggregation tests: topics, configuration, events, the API.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use aggregation::AggregationConfig;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tributary_events::{Activity, ActivityKind, Envelope, Event, Product};
use tributary_runtime::RuntimeConfig;
use tributary_testkit::{TestBroker, unique_name};

/// One test's topics and group.
#[derive(Debug, Clone)]
pub struct Topics {
    pub activity: String,
    pub products: String,
    pub repartition: String,
    pub output: String,
    pub group: String,
}

impl Topics {
    pub async fn create(broker: &TestBroker, name: &str, partitions: i32) -> Topics {
        Topics {
            activity: broker
                .create_topic(&format!("{name}-activity"), partitions)
                .await
                .unwrap(),
            products: broker
                .create_topic(&format!("{name}-products"), partitions)
                .await
                .unwrap(),
            // Created by the service, with the activity topic's partition count.
            repartition: unique_name(&format!("{name}-by-brand")),
            output: broker
                .create_topic(&format!("{name}-aggregates"), partitions)
                .await
                .unwrap(),
            group: unique_name(&format!("{name}-group")),
        }
    }

    pub fn dlq(&self) -> String {
        tributary_events::topics::dlq(&self.group)
    }
}

/// Test-sized settings for an in-process aggregation: a one-second grace period, interim
/// values published on every change.
pub fn config(broker: &TestBroker, topics: &Topics, data_dir: &Path) -> AggregationConfig {
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
    let mut config = AggregationConfig::with_runtime(runtime);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.activity_topic = topics.activity.clone();
    config.products_topic = topics.products.clone();
    config.repartition_topic = topics.repartition.clone();
    config.output_topic = topics.output.clone();
    config.grace_ms = 1_000;
    config.interim_ms = 0;
    config
}

pub fn product(id: &str, brand: &str) -> Envelope {
    Envelope::new(
        "test",
        Event::ProductUpserted(Product {
            product_id: id.into(),
            brand_id: brand.into(),
            sku: format!("sku-{id}"),
            name: format!("Product {id}"),
            category: "shoes".into(),
            description: None,
            attributes: None,
            images: None,
        }),
    )
}

/// An activity event at `time`; an order carries `quantity` units at `price` (EUR, minor
/// units).
pub fn activity(
    kind: ActivityKind,
    product: &str,
    time: DateTime<Utc>,
    quantity: u64,
    price: u64,
) -> Envelope {
    let order = kind == ActivityKind::OrderPlaced;
    Envelope::new(
        "test",
        Event::Activity(Activity {
            kind,
            product_id: product.into(),
            retailer_id: "r-1".into(),
            time: Some(time),
            quantity: order.then_some(quantity),
            unit_price_minor: order.then_some(price),
            currency: order.then(|| "EUR".to_owned()),
            order_id: order.then(|| format!("o-{}", time.timestamp_millis())),
        }),
    )
    .at(time)
}

/// The numbers of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Totals {
    pub views: u64,
    pub carts: u64,
    pub orders: u64,
    pub units: u64,
    pub revenue_minor: u64,
}

impl Totals {
    pub fn add(&mut self, e: &Envelope) {
        let Event::Activity(a) = &e.event else {
            return;
        };
        match a.kind {
            ActivityKind::ProductViewed => self.views += 1,
            ActivityKind::AddedToCart => self.carts += 1,
            ActivityKind::OrderPlaced => {
                let q = a.quantity.unwrap_or(1);
                self.orders += 1;
                self.units += q;
                self.revenue_minor += q * a.unit_price_minor.unwrap_or(0);
            }
        }
    }
}

/// Window start (RFC 3339, as the API writes it) → totals.
pub type Windows = BTreeMap<String, Totals>;

/// `GET /v1/aggregates?<query>`: status and body.
pub async fn get(api: SocketAddr, query: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{api}/v1/aggregates?{query}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The API's windows of `dim`/`id`/`window` as totals by start, with whether each is final.
pub async fn windows(api: SocketAddr, dim: &str, id: &str, window: &str) -> Windows {
    let (status, body) = get(api, &format!("dim={dim}&id={id}&window={window}")).await;
    assert_eq!(status, 200, "{body}");
    let mut out = Windows::new();
    for w in body["windows"].as_array().unwrap() {
        let totals = out
            .entry(w["start"].as_str().unwrap().to_owned())
            .or_default();
        let n = |f: &str| w[f].as_u64().unwrap();
        totals.views += n("views");
        totals.carts += n("carts");
        totals.orders += n("orders");
        totals.units += n("units");
        totals.revenue_minor += n("revenue_minor");
    }
    out
}

/// The reference windows of `events` for windows of `seconds`, by start.
pub fn reference<'a>(events: impl IntoIterator<Item = &'a Envelope>, seconds: i64) -> Windows {
    let mut out = Windows::new();
    for e in events {
        let Event::Activity(a) = &e.event else {
            continue;
        };
        let t = a.time.unwrap().timestamp();
        let start = t - t.rem_euclid(seconds);
        let key = DateTime::from_timestamp(start, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        out.entry(key).or_default().add(e);
    }
    out
}

/// Polls `condition` until it holds, failing with `what` after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The aggregation binary as a child process, killed if the test fails before it stopped.
pub struct Child {
    pub child: std::process::Child,
    pub admin: SocketAddr,
    pub api: SocketAddr,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Starts the real binary for `topics` on `data_dir`, with `extra` environment.
pub fn spawn(
    broker: &TestBroker,
    topics: &Topics,
    data_dir: &Path,
    extra: &[(&str, &str)],
) -> Child {
    let (admin, api) = (free_port(), free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_aggregation"))
        .env("KAFKA_BROKERS", broker.bootstrap())
        // A rebalance waits up to max.poll.interval.ms for a known member to rejoin; a
        // killed one never does. The poll thread never waits on processing: 15 s is plenty.
        .env(
            "KAFKA_CONFIG",
            format!(
                "max.poll.interval.ms=15000;{}",
                tributary_testkit::DEV_CLIENT_SETTING
            ),
        )
        .env("GROUP_ID", &topics.group)
        .env("DATA_DIR", data_dir)
        .env("ADMIN_ADDR", admin.to_string())
        .env("AGGREGATION_ADDR", api.to_string())
        .env("STATSD_ADDR", "127.0.0.1:9")
        .env("SESSION_TIMEOUT_MS", "6000")
        .env("COMMIT_INTERVAL_MS", "200")
        .env("SHUTDOWN_TIMEOUT_MS", "10000")
        .env("AGGREGATION_ACTIVITY_TOPIC", &topics.activity)
        .env("AGGREGATION_PRODUCTS_TOPIC", &topics.products)
        .env("AGGREGATION_REPARTITION_TOPIC", &topics.repartition)
        .env("AGGREGATION_OUTPUT_TOPIC", &topics.output)
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("LOG_FORMAT", "pretty")
        .envs(extra.iter().copied())
        .spawn()
        .unwrap();
    Child { child, admin, api }
}

/// SIGTERM, then a clean exit within the shutdown deadline.
pub fn terminate(child: &mut Child) {
    let pid = child.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /status`, or `Null` while the admin server does not answer.
pub async fn status(admin: SocketAddr) -> Value {
    match reqwest::get(format!("http://{admin}/status")).await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Input positions finished (summed over partitions), or 0 while the admin port is not up.
pub async fn processed(admin: SocketAddr) -> i64 {
    status(admin).await["partitions"]
        .as_array()
        .map_or(0, |ps| {
            ps.iter().map(|p| p["position"].as_i64().unwrap_or(0)).sum()
        })
}

/// Window (`dim`, id, size, start RFC 3339) → totals, as in the stores of `group` under
/// `data_dir` (the service stopped).
pub fn stored_windows(
    data_dir: &Path,
    group: &str,
) -> BTreeMap<(String, String, String, String), Totals> {
    let dir = data_dir.join(group).join(aggregation::STORE);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let store = tributary_state::Store::open(&entry.unwrap().path()).unwrap();
        for ((table, key), value) in store.dump().unwrap() {
            if table != aggregation::aggregator::WINDOWS.name() {
                continue;
            }
            let (dim, id, size, start) = aggregation::window::parse_state_key(&key).unwrap();
            let state: aggregation::window::WindowState = serde_json::from_value(value).unwrap();
            let mut totals = Totals {
                views: state.views,
                carts: state.carts,
                ..Totals::default()
            };
            for orders in state.orders.values() {
                totals.orders += orders.orders;
                totals.units += orders.units;
                totals.revenue_minor += orders.revenue_minor;
            }
            let start = aggregation::window::millis(start)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let previous = out.insert(
                (
                    dim.as_str().to_owned(),
                    id.to_owned(),
                    size.as_str().to_owned(),
                    start,
                ),
                totals,
            );
            assert!(previous.is_none(), "{key} in two partitions' stores");
        }
    }
    out
}

/// The reference of `events` for every product and brand window (`brand_of` a product id).
pub fn reference_all(
    events: &[Envelope],
    brand_of: impl Fn(&str) -> String,
) -> BTreeMap<(String, String, String, String), Totals> {
    let mut out = BTreeMap::new();
    for e in events {
        let Event::Activity(a) = &e.event else {
            continue;
        };
        let t = a.time.unwrap().timestamp();
        for (size, seconds) in [("1m", 60), ("1h", 3600)] {
            let start = DateTime::from_timestamp(t - t.rem_euclid(seconds), 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            for (dim, id) in [
                ("product", a.product_id.clone()),
                ("brand", brand_of(&a.product_id)),
            ] {
                out.entry((dim.to_owned(), id, size.to_owned(), start.clone()))
                    .or_insert_with(Totals::default)
                    .add(e);
            }
        }
    }
    out
}

/// Sum of the positions of `topic`'s partitions in a `/status`.
pub fn positions_of(status: &serde_json::Value, topic: &str) -> i64 {
    status["partitions"].as_array().map_or(0, |ps| {
        ps.iter()
            .filter(|p| p["topic"] == topic)
            .map(|p| p["position"].as_i64().unwrap_or(0))
            .sum()
    })
}

/// Waits until `service` processed all `n` activity records and then read the repartition
/// topic to its end.
pub async fn wait_drained(
    broker: &'static TestBroker,
    topics: &Topics,
    service: &Child,
    partitions: i32,
    n: i64,
) {
    let started = Instant::now();
    let deadline = Duration::from_secs(600);
    // Positions start at the group's committed offsets: first, every store restored and
    // every partition reading.
    loop {
        let status = status(service.admin).await;
        let restored = status["state"]["partitions"].as_array().is_some_and(|ps| {
            ps.len() == partitions as usize && ps.iter().all(|p| p["state"] == "ready")
        });
        let running = status["partitions"].as_array().is_some_and(|ps| {
            ps.len() == 3 * partitions as usize
                && ps
                    .iter()
                    .all(|p| p["state"] == "running" || p["state"] == "throttled")
        });
        if restored && running {
            break;
        }
        assert!(started.elapsed() < deadline, "not restored: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while positions_of(&status(service.admin).await, &topics.activity) < n {
        assert!(started.elapsed() < deadline, "activity not processed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topic = topics.repartition.clone();
    let end: i64 = tokio::task::spawn_blocking(move || {
        use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = broker.client_config().create().unwrap();
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .sum()
    })
    .await
    .unwrap();
    while positions_of(&status(service.admin).await, &topics.repartition) < end {
        assert!(
            started.elapsed() < deadline,
            "repartition topic not drained to {end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
