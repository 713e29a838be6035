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
