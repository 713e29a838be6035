//! The closed set of event types, their versions and topics, and the typed `Event`.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::activity::{Activity, ActivityKind};
use crate::analytics::WindowAggregate;
use crate::catalog::{EnrichedProduct, Price, Product, ProductDeleted, Stock};
use crate::validate::{Validator, Violation};

/// Topic names of section 3 of the architecture.
pub mod topics {
    /// Products as brands publish them (truth, compacted).
    pub const PRODUCTS: &str = "catalog.products.v1";
    /// Price lists (truth, compacted).
    pub const PRICES: &str = "catalog.prices.v1";
    /// Stock levels (truth, compacted).
    pub const STOCK: &str = "catalog.stock.v1";
    /// Products joined with price and stock (derived, compacted).
    pub const PRODUCTS_ENRICHED: &str = "catalog.products-enriched.v1";
    /// Retailer activity (stream, time retention).
    pub const ACTIVITY: &str = "activity.events.v1";
    /// Windowed aggregates of activity (derived, compacted).
    pub const AGGREGATES: &str = "analytics.aggregates.v1";

    /// Every topic that carries envelopes.
    pub const ALL: [&str; 6] = [
        PRODUCTS,
        PRICES,
        STOCK,
        PRODUCTS_ENRICHED,
        ACTIVITY,
        AGGREGATES,
    ];

    /// The dead-letter topic of a consumer group.
    pub fn dlq(group: &str) -> String {
        format!("{group}.dlq")
    }
}

/// One envelope `type`. The set is closed: a type not listed here is unknown to the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `catalog.product.upserted`
    ProductUpserted,
    /// `catalog.product.deleted`
    ProductDeleted,
    /// `catalog.price.updated`
    PriceUpdated,
    /// `catalog.stock.changed`
    StockChanged,
    /// `catalog.product.enriched`
    ProductEnriched,
    /// `activity.product_viewed`
    ProductViewed,
    /// `activity.added_to_cart`
    AddedToCart,
    /// `activity.order_placed`
    OrderPlaced,
    /// `analytics.window.aggregated`
    WindowAggregated,
}

impl EventType {
    /// Every type, in a stable order.
    pub const ALL: [EventType; 9] = [
        EventType::ProductUpserted,
        EventType::ProductDeleted,
        EventType::PriceUpdated,
        EventType::StockChanged,
        EventType::ProductEnriched,
        EventType::ProductViewed,
        EventType::AddedToCart,
        EventType::OrderPlaced,
        EventType::WindowAggregated,
    ];

    /// The wire name used in the envelope's `type`.
    pub fn name(self) -> &'static str {
        match self {
            EventType::ProductUpserted => "catalog.product.upserted",
            EventType::ProductDeleted => "catalog.product.deleted",
            EventType::PriceUpdated => "catalog.price.updated",
            EventType::StockChanged => "catalog.stock.changed",
            EventType::ProductEnriched => "catalog.product.enriched",
            EventType::ProductViewed => "activity.product_viewed",
            EventType::AddedToCart => "activity.added_to_cart",
            EventType::OrderPlaced => "activity.order_placed",
            EventType::WindowAggregated => "analytics.window.aggregated",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The schema versions readers of this build understand, oldest first.
    pub fn supported_versions(self) -> &'static [u32] {
        &[1]
    }

    /// The version writers of this build produce.
    pub fn current_version(self) -> u32 {
        1
    }

    /// The topic events of this type are published to.
    pub fn topic(self) -> &'static str {
        match self {
            EventType::ProductUpserted | EventType::ProductDeleted => topics::PRODUCTS,
            EventType::PriceUpdated => topics::PRICES,
            EventType::StockChanged => topics::STOCK,
            EventType::ProductEnriched => topics::PRODUCTS_ENRICHED,
            EventType::ProductViewed | EventType::AddedToCart | EventType::OrderPlaced => {
                topics::ACTIVITY
            }
            EventType::WindowAggregated => topics::AGGREGATES,
        }
    }

    /// The activity kind an `activity.*` type carries.
    pub fn activity_kind(self) -> Option<ActivityKind> {
        match self {
            EventType::ProductViewed => Some(ActivityKind::ProductViewed),
            EventType::AddedToCart => Some(ActivityKind::AddedToCart),
            EventType::OrderPlaced => Some(ActivityKind::OrderPlaced),
            _ => None,
        }
    }

    /// The envelope type of an activity kind.
    pub fn for_activity(kind: ActivityKind) -> EventType {
        match kind {
            ActivityKind::ProductViewed => EventType::ProductViewed,
            ActivityKind::AddedToCart => EventType::AddedToCart,
            ActivityKind::OrderPlaced => EventType::OrderPlaced,
        }
    }

    /// Validates a payload of version `v` against this type's schema, reporting every
    /// violation with a JSON pointer relative to the payload.
    pub fn validate(self, v: u32, data: &Value) -> Result<(), Vec<Violation>> {
        let violations = Validator::for_type(self, v)
            .map(|validator| validator.validate(data))
            .unwrap_or_default();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }

    /// Validates a payload and builds the typed event from it.
    pub fn parse(self, v: u32, data: Value) -> Result<Event, Vec<Violation>> {
        self.validate(v, &data)?;
        // The schema is generated from these very types, so after validation the typed
        // parse only fails if the two disagree; report it as a violation, never panic.
        let typed = |e: serde_json::Error| vec![Violation::new("", e.to_string())];
        Ok(match self {
            EventType::ProductUpserted => Event::ProductUpserted(from_value(data).map_err(typed)?),
            EventType::ProductDeleted => Event::ProductDeleted(from_value(data).map_err(typed)?),
            EventType::PriceUpdated => Event::PriceUpdated(from_value(data).map_err(typed)?),
            EventType::StockChanged => Event::StockChanged(from_value(data).map_err(typed)?),
            EventType::ProductEnriched => Event::ProductEnriched(from_value(data).map_err(typed)?),
            EventType::ProductViewed | EventType::AddedToCart | EventType::OrderPlaced => {
                Event::Activity(from_value(data).map_err(typed)?)
            }
            EventType::WindowAggregated => {
                Event::WindowAggregated(from_value(data).map_err(typed)?)
            }
        })
    }
}

fn from_value<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(data)
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed event payload; the variant decides the envelope's `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// `catalog.product.upserted`
    ProductUpserted(Product),
    /// `catalog.product.deleted`
    ProductDeleted(ProductDeleted),
    /// `catalog.price.updated`
    PriceUpdated(Price),
    /// `catalog.stock.changed`
    StockChanged(Stock),
    /// `catalog.product.enriched`
    ProductEnriched(EnrichedProduct),
    /// `activity.*`: the type follows the activity's `kind`.
    Activity(Activity),
    /// `analytics.window.aggregated`
    WindowAggregated(WindowAggregate),
}

impl Event {
    /// The envelope type of this event.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::ProductUpserted(_) => EventType::ProductUpserted,
            Event::ProductDeleted(_) => EventType::ProductDeleted,
            Event::PriceUpdated(_) => EventType::PriceUpdated,
            Event::StockChanged(_) => EventType::StockChanged,
            Event::ProductEnriched(_) => EventType::ProductEnriched,
            Event::Activity(a) => EventType::for_activity(a.kind),
            Event::WindowAggregated(_) => EventType::WindowAggregated,
        }
    }

    /// The Kafka key of this event: the product id, or `dim:id:window_start` for aggregates.
    pub fn key(&self) -> String {
        match self {
            Event::ProductUpserted(p) => p.product_id.clone(),
            Event::ProductDeleted(p) => p.product_id.clone(),
            Event::PriceUpdated(p) => p.product_id.clone(),
            Event::StockChanged(s) => s.product_id.clone(),
            Event::ProductEnriched(e) => e.product.product_id.clone(),
            Event::Activity(a) => a.product_id.clone(),
            Event::WindowAggregated(w) => {
                format!(
                    "{}:{}:{}",
                    w.dim.as_str(),
                    w.id,
                    w.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            }
        }
    }
}
