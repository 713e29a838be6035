//! Metrics reach a StatsD agent as DogStatsD packets with tags. (Its own test binary: the
//! metrics recorder is process-wide and must point at this test's socket.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_arrive_at_the_statsd_agent_with_dogstatsd_tags() {
    let agent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-statsd", 1).await.unwrap();
    let group = unique_group("rt-statsd-group");
    let mut config = config(broker, &group);
    config.statsd_addr = agent.local_addr().unwrap().to_string();
    let (running, shutdown) = start(config, &[&topic], Recorder::default()).await;
    broker
        .produce_envelopes(&topic, &[stock("a", 1), stock("b", 2)])
        .await
        .unwrap();

    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 65_536];
    while !(seen.contains("tributary.messages.in:")
        && seen.contains("tributary.processing.seconds:"))
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(remaining, agent.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no StatsD packet with the metrics; got:\n{seen}"))
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    let line = seen
        .lines()
        .find(|l| l.starts_with("tributary.messages.in:"))
        .unwrap();
    assert!(line.contains("|c"), "a counter: {line}");
    assert!(
        line.contains(&format!("topic:{topic}")),
        "DogStatsD tag: {line}"
    );
    assert!(line.contains("service:runtime-test"), "default tag: {line}");
    shutdown.trigger();
    running.wait().await.unwrap();
}
