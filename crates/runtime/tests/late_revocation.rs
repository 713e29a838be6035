//! A revocation that misses its deadline outside a stop: its partition is given up with
//! its input uncommitted (the next owner processes it), the miss is counted once, and a
//! later stop that finishes in time is clean. A test binary of its own: the counter is read
//! from the process-wide metrics registry, which no other test may move.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tributary_testkit::TestBroker;

/// A revocation whose partition cannot finish in time gives the partition up with its
/// input uncommitted (the next owner processes it), and does not make a later stop unclean:
/// the stop finishes in time, so it exits 0. The late revocation is counted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_revocation_loses_nothing_and_leaves_a_later_stop_clean() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-late-revoke", 2).await.unwrap();
    let group = unique_group("rt-late-revoke-group");
    // Messages on both partitions; the first member holds them at a gate, so the
    // partition that moves has a message in hand when it is revoked.
    let envelopes: Vec<_> = (0..40).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();
    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let first = Recorder::new(Behaviour {
        gate: Some(Gate {
            after: 0,
            open: gate,
        }),
        ..Behaviour::default()
    });
    let mut first_config = config(broker, &group);
    first_config.shutdown_timeout_ms = 1_000;
    let (a, stop_a) = start(first_config, &[&topic], first.clone()).await;
    eventually(
        "the first member holds a message of each partition",
        Duration::from_secs(30),
        || {
            let seen = first.first_seen.lock().unwrap();
            seen.keys().any(|(p, _)| *p == 0) && seen.keys().any(|(p, _)| *p == 1)
        },
    )
    .await;
    // The registry is the test process's: count from here.
    let late_before = late_revocations(&a.admin_addr).await;
    let second = Recorder::default();
    let (b, stop_b) = start(config(broker, &group), &[&topic], second.clone()).await;
    eventually(
        "the second member took a partition",
        Duration::from_secs(60),
        || second.owned().len() == 1,
    )
    .await;
    let moved = *second.owned().iter().next().unwrap();
    let kept = 1 - moved;
    open_gate.send(true).unwrap();
    // Every message of both partitions is processed: the moved partition's (none of which
    // the first member committed) by the second member.
    let per_partition = |recorder: &Recorder, p: i32| {
        recorder
            .processed()
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect::<BTreeSet<i64>>()
    };
    let ends = end_offsets(broker, &topic, 2);
    eventually(
        "every message processed by its owner",
        Duration::from_secs(60),
        || {
            per_partition(&second, moved).len() as i64 == ends[&moved]
                && per_partition(&first, kept).len() as i64 == ends[&kept]
        },
    )
    .await;
    assert!(
        per_partition(&first, moved).is_empty(),
        "the first member processed nothing of the partition it gave up"
    );
    let late = late_revocations(&a.admin_addr).await;
    assert_eq!(
        late,
        late_before + 1.0,
        "the late revocation is counted once"
    );
    stop_b.trigger();
    b.wait().await.unwrap();
    stop_a.trigger();
    a.wait()
        .await
        .expect("a stop that finishes in time is clean, whatever an earlier revocation did");
}

/// `tributary_consumer_late_revocations` on the admin endpoint's `/metrics` (0 before any).
async fn late_revocations(admin: &std::net::SocketAddr) -> f64 {
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("tributary_consumer_late_revocations"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}
