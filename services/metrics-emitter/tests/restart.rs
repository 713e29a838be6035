//! The real binary stopped mid-stream: SIGTERM exits 0 within the deadline and commits
//! exactly what it counted, so totals after a restart are exact; after SIGKILL they may
//! exceed the truth (records re-read) but never fall short.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::events::activity;
use common::*;
use tributary_events::{ActivityKind, Envelope, topics};
use tributary_runtime::kafka::owned_headers;
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::producer::FutureRecord;
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};
use tributary_testkit::{RawRecord, TestBroker, send_waiting, unique_name};

const PARTITIONS: i32 = 3;
/// Enough that the first run is stopped mid-stream, and that the restart reads a backlog of
/// thousands of header-carrying records from durable storage.
const EVENTS: usize = 20_000;

/// The child process, killed if the test fails before it stopped.
struct Emitter(Child);

impl Drop for Emitter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(broker: &TestBroker, agent: &Agent, group: &str) -> Emitter {
    let child = Command::new(env!("CARGO_BIN_EXE_metrics-emitter"))
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("GROUP_ID", group)
        .env("STATSD_ADDR", agent.addr.to_string())
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("SESSION_TIMEOUT_MS", "6000")
        .env("COMMIT_INTERVAL_MS", "200")
        .env("SHUTDOWN_TIMEOUT_MS", "10000")
        // The rebalance timeout follows max.poll.interval.ms (5 min by default): a rebalance
        // waits that long for a known member that has not rejoined. The runtime's poll thread
        // never waits on processing, so 15 s is plenty.
        .env(
            "KAFKA_CONFIG",
            format!(
                "max.poll.interval.ms=15000;{}",
                tributary_testkit::DEV_CLIENT_SETTING
            ),
        )
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("LOG_FORMAT", "pretty")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Emitter(child)
}

fn terminate(child: &mut Emitter) {
    let child = &mut child.0;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The shutdown deadline is 10 s; allow for process start-up costs on top.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit within the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn orders(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            activity(
                ActivityKind::OrderPlaced,
                &format!("p-{}", i % 500),
                Some((Some(2), 100, "EUR")),
                0,
            )
        })
        .collect()
}

/// Produces `EVENTS` orders in small batches, as traffic arrives, on a task.
fn produce_steadily(broker: &'static TestBroker) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let producer = broker.producer().unwrap();
        for chunk in orders(EVENTS).chunks(50) {
            let mut acks = Vec::new();
            for envelope in chunk {
                let record = RawRecord::from_envelope(envelope);
                let value = record.value.clone().unwrap();
                let headers = owned_headers(
                    record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_bytes())),
                );
                let record: FutureRecord<'_, [u8], Vec<u8>> = FutureRecord::to(topics::ACTIVITY)
                    .key(envelope.key.as_bytes())
                    .payload(&value)
                    .headers(headers);
                acks.push(send_waiting(&producer, record));
            }
            for ack in acks {
                ack.await.unwrap().unwrap();
            }
        }
    })
}

fn orders_counted(agent: &Agent) -> f64 {
    agent
        .totals("tributary.activity.event")
        .get(&(
            "tributary.activity.event".to_owned(),
            vec!["kind:order_placed".to_owned()],
        ))
        .copied()
        .unwrap_or(0.0)
}

async fn wait_counted(agent: &Agent, at_least: f64) {
    let started = Instant::now();
    while orders_counted(agent) < at_least {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "counted {} of {at_least}; last lines: {:?}",
            orders_counted(agent),
            agent.lines().iter().rev().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn committed_total(broker: &TestBroker, group: &str) -> i64 {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topics::ACTIVITY, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_then_restart_counts_exactly() {
    // SQLite storage: what a restart reads is what the durable engine serves.
    // Leaked so a producing task can borrow it; its watchdog stops it with this process.
    let broker: &'static TestBroker = Box::leak(Box::new(TestBroker::start_durable().unwrap()));
    for topic in topics::ALL {
        broker.create_named_topic(topic, PARTITIONS).await.unwrap();
    }
    let agent = Agent::start();
    let group = unique_name("emitter-restart");
    // Stopped mid-stream (records still arriving): what it counted is exactly what it
    // committed.
    let mut first = spawn(broker, &agent, &group);
    let producing = produce_steadily(broker);
    let started = Instant::now();
    while committed_total(broker, &group) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no commit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    terminate(&mut first);
    producing.await.unwrap();
    agent.quiesce();
    let counted = orders_counted(&agent);
    eprintln!("first run counted {counted} of {EVENTS} before SIGTERM");
    assert_eq!(counted as i64, committed_total(broker, &group));

    // The restart finishes the rest: exact totals.
    let mut second = spawn(broker, &agent, &group);
    wait_counted(&agent, EVENTS as f64).await;
    terminate(&mut second);
    agent.quiesce();
    let n = EVENTS as f64;
    let expected = totals(&[
        ("tributary.activity.event", &["kind:order_placed"], n),
        ("tributary.activity.order.units", &[], 2.0 * n),
        (
            "tributary.activity.order.revenue_minor",
            &["currency:EUR"],
            200.0 * n,
        ),
    ]);
    let got: Totals = agent
        .totals("tributary.activity.")
        .into_iter()
        .filter(|(k, _)| expected.contains_key(k))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_then_restart_never_undercounts() {
    let broker: &'static TestBroker = Box::leak(Box::new(TestBroker::start_durable().unwrap()));
    for topic in topics::ALL {
        broker.create_named_topic(topic, PARTITIONS).await.unwrap();
    }
    let agent = Agent::start();
    let group = unique_name("emitter-kill");
    let n = EVENTS as f64;

    // Killed without a shutdown while records arrive: records may be counted twice, never
    // missed.
    let mut first = spawn(broker, &agent, &group);
    let producing = produce_steadily(broker);
    // Killed right after its first commit, before the periodic StatsD flush (every second)
    // has come round: whatever it committed must already have been sent.
    let started = Instant::now();
    while committed_total(broker, &group) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no commit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    agent.quiesce();
    let committed = committed_total(broker, &group);
    let counted = orders_counted(&agent);
    eprintln!("killed after committing {committed}; counted {counted}");
    assert!(
        counted >= committed as f64,
        "committed {committed} orders but sent only {counted}"
    );
    producing.await.unwrap();
    let mut second = spawn(broker, &agent, &group);
    wait_counted(&agent, n).await;
    terminate(&mut second);
    agent.quiesce();
    let counted = orders_counted(&agent);
    eprintln!("after SIGKILL and restart: counted {counted} of {n}");
    assert!(counted >= n);
    assert_eq!(committed_total(broker, &group), EVENTS as i64);
}
