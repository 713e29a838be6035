//! `Idempotency-Key`: a retried request gets the first answer and publishes nothing twice.
//!
//! The first request with a key runs; concurrent ones with the same key wait for it; later
//! ones within the window replay its answer. Only successes are answered again: a failed
//! request (503, say), or one whose handler was dropped (the client went away), may be
//! retried for real, but its time is kept, so the retry derives the same ids (a 503 after an
//! acknowledgement timeout may still have been published: the copies then share their ids).
//! Reusing a key for a different request is an error.
//!
//! An answer is remembered as a fingerprint of the request, the number of events it
//! accepted and the time it was accepted at, not as its ids: an id is that time followed by
//! bits derived from the client, the key and the event's index (see `events::Ids`), so the
//! replay re-derives them. An entry therefore holds its key (at most [`MAX_KEY_BYTES`] plus
//! the client id and route), 32 bytes of fingerprint, a count and a time: under
//! [`ENTRY_BYTES`] each, so the store is bounded by `capacity × ENTRY_BYTES`.
//!
//! With a journal (`DATA_DIR/idempotency.journal`, see [`Store::with_journal`]) the store
//! survives a restart of the process: a request's time is written before it is published
//! and its answer when it completes, so a retry after a crash (ingest killed between
//! publishing and answering) derives the same ids, and one after a completed request gets
//! the first answer. The journal is appended to without fsync: it survives the process
//! (a crash, an OOM kill, a container restart on the same volume), not the machine.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// (client, key)
pub type Key = (String, String);

/// The longest `Idempotency-Key` accepted.
pub const MAX_KEY_BYTES: usize = 255;

/// An upper bound of one entry's memory: its key twice (map and expiry queue: client id up
/// to 128 bytes, route label and key up to 255), fingerprint, count, instants and the
/// maps' overhead.
pub const ENTRY_BYTES: usize = 1024;

enum Entry {
    Running {
        fingerprint: [u8; 32],
        accepted_at_ms: u64,
        done: Arc<Notify>,
    },
    /// Failed or dropped: nothing to replay, but a retry of the same request reuses its time.
    Abandoned {
        fingerprint: [u8; 32],
        accepted_at_ms: u64,
        completed: Instant,
    },
    Done {
        fingerprint: [u8; 32],
        accepted: usize,
        accepted_at_ms: u64,
        completed: Instant,
    },
}

/// Remembered entries, and the order they were completed in (for expiry and capacity).
type Entries = (HashMap<Key, Entry>, VecDeque<(Instant, Key)>);

/// What to do with a keyed request.
#[derive(Debug)]
pub enum Begin {
    /// Run it; finish with [`Running::complete`]. Dropping the guard without completing
    /// forgets the request and wakes the retries waiting for it.
    Proceed(Running),
    /// The first request accepted this many events at this time (its ids are derived
    /// again from both).
    Replay {
        /// Events accepted.
        accepted: usize,
        /// When they were accepted (Unix milliseconds): the time part of their ids.
        accepted_at_ms: u64,
    },
    /// The key belongs to a different request.
    Conflict,
}

/// Remembered answers, bounded by a window and a capacity.
pub struct Store {
    entries: Mutex<Entries>,
    window: Duration,
    capacity: usize,
    /// Locked only while `entries` is, so its lines are in the order of the changes.
    journal: Option<Mutex<Journal>>,
}

/// A journal line.
#[derive(Debug, Clone, Copy)]
struct Saved {
    /// The request's time (the time part of its ids).
    accepted_at_ms: u64,
    /// When the line was written: begun, abandoned or completed.
    written_ms: u64,
    fingerprint: [u8; 32],
    /// The answer's count, once completed.
    accepted: Option<usize>,
}

/// The append-only file a store is restored from.
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: Option<File>,
    lines: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("window", &self.window)
            .finish()
    }
}

/// A request told to proceed. Completing it remembers its answer; dropping it (a failed
/// request, or a handler dropped mid-flight) leaves only its time, for a retry's ids.
#[derive(Debug)]
pub struct Running {
    store: Arc<Store>,
    key: Option<Key>,
    accepted_at_ms: u64,
}

impl Running {
    /// The request's time (Unix milliseconds): the first attempt's, for a retry of a
    /// request that failed or was dropped. The time part of its ids and its envelopes' time.
    pub fn accepted_at_ms(&self) -> u64 {
        self.accepted_at_ms
    }

    /// Remembers that the request accepted `accepted` events.
    pub fn complete(mut self, accepted: usize) {
        if let Some(key) = self.key.take() {
            self.store
                .complete_at(&key, accepted, self.accepted_at_ms, Instant::now());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.store.abandon(&key);
        }
    }
}

impl Store {
    /// A store remembering answers for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Arc<Store> {
        Arc::new(Store {
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
            window,
            capacity: capacity.max(1),
            journal: None,
        })
    }

    /// A store that keeps a journal at `path`, restored from it first: every request accepted
    /// within the window before a restart keeps its time (and so its ids), every completed
    /// one its answer. If the journal cannot be read or written the store works from memory
    /// alone, and says so.
    pub fn with_journal(window: Duration, capacity: usize, path: &Path) -> Arc<Store> {
        let mut store = Store {
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
            window,
            capacity: capacity.max(1),
            journal: None,
        };
        match store.restore(path) {
            Ok(restored) => {
                tracing::info!(
                    path = %path.display(),
                    restored,
                    "idempotency journal restored"
                );
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "idempotency journal unusable: keys are remembered in memory only, so a \
                 retry after a restart publishes again under new ids"
            ),
        }
        Arc::new(store)
    }

    /// Loads the journal's entries still within the window, rewrites it with just those,
    /// and keeps it open for appending.
    fn restore(&mut self, path: &Path) -> std::io::Result<usize> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let now_wall = wall_ms();
        let now = Instant::now();
        // Per key its last line, and where that line is: lines written in the same
        // millisecond keep the file's order.
        let mut loaded: HashMap<Key, (Saved, usize)> = HashMap::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                for (n, text) in bytes.split(|b| *b == b'\n').enumerate() {
                    // A torn last line (the process died mid-write) or a damaged one is
                    // skipped; the rest still restores.
                    if let Some((key, saved)) = std::str::from_utf8(text).ok().and_then(parse_line)
                    {
                        loaded.insert(key, (saved, n));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // An entry's window runs from its line's time: when it completed, or when it was
        // begun or abandoned, as it does in memory.
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let mut kept: Vec<((u64, usize), Key, Saved)> = loaded
            .into_iter()
            .filter(|(_, (saved, _))| now_wall.saturating_sub(saved.written_ms) < window_ms)
            .map(|(key, (saved, n))| ((saved.written_ms, n), key, saved))
            .collect();
        kept.sort_by_key(|(order, ..)| *order);
        let restored = kept.len();
        {
            let mut guard = self.lock();
            let (map, order) = &mut *guard;
            for ((written, _), key, saved) in kept {
                let age = Duration::from_millis(now_wall.saturating_sub(written));
                let completed = now.checked_sub(age).unwrap_or(now);
                let (fingerprint, at) = (saved.fingerprint, saved.accepted_at_ms);
                let entry = match saved.accepted {
                    Some(accepted) => Entry::Done {
                        fingerprint,
                        accepted,
                        accepted_at_ms: at,
                        completed,
                    },
                    // Begun and never answered: it may have been published, so a retry
                    // must derive the same ids.
                    None => Entry::Abandoned {
                        fingerprint,
                        accepted_at_ms: at,
                        completed,
                    },
                };
                map.insert(key.clone(), entry);
                order.push_back((completed, key));
            }
            self.evict(map, order, now);
        }
        let mut journal = Journal {
            path: path.to_owned(),
            file: None,
            lines: 0,
        };
        journal.rewrite(&self.lock().0)?;
        self.journal = Some(Mutex::new(journal));
        Ok(restored)
    }

    /// Appends a line; past twice the capacity in lines, rewrites the journal from `map`.
    /// A write error turns the journal off (with a warning): requests go on.
    fn journal(&self, map: &HashMap<Key, Entry>, line: String) {
        let Some(journal) = &self.journal else { return };
        let mut journal = journal.lock().unwrap_or_else(|e| e.into_inner());
        let Some(file) = journal.file.as_mut() else {
            return;
        };
        let mut result = file.write_all(line.as_bytes());
        if result.is_ok() {
            journal.lines += 1;
            if journal.lines > 2 * self.capacity + 1024 {
                result = journal.rewrite(map);
            }
        }
        if let Err(e) = result {
            tracing::warn!(
                path = %journal.path.display(),
                error = %e,
                "idempotency journal write failed: keys are remembered in memory only from now on"
            );
            journal.file = None;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides what to do with a request carrying `key` whose content hashes to
    /// `fingerprint`, arriving at `now_ms` (Unix milliseconds).
    pub async fn begin(self: &Arc<Self>, key: &Key, fingerprint: [u8; 32], now_ms: u64) -> Begin {
        loop {
            let done = {
                let mut guard = self.lock();
                let (map, _) = &mut *guard;
                match map.get(key) {
                    Some(Entry::Done {
                        fingerprint: f,
                        accepted,
                        accepted_at_ms,
                        completed,
                    }) if *completed + self.window > Instant::now() => {
                        return if *f == fingerprint {
                            Begin::Replay {
                                accepted: *accepted,
                                accepted_at_ms: *accepted_at_ms,
                            }
                        } else {
                            Begin::Conflict
                        };
                    }
                    Some(Entry::Running {
                        fingerprint: f,
                        done,
                        ..
                    }) => {
                        if *f != fingerprint {
                            return Begin::Conflict;
                        }
                        done.clone()
                    }
                    other => {
                        // A retry of the same request that failed within the window keeps
                        // its first time (and so its ids).
                        let accepted_at_ms = match other {
                            Some(Entry::Abandoned {
                                fingerprint: f,
                                accepted_at_ms,
                                completed,
                            }) if *f == fingerprint
                                && *completed + self.window > Instant::now() =>
                            {
                                *accepted_at_ms
                            }
                            _ => now_ms,
                        };
                        map.insert(
                            key.clone(),
                            Entry::Running {
                                fingerprint,
                                accepted_at_ms,
                                done: Arc::new(Notify::new()),
                            },
                        );
                        // Written before anything is published: after a crash, a retry
                        // finds the time its copies were published under.
                        self.journal(
                            map,
                            line(key, accepted_at_ms, wall_ms(), &fingerprint, None),
                        );
                        return Begin::Proceed(Running {
                            store: self.clone(),
                            key: Some(key.clone()),
                            accepted_at_ms,
                        });
                    }
                }
            };
            // Wait for the first request to finish, then look again. The notification is
            // registered before the re-check, and the re-check asks for that same request:
            // if it ended in between (and another took the key), look again at once rather
            // than wait on a notifier that will not fire again.
            let notified = done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let same = matches!(
                self.lock().0.get(key),
                Some(Entry::Running { done: d, .. }) if Arc::ptr_eq(d, &done)
            );
            if same {
                notified.await;
            }
        }
    }

    fn complete_at(&self, key: &Key, accepted: usize, accepted_at_ms: u64, now: Instant) {
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        let waiters = match map.get(key) {
            Some(Entry::Running {
                fingerprint, done, ..
            }) => Some((*fingerprint, done.clone())),
            _ => None,
        };
        if let Some((fingerprint, done)) = waiters {
            map.insert(
                key.clone(),
                Entry::Done {
                    fingerprint,
                    accepted,
                    accepted_at_ms,
                    completed: now,
                },
            );
            self.journal(
                map,
                line(key, accepted_at_ms, wall_ms(), &fingerprint, Some(accepted)),
            );
            order.push_back((now, key.clone()));
            done.notify_waiters();
        }
        self.evict(map, order, now);
    }

    /// Forgets the oldest entries beyond the capacity, and expired ones at the front. A
    /// queue entry forgets its key only if the key still holds that completion: a key
    /// completed (or abandoned) again since is queued again, for its new completion. The
    /// queue holds every remembered entry (and stale entries of keys completed again):
    /// bounding it bounds them, whatever runs meanwhile.
    fn evict(
        &self,
        map: &mut HashMap<Key, Entry>,
        order: &mut VecDeque<(Instant, Key)>,
        now: Instant,
    ) {
        while order.len() > self.capacity
            || order
                .front()
                .is_some_and(|(at, _)| *at + self.window <= now)
        {
            let Some((at, old)) = order.pop_front() else {
                break;
            };
            if matches!(
                map.get(&old),
                Some(Entry::Done { completed, .. } | Entry::Abandoned { completed, .. })
                    if *completed == at
            ) {
                map.remove(&old);
            }
        }
    }

    /// Forgets a request that failed, keeping its time for a retry, and wakes any retry
    /// waiting for it.
    fn abandon(&self, key: &Key) {
        let now = Instant::now();
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        // Only its own guard abandons a running request.
        if let Some(Entry::Running {
            fingerprint,
            accepted_at_ms,
            done,
        }) = map.remove(key)
        {
            map.insert(
                key.clone(),
                Entry::Abandoned {
                    fingerprint,
                    accepted_at_ms,
                    completed: now,
                },
            );
            order.push_back((now, key.clone()));
            // Its window now runs from here, after a restart too.
            self.journal(
                map,
                line(key, accepted_at_ms, wall_ms(), &fingerprint, None),
            );
            done.notify_waiters();
            self.evict(map, order, now);
        }
    }

    /// Entries held (running and remembered).
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Journal {
    /// Writes every entry of `map` to a new file and renames it over the journal.
    fn rewrite(&mut self, map: &HashMap<Key, Entry>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        let mut lines = 0;
        let (now, now_wall) = (Instant::now(), wall_ms());
        let written = |completed: &Instant| {
            let age = u64::try_from(now.saturating_duration_since(*completed).as_millis())
                .unwrap_or(u64::MAX);
            now_wall.saturating_sub(age)
        };
        for (key, entry) in map {
            let text = match entry {
                Entry::Running {
                    fingerprint,
                    accepted_at_ms,
                    ..
                } => line(key, *accepted_at_ms, now_wall, fingerprint, None),
                Entry::Abandoned {
                    fingerprint,
                    accepted_at_ms,
                    completed,
                } => line(key, *accepted_at_ms, written(completed), fingerprint, None),
                Entry::Done {
                    fingerprint,
                    accepted,
                    accepted_at_ms,
                    completed,
                } => line(
                    key,
                    *accepted_at_ms,
                    written(completed),
                    fingerprint,
                    Some(*accepted),
                ),
            };
            out.write_all(text.as_bytes())?;
            lines += 1;
        }
        // No fsync, as for the appends: the journal survives the process, not the machine;
        // the rename replaces it whole.
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, &self.path)?;
        self.file = Some(std::fs::OpenOptions::new().append(true).open(&self.path)?);
        self.lines = lines;
        Ok(())
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `<time> <written> <accepted or -> <client hex> <key hex> <fingerprint hex>\n`: hex,
/// because keys may hold spaces.
fn line(
    key: &Key,
    accepted_at_ms: u64,
    written_ms: u64,
    fingerprint: &[u8; 32],
    accepted: Option<usize>,
) -> String {
    format!(
        "{accepted_at_ms} {written_ms} {} {} {} {}\n",
        accepted.map_or("-".to_owned(), |a| a.to_string()),
        hex::encode(key.0.as_bytes()),
        hex::encode(key.1.as_bytes()),
        hex::encode(fingerprint)
    )
}

fn parse_line(text: &str) -> Option<(Key, Saved)> {
    let mut parts = text.split(' ');
    let accepted_at_ms = parts.next()?.parse().ok()?;
    let written_ms = parts.next()?.parse().ok()?;
    let accepted = match parts.next()? {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    let client = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
    let key = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
    let fingerprint: [u8; 32] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        (client, key),
        Saved {
            accepted_at_ms,
            written_ms,
            fingerprint,
            accepted,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Key {
        ("client".into(), k.into())
    }

    fn journal_path(name: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::env::temp_dir()
            .join(format!("ingest-journal-{}-{name}-{n}", std::process::id()))
            .join("idempotency.journal")
    }

    async fn begin_at(store: &Arc<Store>, k: &str, fp: u8, at: u64) -> Begin {
        store.begin(&key(k), [fp; 32], at).await
    }

    #[tokio::test]
    async fn a_restarted_store_keeps_begun_times_and_completed_answers() {
        let path = journal_path("restart");
        let window = Duration::from_secs(600);
        let t0 = wall_ms();
        {
            let store = Store::with_journal(window, 100, &path);
            // "crashed": begun (maybe published), never answered, the guard leaked as a
            // killed process would leave it.
            match begin_at(&store, "crashed", 1, t0).await {
                Begin::Proceed(running) => std::mem::forget(running),
                other => panic!("{other:?}"),
            }
            match begin_at(&store, "answered", 2, t0 + 1).await {
                Begin::Proceed(running) => running.complete(3),
                other => panic!("{other:?}"),
            }
        }
        let store = Store::with_journal(window, 100, &path);
        // The retry of the crashed request runs again under its first time: same ids.
        match begin_at(&store, "crashed", 1, t0 + 5_000).await {
            Begin::Proceed(running) => assert_eq!(running.accepted_at_ms(), t0),
            other => panic!("{other:?}"),
        }
        // The answered one is replayed, and a different request under its key conflicts.
        assert!(matches!(
            begin_at(&store, "answered", 2, t0 + 5_000).await,
            Begin::Replay { accepted: 3, accepted_at_ms } if accepted_at_ms == t0 + 1
        ));
        assert!(matches!(
            begin_at(&store, "answered", 9, t0 + 5_000).await,
            Begin::Conflict
        ));
    }

    #[tokio::test]
    async fn expired_entries_and_a_torn_last_line_are_dropped_at_restore() {
        let path = journal_path("expired");
        let window = Duration::from_secs(60);
        let now = wall_ms();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let old = line(&key("old"), now - 120_000, now - 120_000, &[1; 32], Some(1));
        let fresh = line(&key("fresh"), now - 1_000, now - 1_000, &[1; 32], Some(2));
        // Torn by a crash mid-write: one hex digit and the newline short.
        let torn = line(&key("torn"), now, now, &[1; 32], Some(1));
        let torn = &torn[..torn.len() - 2];
        let mut bytes = format!("{old}{fresh}").into_bytes();
        // A damaged line (not UTF-8) is skipped, not the end of the restore.
        bytes.extend_from_slice(b"\xff\xfe damaged\n");
        bytes.extend_from_slice(torn.as_bytes());
        std::fs::write(&path, bytes).unwrap();
        let store = Store::with_journal(window, 100, &path);
        assert!(matches!(
            begin_at(&store, "fresh", 1, now).await,
            Begin::Replay { accepted: 2, .. }
        ));
        match begin_at(&store, "old", 1, now).await {
            Begin::Proceed(running) => assert_eq!(running.accepted_at_ms(), now),
            other => panic!("{other:?}"),
        }
        // Rewritten at restore: the fresh entry, then the lines of the new "old" request
        // (begun, then abandoned as its guard dropped); nothing expired, torn or damaged.
        let text = std::fs::read_to_string(&path).unwrap();
        let keys: Vec<&str> = text.lines().map(|l| l.split(' ').nth(4).unwrap()).collect();
        assert_eq!(
            keys,
            [hex::encode("fresh"), hex::encode("old"), hex::encode("old")],
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_request_completed_long_after_it_began_is_remembered_from_its_completion() {
        // Accepted two hours ago (a 503, retried until it went through just now): a one-hour
        // window counts from the completion, in memory and after a restart alike.
        let path = journal_path("late-completion");
        let now = wall_ms();
        {
            let store = Store::with_journal(Duration::from_secs(3600), 100, &path);
            match begin_at(&store, "slow", 1, now - 7_200_000).await {
                Begin::Proceed(running) => running.complete(4),
                other => panic!("{other:?}"),
            }
        }
        let store = Store::with_journal(Duration::from_secs(3600), 100, &path);
        assert!(matches!(
            begin_at(&store, "slow", 1, now).await,
            Begin::Replay { accepted: 4, accepted_at_ms } if accepted_at_ms == now - 7_200_000
        ));
    }

    #[tokio::test]
    async fn the_journal_is_rewritten_when_it_grows_and_still_restores() {
        let path = journal_path("rotate");
        let window = Duration::from_secs(600);
        let now = wall_ms();
        let capacity = 4;
        {
            let store = Store::with_journal(window, capacity, &path);
            for i in 0..3000u64 {
                match begin_at(&store, &format!("k{i}"), 1, now + i).await {
                    Begin::Proceed(running) => running.complete(1),
                    other => panic!("{other:?}"),
                }
            }
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 2 * capacity + 1024 + 1, "{lines} lines");
        let store = Store::with_journal(window, capacity, &path);
        assert!(matches!(
            begin_at(&store, "k2999", 1, now).await,
            Begin::Replay { accepted_at_ms, .. } if accepted_at_ms == now + 2999
        ));
    }

    async fn proceed(store: &Arc<Store>, k: &str) -> Running {
        match store.begin(&key(k), [1; 32], 7).await {
            Begin::Proceed(running) => running,
            other => panic!("{k}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_completed_request_is_replayed_and_a_different_one_conflicts() {
        let store = Store::new(Duration::from_secs(60), 10);
        proceed(&store, "a").await.complete(1);
        assert!(matches!(
            store.begin(&key("a"), [1; 32], 7).await,
            Begin::Replay {
                accepted: 1,
                accepted_at_ms: 7
            }
        ));
        assert!(matches!(
            store.begin(&key("a"), [2; 32], 7).await,
            Begin::Conflict
        ));
    }

    #[tokio::test]
    async fn a_failed_or_dropped_request_is_retried_for_real_with_its_first_time() {
        let store = Store::new(Duration::from_secs(60), 10);
        drop(proceed(&store, "a").await); // at 7
        // The retry comes later, but derives the same ids: it keeps the first time.
        let again = tokio::time::timeout(
            Duration::from_secs(5),
            store.begin(&key("a"), [1; 32], 9_000),
        )
        .await
        .expect("not left running");
        let Begin::Proceed(again) = again else {
            panic!("{again:?}")
        };
        assert_eq!(again.accepted_at_ms(), 7);
        drop(again);
        // Other content under the key is another request: its own time.
        let Begin::Proceed(other) = store.begin(&key("a"), [2; 32], 9_000).await else {
            panic!()
        };
        assert_eq!(other.accepted_at_ms(), 9_000);
        other.complete(1);
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn a_remembered_failure_expires_with_the_window() {
        let store = Store::new(Duration::from_secs(60), 10);
        // Abandoned two minutes ago.
        store.lock().0.insert(
            key("a"),
            Entry::Abandoned {
                fingerprint: [1; 32],
                accepted_at_ms: 7,
                completed: Instant::now() - Duration::from_secs(120),
            },
        );
        let Begin::Proceed(late) = store.begin(&key("a"), [1; 32], 9_000).await else {
            panic!()
        };
        assert_eq!(
            late.accepted_at_ms(),
            9_000,
            "past the window: a new request"
        );
    }

    #[tokio::test]
    async fn a_retry_waiting_on_a_handler_that_is_dropped_mid_flight_proceeds() {
        let store = Store::new(Duration::from_secs(60), 10);
        // The first handler holds the key, then is dropped (its client went away).
        let first = {
            let store = store.clone();
            tokio::spawn(async move {
                let _running = proceed(&store, "a").await;
                std::future::pending::<()>().await;
            })
        };
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.begin(&key("a"), [1; 32], 7).await })
        };
        tokio::task::yield_now().await;
        first.abort();
        let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the retry was woken")
            .unwrap();
        assert!(matches!(answer, Begin::Proceed(_)));
    }

    #[tokio::test]
    async fn a_concurrent_retry_waits_for_the_first_answer() {
        let store = Store::new(Duration::from_secs(60), 10);
        let running = proceed(&store, "a").await;
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.begin(&key("a"), [1; 32], 7).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        running.complete(2);
        assert!(matches!(
            waiter.await.unwrap(),
            Begin::Replay {
                accepted: 2,
                accepted_at_ms: 7
            }
        ));
    }

    #[tokio::test]
    async fn answers_expire_after_the_window_and_beyond_capacity() {
        let small = Store::new(Duration::from_secs(60), 2);
        for k in ["x", "y", "z"] {
            proceed(&small, k).await.complete(1);
        }
        drop(proceed(&small, "x").await); // oldest forgotten
        assert_eq!(small.len(), 2);
    }

    #[tokio::test]
    async fn running_requests_do_not_evict_remembered_answers() {
        let store = Store::new(Duration::from_secs(60), 2);
        proceed(&store, "done").await.complete(1);
        let _running: Vec<Running> = proceed_all(&store, &["r1", "r2", "r3"]).await;
        proceed(&store, "also-done").await.complete(1);
        assert!(matches!(
            store.begin(&key("done"), [1; 32], 7).await,
            Begin::Replay {
                accepted: 1,
                accepted_at_ms: 7
            }
        ));
    }

    async fn proceed_all(store: &Arc<Store>, keys: &[&str]) -> Vec<Running> {
        let mut out = Vec::new();
        for k in keys {
            out.push(proceed(store, k).await);
        }
        out
    }

    #[tokio::test]
    async fn a_key_completed_again_is_not_evicted_by_its_first_completion() {
        let window = Duration::from_secs(60);
        let store = Store::new(window, 10);
        let t0 = Instant::now();
        store.lock().0.insert(
            key("a"),
            Entry::Running {
                fingerprint: [1; 32],
                accepted_at_ms: 7,
                done: Arc::new(Notify::new()),
            },
        );
        store.complete_at(&key("a"), 1, 7, t0);
        // Expired, run again and completed again later.
        store.lock().0.insert(
            key("a"),
            Entry::Running {
                fingerprint: [1; 32],
                accepted_at_ms: 7,
                done: Arc::new(Notify::new()),
            },
        );
        let t1 = t0 + window + Duration::from_secs(1);
        store.complete_at(&key("a"), 7, 7, t1);
        // The first completion's expiry comes up: the second must stay.
        store.complete_at(&key("other"), 0, 7, t1 + Duration::from_secs(1));
        assert!(matches!(
            store.lock().0.get(&key("a")),
            Some(Entry::Done { accepted: 7, .. })
        ));
    }
}
