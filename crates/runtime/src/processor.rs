//! The one trait a service implements: turn one input message into outputs, with optional
//! lifecycle hooks for partitions that come and go and for state that commits in batches.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tributary_events::{Envelope, TraceParent};

/// What a service runs with, for [`Processor::on_start`].
#[derive(Clone)]
pub struct ServiceContext {
    /// The service's name.
    pub service: String,
    /// Its consumer group.
    pub group: String,
    /// Its input topics.
    pub inputs: Vec<String>,
    /// Its configuration (brokers, client settings, data directory).
    pub config: crate::RuntimeConfig,
    /// Its health and `/status`.
    pub health: crate::Health,
    /// The service's idempotent producer.
    pub producer: rdkafka::producer::FutureProducer,
    /// Holds the processor's own writes after the process was frozen, as the runtime holds
    /// its outputs (see [`FreezeGuard`](crate::FreezeGuard)).
    pub freeze: crate::FreezeGuard,
}

impl fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceContext")
            .field("service", &self.service)
            .field("group", &self.group)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
}

impl PartitionId {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> PartitionId {
        PartitionId {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One input message, decoded. Tombstones (null values on compacted topics) arrive with
/// `envelope: None`; undecodable values never reach the processor (they are dead-lettered).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// The decoded envelope; `None` for a tombstone.
    pub envelope: Option<Envelope>,
    /// Trace context for work done on behalf of this message: a child of the incoming
    /// trace (from the headers or the envelope), or a new root when it had none.
    pub trace: TraceParent,
}

impl Incoming {
    /// The key as UTF-8, when it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// One record to publish on behalf of an input. The input's offset is committed only after
/// every output is acknowledged by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An envelope (its key is the envelope's key). Without a trace, it inherits the
    /// input's trace context.
    Event {
        /// Destination topic.
        topic: String,
        /// The event (boxed: envelopes are large next to a tombstone).
        envelope: Box<Envelope>,
    },
    /// A tombstone (null value) for `key` on a compacted topic.
    Tombstone {
        /// Destination topic.
        topic: String,
        /// The key to delete.
        key: String,
    },
}

impl Output {
    /// An envelope for `topic`.
    pub fn event(topic: impl Into<String>, envelope: Envelope) -> Output {
        Output::Event {
            topic: topic.into(),
            envelope: Box::new(envelope),
        }
    }

    /// A tombstone for `key` on `topic`.
    pub fn tombstone(topic: impl Into<String>, key: impl Into<String>) -> Output {
        Output::Tombstone {
            topic: topic.into(),
            key: key.into(),
        }
    }
}

/// Why processing one message failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// Might succeed later (a dependency is down): retried with backoff, then dead-lettered.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed for this message: dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
    /// This instance cannot process any message right now, for a reason that is not the
    /// message's (its local state cannot be read, its store is not open): retried with
    /// backoff for as long as it takes, the partition showing as stuck in `/status`, and
    /// never dead-lettered, since the message is fine and dead-lettering it would lose it.
    /// Stops when the partition is revoked or the service stops.
    #[error("blocked: {0}")]
    Blocked(String),
}

/// Where a newly assigned partition starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The group's committed offset (or `auto.offset.reset` when there is none).
    Committed,
    /// This offset: a stateful processor whose local state already covers everything
    /// before it (offsets kept in the state's own transaction) resumes here.
    Offset(i64),
}

/// How a stateful processor wants its messages grouped for [`Processor::commit_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// A batch ends after this many messages of one partition.
    pub max_messages: usize,
    /// ... or this long after its first message, whichever comes first.
    pub max_wait: Duration,
}

impl Default for Batching {
    fn default() -> Batching {
        Batching {
            max_messages: 1000,
            max_wait: Duration::from_millis(100),
        }
    }
}

/// A service's domain logic. The runtime owns the loop, offsets, retries, dead letters,
/// metrics and shutdown; a processor maps a message to its outputs, and may use the hooks.
///
/// Messages of one partition are processed one at a time, in offset order; partitions are
/// processed concurrently. Hooks never run inside the Kafka client's callbacks: they run on
/// the async runtime, may take their time (a state restore), and a panic in one is caught.
pub trait Processor: Send + Sync + 'static {
    /// Processes one message.
    fn process(
        &self,
        message: Incoming,
    ) -> impl Future<Output = Result<Vec<Output>, ProcessError>> + Send;

    /// A partition was assigned to this instance. It stays paused until this returns, and
    /// its first message is processed after it: restore local state here, and say where
    /// to start reading. A transient error is retried with backoff (the partition shows as
    /// stuck meanwhile); a permanent error or a panic stops the service with an error, so
    /// that the orchestrator restarts it rather than leave the partition unserved. When
    /// the partition is revoked or lost while this runs, the future is dropped at its next
    /// await (and `on_revoked` is not called for it): leave nothing half-done that a later
    /// call cannot finish.
    fn on_assigned(
        &self,
        _partition: &PartitionId,
    ) -> impl Future<Output = Result<StartFrom, ProcessError>> + Send {
        async { Ok(StartFrom::Committed) }
    }

    /// A partition was revoked (or the service is stopping): its in-flight work finished,
    /// its outputs are acknowledged and its last batch committed; its offsets are committed
    /// to the group right after this returns.
    fn on_revoked(&self, _partition: &PartitionId) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Batches for a processor that keeps state: when `Some`, the messages of a task (a
    /// partition, or partition p of every co-partitioned input) are grouped into batches,
    /// and [`commit_batch`](Self::commit_batch) runs once per batch, after every output of
    /// the batch is acknowledged and before any of its offsets counts as finished. A
    /// batching processor keeps its own position and returns it from
    /// [`on_assigned`](Self::on_assigned): the group's committed offset follows its commits
    /// and may lag them after a crash.
    fn batching(&self) -> Option<Batching> {
        None
    }

    /// Whether the inputs are joined by partition number (co-partitioned topics with one
    /// key and one partition count): partition p of every input topic is then one task,
    /// whose messages are processed one at a time in arrival order, whose outputs leave in
    /// that order, and whose batches cover all its partitions. The group uses the `range`
    /// assignor so that one instance owns partition p of every input.
    fn co_partitioned(&self) -> bool {
        false
    }

    /// Makes a batch durable: everything processed before each partition's next offset
    /// (`(partition, next_offset)`, one entry per partition the batch touched) is applied,
    /// and its outputs are acknowledged. A state store writes the batch's changes and the
    /// offsets in one transaction here. A crash before this returns re-runs the batch from
    /// the previous state. A transient error is retried with backoff; a permanent one stops
    /// the service with an error.
    fn commit_batch(
        &self,
        _offsets: &[(PartitionId, i64)],
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        async { Ok(()) }
    }

    /// The partition may already belong to another instance (the assignment was lost, or
    /// its revocation ran out of time): write nothing more on its behalf — no batch commit
    /// may reach a changelog or a store the next owner relies on. Called on the poll
    /// thread; must not block.
    fn fence(&self, _partition: &PartitionId) {}

    /// Called once before the consumer joins its group, with what the service runs with:
    /// create owned topics, keep the producer or the health handle. An error stops the
    /// service before it consumes anything.
    fn on_start(
        &self,
        _context: &ServiceContext,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        async { Ok(()) }
    }

    /// Outputs that summarise a batching task's work rather than answer one message (a
    /// window's latest value, published once per flush however many messages changed it).
    /// Called when one of the task's batches ends by size or time, with the partitions
    /// the batch touched, and every [`flush_every`](Self::flush_every) while the task is
    /// idle, with every partition it has processed (at first the one it was created for,
    /// possibly before [`on_assigned`](Self::on_assigned) returned: flush nothing for a
    /// partition not ready). Not on a stop. The records are published in order with the
    /// task's outputs, before the batch commits. A panic is logged and publishes nothing.
    fn flush(&self, _partitions: &[PartitionId]) -> impl Future<Output = Vec<Output>> + Send {
        async { Vec::new() }
    }

    /// How often an idle batching task calls [`flush`](Self::flush); `None` (the default)
    /// never flushes.
    fn flush_every(&self) -> Option<Duration> {
        None
    }

    /// Called about once a second, for time-driven work such as closing windows. Its
    /// outputs are published in order; on shutdown the tick in progress finishes first.
    fn on_tick(&self) -> impl Future<Output = Vec<Output>> + Send {
        async { Vec::new() }
    }
}
