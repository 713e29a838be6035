//! The consumer side: enriched products and product aggregates applied to one
//! [`ProductIndex`], batches made durable by index commits whose payload holds the offsets,
//! and partitions resumed from those offsets rather than from the group's.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::producer::Producer;
use tributary_events::{Dimension, Event, WindowSize, rules};
use tributary_runtime::rdkafka;
use tributary_runtime::{
    Batching, Incoming, Output, PartitionId, ProcessError, Processor, ServiceContext, StartFrom,
};

use crate::index::{Change, ProductIndex, WindowScore};

/// What the indexer reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Enriched products (`catalog.products-enriched.v1`).
    pub products: String,
    /// Window aggregates (`analytics.aggregates.v1`), for popularity.
    pub aggregates: String,
}

/// The popularity of a product's 1-hour window: views, cart additions weighted 5 and units
/// ordered weighted 20 (an order says more about demand than a glance).
pub fn popularity_score(views: u64, carts: u64, units: u64) -> u64 {
    views
        .saturating_add(carts.saturating_mul(5))
        .saturating_add(units.saturating_mul(20))
}

/// How an indexer reports that its index can no longer be written: the reason is kept and
/// the generation's consumer stopped (its owner then gives the generation up or stops the
/// service). A message is never dead-lettered for the index's fault.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Why, once it failed.
    pub reason: Arc<std::sync::Mutex<Option<String>>>,
    /// The generation's consumer's stop.
    pub stop: tributary_runtime::Shutdown,
}

impl Failure {
    fn fail(&self, reason: String) {
        let mut held = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() {
            tracing::error!(error = %reason, "The index cannot be written; stopping its consumer");
            *held = Some(reason);
        }
        drop(held);
        self.stop.trigger();
    }
}

/// The processor of one index generation.
pub struct Indexer {
    index: Arc<ProductIndex>,
    inputs: Inputs,
    batching: Batching,
    failure: Failure,
    /// A client for the partitions' low watermarks (where an empty index starts).
    client: OnceLock<rdkafka::producer::FutureProducer>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer")
            .field("index", &self.index)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

impl Indexer {
    /// An indexer writing to `index`.
    pub fn new(
        index: Arc<ProductIndex>,
        inputs: Inputs,
        batching: Batching,
        failure: Failure,
    ) -> Indexer {
        Indexer {
            index,
            inputs,
            batching,
            failure,
            client: OnceLock::new(),
        }
    }

    fn change_of(&self, message: &Incoming) -> Result<Option<(String, Change)>, ProcessError> {
        let topic = &*message.topic;
        if topic == self.inputs.products {
            let Some(envelope) = &message.envelope else {
                // A tombstone: the product was deleted.
                let key = message
                    .key_str()
                    .filter(|k| rules::is_id(k))
                    .ok_or_else(|| {
                        ProcessError::Permanent(
                            "a tombstone without a valid product id as its key".into(),
                        )
                    })?;
                return Ok(Some((key.to_owned(), Change::Product(None))));
            };
            let Event::ProductEnriched(enriched) = &envelope.event else {
                return Err(ProcessError::Permanent(format!(
                    "{} is not an enriched product ({topic} carries only catalog.product.enriched)",
                    envelope.event.event_type()
                )));
            };
            let id = enriched.product.product_id.clone();
            // Only a complete product is searchable: price and stock known.
            let complete =
                enriched.complete && enriched.price.is_some() && enriched.stock.is_some();
            let change = Change::Product(complete.then(|| Box::new(enriched.clone())));
            return Ok(Some((id, change)));
        }
        if topic == self.inputs.aggregates {
            let Some(envelope) = &message.envelope else {
                return Ok(None); // a window compacted away: popularity keeps its last value
            };
            let Event::WindowAggregated(w) = &envelope.event else {
                return Err(ProcessError::Permanent(format!(
                    "{} is not a window aggregate ({topic} carries only analytics.window.aggregated)",
                    envelope.event.event_type()
                )));
            };
            if w.dim != Dimension::Product || w.window != WindowSize::Hour {
                return Ok(None);
            }
            let popularity = WindowScore {
                window_start_ms: w.start.timestamp_millis(),
                score: popularity_score(w.views, w.carts, w.units),
            };
            return Ok(Some((w.id.clone(), Change::Popularity(popularity))));
        }
        Ok(None)
    }

    async fn low_watermark(&self, partition: &PartitionId) -> i64 {
        let Some(client) = self.client.get().cloned() else {
            return 0;
        };
        let (topic, p) = (partition.topic.to_string(), partition.partition);
        tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
        })
        .await
        .ok()
        .and_then(Result::ok)
        .map_or(0, |(low, _)| low.max(0))
    }
}

impl Processor for Indexer {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        if let Some((id, change)) = self.change_of(&message)? {
            if let Err(e) = self.index.apply(&id, change).await {
                // The message is fine; the index is not (its writer died, its disk is
                // full): the message waits, uncommitted, while the consumer stops.
                self.failure.fail(format!("index write failed: {e}"));
                return Err(ProcessError::Blocked(e.to_string()));
            }
            metrics::counter!("search.index.changes", "topic" => message.topic.to_string())
                .increment(1);
        }
        Ok(Vec::new())
    }

    async fn on_start(&self, context: &ServiceContext) -> Result<(), ProcessError> {
        let _ = self.client.set(context.producer.clone());
        Ok(())
    }

    async fn on_assigned(&self, partition: &PartitionId) -> Result<StartFrom, ProcessError> {
        // The index, not the group, says where it ends: an index emptied or built anew
        // reads its partition from the start, whatever the group committed.
        let offset = match self
            .index
            .resume_offset(&partition.topic, partition.partition)
        {
            Some(offset) => offset,
            None => self.low_watermark(partition).await,
        };
        Ok(StartFrom::Offset(offset))
    }

    fn batching(&self) -> Option<Batching> {
        Some(self.batching)
    }

    async fn commit_batch(&self, offsets: &[(PartitionId, i64)]) -> Result<(), ProcessError> {
        let offsets: Vec<(String, i32, i64)> = offsets
            .iter()
            .map(|(p, o)| (p.topic.to_string(), p.partition, *o))
            .collect();
        self.index.commit(&offsets).await.map_err(|e| {
            let reason = format!("index commit failed: {e}");
            self.failure.fail(reason.clone());
            ProcessError::Permanent(reason)
        })
    }
}
