//! A bare rdkafka producer against the dev broker: how many acknowledged records per second
//! the broker takes on this machine, with no Tributary code in the path. It bounds any service
//! that must write a record per input (aggregation's repartition topic).
//!
//! `cargo run --release -p tributary-testkit --example produce_ceiling [records] [memory|sqlite]`

use std::time::Instant;

use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use tributary_testkit::{Storage, TestBroker};

fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a count"));
    let storage = match args.next().as_deref() {
        Some("sqlite") => Storage::Sqlite(std::env::temp_dir().join("produce-ceiling.db")),
        _ => Storage::Memory,
    };
    let broker = TestBroker::start_with(storage.clone()).expect("a dev broker");
    let topic = "ceiling";
    let admin_config = broker.client_config();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = admin_config.create().unwrap();
        admin
            .create_topics(
                &[NewTopic::new(topic, 6, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
    });
    // Settings chosen for throughput: large batches, a short linger, idempotence as the
    // services use it, everything acknowledged.
    for (label, compression) in [("none", "none"), ("lz4", "lz4")] {
        let producer: ThreadedProducer<_> = broker
            .client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("compression.codec", compression)
            .create()
            .unwrap();
        let payload = vec![b'x'; 213];
        let keys: Vec<String> = (0..10_000).map(|i| format!("p-{i}")).collect();
        let started = Instant::now();
        for i in 0..records {
            let key = &keys[i % keys.len()];
            let mut record = BaseRecord::<str, [u8]>::to(topic)
                .key(key)
                .payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Timeout::After(std::time::Duration::from_millis(1)));
                    }
                }
            }
        }
        producer.flush(Timeout::Never).unwrap();
        let rate = records as f64 / started.elapsed().as_secs_f64();
        println!(
            "{storage:?} compression={label}: {records} records acknowledged, {rate:.0} records/s"
        );
    }
}
