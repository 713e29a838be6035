//! Crash safety with a real process: enrichment killed with SIGKILL three times mid-stream
//! and restarted on the same `DATA_DIR` applies every update exactly once; a second
//! instance with an empty `DATA_DIR` restores the same state from the changelog.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tributary_testkit::TestBroker;

const PRODUCTS: u64 = 10_000;
const UPDATES: u64 = 100_000;
const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_three_times_mid_stream_applies_every_update_exactly_once() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "enr-crash", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let updates = updates(7, UPDATES, PRODUCTS);

    let mut enrichment = spawn(broker, &topics, dir.path(), &[]);
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
        enrichment = spawn(broker, &topics, dir.path(), &[]);
    }
    producer.await.unwrap();
    wait_caught_up(enrichment.admin, UPDATES as i64, Duration::from_secs(180)).await;
    terminate(&mut enrichment);
    assert_eq!(kills, 3);

    // Every update applied exactly once, and the enriched topic agrees.
    let states = check_end_state(broker, &topics, dir.path(), PARTITIONS, &updates).await;

    // A second instance with an empty DATA_DIR restores the same state from the changelog.
    let empty = tempfile::tempdir().unwrap();
    let mut second = spawn(broker, &topics, empty.path(), &[]);
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
