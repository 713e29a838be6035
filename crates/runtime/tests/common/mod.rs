//! Shared helpers for the runtime's broker tests: a recording processor and a service
//! started against the test broker with test-sized settings.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary_events::{Envelope, Event, Stock};
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};
use tributary_runtime::{
    Incoming, Output, ProcessError, Processor, Running, RuntimeConfig, ServiceSpec, Shutdown,
};
use tributary_testkit::{TestBroker, unique_name};

/// What the recorder does with a message, chosen by its key.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Forward every envelope to this topic.
    pub forward_to: Option<String>,
    /// Sleep this long per message.
    pub delay: Duration,
}

/// Records every processed (partition, offset), and fails on chosen keys:
/// `permanent` fails permanently, `transient` always transiently, `flaky` once, `panic` panics.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub processed: Arc<Mutex<Vec<(i32, i64)>>>,
    pub attempts: Arc<Mutex<HashMap<(i32, i64), u32>>>,
    pub behaviour: Behaviour,
}

impl Recorder {
    pub fn new(behaviour: Behaviour) -> Recorder {
        Recorder {
            behaviour,
            ..Recorder::default()
        }
    }

    pub fn processed(&self) -> Vec<(i32, i64)> {
        self.processed.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.processed.lock().unwrap().len()
    }
}

impl Processor for Recorder {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        let id = (message.partition, message.offset);
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let a = attempts.entry(id).or_insert(0);
            *a += 1;
            *a
        };
        if !self.behaviour.delay.is_zero() {
            tokio::time::sleep(self.behaviour.delay).await;
        }
        match message.key_str() {
            Some("permanent") => return Err(ProcessError::Permanent("refused".into())),
            Some("transient") => return Err(ProcessError::Transient("still down".into())),
            Some("flaky") if attempt == 1 => return Err(ProcessError::Transient("blip".into())),
            Some("panic") => panic!("handler bug"),
            _ => {}
        }
        self.processed.lock().unwrap().push(id);
        let outputs = match (&self.behaviour.forward_to, message.envelope) {
            (Some(topic), Some(envelope)) => vec![Output::event(
                topic.clone(),
                Envelope::new("test", envelope.event).with_id(envelope.id),
            )],
            _ => vec![],
        };
        Ok(outputs)
    }
}

/// Test-sized settings: fast commits and retries, the test session timeout.
pub fn config(broker: &TestBroker, group: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig::defaults();
    config.brokers = broker.bootstrap();
    config.group_id = Some(group.to_owned());
    config.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    config.statsd_addr = "127.0.0.1:9".into();
    config.session_timeout_ms = 6000;
    config.commit_interval_ms = 200;
    config.backoff_ms = 10;
    config.max_backoff_ms = 50;
    config.max_attempts = 3;
    config.shutdown_timeout_ms = 10_000;
    config
}

pub async fn start<P: Processor>(
    config: RuntimeConfig,
    topics: &[&str],
    processor: P,
) -> (Running, Shutdown) {
    let shutdown = Shutdown::new();
    let spec = ServiceSpec::new("runtime-test", topics, 0);
    let running = tributary_runtime::start(spec, config, processor, shutdown.clone())
        .await
        .expect("service starts");
    (running, shutdown)
}

pub fn stock(product: &str, quantity: u64) -> Envelope {
    Envelope::new(
        "test",
        Event::StockChanged(Stock {
            product_id: product.to_owned(),
            quantity,
            warehouse: None,
        }),
    )
}

/// Polls `condition` every 20 ms until it holds, or panics after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The committed offset of every partition of `topic` for `group` (absent: none).
pub fn committed(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Every offset below each committed position was processed.
pub fn assert_commits_cover_only_processed(
    committed: &BTreeMap<i32, i64>,
    processed: &BTreeSet<(i32, i64)>,
) {
    for (&partition, &position) in committed {
        for offset in 0..position {
            assert!(
                processed.contains(&(partition, offset)),
                "partition {partition} committed {position} but offset {offset} was never processed"
            );
        }
    }
}

pub fn unique_group(prefix: &str) -> String {
    unique_name(prefix)
}
