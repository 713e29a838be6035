//! A second consumer joins mid-stream: nothing is lost, and partitions are committed before
//! they are handed over, so the newcomer repeats nothing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_consumer_joining_loses_nothing_and_repeats_nothing() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-rebalance", 6).await.unwrap();
    let group = unique_group("rt-rebalance-group");
    let total = 3000;
    let envelopes: Vec<_> = (0..total)
        .map(|i| stock(&format!("p-{}", i % 89), i))
        .collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    let slow = Behaviour {
        delay: Duration::from_millis(3),
        ..Behaviour::default()
    };
    let first = Recorder::new(slow.clone());
    let (a, stop_a) = start(config(broker, &group), &[&topic], first.clone()).await;
    eventually(
        "the first consumer is under way",
        Duration::from_secs(30),
        || first.count() >= 300,
    )
    .await;
    let second = Recorder::new(slow);
    let (b, stop_b) = start(config(broker, &group), &[&topic], second.clone()).await;

    eventually("every input processed", Duration::from_secs(90), || {
        let mut all: BTreeSet<(i32, i64)> = first.processed().into_iter().collect();
        all.extend(second.processed());
        all.len() == total as usize
    })
    .await;
    eventually(
        "both consumers own partitions",
        Duration::from_secs(30),
        || {
            !b.health
                .not_ready_reasons()
                .iter()
                .any(|r| r.contains("partitions"))
        },
    )
    .await;
    assert!(second.count() > 0, "the newcomer took over work");
    let a_set: BTreeSet<_> = first.processed().into_iter().collect();
    let repeated: Vec<_> = second
        .processed()
        .into_iter()
        .filter(|m| a_set.contains(m))
        .collect();
    assert!(
        repeated.is_empty(),
        "handed-over partitions were reprocessed: {repeated:?}"
    );
    assert_eq!(
        first.count() + second.count(),
        total as usize,
        "each message exactly once"
    );

    stop_a.trigger();
    stop_b.trigger();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
}
