//! Crash injection between each step of a state commit: the process aborts (no shutdown,
//! like `kill -9`) right after a batch's outputs are acknowledged, after its changelog
//! entries, after its checkpoint, and after its local transaction; restarted on the same
//! `DATA_DIR`, it ends in the same state as if nothing happened.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tributary_testkit::TestBroker;

const PARTITIONS: i32 = 2;
const UPDATES: u64 = 3_000;

async fn crash_at(point: &str) {
    let broker = TestBroker::shared();
    let topics = Topics::create(
        broker,
        &format!("enr-at-{}", point.replace('_', "-")),
        PARTITIONS,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let updates = updates(11, UPDATES, 300);
    publish(broker, &topics, &updates).await;

    // Small batches, so that the third commit comes mid-stream.
    let crash = format!("{point}:3");
    let mut first = spawn(
        broker,
        &topics,
        dir.path(),
        &[
            ("STATE_CRASH_AT", crash.as_str()),
            ("STATE_BATCH_MESSAGES", "200"),
        ],
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never reached {point}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !status.success(),
        "the process aborted at {point}: {status}"
    );

    let mut second = spawn(
        broker,
        &topics,
        dir.path(),
        &[("STATE_BATCH_MESSAGES", "200")],
    );
    wait_caught_up(second.admin, UPDATES as i64, Duration::from_secs(120)).await;
    terminate(&mut second);
    check_end_state(broker, &topics, dir.path(), PARTITIONS, &updates).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_outputs_acknowledged() {
    crash_at("before_changelog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_changelog_entries_acknowledged() {
    crash_at("before_checkpoint").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_checkpoint_acknowledged() {
    crash_at("before_state_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_state_commit_before_group_commit() {
    crash_at("after_state_commit").await;
}
