//! Publishing a request's envelopes: in order, and answered only once every one is
//! acknowledged by the broker (idempotent producer, `acks=all`).
//!
//! A request waits on one counter rather than one future per event: the producer's delivery
//! callback counts acknowledgements down and wakes the request once, when the last arrives.
//! With 100-event batches this saves a channel, an allocation and a wake-up per event.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tributary_events::Envelope;
use tributary_runtime::kafka::owned_headers;
use tributary_runtime::rdkafka::ClientContext;
use tributary_runtime::rdkafka::config::ClientConfig;
use tributary_runtime::rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use tributary_runtime::rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};

use crate::error::ApiError;

/// The acknowledgements one request still waits for.
#[derive(Debug)]
pub struct Acks {
    remaining: AtomicUsize,
    failure: Mutex<Option<String>>,
    done: Notify,
}

impl Acks {
    fn new(expected: usize) -> Acks {
        Acks {
            remaining: AtomicUsize::new(expected),
            failure: Mutex::new(None),
            done: Notify::new(),
        }
    }

    /// Counts `n` messages as settled (acknowledged, failed or never sent).
    fn settle(&self, n: usize) {
        if n > 0 && self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            // Stores a permit when the request is not waiting yet, so it cannot miss this.
            self.done.notify_one();
        }
    }

    fn fail(&self, error: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(error);
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Routes each delivery report to its request's counter.
#[derive(Debug, Default)]
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        if let Err((e, _)) = result {
            acks.fail(e.to_string());
        }
        acks.settle(1);
    }
}

/// The producer ingest publishes with.
pub type IngestProducer = ThreadedProducer<AckContext>;

/// Creates the producer (its own thread serves delivery reports).
pub fn producer(config: &ClientConfig) -> KafkaResult<IngestProducer> {
    config.create_with_context(AckContext)
}

/// The producer with its limits.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<IngestProducer>,
    timeout: Duration,
    queue_capacity: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Publisher {
    /// Wraps a producer whose queue holds `queue_capacity` messages.
    pub fn new(
        producer: Arc<IngestProducer>,
        timeout: Duration,
        queue_capacity: usize,
    ) -> Publisher {
        Publisher {
            producer,
            timeout,
            queue_capacity,
        }
    }

    fn busy(&self, message: &str) -> ApiError {
        ApiError::Unavailable {
            message: message.to_owned(),
            retry_after_secs: 1,
        }
    }

    /// Publishes every envelope to its type's topic and waits for all acknowledgements.
    pub async fn publish(&self, envelopes: &[Envelope]) -> Result<(), ApiError> {
        // Refuse up front rather than half-way: a request is queued whole or not at all.
        let queued = usize::try_from(self.producer.in_flight_count()).unwrap_or(0);
        if queued + envelopes.len() > self.queue_capacity {
            metrics::counter!("ingest.backpressure", "reason" => "queue_full").increment(1);
            return Err(self.busy("the producer queue is full; retry shortly"));
        }
        let acks = Arc::new(Acks::new(envelopes.len()));
        for (sent, envelope) in envelopes.iter().enumerate() {
            let value = envelope.encode();
            let headers = owned_headers(envelope.headers());
            let record = BaseRecord::with_opaque_to(envelope.event_type().topic(), acks.clone())
                .key(envelope.key.as_str())
                .payload(value.as_slice())
                .headers(headers);
            if let Err((e, _)) = self.producer.send(record) {
                // The rest is never sent: settle it so late reports of the sent part find a
                // consistent counter.
                acks.settle(envelopes.len() - sent);
                return Err(match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        self.busy("the producer queue is full; retry shortly")
                    }
                    e => ApiError::Unavailable {
                        message: format!("cannot publish: {e}"),
                        retry_after_secs: 1,
                    },
                });
            }
        }
        if tokio::time::timeout(self.timeout, acks.done.notified())
            .await
            .is_err()
        {
            return Err(ApiError::Unavailable {
                message: format!(
                    "the broker did not acknowledge within {} ms",
                    self.timeout.as_millis()
                ),
                retry_after_secs: 5,
            });
        }
        match acks.failure() {
            None => Ok(()),
            Some(e) => Err(ApiError::Unavailable {
                message: format!("the broker did not accept the events: {e}"),
                retry_after_secs: 5,
            }),
        }
    }
}
