//! The runtime every Tributary service stands on: a service implements [`Processor`] and
//! inherits delivery guarantees, dead-lettering, retries, back-pressure, shutdown, health,
//! metrics and tracing.
//!
//! # Guarantees
//!
//! - **At-least-once.** Offsets are stored manually (`enable.auto.offset.store=false`,
//!   `enable.auto.commit=false`). An input offset is finished only after every output it
//!   produced is acknowledged by the broker (idempotent producer, `acks=all`); commits
//!   carry a per-partition contiguous watermark, so a later offset is never committed
//!   while an earlier one is unfinished. Commits happen on an interval, when partitions
//!   are revoked (after their in-flight work finishes) and on shutdown.
//! - **Nothing is lost to bad input.** Undecodable records (not JSON, not an envelope,
//!   unknown type, unsupported version, invalid payload), permanent handler errors, panics
//!   and transient errors that outlive their retries go to `<group>.dlq` with the original
//!   key, value and headers untouched plus `dlq.*` headers naming the source, the error and
//!   the attempts; processing goes on with the next message.
//! - **Outages pause, they do not drop.** A failed delivery is re-sent until the broker
//!   takes it; the partition's watermark waits for it.
//! - **The consumer never silently leaves its group.** Polling runs on its own thread and is
//!   never blocked by processing; a `max.poll.interval.ms` expiry is logged as an error,
//!   counted, and recovered from by rejoining.
//! - **Bounded memory.** A partition with too much unfinished work is paused and resumed
//!   once half of it finished; a full producer queue back-pressures the partition's worker.
//! - **Orderly shutdown.** On SIGTERM/SIGINT: stop fetching, finish the message in hand on
//!   each partition and await its outputs (queued messages stay uncommitted), commit,
//!   leave the group, flush the producer, within a deadline (default 30 s); a second signal
//!   exits at once.
//!
//! Messages of one partition are processed one at a time in offset order; partitions run
//! concurrently. A processor joining co-partitioned inputs
//! ([`Processor::co_partitioned`]) gets partition p of every input processed as one task.

pub mod admin;
pub mod config;
mod consumer;
pub mod dlq;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod processor;
mod service;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

pub use admin::Health;
pub use config::{LogFormat, RuntimeConfig};
pub use consumer::liveness::FreezeGuard;
pub use processor::{
    Batching, Incoming, Output, PartitionId, ProcessError, Processor, ServiceContext, StartFrom,
};
pub use service::{Running, RuntimeError, ServiceSpec, run, start, watch_broker};
pub use shutdown::Shutdown;

/// The Kafka client, re-exported so tools use the exact version the runtime does.
pub use rdkafka;
