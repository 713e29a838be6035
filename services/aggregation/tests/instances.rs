//! Two instances of the real binary in one group: the partitions are split between them,
//! and each answers for a key it does not own with where it lives (the partition and the
//! owner's address, where the same request is answered), never a zero. One is
//! stopped mid-stream; the other restores that instance's partitions from the changelog,
//! and every window of every product and brand still equals the reference.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tributary_events::{ActivityKind, Envelope};
use tributary_testkit::TestBroker;

const PARTITIONS: i32 = 6;
const PRODUCTS: u64 = 600;
const BRANDS: u64 = 12;
const EVENTS: usize = 12_000;
/// As in the crash test: the grace period covers partition skew, state batches and interim
/// values as a busy deployment runs them.
const SETTINGS: &[(&str, &str)] = &[
    ("AGGREGATION_GRACE_MS", "1800000"),
    ("AGGREGATION_INTERIM_MS", "30000"),
    ("STATE_BATCH_MESSAGES", "2000"),
    ("STATE_BATCH_MS", "200"),
];

fn brand_of(product: &str) -> String {
    let k: u64 = product[2..].parse().unwrap();
    format!("b-{}", k % BRANDS)
}

fn stream(n: usize) -> Vec<Envelope> {
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-23T09:00:00Z")
        .unwrap()
        .to_utc();
    (0..n)
        .map(|i| {
            let k = (i as u64).wrapping_mul(2654435761) % PRODUCTS;
            activity(
                ActivityKind::ALL[i % 3],
                &format!("p-{k}"),
                base + chrono::Duration::milliseconds(i as i64 * 20),
                1 + (i as u64) % 4,
                250,
            )
        })
        .collect()
}

/// The partitions whose state `service` holds, ready.
async fn owned(service: &Child) -> Vec<i64> {
    let status = status(service.admin).await;
    let mut owned: Vec<i64> = status["state"]["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "ready")
        .filter_map(|p| p["partition"].as_i64())
        .collect();
    owned.sort_unstable();
    owned
}

async fn get(api: std::net::SocketAddr, query: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{api}/v1/aggregates?{query}"))
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_instances_stops_mid_stream_and_the_other_restores_its_partitions() {
    let broker: &'static TestBroker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-two", PARTITIONS).await;
    let products: Vec<Envelope> = (0..PRODUCTS)
        .map(|k| {
            let id = format!("p-{k}");
            product(&id, &brand_of(&id))
        })
        .collect();
    broker
        .produce_envelopes(&topics.products, &products)
        .await
        .unwrap();
    let events = stream(EVENTS);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn(broker, &topics, dir_a.path(), SETTINGS);
    let mut b = spawn(broker, &topics, dir_b.path(), SETTINGS);

    // The group settles with the partitions split between the two.
    let started = Instant::now();
    let (owned_a, owned_b) = loop {
        let (oa, ob) = (owned(&a).await, owned(&b).await);
        let mut all: Vec<i64> = oa.iter().chain(&ob).copied().collect();
        all.sort_unstable();
        if !oa.is_empty() && !ob.is_empty() && all == (0..PARTITIONS as i64).collect::<Vec<_>>() {
            break (oa, ob);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "partitions not split: {oa:?} / {ob:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let first = EVENTS / 2;
    broker
        .produce_envelopes(&topics.activity, &events[..first])
        .await
        .unwrap();
    // Mid-stream: part of the first half processed, by both instances.
    let started = Instant::now();
    while processed(a.admin).await + processed(b.admin).await < (PRODUCTS as i64 + first as i64) {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A product that lives on one of b's partitions, asked of a: answered with where it
    // lives (the partition, and that it is not here), never with an empty answer.
    let elsewhere = (0..PRODUCTS)
        .map(|k| format!("p-{k}"))
        .find(|id| owned_b.contains(&i64::from(aggregation::api::partition_of(id, PARTITIONS))))
        .unwrap();
    let (code, body) = get(a.api, &format!("dim=product&id={elsewhere}&window=1h")).await;
    assert_eq!(code, 421, "{body}");
    assert_eq!(body["error"], "not_owned");
    assert_eq!(
        body["partition"],
        aggregation::api::partition_of(&elsewhere, PARTITIONS)
    );
    assert!(!owned_a.is_empty());
    // ... and by which instance: the owner's address (once b has said what it serves),
    // where the same request is answered.
    let query = format!("dim=product&id={elsewhere}&window=1h");
    let b_url = format!("http://{}", b.api);
    let started = Instant::now();
    let response = loop {
        let response = reqwest::get(format!("http://{}/v1/aggregates?{query}", a.api))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 421);
        if response.headers().contains_key("location") {
            break response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a never named the owner"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["owner"], b_url.as_str(), "{body}");
    assert_eq!(location, format!("{b_url}/v1/aggregates?{query}"));
    let there = reqwest::get(&location).await.unwrap();
    assert_eq!(there.status().as_u16(), 200, "the owner answers");
    let there: Value = there.json().await.unwrap();
    assert!(there["windows"].is_array(), "{there}");

    // b stops mid-stream; the rest of the stream arrives while a takes over.
    terminate(&mut b);
    broker
        .produce_envelopes(&topics.activity, &events[first..])
        .await
        .unwrap();
    wait_drained(broker, &topics, &a, PARTITIONS, EVENTS as i64).await;
    assert_eq!(owned(&a).await, (0..PARTITIONS as i64).collect::<Vec<_>>());

    // Every window equals the reference, served by a's API for the key b owned ...
    let want = reference_all(&events, brand_of);
    let (code, body) = get(a.api, &format!("dim=product&id={elsewhere}&window=1h")).await;
    assert_eq!(code, 200, "{body}");
    let views: u64 = body["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["views"].as_u64().unwrap())
        .sum();
    let want_views: u64 = want
        .iter()
        .filter(|((dim, id, size, _), _)| dim == "product" && *id == elsewhere && size == "1h")
        .map(|(_, t)| t.views)
        .sum();
    assert_eq!(views, want_views);
    // ... and in a's stores, every window of every product and brand.
    let mut a = a;
    terminate(&mut a);
    let got = stored_windows(dir_a.path(), &topics.group);
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(5)
        .map(|(k, v)| (k, v, got.get(k)))
        .collect();
    assert!(
        wrong.is_empty(),
        "windows differing (key, want, got): {wrong:?}"
    );
    assert_eq!(got.len(), want.len());
}
