//! `Idempotency-Key`: a retried request gets the first answer and publishes nothing twice.
//!
//! The first request with a key runs; concurrent ones with the same key wait for it; later
//! ones within the window replay its answer. Only successes are remembered: a failed
//! request (503, say) may be retried for real. Reusing a key for a different request is an
//! error. Ids are derived from the key too (see `events::Ids`), so even a retry after a
//! restart, when this memory is gone, republishes the same event ids.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

/// (client, key)
pub type Key = (String, String);

enum Entry {
    Running {
        fingerprint: [u8; 32],
        done: Arc<Notify>,
    },
    Done {
        fingerprint: [u8; 32],
        body: Value,
        expires: Instant,
    },
}

/// Remembered entries, and the order they were completed in (for expiry and capacity).
type Entries = (HashMap<Key, Entry>, VecDeque<(Instant, Key)>);

/// What to do with a keyed request.
#[derive(Debug)]
pub enum Begin {
    /// Run it; finish with [`Store::complete`] or [`Store::abandon`].
    Proceed,
    /// Answer with this remembered body (status 202).
    Replay(Value),
    /// The key belongs to a different request.
    Conflict,
}

/// Remembered answers, bounded by a window and a capacity.
pub struct Store {
    entries: Mutex<Entries>,
    window: Duration,
    capacity: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("window", &self.window)
            .finish()
    }
}

impl Store {
    /// A store remembering answers for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Store {
        Store {
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
            window,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides what to do with a request carrying `key` whose content hashes to `fingerprint`.
    pub async fn begin(&self, key: &Key, fingerprint: [u8; 32]) -> Begin {
        loop {
            let done = {
                let mut guard = self.lock();
                let (map, _) = &mut *guard;
                match map.get(key) {
                    Some(Entry::Done {
                        fingerprint: f,
                        body,
                        expires,
                    }) if *expires > Instant::now() => {
                        return if *f == fingerprint {
                            Begin::Replay(body.clone())
                        } else {
                            Begin::Conflict
                        };
                    }
                    Some(Entry::Running {
                        fingerprint: f,
                        done,
                    }) => {
                        if *f != fingerprint {
                            return Begin::Conflict;
                        }
                        done.clone()
                    }
                    _ => {
                        map.insert(
                            key.clone(),
                            Entry::Running {
                                fingerprint,
                                done: Arc::new(Notify::new()),
                            },
                        );
                        return Begin::Proceed;
                    }
                }
            };
            // Wait for the first request to finish, then look again. The notification is
            // registered before the re-check, so a completion in between is not missed.
            let notified = done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if matches!(self.lock().0.get(key), Some(Entry::Running { .. })) {
                notified.await;
            }
        }
    }

    /// Remembers the successful answer of a request that was told to proceed.
    pub fn complete(&self, key: &Key, body: Value) {
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        let now = Instant::now();
        let waiters = match map.get(key) {
            Some(Entry::Running { fingerprint, done }) => Some((*fingerprint, done.clone())),
            _ => None,
        };
        if let Some((fingerprint, done)) = waiters {
            map.insert(
                key.clone(),
                Entry::Done {
                    fingerprint,
                    body,
                    expires: now + self.window,
                },
            );
            order.push_back((now, key.clone()));
            done.notify_waiters();
        }
        // Forget the oldest answers beyond the capacity, and expired ones at the front.
        while map.len() > self.capacity
            || order
                .front()
                .is_some_and(|(at, _)| *at + self.window <= now)
        {
            let Some((_, old)) = order.pop_front() else {
                break;
            };
            if matches!(map.get(&old), Some(Entry::Done { .. })) {
                map.remove(&old);
            }
        }
    }

    /// Forgets a request that failed, waking any retry waiting for it.
    pub fn abandon(&self, key: &Key) {
        let mut guard = self.lock();
        if let Some(Entry::Running { done, .. }) = guard.0.remove(key) {
            done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> Key {
        ("client".into(), k.into())
    }

    #[tokio::test]
    async fn a_completed_request_is_replayed_and_a_different_one_conflicts() {
        let store = Store::new(Duration::from_secs(60), 10);
        assert!(matches!(
            store.begin(&key("a"), [1; 32]).await,
            Begin::Proceed
        ));
        store.complete(&key("a"), json!({"accepted": 1}));
        assert!(
            matches!(store.begin(&key("a"), [1; 32]).await, Begin::Replay(b) if b["accepted"] == 1)
        );
        assert!(matches!(
            store.begin(&key("a"), [2; 32]).await,
            Begin::Conflict
        ));
    }

    #[tokio::test]
    async fn a_failed_request_can_be_retried_for_real() {
        let store = Store::new(Duration::from_secs(60), 10);
        assert!(matches!(
            store.begin(&key("a"), [1; 32]).await,
            Begin::Proceed
        ));
        store.abandon(&key("a"));
        assert!(matches!(
            store.begin(&key("a"), [1; 32]).await,
            Begin::Proceed
        ));
    }

    #[tokio::test]
    async fn a_concurrent_retry_waits_for_the_first_answer() {
        let store = Arc::new(Store::new(Duration::from_secs(60), 10));
        assert!(matches!(
            store.begin(&key("a"), [1; 32]).await,
            Begin::Proceed
        ));
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.begin(&key("a"), [1; 32]).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        store.complete(&key("a"), json!({"accepted": 2}));
        assert!(matches!(waiter.await.unwrap(), Begin::Replay(b) if b["accepted"] == 2));
    }

    #[tokio::test]
    async fn answers_expire_after_the_window_and_beyond_capacity() {
        let store = Store::new(Duration::from_millis(1), 10);
        assert!(matches!(
            store.begin(&key("a"), [1; 32]).await,
            Begin::Proceed
        ));
        store.complete(&key("a"), json!({}));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            store.begin(&key("a"), [1; 32]).await,
            Begin::Proceed
        ));

        let small = Store::new(Duration::from_secs(60), 2);
        for k in ["x", "y", "z"] {
            assert!(matches!(
                small.begin(&key(k), [1; 32]).await,
                Begin::Proceed
            ));
            small.complete(&key(k), json!({}));
        }
        assert!(
            matches!(small.begin(&key("x"), [1; 32]).await, Begin::Proceed),
            "oldest forgotten"
        );
    }
}
