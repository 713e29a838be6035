//! The worker of one task (a partition, or partition p of every co-partitioned input):
//! decodes and processes its messages one at a time in arrival order (offset order within
//! each partition), with retries and dead letters, and hands what each produced to the
//! task's sender.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use metrics::counter;
use rand::Rng;
use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;
use tributary_events::{Envelope, TraceParent, envelope};

use super::Shared;
use super::delivery::Item;
use super::partition::{Partition, Task};
use super::record::{self, OutRecord};
use crate::dlq::{self, DeadLetter};
use crate::metrics::names;
use crate::processor::{Incoming, PartitionId, ProcessError, Processor};

/// One in this many messages has its processing time recorded: a distribution needs a
/// sample, not every message, and a histogram per message is a StatsD line per message.
const TIMING_SAMPLE: u32 = 64;

/// A message blocked this many attempts shows its partition as stuck (with the reason) in
/// `/status` until it goes through.
const BLOCKED_STUCK_AFTER: u32 = 3;

/// Runs `task` (a worker or sender); should it ever panic, its partitions could not make
/// progress any more, so the service stops with an error instead of wedging.
pub(crate) async fn supervised<P: Processor>(
    shared: Arc<Shared<P>>,
    what: String,
    task: impl std::future::Future<Output = ()> + Send,
) {
    if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
        shared.fail(format!("{what} panicked: {}", panic_text(&*panic)));
    }
}

/// The open batch of a batching processor: when it must end, how many messages it has,
/// and the next offset of each partition it touched.
struct Batch {
    deadline: Instant,
    count: usize,
    next: Vec<(Arc<Partition>, i64)>,
}

/// Processes one task's messages in order until it is stopped or its queue closes.
pub(crate) async fn run<P: Processor>(
    shared: Arc<Shared<P>>,
    task: Arc<Task>,
    mut rx: mpsc::UnboundedReceiver<(Arc<Partition>, OwnedMessage)>,
    out: mpsc::UnboundedSender<Item>,
) {
    let batching = shared.batching;
    let flush_every = batching.and(shared.processor.flush_every());
    // The partitions this task has processed messages of (at first the one it was made
    // for): what an idle flush covers. A task flushes before its first message, so that
    // what a partition opened here has to re-publish goes out without new input.
    let mut known: Vec<PartitionId> = vec![task.first.clone()];
    let mut batch: Option<Batch> = None;
    let mut timing = 0u32;
    // One histogram handle per input topic (a task may read several).
    let mut histograms: Vec<(Arc<str>, metrics::Histogram)> = Vec::new();
    loop {
        // On revoke or shutdown, stop after the message in hand: messages queued but not
        // started stay unfinished (uncommitted) for whoever reads the partition next,
        // which keeps the stop time bounded by one message, not by the prefetched backlog.
        // Messages already queued are taken without a select (a wake-up and two futures
        // per message otherwise); the stop signal is still checked before each one.
        let queued = match rx.try_recv() {
            Ok(message) if !task.stop.is_cancelled() => Some(message),
            _ => None,
        };
        let deadline = batch.as_ref().map(|b| b.deadline);
        let message = match (queued, deadline) {
            (Some(message), Some(deadline)) if Instant::now() < deadline => Some(message),
            (Some(message), None) => Some(message),
            (Some(message), Some(_)) => {
                // The batch's time is up: end it first, then this message opens the next.
                flush_and_end_batch(&shared, &task, flush_every, &out, &mut batch).await;
                Some(message)
            }
            (None, Some(deadline)) => tokio::select! {
                biased;
                _ = task.stop.cancelled() => None,
                _ = tokio::time::sleep_until(deadline) => {
                    flush_and_end_batch(&shared, &task, flush_every, &out, &mut batch).await;
                    continue;
                }
                message = rx.recv() => message,
            },
            (None, None) => {
                // Idle: flush every `flush_every`, so that what the last batches left
                // for a later flush (rate-limited values) is published without new input.
                let idle = async {
                    match flush_every {
                        Some(every) => tokio::time::sleep(every).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = task.stop.cancelled() => None,
                    message = rx.recv() => message,
                    _ = idle => {
                        flush(&shared, &task, &known, &out).await;
                        continue;
                    }
                }
            }
        };
        let Some((part, message)) = message else {
            break;
        };
        // After a freeze, this message may be someone else's to process already.
        if !shared.liveness.pass(&task.stop).await {
            break;
        }
        let offset = message.offset();
        if flush_every.is_some() && !known.contains(&part.id) {
            known.push(part.id.clone());
        }

        timing = timing.wrapping_add(1);
        // The first message of a partition is always timed, then one in TIMING_SAMPLE.
        let started = (timing % TIMING_SAMPLE == 1).then(std::time::Instant::now);
        // Every log line of the message's processing (the processor's too) carries where
        // it came from and its trace id.
        let span = tracing::info_span!(
            "message",
            topic = %part.id.topic,
            partition = part.id.partition,
            offset,
            trace_id = tracing::field::Empty,
        );
        // A message blocked for a while first commits what the batch already holds: the
        // messages before it are done, and must not wait (or be re-run) with it.
        let mut on_blocked = || end_batch(&out, &mut batch);
        let Some(records) = handle(&shared, &part, &message, &mut on_blocked)
            .instrument(span)
            .await
        else {
            // Stopped mid-retry: this message and the rest stay unfinished.
            break;
        };
        if let Some(started) = started {
            let index = match histograms.iter().position(|(t, _)| *t == part.id.topic) {
                Some(index) => index,
                None => {
                    let topic = part.id.topic.clone();
                    let histogram = metrics::histogram!(names::PROCESSING_SECONDS, "topic" => topic.to_string());
                    histograms.push((topic, histogram));
                    histograms.len() - 1
                }
            };
            histograms[index].1.record(started.elapsed().as_secs_f64());
        }
        if let Some(policy) = batching {
            let open = batch.get_or_insert_with(|| Batch {
                deadline: Instant::now() + policy.max_wait,
                count: 0,
                next: Vec::new(),
            });
            open.count += 1;
            match open.next.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &part)) {
                Some((_, next)) => *next = offset + 1,
                None => open.next.push((part.clone(), offset + 1)),
            }
        }
        match batching {
            None if records.is_empty() => part.finish(offset),
            _ => {
                let _ = out.send(Item::Input {
                    part,
                    offset,
                    records,
                    input: Some(message),
                });
            }
        }
        if let (Some(policy), Some(open)) = (batching, &batch) {
            if open.count >= policy.max_messages.max(1) {
                flush_and_end_batch(&shared, &task, flush_every, &out, &mut batch).await;
            }
        }
    }
    // What was processed of the open batch is committed before the partitions go.
    end_batch(&out, &mut batch);
}

/// Ends the open batch by size or time: first the processor's flush over the batch's
/// partitions (when it flushes), whose records go out before the batch commits.
async fn flush_and_end_batch<P: Processor>(
    shared: &Shared<P>,
    task: &Task,
    flush_every: Option<Duration>,
    out: &mpsc::UnboundedSender<Item>,
    batch: &mut Option<Batch>,
) {
    if let (Some(_), Some(open)) = (flush_every, batch.as_ref()) {
        let partitions: Vec<PartitionId> = open.next.iter().map(|(p, _)| p.id.clone()).collect();
        flush(shared, task, &partitions, out).await;
    }
    end_batch(out, batch);
}

/// Runs the processor's flush over `partitions` and queues its records for delivery.
async fn flush<P: Processor>(
    shared: &Shared<P>,
    task: &Task,
    partitions: &[PartitionId],
    out: &mpsc::UnboundedSender<Item>,
) {
    // An overdue flush right after a freeze would publish values the partitions' new
    // owners may have superseded.
    if !shared.liveness.pass(&task.stop).await {
        return;
    }
    let outputs = std::panic::AssertUnwindSafe(shared.processor.flush(partitions))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            counter!(names::ERRORS, "kind" => "flush_panic").increment(1);
            tracing::error!(panic = %panic_text(&*panic), "Flush panicked; nothing published");
            Vec::new()
        });
    if outputs.is_empty() {
        return;
    }
    let trace = TraceParent::new_root();
    let records = outputs
        .into_iter()
        .map(|o| OutRecord::from_output(o, &trace))
        .collect();
    let _ = out.send(Item::Flush { records });
}

fn end_batch(out: &mpsc::UnboundedSender<Item>, batch: &mut Option<Batch>) {
    if let Some(batch) = batch.take() {
        let _ = out.send(Item::BatchEnd {
            offsets: batch.next,
        });
    }
}

/// Decodes and processes one message with retries; returns the records to publish (the
/// outputs, or a dead letter), or `None` when stopped mid-retry.
async fn handle<P: Processor>(
    shared: &Shared<P>,
    part: &Partition,
    message: &OwnedMessage,
    on_blocked: &mut (dyn FnMut() + Send),
) -> Option<Vec<OutRecord>> {
    // rdkafka panics on a header name that is not UTF-8 (any producer can send one): a
    // bad header must not kill the worker, it only loses the trace it might carry.
    let header_trace = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        message.headers().and_then(|headers| {
            headers.iter().find_map(|h| {
                (h.key == envelope::HEADER_TRACEPARENT || h.key == envelope::HEADER_TRACE)
                    .then(|| h.value.and_then(|v| std::str::from_utf8(v).ok()))
                    .flatten()
                    .and_then(TraceParent::parse)
            })
        })
    }))
    .ok()
    .flatten();
    let envelope = match message.payload() {
        None => None,
        Some(bytes) => match Envelope::decode(bytes) {
            Ok(envelope) => Some(envelope),
            Err(e) => {
                counter!(names::ERRORS, "kind" => e.kind()).increment(1);
                tracing::warn!(error = %e, kind = e.kind(), "Undecodable message; dead-lettering");
                let letter = DeadLetter {
                    kind: e.kind().to_owned(),
                    message: e.to_string(),
                    attempts: 1,
                };
                return Some(vec![dead_letter(shared, message, &letter)]);
            }
        },
    };
    let parent = header_trace.or_else(|| envelope.as_ref().and_then(Envelope::trace_parent));
    let trace = parent.map_or_else(TraceParent::new_root, |p| p.child());
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("trace_id", trace.trace_id_hex());
    }
    let incoming = Incoming {
        topic: part.id.topic.clone(),
        partition: part.id.partition,
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        envelope,
        trace,
    };
    let settings = &shared.settings;
    // Failed attempts (transient and permanent count towards dead-lettering) and blocked
    // ones (which never do) are counted apart.
    let mut attempt: u32 = 1;
    let mut blocked: u32 = 0;
    let outcome = loop {
        // A panicking handler is a bug, but it must not wedge the partition or kill the
        // process in a crash loop: the message is dead-lettered like a permanent failure.
        let result = std::panic::AssertUnwindSafe(shared.processor.process(incoming.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(ProcessError::Permanent(format!(
                    "handler panicked: {}",
                    panic_text(&*panic)
                )))
            });
        let (kind, reason) = match result {
            Ok(outputs) => {
                break Some(
                    outputs
                        .into_iter()
                        .map(|o| OutRecord::from_output(o, &incoming.trace))
                        .collect(),
                );
            }
            Err(ProcessError::Permanent(reason)) => (dlq::KIND_PERMANENT, reason),
            Err(ProcessError::Transient(reason)) if attempt >= settings.max_attempts => {
                counter!(names::ERRORS, "kind" => "transient").increment(1);
                (dlq::KIND_RETRIES_EXHAUSTED, reason)
            }
            Err(ProcessError::Transient(reason)) => {
                counter!(names::ERRORS, "kind" => "transient").increment(1);
                let delay = backoff(settings.backoff, settings.max_backoff, attempt);
                tracing::info!(error = %reason, attempt, delay_ms = delay.as_millis() as u64, "Transient failure; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = part.stop().cancelled() => break None,
                }
                // A freeze during the backoff: the retry waits like any other work.
                if !shared.liveness.pass(part.stop()).await {
                    break None;
                }
                attempt += 1;
                continue;
            }
            Err(ProcessError::Blocked(reason)) => {
                // Not the message's fault: it waits (and the partition behind it) until the
                // instance can process it, however many attempts that takes.
                counter!(names::ERRORS, "kind" => "blocked").increment(1);
                blocked = blocked.saturating_add(1);
                if blocked == 1 {
                    on_blocked();
                }
                let delay = backoff(settings.backoff, settings.max_backoff, blocked);
                if blocked == BLOCKED_STUCK_AFTER || blocked % 100 == 0 {
                    tracing::error!(error = %reason, attempts = blocked, "Processing blocked; retrying until it can go on");
                    part.set_problem(Some(format!("processing blocked: {reason}")));
                } else {
                    tracing::info!(error = %reason, attempts = blocked, delay_ms = delay.as_millis() as u64, "Processing blocked; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = part.stop().cancelled() => break None,
                }
                if !shared.liveness.pass(part.stop()).await {
                    break None;
                }
                continue;
            }
        };
        if kind == dlq::KIND_PERMANENT {
            counter!(names::ERRORS, "kind" => "permanent").increment(1);
        }
        tracing::warn!(error = %reason, attempt, kind, "Processing failed; dead-lettering");
        let letter = DeadLetter {
            kind: kind.to_owned(),
            message: reason,
            attempts: attempt,
        };
        break Some(vec![dead_letter(shared, message, &letter)]);
    };
    // However it ended (processed, dead-lettered, stopped), the message no longer blocks
    // its partition.
    if blocked >= BLOCKED_STUCK_AFTER {
        tracing::info!(attempts = blocked, "Processing unblocked");
        part.set_problem(None);
    }
    outcome
}

fn dead_letter<P>(shared: &Shared<P>, message: &OwnedMessage, letter: &DeadLetter) -> OutRecord {
    counter!(names::DEAD_LETTERS, "kind" => letter.kind.clone()).increment(1);
    shared.health.add_dead_letter();
    record::dead_letter(
        message,
        letter,
        &shared.settings.service,
        &shared.settings.dlq_topic,
    )
}

/// The text of a caught panic.
pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Exponential backoff with full jitter: a random delay in `[d/2, d]`, `d = base·2^(n-1)`.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(max);
    let half = ceiling / 2;
    half + ceiling
        .saturating_sub(half)
        .mul_f64(rand::rng().random::<f64>())
}
