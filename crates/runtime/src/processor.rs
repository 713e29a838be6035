//! The one trait a service implements: turn one input message into outputs.

use std::future::Future;
use std::sync::Arc;

use tributary_events::{Envelope, TraceParent};

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
}

/// A service's domain logic. The runtime owns the loop, offsets, retries, dead letters,
/// metrics and shutdown; a processor only maps a message to its outputs.
///
/// Messages of one partition are processed one at a time, in offset order; partitions are
/// processed concurrently.
pub trait Processor: Send + Sync + 'static {
    /// Processes one message.
    fn process(
        &self,
        message: Incoming,
    ) -> impl Future<Output = Result<Vec<Output>, ProcessError>> + Send;

    /// Partitions were assigned to this instance (before any of their messages arrive).
    fn on_assigned(&self, _partitions: &[(String, i32)]) {}

    /// Partitions were revoked (after their in-flight work finished and was committed).
    fn on_revoked(&self, _partitions: &[(String, i32)]) {}

    /// Called about once a second, for time-driven work such as closing windows.
    fn on_tick(&self) -> impl Future<Output = Vec<Output>> + Send {
        async { Vec::new() }
    }
}
