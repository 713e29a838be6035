//! The harness against a real broker: startup, delivery at volume, ordering, restarts.

use std::collections::HashMap;
use std::time::Duration;

use tributary_events::{Envelope, Event};
use tributary_testkit::TestBroker;

fn stock(product: usize, quantity: u64) -> Envelope {
    Envelope::new(
        "testkit",
        Event::StockChanged(tributary_events::Stock {
            product_id: format!("p-{product}"),
            quantity,
            warehouse: None,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_envelopes_across_six_partitions_all_arrive_in_order_per_key() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("testkit-volume", 6).await.unwrap();
    // 100 keys x 100 versions each; the quantity is the version, so order is checkable.
    let envelopes: Vec<Envelope> = (0..100u64)
        .flat_map(|version| (0..100).map(move |product| stock(product, version)))
        .collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    let records = broker
        .consume_count(&[&topic], 10_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(records.len(), 10_000);

    let mut partitions_of_key: HashMap<String, i32> = HashMap::new();
    let mut versions_of_key: HashMap<String, Vec<u64>> = HashMap::new();
    for record in &records {
        let key = record.key_str().unwrap().to_owned();
        let envelope = record.envelope().unwrap();
        assert_eq!(envelope.key, key);
        assert_eq!(record.header("type"), Some("catalog.stock.changed"));
        let Event::StockChanged(s) = envelope.event else {
            panic!("unexpected event")
        };
        // One key always lands on one partition.
        let partition = *partitions_of_key
            .entry(key.clone())
            .or_insert(record.partition);
        assert_eq!(partition, record.partition, "key {key} moved partitions");
        versions_of_key.entry(key).or_default().push(s.quantity);
    }
    assert_eq!(versions_of_key.len(), 100);
    for (key, versions) in &versions_of_key {
        assert_eq!(versions, &(0..100).collect::<Vec<u64>>(), "order of {key}");
    }
    let used: std::collections::HashSet<i32> = partitions_of_key.values().copied().collect();
    assert_eq!(used.len(), 6, "100 keys spread over all 6 partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_broker_keeps_its_records_across_a_restart() {
    let mut broker = TestBroker::start_durable().unwrap();
    let topic = broker.create_topic("testkit-durable", 1).await.unwrap();
    broker
        .produce_envelopes(&topic, &[stock(1, 7)])
        .await
        .unwrap();
    broker.restart().unwrap();
    let records = broker
        .consume_count(&[&topic], 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(records[0].key_str(), Some("p-1"));
}

#[test]
fn kill_is_a_sigkill_and_stop_is_not() {
    let mut broker = TestBroker::start_durable().unwrap();
    let log = broker.log_path();
    let exits = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("broker-watchdog: broker exited with status "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    broker.stop().unwrap();
    assert_eq!(exits().len(), 1);
    assert_ne!(exits()[0], "137", "stop lets the broker shut down");
    broker.restart().unwrap();
    broker.kill().unwrap();
    assert!(!broker.is_running());
    // 128 + 9: the shell's report of a child ended by SIGKILL.
    assert_eq!(exits().get(1).map(String::as_str), Some("137"));
}

#[tokio::test]
async fn consuming_gives_up_at_the_deadline_with_what_it_saw() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("testkit-empty", 1).await.unwrap();
    let err = broker
        .consume_count(&[&topic], 1, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("0 records received"), "{err}");
}
