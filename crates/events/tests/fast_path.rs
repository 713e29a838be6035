//! The typed fast path of `Envelope::decode` against the schema walker: on thousands of
//! mutations of every sample (each field removed, nulled, retyped, stretched past its
//! bounds, reshaped, duplicated), the fast path never accepts what the walker refuses and
//! decodes what it accepts identically; and it does accept every valid sample, so the
//! comparison is not vacuous.

use std::path::PathBuf;

use serde_json::{Map, Value, json};
use tributary_events::{ActivityKind, Envelope, EventType};

fn samples() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/samples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        for (i, envelope) in doc.as_array().unwrap().iter().enumerate() {
            out.push((format!("{}#{i}", path.display()), envelope.clone()));
        }
    }
    assert!(out.len() >= 9, "samples missing");
    out
}

/// Every JSON pointer in `value`, the root included.
fn pointers(value: &Value, base: String, out: &mut Vec<String>) {
    out.push(base.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(v, format!("{base}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{base}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Raw JSON texts a `Value` cannot carry as such (a float that is whole, an exponent,
/// negative zero, a number past u64), spliced in through placeholders.
const RAW: &[&str] = &["1.0", "1e2", "-0", "18446744073709551616", "-1", "0"];

fn replacements(current: &Value) -> Vec<Value> {
    let mut out = vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(1),
        json!(-1),
        json!(1.5),
        json!(""),
        json!("x"),
        json!(" "),
        json!("a".repeat(129)),
        json!("a".repeat(128)),
        json!("é".repeat(64)),
        json!("é".repeat(129)),
        json!("a".repeat(257)),
        json!("a".repeat(513)),
        json!("a".repeat(1025)),
        json!("a".repeat(2049)),
        json!("ab/c"),
        json!("EUR"),
        json!("eur"),
        json!("EURO"),
        json!("2026-01-01T00:00:00Z"),
        json!("2026-01-01 00:00:00Z"),
        json!("2026-01-01T00:00:00"),
        json!("2026-13-01T00:00:00Z"),
        json!("01JBZ7Q3M4N5P6R7S8T9V0W1X8"),
        json!("81JBZ7Q3M4N5P6R7S8T9V0W1X8"),
        json!("01JBZ7Q3M4N5P6R7S8T9V0W1XU"),
        json!("product_viewed"),
        json!("added_to_cart"),
        json!("order_placed"),
        json!("product"),
        json!("1h"),
        json!("catalog.product.upserted"),
        json!("activity.order_placed"),
        json!([]),
        json!(["x"]),
        json!(vec!["x"; 65]),
        json!({}),
        json!({"a": "b"}),
        json!({"": "b"}),
        json!({"order_placed": null}),
        json!({"a": 1}),
    ];
    let many: Map<String, Value> = (0..129).map(|i| (format!("k{i}"), json!("v"))).collect();
    out.push(Value::Object(many));
    for (i, _) in RAW.iter().enumerate() {
        out.push(json!(format!("__raw_{i}__")));
    }
    // The same object as an array of its values: serde's derives would read a struct so.
    if let Value::Object(map) = current {
        out.push(Value::Array(map.values().cloned().collect()));
    }
    out
}

fn splice(text: String) -> String {
    RAW.iter().enumerate().fold(text, |t, (i, raw)| {
        t.replace(&format!("\"__raw_{i}__\""), raw)
    })
}

fn agree(label: &str, bytes: &[u8], accepted: &mut usize) {
    let fast = Envelope::decode_fast(bytes);
    let checked = Envelope::decode_checked(bytes);
    if let Some(envelope) = fast {
        *accepted += 1;
        assert_eq!(
            Ok(envelope),
            checked,
            "{label}: the fast path accepted {}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Whatever the path, decode answers as the walker does.
    assert_eq!(Envelope::decode(bytes), checked, "{label}");
}

fn remove(value: &mut Value, pointer: &str) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(last);
        }
        Some(Value::Array(items)) => {
            items.remove(last.parse::<usize>().unwrap());
        }
        _ => {}
    }
}

#[test]
fn the_fast_path_accepts_every_valid_sample() {
    for (label, sample) in samples() {
        let bytes = serde_json::to_vec(&sample).unwrap();
        let fast = Envelope::decode_fast(&bytes);
        assert!(fast.is_some(), "{label}: fast path refused a valid sample");
        assert_eq!(
            fast.map(Ok),
            Some(Envelope::decode_checked(&bytes)),
            "{label}"
        );
    }
}

#[test]
fn the_fast_path_never_accepts_what_the_schema_refuses() {
    let mut cases = 0;
    let mut accepted = 0;
    for (label, sample) in samples() {
        let mut paths = Vec::new();
        pointers(&sample, String::new(), &mut paths);
        for path in &paths {
            let current = sample.pointer(path).unwrap().clone();
            for replacement in replacements(&current) {
                let mut mutated = sample.clone();
                *mutated.pointer_mut(path).unwrap() = replacement;
                let text = splice(serde_json::to_string(&mutated).unwrap());
                agree(&format!("{label} {path}"), text.as_bytes(), &mut accepted);
                cases += 1;
            }
            if !path.is_empty() {
                let mut mutated = sample.clone();
                remove(&mut mutated, path);
                agree(
                    &format!("{label} without {path}"),
                    &serde_json::to_vec(&mutated).unwrap(),
                    &mut accepted,
                );
                cases += 1;
            }
            // A duplicated member, second value different: `{"k": v, ..., "k": other}`.
            if let Some(Value::Object(map)) = sample.pointer(path) {
                for (key, value) in map {
                    for other in [json!(null), json!("x"), json!(7), value.clone()] {
                        let mut mutated = sample.clone();
                        let marker = "\"__dup__\":0";
                        mutated.pointer_mut(path).unwrap()["__dup__"] = json!(0);
                        let text = serde_json::to_string(&mutated).unwrap().replacen(
                            marker,
                            &format!("{}:{}", json!(key), other),
                            1,
                        );
                        agree(
                            &format!("{label} {path} dup {key}"),
                            text.as_bytes(),
                            &mut accepted,
                        );
                        cases += 1;
                    }
                }
            }
        }
        // Every activity kind under every activity type.
        for kind in ActivityKind::ALL {
            for t in EventType::ALL
                .iter()
                .filter(|t| t.activity_kind().is_some())
            {
                let mut mutated = sample.clone();
                mutated["type"] = json!(t.name());
                if mutated["data"].get("kind").is_some() {
                    mutated["data"]["kind"] = json!(kind.as_str());
                }
                agree(
                    &label,
                    &serde_json::to_vec(&mutated).unwrap(),
                    &mut accepted,
                );
                cases += 1;
            }
        }
    }
    eprintln!("{cases} mutations, {accepted} accepted by the fast path");
    assert!(cases > 10_000, "only {cases} mutations");
    // Some mutations are valid (a longer name, a different kind): the fast path takes them.
    assert!(accepted > 100, "the fast path accepted only {accepted}");
}

#[test]
fn escaped_and_unicode_strings_decode_the_same_on_both_paths() {
    for (label, sample) in samples() {
        let text = serde_json::to_string(&sample)
            .unwrap()
            .replace("\"source\":\"", "\"source\":\"\\u00e9\\\"q\\\\ ");
        agree(&label, text.as_bytes(), &mut 0);
        let pretty = serde_json::to_string_pretty(&sample).unwrap();
        agree(&label, pretty.as_bytes(), &mut 0);
    }
}

#[test]
fn invalid_utf8_anywhere_is_refused_by_both_paths_even_in_an_unknown_field() {
    // Found by the envelope fuzz target: serde skips an unknown field's string unchecked.
    for (name, sample) in samples() {
        let text = serde_json::to_string(&sample).unwrap();
        // An unknown field whose string holds a lone continuation byte.
        let mut bytes = b"{\"extra\":\"a\xABb\",".to_vec();
        bytes.extend_from_slice(&text.as_bytes()[1..]);
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "{name}: the input is not UTF-8"
        );
        assert!(Envelope::decode_fast(&bytes).is_none(), "{name}: fast path");
        assert!(Envelope::decode(&bytes).is_err(), "{name}: decode");
    }
}
