//! The runtime processor a stateful service runs: it owns the stores, the offsets in them,
//! the changelog and the restore, and hands the service's logic a [`State`] per message.
//!
//! A batch's life (the runtime calls [`Processor::commit_batch`] once its outputs are
//! acknowledged):
//! 1. the batch's final value of every entry it changed goes to the changelog, then a
//!    checkpoint record with the task's input offsets; each step waits for the broker;
//! 2. one local transaction writes the same entries, the offsets and the changelog
//!    position;
//! 3. the runtime finishes the batch's offsets, and commits them to the group later.
//!
//! A crash before 1 completes re-runs the batch from the previous state (its outputs go
//! out again with the same ids); between 1 and 2, the restore on restart finds the batch
//! in the changelog and applies it; after 2, the store resumes after the batch. Nothing is
//! applied twice and nothing is skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use serde_json::json;
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::topics::{self, TopicSpec};
use tributary_runtime::{
    Batching, Health, Incoming, Output, PartitionId, ProcessError, Processor, ServiceContext,
    StartFrom,
};

use crate::changelog::{self, CHECKPOINT_KEY, CheckpointRecord};
use crate::pending::{Pending, State, Table};
use crate::store::{Checkpoint, Store};
use crate::{StateError, names};

/// A service's logic over its state: what a stateful service implements instead of
/// [`Processor`].
pub trait StatefulProcessor: Send + Sync + 'static {
    /// Processes one message against its partition's state. The writes count only when
    /// this returns `Ok`; the outputs are published before the state commits.
    ///
    /// Must be deterministic: a message processed again after a crash must produce the
    /// same outputs (derive ids from the input, see [`crate::output_id`]).
    fn process(
        &self,
        message: &Incoming,
        state: &mut State<'_>,
    ) -> Result<Vec<Output>, ProcessError>;

    /// How messages are grouped into state commits.
    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// Outputs that summarise the partition's recent work (see
    /// [`Processor::flush`](tributary_runtime::Processor::flush)), read from its state
    /// (committed, with the open batch's changes on top); `first` is true on the first
    /// flush since the partition's state was opened on this instance (nothing remembered
    /// in memory about it from before is current). Reads only: a flush writes no state.
    fn flush(&self, _partition: i32, _state: &State<'_>, _first: bool) -> Vec<Output> {
        Vec::new()
    }

    /// How often an idle partition is flushed; `None` (the default) never.
    fn flush_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// Called when `partition`'s state has been opened (restored) on this instance, before
    /// any message or flush of the new ownership: whatever memory holds about the
    /// partition from an earlier ownership on this instance is not current any more (its
    /// last outputs may never have been delivered).
    fn opened(&self, _partition: i32) {}
}

/// Runs a [`StatefulProcessor`] with one store per partition number (its inputs are
/// co-partitioned), named `store`, kept in `<DATA_DIR>/<group>/<store>/` and restored from
/// `<group>.<store>.changelog`.
#[derive(Debug)]
pub struct Stateful<S> {
    inner: S,
    store: String,
    context: OnceLock<Context>,
    tasks: Arc<Mutex<HashMap<i32, Arc<Slot>>>>,
    status: Mutex<BTreeMap<i32, serde_json::Value>>,
    crash: Option<CrashAt>,
}

struct Context {
    changelog: String,
    dir: PathBuf,
    client: tributary_runtime::rdkafka::ClientConfig,
    producer: FutureProducer,
    health: Health,
    /// A store behind its changelog and older than this is restored afresh.
    stale_after: Duration,
    /// Each store's page cache (`STATE_CACHE_MB`).
    cache_bytes: usize,
    /// Holds changelog writes after the process was frozen.
    freeze: tributary_runtime::FreezeGuard,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("changelog", &self.changelog)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// One partition number's store while it is assigned.
#[derive(Debug, Default)]
struct Slot {
    task: tokio::sync::OnceCell<Arc<Task>>,
    members: Mutex<BTreeSet<PartitionId>>,
    /// Raised by `fence`, shared with the task: it reaches a restore or re-seed still
    /// opening the task, which nothing else can reach yet.
    fenced: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
struct Task {
    number: i32,
    store: Store,
    pending: Mutex<Pending>,
    /// What the store's last transaction covers.
    checkpoint: Mutex<Checkpoint>,
    /// Another instance may own the partitions now: write nothing more.
    fenced: Arc<std::sync::atomic::AtomicBool>,
    /// Flushed at least once since it was opened.
    flushed: std::sync::atomic::AtomicBool,
}

impl Task {
    /// Waits while the process is held after a freeze (the partition may be someone
    /// else's: a zombie's changelog records interleaved with the new owner's would corrupt
    /// the next restore), then checks the fence a lost assignment raises meanwhile.
    async fn pass_freeze(
        &self,
        freeze: &tributary_runtime::FreezeGuard,
    ) -> Result<(), ProcessError> {
        if freeze.is_held() {
            freeze
                .wait(|| self.fenced.load(std::sync::atomic::Ordering::Acquire))
                .await;
        }
        self.check_fence()
    }

    fn check_fence(&self) -> Result<(), ProcessError> {
        if self.fenced.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ProcessError::Transient(format!(
                "partition {} was handed over; not writing its state",
                self.number
            )));
        }
        Ok(())
    }
}

/// Why a [`StateReader`] could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Another instance owns the partition (or nobody does yet).
    #[error("partition {0} is not owned by this instance")]
    NotOwned(i32),
    /// This instance owns it and is restoring its state.
    #[error("partition {0} is restoring its state")]
    Restoring(i32),
    /// The store failed, or a value does not decode.
    #[error("{0}")]
    Failed(String),
}

/// Reads the committed state of the partitions this instance owns (what the last batch
/// commit wrote; processed messages not yet committed are not visible). Reads block on
/// the local database: call them off the async runtime's threads.
#[derive(Debug, Clone)]
pub struct StateReader {
    tasks: Arc<Mutex<HashMap<i32, Arc<Slot>>>>,
}

impl StateReader {
    fn task(&self, partition: i32) -> Result<Arc<Task>, ReadError> {
        let slot = lock(&self.tasks)
            .get(&partition)
            .cloned()
            .ok_or(ReadError::NotOwned(partition))?;
        let task = slot
            .task
            .get()
            .cloned()
            .ok_or(ReadError::Restoring(partition))?;
        if task.fenced.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ReadError::NotOwned(partition));
        }
        Ok(task)
    }

    /// The partition numbers whose state this instance holds and serves.
    pub fn owned(&self) -> Vec<i32> {
        let mut owned: Vec<i32> = lock(&self.tasks)
            .iter()
            .filter(|(_, slot)| {
                slot.task
                    .get()
                    .is_some_and(|t| !t.fenced.load(std::sync::atomic::Ordering::Acquire))
            })
            .map(|(p, _)| *p)
            .collect();
        owned.sort_unstable();
        owned
    }

    /// The committed value of `key` in `table` of partition `partition`.
    pub fn get<V: serde::de::DeserializeOwned>(
        &self,
        partition: i32,
        table: &Table<V>,
        key: &str,
    ) -> Result<Option<V>, ReadError> {
        let task = self.task(partition)?;
        let bytes = task
            .store
            .get(table.name(), key)
            .map_err(|e| ReadError::Failed(e.to_string()))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| ReadError::Failed(e.to_string())))
            .transpose()
    }

    /// The committed values of `keys` in `table` of partition `partition`, from one
    /// snapshot, in the order of `keys`.
    pub fn get_many<V: serde::de::DeserializeOwned>(
        &self,
        partition: i32,
        table: &Table<V>,
        keys: &[String],
    ) -> Result<Vec<Option<V>>, ReadError> {
        let task = self.task(partition)?;
        task.store
            .get_many(table.name(), keys)
            .map_err(|e| ReadError::Failed(e.to_string()))?
            .into_iter()
            .map(|bytes| {
                bytes
                    .map(|b| {
                        serde_json::from_slice(&b).map_err(|e| ReadError::Failed(e.to_string()))
                    })
                    .transpose()
            })
            .collect()
    }

    /// The committed entries of `table` of partition `partition` with keys in
    /// `[from, to)`, at most `limit`.
    pub fn range<V: serde::de::DeserializeOwned>(
        &self,
        partition: i32,
        table: &Table<V>,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Vec<(String, V)>, ReadError> {
        let task = self.task(partition)?;
        task.store
            .range(table.name(), from, to, limit)
            .map_err(|e| ReadError::Failed(e.to_string()))?
            .into_iter()
            .map(|(k, b)| {
                serde_json::from_slice(&b)
                    .map(|v| (k, v))
                    .map_err(|e| ReadError::Failed(e.to_string()))
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of(id: &PartitionId) -> String {
    format!("{}/{}", id.topic, id.partition)
}

/// Fault injection for crash tests: `STATE_CRASH_AT=<step>:<n>` aborts the process (no
/// shutdown, like `kill -9`) the n-th time a batch commit reaches `<step>`:
/// `before_changelog` (outputs acknowledged), `before_checkpoint` (changelog entries
/// acknowledged), `before_state_commit` (checkpoint acknowledged) or `after_state_commit`
/// (local transaction done, group commit not yet). Unset in production.
#[derive(Debug)]
struct CrashAt {
    step: String,
    nth: u64,
    seen: std::sync::atomic::AtomicU64,
}

impl CrashAt {
    fn from_env() -> Option<CrashAt> {
        let spec = std::env::var("STATE_CRASH_AT").ok()?;
        let (step, nth) = spec.split_once(':')?;
        Some(CrashAt {
            step: step.to_owned(),
            nth: nth.parse().ok()?,
            seen: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

fn crash_point(crash: Option<&CrashAt>, step: &str) {
    if let Some(crash) = crash.filter(|c| c.step == step) {
        let seen = crash.seen.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        if seen == crash.nth {
            eprintln!("STATE_CRASH_AT: aborting at {step} (commit {seen})");
            std::process::abort();
        }
    }
}

/// The `delete.retention.ms` a new changelog gets: how long its tombstones are kept.
const TOMBSTONE_RETENTION_MS: i64 = 7 * 86_400_000;
/// Kafka's default `delete.retention.ms`, assumed for an existing changelog whose configs
/// the broker does not describe.
const DEFAULT_TOMBSTONE_RETENTION_MS: i64 = 86_400_000;
/// A store behind its changelog is discarded (and restored afresh) when its last commit is
/// older than the changelog's tombstone retention minus this margin.
const STALE_MARGIN_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A re-seed id: the time, and the process, so that two instances never pick the same.
fn reseed_id() -> i64 {
    now_ms()
        .saturating_mul(1000)
        .saturating_add(i64::from(std::process::id() % 1000))
}

/// Takes back what an open announced when it does not finish (an error, or its future
/// dropped because the assignment went): the partition's status, and its slot when nobody
/// else waits on it, so that a later assignment starts with a fresh slot and fence.
struct OpenGuard<'a, S: StatefulProcessor> {
    stateful: &'a Stateful<S>,
    number: i32,
    done: bool,
    /// Stops the restore, which runs on a blocking thread that dropping the open's future
    /// does not stop: it would otherwise read to its end holding the store's file lock.
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    /// The slot this open fills: only that one may be taken back, never a later
    /// ownership's slot of the same partition number (should this guard drop late).
    slot: std::sync::Weak<Slot>,
}

impl<S: StatefulProcessor> Drop for OpenGuard<'_, S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Release);
        let mut tasks = lock(&self.stateful.tasks);
        // This open's slot, held only by the map and the hook: nobody else is opening it.
        let unused = tasks.get(&self.number).is_some_and(|slot| {
            std::ptr::eq(Arc::as_ptr(slot), self.slot.as_ptr())
                && slot.task.get().is_none()
                && lock(&slot.members).is_empty()
                && Arc::strong_count(slot) <= 2
        });
        if unused {
            tasks.remove(&self.number);
            drop(tasks);
            self.stateful.set_status(self.number, None);
        }
    }
}

/// How long a restore may go without reading anything before it is retried.
const RESTORE_STALL: Duration = Duration::from_secs(30);

impl<S: StatefulProcessor> Stateful<S> {
    /// `inner` over the store called `store` (letters, digits, `-`, `_`).
    pub fn new(store: &str, inner: S) -> Stateful<S> {
        Stateful {
            inner,
            store: store.to_owned(),
            context: OnceLock::new(),
            tasks: Arc::new(Mutex::new(HashMap::new())),
            status: Mutex::new(BTreeMap::new()),
            crash: CrashAt::from_env(),
        }
    }

    /// The service's own logic.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Read access to the committed state of the partitions this instance owns, for a
    /// query API.
    pub fn reader(&self) -> StateReader {
        StateReader {
            tasks: self.tasks.clone(),
        }
    }

    fn context(&self) -> Result<&Context, ProcessError> {
        self.context
            .get()
            .ok_or_else(|| ProcessError::Transient("state store not started".to_owned()))
    }

    fn task(&self, number: i32) -> Result<Arc<Task>, ProcessError> {
        lock(&self.tasks)
            .get(&number)
            .and_then(|slot| slot.task.get().cloned())
            .ok_or_else(|| ProcessError::Blocked(format!("no state open for partition {number}")))
    }

    fn set_status(&self, number: i32, value: Option<serde_json::Value>) {
        let mut status = lock(&self.status);
        match value {
            Some(v) => status.insert(number, v),
            None => status.remove(&number),
        };
        if let Some(context) = self.context.get() {
            context.health.set_extra(
                "state",
                json!({"store": self.store, "changelog": context.changelog, "partitions": status.values().collect::<Vec<_>>()}),
            );
        }
    }

    /// Opens partition `number`'s store and restores it from the changelog.
    async fn open(&self, number: i32, slot: &Arc<Slot>) -> Result<Arc<Task>, ProcessError> {
        let fenced = slot.fenced.clone();
        let context = self.context()?;
        let path = context.dir.join(format!("p{number}.redb"));
        let cache_bytes = context.cache_bytes;
        let client = context.client.clone();
        let topic = context.changelog.clone();
        let store_name = self.store.clone();
        let health = context.health.clone();
        let blocker = format!("restore {}/{number}", self.store);
        self.set_status(
            number,
            Some(json!({"partition": number, "state": "restoring"})),
        );
        let started = Instant::now();
        let progress_blocker = blocker.clone();
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let options = changelog::RestoreOptions {
            stall_timeout: RESTORE_STALL,
            stale_after: context.stale_after,
            abandoned: Some(abandoned.clone()),
        };
        let done_blocker = blocker.clone();
        let done_health = context.health.clone();
        // If the assignment goes while this runs, the hook's future is dropped: the guard
        // takes back what the open announced (status, the empty slot).
        let mut guard = OpenGuard {
            stateful: self,
            number,
            done: false,
            abandoned,
            slot: Arc::downgrade(slot),
        };
        let result = tokio::task::spawn_blocking(move || {
            let store = Store::open_with_cache(&path, cache_bytes)?;
            let restored = changelog::restore(
                &store,
                &client,
                &topic,
                number,
                options,
                |read, remaining| {
                    gauge!(names::RESTORE_REMAINING, "store" => store_name.clone(), "partition" => number.to_string())
                        .set(remaining as f64);
                    health.set_blocker(
                        &progress_blocker,
                        Some(format!(
                            "restoring state {store_name}/{number}: {read} changelog records read, {remaining} to go"
                        )),
                    );
                },
            );
            // Cleared here too: this runs to its end even when the open was abandoned.
            done_health.set_blocker(&done_blocker, None);
            let (checkpoint, restored) = restored?;
            counter!(names::RESTORED_RECORDS, "store" => store_name).increment(restored.records);
            Ok::<_, StateError>((store, checkpoint, restored))
        })
        .await
        .map_err(|e| ProcessError::Transient(format!("restore task: {e}")));
        context.health.set_blocker(&blocker, None);
        let (store, checkpoint, restored) = match result {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                self.set_status(
                    number,
                    Some(json!({"partition": number, "state": "failed", "error": e.to_string()})),
                );
                return Err(ProcessError::Transient(e.to_string()));
            }
            Err(e) => return Err(e),
        };
        let entries = store.len().unwrap_or(0);
        let task = Arc::new(Task {
            number,
            store,
            pending: Mutex::new(Pending::default()),
            checkpoint: Mutex::new(checkpoint),
            fenced,
            flushed: std::sync::atomic::AtomicBool::new(false),
        });
        let mut reseeded = 0;
        if let Some(changelog_keys) = restored.ahead_of_changelog {
            reseeded =
                self.reseed(&task, changelog_keys, restored.changelog_end)
                    .await
                    .inspect_err(|e| {
                        self.set_status(
                    number,
                    Some(json!({"partition": number, "state": "failed", "error": e.to_string()})),
                );
                    })?;
        }
        self.set_status(
            number,
            Some(json!({
                "partition": number,
                "state": "ready",
                "entries": entries,
                "changelog_position": lock(&task.checkpoint).changelog_position,
                "restored_records": restored.records,
                "reseeded_entries": reseeded,
                "restore_seconds": started.elapsed().as_secs_f64(),
            })),
        );
        gauge!(names::ENTRIES, "store" => self.store.clone(), "partition" => number.to_string())
            .set(entries as f64);
        // Before the task is in its slot: nothing processes or flushes it yet.
        self.inner.opened(number);
        guard.done = true;
        Ok(task)
    }

    /// Writes the whole store back to a changelog that lost it, as one batch (every entry,
    /// a tombstone for each key the changelog holds and the store does not, then a
    /// checkpoint with the store's offsets), and moves the store's changelog position
    /// after it. A crash midway leaves the store ahead of the changelog, and the next
    /// assignment does this again. Returns the entries written.
    async fn reseed(
        &self,
        task: &Arc<Task>,
        changelog_keys: BTreeSet<Vec<u8>>,
        changelog_end: i64,
    ) -> Result<u64, ProcessError> {
        let reading = task.clone();
        let entries = tokio::task::spawn_blocking(move || reading.store.entries())
            .await
            .map_err(|e| ProcessError::Transient(format!("state read task: {e}")))?
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        let count = entries.len() as u64;
        // The re-seed is marked in the store before anything is written: one that stops
        // partway (a crash, a failed delivery, a lost assignment) is done again in full on
        // the next open, whatever the changelog's end says by then.
        let (id, from) = match task.store.reseed_pending() {
            Ok(Some(pending)) => pending,
            _ => (reseed_id(), changelog_end),
        };
        let marking = task.clone();
        tokio::task::spawn_blocking(move || marking.store.begin_reseed(id, from))
            .await
            .map_err(|e| ProcessError::Transient(format!("state commit task: {e}")))?
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        let mut changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            changelog_keys.into_iter().map(|k| (k, None)).collect();
        changes.extend(entries.into_iter().map(|(k, v)| (k, Some(v))));
        // Its entries count only at its own checkpoint (see `changelog::restore`).
        let source = changelog::reseed_source(id);
        let sources = changes
            .keys()
            .map(|k| (k.clone(), source.clone()))
            .collect();
        let prefix = crate::pending::Prefix {
            last_seq: 0,
            changes,
            sources,
        };
        let mut checkpoint = lock(&task.checkpoint).clone();
        let position = self
            .write_changelog(task, &prefix, &checkpoint.offsets, Some(id))
            .await?;
        checkpoint.changelog_position = position;
        let writing = task.clone();
        let written = checkpoint.clone();
        tokio::task::spawn_blocking(move || writing.store.commit(&BTreeMap::new(), &written))
            .await
            .map_err(|e| ProcessError::Transient(format!("state commit task: {e}")))?
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        *lock(&task.checkpoint) = checkpoint;
        counter!(names::RESEEDED_ENTRIES, "store" => self.store.clone()).increment(count);
        tracing::warn!(store = %self.store, partition = task.number, entries = count, position, "Wrote the local state back to its changelog");
        Ok(count)
    }

    /// Writes `changes` and then the checkpoint to the changelog; returns the changelog
    /// position after the checkpoint.
    async fn write_changelog(
        &self,
        task: &Task,
        prefix: &crate::pending::Prefix,
        offsets: &BTreeMap<String, i64>,
        reseed: Option<i64>,
    ) -> Result<i64, ProcessError> {
        let context = self.context()?;
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            counter!(names::CHANGELOG_ERRORS, "store" => self.store.clone()).increment(1);
            ProcessError::Transient(format!("changelog {what}: {e}"))
        };
        let mut deliveries = Vec::with_capacity(prefix.changes.len());
        crash_point(self.crash.as_ref(), "before_changelog");
        task.pass_freeze(&context.freeze).await?;
        for (key, value) in &prefix.changes {
            task.pass_freeze(&context.freeze).await?;
            let source = prefix.sources.get(key).map_or("", String::as_str);
            let mut record = FutureRecord::<[u8], [u8]>::to(&context.changelog)
                .partition(task.number)
                .key(key.as_slice())
                .headers(changelog::entry_headers(source));
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            deliveries.push(
                send(&context.producer, &context.freeze, record)
                    .await
                    .map_err(|e| transient("write", &e))?,
            );
        }
        for delivery in futures_util::future::join_all(deliveries).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(transient("write", &e)),
                Err(e) => return Err(transient("write", &e)),
            }
        }
        counter!(names::CHANGELOG_RECORDS, "store" => self.store.clone())
            .increment(prefix.changes.len() as u64);
        // The checkpoint goes only after the entries it vouches for are acknowledged: a
        // restore can never meet a checkpoint whose entries are missing.
        let payload = serde_json::to_vec(&CheckpointRecord {
            offsets: offsets.clone(),
            reseed,
        })
        .map_err(|e| ProcessError::Permanent(e.to_string()))?;
        crash_point(self.crash.as_ref(), "before_checkpoint");
        // A fence raised while the entries were in flight stops the checkpoint: without it
        // a restore drops them. A freeze while they were in flight holds it until the
        // runtime knows whether the partition is still ours.
        task.pass_freeze(&context.freeze).await?;
        // A re-seed's checkpoint has a key of its own (compaction keeps it).
        let key = reseed.map_or_else(|| CHECKPOINT_KEY.to_vec(), changelog::reseed_checkpoint_key);
        let record = FutureRecord::<[u8], [u8]>::to(&context.changelog)
            .partition(task.number)
            .key(key.as_slice())
            .payload(payload.as_slice())
            .headers(changelog::checkpoint_headers());
        let delivery = send(&context.producer, &context.freeze, record)
            .await
            .map_err(|e| transient("checkpoint", &e))?;
        match delivery.await {
            Ok(Ok(delivered)) => Ok(delivered.offset + 1),
            Ok(Err((e, _))) => Err(transient("checkpoint", &e)),
            Err(e) => Err(transient("checkpoint", &e)),
        }
    }
}

/// Hands `record` to the producer, waiting while its queue is full. A freeze noticed
/// meanwhile gives up with `QueueFull` (the batch is retried after the hold): the purge that
/// follows a freeze empties the queue, and this record must not slip in during the hold.
async fn send(
    producer: &FutureProducer,
    freeze: &tributary_runtime::FreezeGuard,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<
    tributary_runtime::rdkafka::producer::DeliveryFuture,
    tributary_runtime::rdkafka::error::KafkaError,
> {
    use tributary_runtime::rdkafka::error::{KafkaError, RDKafkaErrorCode};
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(2)).await;
                if freeze.is_held() {
                    return Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                }
            }
            Err((e, _)) => return Err(e),
        }
    }
}

impl<S: StatefulProcessor> Processor for Stateful<S> {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        let task = self.task(message.partition)?;
        let mut pending = lock(&task.pending);
        let mut state = State::new(&task.store, &pending);
        let outputs = self.inner.process(&message, &mut state)?;
        let changes = state.into_changes();
        pending.apply(&message.topic, message.partition, message.offset, changes);
        Ok(outputs)
    }

    fn batching(&self) -> Option<Batching> {
        Some(self.inner.batching())
    }

    async fn flush(&self, partitions: &[PartitionId]) -> Vec<Output> {
        // A task's partitions share one number (co-partitioned inputs).
        let Some(number) = partitions.first().map(|p| p.partition) else {
            return Vec::new();
        };
        // Not open (restoring, or revoked meanwhile): nothing to flush yet.
        let Ok(task) = self.task(number) else {
            return Vec::new();
        };
        // Handed over: another instance may have published a final value since.
        if task.check_fence().is_err() {
            return Vec::new();
        }
        let first = !task.flushed.swap(true, std::sync::atomic::Ordering::AcqRel);
        let pending = lock(&task.pending);
        let state = State::new(&task.store, &pending);
        self.inner.flush(number, &state, first)
    }

    fn flush_every(&self) -> Option<Duration> {
        self.inner.flush_every()
    }

    fn co_partitioned(&self) -> bool {
        true
    }

    async fn on_start(&self, context: &ServiceContext) -> Result<(), ProcessError> {
        if self.context.get().is_some() {
            return Ok(());
        }
        let changelog = format!("{}.{}.changelog", context.group, self.store);
        let admin = context
            .config
            .admin_config(&context.service)
            .map_err(|e| ProcessError::Permanent(e.to_string()))?;
        // The inputs are joined by partition number, and the changelog has a partition per
        // task: every input must have the same partition count.
        let counts = topics::partition_counts(&admin)
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        let mut widths = BTreeMap::new();
        for input in &context.inputs {
            let Some(count) = counts.get(input) else {
                return Err(ProcessError::Transient(format!(
                    "input topic {input} does not exist yet"
                )));
            };
            widths.insert(input.clone(), *count);
        }
        let partitions = widths.values().copied().max().unwrap_or(1);
        if widths.values().any(|w| *w != partitions) {
            return Err(ProcessError::Permanent(format!(
                "the inputs of a stateful service must be co-partitioned (equal partition counts): {widths:?}"
            )));
        }
        let spec = TopicSpec::new(&changelog, partitions)
            .with_config("cleanup.policy", "compact")
            // A value superseded by a change that never committed must survive until the
            // batch is processed again: compaction waits a day.
            .with_config("min.compaction.lag.ms", "86400000")
            // Deletions stay a week: a store older than six days is restored afresh
            // rather than resumed (see `discard_if_stale`).
            .with_config("delete.retention.ms", &TOMBSTONE_RETENTION_MS.to_string());
        let report = topics::apply(&admin, &[spec], -1, false)
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?;
        // How long the changelog really keeps tombstones: what this service set when it
        // created it, what the broker reports, or Kafka's default when it reports nothing.
        let retention = if report.created.contains(&changelog) {
            TOMBSTONE_RETENTION_MS
        } else {
            report
                .differences
                .iter()
                .find(|d| d.setting == "delete.retention.ms")
                .map_or_else(
                    || {
                        if report.unknown_config.contains(&changelog) {
                            DEFAULT_TOMBSTONE_RETENTION_MS
                        } else {
                            TOMBSTONE_RETENTION_MS
                        }
                    },
                    |d| d.actual.parse().unwrap_or(DEFAULT_TOMBSTONE_RETENTION_MS),
                )
        };
        let stale_after =
            Duration::from_millis(retention.saturating_sub(STALE_MARGIN_MS).max(0) as u64);
        if let Some(existing) = counts.get(&changelog) {
            if *existing != partitions {
                return Err(ProcessError::Permanent(format!(
                    "changelog {changelog} has {existing} partitions, the inputs {partitions}: state would not follow its partitions"
                )));
            }
        }
        let dir = context
            .config
            .data_dir
            .join(&context.group)
            .join(&self.store);
        tracing::info!(store = %self.store, changelog = %changelog, dir = %dir.display(), "State store ready");
        // librdkafka refuses to assign partitions to a consumer without a group id; the
        // restore consumer never joins the group or commits, it only needs one.
        let mut client = admin;
        client.set("group.id", format!("{changelog}.restore"));
        let _ = self.context.set(Context {
            changelog,
            dir,
            client,
            producer: context.producer.clone(),
            health: context.health.clone(),
            stale_after,
            cache_bytes: usize::try_from(context.config.state_cache_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            freeze: context.freeze.clone(),
        });
        Ok(())
    }

    async fn on_assigned(&self, partition: &PartitionId) -> Result<StartFrom, ProcessError> {
        let slot = {
            let mut tasks = lock(&self.tasks);
            let slot = tasks.entry(partition.partition).or_default();
            // A fenced slot is never reused: the next ownership gets a fresh slot with a
            // fresh fence. `on_revoked` removes a slot, and so does the open's guard when
            // the ownership went before the task opened, but only when nobody else waits on
            // the slot: with co-partitioned inputs, the hooks of the other inputs may
            // still hold it when the guard runs, and the fenced slot stays behind. (A
            // chaos run found it: the next ownership's task opened fenced and refused
            // every commit, "handed over".) Only a revocation or a lost assignment
            // fences; the runtime starts no assignment before the revocation's hooks have
            // ended, and a hook of an ownership already fenced does not call this, so a
            // fenced slot here is always a past ownership's.
            if slot.fenced.load(std::sync::atomic::Ordering::Acquire) {
                *slot = Arc::default();
            }
            slot.clone()
        };
        let task = slot
            .task
            .get_or_try_init(|| self.open(partition.partition, &slot))
            .await?
            .clone();
        lock(&slot.members).insert(partition.clone());
        let offset = lock(&task.checkpoint)
            .offsets
            .get(&key_of(partition))
            .copied();
        Ok(match offset {
            Some(offset) => StartFrom::Offset(offset),
            // Nothing of this partition was ever committed to the state: the group's
            // committed offset (or the earliest) is where the state starts.
            None => StartFrom::Committed,
        })
    }

    fn fence(&self, partition: &PartitionId) {
        // On the slot, so that it also stops a task still opening (a restore or re-seed).
        if let Some(slot) = lock(&self.tasks).get(&partition.partition) {
            slot.fenced
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    async fn on_revoked(&self, partition: &PartitionId) {
        let mut tasks = lock(&self.tasks);
        let Some(slot) = tasks.get(&partition.partition).cloned() else {
            return;
        };
        let empty = {
            let mut members = lock(&slot.members);
            members.remove(partition);
            members.is_empty()
        };
        if empty {
            tasks.remove(&partition.partition);
            drop(tasks);
            if let Some(task) = slot.task.get() {
                let mut pending = lock(&task.pending);
                if pending.len() > 0 {
                    // Processed but not committed (the revocation ran out of time): the next
                    // owner processes these messages again from the committed state.
                    tracing::warn!(store = %self.store, partition = task.number, messages = pending.len(), "Dropping uncommitted state changes");
                    pending.clear();
                }
            }
            self.set_status(partition.partition, None);
        }
    }

    async fn commit_batch(&self, offsets: &[(PartitionId, i64)]) -> Result<(), ProcessError> {
        let Some((first, _)) = offsets.first() else {
            return Ok(());
        };
        let task = self.task(first.partition)?;
        let started = Instant::now();
        let next: BTreeMap<String, i64> = offsets
            .iter()
            .map(|(id, next)| (key_of(id), *next))
            .collect();
        let prefix = lock(&task.pending).prefix(&next);
        let mut checkpoint = lock(&task.checkpoint).clone();
        for (partition, next) in &next {
            let offset = checkpoint.offsets.entry(partition.clone()).or_insert(*next);
            *offset = (*offset).max(*next);
        }
        let position = self
            .write_changelog(&task, &prefix, &checkpoint.offsets, None)
            .await?;
        checkpoint.changelog_position = position;
        crash_point(self.crash.as_ref(), "before_state_commit");
        let store_task = task.clone();
        let changes = prefix.changes;
        let written = checkpoint.clone();
        task.check_fence()?;
        let entries = tokio::task::spawn_blocking(move || {
            store_task.store.commit(&changes, &written)?;
            store_task.store.len()
        })
        .await
        .map_err(|e| ProcessError::Transient(format!("state commit task: {e}")))?
        .map_err(|e| ProcessError::Transient(e.to_string()))?;
        crash_point(self.crash.as_ref(), "after_state_commit");
        lock(&task.pending).drain(prefix.last_seq);
        let position = checkpoint.changelog_position;
        *lock(&task.checkpoint) = checkpoint;
        histogram!(names::COMMIT_SECONDS, "store" => self.store.clone())
            .record(started.elapsed().as_secs_f64());
        gauge!(names::ENTRIES, "store" => self.store.clone(), "partition" => task.number.to_string())
            .set(entries as f64);
        self.set_status(
            task.number,
            Some(json!({
                "partition": task.number,
                "state": "ready",
                "entries": entries,
                "changelog_position": position,
            })),
        );
        Ok(())
    }
}
