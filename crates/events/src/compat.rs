//! Backward-compatibility check between a committed schema and the current one.
//!
//! Inside one version the rule is additive-only (seed 004, "schema discipline"): a new
//! field must be optional, no field may disappear, and no value that used to be valid may
//! become invalid. Anything else is a breaking change and needs a new version on a new
//! topic. The check walks both schemas in step and names each break by its instance path.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::validate::pointer_push;

/// One way the new schema breaks readers or writers of the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// JSON pointer of the affected field in an event (e.g. `/data/price`).
    pub path: String,
    /// What changed.
    pub message: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Every incompatibility of `new` with `old`; empty when `new` is a compatible evolution.
pub fn check_backward(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    compare(old, new, "", &mut out);
    out
}

fn obj(schema: &Value) -> Map<String, Value> {
    schema.as_object().cloned().unwrap_or_default()
}

/// The JSON types a schema admits, looking through `anyOf`; empty means any.
fn types(schema: &Value) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    match schema.get("type") {
        Some(Value::String(s)) => {
            set.insert(s.clone());
        }
        Some(Value::Array(a)) => set.extend(a.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    for branch in schema
        .get("anyOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let branch_types = types(branch);
        if branch_types.is_empty() {
            return BTreeSet::new();
        }
        set.extend(branch_types);
    }
    // "integer" is a subset of "number"; normalise so widening integer->number passes.
    if set.contains("number") {
        set.remove("integer");
    }
    set
}

fn admits(types: &BTreeSet<String>, t: &str) -> bool {
    types.is_empty() || types.contains(t) || (t == "integer" && types.contains("number"))
}

/// The non-null branch of a nullable `anyOf`, so an optional object compares field by field.
fn object_branch(schema: &Value) -> Value {
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        if let Some(b) = branches.iter().find(|b| b.get("properties").is_some()) {
            return b.clone();
        }
    }
    schema.clone()
}

fn compare(old: &Value, new: &Value, path: &str, out: &mut Vec<Incompatibility>) {
    let mut push = |message: String| {
        out.push(Incompatibility {
            path: path.to_owned(),
            message,
        })
    };
    let (old_types, new_types) = (types(old), types(new));
    for t in &old_types {
        if !admits(&new_types, t) {
            push(format!("type narrowed: {t} no longer accepted"));
        }
    }
    if let Some(c) = new.get("const") {
        if old.get("const") != Some(c) {
            push(format!("narrowed to the constant {c}"));
        }
    }
    match (
        old.get("enum").and_then(Value::as_array),
        new.get("enum").and_then(Value::as_array),
    ) {
        (Some(o), Some(n)) => {
            for value in o.iter().filter(|v| !n.contains(v)) {
                push(format!("enum value {value} removed"));
            }
        }
        (None, Some(_)) => push("narrowed to an enum".into()),
        _ => {}
    }
    if new.get("pattern").is_some() && new.get("pattern") != old.get("pattern") {
        push(format!("pattern changed to {}", new["pattern"]));
    }
    if new.get("format").is_some() && new.get("format") != old.get("format") {
        push(format!("format changed to {}", new["format"]));
    }
    let lower = |k: &str, message: &str, push: &mut dyn FnMut(String)| {
        if let Some(n) = new.get(k).and_then(Value::as_f64) {
            match old.get(k).and_then(Value::as_f64) {
                Some(o) if n <= o => {}
                o => push(format!("{message}: {} -> {n}", fmt_bound(o))),
            }
        }
    };
    lower("minimum", "minimum raised", &mut push);
    lower("minLength", "minLength raised", &mut push);
    lower("minItems", "minItems raised", &mut push);
    let upper = |k: &str, message: &str, push: &mut dyn FnMut(String)| {
        if let Some(n) = new.get(k).and_then(Value::as_f64) {
            match old.get(k).and_then(Value::as_f64) {
                Some(o) if n >= o => {}
                o => push(format!("{message}: {} -> {n}", fmt_bound(o))),
            }
        }
    };
    upper("maximum", "maximum lowered", &mut push);
    upper("maxLength", "maxLength lowered", &mut push);
    upper("maxItems", "maxItems lowered", &mut push);
    upper("maxProperties", "maxProperties lowered", &mut push);

    let (old_obj, new_obj) = (object_branch(old), object_branch(new));
    let old_props = obj(old_obj.get("properties").unwrap_or(&Value::Null));
    let new_props = obj(new_obj.get("properties").unwrap_or(&Value::Null));
    let required = |s: &Value| -> BTreeSet<String> {
        s.get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    let (old_req, new_req) = (required(&old_obj), required(&new_obj));
    for name in old_props.keys() {
        if !new_props.contains_key(name) {
            out.push(Incompatibility {
                path: pointer_push(path, name),
                message: "field removed".into(),
            });
        }
    }
    for name in new_req.difference(&old_req) {
        let message = if old_props.contains_key(name) {
            "optional field made required"
        } else {
            "new required field"
        };
        out.push(Incompatibility {
            path: pointer_push(path, name),
            message: message.into(),
        });
    }
    for (name, new_child) in &new_props {
        if let Some(old_child) = old_props.get(name) {
            compare(old_child, new_child, &pointer_push(path, name), out);
        }
    }
    for key in ["items", "additionalProperties", "propertyNames"] {
        if let (Some(o), Some(n)) = (old_obj.get(key), new_obj.get(key)) {
            compare(o, n, &pointer_push(path, &format!("<{key}>")), out);
        } else if old_obj.get(key).is_none() && new_obj.get(key).is_some() && key != "items" {
            out.push(Incompatibility {
                path: path.to_owned(),
                message: format!("{key} newly constrained"),
            });
        }
    }
    if new_obj.get("allOf") != old_obj.get("allOf") && new_obj.get("allOf").is_some() {
        out.push(Incompatibility {
            path: path.to_owned(),
            message: "conditional rule (allOf) added or changed".into(),
        });
    }
}

fn fmt_bound(v: Option<f64>) -> String {
    v.map_or_else(|| "none".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn product(extra_props: Value, required: Value) -> Value {
        let mut props = json!({
            "product_id": {"type": "string", "pattern": "^x$"},
            "name": {"type": "string", "maxLength": 10},
            "quantity": {"type": "integer", "minimum": 0},
            "note": {"type": ["string", "null"]}
        });
        for (k, v) in extra_props.as_object().unwrap() {
            props[k] = v.clone();
        }
        json!({"type": "object", "properties": props, "required": required})
    }

    #[test]
    fn identical_schemas_are_compatible() {
        let s = product(json!({}), json!(["product_id"]));
        assert!(check_backward(&s, &s).is_empty());
    }

    #[test]
    fn a_new_optional_field_is_compatible() {
        let old = product(json!({}), json!(["product_id"]));
        let new = product(json!({"colour": {"type": "string"}}), json!(["product_id"]));
        assert_eq!(check_backward(&old, &new), vec![]);
    }

    #[test]
    fn a_new_required_field_is_named() {
        let old = product(json!({}), json!(["product_id"]));
        let new = product(
            json!({"colour": {"type": "string"}}),
            json!(["product_id", "colour"]),
        );
        let found = check_backward(&old, &new);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "/colour");
        assert_eq!(found[0].message, "new required field");
    }

    #[test]
    fn a_removed_field_is_named() {
        let old = product(json!({}), json!(["product_id"]));
        let mut new = old.clone();
        new["properties"].as_object_mut().unwrap().remove("name");
        let found = check_backward(&old, &new);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].path.as_str(), found[0].message.as_str()),
            ("/name", "field removed")
        );
    }

    #[test]
    fn a_narrowed_type_is_named() {
        let old = product(json!({}), json!(["product_id"]));
        let new = product(json!({"note": {"type": "string"}}), json!(["product_id"]));
        let found = check_backward(&old, &new);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "/note");
        assert!(
            found[0].message.contains("null no longer accepted"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn tightened_bounds_are_named_and_loosened_ones_are_not() {
        let old = product(json!({}), json!(["product_id"]));
        let tighter = product(
            json!({"name": {"type": "string", "maxLength": 5},
                   "quantity": {"type": "integer", "minimum": 1}}),
            json!(["product_id"]),
        );
        let paths: Vec<String> = check_backward(&old, &tighter)
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(paths, vec!["/name".to_string(), "/quantity".to_string()]);
        let looser = product(
            json!({"name": {"type": "string", "maxLength": 50},
                   "quantity": {"type": "number"}}),
            json!(["product_id"]),
        );
        assert!(check_backward(&old, &looser).is_empty());
    }

    #[test]
    fn nested_fields_of_nullable_objects_are_compared() {
        let price = |required: Value| {
            json!({"type": "object", "properties": {"price": {"anyOf": [
                {"type": "object", "properties": {"currency": {"type": "string"}}, "required": required},
                {"type": "null"}
            ]}}})
        };
        let found = check_backward(&price(json!([])), &price(json!(["currency"])));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "/price/currency");
    }

    #[test]
    fn a_removed_enum_value_is_named() {
        let old = json!({"type": "string", "enum": ["a", "b"]});
        let new = json!({"type": "string", "enum": ["a"]});
        let found = check_backward(&old, &new);
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("\"b\""));
    }
}
