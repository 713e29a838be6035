//! One assigned partition as its tasks share it: the offset tracker, the stop signals, the
//! handles of its tasks, and what `/status` says about it; and the [`Task`] that processes
//! it (the partition alone, or partition p of every co-partitioned input).
//!
//! Ownership: the poll thread creates it on assignment, routes messages into it, pauses and
//! resumes it, and drops it on revocation; the worker and the sender finish offsets in
//! its tracker. A new assignment of the same partition is a new `Partition` with a new
//! generation, so nothing of an earlier assignment can reach the new one.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::Counter;
use rdkafka::message::OwnedMessage;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::offsets::{OffsetTracker, Refused};
use crate::processor::PartitionId;

/// What processes one or more partitions: a worker and a sender, their input queue, and
/// their stop signals. A processor that joins co-partitioned inputs gets one task per
/// partition number, shared by that partition of every input topic, so that the inputs
/// are processed one at a time in arrival order and their outputs leave in that order.
pub(crate) struct Task {
    /// The partition number of a co-partitioned task; `None` for a single partition's.
    pub(crate) number: Option<i32>,
    /// The partition it was created for (of a co-partitioned task, one of its partitions).
    pub(crate) first: PartitionId,
    /// To the worker, in arrival order (offset order within each partition).
    tx: mpsc::UnboundedSender<(Arc<Partition>, OwnedMessage)>,
    /// Stop after the message in hand (revocation, shutdown).
    pub(crate) stop: CancellationToken,
    /// Give up on unacknowledged outputs: the revocation deadline passed.
    pub(crate) abandon: CancellationToken,
    /// Why the task cannot deliver or commit, while it cannot.
    problem: Mutex<Option<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("number", &self.number)
            .finish_non_exhaustive()
    }
}

impl Task {
    /// A task and the receiving end of its input queue.
    pub(crate) fn new(
        number: Option<i32>,
        first: PartitionId,
    ) -> (
        Arc<Task>,
        mpsc::UnboundedReceiver<(Arc<Partition>, OwnedMessage)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Arc::new(Task {
            number,
            first,
            tx,
            stop: CancellationToken::new(),
            abandon: CancellationToken::new(),
            problem: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        (task, rx)
    }

    pub(crate) fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn add_task(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One assigned partition.
pub(crate) struct Partition {
    pub(crate) id: PartitionId,
    /// Which assignment this is (unique per process).
    pub(crate) generation: u64,
    tracker: Mutex<OffsetTracker>,
    /// What processes it; its stop signals are the partition's.
    pub(crate) task: Arc<Task>,
    /// The assignment hook returned; messages may flow.
    pub(crate) ready: AtomicBool,
    pub(crate) high_watermark: AtomicI64,
    /// Why the partition cannot make progress, while it cannot.
    problem: Mutex<Option<String>>,
    pub(crate) messages_in: Counter,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Partition {
    pub(crate) fn new(
        id: PartitionId,
        generation: u64,
        start: Option<i64>,
        task: Arc<Task>,
        messages_in: Counter,
    ) -> Partition {
        Partition {
            id,
            generation,
            tracker: Mutex::new(OffsetTracker::starting_at(start)),
            task,
            ready: AtomicBool::new(false),
            high_watermark: AtomicI64::new(-1),
            problem: Mutex::new(None),
            messages_in,
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the message as in flight, then hands it to the worker; returns how many
    /// messages are in flight. A refused offset is not handed over.
    pub(crate) fn route(self: &Arc<Self>, message: OwnedMessage) -> Result<usize, Refused> {
        use rdkafka::Message;
        let in_flight = {
            let mut tracker = self.tracker();
            tracker.begin(message.offset())?;
            tracker.in_flight()
        };
        // A closed worker (stopping) leaves the offset unfinished: never committed.
        let _ = self.task.tx.send((self.clone(), message));
        Ok(in_flight)
    }

    /// The offset is finished: everything it produced is acknowledged.
    pub(crate) fn finish(&self, offset: i64) {
        self.tracker().complete(offset);
    }

    /// Reading restarts at `offset` (a processor's own position); the group's committed
    /// offset stays what it is until the watermark passes it.
    pub(crate) fn restart_at(&self, offset: i64) {
        let mut tracker = self.tracker();
        let committed = tracker.last_committed();
        *tracker = OffsetTracker::starting_at(Some(offset));
        tracker.set_last_committed(committed);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.tracker().in_flight()
    }

    pub(crate) fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Its own problem (the assignment hook failing), else its task's (deliveries or
    /// batch commits failing).
    pub(crate) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .or_else(|| self.task.problem())
    }

    /// Stop after the message in hand.
    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.task.stop
    }

    /// Give up on unacknowledged outputs.
    pub(crate) fn abandon(&self) -> &CancellationToken {
        &self.task.abandon
    }

    pub(crate) fn add_task(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Its own tasks (the assignment hook) and its task's (worker and sender; taken once,
    /// by whichever of its partitions comes first).
    pub(crate) fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        tasks.extend(self.task.take_tasks());
        tasks
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
