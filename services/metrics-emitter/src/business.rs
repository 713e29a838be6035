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
    /// Counter, tag `metric`: tag values folded into `other` past the cap.
    pub const TAGS_FOLDED: &str = "metrics.tags.folded";
}

/// The value a tag takes once its metric has seen the cap of distinct values.
pub const OTHER: &str = "other";

/// Caps the distinct tag values of each metric: a tag whose values come from the data
/// (brands, categories, currencies) would otherwise create a time series per value (per
/// combination, for a metric with two such tags) in the metrics backend, without bound. The
/// first `max` combinations a metric sees keep their names; later new ones are reported with
/// every capped tag as [`OTHER`] and counted in [`names::TAGS_FOLDED`].
#[derive(Debug)]
pub struct TagCap {
    max: usize,
    /// Per metric, a 64-bit hash of each combination kept: checking an event's tags costs no
    /// allocation (this runs for every product, price and order event).
    seen: Mutex<HashMap<&'static str, HashSet<u64>>>,
}

impl TagCap {
    /// At most `max` distinct combinations of capped tag values per metric.
    pub fn new(max: usize) -> TagCap {
        TagCap {
            max,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The values to report for the capped tags `values` (in a fixed order) of `metric`.
    pub fn values<const N: usize>(&self, metric: &'static str, values: [&str; N]) -> [String; N] {
        let combination = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            values.hash(&mut hasher);
            hasher.finish()
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let combinations = seen.entry(metric).or_default();
        if combinations.contains(&combination) || combinations.len() < self.max {
            combinations.insert(combination);
            return values.map(str::to_owned);
        }
        drop(seen);
        metrics::counter!(names::TAGS_FOLDED, "metric" => metric).increment(1);
        std::array::from_fn(|_| OTHER.to_owned())
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
            let [brand, category] = tags.values(
                names::PRODUCT_UPSERTED,
                [p.brand_id.as_str(), p.category.as_str()],
            );
            metrics::counter!(names::PRODUCT_UPSERTED, "brand" => brand, "category" => category)
                .increment(1);
        }
        Event::ProductDeleted(_) => metrics::counter!(names::PRODUCT_DELETED).increment(1),
        Event::PriceUpdated(p) => {
            let [currency] = tags.values(names::PRICE_UPDATED, [p.currency.as_str()]);
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
                    let [currency] = tags.values(names::ORDER_REVENUE_MINOR, [currency.as_str()]);
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
    fn a_metric_keeps_its_first_combinations_and_folds_the_rest_into_other() {
        let cap = TagCap::new(2);
        let upserted = |b: &str, c: &str| cap.values(names::PRODUCT_UPSERTED, [b, c]);
        assert_eq!(upserted("b1", "shoes"), ["b1", "shoes"]);
        assert_eq!(upserted("b2", "bags"), ["b2", "bags"]);
        // A third combination, even of known values, is past the cap: the series a
        // metric creates are bounded, not each tag alone.
        assert_eq!(upserted("b1", "bags"), [OTHER, OTHER]);
        assert_eq!(upserted("b3", "hats"), [OTHER, OTHER]);
        assert_eq!(
            upserted("b1", "shoes"),
            ["b1", "shoes"],
            "a known one keeps its names"
        );
        // Each metric has its own cap.
        assert_eq!(cap.values(names::PRICE_UPDATED, ["EUR"]), ["EUR"]);
        let held: usize = cap.seen.lock().unwrap().values().map(HashSet::len).sum();
        assert_eq!(held, 3, "memory is bounded by the cap, not by the data");
    }
}
