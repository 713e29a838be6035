//! The assignment: which partitions this instance owns and how each one's fetching stands.
//! Only the poll thread changes it (rebalance callbacks run there too), so pausing,
//! resuming, seeking and committing each have one owner.
//!
//! A partition's life: **assigned** (paused at once; the processor's async `on_assigned`
//! runs on the runtime) → **running** (resumed, after a seek when the processor keeps its
//! own position) ⇄ **throttled** (paused at its in-flight budget, resumed at half) →
//! **revoked** (removed from the table first, so no message can reach it again; its worker
//! stops after the message in hand; its outputs are awaited; `on_revoked` runs; its
//! watermark is committed; all before the rebalance callback returns).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use metrics::{counter, gauge, histogram};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::partition::{Partition, Task};
use super::{Control, Shared, delivery, worker};
use crate::admin::PartitionStatus;
use crate::metrics::names;
use crate::processor::{PartitionId, ProcessError, Processor, StartFrom};

/// How fetching of an assigned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetch {
    /// Paused until the processor's assignment hook returns.
    Assigning,
    /// Fetching.
    Running,
    /// Paused: its in-flight budget is full.
    Throttled,
}

/// One owned partition, as the poll thread sees it.
pub(crate) struct Slot {
    pub(crate) part: Arc<Partition>,
    pub(crate) fetch: Fetch,
}

/// How many times a synchronous (handover or shutdown) commit is retried.
const HANDOVER_COMMIT_RETRIES: u32 = 3;

/// Whether a failed commit may succeed if sent again to the same group generation.
fn commit_retriable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::RequestTimedOut
                | C::NetworkException
                | C::BrokerTransportFailure
                | C::WaitingForCoordinator
        )
    )
}

/// How long aborted partition tasks get to reach their next await and end.
const ABORT_GRACE: Duration = Duration::from_secs(5);

fn one(id: &PartitionId) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&id.topic, id.partition);
    tpl
}

impl<P: Processor> Shared<P> {
    /// Hands a message to its partition's worker, recording it as in flight first so the
    /// watermark can never pass it; pauses the partition the moment its budget is full.
    /// `cache` remembers the last partition routed to, checked against the assignment's
    /// generation so that it can never outlive a rebalance.
    pub(crate) fn route<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        message: OwnedMessage,
        cache: &mut Option<(u64, Arc<Partition>)>,
    ) {
        let generation = self.generation.load(Ordering::Acquire);
        let hit = cache.as_ref().is_some_and(|(g, part)| {
            *g == generation
                && part.id.partition == message.partition()
                && *part.id.topic == *message.topic()
        });
        if !hit {
            *cache = self
                .table()
                .iter()
                .find(|s| {
                    s.part.id.partition == message.partition()
                        && *s.part.id.topic == *message.topic()
                })
                .map(|s| (generation, s.part.clone()));
        }
        let Some((_, part)) = cache.as_ref() else {
            // Not ours (any more): whoever owns it reads it from its committed offset.
            counter!(names::ERRORS, "kind" => "unowned").increment(1);
            return;
        };
        let offset = message.offset();
        match part.route(message) {
            Ok(in_flight) => {
                part.messages_in.increment(1);
                if in_flight >= self.settings.max_in_flight.max(1) {
                    self.throttle(consumer, &part.id);
                }
            }
            Err(refused) => {
                counter!(names::ERRORS, "kind" => "stale_offset").increment(1);
                tracing::warn!(partition = %part.id, offset, error = %refused, "Refused a message the partition cannot expect");
            }
        }
    }

    fn throttle<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, id: &PartitionId) {
        let mut table = self.table();
        if let Some(slot) = table.iter_mut().find(|s| s.part.id == *id) {
            // Pausing also drops what librdkafka prefetched for it, so the budget holds.
            if slot.fetch == Fetch::Running && consumer.pause(&one(id)).is_ok() {
                slot.fetch = Fetch::Throttled;
            }
        }
    }

    /// Resumes throttled partitions once half their budget drained (hysteresis: pausing
    /// discards prefetched messages, so it must not flap).
    pub(crate) fn apply_backpressure<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let max = self.settings.max_in_flight.max(1);
        let mut total = 0;
        for slot in self.table().iter_mut() {
            let in_flight = slot.part.in_flight();
            total += in_flight;
            if slot.fetch == Fetch::Throttled
                && in_flight <= max / 2
                && !self.shutdown.is_triggered()
                && consumer.resume(&one(&slot.part.id)).is_ok()
            {
                // Resuming refetches from the position after the last message received.
                slot.fetch = Fetch::Running;
            }
        }
        gauge!(names::IN_FLIGHT).set(total as f64);
    }

    /// New partitions (called after librdkafka assigned them): pause each, start its
    /// tasks, and run the processor's assignment hook on the runtime.
    pub(crate) fn assign<C: ConsumerContext>(
        self: &Arc<Self>,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) {
        if tpl.count() == 0 {
            return;
        }
        // Nothing may be processed before the hook returns; partitions already owned
        // (never expected, but librdkafka may repeat itself) are left as they are.
        let mut new = TopicPartitionList::new();
        for elem in tpl.elements() {
            let owned = self.table().iter().any(|s| {
                s.part.id.partition == elem.partition() && *s.part.id.topic == *elem.topic()
            });
            if !owned {
                new.add_partition(elem.topic(), elem.partition());
            }
        }
        if new.count() == 0 {
            return;
        }
        let tpl = &new;
        if let Err(e) = consumer.pause(tpl) {
            // Unpaused, they would be processed before `on_assigned` returns (and before a
            // seek it asks for): stop rather than break that promise.
            self.fail(format!("cannot pause newly assigned partitions: {e}"));
        }
        // The committed offsets seed each partition's position: status and lag are right
        // before the first message, and the tracker knows where the stream starts.
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .ok();
        let mut assigned = Vec::new();
        for elem in tpl.elements() {
            let id = PartitionId::new(elem.topic(), elem.partition());
            if self.table().iter().any(|s| s.part.id == id) {
                continue;
            }
            let start = committed
                .as_ref()
                .and_then(|c| c.find_partition(elem.topic(), elem.partition()))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            let task = self.task_for(&id);
            let part = Arc::new(Partition::new(
                id.clone(),
                generation,
                start,
                task,
                counter!(names::MESSAGES_IN, "topic" => id.topic.to_string()),
            ));
            part.add_task(
                self.runtime
                    .spawn(assigned_hook(self.clone(), part.clone())),
            );
            self.table().push(super::assignment::Slot {
                part,
                fetch: Fetch::Assigning,
            });
            assigned.push(id.to_string());
        }
        if self.co_partitioned {
            self.check_co_located();
        }
        counter!(names::REBALANCES, "kind" => "assign").increment(1);
        tracing::info!(partitions = ?assigned, "Partitions assigned");
        self.publish_status();
    }

    /// A co-partitioned processor must own partition p of every input or of none: else
    /// another instance holds the rest of the join (inputs with different partition counts,
    /// or members subscribed to different topics), and both would build half the state.
    fn check_co_located(&self) {
        let table = self.table();
        let numbers: std::collections::BTreeSet<i32> =
            table.iter().map(|s| s.part.id.partition).collect();
        for number in numbers {
            let owned = table
                .iter()
                .filter(|s| s.part.id.partition == number)
                .count();
            if owned != self.settings.inputs.len() {
                drop(table);
                self.fail(format!(
                    "partition {number} assigned for {owned} of {} co-partitioned inputs: the inputs must have equal partition counts and every member the same subscription",
                    self.settings.inputs.len()
                ));
                return;
            }
        }
    }

    /// The task that processes `id`: a new one, or for a co-partitioned processor the one
    /// already processing partition `id.partition` of another input.
    fn task_for(self: &Arc<Self>, id: &PartitionId) -> Arc<Task> {
        let number = self.co_partitioned.then_some(id.partition);
        if number.is_some() {
            let existing = self
                .table()
                .iter()
                .map(|s| &s.part.task)
                .find(|t| t.number == number && !t.stop.is_cancelled())
                .cloned();
            if let Some(task) = existing {
                return task;
            }
        }
        let (task, rx) = Task::new(number, id.clone());
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let name = match number {
            Some(n) => format!("task {n}"),
            None => id.to_string(),
        };
        task.add_task(self.runtime.spawn(worker::supervised(
            self.clone(),
            format!("worker of {name}"),
            worker::run(self.clone(), task.clone(), rx, out_tx),
        )));
        task.add_task(self.runtime.spawn(worker::supervised(
            self.clone(),
            format!("sender of {name}"),
            delivery::run(self.clone(), task.clone(), out_rx),
        )));
        task
    }

    /// The processor's hook for a partition returned: seek if it keeps its own position,
    /// then let messages flow.
    pub(crate) fn ready<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, control: Control) {
        let Control::Ready { generation, start } = control;
        let part = {
            let table = self.table();
            let Some(slot) = table.iter().find(|s| s.part.generation == generation) else {
                return; // revoked meanwhile
            };
            slot.part.clone()
        };
        if let StartFrom::Offset(offset) = start {
            // librdkafka refuses a seek until the partition's fetcher has started; that
            // takes a moment after the assignment.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match consumer.seek(
                    &part.id.topic,
                    part.id.partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                ) {
                    Ok(()) => break,
                    Err(KafkaError::Seek(_))
                    | Err(KafkaError::MessageConsumption(RDKafkaErrorCode::State))
                        if Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        self.fail(format!("cannot seek {} to {offset}: {e}", part.id));
                        return;
                    }
                }
            }
            part.restart_at(offset);
            tracing::info!(partition = %part.id, offset, "Resuming from the processor's own position");
        }
        let mut table = self.table();
        if let Some(slot) = table.iter_mut().find(|s| s.part.generation == generation) {
            if consumer.resume(&one(&part.id)).is_ok() {
                slot.fetch = Fetch::Running;
            }
        }
        drop(table);
        self.publish_status();
    }

    /// Revoked partitions (called before librdkafka unassigns them): stop them, let their
    /// work finish and their outputs land, run `on_revoked`, commit, all within the
    /// shutdown deadline. Blocking here is safe: the workers never need this thread.
    pub(crate) fn revoke<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) {
        let revoked: Vec<Arc<Partition>> = {
            let mut table = self.table();
            let mut revoked = Vec::new();
            table.retain(|slot| {
                let gone = tpl.elements().iter().any(|e| {
                    e.partition() == slot.part.id.partition && e.topic() == &*slot.part.id.topic
                });
                if gone {
                    revoked.push(slot.part.clone());
                }
                !gone
            });
            revoked
        };
        // Any cached route is void from here on.
        self.generation.fetch_add(1, Ordering::AcqRel);
        if revoked.is_empty() {
            return;
        }
        let split = self.table().iter().any(|slot| {
            revoked
                .iter()
                .any(|r| Arc::ptr_eq(&r.task, &slot.part.task))
        });
        if split {
            // Stopping the task stops the partitions that stay too: they would sit
            // unprocessed. Only an assignor that ignores co-partitioning does this (the
            // runtime asks for `range`); restart rather than serve half a join.
            self.fail(
                "the assignor split co-partitioned inputs between instances (a co-partitioned processor needs partition.assignment.strategy=range)"
                    .to_owned(),
            );
        }
        let lost = consumer.assignment_lost();
        if lost || self.liveness.held() {
            // Someone else owns them already: write nothing more for them, not even the
            // re-sends of a failed delivery or a batch commit. During the hold after a
            // freeze the same: what waits would wait for the hold, which only a poll after
            // this callback releases, and would take the whole deadline to be dropped.
            for part in &revoked {
                self.abandon(part);
            }
        }
        self.stop_partitions(&revoked, "revocation");
        if lost {
            // What they handed to the producer and was not acknowledged would otherwise be
            // retried for up to `message.timeout.ms`, landing after the new owner's outputs.
            // (Other partitions' senders see their purged records fail and send them again,
            // in order: duplicates, never loss.)
            rdkafka::producer::Producer::purge(
                &self.producer,
                rdkafka::producer::PurgeConfig::default().queue().inflight(),
            );
        }
        if lost {
            // The group already gave these partitions to someone else: a commit would be
            // refused, and the watermarks stay where the last commit left them.
            tracing::warn!("Assignment lost (session or poll interval expired); not committing");
        } else {
            self.commit(consumer, Some(&revoked), CommitMode::Sync);
        }
        let list: Vec<String> = revoked.iter().map(|p| p.id.to_string()).collect();
        counter!(names::REBALANCES, "kind" => "revoke").increment(1);
        tracing::info!(partitions = ?list, "Partitions revoked");
        self.publish_status();
    }

    /// Gives up on `part`'s unacknowledged outputs and tells the processor to write nothing
    /// more for it.
    pub(crate) fn abandon(&self, part: &Partition) {
        part.abandon().cancel();
        let processor = &self.processor;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| processor.fence(&part.id)))
            .is_err()
        {
            tracing::error!(partition = %part.id, "fence panicked");
        }
    }

    /// Stops `parts` and waits, within the shutdown deadline, for their workers to stop,
    /// their outputs to be acknowledged and their `on_revoked` hooks to return.
    pub(crate) fn stop_partitions(&self, parts: &[Arc<Partition>], why: &str) {
        let mut deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        // A revocation while the service stops keeps to the stop's deadline.
        if let Some(stop) = self.stop_deadline.get() {
            deadline = deadline.min(*stop);
        }
        self.stop_partitions_by(parts, why, deadline);
    }

    /// [`stop_partitions`](Self::stop_partitions) with the deadline given.
    pub(crate) fn stop_partitions_by(
        &self,
        parts: &[Arc<Partition>],
        why: &str,
        deadline: tokio::time::Instant,
    ) {
        for part in parts {
            part.stop().cancel();
        }
        // One deadline for draining and for the hooks.
        let tasks: Vec<_> = parts.iter().flat_map(|p| p.take_tasks()).collect();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let drained = self.runtime.block_on(async {
            tokio::time::timeout_at(deadline, futures_util::future::join_all(tasks))
                .await
                .is_ok()
        });
        // What missed the deadline, reported once.
        let mut missed = Vec::new();
        if !drained {
            // Nothing of these partitions may be written or processed after they are
            // handed over: stop their tasks, and drop whatever of theirs still waits in
            // the producer (other partitions' senders see that as a retriable failure
            // and send theirs again, in order: duplicates, never loss).
            for part in parts {
                self.abandon(part);
            }
            for abort in &aborts {
                abort.abort();
            }
            // An aborted task stops at its next await; until then it could still hand a
            // record to the producer. Wait for every one to end (their senders refuse to
            // send once abandoned, so this is short) before purging what they queued.
            let ended = self.runtime.block_on(async {
                let ends = aborts.iter().map(|abort| async move {
                    while !abort.is_finished() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                tokio::time::timeout(ABORT_GRACE, futures_util::future::join_all(ends))
                    .await
                    .is_ok()
            });
            if !ended {
                tracing::error!(
                    "A partition task did not end within {ABORT_GRACE:?} of being aborted (processing that never awaits?)"
                );
            }
            rdkafka::producer::Producer::purge(
                &self.producer,
                rdkafka::producer::PurgeConfig::default().queue().inflight(),
            );
            missed.push(format!(
                "{why} of {} partition(s) did not finish within {:?}; their unfinished offsets stay uncommitted",
                parts.len(),
                self.settings.shutdown_timeout
            ));
        }
        let hooks = parts
            .iter()
            .filter(|p| p.is_ready())
            .map(|p| {
                let processor = self.processor.clone();
                let id = p.id.clone();
                async move {
                    if let Err(panic) = std::panic::AssertUnwindSafe(processor.on_revoked(&id))
                        .catch_unwind()
                        .await
                    {
                        tracing::error!(partition = %id, panic = worker::panic_text(&*panic), "on_revoked panicked");
                    }
                }
            })
            .collect::<Vec<_>>();
        // on_revoked always gets a moment, even when draining used up the deadline.
        let hooks_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        let hooks_done = self.runtime.block_on(async {
            tokio::time::timeout_at(hooks_deadline, futures_util::future::join_all(hooks))
                .await
                .is_ok()
        });
        if !hooks_done {
            missed.push("on_revoked did not return in time".to_owned());
        }
        if !missed.is_empty() {
            self.late(missed.join("; "));
        }
    }

    /// A deadline of [`stop_partitions_by`](Self::stop_partitions_by) passed. During the
    /// stop that makes the stop unclean (exit 2), and so does a revocation that was still
    /// running when the stop was asked for (the stop waited for it). A revocation at any
    /// other time is not part of any stop: a SIGTERM minutes later that finishes in time
    /// is a clean one, and its exit code says so. The late revocation is an ERROR and a
    /// counter instead (a broker outage during a rebalance, say: the outputs it waited for
    /// could not be acknowledged; the next owner reads the uncommitted input again).
    fn late(&self, what: String) {
        if self.stop_deadline.get().is_some() || self.shutdown.is_triggered() {
            self.unclean(what);
        } else {
            counter!(names::LATE_REVOCATIONS).increment(1);
            tracing::error!(problem = %what, "Revocation did not finish in time; the next owner processes its unfinished input again");
        }
    }

    /// Commits the watermark of `only` (or of every partition). Synchronously when a
    /// partition is handed over (the next owner must start after it); asynchronously on
    /// the interval, so a broker that does not answer never stalls the poll thread (the
    /// commit callback records what the broker confirmed).
    pub(crate) fn commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        only: Option<&[Arc<Partition>]>,
        mode: CommitMode,
    ) {
        let parts = only.map_or_else(
            || self.table().iter().map(|s| s.part.clone()).collect(),
            <[_]>::to_vec,
        );
        let mut tpl = TopicPartitionList::new();
        let mut offsets = Vec::new();
        let now = Instant::now();
        // An interval commit is asynchronous, and librdkafka answers a manual asynchronous
        // commit to no callback unless an `offset_commit_cb` is configured (rust-rdkafka
        // configures none): it is counted only once a synchronous commit confirms it, and
        // an unchanged watermark is offered again every few intervals (a refused commit is
        // repaired; an away coordinator does not get a commit queued at every interval). A
        // handover or shutdown commit is synchronous and always sent.
        let patience = self.settings.commit_interval * 3;
        for part in &parts {
            let offer = {
                let tracker = part.tracker();
                match mode {
                    CommitMode::Async => tracker.to_offer(now, patience),
                    CommitMode::Sync => tracker.to_commit(),
                }
            };
            if let Some(offset) = offer {
                if tpl
                    .add_partition_offset(&part.id.topic, part.id.partition, Offset::Offset(offset))
                    .is_ok()
                {
                    offsets.push((part.clone(), offset));
                }
            }
        }
        if offsets.is_empty() {
            return;
        }
        // Metrics are this process's one effect outside Kafka: every counter a committed
        // message incremented must have left before its offset is committed, or a crash
        // between the commit and the next periodic flush loses it for good (metrics-emitter
        // would undercount). Everything those offsets cover was processed before they were
        // read from the trackers above, so this flush carries all of it.
        crate::metrics::flush();
        let started = Instant::now();
        let mut result = consumer.commit(&tpl, mode);
        // A handover or shutdown commit is the next owner's starting point: ride out a
        // coordinator that is moving or loading, a few times, rather than leave the next
        // owner to re-process what was done.
        let mut retries = 0;
        while matches!(mode, CommitMode::Sync) && retries < HANDOVER_COMMIT_RETRIES {
            let Err(e) = &result else { break };
            if !commit_retriable(e) {
                break;
            }
            retries += 1;
            tracing::info!(error = %e, retry = retries, "Handover commit failed; retrying");
            std::thread::sleep(Duration::from_millis(100 * u64::from(retries)));
            result = consumer.commit(&tpl, mode);
        }
        match result {
            // An asynchronous commit is counted only once a synchronous one confirms it:
            // librdkafka answers it to no callback of ours, and one the group refused (a
            // rebalance moved its generation on) must not stand in for the handover commit.
            Ok(()) if matches!(mode, CommitMode::Async) => {
                for (part, offset) in offsets {
                    part.tracker().offered(offset, now);
                }
            }
            Ok(()) => {
                histogram!(names::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                for (part, offset) in offsets {
                    part.tracker().committed(offset);
                }
            }
            Err(e) => {
                counter!(names::ERRORS, "kind" => "commit").increment(1);
                tracing::warn!(error = %e, "Commit failed; retrying at the next interval");
            }
        }
    }

    pub(crate) fn publish_status(&self) {
        let mut statuses: Vec<PartitionStatus> = self
            .table()
            .iter()
            .map(|slot| {
                let part = &slot.part;
                let (position, in_flight, gaps) = {
                    let tracker = part.tracker();
                    (tracker.watermark(), tracker.in_flight(), tracker.gaps())
                };
                let hw = part.high_watermark.load(Ordering::Relaxed);
                // The high watermark comes from librdkafka's periodic statistics and can trail
                // what was already read; the partition holds at least up to the position.
                let high_watermark = (hw >= 0).then(|| hw.max(position.unwrap_or(hw)));
                let problem = part.problem();
                let state = match (&problem, slot.fetch) {
                    (Some(_), _) => "stuck",
                    (None, Fetch::Assigning) => "assigning",
                    (None, Fetch::Running) => "running",
                    (None, Fetch::Throttled) => "throttled",
                };
                PartitionStatus {
                    topic: part.id.topic.to_string(),
                    partition: part.id.partition,
                    position,
                    high_watermark,
                    lag: high_watermark.map(|hw| (hw - position.unwrap_or(0)).max(0)),
                    in_flight,
                    state: state.to_owned(),
                    problem,
                    offset_gaps: gaps,
                }
            })
            .collect();
        statuses.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        for s in &statuses {
            if let Some(lag) = s.lag {
                gauge!(names::LAG, "topic" => s.topic.clone(), "partition" => s.partition.to_string())
                    .set(lag as f64);
            }
        }
        self.health.set_partitions(statuses);
    }
}

/// Runs the processor's `on_assigned` for `part` on the runtime, retrying transient
/// failures (the partition shows as stuck meanwhile), and tells the poll thread.
async fn assigned_hook<P: Processor>(shared: Arc<Shared<P>>, part: Arc<Partition>) {
    let mut attempt = 0;
    let start = loop {
        attempt += 1;
        // A lost assignment fences the partition before it stops the hooks: a hook that
        // starts or retries in between must not prepare an ownership that is already over
        // (a stateful processor would open a fresh, unfenced store for it).
        if part.abandon().is_cancelled() {
            return;
        }
        // A revocation or a lost assignment cancels a hook still running (a long restore):
        // the partition is not ours to prepare any more, and the rebalance must not wait
        // for it. Its `on_revoked` never runs, since it never became ready.
        let hook =
            std::panic::AssertUnwindSafe(shared.processor.on_assigned(&part.id)).catch_unwind();
        let result = tokio::select! {
            biased;
            _ = part.stop().cancelled() => {
                // Whatever the hook had handed to the producer must not land on the next
                // owner's behalf.
                shared.processor.fence(&part.id);
                return;
            }
            result = hook => result,
        }
        .unwrap_or_else(|panic| {
            Err(ProcessError::Permanent(format!(
                "on_assigned panicked: {}",
                worker::panic_text(&*panic)
            )))
        });
        match result {
            Ok(start) => break start,
            Err(ProcessError::Transient(reason) | ProcessError::Blocked(reason)) => {
                counter!(names::ERRORS, "kind" => "on_assigned").increment(1);
                tracing::warn!(partition = %part.id, error = %reason, attempt, "Assignment hook failed; retrying");
                part.set_problem(Some(format!(
                    "assignment hook failing (attempt {attempt}): {reason}"
                )));
                let delay = worker::backoff(
                    shared.settings.backoff,
                    shared.settings.max_backoff.max(shared.settings.backoff),
                    attempt,
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = part.stop().cancelled() => return,
                }
            }
            Err(ProcessError::Permanent(reason)) => {
                part.set_problem(Some(format!("assignment hook failed: {reason}")));
                shared.fail(format!("assignment of {} failed: {reason}", part.id));
                return;
            }
        }
    };
    part.set_problem(None);
    // From here on the processor holds the partition: `on_revoked` must run for it, even
    // if the revocation comes before the poll thread resumed it.
    part.ready.store(true, Ordering::Release);
    let _ = shared.control.send(Control::Ready {
        generation: part.generation,
        start,
    });
}
