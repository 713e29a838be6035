//! Publishing a request's envelopes: in order, and answered only once every one is
//! acknowledged by the broker (idempotent producer, `acks=all`).

use std::time::Duration;

use tributary_events::Envelope;
use tributary_runtime::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tributary_runtime::rdkafka::message::{Header, OwnedHeaders};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::error::ApiError;

/// The producer with its limits.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
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
    pub fn new(producer: FutureProducer, timeout: Duration, queue_capacity: usize) -> Publisher {
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
        let mut deliveries = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let value = envelope.encode();
            let headers = envelope
                .headers()
                .into_iter()
                .fold(OwnedHeaders::new(), |hs, (k, v)| {
                    hs.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    })
                });
            let record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(envelope.event_type().topic())
                    .key(envelope.key.as_str())
                    .payload(value.as_slice())
                    .headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(self.busy("the producer queue is full; retry shortly"));
                }
                Err((e, _)) => {
                    return Err(ApiError::Unavailable {
                        message: format!("cannot publish: {e}"),
                        retry_after_secs: 1,
                    });
                }
            }
        }
        let acknowledged = tokio::time::timeout(self.timeout, async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e.to_string()),
                    Err(_) => return Err("delivery canceled".to_owned()),
                }
            }
            Ok(())
        })
        .await;
        match acknowledged {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Unavailable {
                message: format!("the broker did not accept the events: {e}"),
                retry_after_secs: 5,
            }),
            Err(_) => Err(ApiError::Unavailable {
                message: format!(
                    "the broker did not acknowledge within {} ms",
                    self.timeout.as_millis()
                ),
                retry_after_secs: 5,
            }),
        }
    }
}
