//! Business metrics: every catalog change and retailer action on the topics, as DogStatsD
//! counters with tags, plus each topic's end-to-end freshness (`event.age_ms`).

use chrono::Utc;
use tributary_events::{ActivityKind, Envelope, Event};
use tributary_runtime::{Incoming, Output, ProcessError, Processor};

/// Metric names (before the configured prefix, `tributary.` by default).
pub mod names {
    /// Counter, tags `brand`, `category`.
    pub const PRODUCT_UPSERTED: &str = "catalog.product.upserted";
    /// Counter.
    pub const PRODUCT_DELETED: &str = "catalog.product.deleted";
    /// Counter, tag `currency`.
    pub const PRICE_UPDATED: &str = "catalog.price.updated";
    /// Counter.
    pub const STOCK_CHANGED: &str = "catalog.stock.changed";
    /// Counter: stock changes to quantity 0.
    pub const OUT_OF_STOCK: &str = "catalog.stock.out_of_stock";
    /// Counter, tag `complete`.
    pub const PRODUCT_ENRICHED: &str = "catalog.product.enriched";
    /// Counter, tag `kind`.
    pub const ACTIVITY_EVENT: &str = "activity.event";
    /// Counter whose value is the units ordered.
    pub const ORDER_UNITS: &str = "activity.order.units";
    /// Counter whose value is the order amount in minor units, tag `currency`.
    pub const ORDER_REVENUE_MINOR: &str = "activity.order.revenue_minor";
    /// Counter, tags `dim`, `window`: window aggregates published.
    pub const WINDOW_AGGREGATED: &str = "analytics.window.aggregated";
    /// Distribution (milliseconds), tag `topic`: now minus the envelope's event time.
    pub const EVENT_AGE_MS: &str = "event.age_ms";
}

/// The processor: translates each envelope into metrics; it publishes nothing.
#[derive(Debug, Default)]
pub struct BusinessMetrics;

impl Processor for BusinessMetrics {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        // A tombstone is the compaction form of a deletion already counted from its event.
        if let Some(envelope) = &message.envelope {
            record(&message.topic, envelope);
        }
        Ok(Vec::new())
    }
}

/// Records the metrics of one envelope read from `topic`.
pub fn record(topic: &str, envelope: &Envelope) {
    let age_ms = (Utc::now() - envelope.time).num_milliseconds().max(0);
    metrics::histogram!(names::EVENT_AGE_MS, "topic" => topic.to_owned()).record(age_ms as f64);
    match &envelope.event {
        Event::ProductUpserted(p) => {
            metrics::counter!(names::PRODUCT_UPSERTED, "brand" => p.brand_id.clone(), "category" => p.category.clone())
                .increment(1);
        }
        Event::ProductDeleted(_) => metrics::counter!(names::PRODUCT_DELETED).increment(1),
        Event::PriceUpdated(p) => {
            metrics::counter!(names::PRICE_UPDATED, "currency" => p.currency.clone()).increment(1);
        }
        Event::StockChanged(s) => {
            metrics::counter!(names::STOCK_CHANGED).increment(1);
            if s.quantity == 0 {
                metrics::counter!(names::OUT_OF_STOCK).increment(1);
            }
        }
        Event::ProductEnriched(e) => {
            let complete = if e.complete { "true" } else { "false" };
            metrics::counter!(names::PRODUCT_ENRICHED, "complete" => complete).increment(1);
        }
        Event::Activity(a) => {
            metrics::counter!(names::ACTIVITY_EVENT, "kind" => a.kind.as_str()).increment(1);
            if a.kind == ActivityKind::OrderPlaced {
                let units = a.quantity.unwrap_or(1);
                metrics::counter!(names::ORDER_UNITS).increment(units);
                if let (Some(price), Some(currency)) = (a.unit_price_minor, &a.currency) {
                    metrics::counter!(names::ORDER_REVENUE_MINOR, "currency" => currency.clone())
                        .increment(price.saturating_mul(units));
                }
            }
        }
        Event::WindowAggregated(w) => {
            metrics::counter!(names::WINDOW_AGGREGATED, "dim" => w.dim.as_str(), "window" => w.window.as_str())
                .increment(1);
        }
    }
}
