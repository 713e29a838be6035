//! The committed schemas in `schemas/` are current, compatible and their samples decode.
//!
//! Run with `UPDATE_SCHEMAS=1` (or `cargo xtask schemas`) to rewrite the committed schemas
//! after a compatible change; an incompatible change is refused either way.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde_json::Value;
use tributary_events::compat::check_backward;
use tributary_events::schema::{document, file_name, render_all};
use tributary_events::{Envelope, EventType};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn committed() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(schemas_dir()).expect("schemas/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, fs::read_to_string(&path).expect("readable schema"));
        }
    }
    files
}

fn parse_name(name: &str) -> Option<(EventType, u32)> {
    let stem = name.strip_suffix(".json")?;
    let (type_name, v) = stem.rsplit_once(".v")?;
    Some((EventType::from_name(type_name)?, v.parse().ok()?))
}

#[test]
fn current_types_are_backward_compatible_with_committed_schemas() {
    let mut problems = Vec::new();
    for (name, text) in committed() {
        let Some((t, v)) = parse_name(&name) else {
            problems.push(format!("{name}: not <type>.v<n>.json of a known type"));
            continue;
        };
        if !t.supported_versions().contains(&v) {
            problems.push(format!(
                "{name}: version {v} was removed; versions are never removed"
            ));
            continue;
        }
        let old: Value = serde_json::from_str(&text).expect("committed schema is JSON");
        for incompatibility in check_backward(&old, &document(t, v)) {
            problems.push(format!("{name}: {incompatibility}"));
        }
    }
    assert!(
        problems.is_empty(),
        "breaking changes inside a version (add a new version on a new topic instead):\n{}",
        problems.join("\n")
    );
}

#[test]
fn committed_schemas_are_up_to_date() {
    let current = render_all();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        for (name, text) in &current {
            fs::write(schemas_dir().join(name), text).expect("schemas/ is writable");
        }
    }
    let committed = committed();
    let stale: Vec<&String> = current
        .iter()
        .filter(|(name, text)| committed.get(name) != Some(text))
        .map(|(name, _)| name)
        .collect();
    assert!(
        stale.is_empty(),
        "schemas/ is stale for {stale:?}: run `cargo xtask schemas` and commit the result"
    );
}

#[test]
fn every_committed_sample_still_decodes() {
    let dir = schemas_dir().join("samples");
    let mut seen = BTreeMap::new();
    for entry in fs::read_dir(&dir).expect("schemas/samples exists") {
        let path = entry.expect("readable entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (t, v) = parse_name(&name).unwrap_or_else(|| panic!("{name}: bad sample name"));
        let samples: Vec<Value> =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).expect("a JSON array");
        assert!(!samples.is_empty(), "{name} holds no sample");
        for (i, sample) in samples.into_iter().enumerate() {
            let bytes = serde_json::to_vec(&sample).unwrap();
            let decoded = Envelope::decode(&bytes)
                .unwrap_or_else(|e| panic!("{name} sample {i} no longer decodes: {e}"));
            assert_eq!(
                (decoded.event_type(), decoded.v),
                (t, v),
                "{name} sample {i}"
            );
        }
        seen.insert((t, v), name);
    }
    for t in EventType::ALL {
        for &v in t.supported_versions() {
            assert!(
                seen.contains_key(&(t, v)),
                "no sample for {}",
                file_name(t, v)
            );
        }
    }
}

#[test]
fn the_event_catalogue_documents_every_type_and_its_examples_decode() {
    let path = schemas_dir().join("../docs/events.md");
    let doc = fs::read_to_string(path).expect("docs/events.md exists");
    for t in EventType::ALL {
        assert!(doc.contains(t.name()), "docs/events.md lacks {t}");
    }
    let mut examples = 0;
    for block in doc.split("```json").skip(1) {
        let json = block.split("```").next().unwrap_or_default();
        let decoded = Envelope::decode(json.as_bytes());
        assert!(
            decoded.is_ok(),
            "an example in docs/events.md does not decode: {decoded:?}\n{json}"
        );
        examples += 1;
    }
    assert!(
        examples >= EventType::ALL.len() - 2,
        "only {examples} examples"
    );
}
