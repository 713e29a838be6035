//! Delivering a task's outputs in order, and finishing its offsets only when they are.
//!
//! One sender per task (a partition, or partition p of every co-partitioned input) owns a
//! queue of the task's inputs with their records, in processing order. It hands new records to the producer as they come (so many are in
//! flight at once) and walks the queue from the front, one acknowledgement at a time:
//!
//! - **acknowledged**: the next record; an input whose records are all acknowledged is
//!   finished (or, for a batching processor, joins the batch that the next `BatchEnd`
//!   commits);
//! - **retriable failure** (timeout, broker away): the partition stops sending, waits until
//!   every record still in flight has settled, backs off, then sends again *everything from
//!   the failed record on*, in the original order, including records that were
//!   acknowledged after it. The newest value of a key is therefore always written last, so
//!   on a compacted topic a stale value can never win; the price is a duplicate, which the
//!   suite's outputs (keyed upserts with stable ids) tolerate. After three failed rounds the
//!   partition shows as stuck in `/status` and `/readyz`;
//! - **refused for good** (too large, unknown or unauthorized topic): an output's input is
//!   dead-lettered in its place; a dead letter that is too large is cut down in stages, with
//!   a `dlq.truncated` header saying what was cut;
//! - **fatal** (the idempotent producer is fenced or in a fatal state, the dead-letter topic
//!   refuses records): the service stops with an error, so the orchestrator restarts it.
//!
//! When a revocation's deadline passes, the sender is abandoned: it stops re-sending at
//! once, and the partition's unfinished offsets stay uncommitted for the next owner.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use metrics::counter;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use tokio::sync::mpsc;
use tributary_events::TraceParent;

use super::Shared;
use super::partition::{Partition, Task};
use super::record::{self, Kind, OutRecord};
use super::worker::backoff;
use crate::dlq::{self, DeadLetter};
use crate::metrics::names;
use crate::processor::{Output, PartitionId, ProcessError, Processor};

/// What the worker hands to the sender, in offset order.
#[derive(Debug)]
pub(crate) enum Item {
    /// The records produced for one input (its outputs, or its dead letter).
    Input {
        /// The input's partition.
        part: Arc<Partition>,
        offset: i64,
        records: Vec<OutRecord>,
        /// The input itself, to dead-letter should the broker refuse one of its outputs.
        input: Option<OwnedMessage>,
    },
    /// The end of a batch: commit it once every earlier record is acknowledged. The next
    /// offset of each partition the batch touched.
    BatchEnd { offsets: Vec<(Arc<Partition>, i64)> },
    /// Records from [`Processor::flush`](crate::Processor::flush), tied to no input offset:
    /// acknowledged in order with the rest, before the batch end that follows them.
    Flush { records: Vec<OutRecord> },
}

/// What the broker's answer to a failed record means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// May succeed later.
    Retriable,
    /// This record will never be accepted; `too_large` when its size is the reason.
    Refused { too_large: bool },
    /// The producer cannot go on.
    Fatal,
}

/// Classifies a produce error (at enqueue or in a delivery report).
pub(crate) fn classify(error: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    let Some(code) = error.rdkafka_error_code() else {
        // A cancelled delivery (the producer was dropped with it): send it again.
        return Failure::Retriable;
    };
    match code {
        // Purged (a lost assignment, a freeze): sent again in order if the partition stays.
        C::PurgeQueue | C::PurgeInflight => Failure::Retriable,
        C::Fatal
        | C::Fenced
        | C::ProducerFenced
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => Failure::Fatal,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            Failure::Refused { too_large: true }
        }
        C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::TopicAuthorizationFailed
        | C::InvalidTopic
        | C::InvalidRecord
        | C::PolicyViolation => Failure::Refused { too_large: false },
        _ => Failure::Retriable,
    }
}

/// Why a pipeline stopped before its queue was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The revocation or shutdown deadline passed.
    Abandoned,
    /// The service is stopping with an error.
    Fatal,
}

enum Slot {
    Pending(DeliveryFuture),
    Failed(KafkaError),
    Acked,
}

struct Rec {
    record: OutRecord,
    slot: Slot,
}

enum Entry {
    Input {
        /// `None` for outputs without an input (`on_tick`).
        part: Option<Arc<Partition>>,
        offset: i64,
        input: Option<OwnedMessage>,
        recs: Vec<Rec>,
    },
    BatchEnd {
        offsets: Vec<(Arc<Partition>, i64)>,
    },
}

/// Whose records a pipeline carries.
enum Owner {
    Task(Arc<Task>),
    /// `on_tick` outputs: no offsets, no batches.
    Tick,
}

/// What one step of the pipeline did.
enum Progress {
    Moved,
    Received(Option<Item>),
}

/// Counts a record acknowledged on `topic` in `sent`.
fn count_sent(sent: &mut Vec<(String, metrics::Counter)>, topic: &str) {
    match sent.iter().find(|(t, _)| t == topic) {
        Some((_, c)) => c.increment(1),
        None => {
            let c = counter!(names::MESSAGES_OUT, "topic" => topic.to_owned());
            c.increment(1);
            sent.push((topic.to_owned(), c));
        }
    }
}

struct Pipeline<'a, P> {
    shared: &'a Shared<P>,
    owner: Owner,
    queue: VecDeque<Entry>,
    /// Finished inputs of the open batch, finished in their trackers when it commits.
    batch: Vec<(Arc<Partition>, i64)>,
    /// Consecutive rounds of retriable failures.
    failures: u32,
    /// `messages_out` per topic, registered once (a labelled lookup per record showed in
    /// profiles).
    sent: Vec<(String, metrics::Counter)>,
}

impl<'a, P: Processor> Pipeline<'a, P> {
    fn new(shared: &'a Shared<P>, owner: Owner) -> Pipeline<'a, P> {
        Pipeline {
            shared,
            owner,
            queue: VecDeque::new(),
            batch: Vec::new(),
            failures: 0,
            sent: Vec::new(),
        }
    }

    fn abandoned(&self) -> &tokio_util::sync::CancellationToken {
        match &self.owner {
            Owner::Task(task) => &task.abandon,
            Owner::Tick => &self.shared.tick_abandon,
        }
    }

    fn set_problem(&self, problem: Option<String>) {
        match &self.owner {
            Owner::Task(task) => task.set_problem(problem),
            Owner::Tick => self.shared.health.set_blocker("tick outputs", problem),
        }
    }

    /// Hands `record` to the producer, waiting while its queue is full (back-pressure).
    /// Refuses once the pipeline is abandoned: nothing of a partition handed over (or of a
    /// stop past its deadline) may reach the producer after that, however many records a
    /// re-send still had to go.
    async fn send(&self, record: &OutRecord) -> Result<Slot, Stop> {
        // After a freeze, the partition may be someone else's already (see `liveness`).
        if !self.shared.liveness.pass(self.abandoned()).await {
            return Err(Stop::Abandoned);
        }
        loop {
            if self.abandoned().is_cancelled() {
                return Err(Stop::Abandoned);
            }
            let headers = crate::kafka::owned_headers(
                record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice())),
            );
            let mut future_record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&record.topic).headers(headers);
            if let Some(key) = &record.key {
                future_record = future_record.key(key);
            }
            if let Some(value) = &record.value {
                future_record = future_record.payload(value);
            }
            match self.shared.producer.send_result(future_record) {
                Ok(delivery) => return Ok(Slot::Pending(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                        _ = self.abandoned().cancelled() => return Err(Stop::Abandoned),
                    }
                    // A freeze while the queue was full: the purge that follows it empties
                    // the queue, and this record must not slip in during the hold.
                    if !self.shared.liveness.pass(self.abandoned()).await {
                        return Err(Stop::Abandoned);
                    }
                }
                Err((error, _)) => return Ok(Slot::Failed(error)),
            }
        }
    }

    /// Sends `records` in order.
    async fn send_all(&mut self, records: Vec<OutRecord>) -> Result<Vec<Rec>, Stop> {
        let mut recs = Vec::with_capacity(records.len());
        for record in records {
            let slot = self.send(&record).await?;
            recs.push(Rec { record, slot });
        }
        Ok(recs)
    }

    async fn push(&mut self, item: Item) -> Result<(), Stop> {
        let entry = match item {
            Item::Input {
                part,
                offset,
                records,
                input,
            } => Entry::Input {
                part: Some(part),
                offset,
                input,
                recs: self.send_all(records).await?,
            },
            Item::BatchEnd { offsets } => Entry::BatchEnd { offsets },
            Item::Flush { records } => Entry::Input {
                part: None,
                offset: -1,
                input: None,
                recs: self.send_all(records).await?,
            },
        };
        self.queue.push_back(entry);
        Ok(())
    }

    /// Moves the front of the queue one step (or receives a new item from `rx`).
    async fn step(
        &mut self,
        rx: Option<&mut mpsc::UnboundedReceiver<Item>>,
    ) -> Result<Progress, Stop> {
        let abandon = self.abandoned().clone();
        let index = match self.queue.front_mut() {
            None => return Ok(Progress::Moved),
            Some(Entry::BatchEnd { offsets }) => {
                let offsets = offsets.clone();
                self.commit_batch(&offsets).await?;
                self.queue.pop_front();
                return Ok(Progress::Moved);
            }
            Some(Entry::Input {
                part, offset, recs, ..
            }) => {
                let offset = *offset;
                let Some(index) = recs.iter().position(|r| !matches!(r.slot, Slot::Acked)) else {
                    let part = part.clone();
                    self.queue.pop_front();
                    self.finished(part, offset);
                    return Ok(Progress::Moved);
                };
                if let Slot::Pending(delivery) = &mut recs[index].slot {
                    let received = async {
                        match rx {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    let result = tokio::select! {
                        biased;
                        _ = abandon.cancelled() => return Err(Stop::Abandoned),
                        result = delivery => result,
                        item = received => return Ok(Progress::Received(item)),
                    };
                    match result {
                        Ok(Ok(_)) => {
                            count_sent(&mut self.sent, &recs[index].record.topic);
                            let rec = &mut recs[index];
                            rec.slot = Slot::Acked;
                            if self.failures > 0 {
                                self.failures = 0;
                                self.set_problem(None);
                                tracing::info!("Deliveries succeed again");
                            }
                            return Ok(Progress::Moved);
                        }
                        Ok(Err((error, _))) => recs[index].slot = Slot::Failed(error),
                        Err(_) => recs[index].slot = Slot::Failed(KafkaError::Canceled),
                    }
                }
                index
            }
        };
        self.failed(index).await?;
        Ok(Progress::Moved)
    }

    /// The front input's record at `index` failed: retry, replace or stop, by the error.
    async fn failed(&mut self, index: usize) -> Result<(), Stop> {
        let Some(Entry::Input { input, recs, .. }) = self.queue.front_mut() else {
            return Ok(());
        };
        let rec = &mut recs[index];
        let Slot::Failed(error) = &rec.slot else {
            return Ok(());
        };
        let error = error.clone();
        let failure = if self.shared.producer.client().fatal_error().is_some() {
            Failure::Fatal
        } else {
            classify(&error)
        };
        match failure {
            Failure::Fatal => {
                let reason = match self.shared.producer.client().fatal_error() {
                    Some((code, text)) => format!("producer fatal error {code:?}: {text}"),
                    None => format!("producer error on {}: {error}", rec.record.topic),
                };
                self.shared.fail(reason);
                Err(Stop::Fatal)
            }
            Failure::Refused { too_large } => {
                counter!(names::ERRORS, "kind" => "output_rejected").increment(1);
                let replacement = match rec.record.kind {
                    Kind::DeadLetter(_) if too_large => rec.record.truncated(),
                    Kind::DeadLetter(_) => None,
                    Kind::Output => {
                        let letter = DeadLetter {
                            kind: dlq::KIND_OUTPUT_REJECTED.to_owned(),
                            message: format!(
                                "output to {} refused by the broker: {error}",
                                rec.record.topic
                            ),
                            attempts: 1,
                        };
                        let settings = &self.shared.settings;
                        counter!(names::DEAD_LETTERS, "kind" => dlq::KIND_OUTPUT_REJECTED)
                            .increment(1);
                        self.shared.health.add_dead_letter();
                        Some(match input {
                            Some(input) => record::dead_letter(
                                input,
                                &letter,
                                &settings.service,
                                &settings.dlq_topic,
                            ),
                            None => record::dead_letter_of_output(
                                &rec.record,
                                &letter,
                                &settings.service,
                                &settings.dlq_topic,
                            ),
                        })
                    }
                };
                match replacement {
                    Some(replacement) => {
                        tracing::warn!(error = %error, topic = %rec.record.topic, to = %replacement.topic, "Record refused by the broker; sending a dead letter in its place");
                        let slot = self.send(&replacement).await?;
                        let Some(Entry::Input { recs, .. }) = self.queue.front_mut() else {
                            return Ok(());
                        };
                        recs[index] = Rec {
                            record: replacement,
                            slot,
                        };
                        Ok(())
                    }
                    None => {
                        self.shared.fail(format!(
                            "dead-letter topic {} refuses records: {error}",
                            rec.record.topic
                        ));
                        Err(Stop::Fatal)
                    }
                }
            }
            Failure::Retriable => self.recover(index, &error).await,
        }
    }

    /// A retriable failure at the front's record `index`: settle, back off, send again in
    /// order from that record on.
    async fn recover(&mut self, index: usize, error: &KafkaError) -> Result<(), Stop> {
        self.failures += 1;
        counter!(names::DELIVERY_RETRIES).increment(1);
        let topic = match self.queue.front() {
            Some(Entry::Input { recs, .. }) => recs[index].record.topic.clone(),
            _ => String::new(),
        };
        tracing::warn!(error = %error, topic = %topic, attempt = self.failures, "Delivery failed; re-sending in order");
        if self.failures >= 3 {
            self.set_problem(Some(format!(
                "delivery to {topic} failing after {} attempts: {error}",
                self.failures
            )));
        }
        // Settle: nothing is sent again while an earlier send may still land after it.
        let abandon = self.abandoned().clone();
        for entry in &mut self.queue {
            let Entry::Input { recs, .. } = entry else {
                continue;
            };
            for rec in recs.iter_mut() {
                if let Slot::Pending(delivery) = &mut rec.slot {
                    let result = tokio::select! {
                        biased;
                        _ = abandon.cancelled() => return Err(Stop::Abandoned),
                        result = delivery => result,
                    };
                    rec.slot = match result {
                        Ok(Ok(_)) => Slot::Acked,
                        Ok(Err((error, _))) => Slot::Failed(error),
                        Err(_) => Slot::Failed(KafkaError::Canceled),
                    };
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(Duration::from_millis(100), Duration::from_secs(5), self.failures)) => {}
            _ = abandon.cancelled() => return Err(Stop::Abandoned),
        }
        // Everything from the failed record on goes out again, in order.
        let mut resend = Vec::new();
        for (e, entry) in self.queue.iter().enumerate() {
            if let Entry::Input { recs, .. } = entry {
                let from = if e == 0 { index } else { 0 };
                for (r, rec) in recs.iter().enumerate().skip(from) {
                    resend.push((e, r, rec.record.clone()));
                }
            }
        }
        for (e, r, record) in resend {
            let slot = self.send(&record).await?;
            if let Some(Entry::Input { recs, .. }) = self.queue.get_mut(e) {
                recs[r].slot = slot;
            }
        }
        Ok(())
    }

    fn finished(&mut self, part: Option<Arc<Partition>>, offset: i64) {
        if let Some(part) = part {
            if self.shared.batching.is_some() {
                self.batch.push((part, offset));
            } else {
                part.finish(offset);
            }
        }
    }

    /// Commits the open batch through the processor, then finishes its offsets.
    async fn commit_batch(&mut self, offsets: &[(Arc<Partition>, i64)]) -> Result<(), Stop> {
        let Owner::Task(task) = &self.owner else {
            return Ok(());
        };
        let task = task.clone();
        let ids: Vec<(PartitionId, i64)> = offsets
            .iter()
            .map(|(part, next)| (part.id.clone(), *next))
            .collect();
        let names = ids
            .iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A frozen instance does not write state (or its changelog) for partitions it
            // may have lost.
            if !self.shared.liveness.pass(&task.abandon).await {
                return Err(Stop::Abandoned);
            }
            let result = std::panic::AssertUnwindSafe(self.shared.processor.commit_batch(&ids))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(ProcessError::Permanent(format!(
                        "commit_batch panicked: {}",
                        super::worker::panic_text(&*panic)
                    )))
                });
            match result {
                Ok(()) => {
                    if attempt > 1 {
                        task.set_problem(None);
                    }
                    for (part, offset) in self.batch.drain(..) {
                        part.finish(offset);
                    }
                    return Ok(());
                }
                Err(ProcessError::Transient(reason) | ProcessError::Blocked(reason)) => {
                    counter!(names::ERRORS, "kind" => "commit_batch").increment(1);
                    tracing::warn!(error = %reason, partitions = %names, attempt, "Batch commit failed; retrying");
                    if attempt >= 3 {
                        task.set_problem(Some(format!(
                            "batch commit failing after {attempt} attempts: {reason}"
                        )));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(self.shared.settings.backoff, self.shared.settings.max_backoff, attempt)) => {}
                        _ = task.abandon.cancelled() => return Err(Stop::Abandoned),
                    }
                }
                Err(ProcessError::Permanent(reason)) => {
                    self.shared
                        .fail(format!("batch commit of {names} failed: {reason}"));
                    return Err(Stop::Fatal);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The sender of one task: runs until the worker closed its end and every record is
/// acknowledged, or until abandoned or stopped by a fatal error.
pub(crate) async fn run<P: Processor>(
    shared: Arc<Shared<P>>,
    task: Arc<Task>,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let mut pipeline = Pipeline::new(&shared, Owner::Task(task.clone()));
    let mut open = true;
    loop {
        let progress = if pipeline.is_empty() {
            if !open {
                break;
            }
            tokio::select! {
                biased;
                _ = task.abandon.cancelled() => break,
                item = rx.recv() => Ok(Progress::Received(item)),
            }
        } else {
            pipeline.step(open.then_some(&mut rx)).await
        };
        let pushed = match progress {
            Ok(Progress::Moved) => Ok(()),
            Ok(Progress::Received(Some(item))) => pipeline.push(item).await,
            Ok(Progress::Received(None)) => {
                open = false;
                Ok(())
            }
            Err(stop) => Err(stop),
        };
        if pushed.is_err() {
            break;
        }
    }
}

/// Publishes outputs that have no input (`on_tick`), in order, with the same failure
/// handling as a partition's outputs; returns once all are acknowledged.
pub(crate) async fn publish<P: Processor>(
    shared: &Shared<P>,
    outputs: Vec<Output>,
) -> Result<(), Stop> {
    let trace = TraceParent::new_root();
    let records: Vec<OutRecord> = outputs
        .into_iter()
        .map(|o| OutRecord::from_output(o, &trace))
        .collect();
    let mut pipeline = Pipeline::new(shared, Owner::Tick);
    let mut recs = Vec::with_capacity(records.len());
    for record in records {
        let slot = pipeline.send(&record).await?;
        recs.push(Rec { record, slot });
    }
    pipeline.queue.push_back(Entry::Input {
        part: None,
        offset: -1,
        input: None,
        recs,
    });
    while !pipeline.is_empty() {
        pipeline.step(None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_errors_are_classified_by_what_a_retry_can_do() {
        let e = |code| KafkaError::MessageProduction(code);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut)),
            Failure::Retriable
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::NotEnoughReplicas)),
            Failure::Retriable
        );
        assert_eq!(classify(&KafkaError::Canceled), Failure::Retriable);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::PurgeQueue)),
            Failure::Retriable
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::PurgeInflight)),
            Failure::Retriable
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::Refused { too_large: true }
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition)),
            Failure::Refused { too_large: false }
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Refused { too_large: false }
        );
        assert_eq!(classify(&e(RDKafkaErrorCode::Fatal)), Failure::Fatal);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::ProducerFenced)),
            Failure::Fatal
        );
    }
}
