//! Bare-client reproduction: how fast a plain rdkafka consumer reads a topic on a given
//! broker (no Tributary code). Used to tell a slow consumer from a slow broker, e.g.
//! `cargo run --release -p tributary-testkit --example fetch_rate --
//! 127.0.0.1:9092 analytics.aggregates.v1 20 [wait_ms [last_n]]`: for `secs` seconds, with
//! `fetch.wait.max.ms` = `wait_ms` (default 5), from the beginning of each partition or
//! from `last_n` records before its end.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic) = (&args[1], &args[2]);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let wait_ms: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
    let last_n: Option<i64> = args.get(5).and_then(|s| s.parse().ok());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "fetch-rate-probe")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", wait_ms.to_string())
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut end = 0;
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        let start = last_n.map_or(low, |n| (high - n).max(low));
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(start))
            .expect("partition");
        end += high - start;
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut read = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
        }
    }
    let rate = read as f64 / started.elapsed().as_secs_f64();
    println!(
        "{topic}: {end} records to read (fetch.wait.max.ms={wait_ms}, from {}); read {read} in {secs} s: {rate:.0} records/s",
        last_n.map_or_else(
            || "the beginning".to_owned(),
            |n| format!("{n} before the end")
        )
    );
}
