//! A broker outage pauses work and loses nothing: readiness reports it, and once the broker
//! is back every input's output arrives.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_pauses_work_and_loses_nothing() {
    // Its own broker, with durable storage, because this test stops and restarts it.
    let mut broker = TestBroker::start_durable().unwrap();
    let input = broker.create_topic("rt-outage-in", 3).await.unwrap();
    let output = broker.create_topic("rt-outage-out", 3).await.unwrap();
    let group = unique_group("rt-outage-group");
    let before: Vec<_> = (0..600)
        .map(|i| stock(&format!("p-{}", i % 31), i))
        .collect();
    broker.produce_envelopes(&input, &before).await.unwrap();

    let recorder = Recorder::new(Behaviour {
        forward_to: Some(output.clone()),
        delay: Duration::from_millis(5),
        ..Behaviour::default()
    });
    let config = config(&broker, &group);
    let (running, shutdown) = start(config, &[&input], recorder.clone()).await;
    eventually("processing under way", Duration::from_secs(30), || {
        recorder.count() >= 100
    })
    .await;

    broker.stop().unwrap();
    eventually(
        "readiness reports the outage",
        Duration::from_secs(30),
        || {
            running
                .health
                .not_ready_reasons()
                .contains(&"broker unreachable".to_owned())
        },
    )
    .await;
    broker.restart().unwrap();

    let after: Vec<_> = (600..800)
        .map(|i| stock(&format!("p-{}", i % 31), i))
        .collect();
    let produced = broker.produce_envelopes(&input, &after).await;
    if let Err(e) = produced {
        let log = std::fs::read_to_string(broker.log_path()).unwrap_or_default();
        let restarted = log.rfind(" broker ").unwrap_or(0);
        let tail: Vec<&str> = log[restarted..].lines().take(30).collect();
        panic!(
            "produce after restart failed: {e}\nbroker log since restart:\n{}",
            tail.join("\n")
        );
    }
    let expected: BTreeSet<String> = before
        .iter()
        .chain(&after)
        .map(|e| e.id.to_string())
        .collect();
    let outputs = broker
        .consume_until(&[&output], Duration::from_secs(120), |records| {
            let ids: BTreeSet<String> = records
                .iter()
                .filter_map(|r| r.envelope().ok())
                .map(|e| e.id.to_string())
                .collect();
            expected.is_subset(&ids)
        })
        .await
        .unwrap();
    assert!(outputs.len() >= expected.len());
    eventually("ready again", Duration::from_secs(30), || {
        running.health.not_ready_reasons().is_empty()
    })
    .await;
    shutdown.trigger();
    running.wait().await.unwrap();
}
