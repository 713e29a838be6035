//! A slow processor does not make the loop buffer without bound: a partition is paused at
//! its in-flight budget and resumed as work finishes, and nothing is lost.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_partition_is_paused_at_its_budget_and_finishes_everything() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-pressure", 1).await.unwrap();
    let group = unique_group("rt-pressure-group");
    let envelopes: Vec<_> = (0..400).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    let mut config = config(broker, &group);
    config.max_in_flight = 20;
    let recorder = Recorder::new(Behaviour {
        delay: Duration::from_millis(5),
        ..Behaviour::default()
    });
    let (running, shutdown) = start(config, &[&topic], recorder.clone()).await;

    // Sample the partition's in-flight count while it works through the backlog.
    let peak = Arc::new(AtomicUsize::new(0));
    let health = running.health.clone();
    let sampler_peak = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            let status = health.status();
            if let Some(n) = status["partitions"][0]["in_flight"].as_u64() {
                sampler_peak.fetch_max(n as usize, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    eventually("all 400 processed", Duration::from_secs(60), || {
        recorder.count() == 400
    })
    .await;
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak > 0, "the sampler saw work in flight");
    // The budget plus what one poll could hand over before the pause took effect.
    assert!(
        peak <= 20 + 5,
        "in flight peaked at {peak} with a budget of 20"
    );
    let processed = recorder.processed();
    assert_eq!(
        processed,
        (0..400).map(|o| (0, o)).collect::<Vec<_>>(),
        "in order, none lost"
    );
    shutdown.trigger();
    running.wait().await.unwrap();
}
