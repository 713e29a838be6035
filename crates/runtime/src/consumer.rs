//! The consumer loop: poll, route, process, produce, commit — with the guarantees of the
//! crate documentation.
//!
//! Threads and tasks:
//! - one **poll thread** owns the `BaseConsumer`: it only polls, routes messages to their
//!   partition's worker, pauses and resumes partitions for back-pressure, and commits. It is
//!   never blocked by processing, so the consumer cannot silently leave its group;
//!   rebalance callbacks run here and may wait for revoked partitions to drain, which is safe
//!   because workers never need this thread;
//! - one **worker task per assigned partition** processes its messages in offset order and
//!   enqueues their outputs without waiting for acknowledgements;
//! - one **completion task per message with outputs** awaits their acknowledgements
//!   (re-sending on failure) and only then marks the offset finished in the watermark.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use metrics::{Counter, Histogram, counter, gauge, histogram};
use rand::Rng;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tributary_events::{Envelope, TraceParent, envelope};

use crate::admin::{Health, PartitionStatus};
use crate::dlq::{self, DeadLetter};
use crate::metrics::names;
use crate::processor::{Incoming, Output, ProcessError, Processor};

/// Loop settings derived from the runtime config.
#[derive(Debug, Clone)]
pub(crate) struct LoopSettings {
    pub(crate) service: String,
    pub(crate) dlq_topic: String,
    pub(crate) max_in_flight: usize,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
}

type Key = (Arc<str>, i32);

/// One assigned partition.
struct PartitionCtl {
    topic: Arc<str>,
    partition: i32,
    tracker: Mutex<crate::offsets::OffsetTracker>,
    tx: mpsc::UnboundedSender<OwnedMessage>,
    /// Read and not finished (queued, processing, or awaiting acks).
    in_flight: AtomicUsize,
    /// Completion tasks still awaiting acknowledgements.
    completions: AtomicUsize,
    worker_done: AtomicBool,
    paused: AtomicBool,
    revoked: CancellationToken,
    high_watermark: AtomicI64,
    messages_in: Counter,
    processing: Histogram,
}

impl PartitionCtl {
    fn tracker(&self) -> MutexGuard<'_, crate::offsets::OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drained(&self) -> bool {
        self.worker_done.load(Ordering::Acquire) && self.completions.load(Ordering::Acquire) == 0
    }

    fn finish(&self, offset: i64) {
        self.tracker().complete(offset);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn status(&self) -> PartitionStatus {
        let position = self.tracker().watermark();
        let hw = self.high_watermark.load(Ordering::Relaxed);
        let high_watermark = (hw >= 0).then_some(hw);
        PartitionStatus {
            topic: self.topic.to_string(),
            partition: self.partition,
            position,
            high_watermark,
            lag: high_watermark.map(|hw| (hw - position.unwrap_or(0)).max(0)),
            in_flight: self.in_flight.load(Ordering::Acquire),
        }
    }
}

/// A record to publish, kept until acknowledged so a failed delivery can be re-sent.
#[derive(Debug, Clone)]
struct OutRecord {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl OutRecord {
    fn from_output(output: Output, trace: &TraceParent) -> OutRecord {
        match output {
            Output::Event {
                topic,
                mut envelope,
            } => {
                if envelope.trace.is_none() {
                    envelope.trace = Some(trace.to_string());
                }
                OutRecord {
                    topic,
                    key: Some(envelope.key.clone().into_bytes()),
                    value: Some(envelope.encode()),
                    headers: envelope
                        .headers()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                        .collect(),
                }
            }
            Output::Tombstone { topic, key } => OutRecord {
                topic,
                key: Some(key.into_bytes()),
                value: None,
                headers: vec![(
                    envelope::HEADER_TRACEPARENT.to_owned(),
                    trace.to_string().into_bytes(),
                )],
            },
        }
    }
}

/// State shared by the poll thread, the workers and the rebalance callbacks.
pub(crate) struct Shared<P> {
    settings: LoopSettings,
    processor: Arc<P>,
    producer: FutureProducer,
    health: Health,
    runtime: tokio::runtime::Handle,
    shutdown: crate::Shutdown,
    partitions: Mutex<HashMap<Key, Arc<PartitionCtl>>>,
}

impl<P: Processor> Shared<P> {
    pub(crate) fn new(
        settings: LoopSettings,
        processor: Arc<P>,
        producer: FutureProducer,
        health: Health,
        shutdown: crate::Shutdown,
    ) -> Arc<Shared<P>> {
        Arc::new(Shared {
            settings,
            processor,
            producer,
            health,
            runtime: tokio::runtime::Handle::current(),
            shutdown,
            partitions: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes records not tied to an input offset (from `on_tick`), waiting for acks.
    pub(crate) async fn publish(&self, outputs: Vec<Output>) {
        let trace = TraceParent::new_root();
        for output in outputs {
            let record = OutRecord::from_output(output, &trace);
            let delivery = enqueue(self, &record).await;
            await_delivery(self, record, delivery).await;
        }
    }

    fn partitions(&self) -> MutexGuard<'_, HashMap<Key, Arc<PartitionCtl>>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn all(&self) -> Vec<Arc<PartitionCtl>> {
        self.partitions().values().cloned().collect()
    }

    /// Hands a message to its partition's worker, recording it as in flight first so the
    /// watermark can never pass it; pauses the partition the moment its budget is full.
    fn route<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        message: OwnedMessage,
        cache: &mut Option<Arc<PartitionCtl>>,
    ) {
        let hit = cache
            .as_ref()
            .is_some_and(|c| c.partition == message.partition() && *c.topic == *message.topic());
        if !hit {
            let key: Key = (Arc::from(message.topic()), message.partition());
            *cache = self.partitions().get(&key).cloned();
        }
        let Some(ctl) = cache.as_ref() else {
            // A message for a partition we no longer own: the new owner will read it.
            return;
        };
        ctl.tracker().begin(message.offset());
        let in_flight = ctl.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        ctl.messages_in.increment(1);
        if ctl.tx.send(message).is_err() {
            // The worker is gone (revoked): leave the offset unfinished, uncommitted.
            ctl.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if in_flight >= self.settings.max_in_flight.max(1) && !ctl.paused.load(Ordering::Acquire) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&ctl.topic, ctl.partition);
            // Pausing also drops what librdkafka prefetched for it, so the budget holds.
            if consumer.pause(&tpl).is_ok() {
                ctl.paused.store(true, Ordering::Release);
            }
        }
    }

    /// Resumes partitions paused by [`route`](Self::route) once half their budget drained
    /// (hysteresis: pausing discards prefetched messages, so it must not flap).
    fn apply_backpressure<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let max = self.settings.max_in_flight.max(1);
        let mut total = 0;
        for ctl in self.all() {
            let in_flight = ctl.in_flight.load(Ordering::Acquire);
            total += in_flight;
            let resumable = ctl.paused.load(Ordering::Acquire)
                && in_flight <= max / 2
                && !self.shutdown.is_triggered();
            if resumable {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&ctl.topic, ctl.partition);
                // Resuming refetches from the position after the last message we received.
                if consumer.resume(&tpl).is_ok() {
                    ctl.paused.store(false, Ordering::Release);
                    tracing::debug!(topic = %ctl.topic, partition = ctl.partition, in_flight, "Resumed");
                }
            }
        }
        gauge!(names::IN_FLIGHT).set(total as f64);
    }

    /// Commits the watermark of `only` (or of every partition), synchronously.
    fn commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        only: Option<&[Arc<PartitionCtl>]>,
    ) {
        let ctls = only.map_or_else(|| self.all(), <[_]>::to_vec);
        let mut tpl = TopicPartitionList::new();
        let mut offsets = Vec::new();
        for ctl in &ctls {
            if let Some(offset) = ctl.tracker().to_commit() {
                if tpl
                    .add_partition_offset(&ctl.topic, ctl.partition, Offset::Offset(offset))
                    .is_ok()
                {
                    offsets.push((ctl.clone(), offset));
                }
            }
        }
        if offsets.is_empty() {
            return;
        }
        let started = Instant::now();
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                histogram!(names::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                for (ctl, offset) in offsets {
                    ctl.tracker().committed(offset);
                }
            }
            Err(e) => {
                counter!(names::ERRORS, "kind" => "commit").increment(1);
                tracing::warn!(error = %e, "Commit failed; retrying at the next interval");
            }
        }
    }

    fn publish_status(&self) {
        let mut statuses: Vec<PartitionStatus> = self.all().iter().map(|c| c.status()).collect();
        statuses.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        for s in &statuses {
            if let Some(lag) = s.lag {
                gauge!(names::LAG, "topic" => s.topic.clone(), "partition" => s.partition.to_string())
                    .set(lag as f64);
            }
        }
        self.health.set_partitions(statuses);
    }

    fn assign<C: ConsumerContext>(
        self: &Arc<Self>,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) {
        // Seed each partition's position with its committed offset, so status and lag are
        // right before the first message arrives.
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .ok();
        let mut assigned = Vec::new();
        for elem in tpl.elements() {
            let topic: Arc<str> = Arc::from(elem.topic());
            let start = committed
                .as_ref()
                .and_then(|c| c.find_partition(elem.topic(), elem.partition()))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let (tx, rx) = mpsc::unbounded_channel();
            let ctl = Arc::new(PartitionCtl {
                topic: topic.clone(),
                partition: elem.partition(),
                tracker: Mutex::new(crate::offsets::OffsetTracker::starting_at(start)),
                tx,
                in_flight: AtomicUsize::new(0),
                completions: AtomicUsize::new(0),
                worker_done: AtomicBool::new(false),
                paused: AtomicBool::new(false),
                revoked: CancellationToken::new(),
                high_watermark: AtomicI64::new(-1),
                messages_in: counter!(names::MESSAGES_IN, "topic" => topic.to_string()),
                processing: histogram!(names::PROCESSING_SECONDS, "topic" => topic.to_string()),
            });
            self.partitions()
                .insert((topic.clone(), elem.partition()), ctl.clone());
            assigned.push((topic.to_string(), elem.partition()));
            self.runtime.spawn(worker(self.clone(), ctl, rx));
        }
        counter!(names::REBALANCES, "kind" => "assign").increment(1);
        tracing::info!(partitions = ?assigned, "Partitions assigned");
        self.processor.on_assigned(&assigned);
        self.publish_status();
    }

    fn revoke<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, tpl: &TopicPartitionList) {
        let revoked: Vec<Arc<PartitionCtl>> = {
            let mut map = self.partitions();
            tpl.elements()
                .iter()
                .filter_map(|e| map.remove(&(Arc::from(e.topic()), e.partition())))
                .collect()
        };
        if revoked.is_empty() {
            return;
        }
        for ctl in &revoked {
            ctl.revoked.cancel();
        }
        // Let in-flight work of revoked partitions finish and commit it, so the next owner
        // starts exactly after it. Blocking here is safe: workers never need this thread.
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        while !revoked.iter().all(|c| c.drained()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.commit(consumer, Some(&revoked));
        let list: Vec<(String, i32)> = revoked
            .iter()
            .map(|c| (c.topic.to_string(), c.partition))
            .collect();
        counter!(names::REBALANCES, "kind" => "revoke").increment(1);
        tracing::info!(partitions = ?list, "Partitions revoked");
        self.processor.on_revoked(&list);
        self.publish_status();
    }
}

/// Processes one partition's messages in order until the partition is revoked or its
/// queue closes.
async fn worker<P: Processor>(
    shared: Arc<Shared<P>>,
    ctl: Arc<PartitionCtl>,
    mut rx: mpsc::UnboundedReceiver<OwnedMessage>,
) {
    loop {
        // On revoke or shutdown, stop after the message in hand: messages queued but not
        // started stay uncommitted and go to whoever reads the partition next, which keeps
        // the stop time bounded by one message, not by the prefetched backlog.
        let message = tokio::select! {
            biased;
            _ = ctl.revoked.cancelled() => None,
            _ = shared.shutdown.wait() => None,
            message = rx.recv() => message,
        };
        match message {
            Some(message) => handle(&shared, &ctl, message).await,
            None => break,
        }
    }
    // Whatever is still queued stays unfinished: the watermark stops before it.
    drop(rx);
    ctl.worker_done.store(true, Ordering::Release);
}

/// Why a message is not finished by this instance.
enum Abandon {
    /// Revoked or shutting down mid-retry: leave it for the next owner.
    Stopped,
}

async fn handle<P: Processor>(
    shared: &Arc<Shared<P>>,
    ctl: &Arc<PartitionCtl>,
    message: OwnedMessage,
) {
    let started = Instant::now();
    let offset = message.offset();
    let key = message.key().map(<[u8]>::to_vec);
    let span = tracing::info_span!(
        "message",
        topic = %ctl.topic,
        partition = ctl.partition,
        offset,
        key = key.as_deref().map(String::from_utf8_lossy).as_deref().unwrap_or(""),
        trace_id = tracing::field::Empty,
    );
    let outcome = process_one(shared, ctl, &message, key)
        .instrument(span.clone())
        .await;
    let records = match outcome {
        Ok(records) => records,
        Err(Abandon::Stopped) => {
            // Not finished: never committed, reprocessed by whoever owns it next.
            ctl.in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    };
    if records.is_empty() {
        ctl.processing.record(started.elapsed().as_secs_f64());
        ctl.finish(offset);
        return;
    }
    // Enqueue in order now (per-partition output order follows input order); await the
    // acknowledgements elsewhere so the next message can start.
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let delivery = enqueue(shared, &record).await;
        pending.push((record, delivery));
    }
    ctl.completions.fetch_add(1, Ordering::AcqRel);
    let shared = shared.clone();
    let ctl = ctl.clone();
    tokio::spawn(
        async move {
            for (record, delivery) in pending {
                await_delivery(&shared, record, delivery).await;
            }
            ctl.processing.record(started.elapsed().as_secs_f64());
            ctl.finish(offset);
            ctl.completions.fetch_sub(1, Ordering::AcqRel);
        }
        .instrument(span),
    );
}

/// Decodes and processes one message with retries; returns the records to publish (the
/// outputs, or the dead letter).
async fn process_one<P: Processor>(
    shared: &Arc<Shared<P>>,
    ctl: &Arc<PartitionCtl>,
    message: &OwnedMessage,
    key: Option<Vec<u8>>,
) -> Result<Vec<OutRecord>, Abandon> {
    let header_trace = message.headers().and_then(|headers| {
        headers.iter().find_map(|h| {
            (h.key == envelope::HEADER_TRACEPARENT || h.key == envelope::HEADER_TRACE)
                .then(|| h.value.and_then(|v| std::str::from_utf8(v).ok()))
                .flatten()
                .and_then(TraceParent::parse)
        })
    });
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
                return Ok(vec![dead_letter(shared, ctl, message, &letter)]);
            }
        },
    };
    let parent = header_trace.or_else(|| envelope.as_ref().and_then(Envelope::trace_parent));
    let trace = parent.map_or_else(TraceParent::new_root, |p| p.child());
    tracing::Span::current().record("trace_id", trace.trace_id_hex());
    let incoming = Incoming {
        topic: ctl.topic.clone(),
        partition: ctl.partition,
        offset: message.offset(),
        key,
        envelope,
        trace,
    };
    let settings = &shared.settings;
    let mut attempt = 1;
    loop {
        // A panicking handler is a bug, but it must not wedge the partition or kill the
        // process in a crash loop: the message is dead-lettered like a permanent failure.
        let result = std::panic::AssertUnwindSafe(shared.processor.process(incoming.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".to_owned());
                Err(ProcessError::Permanent(format!("handler panicked: {text}")))
            });
        match result {
            Ok(outputs) => {
                return Ok(outputs
                    .into_iter()
                    .map(|o| OutRecord::from_output(o, &trace))
                    .collect());
            }
            Err(ProcessError::Permanent(reason)) => {
                counter!(names::ERRORS, "kind" => "permanent").increment(1);
                tracing::warn!(error = %reason, attempt, "Permanent failure; dead-lettering");
                let letter = DeadLetter {
                    kind: dlq::KIND_PERMANENT.to_owned(),
                    message: reason,
                    attempts: attempt,
                };
                return Ok(vec![dead_letter(shared, ctl, message, &letter)]);
            }
            Err(ProcessError::Transient(reason)) => {
                counter!(names::ERRORS, "kind" => "transient").increment(1);
                if attempt >= settings.max_attempts {
                    tracing::warn!(error = %reason, attempt, "Retries exhausted; dead-lettering");
                    let letter = DeadLetter {
                        kind: dlq::KIND_RETRIES_EXHAUSTED.to_owned(),
                        message: reason,
                        attempts: attempt,
                    };
                    return Ok(vec![dead_letter(shared, ctl, message, &letter)]);
                }
                let delay = backoff(settings.backoff, settings.max_backoff, attempt);
                tracing::info!(error = %reason, attempt, delay_ms = delay.as_millis() as u64, "Transient failure; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctl.revoked.cancelled() => return Err(Abandon::Stopped),
                    _ = shared.shutdown.wait() => return Err(Abandon::Stopped),
                }
                attempt += 1;
            }
        }
    }
}

/// Exponential backoff with full jitter: a random delay in `[d/2, d]`, `d = base·2^(n-1)`.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(max);
    let half = ceiling / 2;
    half + ceiling
        .saturating_sub(half)
        .mul_f64(rand::rng().random::<f64>())
}

fn dead_letter<P>(
    shared: &Shared<P>,
    ctl: &PartitionCtl,
    message: &OwnedMessage,
    letter: &DeadLetter,
) -> OutRecord {
    counter!(names::DEAD_LETTERS, "kind" => letter.kind.clone()).increment(1);
    shared.health.add_dead_letter();
    // The original bytes and headers, untouched, then the dlq.* headers.
    let mut headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    headers.extend(
        dlq::headers(
            letter,
            &shared.settings.service,
            &ctl.topic,
            ctl.partition,
            message.offset(),
        )
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes())),
    );
    OutRecord {
        topic: shared.settings.dlq_topic.clone(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Enqueues a record on the producer, waiting while its queue is full (back-pressure).
async fn enqueue<P>(shared: &Shared<P>, record: &OutRecord) -> DeliveryFuture {
    loop {
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
        match shared.producer.send_result(future_record) {
            Ok(delivery) => return delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => {
                counter!(names::ERRORS, "kind" => "produce").increment(1);
                tracing::warn!(error = %error, topic = %record.topic, "Cannot enqueue; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Awaits one acknowledgement, re-sending until the broker takes the record: a broker
/// outage pauses the partition's progress, it never drops an output.
async fn await_delivery<P>(shared: &Shared<P>, record: OutRecord, mut delivery: DeliveryFuture) {
    let mut attempt = 0;
    loop {
        match delivery.await {
            Ok(Ok(_)) => {
                counter!(names::MESSAGES_OUT, "topic" => record.topic.clone()).increment(1);
                return;
            }
            Ok(Err((error, _))) => {
                tracing::warn!(error = %error, topic = %record.topic, "Delivery failed; re-sending");
            }
            Err(_) => {
                tracing::warn!(topic = %record.topic, "Delivery lost; re-sending");
            }
        }
        counter!(names::DELIVERY_RETRIES).increment(1);
        attempt += 1;
        tokio::time::sleep(backoff(
            Duration::from_millis(100),
            Duration::from_secs(5),
            attempt,
        ))
        .await;
        delivery = enqueue(shared, &record).await;
    }
}

/// The consumer's client context: logs, errors, statistics and rebalance callbacks.
pub(crate) struct LoopContext<P> {
    pub(crate) shared: Arc<Shared<P>>,
}

impl<P: Processor> ClientContext for LoopContext<P> {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility.contains("MAXPOLL") {
            counter!(names::MAX_POLL_EXCEEDED).increment(1);
            tracing::error!(
                facility,
                message,
                "Left the consumer group: max.poll.interval.ms exceeded"
            );
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, message, "librdkafka")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared.health.set_broker_reachable(false);
        }
        tracing::warn!(error = %error, reason, "Kafka client error");
    }

    fn stats(&self, statistics: Statistics) {
        for ctl in self.shared.all() {
            let hi = statistics
                .topics
                .get(&*ctl.topic)
                .and_then(|t| t.partitions.get(&ctl.partition))
                .map(|p| p.hi_offset);
            if let Some(hi) = hi.filter(|hi| *hi >= 0) {
                ctl.high_watermark.store(hi, Ordering::Relaxed);
            }
        }
    }
}

impl<P: Processor> ConsumerContext for LoopContext<P> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.shared.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.assign(consumer, tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error"),
        }
    }
}

/// The poll thread: poll, route, back-pressure and commit until shutdown; then stop
/// fetching, let in-flight work finish within the deadline, commit, and leave the group.
pub(crate) fn poll_loop<P: Processor>(
    consumer: BaseConsumer<LoopContext<P>>,
    shared: Arc<Shared<P>>,
) {
    let settings = shared.settings.clone();
    let mut cache = None;
    let mut last_commit = Instant::now();
    let mut last_housekeeping = Instant::now();
    while !shared.shutdown.is_triggered() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                shared.route(&consumer, message.detach(), &mut cache);
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::PollExceeded))) => {
                counter!(names::MAX_POLL_EXCEEDED).increment(1);
                tracing::error!(
                    "Left the consumer group: max.poll.interval.ms exceeded; rejoining"
                );
            }
            Some(Err(error)) => {
                counter!(names::ERRORS, "kind" => "consume").increment(1);
                tracing::warn!(error = %error, "Consumer error");
            }
            None => {}
        }
        if last_housekeeping.elapsed() >= Duration::from_millis(50) {
            shared.apply_backpressure(&consumer);
            shared.publish_status();
            last_housekeeping = Instant::now();
        }
        if last_commit.elapsed() >= settings.commit_interval {
            shared.commit(&consumer, None);
            last_commit = Instant::now();
        }
    }

    tracing::info!("Stopping: no new fetches; finishing in-flight work");
    shared.health.set_shutting_down();
    if let Ok(assignment) = consumer.assignment() {
        let _ = consumer.pause(&assignment);
    }
    let deadline = Instant::now() + settings.shutdown_timeout;
    while !shared.all().iter().all(|c| c.drained()) && Instant::now() < deadline {
        // Keep serving the group (heartbeats run on their own thread; callbacks here).
        let _ = consumer.poll(Duration::from_millis(20));
    }
    shared.commit(&consumer, None);
    shared.publish_status();
    // Leaving the group hands our partitions over at once instead of after the session
    // timeout; the revoke callback commits again (nothing new by now).
    consumer.unsubscribe();
    let _ = consumer.poll(Duration::from_millis(100));
    drop(consumer);
    tracing::info!("Consumer closed");
}
