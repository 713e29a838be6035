//! Shutdown mid-stream finishes in-flight work, commits everything processed, and stops
//! within its deadline.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_mid_stream_commits_everything_processed_within_the_deadline() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-shutdown", 6).await.unwrap();
    let out = broker.create_topic("rt-shutdown-out", 6).await.unwrap();
    let group = unique_group("rt-shutdown-group");
    let envelopes: Vec<_> = (0..3000)
        .map(|i| stock(&format!("p-{}", i % 71), i))
        .collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    let recorder = Recorder::new(Behaviour {
        forward_to: Some(out.clone()),
        delay: Duration::from_millis(2),
        ..Behaviour::default()
    });
    let config = config(broker, &group);
    let deadline = config.shutdown_timeout();
    let (running, shutdown) = start(config, &[&topic], recorder.clone()).await;
    eventually("processing under way", Duration::from_secs(30), || {
        recorder.count() >= 300
    })
    .await;

    let asked = Instant::now();
    shutdown.trigger();
    running.wait().await.unwrap();
    assert!(
        asked.elapsed() < deadline,
        "stopped in {:?}",
        asked.elapsed()
    );

    let processed = recorder.processed();
    assert!(processed.len() < 3000, "stopped mid-stream");
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o) in &processed {
        per_partition.entry(*p).or_default().push(*o);
    }
    let committed = committed(broker, &group, &topic, 6);
    for (p, offsets) in &per_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, &expected,
            "partition {p} processed in order from 0"
        );
        assert_eq!(
            committed.get(p),
            Some(&(offsets.len() as i64)),
            "partition {p} fully committed"
        );
    }
    // Every output of every processed input was flushed to the broker before exit.
    let forwarded = broker
        .consume_count(&[&out], processed.len(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(forwarded.len(), processed.len());
}
