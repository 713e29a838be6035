//! The changelog topic of a store: its record format, and restoring a partition's store
//! from it.
//!
//! Partition p of `<group>.<store>.changelog` holds the changes of task p. A committed
//! batch writes one record per changed entry (key `table \0 key`, value the entry's JSON,
//! or a tombstone for a deletion, header `state.source` naming the input that wrote it),
//! and once those are acknowledged, one **checkpoint** record (key `\0checkpoint`) with
//! the next input offset of every input partition. Only then does the local transaction
//! commit. A restore applies entries up to the last checkpoint and drops what follows it:
//! changes after the last checkpoint belong to a batch that may never have committed, and
//! will be written again when its input is processed again (as Quix Streams skips
//! changelog records past the processed offset in their headers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::StateError;
use crate::store::{Checkpoint, Store, now_ms};

use tributary_runtime::rdkafka;

/// The key of a checkpoint record (entry keys never start with NUL: table names are not
/// empty).
pub const CHECKPOINT_KEY: &[u8] = b"\0checkpoint";
/// Header naming the input (`topic/partition@offset`) that wrote an entry.
pub const HEADER_SOURCE: &str = "state.source";
/// Header marking a checkpoint record.
pub const HEADER_KIND: &str = "state.kind";

/// The value of a checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Next input offset per input partition (`topic/partition`).
    pub offsets: BTreeMap<String, i64>,
    /// Set on the checkpoint that ends a re-seed: the entries it vouches for are those
    /// whose source is `reseed:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseed: Option<i64>,
}

/// The `state.source` of the entries of re-seed `id`.
pub(crate) fn reseed_source(id: i64) -> String {
    format!("reseed:{id}")
}

/// The key of re-seed `id`'s checkpoint: its own key, so that compaction (which keeps one
/// record per key) never removes it, and its entries stay vouched for.
pub(crate) fn reseed_checkpoint_key(id: i64) -> Vec<u8> {
    format!("\0reseed:{id}").into_bytes()
}

/// Whether a changelog key is a checkpoint's (a batch's, or a re-seed's).
fn is_checkpoint(key: &[u8]) -> bool {
    key == CHECKPOINT_KEY || key.starts_with(b"\0reseed:")
}

/// How a restore treats an old store, and when it gives up.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// How long a read may make no progress before the restore fails (and is retried).
    pub stall_timeout: Duration,
    /// A store last committed longer ago than this, and behind its changelog, is
    /// discarded and restored from the beginning: the changelog may no longer hold the
    /// tombstones of deletions it missed (`delete.retention.ms`).
    pub stale_after: Duration,
    /// Raised when nobody wants the restore's result any more (the partition was revoked
    /// while it ran): the restore stops at its next poll with [`StateError::Abandoned`],
    /// keeping what it read up to its last checkpoint. Without it an abandoned restore
    /// reads on to the end holding the store's file lock, so the partition cannot be
    /// opened again on this instance meanwhile, and under repeated rebalances a long
    /// restore never finishes.
    pub abandoned: Option<Arc<AtomicBool>>,
}

/// Headers of an entry record.
pub(crate) fn entry_headers(source: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: HEADER_SOURCE,
        value: Some(source),
    })
}

/// What wrote a changelog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The input at `topic/partition`, offset.
    Input(String, i64),
    /// Re-seed `id` (the whole store written back).
    Reseed(i64),
    /// Nothing this code recognises: never vouched for by a checkpoint.
    Unknown,
}

/// An entry read after the last checkpoint: its value, and what wrote it.
type Staged = (Option<Vec<u8>>, Source);

/// `topic/partition@offset` or `reseed:<id>`.
fn parse_source(source: &str) -> Source {
    if let Some(id) = source.strip_prefix("reseed:") {
        return id.parse().map_or(Source::Unknown, Source::Reseed);
    }
    source
        .rsplit_once('@')
        .and_then(|(input, offset)| Some(Source::Input(input.to_owned(), offset.parse().ok()?)))
        .unwrap_or(Source::Unknown)
}

/// Headers of a checkpoint record.
pub(crate) fn checkpoint_headers() -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: HEADER_KIND,
        value: Some("checkpoint"),
    })
}

/// How a restore went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Changelog records read.
    pub records: u64,
    /// Entries written to the store.
    pub applied: u64,
    /// Entries dropped: after the last checkpoint, or written by an attempt that never
    /// reached its checkpoint.
    pub dropped: u64,
    /// The changelog partition's end when the restore began.
    pub changelog_end: i64,
    /// The local store was discarded first (too old, or overtaken by another owner).
    pub discarded: bool,
    /// `Some` when the store is ahead of its changelog (its position is past the
    /// changelog's end: the topic was recreated, or lost records): the entry keys the
    /// changelog holds now. The store is kept, and must be written back to the changelog
    /// (with tombstones for these keys where the store has none), or an instance that
    /// restores from the changelog later would miss the entries that never change again.
    pub ahead_of_changelog: Option<BTreeSet<Vec<u8>>>,
}

/// Reads `[from, high)` of one changelog partition, handing each record to `on_record`.
/// Ends on the consumer's position, not on the last record's offset: the records at the end
/// may have been compacted away. Fails when nothing arrives for the stall timeout, and stops when the restore is abandoned.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    high: i64,
    options: &RestoreOptions,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    if high <= from {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| StateError::Changelog(e.to_string()))?;
    consumer
        .assign(&tpl)
        .map_err(|e| StateError::Changelog(format!("cannot assign {topic}/{partition}: {e}")))?;
    let mut position = from;
    let mut last_progress = Instant::now();
    let stall_timeout = options.stall_timeout;
    let abandoned = options.abandoned.as_deref();
    loop {
        if abandoned.is_some_and(|a| a.load(Ordering::Acquire)) {
            return Err(StateError::Abandoned);
        }
        if let Ok(p) = consumer.position() {
            if let Some(Offset::Offset(o)) = p.find_partition(topic, partition).map(|e| e.offset())
            {
                position = position.max(o);
            }
        }
        if position >= high {
            return Ok(());
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            if last_progress.elapsed() > stall_timeout {
                return Err(StateError::Changelog(format!(
                    "reading {topic}/{partition} made no progress for {stall_timeout:?} at offset {position} of {high}"
                )));
            }
            continue;
        };
        let message = result
            .map_err(|e| StateError::Changelog(format!("reading {topic}/{partition}: {e}")))?;
        last_progress = Instant::now();
        position = message.offset() + 1;
        on_record(&message)?;
    }
}

/// What a scan of `[low, high)` of a changelog partition found.
#[derive(Debug, Default)]
struct Scan {
    /// Entry keys whose latest record there is a value.
    keys: BTreeSet<Vec<u8>>,
    /// Records read.
    records: u64,
    /// Offsets of checkpoints other than `own`'s (the re-seed being redone).
    foreign_checkpoints: Vec<i64>,
}

/// Reads `[low, high)` of the changelog partition: its live entry keys, and where
/// checkpoints other than re-seed `own`'s lie.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
    own: Option<i64>,
    options: &RestoreOptions,
) -> Result<Scan, StateError> {
    let mut found = Scan::default();
    if high <= low {
        return Ok(found);
    }
    let own_key = own.map(reseed_checkpoint_key);
    read_range(consumer, topic, partition, low, high, options, |message| {
        found.records += 1;
        let key = message.key().unwrap_or_default();
        if is_checkpoint(key) {
            if own_key.as_deref() != Some(key) {
                found.foreign_checkpoints.push(message.offset());
            }
        } else if message.payload().is_some() {
            found.keys.insert(key.to_vec());
        } else {
            found.keys.remove(key);
        }
        Ok(())
    })?;
    Ok(found)
}

/// Whether `store` was last committed longer ago than `stale_after`.
fn is_stale(store: &Store, stale_after: Duration) -> Result<bool, StateError> {
    let Some(at) = store.committed_at()? else {
        return Ok(false);
    };
    let now = now_ms();
    let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    Ok(now.saturating_sub(at) > stale_ms)
}

/// Brings `store` up to the last checkpoint in partition `partition` of `topic`, reading
/// from the position the store is consistent with. `progress(read, remaining)` is called
/// as it goes. Returns what the store covers afterwards.
pub fn restore(
    store: &Store,
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    options: RestoreOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<(Checkpoint, Restored), StateError> {
    let is_abandoned = || {
        options
            .abandoned
            .as_deref()
            .is_some_and(|a| a.load(Ordering::Acquire))
    };
    // Every record past the changelog's end as read now is written after this: what a
    // restore that reaches that end records as its commit time.
    let started_ms = now_ms();
    let mut checkpoint = store.checkpoint()?;
    let consumer: BaseConsumer = client
        .clone()
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| StateError::Changelog(format!("cannot create a restore consumer: {e}")))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| StateError::Changelog(format!("cannot read {topic}/{partition}: {e}")))?;
    // The watermarks can take seconds on a busy broker: the partition may have gone since.
    if is_abandoned() {
        return Err(StateError::Abandoned);
    }
    let mut restored = Restored {
        changelog_end: high,
        ..Restored::default()
    };
    let reseed_pending = store.reseed_pending()?;
    if checkpoint.changelog_position > high || reseed_pending.is_some() {
        // The store has what the changelog lost (a changelog recreated by hand, a cluster
        // that lost data), or began writing itself back and stopped: the local state is
        // the better copy. The caller writes it back; it needs the keys the changelog has
        // now, to delete those the store does not.
        let found = scan(
            &consumer,
            topic,
            partition,
            low,
            high,
            reseed_pending.map(|(id, _)| id),
            &options,
        )?;
        let overtaken = reseed_pending.is_some_and(|(_, from)| {
            found
                .foreign_checkpoints
                .iter()
                .any(|offset| *offset >= from)
        });
        if !overtaken {
            tracing::warn!(
                topic,
                partition,
                local = checkpoint.changelog_position,
                high,
                ?reseed_pending,
                "Local state is ahead of its changelog (or its write-back was interrupted); keeping it and writing it back"
            );
            restored.records = found.records;
            restored.ahead_of_changelog = Some(found.keys);
            return Ok((checkpoint, restored));
        }
        // Another owner committed after this store's write-back began: its state is the
        // newer one, and this store is outdated.
        tracing::warn!(
            topic,
            partition,
            "Another owner committed since this store's write-back was interrupted; discarding the store and restoring"
        );
        store.wipe()?;
        checkpoint = Checkpoint::default();
        restored.discarded = true;
    } else if checkpoint.changelog_position < high && is_stale(store, options.stale_after)? {
        // Behind, and older than the changelog keeps deletions: resuming could miss one.
        // (A store that is not behind missed nothing, however old.)
        tracing::warn!(
            topic,
            partition,
            "Local state is older than the changelog keeps deletions; discarding it and restoring"
        );
        store.wipe()?;
        checkpoint = Checkpoint::default();
        restored.discarded = true;
    }
    if checkpoint.changelog_position == high {
        return Ok((checkpoint, restored));
    }
    if checkpoint.changelog_position < low {
        // Records the store never saw are gone (a changelog with a delete policy, or
        // truncated by hand): what they held cannot come back from here.
        tracing::error!(
            topic,
            partition,
            local = checkpoint.changelog_position,
            low,
            "Changelog records before its low watermark are gone; the restored state may miss entries"
        );
        metrics::counter!(crate::names::RESTORE_GAPS).increment(1);
    }
    let from = checkpoint.changelog_position.max(low);
    tracing::info!(
        topic,
        partition,
        from,
        high,
        "Restoring state from the changelog"
    );

    // Entries since the last checkpoint (not yet known to be committed), with the input
    // that wrote each ...
    let mut staged: BTreeMap<Vec<u8>, Staged> = BTreeMap::new();
    // ... and entries up to the last checkpoint, not yet written to the store.
    let mut ready: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut ready_checkpoint: Option<Checkpoint> = None;
    // When the last checkpoint read was written: every record after it was written later,
    // so a commit part way records this as its time, never the restore's (the records
    // after its position may be old enough to have lost their tombstones). 0 when the
    // broker gives no time: the store then counts as stale next time, and is restored
    // afresh.
    let mut ready_written_ms = 0;
    // The position the store holds: a commit part way that would add nothing is skipped.
    let mut stored_position = checkpoint.changelog_position;
    // The offsets the previous checkpoint covered: a batch's entries come from inputs
    // between the previous checkpoint and its own.
    let mut previous = checkpoint.offsets.clone();
    let read = read_range(
        &consumer,
        topic,
        partition,
        from,
        high,
        &options,
        |message| {
            let position = message.offset() + 1;
            restored.records += 1;
            let key = message.key().unwrap_or_default();
            if is_checkpoint(key) {
                let record: CheckpointRecord =
                    serde_json::from_slice(message.payload().unwrap_or_default()).map_err(|e| {
                        StateError::Changelog(format!(
                            "checkpoint at {topic}/{partition}@{} does not decode: {e}",
                            message.offset()
                        ))
                    })?;
                // Only entries of this checkpoint's batch count: an entry left behind by an
                // attempt that never reached its checkpoint (a crash, a lost assignment) names
                // an input outside this batch, and is dropped.
                for (k, (value, source)) in std::mem::take(&mut staged) {
                    let inside = match &source {
                        Source::Input(input, offset) => {
                            previous.get(input).is_none_or(|from| offset >= from)
                                && record.offsets.get(input).is_some_and(|to| offset < to)
                        }
                        // A re-seed's entries count only at its own checkpoint: left behind by
                        // an interrupted re-seed, they must not ride on another owner's.
                        Source::Reseed(id) => record.reseed == Some(*id),
                        // Written before entries named their source: as they always counted.
                        Source::Unknown => true,
                    };
                    if inside {
                        ready.insert(k, value);
                    } else {
                        restored.dropped += 1;
                    }
                }
                previous = record.offsets.clone();
                ready_checkpoint = Some(Checkpoint {
                    offsets: record.offsets,
                    changelog_position: position,
                });
                ready_written_ms = message.timestamp().to_millis().unwrap_or(0);
                if ready.len() >= 10_000 {
                    restored.applied += ready.len() as u64;
                    if let Some(c) = &ready_checkpoint {
                        store.commit_as_of(&ready, c, ready_written_ms)?;
                        stored_position = c.changelog_position;
                        checkpoint = c.clone();
                    }
                    ready.clear();
                }
            } else {
                let source = message
                    .headers()
                    .and_then(|hs| hs.iter().find(|h| h.key == HEADER_SOURCE))
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map_or(Source::Unknown, parse_source);
                staged.insert(
                    key.to_vec(),
                    (message.payload().map(<[u8]>::to_vec), source),
                );
            }
            if restored.records % 1000 == 0 {
                progress(restored.records, (high - position).max(0) as u64);
            }
            Ok(())
        },
    );
    if let Err(error) = read {
        // Abandoned, stalled or failed part way: what was read up to the last checkpoint
        // is a state the store may hold (the periodic commit above writes the same), so
        // the next attempt, here or after the next rebalance, goes on from there instead
        // of starting over.
        if let Some(c) = ready_checkpoint.filter(|c| c.changelog_position > stored_position) {
            match store.commit_as_of(&ready, &c, ready_written_ms) {
                Ok(()) => tracing::info!(
                    topic,
                    partition,
                    records = restored.records,
                    kept_to = c.changelog_position,
                    %error,
                    "Restore stopped; keeping what it read up to its last checkpoint"
                ),
                Err(commit) => {
                    tracing::warn!(topic, partition, %error, %commit, "Restore stopped, and what it read could not be kept");
                }
            }
        }
        return Err(error);
    }
    if let Some(c) = ready_checkpoint {
        restored.applied += ready.len() as u64;
        store.commit_as_of(&ready, &c, started_ms)?;
        checkpoint = c;
    }
    restored.dropped += staged.len() as u64;
    progress(restored.records, 0);
    tracing::info!(
        topic,
        partition,
        records = restored.records,
        applied = restored.applied,
        dropped = restored.dropped,
        "State restored"
    );
    Ok((checkpoint, restored))
}
