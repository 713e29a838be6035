//! A consumer frozen (SIGSTOP) past its session timeout while another instance takes its
//! partition over: once thawed it processes nothing more of that partition, and hands no
//! output to the producer, before it learns that the partition is gone; and it works
//! again once the group gives it one.
//!
//! The frozen instance is a real separate process (this test binary re-run with one
//! ignored test selected): a freeze stops every thread of a process, librdkafka's too.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tributary_events::Envelope;
use tributary_runtime::StartFrom;
use tributary_runtime::{Incoming, Output, PartitionId, ProcessError, Processor, Shutdown};
use tributary_testkit::TestBroker;

const CHILD_ENV: &str = "TRIBUTARY_FREEZE_CHILD";

/// The frozen instance's session timeout (Kafka's smallest by default): a freeze past
/// half of it holds its work, for one and a half of it.
const CHILD_SESSION_MS: u64 = 6000;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Writes a line per event, flushed at once: `p <ms> <partition> <offset>` when a message's
/// processing starts, `a <ms> <partition>` and `r <ms> <partition>` when a partition is
/// assigned and revoked. Processing takes 20 ms, so the instance always has prefetched
/// messages waiting when it is frozen, and starts the next one soon after it thaws.
struct Journal {
    file: std::sync::Mutex<std::fs::File>,
    /// Every message is forwarded here, as from [`CHILD_SOURCE`].
    out: String,
}

/// The source of the child's outputs (the newcomer's say `test`).
const CHILD_SOURCE: &str = "freeze-child";

impl Journal {
    fn line(&self, text: String) {
        let mut file = self.file.lock().unwrap();
        writeln!(file, "{text}").unwrap();
        file.flush().unwrap();
    }
}

impl Processor for Journal {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        self.line(format!(
            "p {} {} {}",
            now_ms(),
            message.partition,
            message.offset
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(message
            .envelope
            .map(|e| {
                Output::event(
                    self.out.clone(),
                    Envelope::new(CHILD_SOURCE, e.event).with_id(e.id),
                )
            })
            .into_iter()
            .collect())
    }

    async fn on_assigned(&self, partition: &PartitionId) -> Result<StartFrom, ProcessError> {
        self.line(format!("a {} {}", now_ms(), partition.partition));
        Ok(StartFrom::Committed)
    }

    async fn on_revoked(&self, partition: &PartitionId) {
        self.line(format!("r {} {}", now_ms(), partition.partition));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the frozen process of the freeze test; run by it"]
async fn freeze_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (bootstrap, group, topic, path, admin, out) =
        (parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]);
    init_logs();
    let mut config = tributary_runtime::RuntimeConfig::defaults();
    config.brokers = bootstrap.to_owned();
    config.group_id = Some(group.to_owned());
    config.admin_addr = Some(admin.parse().unwrap());
    config.statsd_addr = "127.0.0.1:9".into();
    config.session_timeout_ms = CHILD_SESSION_MS;
    config.commit_interval_ms = 100;
    // Heartbeats every 500 ms: a freeze of 3.6 s (the second test) stays well inside the
    // session, and the freeze threshold stays half the session.
    config.kafka_config = vec![DEV_BROKER_CLIENT.into(), "heartbeat.interval.ms=500".into()];
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let processor = Journal {
        file: std::sync::Mutex::new(file),
        out: out.to_owned(),
    };
    let spec = tributary_runtime::ServiceSpec::new("freeze-victim", &[topic], 0);
    // Runs until the parent kills it, or stops on SIGTERM with the exit code a service's
    // main gives.
    let result = tributary_runtime::run(spec, config, processor, Shutdown::on_signals()).await;
    std::process::exit(result.map_or_else(|e| i32::from(e.exit_code()), |()| 0));
}

/// One line of the child's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Processed { at: u128, offset: i64 },
    Assigned { at: u128 },
    Revoked { at: u128 },
}

fn journal(path: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let at = fields.get(1)?.parse().ok()?;
            match fields[0] {
                "p" => Some(Entry::Processed {
                    at,
                    offset: fields.get(3)?.parse().ok()?,
                }),
                "a" => Some(Entry::Assigned { at }),
                "r" => Some(Entry::Revoked { at }),
                _ => None,
            }
        })
        .collect()
}

fn processed(entries: &[Entry]) -> Vec<(u128, i64)> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Processed { at, offset } => Some((*at, *offset)),
            _ => None,
        })
        .collect()
}

fn signal(child: &std::process::Child, which: &str) {
    let status = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} failed");
}

/// Offsets of the child's records on `topic` created between `from` and `to` (ms).
fn late_outputs(broker: &TestBroker, topic: &str, from: u128, to: u128) -> Vec<i64> {
    use tributary_runtime::rdkafka::Message;
    use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", unique_group("rt-freeze-reader"))
        .create()
        .unwrap();
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = tributary_runtime::rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, tributary_runtime::rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut late = Vec::new();
    let started = std::time::Instant::now();
    let mut next = 0;
    while next < end {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reading {topic}"
        );
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        next = m.offset() + 1;
        let from_child = m
            .payload()
            .and_then(|p| Envelope::decode(p).ok())
            .is_some_and(|e| e.source == CHILD_SOURCE);
        let created = m.timestamp().to_millis().unwrap_or(0);
        if from_child && (from..=to).contains(&u128::try_from(created).unwrap_or(0)) {
            late.push(m.offset());
        }
    }
    late
}

/// Kills the child however the test ends, so no frozen process outlives it.
struct Reaper(std::process::Child, Vec<PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        for path in &self.1 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The last lines the child logged, for a failure's message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The child process and where it writes.
struct Child {
    reaper: Reaper,
    journal: PathBuf,
    log: PathBuf,
    admin: String,
}

/// Starts the child consumer of `topic` in `group`, forwarding to `out`.
fn spawn_child(broker: &TestBroker, group: &str, topic: &str, out: &str) -> Child {
    let journal = std::env::temp_dir().join(format!("{group}.journal"));
    let log = std::env::temp_dir().join(format!("{group}.log"));
    let admin = format!("127.0.0.1:{}", free_port());
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "freeze_child", "--ignored", "--nocapture"])
        .env(
            CHILD_ENV,
            format!(
                "{}|{group}|{topic}|{}|{admin}|{out}",
                broker.bootstrap(),
                journal.display()
            ),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    Child {
        reaper: Reaper(child, vec![journal.clone(), log.clone()]),
        journal,
        log,
        admin,
    }
}

/// The topics and group of one test.
struct Names {
    topic: String,
    out: String,
    group: String,
}

/// A one-partition topic `{prefix}` holding `messages` stock updates, its output topic, and
/// a child consuming it in a fresh group, once the child has processed 5 of them.
async fn child_under_way(broker: &TestBroker, prefix: &str, messages: u64) -> (Child, Names) {
    let topic = broker.create_topic(prefix, 1).await.unwrap();
    let out = broker
        .create_topic(&format!("{prefix}-out"), 1)
        .await
        .unwrap();
    let group = unique_group(&format!("{prefix}-group"));
    let updates: Vec<_> = (0..messages).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &updates).await.unwrap();
    let child = spawn_child(broker, &group, &topic, &out);
    eventually(
        "the child processed 5 messages",
        Duration::from_secs(60),
        || processed(&journal(&child.journal)).len() >= 5,
    )
    .await;
    (child, Names { topic, out, group })
}

/// Polls the child's `/readyz` until it reports the hold after a freeze (within 8 s).
async fn await_hold_reported(admin: &str, log: &Path) {
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    loop {
        let answer = http
            .get(format!("http://{admin}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(answer) = answer {
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && body.contains("the process was frozen")
            {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the thawed child's /readyz never reported the freeze; its log:\n{}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thawed_instance_processes_nothing_more_of_a_partition_taken_over_while_it_was_frozen() {
    let broker = TestBroker::shared();
    let (
        Child {
            reaper: child,
            journal: path,
            log,
            admin,
        },
        Names { topic, out, group },
    ) = child_under_way(broker, "rt-freeze", 150).await;

    // Frozen with messages prefetched and one in hand. Another instance joins; the group
    // waits out the frozen member's session and gives the partition to the newcomer.
    signal(&child.0, "-STOP");
    let before = processed(&journal(&path)).len();
    assert!(
        before < 100,
        "the child had processed {before} of 150 messages when frozen: too few left to show anything"
    );
    let recorder = Recorder::default();
    let (running, shutdown) = start(config(broker, &group), &[&topic], recorder.clone()).await;
    eventually(
        "the newcomer processed the partition",
        Duration::from_secs(60),
        || recorder.count() > 0,
    )
    .await;

    let thawed = now_ms();
    signal(&child.0, "-CONT");
    // The child noticed the freeze: it says so on its readiness probe while it holds.
    await_hold_reported(&admin, &log).await;
    eventually(
        "the thawed child learned that its partition is gone",
        Duration::from_secs(30),
        || {
            journal(&path)
                .iter()
                .any(|e| matches!(e, Entry::Revoked { at } if *at >= thawed))
        },
    )
    .await;
    let entries = journal(&path);
    let revoked = entries
        .iter()
        .find_map(|e| match e {
            Entry::Revoked { at } if *at >= thawed => Some(*at),
            _ => None,
        })
        .unwrap();
    let between: Vec<i64> = processed(&entries)
        .into_iter()
        .filter(|(at, _)| *at >= thawed && *at <= revoked)
        .map(|(_, offset)| offset)
        .collect();
    assert!(
        between.is_empty(),
        "after the thaw and before its revocation ({} ms later) the child started offsets {between:?}, which the newcomer owned; its log:\n{}",
        revoked - thawed,
        log_tail(&log)
    );

    // Nor did it hand an output to the producer in that time: its records on the output
    // topic were all created before the freeze, or after it learned its partition was gone.
    // (Here librdkafka's own session check revokes within milliseconds of the thaw, before
    // the message in hand finishes: without the senders' hold alone this still passes. The
    // workers' hold is what it proves; it fails without that.)
    let late = late_outputs(broker, &out, thawed, revoked);
    assert!(
        late.is_empty(),
        "outputs the child produced after the thaw and before its revocation: {late:?}"
    );

    // The newcomer leaves; the thawed instance, a member again, gets the partition and
    // processes what arrives: its hold ended.
    shutdown.trigger();
    running.wait().await.unwrap();
    let more: Vec<_> = (150..200).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &more).await.unwrap();
    eventually(
        "the thawed child processed the messages after the newcomer left",
        Duration::from_secs(60),
        || {
            let entries = journal(&path);
            let again = entries
                .iter()
                .any(|e| matches!(e, Entry::Assigned { at } if *at > revoked));
            let after: std::collections::BTreeSet<i64> = processed(&entries)
                .into_iter()
                .filter(|(at, offset)| *at > revoked && *offset >= 150)
                .map(|(_, offset)| offset)
                .collect();
            again && after.len() == 50
        },
    )
    .await;

    // Nothing was skipped: every offset was processed by one instance or the other.
    let mut covered: std::collections::BTreeSet<i64> = processed(&journal(&path))
        .into_iter()
        .map(|(_, offset)| offset)
        .collect();
    covered.extend(recorder.processed().into_iter().map(|(_, offset)| offset));
    let missing: Vec<i64> = (0..200).filter(|o| !covered.contains(o)).collect();
    assert!(missing.is_empty(), "never processed: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_during_the_hold_waits_for_the_group_and_is_clean_when_the_partitions_stayed() {
    let broker = TestBroker::shared();
    let (
        Child {
            mut reaper,
            journal: path,
            log,
            admin,
        },
        Names { topic, group, .. },
    ) = child_under_way(broker, "rt-freeze-stop", 400).await;

    // Frozen past half its session (3 s), not past the session: the group keeps it.
    signal(&reaper.0, "-STOP");
    let frozen = std::time::Instant::now();
    while frozen.elapsed() < Duration::from_millis(3600) {
        // The freeze itself is the condition under test: a child stopped this long.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&reaper.0, "-CONT");
    await_hold_reported(&admin, &log).await;

    // SIGTERM while it holds: it waits for the group, then stops as it would any time.
    signal(&reaper.0, "-TERM");
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(status) = reaper.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "the child did not stop; its log:\n{}",
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "a stop during the hold, with the partition kept, is a clean one; its log:\n{}",
        log_tail(&log)
    );
    // The group kept the partition all along: one assignment, no revocation before the
    // stop's own, no lost assignment.
    let entries = journal(&path);
    let assigned = entries
        .iter()
        .filter(|e| matches!(e, Entry::Assigned { .. }))
        .count();
    let revoked = entries
        .iter()
        .filter(|e| matches!(e, Entry::Revoked { .. }))
        .count();
    assert_eq!(
        (assigned, revoked),
        (1, 1),
        "assigned once, revoked once (by the stop); its log:\n{}",
        log_tail(&log)
    );
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Assignment lost"),
        "the group expired the child: the test's premise failed"
    );
    // Clean means committed: the stop committed everything the child processed, the
    // message in hand included, and nothing more.
    let by_child: std::collections::BTreeSet<(i32, i64)> = processed(&entries)
        .into_iter()
        .map(|(_, offset)| (0, offset))
        .collect();
    let last = by_child.iter().map(|(_, o)| *o).max().unwrap();
    let committed = committed(broker, &group, &topic, 1);
    assert_eq!(
        committed.get(&0).copied(),
        Some(last + 1),
        "the stop committed up to the last processed offset"
    );
    assert_commits_cover_only_processed(&committed, &by_child);
}
