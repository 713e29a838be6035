//! Crash safety with a real process: enrichment killed with SIGKILL three times mid-stream
//! and restarted on the same `DATA_DIR` applies every update exactly once; a second
//! instance with an empty `DATA_DIR` restores the same state from the changelog.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use enrichment::merge::ProductState;
use tributary_events::{Envelope, Event};
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_testkit::TestBroker;

const PRODUCTS: u64 = 10_000;
const UPDATES: u64 = 100_000;
const PARTITIONS: i32 = 6;

/// The child process, killed if the test fails before it stopped.
struct Enrichment {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Enrichment {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn spawn(broker: &TestBroker, topics: &Topics, data_dir: &Path) -> Enrichment {
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
        .stderr(Stdio::inherit());
    Enrichment {
        child: command.spawn().unwrap(),
        admin,
    }
}

fn terminate(enrichment: &mut Enrichment) {
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
async fn processed(admin: SocketAddr) -> i64 {
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

/// A seeded stream of updates over `PRODUCTS` products: products, prices and stock mixed.
fn updates(seed: u64) -> Vec<Envelope> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..UPDATES)
        .map(|i| {
            let id = format!("p-{}", next() % PRODUCTS);
            match next() % 3 {
                0 => product(&id, &format!("name-{i}")),
                1 => price(&id, next() % 10_000),
                _ => stock(&id, next() % 50),
            }
        })
        .collect()
}

/// The state every product must end in: the last of each fact, `updates` counting them.
fn expected(updates: &[Envelope]) -> BTreeMap<String, ProductState> {
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
async fn read_all(broker: &'static TestBroker, topic: &str) -> Vec<tributary_testkit::Record> {
    let topic_name = topic.to_owned();
    let total: i64 = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = broker.client_config().create().unwrap();
        (0..PARTITIONS)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_three_times_mid_stream_applies_every_update_exactly_once() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "enr-crash", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let updates = updates(7);
    let expected = expected(&updates);

    let mut enrichment = spawn(broker, &topics, dir.path());
    // The stream arrives in chunks while the service is killed and restarted.
    let producer = {
        let topics = topics.clone();
        let updates = updates.clone();
        tokio::spawn(async move {
            for chunk in updates.chunks(5_000) {
                publish(broker, &topics, chunk).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut kills = 0;
    for at_least in [8_000, 30_000, 60_000] {
        let started = Instant::now();
        while processed(enrichment.admin).await < at_least {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no progress to {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        enrichment.child.kill().unwrap();
        enrichment.child.wait().unwrap();
        kills += 1;
        enrichment = spawn(broker, &topics, dir.path());
    }
    producer.await.unwrap();
    wait_caught_up(enrichment.admin, UPDATES as i64, Duration::from_secs(180)).await;
    terminate(&mut enrichment);
    assert_eq!(kills, 3);

    // Every update applied exactly once: the per-product counts add up, and each product
    // holds the last of each of its facts.
    let states = stored_states(dir.path(), &topics.group);
    let applied: u64 = states.values().map(|s| s.updates).sum();
    assert_eq!(
        applied, UPDATES,
        "updates applied (more: some twice; fewer: some skipped)"
    );
    assert_eq!(states.len(), expected.len());
    for (id, want) in &expected {
        assert_eq!(states.get(id), Some(want), "state of {id}");
    }

    // The enriched topic's latest value per product is the merge of the latest facts.
    let records = read_all(broker, &topics.output).await;
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

    // A second instance with an empty DATA_DIR restores the same state from the changelog.
    let empty = tempfile::tempdir().unwrap();
    let mut second = spawn(broker, &topics, empty.path());
    wait_caught_up(second.admin, UPDATES as i64, Duration::from_secs(120)).await;
    let status = common::status(second.admin).await;
    let restored: i64 = status["state"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["restored_records"].as_i64().unwrap_or(0))
        .sum();
    assert!(restored > 0, "restored from the changelog: {status:#}");
    terminate(&mut second);
    assert_eq!(stored_states(empty.path(), &topics.group), states);
}
