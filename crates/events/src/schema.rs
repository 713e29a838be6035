//! JSON Schema of every event type and version, generated from the Rust types.
//!
//! `schemas/<type>.v<v>.json` is the envelope schema of one type and version, with the
//! payload schema under `data`. The files are committed: a test fails when they are stale
//! and another when a change to the types would break readers of the committed schema.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::activity::Activity;
use crate::analytics::WindowAggregate;
use crate::catalog::{EnrichedProduct, Price, Product, ProductDeleted, Stock};
use crate::event::EventType;

/// The ULID text form (Crockford base32, case-insensitive, first character at most 7).
pub const ULID_PATTERN: &str = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$";

fn generate<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| {
            // One self-contained object per type: readable, and what the validator expects.
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// The schema of the payload (`data`) of `event_type` at version `v`, or `null` for a
/// version this build does not know.
pub fn payload_schema(event_type: EventType, v: u32) -> Value {
    if v != 1 {
        return Value::Null;
    }
    let mut schema = match event_type {
        EventType::ProductUpserted => generate::<Product>(),
        EventType::ProductDeleted => generate::<ProductDeleted>(),
        EventType::PriceUpdated => generate::<Price>(),
        EventType::StockChanged => generate::<Stock>(),
        EventType::ProductEnriched => generate::<EnrichedProduct>(),
        EventType::ProductViewed | EventType::AddedToCart | EventType::OrderPlaced => {
            generate::<Activity>()
        }
        EventType::WindowAggregated => generate::<WindowAggregate>(),
    };
    if let Some(kind) = event_type.activity_kind() {
        // One activity struct serves three envelope types; each type pins its `kind`.
        schema["properties"]["kind"] = json!({"type": "string", "const": kind.as_str()});
        if event_type != EventType::OrderPlaced {
            // The order rule can never fire for other kinds; keep their schema plain.
            if let Some(obj) = schema.as_object_mut() {
                obj.remove("allOf");
            }
        }
    }
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
    }
    schema
}

/// The envelope schema; with a type, `type` and `v` are pinned and `data` is its payload.
pub fn envelope_schema(typed: Option<(EventType, u32)>) -> Value {
    let (type_schema, v_schema, data_schema) = match typed {
        Some((t, v)) => (
            json!({"type": "string", "const": t.name()}),
            json!({"type": "integer", "const": v}),
            payload_schema(t, v),
        ),
        None => (
            json!({"type": "string", "minLength": 1}),
            json!({"type": "integer", "minimum": 1}),
            json!({"type": "object"}),
        ),
    };
    json!({
        "type": "object",
        "required": ["id", "type", "v", "time", "source", "key", "data"],
        "properties": {
            "id": {"type": "string", "format": "ulid", "pattern": ULID_PATTERN,
                   "description": "Unique, time-sortable event id."},
            "type": type_schema,
            "v": v_schema,
            "time": {"type": "string", "format": "date-time", "description": "Event time."},
            "source": {"type": "string", "minLength": 1, "description": "The producing service."},
            "key": {"type": "string", "minLength": 1, "description": "The Kafka record key."},
            "trace": {"type": "string", "description": "W3C traceparent, when traced."},
            "data": data_schema
        }
    })
}

/// The committed document for one type and version.
pub fn document(event_type: EventType, v: u32) -> Value {
    let mut schema = envelope_schema(Some((event_type, v)));
    let obj = schema
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut doc = serde_json::Map::new();
    doc.insert(
        "$schema".into(),
        "https://json-schema.org/draft/2020-12/schema".into(),
    );
    doc.insert(
        "$id".into(),
        format!("https://tributary.dev/schemas/{}", file_name(event_type, v)).into(),
    );
    doc.insert("title".into(), format!("{} v{v}", event_type.name()).into());
    doc.insert(
        "x-tributary".into(),
        json!({"topic": event_type.topic(), "key": "product_id"}),
    );
    doc.extend(obj);
    if event_type == EventType::WindowAggregated {
        doc["x-tributary"]["key"] = "dim:id:window_start".into();
    }
    Value::Object(doc)
}

/// The file name of one schema under `schemas/`.
pub fn file_name(event_type: EventType, v: u32) -> String {
    format!("{}.v{v}.json", event_type.name())
}

/// Every schema this build publishes, as (file name, pretty JSON with a final newline).
pub fn render_all() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for t in EventType::ALL {
        for &v in t.supported_versions() {
            let text = serde_json::to_string_pretty(&document(t, v)).unwrap_or_default();
            files.push((file_name(t, v), format!("{text}\n")));
        }
    }
    files
}
