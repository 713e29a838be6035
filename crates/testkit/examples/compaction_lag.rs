//! A bare rdkafka producer and consumer against the dev broker (SQLite), no Tributary code
//! in the path: does a compacted topic keep superseded records younger than
//! `min.compaction.lag.ms` (one hour here), before and after a broker restart? A topic
//! with `cleanup.policy=delete` is the control. Found while reading the truth topics back
//! after chaos runs (docs/reliability.md).
//!
//! `cargo run -p tributary-testkit --example compaction_lag`

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tributary_testkit::TestBroker;

const KEYS: usize = 10;
const VERSIONS: usize = 10;

fn count(broker: &TestBroker, topic: &str) -> usize {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", "bare-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("a consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .expect("a partition");
    consumer.assign(&tpl).expect("assign");
    let mut n = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            n += 1;
            if m.offset() + 1 >= high {
                break;
            }
        }
    }
    println!("  {topic}: watermarks {low}..{high}, {n} records read");
    n
}

#[tokio::main]
async fn main() {
    let mut broker = TestBroker::start_durable().expect("a dev broker");
    let admin: AdminClient<DefaultClientContext> =
        broker.client_config().create().expect("an admin client");
    let compacted = NewTopic::new("compacted", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.compaction.lag.ms", "3600000");
    let control =
        NewTopic::new("control", 1, TopicReplication::Fixed(1)).set("cleanup.policy", "delete");
    for result in admin
        .create_topics([&compacted, &control], &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.expect("a topic");
    }
    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("a producer");
    for topic in ["compacted", "control"] {
        for version in 0..VERSIONS {
            for key in 0..KEYS {
                let key = format!("k{key}");
                let value = format!("v{version}");
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("acknowledged");
            }
        }
    }
    println!(
        "{} records per topic, {KEYS} keys, acknowledged:",
        KEYS * VERSIONS
    );
    count(&broker, "compacted");
    count(&broker, "control");
    broker.restart().expect("a clean restart");
    println!("after a clean restart:");
    count(&broker, "compacted");
    count(&broker, "control");
    broker.kill().expect("SIGKILL");
    broker.restart().expect("a restart after SIGKILL");
    println!("after SIGKILL and a restart:");
    count(&broker, "compacted");
    count(&broker, "control");
}
