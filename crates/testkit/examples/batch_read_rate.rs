//! A bare rdkafka producer and consumer against the dev broker (SQLite), no Tributary code
//! in the path: how fast does a fresh consumer read a topic back from its beginning when the
//! records were written one per record batch (a producer sending a trickle, as a service
//! does at a few hundred events/s) against the same records written in large batches?
//! Found while a million-event chaos run could not drain its aggregates topic
//! (docs/reliability.md).
//!
//! `cargo run --release -p tributary-testkit --example batch_read_rate [-- records [ballast
//! [idle [idle_wait_ms]]]]` (`ballast`: records written to another topic first, to see
//! whether a large database slows reads; `idle`: consumers polling an empty topic
//! meanwhile, with `fetch.wait.max.ms` = `idle_wait_ms`, 5 as the dev configs set it).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tributary_testkit::TestBroker;

const PARTITIONS: i32 = 6;

async fn produce(broker: &TestBroker, topic: &str, records: usize, per_batch: usize) -> f64 {
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", if per_batch == 1 { "0" } else { "100" })
        .set("batch.num.messages", per_batch.to_string())
        .set("batch.size", "1000000")
        .set("max.in.flight.requests.per.connection", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("a producer");
    let value = "x".repeat(300);
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..records {
        let key = format!("key-{}", i % 5_000);
        let partition = (i % PARTITIONS as usize) as i32;
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition(partition)
            .headers(headers);
        let delivery = producer.send_result(record).expect("queued");
        if per_batch == 1 {
            // One record in flight at a time: every record is its own batch.
            delivery.await.expect("delivered").expect("acknowledged");
        } else {
            pending.push(delivery);
            if pending.len() >= 200_000 {
                for delivery in pending.drain(..) {
                    delivery.await.expect("delivered").expect("acknowledged");
                }
            }
        }
    }
    for delivery in pending {
        delivery.await.expect("delivered").expect("acknowledged");
    }
    records as f64 / started.elapsed().as_secs_f64()
}

fn read_all(broker: &TestBroker, topic: &str, records: usize) -> f64 {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("a partition");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut read = 0;
    while read < records && Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
        }
    }
    assert_eq!(
        read, records,
        "{topic}: every record read back within 600 s"
    );
    records as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let records: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    // Records written first to another topic: does a large database slow every read?
    let ballast: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    // Idle consumers polling an empty topic meanwhile (as caught-up services do): does
    // their fetching slow the reader?
    let idle: usize = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let idle_wait = std::env::args().nth(4).unwrap_or_else(|| "5".into());
    let broker = TestBroker::start_durable().expect("a dev broker");
    let admin: AdminClient<DefaultClientContext> =
        broker.client_config().create().expect("an admin client");
    let topics = [
        NewTopic::new("single", PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new("batched", PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new("ballast", PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new("empty", PARTITIONS, TopicReplication::Fixed(1)),
    ];
    for result in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("topics created")
    {
        result.expect("topic created");
    }
    if ballast > 0 {
        let wrote = produce(&broker, "ballast", ballast, 10_000).await;
        println!("ballast: {ballast} records written first to another topic at {wrote:.0}/s");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idlers: Vec<_> = (0..idle)
        .map(|i| {
            let consumer: BaseConsumer = broker
                .client_config()
                .set("group.id", format!("idle-{i}"))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", &idle_wait)
                .create()
                .expect("a consumer");
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset("empty", p, Offset::End)
                    .expect("a partition");
            }
            consumer.assign(&tpl).expect("assign");
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(100));
                }
            })
        })
        .collect();
    if idle > 0 {
        println!(
            "{idle} idle consumers poll an empty {PARTITIONS}-partition topic meanwhile (fetch.wait.max.ms={idle_wait})"
        );
    }
    // One record per batch writes at ~1,500/s here: large runs measure batches only.
    let kinds: &[(&str, usize)] = if records > 20_000 {
        &[("batched", 10_000)]
    } else {
        &[("single", 1), ("batched", 10_000)]
    };
    for &(topic, per_batch) in kinds {
        let wrote = produce(&broker, topic, records, per_batch).await;
        let read = read_all(&broker, topic, records);
        println!(
            "{topic:>8}: {records} records of 300 B, {per_batch} per batch at most: written at {wrote:.0}/s, read back by a fresh consumer at {read:.0}/s"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for idler in idlers {
        idler.join().expect("an idle consumer");
    }
}
