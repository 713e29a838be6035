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

/// What keeps the current types from replacing the committed schemas `committed` (file
/// name → text): a version removed, or a change inside a version that readers of the
/// committed schema would not survive. Empty when they may.
pub fn incompatibilities(committed: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, text) in committed {
        let Some((t, v)) = parse_file_name(name) else {
            problems.push(format!("{name}: not <type>.v<n>.json of a known type"));
            continue;
        };
        if !t.supported_versions().contains(&v) {
            problems.push(format!(
                "{name}: version {v} was removed; versions are never removed"
            ));
            continue;
        }
        let old: Value = match serde_json::from_str(text) {
            Ok(old) => old,
            Err(e) => {
                problems.push(format!("{name}: not JSON: {e}"));
                continue;
            }
        };
        for incompatibility in crate::compat::check_backward(&old, &document(t, v)) {
            problems.push(format!("{name}: {incompatibility}"));
        }
    }
    problems
}

/// The type and version a schema file name stands for.
pub fn parse_file_name(name: &str) -> Option<(EventType, u32)> {
    let stem = name.strip_suffix(".json")?;
    let (type_name, v) = stem.rsplit_once(".v")?;
    Some((EventType::from_name(type_name)?, v.parse().ok()?))
}

/// The schema files (`*.json`) of `dir`: file name → text.
pub fn read_dir(
    dir: &std::path::Path,
) -> std::io::Result<std::collections::BTreeMap<String, String>> {
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            files.insert(name, std::fs::read_to_string(&path)?);
        }
    }
    Ok(files)
}

/// Rewrites the schemas in `dir` from the current types, after checking them against what
/// `dir` holds and against every set in `also` (older committed versions): the check comes
/// first and nothing is written when it fails, so a second run cannot compare the new
/// schemas with themselves. Returns the files rewritten, or the problems.
pub fn update(
    dir: &std::path::Path,
    also: &[std::collections::BTreeMap<String, String>],
) -> Result<Vec<String>, Vec<String>> {
    let committed = read_dir(dir).map_err(|e| vec![format!("{}: {e}", dir.display())])?;
    let mut problems = incompatibilities(&committed);
    for base in also {
        problems.extend(incompatibilities(base));
    }
    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        return Err(problems);
    }
    let mut written = Vec::new();
    for (name, text) in render_all() {
        if committed.get(&name) != Some(&text) {
            // Atomically (a reader in parallel sees the old file or the new, never half).
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &text)
                .and_then(|()| std::fs::rename(&tmp, dir.join(&name)))
                .map_err(|e| vec![format!("{name}: {e}")])?;
            written.push(name);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incompatible_change_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in render_all() {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        // The committed price schema had a field the current type no longer accepts as it
        // was (retyped): readers of the old schema would break.
        let name = file_name(EventType::PriceUpdated, 1);
        let mut old: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(&name)).unwrap())
                .unwrap();
        old["properties"]["data"]["properties"]["retail_minor"] = json!({"type": "string"});
        let old_text = serde_json::to_string_pretty(&old).unwrap();
        std::fs::write(dir.path().join(&name), &old_text).unwrap();
        let problems = update(dir.path(), &[]).unwrap_err();
        assert!(problems.iter().any(|p| p.contains(&name)), "{problems:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&name)).unwrap(),
            old_text,
            "refused, so not written: a second run still refuses"
        );
        assert!(update(dir.path(), &[]).is_err());
    }

    #[test]
    fn schemas_rewritten_by_hand_are_still_checked_against_an_older_commit() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in render_all() {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let name = file_name(EventType::StockChanged, 1);
        let mut base = read_dir(dir.path()).unwrap();
        let mut old: Value = serde_json::from_str(&base[&name]).unwrap();
        old["properties"]["data"]["properties"]["quantity"] = json!({"type": "string"});
        base.insert(name.clone(), serde_json::to_string(&old).unwrap());
        // The working tree agrees with the types; the older commit does not.
        assert!(incompatibilities(&read_dir(dir.path()).unwrap()).is_empty());
        let problems = update(dir.path(), &[base]).unwrap_err();
        assert!(problems.iter().any(|p| p.contains(&name)), "{problems:?}");
    }
}
