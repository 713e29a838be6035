//! Notices that this process was frozen (SIGSTOP, `docker pause`, a stalled host) long
//! enough for its group to have given its partitions away, and holds its work until the
//! group has had time to say so.
//!
//! A frozen process learns that it lost its partitions only after it thaws: librdkafka's
//! heartbeat fails (or its own session check fires) and the lost assignment reaches the
//! poll thread. Until then every thread picks up where it stopped, and without a hold a
//! worker would process the messages it had prefetched, and an overdue flush would
//! publish, *after* the new owner's outputs for the same keys: a stale value last on a
//! compacted topic, an interim window after its final one. Kafka fences none of that
//! without transactions, so the runtime fences itself.
//!
//! A watchdog thread beats every [`BEAT`]. A gap of more than half the session timeout
//! between two beats means the group may have expired this member (librdkafka heartbeats
//! every third of it, so the last heartbeat can be that much older than the freeze).
//! Work is then held: workers before they process or flush, senders before they hand a
//! record to the producer or commit a batch, stateful processors before they write their
//! changelog (through [`FreezeGuard`]), the poll thread before an interval commit. The
//! hold lasts one and a half session timeouts and then ends at the poll thread's next
//! poll: librdkafka declares the assignment lost once a session timeout passes without a
//! successful heartbeat, so by then the lost assignment has been handed to that poll and
//! has stopped the partitions, or the group kept them. A thread that finds the beat stale
//! holds too, so the hold covers whichever thread runs first after the thaw.
//!
//! The clock is `CLOCK_MONOTONIC`, which stops while the whole machine is suspended: a
//! suspended host (or a VM whose guest clock is paused with it) is not noticed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the watchdog beats.
pub(crate) const BEAT: Duration = Duration::from_millis(100);

/// How often held work looks again.
const RECHECK: Duration = Duration::from_millis(25);

/// The freeze detector shared by the poll thread, the workers, the senders and (through a
/// [`FreezeGuard`]) the processor.
#[derive(Debug)]
pub(crate) struct Liveness {
    origin: Instant,
    /// Milliseconds since `origin` of the watchdog's last beat.
    beat: AtomicU64,
    /// Work is held until this many milliseconds since `origin`, and after that until the
    /// poll thread releases it (0: not held).
    held_until: AtomicU64,
    /// The watchdog runs: only then is a stale beat a freeze.
    watching: AtomicBool,
    /// A gap longer than this many milliseconds is a freeze.
    threshold_ms: AtomicU64,
    /// How long work is held after a freeze is noticed, at least, in milliseconds.
    hold_ms: AtomicU64,
}

impl Liveness {
    /// A detector for a consumer with this session timeout, heartbeating every third of it.
    pub(crate) fn new(session_timeout: Duration, now: Instant) -> Liveness {
        let live = Liveness {
            origin: now,
            beat: AtomicU64::new(0),
            held_until: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            threshold_ms: AtomicU64::new(0),
            hold_ms: AtomicU64::new(0),
        };
        live.configure(session_timeout, session_timeout / 3);
        live
    }

    /// Sets the consumer's effective session timeout and heartbeat interval (`KAFKA_CONFIG`
    /// may change both). The group may expire a member whose last heartbeat is a session
    /// timeout old, and that heartbeat can precede a freeze by one interval: a freeze
    /// longer than the session minus the interval may have cost the partitions. Half the
    /// session when heartbeats are frequent, never under 500 ms.
    pub(crate) fn configure(&self, session_timeout: Duration, heartbeat: Duration) {
        let threshold = (session_timeout / 2)
            .min(session_timeout.saturating_sub(heartbeat))
            .max(Duration::from_millis(500));
        let hold = session_timeout + session_timeout / 2;
        self.threshold_ms
            .store(whole_millis(threshold), Ordering::Release);
        self.hold_ms.store(whole_millis(hold), Ordering::Release);
    }

    fn threshold(&self) -> Duration {
        Duration::from_millis(self.threshold_ms.load(Ordering::Acquire))
    }

    fn millis(&self, now: Instant) -> u64 {
        whole_millis(now.saturating_duration_since(self.origin))
    }

    /// Starts counting beats from `now` (before, a slow start is no freeze).
    pub(crate) fn start_at(&self, now: Instant) {
        self.beat.store(self.millis(now), Ordering::Release);
        self.watching.store(true, Ordering::Release);
    }

    /// The watchdog's beat at `now`: how long the process was frozen, when it was.
    pub(crate) fn beat_at(&self, now: Instant) -> Option<Duration> {
        let at = self.millis(now);
        let last = self.beat.load(Ordering::Acquire);
        let gap = Duration::from_millis(at.saturating_sub(last));
        let frozen = gap > self.threshold();
        if frozen {
            // The hold is in place before the fresh beat is: a thread that reads the fresh
            // beat (beat first, then the hold: see `held_at`) sees the hold too.
            let hold = self.hold_ms.load(Ordering::Acquire);
            self.held_until
                .store(at.saturating_add(hold).max(1), Ordering::Release);
        }
        self.beat.store(at, Ordering::Release);
        frozen.then_some(gap)
    }

    /// Whether work must wait at `now`: a hold is on, or the watchdog has not beaten for
    /// longer than a freeze (the process just thawed and it has not run yet).
    pub(crate) fn held_at(&self, now: Instant) -> bool {
        let at = self.millis(now);
        let watching = self.watching.load(Ordering::Acquire);
        let beat = self.beat.load(Ordering::Acquire);
        let until = self.held_until.load(Ordering::Acquire);
        until != 0
            || (watching && Duration::from_millis(at.saturating_sub(beat)) > self.threshold())
    }

    /// Whether work must wait now.
    pub(crate) fn held(&self) -> bool {
        self.held_at(Instant::now())
    }

    /// Ends a hold whose time is up; true when it did. Called by the poll thread after a
    /// poll, so that a lost assignment librdkafka noticed meanwhile has been handled first.
    pub(crate) fn release_at(&self, now: Instant) -> bool {
        let until = self.held_until.load(Ordering::Acquire);
        until != 0
            && self.millis(now) >= until
            // A freeze noticed meanwhile set a later end, which stays.
            && self
                .held_until
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Waits while work is held; false when `stop` is cancelled during the wait. Work that
    /// is not held passes at once, whatever `stop` says: callers keep their own stop rules.
    pub(crate) async fn pass(&self, stop: &CancellationToken) -> bool {
        while self.held() {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
        true
    }

    /// The watchdog: beats every [`BEAT`] until `done`, telling `frozen` of every freeze.
    pub(crate) fn watch(&self, done: &AtomicBool, mut frozen: impl FnMut(Duration)) {
        /// Once nobody beats (the loop ended, or `frozen` panicked), a stale beat means
        /// nothing: without this, every thread would be held for good.
        struct Unwatch<'a>(&'a AtomicBool);
        impl Drop for Unwatch<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.start_at(Instant::now());
        let _unwatch = Unwatch(&self.watching);
        while !done.load(Ordering::Acquire) {
            std::thread::sleep(BEAT);
            if let Some(gap) = self.beat_at(Instant::now()) {
                frozen(gap);
                // However long reporting took, it was no freeze.
                self.beat
                    .store(self.millis(Instant::now()), Ordering::Release);
            }
        }
    }

    /// How long work is held after a freeze, at least.
    pub(crate) fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms.load(Ordering::Acquire))
    }
}

fn whole_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Lets a processor hold its own writes after a freeze, as the runtime holds its outputs:
/// a stateful processor waits with it before writing its changelog, whose records a
/// zombie must not interleave with the new owner's. Given in
/// [`ServiceContext::freeze`](crate::ServiceContext::freeze).
#[derive(Debug, Clone)]
pub struct FreezeGuard(Arc<Liveness>);

impl FreezeGuard {
    pub(crate) fn new(liveness: Arc<Liveness>) -> FreezeGuard {
        FreezeGuard(liveness)
    }

    /// Whether the process was frozen recently and its work is held.
    pub fn is_held(&self) -> bool {
        self.0.held()
    }

    /// Waits while work is held. Returns false as soon as `give_up` says so during the
    /// wait (the partition was fenced: a lost assignment); true once nothing is held.
    ///
    /// The wait can last the whole hold (one and a half session timeouts): `give_up` must
    /// turn true when the work is no longer wanted (a fence, a stop), or a revocation or
    /// shutdown waits for it until its deadline.
    pub async fn wait(&self, give_up: impl Fn() -> bool) -> bool {
        while self.0.held() {
            if give_up() {
                return false;
            }
            tokio::time::sleep(RECHECK).await;
        }
        true
    }
}

impl Default for FreezeGuard {
    /// A guard that never holds (a context built outside the runtime, in tests).
    fn default() -> FreezeGuard {
        FreezeGuard(Arc::new(Liveness::new(
            Duration::from_secs(10),
            Instant::now(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(6);

    fn started(t0: Instant) -> Liveness {
        let live = Liveness::new(SESSION, t0);
        live.start_at(t0);
        live
    }

    #[test]
    fn steady_beats_hold_nothing() {
        let t0 = Instant::now();
        let live = started(t0);
        for i in 1..=100 {
            let now = t0 + BEAT * i;
            assert_eq!(live.beat_at(now), None);
            assert!(!live.held_at(now + BEAT / 2));
        }
    }

    #[test]
    fn a_slow_start_is_no_freeze() {
        let t0 = Instant::now();
        let live = Liveness::new(SESSION, t0);
        // Ten seconds before the watchdog starts (a slow `on_start`).
        let later = t0 + Duration::from_secs(10);
        assert!(!live.held_at(later));
        live.start_at(later);
        assert_eq!(live.beat_at(later + BEAT), None);
        assert!(!live.held_at(later + BEAT));
    }

    #[test]
    fn a_gap_longer_than_half_the_session_holds_work_until_a_poll_after_the_hold() {
        let t0 = Instant::now();
        let live = started(t0);
        assert_eq!(live.beat_at(t0 + BEAT), None);
        let thaw = t0 + BEAT + Duration::from_secs(4);
        // Before the watchdog runs after the thaw, the stale beat alone holds work.
        assert!(live.held_at(thaw));
        assert!(!live.release_at(thaw), "nothing to release yet");
        assert_eq!(live.beat_at(thaw), Some(Duration::from_secs(4)));
        let mut now = thaw;
        while now + BEAT < thaw + Duration::from_secs(9) {
            now += BEAT;
            assert_eq!(live.beat_at(now), None);
            assert!(
                !live.release_at(now),
                "released {:?} after the thaw",
                now - thaw
            );
            assert!(
                live.held_at(now),
                "not held {:?} after the thaw",
                now - thaw
            );
        }
        now += BEAT;
        assert_eq!(live.beat_at(now), None);
        assert!(live.held_at(now), "held until a poll releases it");
        assert!(live.release_at(now));
        assert!(!live.held_at(now));
        assert!(!live.release_at(now + BEAT), "released once");
    }

    #[test]
    fn a_gap_of_less_than_half_the_session_is_no_freeze() {
        let t0 = Instant::now();
        let live = started(t0);
        let now = t0 + Duration::from_millis(2900);
        assert!(!live.held_at(now));
        assert_eq!(live.beat_at(now), None);
        assert!(!live.held_at(now));
    }

    #[test]
    fn a_second_freeze_during_a_hold_extends_it() {
        let t0 = Instant::now();
        let live = started(t0);
        let first = t0 + Duration::from_secs(4);
        assert!(live.beat_at(first).is_some());
        let second = first + Duration::from_secs(4);
        assert!(live.beat_at(second).is_some());
        // The first hold's end has passed; the second's has not.
        let between = first + Duration::from_secs(10);
        assert!(!live.release_at(between));
        assert!(live.held_at(between));
        assert!(live.release_at(second + Duration::from_secs(9)));
    }

    #[test]
    fn rare_heartbeats_lower_the_threshold() {
        let t0 = Instant::now();
        let live = started(t0);
        // Heartbeats every 5 s of a 6 s session: 1.5 s frozen may have cost the partitions.
        live.configure(SESSION, Duration::from_secs(5));
        assert!(live.held_at(t0 + Duration::from_millis(1100)));
        live.configure(SESSION, Duration::from_secs(2));
        assert!(!live.held_at(t0 + Duration::from_millis(2900)));
        assert!(live.held_at(t0 + Duration::from_millis(3100)));
    }

    #[test]
    fn once_the_watchdog_stops_a_stale_beat_holds_nothing() {
        let t0 = Instant::now();
        let live = Liveness::new(Duration::from_millis(400), t0);
        let done = AtomicBool::new(true);
        live.watch(&done, |_| panic!("no freeze"));
        assert!(!live.held_at(Instant::now() + Duration::from_secs(5)));
    }

    #[test]
    fn held_work_waits_for_the_release_or_the_stop() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let live = Arc::new(Liveness::new(Duration::from_secs(1), Instant::now()));
        let stop = CancellationToken::new();
        assert!(runtime.block_on(live.pass(&stop)), "nothing held");
        let guard = FreezeGuard::new(live.clone());
        assert!(runtime.block_on(guard.wait(|| true)), "nothing held");

        live.start_at(Instant::now());
        let frozen = Instant::now() + Duration::from_secs(1);
        assert!(live.beat_at(frozen).is_some(), "as if frozen for a second");
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(
            !runtime.block_on(live.pass(&cancelled)),
            "a stop ends the wait"
        );
        assert!(
            !runtime.block_on(guard.wait(|| true)),
            "a fence ends the wait"
        );

        // The poll thread releases the hold once it is due; the waiters then pass.
        let waiter = {
            let live = live.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                runtime.block_on(live.pass(&CancellationToken::new()))
            })
        };
        let released = frozen + live.hold();
        while !live.release_at(Instant::now()) {
            assert!(Instant::now() < released + Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(Instant::now() + Duration::from_millis(1) >= released);
        // The watchdog would have beaten meanwhile: no stale beat.
        live.start_at(Instant::now());
        assert!(waiter.join().unwrap(), "the waiter passed");
        assert!(runtime.block_on(guard.wait(|| false)));
    }
}
