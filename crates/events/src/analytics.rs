//! Analytics payloads (v1): windowed aggregates of activity.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules::{CURRENCY_PATTERN, ID_PATTERN};

/// The dimension an aggregate is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Per product.
    Product,
    /// Per brand.
    Brand,
}

impl Dimension {
    /// The wire name (`product`, `brand`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Product => "product",
            Dimension::Brand => "brand",
        }
    }
}

/// The size of a tumbling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WindowSize {
    /// One minute.
    #[serde(rename = "1m")]
    Minute,
    /// One hour.
    #[serde(rename = "1h")]
    Hour,
}

impl WindowSize {
    /// The wire name (`1m`, `1h`).
    pub fn as_str(self) -> &'static str {
        match self {
            WindowSize::Minute => "1m",
            WindowSize::Hour => "1h",
        }
    }
}

/// Counts and sums of one window of one dimension value (`analytics.window.aggregated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WindowAggregate {
    /// What `id` identifies.
    #[serde(deserialize_with = "crate::rules::strict::string_enum")]
    pub dim: Dimension,
    /// The product or brand id.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub id: String,
    /// Window size.
    #[serde(deserialize_with = "crate::rules::strict::string_enum")]
    pub window: WindowSize,
    /// Inclusive window start.
    #[serde(deserialize_with = "crate::rules::rfc3339::deserialize")]
    pub start: chrono::DateTime<chrono::Utc>,
    /// Exclusive window end.
    #[serde(deserialize_with = "crate::rules::rfc3339::deserialize")]
    pub end: chrono::DateTime<chrono::Utc>,
    /// Number of `product_viewed`.
    pub views: u64,
    /// Number of `added_to_cart`.
    pub carts: u64,
    /// Number of `order_placed`.
    pub orders: u64,
    /// Sum of `quantity` over `order_placed`.
    pub units: u64,
    /// Sum of `quantity × unit_price_minor` over `order_placed`.
    pub revenue_minor: u64,
    /// Currency of `revenue_minor`; null for a window without orders.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: Option<String>,
    /// True once the window is closed and will not change again.
    #[serde(rename = "final")]
    pub is_final: bool,
}
