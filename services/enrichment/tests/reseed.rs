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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_ahead_of_its_changelog_is_written_back_and_restores_elsewhere() {
    let broker = TestBroker::shared();
    let first = Topics::create(broker, "enr-reseed", PARTITIONS).await;
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
    let dir = tempfile::tempdir().unwrap();
    run_until_caught_up(broker, &first, dir.path(), updates.len() as i64).await;
    let original = stored_states(dir.path(), &first.group);
    assert_eq!(original.len(), 39, "40 products, one deleted");

    // The state moves to a group whose changelog has never seen it (what a recreated
    // changelog looks like to the store), and that changelog holds a key the state does
    // not: the write-back must delete it, or a restore would resurrect it.
    let mut second = first.clone();
    second.group = tributary_testkit::unique_name("enr-reseed-moved");
    copy_dir(
        &dir.path().join(&first.group),
        &dir.path().join(&second.group),
    );
    let changelog = format!("{}.{}.changelog", second.group, enrichment::STORE);
    broker
        .create_named_topic(&changelog, PARTITIONS)
        .await
        .unwrap();
    let ghost = serde_json::to_vec(&original["p-1"]).unwrap();
    let stray = RawRecord::new(b"product\0ghost".to_vec(), ghost);
    broker.produce_raw(&changelog, &[stray]).await.unwrap();

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
