//! The aggregation over one task's state: per-product windows from the activity stream,
//! each product's brand from the catalog, activity re-keyed by brand through the
//! repartition topic, and per-brand windows from it.
//!
//! A task is partition p of the activity, products and repartition topics (co-partitioned:
//! equal partition counts). Product windows and the product → brand table live with the
//! product's activity; a brand's windows live with partition p of the repartition topic,
//! wherever its products are. Each dimension has its own stream time (the latest event
//! time it saw); a window closes when its dimension's stream time passes its end plus the
//! grace period, and is forgotten after the retention.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use metrics::counter;
use serde::{Deserialize, Serialize};
use tributary_events::{Activity, Dimension, Envelope, Event, WindowAggregate, WindowSize};
use tributary_runtime::{Batching, Incoming, Output, ProcessError};
use tributary_state::{State, StatefulProcessor, Table, output_id, value_id};
use ulid::Ulid;

use crate::window::{
    self, SIZES, WindowState, parse_state_key, size_ms, start_of, start_prefix, state_key,
};

/// Windows, by [`window::state_key`] (time-ordered per dimension and size).
pub const WINDOWS: Table<WindowState> = Table::new("window");
/// How far the sweeps over [`WINDOWS`] got, by [`cursor_key`]: every window key below a
/// close cursor was closed (its final value published), every one below a purge cursor
/// forgotten.
pub const CURSORS: Table<String> = Table::new("cursor");
/// Product id → brand id.
pub const BRANDS: Table<String> = Table::new("brand");
/// Activity waiting for its product's brand, by `<product id>|<origin>`.
pub const HELD: Table<Held> = Table::new("held");
/// Bookkeeping: stream times, held count, repartition high-water marks.
pub const META: Table<i64> = Table::new("meta");
/// The latest event time each activity partition sent through the repartition topic
/// (`d|topic/partition` → ms), under [`SOURCES`]: the brand windows' clock.
pub const WATERMARKS: Table<BTreeMap<String, i64>> = Table::new("watermark");
/// Activity event ids counted within the de-duplication horizon (value: nothing). ULIDs
/// sort by their time, so the expired ones are one key range at the front.
pub const SEEN: Table<u8> = Table::new("seen");
/// The latest id time (ms) seen on a partition, in [`META`]: the de-duplication clock.
const SEEN_CLOCK: &str = "seen.clock";
/// The last id forgotten, in [`CURSORS`]: where the next sweep of [`SEEN`] starts.
const SEEN_CURSOR: &str = "seen";
/// A partition's publication epoch, in [`META`]: every window changed is stamped with it
/// ([`WindowState::epoch`]). It moves on once a flush published every window stamped
/// with it, by a write in the next message's batch; that batch commits only after the
/// flush's records were acknowledged (they were queued before its outputs). So a window
/// stamped below the stored epoch is on the topic with its latest value, and a partition
/// opened again re-publishes only the open windows stamped at or above it.
pub const EPOCH: &str = "publish.epoch";
/// The epoch of a partition that never moved one. Windows stamped 0 were written by a
/// version without epochs (during a rolling deploy, say): nothing is known of them, so
/// they are always re-published.
const FIRST_EPOCH: u64 = 1;
/// How many expired ids each id remembered forgets at most (more than one, so the table
/// shrinks back after the clock jumps).
const FORGET_PER_ID: usize = 2;
/// How far ahead of this host's clock the de-duplication clock may run, ms.
const CLOCK_LEAD_MS: i64 = 60_000;

/// The one key of [`WATERMARKS`].
pub const SOURCES: &str = "brand.sources";

/// How many windows one message closes or forgets at most (the rest go with the next ones).
const CLOSE_PER_MESSAGE: usize = 5_000;
/// Event times windows can hold: from the epoch until the 13-digit keys run out (2286),
/// less an hour, so that every window of a valid time has a key of its own.
const MAX_EVENT_TIME_MS: i64 = 9_999_999_999_999 - 3_600_000;
/// How many held events one product releases per message at most.
const RELEASE_PER_MESSAGE: usize = 10_000;

/// Metric names of aggregation (before the configured prefix).
pub mod names {
    /// Counter, tag `dim`: events too late for their window, dead-lettered.
    pub const LATE: &str = "aggregation.late";
    /// Counter: repartition records seen before (re-sent after a crash), skipped.
    pub const DUPLICATES: &str = "aggregation.repartition.duplicates";
    /// Counter: activity events whose id was already counted (a copy published again
    /// upstream), skipped.
    pub const EVENT_DUPLICATES: &str = "aggregation.activity.duplicates";
    /// Counter: activity held until its product's brand is known.
    pub const HELD: &str = "aggregation.held";
    /// Counter, tags `dim`, `final`: window values published.
    pub const PUBLISHED: &str = "aggregation.published";
    /// Counter: open windows published again after their partition was opened here,
    /// because no flush is known to have published their latest value.
    pub const REPUBLISHED: &str = "aggregation.republished";
}

/// An activity event waiting for its product's brand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The event.
    pub activity: Activity,
    /// Its event time.
    pub time: chrono::DateTime<Utc>,
}

/// The aggregation's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Activity topic (input).
    pub activity: String,
    /// Products topic (input, for brands).
    pub products: String,
    /// Repartition topic (output and input).
    pub repartition: String,
    /// Aggregates topic (output).
    pub output: String,
    /// How late an event may be for its window, ms.
    pub grace_ms: i64,
    /// How far the brand clock may trail the most advanced source partition, ms.
    pub max_skew_ms: i64,
    /// Partitions of the activity topic: the sources of the brand clock.
    pub activity_partitions: i32,
    /// A partition's changed windows are flushed at most this often, ms.
    pub interim_ms: i64,
    /// How long a closed window stays queryable, ms after its end.
    pub retention_ms: i64,
    /// Activity held for unknown products, per partition, at most.
    pub max_held: i64,
    /// How long (ms of id time) an activity id is remembered against copies; 0: never.
    pub dedupe_ms: i64,
    /// State commit batches.
    pub batching: Batching,
}

/// The aggregation processor.
#[derive(Debug)]
pub struct Aggregator {
    settings: Settings,
    /// How the origin of a record sent straight from the activity topic starts.
    direct: String,
    /// Per partition number: the windows changed since they were last flushed.
    dirty: Mutex<HashMap<i32, Dirty>>,
}

/// What a partition's next flush publishes. Kept in memory: a partition opened on this
/// instance (after a restart or a rebalance) starts by re-publishing the open windows
/// changed since the last flush known to have reached the topic (see [`EPOCH`]), so that
/// a value changed but not flushed before a crash still reaches the topic.
#[derive(Debug, Default)]
struct Dirty {
    /// Windows changed since their last flush, by state key.
    keys: HashSet<String>,
    /// Open windows still to re-publish since the partition was opened: per dimension and
    /// size, the key the scan goes on from (`None`: from the close cursor).
    rescan: Vec<(Dimension, WindowSize, Option<String>)>,
    /// The scan re-publishes the windows stamped with this epoch or a later one: the
    /// partition's epoch when this ownership first flushed it.
    rescan_epoch: u64,
    /// Every window stamped with this epoch or an earlier one was published by a flush of
    /// this ownership (`None`: none was complete yet).
    flushed_epoch: Option<u64>,
    /// When the partition was last flushed (flushes are at least the interim period apart).
    flushed: Option<Instant>,
}

/// Held by a flush while it has the partition's dirty windows in hand: a panic would drop
/// them, so on unwinding it schedules a re-publication of every open window and forgets
/// the last complete flush (the epoch must not move past windows nobody published).
struct RescanAllOnPanic<'a> {
    dirty: &'a Mutex<HashMap<i32, Dirty>>,
    partition: i32,
}

impl Drop for RescanAllOnPanic<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let entry = dirty.entry(self.partition).or_default();
        entry.flushed_epoch = None;
        entry.rescan_epoch = 0;
        entry.rescan.clear();
        for dim in [Dimension::Product, Dimension::Brand] {
            for size in SIZES {
                entry.rescan.push((dim, size, None));
            }
        }
    }
}

/// How many open windows a re-publication after opening a partition reads per flush.
const RESCAN_PER_FLUSH: usize = 10_000;

impl Aggregator {
    /// An aggregator with `settings`.
    pub fn new(settings: Settings) -> Aggregator {
        let direct = format!("d|{}/", settings.activity);
        Aggregator {
            settings,
            direct,
            dirty: Mutex::new(HashMap::new()),
        }
    }

    /// The epoch to stamp the windows this message changes with (see [`EPOCH`]): the
    /// stored one, moved on first when a flush of this ownership published every window
    /// stamped with it. The move is a state write, so it commits with this message.
    fn epoch(&self, partition: i32, state: &mut State<'_>) -> Result<u64, ProcessError> {
        let stored = Self::meta(state, EPOCH)?
            .and_then(|e| u64::try_from(e).ok())
            .unwrap_or(FIRST_EPOCH);
        let flushed = {
            let dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            dirty.get(&partition).and_then(|d| d.flushed_epoch)
        };
        if flushed.is_some_and(|f| f >= stored) {
            let next = stored + 1;
            state.put(&META, EPOCH, &i64::try_from(next).unwrap_or(i64::MAX))?;
            return Ok(next);
        }
        Ok(stored)
    }

    /// Remembers that `keys` changed on `partition`: the next flush publishes them.
    fn mark_dirty(&self, partition: i32, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.entry(partition).or_default().keys.extend(keys);
    }

    /// The latest value of every window of `partition` changed since its last flush (and,
    /// after the partition was opened here, of every open window no earlier flush is
    /// known to have published), unless the last flush was less than the interim period
    /// ago. Windows already closed are left out: their final value went out when they
    /// closed. The dirty set is locked only to take the work and to give back what could
    /// not be read: other partitions' messages mark their windows meanwhile.
    fn flush_windows(&self, partition: i32, state: &State<'_>, first: bool) -> Vec<Output> {
        let interim = Duration::from_millis(u64::try_from(self.settings.interim_ms).unwrap_or(0));
        // Read before the work is taken: the partition's messages wait while it flushes,
        // so no window changes between this read and the end of the flush.
        let epoch = Self::meta(state, EPOCH)
            .map(|e| e.and_then(|e| u64::try_from(e).ok()).unwrap_or(FIRST_EPOCH));
        let (keys, mut rescan, rescan_epoch) = {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            let entry = dirty.entry(partition).or_default();
            if first {
                // The windows changed since the partition opened here are kept: they are
                // stamped at or above the epoch (nothing moved it since the opening).
                entry.flushed = None;
                entry.flushed_epoch = None;
                entry.rescan.clear();
                // Unreadable: every open window is re-published, as before epochs.
                entry.rescan_epoch = epoch.as_ref().map_or(0, |e| *e);
                for dim in [Dimension::Product, Dimension::Brand] {
                    for size in SIZES {
                        // From the close cursor, read when the scan starts.
                        entry.rescan.push((dim, size, None));
                    }
                }
            }
            if entry.flushed.is_some_and(|at| at.elapsed() < interim)
                || (entry.keys.is_empty() && entry.rescan.is_empty())
            {
                return Vec::new();
            }
            entry.flushed = Some(Instant::now());
            (
                std::mem::take(&mut entry.keys),
                std::mem::take(&mut entry.rescan),
                entry.rescan_epoch,
            )
        };
        // The work is out of the dirty set now: should this flush panic, the partition's
        // next flush re-publishes every open window instead.
        let _unwinding = RescanAllOnPanic {
            dirty: &self.dirty,
            partition,
        };
        let mut retry: Vec<String> = Vec::new();
        let mut cursors: HashMap<(Dimension, WindowSize), Result<String, ProcessError>> =
            HashMap::new();
        let mut cursor_of = |dim: Dimension, size: WindowSize| {
            cursors
                .entry((dim, size))
                .or_insert_with(|| {
                    state
                        .get(&CURSORS, &cursor_key(Sweep::Close, dim, size))
                        .map(|c| cursor_or_start(c, dim, size))
                })
                .clone()
        };
        // Open windows to re-publish, a bounded number per flush (values read once).
        let mut values: BTreeMap<String, WindowState> = BTreeMap::new();
        let mut republished = 0u64;
        let mut budget = RESCAN_PER_FLUSH;
        while budget > 0 {
            let Some((dim, size, from)) = rescan.last().cloned() else {
                break;
            };
            // Never behind the close cursor: a batch since the last flush may have closed
            // windows past where the scan stopped, and their final values are out.
            let from = match cursor_of(dim, size) {
                Ok(cursor) => match from {
                    Some(from) => from.max(cursor),
                    None => cursor,
                },
                Err(e) => {
                    tracing::warn!(error = %e, partition, "Cannot read the close cursor to re-publish open windows; retrying at the next flush");
                    break;
                }
            };
            match state.range(&WINDOWS, &from, &window::keys_end(dim, size), budget) {
                Ok(found) => {
                    budget -= found.len();
                    match found.last() {
                        Some((last, _)) if budget == 0 => {
                            if let Some(scan) = rescan.last_mut() {
                                scan.2 = Some(format!("{last}\0"));
                            }
                        }
                        _ => {
                            rescan.pop();
                        }
                    }
                    for (key, window) in found {
                        // Stamped below: a flush known to have reached the topic (its
                        // epoch's move committed after it) published its latest value.
                        if window.epoch == 0 || window.epoch >= rescan_epoch {
                            republished += 1;
                            values.insert(key, window);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, partition, "Cannot read open windows to re-publish; retrying at the next flush");
                    if let Some(scan) = rescan.last_mut() {
                        scan.2 = Some(from);
                    }
                    break;
                }
            }
        }
        for key in keys {
            if values.contains_key(&key) {
                continue;
            }
            let Some((dim, _, size, _)) = parse_state_key(&key) else {
                continue;
            };
            let value = match cursor_of(dim, size) {
                // Closed: its final value went out when it closed.
                Ok(cursor) if key < cursor => continue,
                Ok(_) => state.get(&WINDOWS, &key),
                Err(e) => Err(e),
            };
            match value {
                Ok(Some(window)) => {
                    values.insert(key, window);
                }
                // Forgotten meanwhile (past its retention).
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, partition, "Cannot read a window to flush; retrying at the next flush");
                    retry.push(key);
                }
            }
        }
        if republished > 0 {
            counter!(names::REPUBLISHED).increment(republished);
        }
        {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            let entry = dirty.entry(partition).or_default();
            match epoch {
                // Every window changed before this flush is in it: the next message may
                // move the epoch on (its batch commits after these records are
                // acknowledged).
                Ok(epoch) if retry.is_empty() && rescan.is_empty() => {
                    entry.flushed_epoch = Some(epoch);
                }
                _ => {
                    entry.keys.extend(retry);
                    // A scan still to finish goes on next time (a later `first` replaced
                    // it).
                    if entry.rescan.is_empty() {
                        entry.rescan = rescan;
                    }
                }
            }
        }
        let windows = values
            .into_iter()
            .filter_map(|(key, window)| {
                let (dim, id, size, start) = parse_state_key(&key)?;
                Some(WindowOut {
                    dim,
                    id: id.to_owned(),
                    size,
                    start,
                    window,
                })
            })
            .collect();
        self.publish_values(windows)
    }
}

/// The key of `dim`'s stream time in [`META`].
pub fn stream_time_key(dim: Dimension) -> &'static str {
    match dim {
        Dimension::Product => "stream_time.product",
        Dimension::Brand => "stream_time.brand",
    }
}

/// The key in [`META`] of the stream time `dim`'s sweeps last ran to the end for.
fn swept_key(dim: Dimension) -> &'static str {
    match dim {
        Dimension::Product => "swept.product",
        Dimension::Brand => "swept.brand",
    }
}

/// The key of a sweep's cursor in [`CURSORS`]: `close.p.1m`, `purge.b.1h`, …
pub fn cursor_key(sweep: Sweep, dim: Dimension, size: WindowSize) -> String {
    let sweep = match sweep {
        Sweep::Close => "close",
        Sweep::Purge => "purge",
    };
    format!("{sweep}.{}.{}", dim.as_str(), size.as_str())
}

/// The two passes over windows as stream time moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// The grace period ended: publish the final value (the window stays queryable).
    Close,
    /// The retention ended: forget the window.
    Purge,
}

/// The first key a sweep has not passed yet (all keys below it were swept).
pub fn cursor_or_start(cursor: Option<String>, dim: Dimension, size: WindowSize) -> String {
    cursor.unwrap_or_else(|| start_prefix(dim, size, 0))
}

const HELD_COUNT: &str = "held";

/// The brand clock of `marks`, the latest event time of each of `sources` activity
/// partitions that sent any (see [`Aggregator::brand_clock`]): a partition not heard
/// from yet holds it back like one behind; `i64::MIN` before any.
pub fn brand_clock(marks: &BTreeMap<String, i64>, sources: usize, max_skew_ms: i64) -> i64 {
    let Some(fastest) = marks.values().max() else {
        return i64::MIN;
    };
    let slowest = match marks.values().min() {
        Some(slowest) if marks.len() >= sources => *slowest,
        _ => i64::MIN,
    };
    slowest.max(fastest.saturating_sub(max_skew_ms))
}

/// Where a repartition record came from, for de-duplication: the activity record itself
/// (`d|topic/partition@offset`), or the product record that released it from the hold
/// (`r|topic/partition@offset#index`). Within one stream the markers only grow, because a
/// task processes each input partition in order and re-sends a batch in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    stream: String,
    offset: i64,
    index: i64,
}

impl Origin {
    fn direct(message: &Incoming) -> Origin {
        Origin {
            stream: format!("d|{}/{}", message.topic, message.partition),
            offset: message.offset,
            index: 0,
        }
    }

    fn released(message: &Incoming, index: usize) -> Origin {
        Origin {
            stream: format!("r|{}/{}", message.topic, message.partition),
            offset: message.offset,
            index: index as i64,
        }
    }

    /// As written in the repartition envelope's `source`.
    fn encode(&self) -> String {
        format!("aggregation {} {} {}", self.stream, self.offset, self.index)
    }

    fn decode(source: &str) -> Option<Origin> {
        let mut parts = source.strip_prefix("aggregation ")?.split(' ');
        let stream = parts.next()?.to_owned();
        let offset = parts.next()?.parse().ok()?;
        let index = parts.next()?.parse().ok()?;
        Some(Origin {
            stream,
            offset,
            index,
        })
    }

    /// The offset and index as one ordered number (indexes stay below a million).
    fn position(&self) -> i64 {
        self.offset
            .saturating_mul(1_000_000)
            .saturating_add(self.index)
    }
}

fn event_time(message: &Incoming, activity: &Activity) -> chrono::DateTime<Utc> {
    activity
        .time
        .or_else(|| message.envelope.as_ref().map(|e| e.time))
        .unwrap_or_else(Utc::now)
}

impl Aggregator {
    fn meta(state: &State<'_>, key: &str) -> Result<Option<i64>, ProcessError> {
        state.get(&META, key)
    }

    /// Counts `activity` at `time_ms` in `dim`/`id`'s windows, refusing it when it is late
    /// for its smallest window by `clock` (the time windows close by); stamps the windows
    /// with `epoch` and adds their keys to `touched` (their values go out with the next
    /// flush). Moves `dim`'s stream time (the latest event time, which bounds the windows
    /// the API looks for), known to be `stream_time`.
    #[allow(clippy::too_many_arguments)]
    fn count(
        &self,
        state: &mut State<'_>,
        dim: Dimension,
        id: &str,
        activity: &Activity,
        time_ms: i64,
        (clock, stream_time): (i64, i64),
        epoch: u64,
        touched: &mut Vec<String>,
    ) -> Result<(), ProcessError> {
        if !(0..MAX_EVENT_TIME_MS).contains(&time_ms) {
            return Err(ProcessError::Permanent(format!(
                "event time {time_ms} ms is outside the windows' range (1970 to 2286)"
            )));
        }
        let minute_start = start_of(WindowSize::Minute, time_ms);
        let minute_end = minute_start + size_ms(WindowSize::Minute);
        // Closed also when the close sweep passed it under an earlier, shorter grace period
        // (a setting changed across a restart): a final value is never amended.
        let swept = cursor_or_start(
            state.get(&CURSORS, &cursor_key(Sweep::Close, dim, WindowSize::Minute))?,
            dim,
            WindowSize::Minute,
        );
        if minute_end.saturating_add(self.settings.grace_ms) <= clock
            || state_key(dim, id, WindowSize::Minute, minute_start) < swept
        {
            counter!(names::LATE, "dim" => dim.as_str()).increment(1);
            let clock_name = match dim {
                Dimension::Product => "stream time",
                Dimension::Brand => "brand watermark",
            };
            return Err(ProcessError::Permanent(format!(
                "late: event time {} is past the grace period ({} ms) of its 1m window for {} {id}, closed at {clock_name} {}",
                window::millis(time_ms).to_rfc3339(),
                self.settings.grace_ms,
                dim.as_str(),
                window::millis(clock).to_rfc3339(),
            )));
        }
        for size in SIZES {
            let start = start_of(size, time_ms);
            let key = state_key(dim, id, size, start);
            let mut window = state.get(&WINDOWS, &key)?.unwrap_or_default();
            window.add(activity);
            window.epoch = epoch;
            state.put(&WINDOWS, &key, &window)?;
            touched.push(key);
        }
        if time_ms > stream_time {
            state.put(&META, stream_time_key(dim), &time_ms)?;
        }
        Ok(())
    }

    /// Closes the windows whose grace period ended and forgets those whose retention
    /// ended, by `dim`'s stream time: for each size and sweep, the windows between the
    /// sweep's cursor and the bound are one key range (keys are time-ordered), read only
    /// when the bound passed a window start.
    fn close_due(
        &self,
        state: &mut State<'_>,
        dim: Dimension,
        clock: i64,
        out: &mut Vec<WindowOut>,
    ) -> Result<(), ProcessError> {
        if clock == i64::MIN {
            return Ok(());
        }
        let stream_time = clock;
        // The sweeps' bounds move only when stream time crosses a window start: until then
        // every due window was swept (a window created behind a cursor is late, refused).
        let swept_key = swept_key(dim);
        if let Some(swept) = Self::meta(state, swept_key)? {
            if self.sweep_ends(swept) == self.sweep_ends(stream_time) {
                return Ok(());
            }
        }
        let mut budget = CLOSE_PER_MESSAGE;
        for (size, sweep, end) in self.sweep_ends(stream_time) {
            {
                let upper = start_prefix(dim, size, end);
                if budget == 0 {
                    // The rest go with the next messages.
                    return Ok(());
                }
                let cursor_key = cursor_key(sweep, dim, size);
                let cursor = cursor_or_start(state.get(&CURSORS, &cursor_key)?, dim, size);
                if cursor >= upper {
                    continue;
                }
                let due = state.range(&WINDOWS, &cursor, &upper, budget)?;
                budget -= due.len();
                let next = match due.last() {
                    Some((last, _)) if budget == 0 => format!("{last}\0"),
                    _ => upper,
                };
                for (key, mut window) in due {
                    match sweep {
                        Sweep::Close => {
                            if let Some((dim, id, size, start)) = parse_state_key(&key) {
                                window.is_final = true;
                                out.push(WindowOut {
                                    dim,
                                    id: id.to_owned(),
                                    size,
                                    start,
                                    window,
                                });
                            }
                        }
                        Sweep::Purge => state.delete(&WINDOWS, &key)?,
                    }
                }
                state.put(&CURSORS, &cursor_key, &next)?;
            }
        }
        if budget > 0 {
            state.put(&META, swept_key, &stream_time)?;
        }
        Ok(())
    }

    /// For each size and sweep, where the sweep ends at `stream_time`: windows starting at
    /// or before the sweep's bound are due, so every window starting before the returned
    /// start.
    fn sweep_ends(&self, stream_time: i64) -> [(WindowSize, Sweep, i64); 4] {
        let end = |size: WindowSize, sweep: Sweep| {
            let after = match sweep {
                Sweep::Close => self.settings.grace_ms,
                // Never forget a window before its final value was published.
                Sweep::Purge => self.settings.retention_ms.max(self.settings.grace_ms),
            };
            let bound = stream_time
                .saturating_sub(after)
                .saturating_sub(size_ms(size));
            (
                size,
                sweep,
                start_of(size, bound).saturating_add(size_ms(size)),
            )
        };
        let [minute, hour] = SIZES;
        [
            end(minute, Sweep::Close),
            end(minute, Sweep::Purge),
            end(hour, Sweep::Close),
            end(hour, Sweep::Purge),
        ]
    }

    /// A repartition record for the brand windows.
    fn rekey(
        &self,
        message: &Incoming,
        index: u32,
        brand: &str,
        activity: &Activity,
        time: chrono::DateTime<Utc>,
        origin: &Origin,
    ) -> Output {
        let mut activity = activity.clone();
        activity.time = Some(time);
        let mut envelope = Envelope::new(origin.encode(), Event::Activity(activity))
            .at(time)
            .with_id(output_id(message, index));
        envelope.key = brand.to_owned();
        Output::event(&self.settings.repartition, envelope)
    }

    /// Whether `id` was counted already (within the horizon); otherwise remembers it and
    /// forgets ids that fell out of the horizon. Ingest derives the ids of a request again
    /// when it publishes it again after a crash, so a copy carries its original's id; the
    /// offsets and the state commit together, so a replay of this service's own input is
    /// skipped before it gets here and never counts as a copy.
    fn seen_before(&self, id: Ulid, state: &mut State<'_>) -> Result<bool, ProcessError> {
        if self.settings.dedupe_ms <= 0 {
            return Ok(false);
        }
        let key = id.to_string();
        if state.get(&SEEN, &key)?.is_some() {
            return Ok(true);
        }
        let id_ms = i64::try_from(id.timestamp_ms()).unwrap_or(i64::MAX);
        // The clock is the newest id time seen, but never more than a minute ahead of this
        // host's clock: one id from a host whose clock runs fast must not age every other id
        // out of the horizon (and so turn de-duplication off until real time catches up).
        let ceiling = Utc::now().timestamp_millis().saturating_add(CLOCK_LEAD_MS);
        let stored = Self::meta(state, SEEN_CLOCK)?;
        let clock = stored.unwrap_or(i64::MIN).max(id_ms).min(ceiling);
        if stored.is_none_or(|s| clock / 1000 != s / 1000) {
            // Written once per second of id time, not once per event.
            state.put(&META, SEEN_CLOCK, &clock)?;
        }
        let cutoff = clock.saturating_sub(self.settings.dedupe_ms);
        let from = state.get(&CURSORS, SEEN_CURSOR)?.unwrap_or_default();
        if id_ms < cutoff || key <= from {
            // Older than the horizon, or at or below where the sweep already went (the
            // cutoff can step back within a second, or when the clock cap lowers it): its
            // original (if any) is forgotten; count it, and do not store what no sweep
            // would ever reach again.
            return Ok(false);
        }
        state.put(&SEEN, &key, &0)?;
        // Forget up to two expired ids for each one remembered: the table holds the
        // horizon's ids and shrinks back after a jump of the clock, whatever the rate. The
        // scan starts at the last id forgotten (a cursor kept with the state): from the
        // table's start it would re-read, on every event, every deletion still pending in
        // the batch, quadratic in the batch size.
        let below = Ulid::from_parts(u64::try_from(cutoff).unwrap_or(0), 0).to_string();
        if from < below {
            let expired = state.range(&SEEN, &from, &below, FORGET_PER_ID + 1)?;
            let mut last = None;
            for (old, _) in expired
                .into_iter()
                .filter(|(k, _)| *k != from)
                .take(FORGET_PER_ID)
            {
                state.delete(&SEEN, &old)?;
                last = Some(old);
            }
            if let Some(last) = last {
                state.put(&CURSORS, SEEN_CURSOR, &last)?;
            }
        }
        Ok(false)
    }

    fn on_activity(
        &self,
        message: &Incoming,
        id: Ulid,
        activity: &Activity,
        state: &mut State<'_>,
    ) -> Result<Vec<Output>, ProcessError> {
        if self.seen_before(id, state)? {
            counter!(names::EVENT_DUPLICATES).increment(1);
            return Ok(Vec::new());
        }
        let time = event_time(message, activity);
        let time_ms = time.timestamp_millis();
        let mut windows = Vec::new();
        let mut touched = Vec::with_capacity(SIZES.len());
        // A product's windows live with its partition: that partition's stream time is
        // their clock.
        let stream_time =
            Self::meta(state, stream_time_key(Dimension::Product))?.unwrap_or(i64::MIN);
        let epoch = self.epoch(message.partition, state)?;
        self.count(
            state,
            Dimension::Product,
            &activity.product_id,
            activity,
            time_ms,
            (stream_time, stream_time),
            epoch,
            &mut touched,
        )?;
        let mut outputs = Vec::new();
        match state.get(&BRANDS, &activity.product_id)? {
            Some(brand) => {
                outputs.push(self.rekey(
                    message,
                    0,
                    &brand,
                    activity,
                    time,
                    &Origin::direct(message),
                ));
            }
            None => {
                let held = Self::meta(state, HELD_COUNT)?.unwrap_or(0);
                if held >= self.settings.max_held {
                    return Err(ProcessError::Permanent(format!(
                        "product {} is not known yet and {held} events already wait for their products (AGGREGATION_MAX_HELD)",
                        activity.product_id
                    )));
                }
                state.put(
                    &HELD,
                    &format!(
                        "{}|{}/{}@{:020}",
                        activity.product_id, message.topic, message.partition, message.offset
                    ),
                    &Held {
                        activity: activity.clone(),
                        time,
                    },
                )?;
                state.put(&META, HELD_COUNT, &(held + 1))?;
                counter!(names::HELD).increment(1);
            }
        }
        self.close_due(
            state,
            Dimension::Product,
            stream_time.max(time_ms),
            &mut windows,
        )?;
        outputs.extend(self.publish(message, outputs.len() as u32, windows));
        self.mark_dirty(message.partition, touched);
        Ok(outputs)
    }

    fn on_product(
        &self,
        message: &Incoming,
        product_id: &str,
        brand: &str,
        state: &mut State<'_>,
    ) -> Result<Vec<Output>, ProcessError> {
        if state.get(&BRANDS, product_id)?.as_deref() != Some(brand) {
            state.put(&BRANDS, product_id, &brand.to_owned())?;
        }
        let (from, to) = (format!("{product_id}|"), format!("{product_id}}}"));
        let held = state.range(&HELD, &from, &to, RELEASE_PER_MESSAGE)?;
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut outputs = Vec::with_capacity(held.len());
        for (index, (key, event)) in held.iter().enumerate() {
            state.delete(&HELD, key)?;
            outputs.push(self.rekey(
                message,
                index as u32,
                brand,
                &event.activity,
                event.time,
                &Origin::released(message, index),
            ));
        }
        let count = Self::meta(state, HELD_COUNT)?.unwrap_or(0);
        state.put(&META, HELD_COUNT, &(count - held.len() as i64).max(0))?;
        Ok(outputs)
    }

    fn on_repartitioned(
        &self,
        message: &Incoming,
        envelope: &Envelope,
        activity: &Activity,
        state: &mut State<'_>,
    ) -> Result<Vec<Output>, ProcessError> {
        let brand = envelope.key.as_str();
        let origin = Origin::decode(&envelope.source);
        if let Some(origin) = &origin {
            let seen_key = format!("seen|{}", origin.stream);
            let seen = Self::meta(state, &seen_key)?.unwrap_or(-1);
            if origin.position() <= seen {
                counter!(names::DUPLICATES).increment(1);
                return Ok(Vec::new());
            }
            state.put(&META, &seen_key, &origin.position())?;
        }
        let time_ms = event_time(message, activity).timestamp_millis();
        let clock = self.brand_clock(state, origin.as_ref(), time_ms)?;
        let stream_time = Self::meta(state, stream_time_key(Dimension::Brand))?.unwrap_or(i64::MIN);
        let mut windows = Vec::new();
        let mut touched = Vec::with_capacity(SIZES.len());
        let epoch = self.epoch(message.partition, state)?;
        self.count(
            state,
            Dimension::Brand,
            brand,
            activity,
            time_ms,
            (clock, stream_time),
            epoch,
            &mut touched,
        )?;
        self.close_due(state, Dimension::Brand, clock, &mut windows)?;
        self.mark_dirty(message.partition, touched);
        Ok(self.publish(message, 0, windows))
    }

    /// The brand windows' clock after a record from `origin` at `time_ms`: the slowest
    /// activity partition's latest event time, or the fastest one's less the allowed
    /// skew when that is later. Each activity partition checks its events against its
    /// own stream time, and its records reach this task in order, so an event it counted
    /// is never behind a clock that its own partition holds back: it is not late here,
    /// however far ahead other partitions were read. Released events (their product came
    /// later) do not move the clock; they are judged by it.
    fn brand_clock(
        &self,
        state: &mut State<'_>,
        origin: Option<&Origin>,
        time_ms: i64,
    ) -> Result<i64, ProcessError> {
        let mut marks = state.get(&WATERMARKS, SOURCES)?.unwrap_or_default();
        if let Some(origin) = origin.filter(|o| o.stream.starts_with(&self.direct)) {
            // The whole second below the event time: a mark never runs ahead of its
            // partition (so the clock stays safe), and the map is rewritten once per
            // second of event time per partition instead of on nearly every record (each
            // rewrite stays in the batch's pending log until the commit).
            let second = time_ms - time_ms.rem_euclid(1000);
            let mark = marks.entry(origin.stream.clone()).or_insert(i64::MIN);
            if second > *mark && (0..MAX_EVENT_TIME_MS).contains(&time_ms) {
                *mark = second;
                state.put(&WATERMARKS, SOURCES, &marks)?;
            }
        }
        let sources = usize::try_from(self.settings.activity_partitions).unwrap_or(1);
        Ok(brand_clock(&marks, sources, self.settings.max_skew_ms))
    }

    /// The records of flushed window values, with ids derived from the values.
    fn publish_values(&self, windows: Vec<WindowOut>) -> Vec<Output> {
        self.window_records(windows, |key, row| {
            let counts = [
                row.views,
                row.carts,
                row.orders,
                row.units,
                row.revenue_minor,
            ]
            .map(u64::to_be_bytes)
            .concat();
            value_id(row.end.timestamp_millis(), &[key.as_bytes(), &counts])
        })
    }

    /// The records of window values, with ids derived from the input.
    fn publish(
        &self,
        message: &Incoming,
        first_index: u32,
        windows: Vec<WindowOut>,
    ) -> Vec<Output> {
        let mut index = first_index;
        self.window_records(windows, |_, _| {
            index += 1;
            output_id(message, index - 1)
        })
    }

    /// The records of window values (a row per currency), each with the id `id_of` gives
    /// its topic key and row.
    fn window_records(
        &self,
        windows: Vec<WindowOut>,
        mut id_of: impl FnMut(&str, &WindowAggregate) -> Ulid,
    ) -> Vec<Output> {
        let mut outputs = Vec::new();
        // Counted per call, not per row: a labelled counter is looked up on every use.
        let mut published = [[0u64; 2]; 2];
        for w in windows {
            for (suffix, row) in w.window.rows(w.dim, &w.id, w.size, w.start) {
                published[usize::from(w.dim == Dimension::Brand)]
                    [usize::from(w.window.is_final)] += 1;
                let key = format!(
                    "{}{suffix}",
                    window::topic_key(w.dim, &w.id, w.size, w.start)
                );
                let id = id_of(&key, &row);
                let at = row.end;
                let mut envelope = Envelope::new(crate::NAME, Event::WindowAggregated(row))
                    .at(at)
                    .with_id(id);
                envelope.key = key;
                outputs.push(Output::event(&self.settings.output, envelope));
            }
        }
        for (dim, counts) in [Dimension::Product, Dimension::Brand].iter().zip(published) {
            for (final_, count) in ["false", "true"].iter().zip(counts) {
                if count > 0 {
                    counter!(names::PUBLISHED, "dim" => dim.as_str(), "final" => *final_)
                        .increment(count);
                }
            }
        }
        outputs
    }
}

/// A window value to publish.
#[derive(Debug)]
struct WindowOut {
    dim: Dimension,
    id: String,
    size: WindowSize,
    start: i64,
    window: WindowState,
}

impl StatefulProcessor for Aggregator {
    fn process(
        &self,
        message: &Incoming,
        state: &mut State<'_>,
    ) -> Result<Vec<Output>, ProcessError> {
        let Some(envelope) = &message.envelope else {
            // Tombstones: nothing on these topics is deleted by key.
            return Ok(Vec::new());
        };
        let topic = message.topic.as_ref();
        match &envelope.event {
            Event::Activity(activity) if topic == self.settings.repartition => {
                self.on_repartitioned(message, envelope, activity, state)
            }
            Event::Activity(activity) if topic == self.settings.activity => {
                self.on_activity(message, envelope.id, activity, state)
            }
            Event::ProductUpserted(p) if topic == self.settings.products => {
                self.on_product(message, &p.product_id, &p.brand_id, state)
            }
            // A deleted product keeps its brand: activity still in flight for it belongs
            // to that brand.
            Event::ProductDeleted(_) if topic == self.settings.products => Ok(Vec::new()),
            other => Err(ProcessError::Permanent(format!(
                "{} is not an event aggregation reads on {topic}",
                other.event_type()
            ))),
        }
    }

    fn batching(&self) -> Batching {
        self.settings.batching
    }

    fn flush(&self, partition: i32, state: &State<'_>, first: bool) -> Vec<Output> {
        self.flush_windows(partition, state, first)
    }

    fn opened(&self, partition: i32) {
        // What this instance remembers of an earlier ownership (windows flushed, windows
        // dirty) may not have reached the topic: nothing of it may move the epoch on.
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.remove(&partition);
    }

    fn flush_every(&self) -> Option<Duration> {
        // Batch ends flush too; an idle partition needs no more than ten flushes a second.
        Some(Duration::from_millis(
            u64::try_from(self.settings.interim_ms)
                .unwrap_or(0)
                .max(100),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brand_clock_is_the_slowest_source_within_the_skew_of_the_fastest() {
        let marks = |m: &[(&str, i64)]| -> BTreeMap<String, i64> {
            m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        assert_eq!(brand_clock(&marks(&[]), 2, 100), i64::MIN);
        // One of two sources heard: the other may still send anything down to the skew.
        assert_eq!(brand_clock(&marks(&[("d|a/0", 1_000)]), 2, 100), 900);
        // Both heard: the slower holds the clock ...
        assert_eq!(
            brand_clock(&marks(&[("d|a/0", 1_000), ("d|a/1", 950)]), 2, 100),
            950
        );
        // ... unless it trails by more than the skew.
        assert_eq!(
            brand_clock(&marks(&[("d|a/0", 1_000), ("d|a/1", 10)]), 2, 100),
            900
        );
    }

    #[test]
    fn origins_round_trip_and_order_by_offset_then_index() {
        let o = Origin {
            stream: "r|catalog.products.v1/3".into(),
            offset: 77,
            index: 2,
        };
        assert_eq!(Origin::decode(&o.encode()), Some(o.clone()));
        let later = Origin {
            offset: 78,
            index: 0,
            ..o.clone()
        };
        assert!(later.position() > o.position());
        assert_eq!(Origin::decode("ingest"), None);
    }
}
