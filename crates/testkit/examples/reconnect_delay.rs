//! A bare rdkafka producer and consumer across broker outages: how long after the broker
//! answers again each client gets through, with librdkafka's default reconnect backoff
//! (`reconnect.backoff.max.ms` = 10 s) and with 1 s. No Tributary code in the path.
//!
//! `cargo run --release -p tributary-testkit --example reconnect_delay [rounds]`

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tributary_testkit::{Storage, TestBroker};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(3, |n| n.parse().expect("a count"));
    let path = std::env::temp_dir().join(format!("reconnect-delay-{}.db", std::process::id()));
    let mut broker = TestBroker::start_with(Storage::Sqlite(path)).expect("a dev broker");
    let topic = "reconnect";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = broker.client_config().create().unwrap();
        admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
    });
    println!(
        "| reconnect.backoff.max.ms | outage s | producer ack after return, s | consumer record after return, s |"
    );
    println!("|---|---|---|---|");
    for max_backoff in [None, Some("1000")] {
        for outage in [2u64, 4, 8] {
            for _ in 0..rounds {
                let mut config = broker.client_config();
                if let Some(max) = max_backoff {
                    config.set("reconnect.backoff.max.ms", max);
                }
                let producer: ThreadedProducer<_> = config
                    .clone()
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5")
                    .create()
                    .unwrap();
                let consumer: BaseConsumer = config
                    .clone()
                    .set("group.id", format!("reconnect-{}", rand_suffix()))
                    .set("auto.offset.reset", "latest")
                    .set("fetch.wait.max.ms", "100")
                    .create()
                    .unwrap();
                consumer.subscribe(&[topic]).unwrap();
                // Both clients are connected and the consumer holds its partition.
                let deadline = Instant::now() + Duration::from_secs(30);
                while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
                    assert!(Instant::now() < deadline, "no assignment");
                    consumer.poll(Duration::from_millis(100));
                }
                producer
                    .send(BaseRecord::<str, str>::to(topic).key("k").payload("warm"))
                    .unwrap();
                producer.flush(Duration::from_secs(10)).unwrap();
                broker.kill().unwrap();
                let down = Instant::now();
                while down.elapsed() < Duration::from_secs(outage) {
                    consumer.poll(Duration::from_millis(100));
                }
                broker.restart().unwrap();
                // The broker answers (restart waits for that): now time both clients.
                let back = Instant::now();
                producer
                    .send(BaseRecord::<str, str>::to(topic).key("k").payload("after"))
                    .unwrap();
                producer.flush(Duration::from_secs(60)).unwrap();
                let acked = back.elapsed();
                let deadline = Instant::now() + Duration::from_secs(60);
                let received = loop {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                        if m.payload() == Some(b"after".as_slice()) {
                            break Some(back.elapsed());
                        }
                    }
                    if Instant::now() > deadline {
                        break None;
                    }
                };
                println!(
                    "| {} | {outage} | {:.2} | {} |",
                    max_backoff.unwrap_or("default (10000)"),
                    acked.as_secs_f64(),
                    received.map_or("none in 60 s".into(), |r| format!("{:.2}", r.as_secs_f64()))
                );
            }
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
