//! The processor's hooks: an async assignment hook that runs before a partition's first
//! message (however long it takes) and may say where to start; batches committed through
//! `commit_batch` after their outputs; flushes at batch ends and while idle; ticks whose
//! outputs survive a shutdown and whose panics do not stop them; and a stop that says when
//! it was not clean.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tributary_runtime::rdkafka::consumer::Consumer;
use tributary_runtime::{
    Batching, Incoming, Output, PartitionId, ProcessError, Processor, RuntimeError, StartFrom,
};
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_assignment_hook_runs_before_the_first_message_and_keeps_the_group() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-hook-slow", 3).await.unwrap();
    let group = unique_group("rt-hook-slow-group");
    let envelopes: Vec<_> = (0..300).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    // The hook takes longer than max.poll.interval.ms: inside librdkafka's rebalance
    // callback that would throw the member out of its group.
    let mut config = config(broker, &group);
    config.kafka_config.push("max.poll.interval.ms=6000".into());
    let recorder = Recorder::new(Behaviour {
        assign_delay: Duration::from_secs(8),
        ..Behaviour::default()
    });
    let (running, shutdown) = start(config, &[&topic], recorder.clone()).await;
    eventually("partitions assigning", Duration::from_secs(30), || {
        running
            .health
            .not_ready_reasons()
            .iter()
            .any(|r| r.contains("assigning"))
    })
    .await;
    assert_eq!(
        recorder.count(),
        0,
        "nothing is processed while the hook runs"
    );
    eventually("all 300 processed", Duration::from_secs(60), || {
        recorder.count() >= 300
    })
    .await;
    assert_eq!(recorder.count(), 300, "each exactly once");
    let assigned: BTreeMap<i32, _> = recorder.assigned.lock().unwrap().iter().copied().collect();
    assert_eq!(
        recorder.assigned.lock().unwrap().len(),
        3,
        "assigned once: the member never left its group"
    );
    for ((p, o), seen) in recorder.first_seen.lock().unwrap().iter() {
        assert!(
            *seen >= assigned[p],
            "partition {p} offset {o} processed before its hook returned"
        );
    }
    eventually("ready", Duration::from_secs(10), || {
        running.health.not_ready_reasons().is_empty()
    })
    .await;
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_that_keeps_its_own_position_resumes_there() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-hook-seek", 2).await.unwrap();
    let group = unique_group("rt-hook-seek-group");
    // One producer batch per partition, so the start offset lies inside a record batch.
    let envelopes: Vec<_> = (0..400).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();
    let recorder = Recorder::new(Behaviour {
        start_from: Some(50),
        ..Behaviour::default()
    });
    let (running, shutdown) = start(config(broker, &group), &[&topic], recorder.clone()).await;
    eventually("the rest processed", Duration::from_secs(60), || {
        recorder.count() >= 300
    })
    .await;
    let ends = committed_eventually(broker, &group, &topic, 2, recorder.count()).await;
    let processed: BTreeSet<(i32, i64)> = recorder.processed().into_iter().collect();
    let expected: BTreeSet<(i32, i64)> = ends
        .iter()
        .flat_map(|(&p, &end)| (50..end).map(move |o| (p, o)))
        .collect();
    assert_eq!(processed, expected, "exactly the offsets from 50 on");
    assert_eq!(recorder.count(), expected.len(), "none twice");
    shutdown.trigger();
    running.wait().await.unwrap();
}

/// Waits until the group committed positions covering `processed` messages from 50.
async fn committed_eventually(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    partitions: i32,
    processed: usize,
) -> BTreeMap<i32, i64> {
    let mut last = BTreeMap::new();
    for _ in 0..500 {
        last = committed(broker, group, topic, partitions);
        let covered: i64 = last.values().map(|end| end - 50).sum();
        if last.len() == partitions as usize && covered == processed as i64 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("commits never covered {processed} messages: {last:?}");
}

struct PanicsOnAssign;

impl Processor for PanicsOnAssign {
    async fn process(&self, _message: Incoming) -> Result<Vec<Output>, ProcessError> {
        Ok(vec![])
    }
    async fn on_assigned(&self, _partition: &PartitionId) -> Result<StartFrom, ProcessError> {
        panic!("the store is corrupt")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_assignment_hook_stops_the_service_with_an_error() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-hook-panic", 1).await.unwrap();
    let group = unique_group("rt-hook-panic-group");
    let (running, _shutdown) = start(config(broker, &group), &[&topic], PanicsOnAssign).await;
    let result = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the service stops by itself");
    match result {
        Err(RuntimeError::Fatal(reason)) => {
            assert!(reason.contains("the store is corrupt"), "{reason}");
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

/// Counts per message, forwards each, and records every batch commit with what was
/// acknowledged on the output topic at that moment.
#[derive(Clone, Default)]
struct Batched {
    processed: Arc<Mutex<Vec<(i32, i64)>>>,
    commits: Arc<Mutex<Vec<(i32, i64)>>>,
    forward_to: String,
}

impl Processor for Batched {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        self.processed
            .lock()
            .unwrap()
            .push((message.partition, message.offset));
        Ok(message
            .envelope
            .into_iter()
            .map(|e| Output::event(self.forward_to.clone(), e))
            .collect())
    }
    fn batching(&self) -> Option<Batching> {
        Some(Batching {
            max_messages: 25,
            max_wait: Duration::from_millis(50),
        })
    }
    async fn commit_batch(&self, offsets: &[(PartitionId, i64)]) -> Result<(), ProcessError> {
        let mut commits = self.commits.lock().unwrap();
        for (partition, next_offset) in offsets {
            commits.push((partition.partition, *next_offset));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_are_committed_in_order_after_their_outputs_and_before_the_group_offset() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-batch", 3).await.unwrap();
    let out = broker.create_topic("rt-batch-out", 3).await.unwrap();
    let group = unique_group("rt-batch-group");
    let envelopes: Vec<_> = (0..600).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();
    let processor = Batched {
        forward_to: out.clone(),
        ..Batched::default()
    };
    let (running, shutdown) = start(config(broker, &group), &[&topic], processor.clone()).await;
    eventually("all processed", Duration::from_secs(60), || {
        processor.processed.lock().unwrap().len() >= 600
    })
    .await;
    let ends: BTreeMap<i32, i64> = {
        let mut ends = BTreeMap::new();
        for (p, o) in processor.processed.lock().unwrap().iter() {
            let e = ends.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        ends
    };
    eventually(
        "the last batch of every partition committed",
        Duration::from_secs(30),
        || {
            let commits = processor.commits.lock().unwrap();
            ends.iter()
                .all(|(p, end)| commits.iter().any(|c| c == &(*p, *end)))
        },
    )
    .await;
    eventually(
        "the group offset follows the batches",
        Duration::from_secs(30),
        || committed(broker, &group, &topic, 3) == ends,
    )
    .await;
    let commits = processor.commits.lock().unwrap().clone();
    for &p in ends.keys() {
        let mine: Vec<i64> = commits.iter().filter(|c| c.0 == p).map(|c| c.1).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: batches committed in order: {mine:?}"
        );
        let mut previous = 0;
        for next in &mine {
            assert!(
                next - previous <= 25,
                "a batch of at most 25: {previous}..{next}"
            );
            previous = *next;
        }
    }
    // Every output of a batch was acknowledged before it was committed, so all are there.
    let forwarded = broker
        .consume_count(&[&out], 600, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(forwarded.len(), 600);
    shutdown.trigger();
    running.wait().await.unwrap();
}

/// Ticks: the first panics, the second returns many outputs, later ones count.
#[derive(Clone, Default)]
struct Ticking {
    ticks: Arc<AtomicU64>,
    topic: String,
}

impl Processor for Ticking {
    async fn process(&self, _message: Incoming) -> Result<Vec<Output>, ProcessError> {
        Ok(vec![])
    }
    async fn on_tick(&self) -> Vec<Output> {
        let n = self.ticks.fetch_add(1, Ordering::SeqCst) + 1;
        match n {
            1 => panic!("tick bug"),
            2 => (0..3000)
                .map(|i| Output::event(self.topic.clone(), stock(&format!("t-{i}"), i)))
                .collect(),
            _ => vec![],
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticks_survive_a_panic_and_a_shutdown_waits_for_their_outputs() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-tick-in", 1).await.unwrap();
    let out = broker.create_topic("rt-tick-out", 3).await.unwrap();
    let group = unique_group("rt-tick-group");
    let processor = Ticking {
        topic: out.clone(),
        ..Ticking::default()
    };
    let (running, shutdown) = start(config(broker, &group), &[&topic], processor.clone()).await;
    // The second tick comes after the first one panicked, and the stop is asked for the
    // moment it starts, while its 3000 outputs are being published.
    eventually(
        "a tick after the panicking one",
        Duration::from_secs(30),
        || processor.ticks.load(Ordering::SeqCst) >= 2,
    )
    .await;
    shutdown.trigger();
    running.wait().await.unwrap();
    let published = broker
        .consume_count(&[&out], 3000, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(published.len(), 3000, "every tick output was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_that_misses_its_deadline_says_so() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-unclean", 1).await.unwrap();
    let group = unique_group("rt-unclean-group");
    let envelopes: Vec<_> = (0..20).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();
    let mut config = config(broker, &group);
    config.shutdown_timeout_ms = 300;
    let recorder = Recorder::new(Behaviour {
        delay: Duration::from_secs(3),
        ..Behaviour::default()
    });
    let (running, shutdown) = start(config, &[&topic], recorder.clone()).await;
    eventually("a message in hand", Duration::from_secs(30), || {
        !recorder.first_seen.lock().unwrap().is_empty()
    })
    .await;
    shutdown.trigger();
    match running.wait().await {
        Err(e @ RuntimeError::Unclean(_)) => assert_eq!(e.exit_code(), 2, "{e}"),
        other => panic!("expected an unclean stop, got {other:?}"),
    }
    let committed = committed(broker, &group, &topic, 1);
    assert!(
        committed.get(&0).copied().unwrap_or(0) <= recorder.count() as i64,
        "nothing unfinished was committed: {committed:?}"
    );
}

/// Flushes: counts messages per partition, and each flush publishes one record per
/// partition that had messages since the last flush; the first flush panics. Records, per
/// partition, the next offset the last flush covered, and every commit that came before
/// the flush of its messages.
#[derive(Clone, Default)]
struct Flushing {
    unflushed: Arc<Mutex<BTreeMap<i32, u64>>>,
    flushes: Arc<Mutex<Vec<Vec<i32>>>>,
    processed_to: Arc<Mutex<BTreeMap<i32, i64>>>,
    flushed_to: Arc<Mutex<BTreeMap<i32, i64>>>,
    commits: Arc<AtomicU64>,
    early_commits: Arc<Mutex<Vec<(i32, i64)>>>,
    topic: String,
}

impl Processor for Flushing {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        *self
            .unflushed
            .lock()
            .unwrap()
            .entry(message.partition)
            .or_default() += 1;
        self.processed_to
            .lock()
            .unwrap()
            .insert(message.partition, message.offset + 1);
        Ok(vec![])
    }
    async fn commit_batch(&self, offsets: &[(PartitionId, i64)]) -> Result<(), ProcessError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let flushed_to = self.flushed_to.lock().unwrap();
        for (p, next) in offsets {
            if flushed_to.get(&p.partition).copied().unwrap_or(0) < *next {
                self.early_commits
                    .lock()
                    .unwrap()
                    .push((p.partition, *next));
            }
        }
        Ok(())
    }
    fn batching(&self) -> Option<Batching> {
        Some(Batching {
            max_messages: 25,
            max_wait: Duration::from_millis(50),
        })
    }
    fn flush_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }
    async fn flush(&self, partitions: &[PartitionId]) -> Vec<Output> {
        let first = {
            let mut flushes = self.flushes.lock().unwrap();
            flushes.push(partitions.iter().map(|p| p.partition).collect());
            flushes.len() == 1
        };
        if first {
            panic!("flush bug");
        }
        let processed_to = self.processed_to.lock().unwrap().clone();
        let mut flushed_to = self.flushed_to.lock().unwrap();
        for p in partitions {
            if let Some(next) = processed_to.get(&p.partition) {
                flushed_to.insert(p.partition, *next);
            }
        }
        let mut unflushed = self.unflushed.lock().unwrap();
        partitions
            .iter()
            .filter_map(|p| unflushed.remove(&p.partition).map(|n| (p.partition, n)))
            .map(|(p, n)| Output::event(self.topic.clone(), stock(&format!("flush-{p}"), n)))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_task_flushes_and_a_flush_publishes_what_its_batches_changed() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-flush", 2).await.unwrap();
    let out = broker.create_topic("rt-flush-out", 1).await.unwrap();
    let group = unique_group("rt-flush-group");
    let processor = Flushing {
        topic: out.clone(),
        ..Flushing::default()
    };
    let (running, shutdown) = start(config(broker, &group), &[&topic], processor.clone()).await;
    // Before any input, each task is flushed while idle (the first flush panics, and the
    // service goes on).
    eventually(
        "idle flushes of both partitions",
        Duration::from_secs(30),
        || {
            let flushes = processor.flushes.lock().unwrap();
            [0, 1]
                .iter()
                .all(|p| flushes.iter().filter(|f| f == &&vec![*p]).count() >= 2)
        },
    )
    .await;
    let envelopes: Vec<_> = (0..200).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();
    // Every message is counted by exactly one flush record of its partition.
    let records = broker
        .consume_until(&[&out], Duration::from_secs(60), |records| {
            records
                .iter()
                .filter_map(|r| r.envelope().ok())
                .map(|e| match e.event {
                    tributary_events::Event::StockChanged(s) => s.quantity,
                    _ => 0,
                })
                .sum::<u64>()
                >= 200
        })
        .await
        .unwrap();
    let flushed: u64 = records
        .iter()
        .filter_map(|r| r.envelope().ok())
        .map(|e| match e.event {
            tributary_events::Event::StockChanged(s) => s.quantity,
            _ => 0,
        })
        .sum();
    assert_eq!(flushed, 200);
    // A batch's flush comes before its commit (the batch end flushes; the idle one would
    // come only after the commit).
    eventually("batches committed", Duration::from_secs(30), || {
        processor.commits.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(
        processor.early_commits.lock().unwrap().clone(),
        Vec::<(i32, i64)>::new(),
        "commits of messages no flush had covered"
    );
    // Two more idle flushes of each partition later, nothing more was published.
    let seen = processor.flushes.lock().unwrap().len();
    eventually("more idle flushes", Duration::from_secs(30), || {
        processor.flushes.lock().unwrap().len() >= seen + 4
    })
    .await;
    let (_, end) = broker
        .consumer(&unique_group("rt-flush-reader"))
        .unwrap()
        .fetch_watermarks(&out, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(end, records.len() as i64, "no flush record published twice");
    shutdown.trigger();
    running.wait().await.unwrap();
}
