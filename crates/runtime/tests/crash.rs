//! A consumer killed with SIGKILL mid-stream: its replacement in the same group processes
//! everything it did not finish, and no committed position ever passed unprocessed input.
//!
//! The victim is a real separate process (this test binary re-run with one ignored test
//! selected), so nothing of it gets a chance to shut down cleanly.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tributary_runtime::{Incoming, Output, ProcessError, Processor, Shutdown};
use tributary_testkit::TestBroker;

const CHILD_ENV: &str = "TRIBUTARY_CRASH_CHILD";

/// Appends `partition offset` per processed message to a file, flushed before returning.
struct FileRecorder {
    file: std::sync::Mutex<std::fs::File>,
}

impl Processor for FileRecorder {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut file = self.file.lock().unwrap();
        writeln!(file, "{} {}", message.partition, message.offset).unwrap();
        file.flush().unwrap();
        Ok(vec![])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the victim process of the crash test; run by it"]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (bootstrap, group, topic, path) = (parts[0], parts[1], parts[2], parts[3]);
    let mut config = tributary_runtime::RuntimeConfig::defaults();
    config.brokers = bootstrap.to_owned();
    config.group_id = Some(group.to_owned());
    config.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    config.session_timeout_ms = 6000;
    config.commit_interval_ms = 100;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let processor = FileRecorder {
        file: std::sync::Mutex::new(file),
    };
    let spec = tributary_runtime::ServiceSpec::new("crash-victim", &[topic], 0);
    // Runs until the parent kills this process.
    tributary_runtime::run(spec, config, processor, Shutdown::new())
        .await
        .unwrap();
}

fn read_processed(path: &PathBuf) -> BTreeSet<(i32, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (p, o) = line.split_once(' ')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_killed_mid_stream_loses_nothing_and_never_commits_past_unprocessed_input() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-crash", 6).await.unwrap();
    let group = unique_group("rt-crash-group");
    let total = 3000;
    let envelopes: Vec<_> = (0..total)
        .map(|i| stock(&format!("p-{}", i % 97), i))
        .collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    let path = std::env::temp_dir().join(format!("{group}.processed"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env(
            CHILD_ENV,
            format!("{}|{group}|{topic}|{}", broker.bootstrap(), path.display()),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        "the victim processed 600 messages",
        Duration::from_secs(60),
        || read_processed(&path).len() >= 600,
    )
    .await;
    child.kill().unwrap(); // SIGKILL: no shutdown, no final commit, no leave-group.
    child.wait().unwrap();
    let by_victim = read_processed(&path);
    assert!(by_victim.len() < total as usize, "killed mid-stream");

    let committed = committed(broker, &group, &topic, 6);
    assert!(
        !committed.is_empty(),
        "the victim committed progress before dying"
    );
    assert_commits_cover_only_processed(&committed, &by_victim);

    let recorder = Recorder::default();
    let (running, shutdown) = start(config(broker, &group), &[&topic], recorder.clone()).await;
    let covered = || {
        let mut all = by_victim.clone();
        all.extend(recorder.processed());
        all.len()
    };
    let waited = std::time::Instant::now();
    while covered() < total as usize {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "after 60 s {} of {total} covered; replacement processed {}; status {}",
            covered(),
            recorder.count(),
            running.health.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replacement started at the committed positions, not at the beginning.
    let replayed = recorder
        .processed()
        .iter()
        .filter(|m| by_victim.contains(m))
        .count();
    assert!(
        replayed < by_victim.len(),
        "replayed {replayed} of {}",
        by_victim.len()
    );
    shutdown.trigger();
    running.wait().await.unwrap();
    let _ = std::fs::remove_file(path);
}
