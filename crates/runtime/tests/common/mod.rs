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
    Incoming, Output, PartitionId, ProcessError, Processor, Running, RuntimeConfig, ServiceSpec,
    Shutdown, StartFrom,
};
use tributary_testkit::{TestBroker, unique_name};

/// What the recorder does with a message, chosen by its key.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Forward every envelope to this topic.
    pub forward_to: Option<String>,
    /// Sleep this long per message.
    pub delay: Duration,
    /// Sleep this long in `on_assigned`.
    pub assign_delay: Duration,
    /// `on_assigned` answers this start offset.
    pub start_from: Option<i64>,
    /// Hold every message once this many were processed, until the gate opens.
    pub gate: Option<Gate>,
}

/// Holds processing at a known point, so that a test can change the world (stop the broker,
/// say) while messages are known to be still unprocessed.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Messages processed before the gate holds the rest.
    pub after: usize,
    /// Becomes true when the gate opens.
    pub open: tokio::sync::watch::Receiver<bool>,
}

/// How many times a message keyed `blocked` is refused as blocked before it goes through.
pub const BLOCKED_ATTEMPTS: u32 = 12;

/// Records every processed (partition, offset), and fails on chosen keys:
/// `permanent` fails permanently, `transient` always transiently, `flaky` once, `panic` panics,
/// `blocked` is blocked `BLOCKED_ATTEMPTS` times.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub processed: Arc<Mutex<Vec<(i32, i64)>>>,
    pub attempts: Arc<Mutex<HashMap<(i32, i64), u32>>>,
    /// Partitions whose `on_assigned` returned, in order, with when it returned.
    pub assigned: Arc<Mutex<Vec<(i32, Instant)>>>,
    /// Partitions given to `on_revoked`, in order.
    pub revoked: Arc<Mutex<Vec<i32>>>,
    /// Both hooks in the order they ran: (assigned?, partition).
    pub hooks: Arc<Mutex<Vec<(bool, i32)>>>,
    /// When each (partition, offset) was first processed.
    pub first_seen: Arc<Mutex<HashMap<(i32, i64), Instant>>>,
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

    /// Partitions assigned and not revoked since, by the hooks.
    pub fn owned(&self) -> BTreeSet<i32> {
        let mut owned = BTreeSet::new();
        for (assigned, p) in self.hooks.lock().unwrap().iter() {
            if *assigned {
                owned.insert(*p);
            } else {
                owned.remove(p);
            }
        }
        owned
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
        self.first_seen
            .lock()
            .unwrap()
            .entry(id)
            .or_insert_with(Instant::now);
        if let Some(gate) = &self.behaviour.gate {
            if self.count() >= gate.after {
                let mut open = gate.open.clone();
                // The sender lives as long as the test: an error means it ended.
                let _ = open.wait_for(|open| *open).await;
            }
        }
        if !self.behaviour.delay.is_zero() {
            tokio::time::sleep(self.behaviour.delay).await;
        }
        match message.key_str() {
            Some("permanent") => return Err(ProcessError::Permanent("refused".into())),
            Some("transient") => return Err(ProcessError::Transient("still down".into())),
            Some("flaky") if attempt == 1 => return Err(ProcessError::Transient("blip".into())),
            Some("blocked") if attempt <= BLOCKED_ATTEMPTS => {
                return Err(ProcessError::Blocked("local state unreadable".into()));
            }
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

    async fn on_assigned(&self, partition: &PartitionId) -> Result<StartFrom, ProcessError> {
        if !self.behaviour.assign_delay.is_zero() {
            tokio::time::sleep(self.behaviour.assign_delay).await;
        }
        self.assigned
            .lock()
            .unwrap()
            .push((partition.partition, Instant::now()));
        self.hooks.lock().unwrap().push((true, partition.partition));
        Ok(self
            .behaviour
            .start_from
            .map_or(StartFrom::Committed, StartFrom::Offset))
    }

    async fn on_revoked(&self, partition: &PartitionId) {
        self.revoked.lock().unwrap().push(partition.partition);
        self.hooks
            .lock()
            .unwrap()
            .push((false, partition.partition));
    }
}

/// The end offset of every partition of `topic`.
pub fn end_offsets(broker: &TestBroker, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = broker.client_config().create().unwrap();
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
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
    // The dev broker holds every fetch for the full fetch.wait.max.ms (ARCHITECTURE.md
    // section 9); the default 500 ms would make every test wait on it.
    config.kafka_config = vec![DEV_BROKER_CLIENT.into()];
    config
}

/// Client settings for the dev broker: fetches are not held for long.
pub use tributary_testkit::DEV_CLIENT_SETTING as DEV_BROKER_CLIENT;

pub async fn start<P: Processor>(
    config: RuntimeConfig,
    topics: &[&str],
    processor: P,
) -> (Running, Shutdown) {
    init_logs();
    let shutdown = Shutdown::new();
    let spec = ServiceSpec::new("runtime-test", topics, 0);
    let running = tributary_runtime::start(spec, config, processor, shutdown.clone())
        .await
        .expect("service starts");
    (running, shutdown)
}

/// Logs at `RUST_LOG` (default `warn`) into the test's captured output, so a failing test
/// shows what the runtime said.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .compact()
        .try_init();
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
