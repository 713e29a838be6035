//! The consumer loop: poll, route, process, deliver, commit — with the guarantees of the
//! crate documentation.
//!
//! Threads and tasks, each owning one thing:
//! - the **poll thread** ([`poll_loop`]) owns the `BaseConsumer` and the assignment
//!   ([`assignment`]): it polls, routes each message to its partition, pauses, resumes,
//!   seeks and commits; rebalance callbacks ([`context`]) run on it. It is never blocked
//!   by processing, so the consumer cannot silently leave its group;
//! - per task (an assigned partition, or for a co-partitioned processor partition p of
//!   every input), a **worker** ([`worker`]) decodes and processes messages one at a time
//!   in arrival order (offset order within a partition), and a **sender** ([`delivery`])
//!   delivers their outputs in the same order and finishes each offset once everything
//!   it produced is acknowledged;
//! - a **watchdog** thread ([`liveness`]) notices that the process was frozen past half its
//!   session timeout, and holds processing, flushes, sends and commits until the group has
//!   had time to take the partitions away;
//! - the processor's **hooks** run as tasks on the runtime, never inside librdkafka's
//!   callbacks, and a panic in one is caught.

pub(crate) mod assignment;
pub(crate) mod context;
pub(crate) mod delivery;
pub(crate) mod liveness;
pub(crate) mod partition;
pub(crate) mod record;
pub(crate) mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use metrics::counter;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::metrics::names;
use crate::processor::{Batching, Output, Processor, StartFrom};
use assignment::Slot;
use context::LoopContext;

/// Loop settings derived from the runtime config.
#[derive(Debug, Clone)]
pub(crate) struct LoopSettings {
    pub(crate) service: String,
    /// The input topics.
    pub(crate) inputs: Vec<String>,
    pub(crate) dlq_topic: String,
    pub(crate) max_in_flight: usize,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
    /// A static member (`group.instance.id`) keeps its place in the group when it stops.
    pub(crate) static_member: bool,
    /// The consumer's session timeout: a freeze longer than half of it holds work.
    pub(crate) session_timeout: Duration,
}

/// What tasks tell the poll thread.
#[derive(Debug)]
pub(crate) enum Control {
    /// The assignment hook of the partition with this generation returned.
    Ready { generation: u64, start: StartFrom },
}

/// State shared by the poll thread, the partitions' tasks and the rebalance callbacks.
pub(crate) struct Shared<P> {
    pub(crate) settings: LoopSettings,
    pub(crate) processor: Arc<P>,
    pub(crate) batching: Option<Batching>,
    /// Partition p of every input is one task (see [`Processor::co_partitioned`]).
    pub(crate) co_partitioned: bool,
    pub(crate) producer: rdkafka::producer::FutureProducer,
    pub(crate) health: Health,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) shutdown: crate::Shutdown,
    /// Cancelled when tick outputs must stop being re-sent (the shutdown deadline passed).
    pub(crate) tick_abandon: CancellationToken,
    /// When the stop must be over: revocations during the stop keep to it.
    pub(crate) stop_deadline: std::sync::OnceLock<tokio::time::Instant>,
    table: Mutex<Vec<Slot>>,
    /// Bumped on every assignment change; a cached route is valid for one generation.
    pub(crate) generation: AtomicU64,
    pub(crate) control: std_mpsc::Sender<Control>,
    /// Notices a freeze and holds work after it.
    pub(crate) liveness: Arc<liveness::Liveness>,
    /// Why the service must stop with an error (the first reason wins).
    fatal: Mutex<Option<String>>,
    /// What did not finish in time during the stop (revocations at other times are
    /// counted, not recorded here).
    unclean: Mutex<Vec<String>>,
}

impl<P: Processor> Shared<P> {
    pub(crate) fn new(
        settings: LoopSettings,
        processor: Arc<P>,
        producer: rdkafka::producer::FutureProducer,
        health: Health,
        shutdown: crate::Shutdown,
    ) -> (Arc<Shared<P>>, std_mpsc::Receiver<Control>) {
        let (control, control_rx) = std_mpsc::channel();
        let batching = processor.batching();
        let co_partitioned = processor.co_partitioned();
        let liveness = Arc::new(liveness::Liveness::new(
            settings.session_timeout,
            Instant::now(),
        ));
        let shared = Arc::new(Shared {
            settings,
            processor,
            batching,
            co_partitioned,
            producer,
            health,
            runtime: tokio::runtime::Handle::current(),
            shutdown,
            tick_abandon: CancellationToken::new(),
            stop_deadline: std::sync::OnceLock::new(),
            table: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            control,
            liveness,
            fatal: Mutex::new(None),
            unclean: Mutex::new(Vec::new()),
        });
        (shared, control_rx)
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the service with an error: the instance cannot go on safely, and exiting
    /// non-zero lets the orchestrator restart it.
    pub(crate) fn fail(&self, reason: String) {
        tracing::error!(error = %reason, "Fatal error; stopping");
        counter!(names::ERRORS, "kind" => "fatal").increment(1);
        self.health.set_blocker("fatal", Some(reason.clone()));
        self.fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
        self.shutdown.trigger();
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that part of the stop did not finish in time (exit 2).
    pub(crate) fn unclean(&self, what: String) {
        tracing::error!(problem = %what, "Did not finish in time");
        self.unclean
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    pub(crate) fn unclean_reasons(&self) -> Vec<String> {
        self.unclean
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A guard for the processor's own writes, on this loop's freeze detector.
    pub(crate) fn freeze_guard(&self) -> liveness::FreezeGuard {
        liveness::FreezeGuard::new(self.liveness.clone())
    }

    /// The watchdog found that the process was frozen: work is held (shown in `/readyz`
    /// and counted).
    fn on_frozen(&self, gap: Duration) {
        counter!(names::FROZEN).increment(1);
        let hold = self.liveness.hold();
        tracing::warn!(
            frozen = ?gap,
            hold = ?hold,
            "This process was frozen for longer than half its session timeout: the group may have given its partitions away; holding processing, flushes, sends and commits meanwhile"
        );
        self.health.set_blocker(
            "frozen",
            Some(format!(
                "the process was frozen for {:.1} s; work is held for at least {:.1} s while the group settles who owns its partitions",
                gap.as_secs_f64(),
                hold.as_secs_f64()
            )),
        );
        // What lingered in the producer when the process froze would go out now, maybe
        // after the new owners' records. Purged, it fails back to its senders, which send
        // it again in order once the hold ends (duplicates, never loss), or drop it with
        // their partitions. A purge cannot unsend a request already on the wire: what
        // librdkafka sent between the thaw and this beat may still land. Not waiting for
        // the broker threads: a slow one must not stall the watchdog.
        rdkafka::producer::Producer::purge(
            &self.producer,
            rdkafka::producer::PurgeConfig::default()
                .queue()
                .inflight()
                .non_blocking(),
        );
    }

    /// Publishes records not tied to an input offset (from `on_tick`), in order.
    pub(crate) async fn publish(&self, outputs: Vec<Output>) -> Result<(), delivery::Stop> {
        delivery::publish(self, outputs).await
    }
}

/// The poll thread: poll, route, resume ready partitions, back-pressure and commit until
/// shutdown; then stop fetching, let in-flight work finish within the deadline, commit,
/// and leave the group.
pub(crate) fn poll_loop<P: Processor>(
    consumer: BaseConsumer<LoopContext<P>>,
    shared: Arc<Shared<P>>,
    control: std_mpsc::Receiver<Control>,
) {
    // The watchdog beats for as long as the loop runs, the stop included.
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watchdog = std::thread::Builder::new()
            .name("liveness".into())
            .spawn_scoped(scope, || {
                shared.liveness.watch(&done, |gap| shared.on_frozen(gap));
            });
        if let Err(e) = watchdog {
            // A stale beat means a freeze only once the watchdog runs: without it nothing
            // is held, and nothing notices a freeze either.
            tracing::error!(error = %e, "Could not start the freeze watchdog; a freeze will go unnoticed");
        }
        // Ends the watchdog however the loop ends (a panic included), or the scope would
        // wait for it forever.
        let _stop_watchdog = SetOnDrop(&done);
        poll_until_stopped(consumer, &shared, control);
    });
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The body of [`poll_loop`].
fn poll_until_stopped<P: Processor>(
    consumer: BaseConsumer<LoopContext<P>>,
    shared: &Arc<Shared<P>>,
    control: std_mpsc::Receiver<Control>,
) {
    let settings = shared.settings.clone();
    let mut cache = None;
    let mut last_commit = Instant::now();
    let mut last_housekeeping = Instant::now();
    while !shared.shutdown.is_triggered() {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => {
                shared.route(&consumer, message.detach(), &mut cache);
                // Drain what is already fetched without the housekeeping below each time.
                for _ in 0..256 {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(message)) => {
                            shared.route(&consumer, message.detach(), &mut cache);
                        }
                        Some(Err(error)) => consume_error(shared, &consumer, &error),
                        None => break,
                    }
                }
            }
            Some(Err(error)) => consume_error(shared, &consumer, &error),
            None => {}
        }
        while let Ok(ready) = control.try_recv() {
            shared.ready(&consumer, ready);
        }
        release_hold(shared);
        if last_housekeeping.elapsed() >= Duration::from_millis(50) {
            shared.apply_backpressure(&consumer);
            shared.publish_status();
            last_housekeeping = Instant::now();
        }
        // A frozen instance's offsets wait with its outputs: the partitions may be someone
        // else's already.
        if last_commit.elapsed() >= settings.commit_interval && !shared.liveness.held() {
            shared.commit(&consumer, None, CommitMode::Async);
            last_commit = Instant::now();
        }
    }

    tracing::info!("Stopping: no new fetches; finishing in-flight work");
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    let _ = shared.stop_deadline.set(deadline);
    shared.health.set_shutting_down();
    if let Ok(assignment) = consumer.assignment() {
        let _ = consumer.pause(&assignment);
    }
    // Stopping during the hold after a freeze (a rollout's SIGTERM right after a pause,
    // say): only a poll tells whether the group kept the partitions. Poll on (nothing new
    // is fetched) until the hold ends, within half the deadline: a lost assignment arrives
    // meanwhile and drops its partitions' work, or the group kept them and the stop is a
    // clean one.
    // (Not after a fatal error: the stop is no clean one anyway.)
    if shared.liveness.held() && shared.fatal().is_none() {
        tracing::info!("Stopping during the hold after a freeze: waiting for the group first");
        let settle = Instant::now() + settings.shutdown_timeout / 2;
        while shared.liveness.held() && Instant::now() < settle {
            match consumer.poll(Duration::from_millis(20)) {
                Some(Ok(message)) => shared.route(&consumer, message.detach(), &mut cache),
                Some(Err(error)) => consume_error(shared, &consumer, &error),
                None => {}
            }
            release_hold(shared);
            shared.publish_status();
        }
    }
    let parts: Vec<_> = shared.table().drain(..).map(|s| s.part).collect();
    shared
        .generation
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    // Still held: the group has not spoken within half the deadline. What waits is dropped
    // and nothing is committed; the owner, whoever it is, reads it again.
    let frozen = shared.liveness.held() || consumer.assignment_lost();
    if frozen {
        for part in &parts {
            shared.abandon(part);
        }
        // A tick's outputs wait on the hold too, and nothing releases it any more.
        shared.tick_abandon.cancel();
        rdkafka::producer::Producer::purge(
            &shared.producer,
            rdkafka::producer::PurgeConfig::default().queue().inflight(),
        );
    }
    shared.stop_partitions_by(&parts, "shutdown", deadline);
    if frozen {
        shared.unclean(
            "stopped during the hold after a freeze: nothing was committed, and what waited was dropped"
                .to_owned(),
        );
    } else {
        shared.commit(&consumer, Some(&parts), CommitMode::Sync);
    }
    shared.publish_status();
    if !settings.static_member {
        // Leaving the group hands our partitions over at once instead of after the session
        // timeout; the revoke callback finds nothing left to do. A static member stays:
        // restarted within the session, it gets its partitions back with no rebalance (an
        // explicit unsubscribe would leave, and rebalance the whole group).
        consumer.unsubscribe();
        let _ = consumer.poll(Duration::from_millis(100));
    }
    drop(consumer);
    tracing::info!("Consumer closed");
}

/// Ends a hold whose time is up. Called after a poll: a lost assignment that librdkafka
/// noticed meanwhile has been handed to that poll and has stopped its partitions.
fn release_hold<P: Processor>(shared: &Shared<P>) {
    if shared.liveness.release_at(Instant::now()) && !shared.liveness.held() {
        // (Held again: a second freeze began meanwhile, and its blocker stays.)
        tracing::info!("The hold after a freeze is over; work goes on");
        shared.health.set_blocker("frozen", None);
    }
}

fn consume_error<P: Processor, C: ConsumerContext>(
    shared: &Shared<P>,
    consumer: &BaseConsumer<C>,
    error: &KafkaError,
) {
    if let KafkaError::MessageConsumption(RDKafkaErrorCode::PollExceeded) = error {
        counter!(names::MAX_POLL_EXCEEDED).increment(1);
        tracing::error!("Left the consumer group: max.poll.interval.ms exceeded; rejoining");
    } else if matches!(error, KafkaError::MessageConsumptionFatal(_))
        || consumer.client().fatal_error().is_some()
    {
        // A fenced static member (another instance with the same GROUP_INSTANCE_ID) and
        // the like: this consumer will never be given partitions again. Exit non-zero so
        // the orchestrator restarts it, rather than idle with a green health check.
        let detail = consumer.client().fatal_error().map_or_else(
            || error.to_string(),
            |(code, reason)| format!("{code}: {reason}"),
        );
        shared.fail(format!("fatal consumer error: {detail}"));
    } else {
        counter!(names::ERRORS, "kind" => "consume").increment(1);
        tracing::warn!(error = %error, "Consumer error");
    }
}
