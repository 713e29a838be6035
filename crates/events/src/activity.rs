//! Activity payloads (v1): what retailers do in the apps.

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::rules::{CURRENCY_PATTERN, ID_PATTERN};

/// The kind of a retailer's activity; each kind is its own envelope type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    /// A retailer looked at a product page.
    ProductViewed,
    /// A retailer put a product in the cart.
    AddedToCart,
    /// A retailer ordered a product.
    OrderPlaced,
}

impl ActivityKind {
    /// Every kind, in a stable order.
    pub const ALL: [ActivityKind; 3] = [
        ActivityKind::ProductViewed,
        ActivityKind::AddedToCart,
        ActivityKind::OrderPlaced,
    ];

    /// The wire name (`product_viewed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::ProductViewed => "product_viewed",
            ActivityKind::AddedToCart => "added_to_cart",
            ActivityKind::OrderPlaced => "order_placed",
        }
    }
}

/// One retailer action on one product (`activity.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = order_requirements)]
pub struct Activity {
    /// What happened.
    #[serde(deserialize_with = "crate::rules::strict::string_enum")]
    pub kind: ActivityKind,
    /// The product acted on; the Kafka key.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub product_id: String,
    /// The retailer who acted.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub retailer_id: String,
    /// Event time; ingest defaults it to the time of receipt.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::rules::rfc3339::option::deserialize"
    )]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// Units (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub quantity: Option<u64>,
    /// Price of one unit in minor units; required for `order_placed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price_minor: Option<u64>,
    /// ISO 4217 currency of `unit_price_minor`; required for `order_placed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: Option<String>,
    /// The order this line belongs to; required for `order_placed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ID_PATTERN))]
    pub order_id: Option<String>,
}

impl Activity {
    /// Units this activity counts for (`quantity`, default 1).
    pub fn units(&self) -> u64 {
        self.quantity.unwrap_or(1)
    }
}

/// An order is only meaningful with its price, currency and order id, so the schema says so.
fn order_requirements(schema: &mut Schema) {
    let rule = serde_json::json!({
        "if": {"properties": {"kind": {"const": "order_placed"}}, "required": ["kind"]},
        "then": {
            "required": ["unit_price_minor", "currency", "order_id"],
            "properties": {
                "unit_price_minor": {"type": "integer"},
                "currency": {"type": "string"},
                "order_id": {"type": "string"}
            }
        }
    });
    schema.insert("allOf".into(), serde_json::Value::Array(vec![rule]));
}
