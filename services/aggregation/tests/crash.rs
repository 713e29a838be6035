//! Crash safety with the real process: aggregation killed with SIGKILL three times while
//! activity streams in, restarted on the same `DATA_DIR`, ends with every window of every
//! product and brand equal to the reference (nothing lost, nothing counted twice); an
//! instance with an empty `DATA_DIR` restores the same windows from the changelog.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tributary_events::{ActivityKind, Envelope};
use tributary_testkit::TestBroker;

const PARTITIONS: i32 = 6;
const PRODUCTS: u64 = 2_000;
const BRANDS: u64 = 20;
/// A brand's windows take events from every activity partition, and after a restart with
/// a backlog one partition can run minutes of event time ahead of another: the grace
/// period covers that skew (this test is about crashes, not lateness). Windows of the
/// first hour still close, so final values are exercised.
///
/// Larger state batches and rarer interim values, as a busy deployment would run: fewer
/// changelog and output records per event (the run is bound by the dev broker).
const SETTINGS: &[(&str, &str)] = &[
    ("AGGREGATION_GRACE_MS", "1800000"),
    ("AGGREGATION_INTERIM_MS", "30000"),
    ("STATE_BATCH_MESSAGES", "5000"),
    ("STATE_BATCH_MS", "300"),
];

fn events_wanted() -> usize {
    std::env::var("AGG_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        // A million in the long run (`AGG_CRASH_EVENTS=1000000`); the suite's default keeps
        // `cargo xtask test` within its time budget: a run is bound by the dev broker's
        // rate on two cores (200,000 events took 13 minutes, optimised or not).
        .unwrap_or(50_000)
}

fn brand_of(product: &str) -> String {
    let k: u64 = product[2..].parse().unwrap();
    format!("b-{}", k % BRANDS)
}

/// A seeded stream: event time advances 7 ms per event with up to 2 s of disorder, so
/// windows close as the stream goes on.
fn stream(n: usize) -> Vec<Envelope> {
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-23T06:00:00Z")
        .unwrap()
        .to_utc();
    let mut x: u64 = 11;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..n)
        .map(|i| {
            let product = format!("p-{}", next() % PRODUCTS);
            let jitter = (next() % 2_000) as i64;
            let time = base + chrono::Duration::milliseconds(i as i64 * 7 + jitter);
            activity(
                ActivityKind::ALL[(next() % 3) as usize],
                &product,
                time,
                1 + next() % 3,
                100 + next() % 900,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_three_times_mid_stream_counts_every_event_exactly_once() {
    let n = events_wanted();
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-crash", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
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
    let events = stream(n);

    let mut service = spawn(broker, &topics, dir.path(), SETTINGS);
    let producer = {
        let topics = topics.clone();
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(20_000) {
                broker
                    .produce_envelopes(&topics.activity, chunk)
                    .await
                    .unwrap();
            }
        })
    };
    // Every event is read twice (activity, then re-keyed by brand), plus the products.
    let total = 2 * n as i64 + PRODUCTS as i64;
    let mut kills = 0;
    let began = Instant::now();
    for fraction in [0.15, 0.4, 0.7] {
        let at_least = (total as f64 * fraction) as i64;
        let started = Instant::now();
        while processed(service.admin).await < at_least {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no progress to {at_least} of {total}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        service.child.kill().unwrap();
        service.child.wait().unwrap();
        kills += 1;
        eprintln!("{:?}: killed at {at_least} of {total}", began.elapsed());
        service = spawn(broker, &topics, dir.path(), SETTINGS);
    }
    producer.await.unwrap();
    // Done when every activity record is processed (its re-keyed record then exists:
    // positions move only once outputs are acknowledged) and the repartition topic is read
    // to its end, duplicates re-sent after the crashes included.
    wait_drained(broker, &topics, &service, PARTITIONS, n as i64).await;
    eprintln!("{:?}: drained", began.elapsed());
    terminate(&mut service);
    assert_eq!(kills, 3);

    let want = reference_all(&events, brand_of);
    let got = stored_windows(dir.path(), &topics.group);
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "windows missing: {missing:?}");
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

    // An instance with an empty DATA_DIR restores the same windows from the changelog.
    let empty = tempfile::tempdir().unwrap();
    let mut second = spawn(broker, &topics, empty.path(), SETTINGS);
    wait_drained(broker, &topics, &second, PARTITIONS, n as i64).await;
    eprintln!("{:?}: restored into an empty DATA_DIR", began.elapsed());
    let status = status(second.admin).await;
    let ready = status["state"]["partitions"].as_array().is_some_and(|ps| {
        ps.len() == PARTITIONS as usize && ps.iter().all(|p| p["state"] == "ready")
    });
    assert!(ready, "restored every partition: {status:#}");
    terminate(&mut second);
    assert_eq!(stored_windows(empty.path(), &topics.group), got);
}
