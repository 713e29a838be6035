//! Business metrics: every catalog change and retailer action on the topics, as DogStatsD
//! counters with tags, plus each topic's end-to-end freshness (`event.age_ms`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

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
    /// Counter, tags `metric`, `tag`: values folded into `other` past the cap.
    pub const TAGS_FOLDED: &str = "metrics.tags.folded";
}

/// The value a tag takes once its metric has seen the cap of distinct values.
pub const OTHER: &str = "other";

/// Caps the distinct values of each tag of each metric: a tag whose values come from the
/// data (brands, categories, currencies) would otherwise create a time series per value in
/// the metrics backend, without bound. The first `max` values seen keep their names; later
/// new ones are reported as [`OTHER`] and counted in [`names::TAGS_FOLDED`].
#[derive(Debug)]
pub struct TagCap {
    max: usize,
    seen: Mutex<HashMap<(&'static str, &'static str), HashSet<String>>>,
}

impl TagCap {
    /// At most `max` distinct values per metric and tag.
    pub fn new(max: usize) -> TagCap {
        TagCap {
            max,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The value to report for `tag` = `value` on `metric`.
    pub fn value(&self, metric: &'static str, tag: &'static str, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let values = seen.entry((metric, tag)).or_default();
        if values.contains(value) {
            return value.to_owned();
        }
        if values.len() < self.max {
            values.insert(value.to_owned());
            return value.to_owned();
        }
        drop(seen);
        metrics::counter!(names::TAGS_FOLDED, "metric" => metric, "tag" => tag).increment(1);
        OTHER.to_owned()
    }
}

/// The processor: translates each envelope into metrics; it publishes nothing.
#[derive(Debug)]
pub struct BusinessMetrics {
    tags: TagCap,
}

impl BusinessMetrics {
    /// Metrics whose data-derived tags take at most `max_tag_values` values each.
    pub fn new(max_tag_values: usize) -> BusinessMetrics {
        BusinessMetrics {
            tags: TagCap::new(max_tag_values),
        }
    }
}

impl Processor for BusinessMetrics {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        // A tombstone is the compaction form of a deletion already counted from its event.
        if let Some(envelope) = &message.envelope {
            self.record(&message.topic, envelope);
        }
        Ok(Vec::new())
    }
}

impl BusinessMetrics {
    /// Records the metrics of one envelope read from `topic`.
    pub fn record(&self, topic: &str, envelope: &Envelope) {
        record(&self.tags, topic, envelope);
    }
}

fn record(tags: &TagCap, topic: &str, envelope: &Envelope) {
    let age_ms = (Utc::now() - envelope.time).num_milliseconds().max(0);
    metrics::histogram!(names::EVENT_AGE_MS, "topic" => topic.to_owned()).record(age_ms as f64);
    match &envelope.event {
        Event::ProductUpserted(p) => {
            let brand = tags.value(names::PRODUCT_UPSERTED, "brand", &p.brand_id);
            let category = tags.value(names::PRODUCT_UPSERTED, "category", &p.category);
            metrics::counter!(names::PRODUCT_UPSERTED, "brand" => brand, "category" => category)
                .increment(1);
        }
        Event::ProductDeleted(_) => metrics::counter!(names::PRODUCT_DELETED).increment(1),
        Event::PriceUpdated(p) => {
            let currency = tags.value(names::PRICE_UPDATED, "currency", &p.currency);
            metrics::counter!(names::PRICE_UPDATED, "currency" => currency).increment(1);
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
                    let currency = tags.value(names::ORDER_REVENUE_MINOR, "currency", currency);
                    metrics::counter!(names::ORDER_REVENUE_MINOR, "currency" => currency)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_keeps_its_first_values_and_folds_the_rest_into_other() {
        let cap = TagCap::new(2);
        let brand = |v: &str| cap.value(names::PRODUCT_UPSERTED, "brand", v);
        assert_eq!(brand("b1"), "b1");
        assert_eq!(brand("b2"), "b2");
        assert_eq!(brand("b3"), OTHER, "past the cap");
        assert_eq!(brand("b1"), "b1", "a known value keeps its name");
        assert_eq!(brand("b4"), OTHER);
        // Each metric and tag has its own cap.
        assert_eq!(
            cap.value(names::PRODUCT_UPSERTED, "category", "shoes"),
            "shoes"
        );
        assert_eq!(cap.value(names::PRICE_UPDATED, "currency", "EUR"), "EUR");
        let held: usize = cap.seen.lock().unwrap().values().map(HashSet::len).sum();
        assert_eq!(held, 4, "memory is bounded by the cap, not by the data");
    }
}
