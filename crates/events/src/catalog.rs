//! Catalog payloads (v1): what brands publish about their products.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::rules::{CURRENCY_PATTERN, ID_PATTERN, TEXT_MAX};

/// A product as a brand publishes it (`catalog.product.upserted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Product {
    /// The product's id, unique across the marketplace; the Kafka key.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub product_id: String,
    /// The brand that publishes the product.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub brand_id: String,
    /// The brand's own stock-keeping unit.
    #[schemars(length(min = 1, max = 128))]
    pub sku: String,
    /// Display name.
    #[schemars(length(min = 1, max = 512))]
    pub name: String,
    /// Category, used as a search facet.
    #[schemars(length(min = 1, max = 256))]
    pub category: String,
    /// Free text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TEXT_MAX))]
    pub description: Option<String>,
    /// Free-form attributes (colour, size, material, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = attribute_limits)]
    pub attributes: Option<BTreeMap<String, String>>,
    /// Image URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 2048)))]
    pub images: Option<Vec<String>>,
}

/// Bounds the attribute map so one product cannot carry an unbounded document.
fn attribute_limits(schema: &mut Schema) {
    schema.insert("maxProperties".into(), 128.into());
    schema.insert(
        "propertyNames".into(),
        serde_json::json!({"minLength": 1, "maxLength": 128}),
    );
    schema.insert(
        "additionalProperties".into(),
        serde_json::json!({"type": "string", "maxLength": 1024}),
    );
}

/// A product withdrawn by its brand (`catalog.product.deleted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductDeleted {
    /// The product that no longer exists.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub product_id: String,
}

/// A product's price list entry (`catalog.price.updated`). Money is integer minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Price {
    /// The priced product.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub product_id: String,
    /// ISO 4217 currency code, e.g. `EUR`.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: String,
    /// Price a retailer pays the brand, in minor units.
    pub wholesale_minor: u64,
    /// Recommended retail price, in minor units.
    pub retail_minor: u64,
}

/// A product's stock level (`catalog.stock.changed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Stock {
    /// The stocked product.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub product_id: String,
    /// Units available; 0 means out of stock.
    pub quantity: u64,
    /// The warehouse holding the stock, when the brand has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub warehouse: Option<String>,
}

/// A product joined with its price and stock (`catalog.product.enriched`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnrichedProduct {
    /// The product as its brand published it.
    #[serde(flatten)]
    pub product: Product,
    /// The latest price, or null while none is known.
    #[serde(default, deserialize_with = "crate::rules::strict::option_object")]
    pub price: Option<Price>,
    /// The latest stock quantity, or null while none is known.
    pub stock: Option<u64>,
    /// True when product, price and stock are all known.
    pub complete: bool,
    /// When this enriched view last changed.
    #[serde(deserialize_with = "crate::rules::rfc3339::deserialize")]
    pub updated_at: chrono::DateTime<chrono::Utc>,
}
