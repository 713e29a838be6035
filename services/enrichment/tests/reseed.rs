//! A store whose changelog lost it (recreated, or the state moved to a group whose
//! changelog is new) is written back to the changelog on assignment, stray changelog keys
//! included, so that an instance restoring from the changelog later gets the same state.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tributary_runtime::Shutdown;
use tributary_testkit::{RawRecord, TestBroker};

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 2;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs enrichment for `topics` on `dir` until it has processed `at_least` messages and
/// caught up, then stops it; returns its last `/status`.
async fn run_until_caught_up(
    broker: &TestBroker,
    topics: &Topics,
    dir: &Path,
    at_least: i64,
) -> serde_json::Value {
    let shutdown = Shutdown::new();
    let running = enrichment::start(config(broker, topics, dir), shutdown.clone())
        .await
        .unwrap();
    let status = wait_caught_up(running.admin_addr, at_least, WAIT).await;
    shutdown.trigger();
    running.wait().await.unwrap();
    status
}

/// Updates for 40 products (one deleted), published, processed by a first group on `dir`;
/// returns the topics, the updates and the first group's stored state.
async fn first_run(
    broker: &TestBroker,
    name: &str,
    dir: &Path,
) -> (
    Topics,
    Vec<tributary_events::Envelope>,
    std::collections::BTreeMap<String, enrichment::merge::ProductState>,
) {
    let first = Topics::create(broker, name, PARTITIONS).await;
    let mut updates = Vec::new();
    for i in 0..40 {
        let id = format!("p-{i}");
        updates.push(product(&id, &format!("Product {i}")));
        updates.push(price(&id, 1000 + i));
        if i % 2 == 0 {
            updates.push(stock(&id, i));
        }
    }
    updates.push(deleted("p-7"));
    publish(broker, &first, &updates).await;
    run_until_caught_up(broker, &first, dir, updates.len() as i64).await;
    let original = stored_states(dir, &first.group);
    // p-7 was deleted; whether its price or stock came before or after the delete (they
    // are on other topics) decides whether a product-less state remains for it.
    assert!(
        original.get("p-7").is_none_or(|s| s.product.is_none()),
        "p-7 deleted"
    );
    assert_eq!(
        original.values().filter(|s| s.product.is_some()).count(),
        39,
        "40 products, one deleted"
    );
    (first, updates, original)
}

/// Copies the first group's stores to a new group, whose changelog holds one stray key
/// (with `fill`: one record short of each store's changelog position in each partition, so
/// that the first entries of a write-back take the changelog's end past the store's
/// position).
async fn move_state(
    broker: &TestBroker,
    first: &Topics,
    dir: &Path,
    original: &std::collections::BTreeMap<String, enrichment::merge::ProductState>,
    fill: bool,
) -> Topics {
    let mut second = first.clone();
    second.group = tributary_testkit::unique_name("enr-reseed-moved");
    copy_dir(&dir.join(&first.group), &dir.join(&second.group));
    let changelog = format!("{}.{}.changelog", second.group, enrichment::STORE);
    broker
        .create_named_topic(&changelog, PARTITIONS)
        .await
        .unwrap();
    let ghost = serde_json::to_vec(&original["p-1"]).unwrap();
    if !fill {
        let stray = RawRecord::new(b"product\0ghost".to_vec(), ghost);
        broker.produce_raw(&changelog, &[stray]).await.unwrap();
        return second;
    }
    let producer = broker.producer().unwrap();
    for p in 0..PARTITIONS {
        let path = dir
            .join(&second.group)
            .join(enrichment::STORE)
            .join(format!("p{p}.redb"));
        let position = tributary_state::Store::open(&path)
            .unwrap()
            .checkpoint()
            .unwrap()
            .changelog_position;
        assert!(position > 1, "partition {p} has a changelog history");
        for i in 0..position - 1 {
            let key = format!("product\0ghost-{p}-{i}");
            let record: tributary_runtime::rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
                tributary_runtime::rdkafka::producer::FutureRecord::to(&changelog)
                    .partition(p)
                    .key(key.as_bytes())
                    .payload(ghost.as_slice());
            tributary_testkit::send_waiting(&producer, record)
                .await
                .unwrap()
                .unwrap();
        }
    }
    second
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_ahead_of_its_changelog_is_written_back_and_restores_elsewhere() {
    let broker = TestBroker::shared();
    let dir = tempfile::tempdir().unwrap();
    let (first, updates, original) = first_run(broker, "enr-reseed", dir.path()).await;

    // The state moves to a group whose changelog has never seen it (what a recreated
    // changelog looks like to the store), and that changelog holds a key the state does
    // not: the write-back must delete it, or a restore would resurrect it.
    let second = move_state(broker, &first, dir.path(), &original, false).await;

    // The moved store resumes from its own offsets (nothing is left to process) and writes
    // every entry back.
    let status = run_until_caught_up(broker, &second, dir.path(), updates.len() as i64).await;
    let reseeded: u64 = status["state"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reseeded_entries"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(reseeded, original.len() as u64, "every entry written back");
    assert_eq!(stored_states(dir.path(), &second.group), original);

    // An instance with an empty DATA_DIR restores exactly the original from that changelog.
    let empty = tempfile::tempdir().unwrap();
    let status = run_until_caught_up(broker, &second, empty.path(), updates.len() as i64).await;
    let restored: u64 = status["state"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["restored_records"].as_u64().unwrap_or(0))
        .sum();
    assert!(restored > 0, "restored from the changelog: {status:#}");
    assert_eq!(stored_states(empty.path(), &second.group), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_back_interrupted_between_its_entries_and_its_checkpoint_is_redone() {
    let broker = TestBroker::shared();
    let dir = tempfile::tempdir().unwrap();
    let (first, updates, original) = first_run(broker, "enr-reseed-crash", dir.path()).await;
    let second = move_state(broker, &first, dir.path(), &original, true).await;

    // The real binary aborts once a write-back's entries are acknowledged, before its
    // checkpoint: the changelog now reaches past the store's position, with entries no
    // checkpoint vouches for.
    let mut crashing = spawn(
        broker,
        &second,
        dir.path(),
        &[("STATE_CRASH_AT", "before_checkpoint:1")],
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = crashing.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < WAIT, "did not reach the crash point");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "aborted: {status}");

    // The next start finds the write-back pending and does it again, in full.
    let status = run_until_caught_up(broker, &second, dir.path(), updates.len() as i64).await;
    let reseeded: u64 = status["state"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reseeded_entries"].as_u64().unwrap_or(0))
        .sum();
    assert!(reseeded > 0, "{status:#}");
    assert_eq!(stored_states(dir.path(), &second.group), original);

    // What the changelog restores is exactly the state: no half write-back, no ghost.
    let empty = tempfile::tempdir().unwrap();
    run_until_caught_up(broker, &second, empty.path(), updates.len() as i64).await;
    assert_eq!(stored_states(empty.path(), &second.group), original);
}
