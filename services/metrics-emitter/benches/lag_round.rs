//! One lag-monitor round over 300 consumer groups (4 partitions each) on the dev broker:
//! the monitor's batched cluster client, next to the per-group approach it replaced (one
//! librdkafka client per group reading its committed offsets, and a watermark request per
//! partition) measured in the same run. Prints one JSON line for `cargo xtask bench`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use metrics_emitter::monitor::{LagMonitor, Settings};
use serde_json::json;
use tributary_cluster::{Cluster, ClusterConfig};
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};
use tributary_testkit::{RawRecord, TestBroker, unique_name};

const GROUPS: usize = 300;
const PARTITIONS: i32 = 4;
const ROUNDS: u32 = 10;
const TIMEOUT: Duration = Duration::from_secs(10);

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn cluster(broker: &TestBroker) -> Cluster {
    let properties = HashMap::from([("bootstrap.servers".to_owned(), broker.bootstrap())]);
    Cluster::new(ClusterConfig::from_properties(&properties).expect("config")).expect("client")
}

#[tokio::main]
async fn main() {
    // SQLite storage: the memory engine reports wrong high watermarks.
    let broker = TestBroker::start_durable().expect("dev broker");
    let topic = broker
        .create_topic("lag-bench", PARTITIONS)
        .await
        .expect("topic");
    let records: Vec<RawRecord> = (0..400)
        .map(|i| RawRecord::new(format!("k{i}"), "v"))
        .collect();
    broker.produce_raw(&topic, &records).await.expect("records");
    let admin = cluster(&broker);
    let metadata = admin.metadata().await.expect("metadata");
    let groups: Vec<String> = (0..GROUPS).map(|_| unique_name("bench-group")).collect();
    let coordinators = admin
        .coordinators(&metadata, &groups)
        .await
        .expect("coordinators");
    for (i, group) in groups.iter().enumerate() {
        let offsets: BTreeMap<(String, i32), i64> = (0..PARTITIONS)
            .map(|p| ((topic.clone(), p), (i % 50) as i64))
            .collect();
        let coordinator = coordinators[group].as_ref().expect("coordinator");
        admin
            .commit_offsets(group, coordinator, &offsets)
            .await
            .expect("commit");
    }
    eprintln!("bench: {GROUPS} groups committed; monitor rounds");

    // Ours: the monitor (first round opens the connection; then timed rounds).
    let before = threads();
    let mut monitor = LagMonitor::new(
        cluster(&broker),
        Settings {
            window: 10,
            allowed_lag: 0,
            minimum_complete: 0.0,
        },
    );
    let first = monitor.observe().await;
    assert!(first.groups.len() >= GROUPS, "every group reported");
    let sent = monitor.cluster().requests_sent();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let report = monitor.observe().await;
        assert!(report.groups.iter().all(|g| g.error.is_none()));
    }
    let ours = started.elapsed() / ROUNDS;
    let requests = (monitor.cluster().requests_sent() - sent) / u64::from(ROUNDS);
    let ours_threads = threads().saturating_sub(before);
    drop(monitor);

    // Baseline: a librdkafka client per group for its offsets, a watermark call per
    // partition (the monitor before the cluster client).
    eprintln!("bench: per-group clients");
    let before = threads();
    let base = broker.client_config();
    let readers: Vec<BaseConsumer> = groups
        .iter()
        .map(|g| {
            base.clone()
                .set("group.id", g)
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader")
        })
        .collect();
    let baseline_threads = threads().saturating_sub(before);
    let topic_name = topic.clone();
    let round = move |readers: &[BaseConsumer]| {
        let topic = &topic_name;
        for reader in readers {
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition(topic, p);
            }
            let committed = reader.committed_offsets(tpl, TIMEOUT).expect("committed");
            assert!(
                committed
                    .elements()
                    .iter()
                    .all(|e| matches!(e.offset(), Offset::Offset(_)))
            );
        }
        for p in 0..PARTITIONS {
            readers[0]
                .fetch_watermarks(topic, p, TIMEOUT)
                .expect("watermarks");
        }
    };
    let (readers, baseline) = tokio::task::spawn_blocking(move || {
        round(&readers);
        let started = Instant::now();
        for _ in 0..ROUNDS {
            round(&readers);
        }
        (readers, started.elapsed() / ROUNDS)
    })
    .await
    .expect("baseline");
    drop(readers);

    let per_s = |d: Duration| 1.0 / d.as_secs_f64();
    println!(
        "{}",
        json!({"bench": "lag_round", "scenario": format!("one lag-monitor round, {GROUPS} groups × {PARTITIONS} partitions (baseline: a librdkafka client per group)"),
               "messages": GROUPS, "record_bytes": 0,
               "ours_per_s": (per_s(ours) * 100.0).round() / 100.0,
               "baseline_per_s": (per_s(baseline) * 100.0).round() / 100.0,
               "ratio": ((baseline.as_secs_f64() / ours.as_secs_f64()) * 100.0).round() / 100.0,
               "notes": format!("rounds/s; a round takes {:.1} ms ({requests} requests, +{ours_threads} threads) vs {:.1} ms (+{baseline_threads} threads)", ours.as_secs_f64() * 1000.0, baseline.as_secs_f64() * 1000.0)})
    );
}
