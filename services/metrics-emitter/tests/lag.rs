//! The lag monitor against the real broker: every group on the cluster is read and judged
//! with Burrow's rules, and `/lag` reports it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::group as group_entry;
use common::*;
use serde_json::Value;
use tributary_runtime::Shutdown;
use tributary_runtime::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use tributary_runtime::rdkafka::producer::FutureRecord;
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};
use tributary_testkit::{RawRecord, TestBroker, send_waiting, unique_name};

const DEADLINE: Duration = Duration::from_secs(60);

async fn fill(broker: &TestBroker, topic: &str, from: usize, n: usize) {
    let records: Vec<RawRecord> = (from..from + n)
        .map(|i| RawRecord::new(format!("k{i}"), format!("v{i}")))
        .collect();
    broker.produce_raw(topic, &records).await.unwrap();
}

/// Commits `offset` on `topic`/`partition` for `group` without joining it (no member).
fn commit(broker: &TestBroker, group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

fn high_watermark(broker: &TestBroker, topic: &str, partition: i32) -> i64 {
    let client: BaseConsumer = broker.client_config().create().unwrap();
    client
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
        .1
}

fn partitions<'a>(g: &'a Value, topic: &str) -> Vec<&'a Value> {
    g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["topic"] == topic)
        .collect()
}

/// Every reported lag equals the high watermark minus the committed offset, and the high
/// watermark is the broker's.
fn assert_lag_arithmetic(broker: &TestBroker, g: &Value, topic: &str) {
    for p in partitions(g, topic) {
        let partition = p["partition"].as_i64().unwrap() as i32;
        let committed = p["committed"].as_i64().unwrap();
        let high = p["high_watermark"].as_i64().unwrap();
        assert_eq!(p["lag"].as_i64().unwrap(), high - committed, "{p}");
        assert!(high <= high_watermark(broker, topic, partition), "{p}");
    }
}

async fn emitter(broker: &TestBroker, topic: &str) -> (metrics_emitter::Running, Shutdown) {
    let shutdown = Shutdown::new();
    let running = metrics_emitter::start_with_inputs(
        config(broker, &unique_name("lag-emitter")),
        &[topic],
        shutdown.clone(),
    )
    .await
    .unwrap();
    (running, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_offsets_of_any_group_are_reported_with_exact_lag() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("lag-list", 2).await.unwrap();
    fill(broker, &topic, 0, 40).await;
    let watched = unique_name("lag-watched");
    commit(broker, &watched, &topic, 0, 4);
    commit(broker, &watched, &topic, 1, 2);

    let (running, shutdown) = emitter(broker, &topic).await;
    let admin = running.service.admin_addr;
    let g = wait_for_group(admin, &watched, DEADLINE, |g| {
        partitions(g, &topic).len() == 2
    })
    .await;
    let committed: BTreeMap<i64, i64> = partitions(&g, &topic)
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["committed"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(committed, BTreeMap::from([(0, 4), (1, 2)]));
    assert_lag_arithmetic(broker, &g, &topic);
    let total: i64 = partitions(&g, &topic)
        .iter()
        .map(|p| p["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 40 - 4 - 2);

    // `/lag` only reads; anything else is named in JSON.
    let res = reqwest::Client::new()
        .post(format!("http://{admin}/lag"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_group_reads_ok_and_a_group_that_stopped_turns_stop() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("lag-health", 2).await.unwrap();
    fill(broker, &topic, 0, 20).await;
    let (running, shutdown) = emitter(broker, &topic).await;
    let admin = running.service.admin_addr;

    // A real member of the group reads everything and commits.
    let group = unique_name("lag-consumer");
    let consumer = broker.consumer(&group).unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut read = 0;
    while read < 20 {
        tokio::time::timeout(DEADLINE, consumer.recv())
            .await
            .expect("records arrive")
            .unwrap();
        read += 1;
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    let healthy = wait_for_group(admin, &group, DEADLINE, |g| {
        let ps = partitions(g, &topic);
        ps.len() == 2 && ps.iter().all(|p| p["lag"] == 0)
    })
    .await;
    assert_eq!(healthy["status"], "OK", "{healthy:#}");
    assert_lag_arithmetic(broker, &healthy, &topic);

    // It leaves; records keep arriving; nobody reads them.
    drop(consumer);
    fill(broker, &topic, 20, 6).await;
    // Burrow's STOP: the last commit is older than the window spans, and the partition's
    // end has not been at the committed offset at any recent reading. The group is ERR (a
    // STOP partition caps it there).
    let stopped = wait_for_group(admin, &group, DEADLINE, |g| {
        partitions(g, &topic).iter().any(|p| p["status"] == "STOP")
    })
    .await;
    assert_eq!(stopped["status"], "ERR", "{stopped:#}");
    for p in partitions(&stopped, &topic) {
        let expected = if p["lag"] == 0 { "OK" } else { "STOP" };
        assert_eq!(p["status"], expected, "{p}");
    }
    let lag: i64 = partitions(&stopped, &topic)
        .iter()
        .map(|p| p["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(lag, 6, "{stopped:#}");
    assert_lag_arithmetic(broker, &stopped, &topic);
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_offset_moved_back_reads_rewind() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("lag-rewind", 1).await.unwrap();
    fill(broker, &topic, 0, 10).await;
    let group = unique_name("lag-rewound");
    commit(broker, &group, &topic, 0, 8);
    let (running, shutdown) = emitter(broker, &topic).await;
    let admin = running.service.admin_addr;
    wait_for_group(admin, &group, DEADLINE, |g| {
        partitions(g, &topic)
            .first()
            .is_some_and(|p| p["committed"] == 8)
    })
    .await;
    // Reset to 3, then replaying forward (still short of 8): REWIND until it gets back.
    let started = std::time::Instant::now();
    let mut offset = 3;
    let rewound = loop {
        commit(broker, &group, &topic, 0, offset);
        let report = lag(admin).await;
        let entry = group_entry(&report, &group).cloned();
        if let Some(g) = entry.filter(|g| partitions(g, &topic)[0]["status"] == "REWIND") {
            break g;
        }
        assert!(started.elapsed() < DEADLINE, "never REWIND:\n{report:#}");
        offset = (offset + 1).min(7);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = partitions(&rewound, &topic)[0];
    let committed = p["committed"].as_i64().unwrap();
    assert!((3..8).contains(&committed), "{p}");
    assert_eq!(p["lag"].as_i64().unwrap(), 10 - committed);
    assert_eq!(
        rewound["status"], "ERR",
        "a REWIND partition caps its group at ERR"
    );
    // Back at (or past) where it was: recovered, no longer REWIND.
    commit(broker, &group, &topic, 0, 9);
    wait_for_group(admin, &group, DEADLINE, |g| {
        let p = partitions(g, &topic)[0];
        p["committed"] == 9 && p["status"] != "REWIND"
    })
    .await;
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_with_no_commits_yet_is_reported() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("lag-fresh", 1).await.unwrap();
    fill(broker, &topic, 0, 3).await;
    let group = unique_name("lag-fresh-group");
    let consumer = broker.consumer(&group).unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    tokio::time::timeout(DEADLINE, consumer.recv())
        .await
        .expect("a record arrives")
        .unwrap();
    let (running, shutdown) = emitter(broker, &topic).await;
    let g = wait_for_group(running.service.admin_addr, &group, DEADLINE, |_| true).await;
    // Nothing committed: no offset or lag is made up.
    for p in g["partitions"].as_array().unwrap() {
        assert!(p["committed"].is_null() && p["lag"].is_null(), "{p}");
        assert_eq!(p["complete"], 0.0, "no commit in its window: {p}");
    }
    assert_eq!(g["status"], "OK");
    assert_eq!(g["complete"], 0.0);
    drop(consumer);
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_read_err_when_the_cluster_cannot_be_read() {
    let mut broker = TestBroker::start_durable().unwrap();
    let topic = broker.create_topic("lag-err", 1).await.unwrap();
    fill(&broker, &topic, 0, 3).await;
    let group = unique_name("lag-err-group");
    commit(&broker, &group, &topic, 0, 1);
    let (running, shutdown) = emitter(&broker, &topic).await;
    let admin = running.service.admin_addr;
    wait_for_group(admin, &group, DEADLINE, |g| {
        !g["partitions"].as_array().unwrap().is_empty()
    })
    .await;
    broker.stop().unwrap();
    // (A STOP partition also makes its group ERR: wait for the reason, then check both.)
    let g = wait_for_group(admin, &group, DEADLINE, |g| g["error"].is_string()).await;
    assert!(g["error"].as_str().is_some_and(|e| !e.is_empty()), "{g:#}");
    assert_eq!(g["status"], "ERR", "{g:#}");
    for p in g["partitions"].as_array().unwrap() {
        assert_eq!(p["status"], "ERR", "{p}");
    }
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_falling_behind_warns() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("lag-warn", 1).await.unwrap();
    fill(broker, &topic, 0, 10).await;
    let group = unique_name("lag-behind");
    let (running, shutdown) = emitter(broker, &topic).await;
    let admin = running.service.admin_addr;

    // Every step: ten records arrive and the group commits three more: it moves, but its lag
    // grows at every observation.
    let committer: BaseConsumer = broker
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let producer = broker.producer().unwrap();
    let started = std::time::Instant::now();
    let mut committed = 0;
    let warned = loop {
        for _ in 0..10 {
            let record: FutureRecord<'_, str, str> = FutureRecord::to(&topic).key("k").payload("v");
            send_waiting(&producer, record).await.unwrap().unwrap();
        }
        committed += 3;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(committed))
            .unwrap();
        committer.commit(&tpl, CommitMode::Sync).unwrap();
        let report = lag(admin).await;
        if let Some(g) = group_entry(&report, &group).filter(|g| g["status"] == "WARN") {
            break g.clone();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "never WARN; last /lag:\n{report:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = partitions(&warned, &topic)[0];
    assert_eq!(p["status"], "WARN");
    assert!(p["lag"].as_i64().unwrap() > 0);
    // Judged on a window that need not be full; its completeness is reported.
    let complete = p["complete"].as_f64().unwrap();
    assert!(complete > 0.0 && complete <= 1.0, "{p}");
    assert_eq!(warned["complete"], if complete >= 1.0 { 1.0 } else { 0.0 });
    shutdown.trigger();
    running.wait().await.unwrap();
}
