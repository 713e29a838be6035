//! The lag monitor on a cluster with 300 consumer groups: one client, a fixed number of
//! batched requests per round whatever the number of groups, and no thread per group.
//! (Its own test binary, so the process's thread count is the monitor's alone.)

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use metrics_emitter::monitor::{LagMonitor, Settings};
use tributary_cluster::{Cluster, ClusterConfig};
use tributary_testkit::{RawRecord, TestBroker, unique_name};

const GROUPS: usize = 300;
const PARTITIONS: i32 = 4;

/// The process's thread count, from /proc.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn cluster(broker: &TestBroker) -> Cluster {
    let properties = HashMap::from([("bootstrap.servers".to_owned(), broker.bootstrap())]);
    Cluster::new(ClusterConfig::from_properties(&properties).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_groups_cost_a_few_requests_per_round_and_no_threads() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("many", PARTITIONS).await.unwrap();
    let records: Vec<RawRecord> = (0..200)
        .map(|i| RawRecord::new(format!("k{i}"), format!("v{i}")))
        .collect();
    broker.produce_raw(&topic, &records).await.unwrap();

    // 300 groups, group i committed at offset i % 7 on every partition.
    let admin = cluster(broker);
    let metadata = admin.metadata().await.unwrap();
    let ends = admin
        .high_watermarks(
            &metadata,
            &(0..PARTITIONS).map(|p| (topic.clone(), p)).collect(),
        )
        .await;
    let groups: Vec<String> = (0..GROUPS).map(|_| unique_name("many")).collect();
    let coordinators = admin.coordinators(&metadata, &groups).await.unwrap();
    for (i, group) in groups.iter().enumerate() {
        let offsets: BTreeMap<(String, i32), i64> = (0..PARTITIONS)
            .map(|p| ((topic.clone(), p), (i % 7) as i64))
            .collect();
        let coordinator = coordinators[group].as_ref().unwrap();
        admin
            .commit_offsets(group, coordinator, &offsets)
            .await
            .unwrap();
    }

    let mut monitor = LagMonitor::new(
        cluster(broker),
        Settings {
            window: 10,
            allowed_lag: 0,
            minimum_complete: 0.0,
        },
    );
    let threads_before = threads();
    let mut per_round = Vec::new();
    let mut durations = Vec::new();
    let mut threads_after = Vec::new();
    for _ in 0..5 {
        let sent = monitor.cluster().requests_sent();
        let started = Instant::now();
        let report = monitor.observe().await;
        durations.push(started.elapsed());
        per_round.push(monitor.cluster().requests_sent() - sent);
        threads_after.push(threads());

        // Every group, with every partition's exact lag.
        for (i, group) in groups.iter().enumerate() {
            let g = report
                .groups
                .iter()
                .find(|g| &g.group == group)
                .unwrap_or_else(|| panic!("{group} missing"));
            assert!(g.error.is_none(), "{g:?}");
            assert_eq!(g.partitions.len(), PARTITIONS as usize);
            for p in &g.partitions {
                let end = *ends[&(p.topic.clone(), p.partition)].as_ref().unwrap();
                assert_eq!(p.committed, Some((i % 7) as i64));
                assert_eq!(p.lag, Some(end - (i % 7) as i64), "{p:?}");
            }
        }
    }
    eprintln!(
        "{GROUPS} groups × {PARTITIONS} partitions: rounds took {durations:?}, requests per round {per_round:?}, threads {threads_before} → {threads_after:?}"
    );
    // One broker: Metadata, ListGroups, FindCoordinator (batched), DescribeGroups,
    // OffsetFetch (batched) and ListOffsets: six requests, however many groups.
    assert!(per_round.iter().all(|&n| n == 6), "{per_round:?}");
    // No thread per group, none added round after round.
    assert!(
        threads_after.iter().all(|&t| t == threads_after[0]),
        "{threads_after:?}"
    );
    assert!(
        threads_after[0] <= threads_before + 2,
        "{threads_before} → {threads_after:?}"
    );
}
