//! Local state for Tributary's stateful services: effectively-once state per partition,
//! kept in an embedded transactional store (redb) with the input offsets it covers, and
//! written to a changelog topic so that another instance can restore it.
//!
//! A service implements [`StatefulProcessor`] (its logic over a [`State`] handle) and runs
//! it wrapped in [`Stateful`], which implements the runtime's `Processor`: it opens and
//! restores a store per partition number when partitions are assigned, resumes each input
//! partition from the offset its store holds, and commits each batch — changelog first,
//! then one local transaction with the changes and the offsets. The service writes no
//! offset, transaction or changelog code of its own.
//!
//! Layout: `<DATA_DIR>/<group>/<store>/p<partition>.redb`; changelog
//! `<group>.<store>.changelog` (compacted, one partition per input partition).

pub mod changelog;
mod pending;
mod stateful;
mod store;

pub use pending::{State, Table};
pub use stateful::{ReadError, StateReader, Stateful, StatefulProcessor};
pub use store::{Checkpoint, DEFAULT_CACHE_BYTES, Store};

use sha2::{Digest, Sha256};
use tributary_runtime::Incoming;
use ulid::Ulid;

/// Why the state store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The local database failed.
    #[error("state storage: {0}")]
    Storage(String),
    /// The changelog could not be read or written.
    #[error("state changelog: {0}")]
    Changelog(String),
    /// A restore stopped because its result was no longer wanted (see
    /// [`changelog::RestoreOptions::abandoned`]).
    #[error("state restore abandoned: the partition is no longer assigned here")]
    Abandoned,
}

/// The id of output `index` of `message`: the same every time the message is processed, so
/// that a batch processed again after a crash re-emits the same ids and downstream can
/// de-duplicate. The time part is the input event's time (ids stay time-sortable); the
/// random part is derived from the input's topic, partition and offset.
pub fn output_id(message: &Incoming, index: u32) -> Ulid {
    let millis = message
        .envelope
        .as_ref()
        .map_or(0, |e| e.time.timestamp_millis().max(0) as u64);
    let mut hash = Sha256::new();
    hash.update(message.topic.as_bytes());
    hash.update(message.partition.to_be_bytes());
    hash.update(message.offset.to_be_bytes());
    hash.update(index.to_be_bytes());
    derived_id(millis, hash)
}

/// A ULID with time part `millis` and its 80 random bits taken from `hash`'s digest.
fn derived_id(millis: u64, hash: Sha256) -> Ulid {
    let digest = hash.finalize();
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    Ulid::from_parts(millis, u128::from_be_bytes(random))
}

/// An id derived from what an output is rather than from an input (a flushed window
/// value: `parts` name it and its content): publishing the same value again gives the same
/// id, so a consumer that drops duplicate ids drops it. Its time part is `millis`.
pub fn value_id(millis: i64, parts: &[&[u8]]) -> Ulid {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    derived_id(millis.max(0) as u64, hash)
}

/// Metric names of the state store.
pub mod names {
    /// Changelog records read by restores.
    pub const RESTORED_RECORDS: &str = "state_restored_records_total";
    /// Changelog records still to read by a restore in progress.
    pub const RESTORE_REMAINING: &str = "state_restore_remaining";
    /// Entries in a partition's store.
    pub const ENTRIES: &str = "state_entries";
    /// Changelog records written.
    pub const CHANGELOG_RECORDS: &str = "state_changelog_records_total";
    /// Failed changelog writes (the batch commit is retried).
    pub const CHANGELOG_ERRORS: &str = "state_changelog_errors_total";
    /// Restores that found changelog records missing below its low watermark.
    pub const RESTORE_GAPS: &str = "state_restore_gaps_total";
    /// Entries written to a changelog that had lost them (the local store was ahead).
    pub const RESEEDED_ENTRIES: &str = "state_changelog_reseeded_entries_total";
    /// How long a batch commit takes (changelog and local transaction).
    pub const COMMIT_SECONDS: &str = "state_commit_seconds";
}
