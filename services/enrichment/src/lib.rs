//! Enrichment: joins each product with its latest price and stock into the enriched
//! product of `catalog.products-enriched.v1`, from per-product state that is effectively
//! once (crates/state: offsets in the state transaction, changelog restore).
//!
//! The three catalog topics are co-partitioned by `product_id`, so partition p of each is
//! one task with one store: every fact about a product meets in one place, in the order
//! it arrived.

pub mod merge;

use anyhow::Context;
use clap::Args;
use tributary_events::{Envelope, Event, topics};
use tributary_runtime::{
    Batching, Incoming, Output, ProcessError, RuntimeConfig, ServiceSpec, Shutdown,
};
use tributary_state::{State, Stateful, StatefulProcessor, Table, output_id};

use merge::{Change, ProductState};

/// The service name: default group id, client id and metrics tag.
pub const NAME: &str = "enrichment";

/// The admin port of enrichment (CONTRACTS.md).
pub const ADMIN_PORT: u16 = 9102;

/// The store's name: the changelog is `<group>.products.changelog`.
pub const STORE: &str = "products";

/// Per-product state.
pub const PRODUCTS: Table<ProductState> = Table::new("product");

/// Enrichment's settings.
#[derive(Debug, Clone, Args)]
pub struct EnrichmentConfig {
    /// Settings shared by every service.
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// Products topic (input).
    #[arg(long, env = "ENRICHMENT_PRODUCTS_TOPIC", default_value = topics::PRODUCTS)]
    pub products_topic: String,
    /// Prices topic (input, co-partitioned with products).
    #[arg(long, env = "ENRICHMENT_PRICES_TOPIC", default_value = topics::PRICES)]
    pub prices_topic: String,
    /// Stock topic (input, co-partitioned with products).
    #[arg(long, env = "ENRICHMENT_STOCK_TOPIC", default_value = topics::STOCK)]
    pub stock_topic: String,
    /// Enriched products topic (output).
    #[arg(long, env = "ENRICHMENT_OUTPUT_TOPIC", default_value = topics::PRODUCTS_ENRICHED)]
    pub output_topic: String,
    /// Messages per state commit (per partition), at most.
    #[arg(long, env = "STATE_BATCH_MESSAGES", default_value_t = 1000)]
    pub batch_messages: usize,
    /// Milliseconds a state commit waits for more messages, at most.
    #[arg(long, env = "STATE_BATCH_MS", default_value_t = 100)]
    pub batch_ms: u64,
}

impl EnrichmentConfig {
    /// The defaults around `runtime`.
    pub fn with_runtime(runtime: RuntimeConfig) -> EnrichmentConfig {
        EnrichmentConfig {
            runtime,
            products_topic: topics::PRODUCTS.to_owned(),
            prices_topic: topics::PRICES.to_owned(),
            stock_topic: topics::STOCK.to_owned(),
            output_topic: topics::PRODUCTS_ENRICHED.to_owned(),
            batch_messages: 1000,
            batch_ms: 100,
        }
    }
}

/// The join over one product's state.
#[derive(Debug)]
pub struct Enricher {
    output: String,
    batching: Batching,
}

impl Enricher {
    /// Enriched products go to `output`.
    pub fn new(output: &str, batching: Batching) -> Enricher {
        Enricher {
            output: output.to_owned(),
            batching,
        }
    }
}

/// What a catalog message changes, for which product.
fn change_of(message: &Incoming) -> Result<(String, Change), ProcessError> {
    let Some(envelope) = &message.envelope else {
        // A tombstone: the key says which product, the topic which fact.
        let key = message
            .key_str()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ProcessError::Permanent("tombstone without a UTF-8 key".to_owned()))?;
        let change = if message.topic.contains("price") {
            Change::Price(None)
        } else if message.topic.contains("stock") {
            Change::Stock(None)
        } else {
            Change::Deleted
        };
        return Ok((key.to_owned(), change));
    };
    Ok(match &envelope.event {
        Event::ProductUpserted(p) => (p.product_id.clone(), Change::Product(p.clone())),
        Event::ProductDeleted(d) => (d.product_id.clone(), Change::Deleted),
        Event::PriceUpdated(p) => (p.product_id.clone(), Change::Price(Some(p.clone()))),
        Event::StockChanged(s) => (s.product_id.clone(), Change::Stock(Some(s.clone()))),
        other => {
            return Err(ProcessError::Permanent(format!(
                "{} is not a catalog event enrichment can apply (on {})",
                other.event_type(),
                message.topic
            )));
        }
    })
}

impl StatefulProcessor for Enricher {
    fn process(
        &self,
        message: &Incoming,
        state: &mut State<'_>,
    ) -> Result<Vec<Output>, ProcessError> {
        let (product_id, change) = change_of(message)?;
        let before = state.get(&PRODUCTS, &product_id)?.unwrap_or_default();
        let after = before.apply(change);
        match &after {
            Some(after) => state.put(&PRODUCTS, &product_id, after)?,
            None => state.delete(&PRODUCTS, &product_id)?,
        }
        let old_view = before.view();
        let new_view = after.as_ref().and_then(ProductState::view);
        if old_view == new_view {
            // An identical repeat, or a price or stock still waiting for its product.
            return Ok(Vec::new());
        }
        let Some(view) = new_view else {
            // The product went: a tombstone removes it from the compacted topic.
            return Ok(vec![Output::tombstone(&self.output, &product_id)]);
        };
        let at = message
            .envelope
            .as_ref()
            .map_or_else(chrono::Utc::now, |e| e.time);
        let mut envelope = Envelope::new(NAME, Event::ProductEnriched(view.enriched(at)))
            .at(at)
            .with_id(output_id(message, 0));
        envelope.key = product_id;
        Ok(vec![Output::event(&self.output, envelope)])
    }

    fn batching(&self) -> Batching {
        self.batching
    }
}

/// Starts enrichment; its admin server listens when this returns.
pub async fn start(
    config: EnrichmentConfig,
    shutdown: Shutdown,
) -> anyhow::Result<tributary_runtime::Running> {
    let inputs = [
        config.products_topic.as_str(),
        config.prices_topic.as_str(),
        config.stock_topic.as_str(),
    ];
    let spec = ServiceSpec::new(NAME, &inputs, ADMIN_PORT);
    let batching = Batching {
        max_messages: config.batch_messages.max(1),
        max_wait: std::time::Duration::from_millis(config.batch_ms.max(1)),
    };
    let processor = Stateful::new(STORE, Enricher::new(&config.output_topic, batching));
    tributary_runtime::start(spec, config.runtime, processor, shutdown)
        .await
        .context("starting enrichment")
}
