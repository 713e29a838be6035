//! A validator driven by the JSON Schema generated from the payload types.
//!
//! The schema in `schemas/` is the contract, and it is generated from the Rust types; driving
//! validation from that same schema means the published contract and what the suite enforces
//! cannot drift apart. Unlike a typed `serde` parse, which stops at the first error, this
//! reports *every* violation with a JSON pointer, which is what an API client needs to fix a
//! request in one round trip. Only the schema keywords the generator emits are supported.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::EventType;
use crate::rules::{CURRENCY_PATTERN, ID_PATTERN};

/// At most this many violations are reported for one value; hostile input could otherwise
/// turn one request into megabytes of error text.
pub const MAX_VIOLATIONS: usize = 100;

/// One way a value breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer (RFC 6901) to the offending value; `""` is the value itself.
    pub path: String,
    /// What is wrong, in words a client developer can act on.
    pub message: String,
}

impl Violation {
    /// A violation at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same violation under a parent pointer (e.g. `/data`).
    pub fn under(mut self, parent: &str) -> Self {
        self.path = format!("{parent}{}", self.path);
        self
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Appends one reference token to a JSON pointer, escaping `~` and `/` as RFC 6901 says.
pub fn pointer_push(base: &str, token: &str) -> String {
    let mut path = base.to_owned();
    push_token(&mut path, token);
    path
}

fn push_token(path: &mut String, token: &str) {
    path.push('/');
    if token.contains(['~', '/']) {
        path.push_str(&token.replace('~', "~0").replace('/', "~1"));
    } else {
        path.push_str(token);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "null" => JsonType::Null,
            "boolean" => JsonType::Boolean,
            "integer" => JsonType::Integer,
            "number" => JsonType::Number,
            "string" => JsonType::String,
            "array" => JsonType::Array,
            "object" => JsonType::Object,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Boolean => "boolean",
            JsonType::Integer => "integer",
            JsonType::Number => "number",
            JsonType::String => "string",
            JsonType::Array => "array",
            JsonType::Object => "object",
        }
    }

    fn of(value: &Value) -> JsonType {
        match value {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Boolean,
            // Integers are exactly what serde's integer types accept: `1.0` is not one.
            Value::Number(n) if n.is_i64() || n.is_u64() => JsonType::Integer,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::Array,
            Value::Object(_) => JsonType::Object,
        }
    }

    fn accepts(self, actual: JsonType) -> bool {
        self == actual || (self == JsonType::Number && actual == JsonType::Integer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    DateTime,
    Ulid,
}

/// A schema compiled once into a tree with its regexes built.
#[derive(Debug, Default)]
struct Node {
    types: Vec<JsonType>,
    constant: Option<Value>,
    one_of_values: Option<Vec<Value>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<(String, Pattern)>,
    format: Option<Format>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    properties: Vec<(String, Node)>,
    required: Vec<String>,
    additional: Option<Box<Node>>,
    max_properties: Option<u64>,
    property_names: Option<Box<Node>>,
    items: Option<Box<Node>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    any_of: Vec<Node>,
    all_of: Vec<Node>,
    if_then: Option<(Box<Node>, Box<Node>)>,
}

/// Why a schema could not be compiled: a keyword this validator does not implement, so
/// that a generator change can never silently weaken validation.
#[derive(Debug, thiserror::Error)]
#[error("schema at {path}: {message}")]
pub struct SchemaError {
    path: String,
    message: String,
}

/// Keywords that describe rather than constrain; ignoring them is safe.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$comment",
    "x-tributary",
];

impl Node {
    fn compile(schema: &Value, path: &str) -> Result<Node, SchemaError> {
        let err = |message: String| SchemaError {
            path: path.to_owned(),
            message,
        };
        let obj = match schema {
            Value::Bool(true) => return Ok(Node::default()),
            Value::Object(obj) => obj,
            other => return Err(err(format!("unsupported schema {other}"))),
        };
        let mut node = Node::default();
        for (keyword, value) in obj {
            let sub = |name: &str| format!("{path}/{keyword}/{name}");
            match keyword.as_str() {
                "type" => {
                    let names: Vec<&str> = match value {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        _ => vec![],
                    };
                    for name in names {
                        node.types.push(
                            JsonType::parse(name).ok_or_else(|| err(format!("type {name}")))?,
                        );
                    }
                }
                "const" => node.constant = Some(value.clone()),
                "enum" => node.one_of_values = value.as_array().cloned(),
                "minLength" => node.min_length = value.as_u64(),
                "maxLength" => node.max_length = value.as_u64(),
                "pattern" => {
                    let source = value.as_str().unwrap_or_default().to_owned();
                    let pattern = Pattern::compile(&source).map_err(|e| err(e.to_string()))?;
                    node.pattern = Some((source, pattern));
                }
                "format" => {
                    node.format = match value.as_str() {
                        Some("date-time") => Some(Format::DateTime),
                        Some("ulid") => Some(Format::Ulid),
                        // Numeric formats (uint64, ...) are implied by type and minimum.
                        _ => None,
                    }
                }
                "minimum" => node.minimum = value.as_f64(),
                "maximum" => node.maximum = value.as_f64(),
                "properties" => {
                    for (name, schema) in value.as_object().into_iter().flatten() {
                        node.properties
                            .push((name.clone(), Node::compile(schema, &sub(name))?));
                    }
                }
                "required" => {
                    node.required = value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                }
                "additionalProperties" => {
                    node.additional = Some(Box::new(Node::compile(value, &sub(""))?))
                }
                "maxProperties" => node.max_properties = value.as_u64(),
                "propertyNames" => {
                    node.property_names = Some(Box::new(Node::compile(value, &sub(""))?))
                }
                "items" => node.items = Some(Box::new(Node::compile(value, &sub(""))?)),
                "minItems" => node.min_items = value.as_u64(),
                "maxItems" => node.max_items = value.as_u64(),
                "anyOf" | "oneOf" => {
                    for (i, schema) in value.as_array().into_iter().flatten().enumerate() {
                        node.any_of
                            .push(Node::compile(schema, &sub(&i.to_string()))?);
                    }
                }
                "allOf" => {
                    for (i, schema) in value.as_array().into_iter().flatten().enumerate() {
                        node.all_of
                            .push(Node::compile(schema, &sub(&i.to_string()))?);
                    }
                }
                "if" => {
                    let then = obj
                        .get("then")
                        .ok_or_else(|| err("if without then".into()))?;
                    node.if_then = Some((
                        Box::new(Node::compile(value, &sub("if"))?),
                        Box::new(Node::compile(then, &sub("then"))?),
                    ));
                }
                "then" => {}
                k if ANNOTATIONS.contains(&k) => {}
                other => return Err(err(format!("unsupported keyword {other}"))),
            }
        }
        Ok(node)
    }

    /// Checks `value` at `path`; `path` is one buffer extended and truncated on the way
    /// down, so a valid document costs no path allocations.
    fn check(&self, value: &Value, path: &mut String, out: &mut Vec<Violation>) {
        if out.len() >= MAX_VIOLATIONS {
            return;
        }
        let actual = JsonType::of(value);
        if !self.types.is_empty() && !self.types.iter().any(|t| t.accepts(actual)) {
            let expected: Vec<&str> = self.types.iter().map(|t| t.name()).collect();
            out.push(Violation::new(
                path.as_str(),
                format!("expected {}, got {}", expected.join(" or "), actual.name()),
            ));
            return;
        }
        if let Some(constant) = &self.constant {
            if constant != value {
                out.push(Violation::new(path.as_str(), format!("must be {constant}")));
                return;
            }
        }
        if let Some(values) = &self.one_of_values {
            if !values.contains(value) {
                let list: Vec<String> = values.iter().map(Value::to_string).collect();
                out.push(Violation::new(
                    path.as_str(),
                    format!("must be one of {}", list.join(", ")),
                ));
                return;
            }
        }
        match value {
            Value::String(s) => self.check_string(s, path, out),
            Value::Number(_) => self.check_number(value, path, out),
            Value::Array(items) => self.check_array(items, path, out),
            Value::Object(map) => self.check_object(map, path, out),
            _ => {}
        }
        if !self.any_of.is_empty() {
            self.check_any_of(value, path, out);
        }
        for all in &self.all_of {
            all.check(value, path, out);
        }
        if let Some((condition, then)) = &self.if_then {
            let mut scratch = Vec::new();
            condition.check(value, path, &mut scratch);
            if scratch.is_empty() {
                then.check(value, path, out);
            }
        }
    }

    fn check_string(&self, s: &str, path: &str, out: &mut Vec<Violation>) {
        // Lengths count characters, as JSON Schema says.
        let chars = if self.min_length.is_some() || self.max_length.is_some() {
            s.chars().count() as u64
        } else {
            0
        };
        if let Some(min) = self.min_length {
            if chars < min {
                let message = if min == 1 {
                    "must not be empty".to_owned()
                } else {
                    format!("must be at least {min} characters")
                };
                out.push(Violation::new(path, message));
                return;
            }
        }
        if let Some(max) = self.max_length {
            if chars > max {
                out.push(Violation::new(
                    path,
                    format!("must be at most {max} characters, got {chars}"),
                ));
                return;
            }
        }
        if let Some((source, pattern)) = &self.pattern {
            if !pattern.is_match(s) {
                out.push(Violation::new(path, pattern_message(source)));
                return;
            }
        }
        match self.format {
            Some(Format::DateTime) if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
                out.push(Violation::new(
                    path,
                    "must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z",
                ));
            }
            Some(Format::Ulid) if ulid::Ulid::from_string(s).is_err() => {
                out.push(Violation::new(
                    path,
                    "must be a ULID (26 Crockford base32 characters)",
                ));
            }
            _ => {}
        }
    }

    fn check_number(&self, value: &Value, path: &str, out: &mut Vec<Violation>) {
        let Some(n) = value.as_f64() else { return };
        if let Some(min) = self.minimum {
            if n < min {
                out.push(Violation::new(path, format!("must be >= {min}")));
                return;
            }
        }
        if let Some(max) = self.maximum {
            if n > max {
                out.push(Violation::new(path, format!("must be <= {max}")));
            }
        }
    }

    fn check_array(&self, items: &[Value], path: &mut String, out: &mut Vec<Violation>) {
        let len = items.len() as u64;
        if let Some(min) = self.min_items {
            if len < min {
                out.push(Violation::new(
                    path.as_str(),
                    format!("must have at least {min} items"),
                ));
            }
        }
        if let Some(max) = self.max_items {
            if len > max {
                out.push(Violation::new(
                    path.as_str(),
                    format!("must have at most {max} items, got {len}"),
                ));
                return;
            }
        }
        if let Some(node) = &self.items {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                push_token(path, &i.to_string());
                node.check(item, path, out);
                path.truncate(len);
            }
        }
    }

    fn check_object(&self, map: &Map<String, Value>, path: &mut String, out: &mut Vec<Violation>) {
        for name in &self.required {
            if !map.contains_key(name) {
                out.push(Violation::new(pointer_push(path, name), "is required"));
            }
        }
        if let Some(max) = self.max_properties {
            if map.len() as u64 > max {
                out.push(Violation::new(
                    path.as_str(),
                    format!("must have at most {max} entries, got {}", map.len()),
                ));
                return;
            }
        }
        for (name, node) in &self.properties {
            if let Some(child) = map.get(name) {
                let len = path.len();
                push_token(path, name);
                node.check(child, path, out);
                path.truncate(len);
            }
        }
        let extra = map
            .iter()
            .filter(|(name, _)| !self.properties.iter().any(|(known, _)| known == *name));
        for (name, child) in extra {
            if self.property_names.is_none() && self.additional.is_none() {
                continue;
            }
            let len = path.len();
            push_token(path, name);
            if let Some(names) = &self.property_names {
                names.check(&Value::String(name.clone()), path, out);
            }
            // Unknown fields are ignored (readers ignore unknown fields) unless the schema
            // types them, as it does for the values of a free-form map.
            if let Some(node) = &self.additional {
                node.check(child, path, out);
            }
            path.truncate(len);
        }
    }

    fn check_any_of(&self, value: &Value, path: &mut String, out: &mut Vec<Violation>) {
        let mut best: Option<Vec<Violation>> = None;
        for branch in &self.any_of {
            let mut found = Vec::new();
            branch.check(value, path, &mut found);
            if found.is_empty() {
                return;
            }
            // Report the branch whose type fits the value: its violations are the useful ones.
            let type_fits = branch.types.is_empty()
                || branch.types.iter().any(|t| t.accepts(JsonType::of(value)));
            if type_fits && best.is_none() {
                best = Some(found);
            }
        }
        match best {
            Some(found) => out.extend(found),
            None => {
                let expected: Vec<&str> = self
                    .any_of
                    .iter()
                    .flat_map(|b| b.types.iter().map(|t| t.name()))
                    .collect();
                out.push(Violation::new(
                    path.as_str(),
                    format!(
                        "expected {}, got {}",
                        expected.join(" or "),
                        JsonType::of(value).name()
                    ),
                ));
            }
        }
    }
}

/// A compiled `pattern`. The contract's two patterns are checked by hand: they are on every
/// id and currency of every event, and a byte loop is several times faster than a regex.
#[derive(Debug)]
enum Pattern {
    Id,
    Currency,
    Regex(Regex),
}

impl Pattern {
    fn compile(source: &str) -> Result<Pattern, regex::Error> {
        Ok(match source {
            ID_PATTERN => Pattern::Id,
            CURRENCY_PATTERN => Pattern::Currency,
            other => Pattern::Regex(Regex::new(other)?),
        })
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Pattern::Id => crate::rules::is_id(s),
            Pattern::Currency => crate::rules::is_currency(s),
            Pattern::Regex(regex) => regex.is_match(s),
        }
    }
}

fn pattern_message(source: &str) -> String {
    if source == ID_PATTERN {
        "must be an id: 1-128 characters of [A-Za-z0-9._:-]".to_owned()
    } else if source == CURRENCY_PATTERN {
        "must be an ISO 4217 currency code (three upper-case letters, e.g. EUR)".to_owned()
    } else {
        format!("must match {source}")
    }
}

/// A compiled schema that reports every violation of a value.
#[derive(Debug)]
pub struct Validator {
    root: Node,
}

impl Validator {
    /// Compiles a JSON Schema (as emitted by the generator: inlined, no `$ref`).
    pub fn compile(schema: &Value) -> Result<Validator, SchemaError> {
        Ok(Validator {
            root: Node::compile(schema, "")?,
        })
    }

    /// Every violation of `value` (at most [`MAX_VIOLATIONS`]); empty when it is valid.
    pub fn validate(&self, value: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        self.root.check(value, &mut String::new(), &mut out);
        out.truncate(MAX_VIOLATIONS);
        out
    }

    /// The validator of a type's payload at version `v`, compiled once per process.
    pub fn for_type(event_type: EventType, v: u32) -> Option<&'static Validator> {
        static CACHE: OnceLock<HashMap<(EventType, u32), Validator>> = OnceLock::new();
        CACHE
            .get_or_init(|| {
                let mut map = HashMap::new();
                for t in EventType::ALL {
                    for &version in t.supported_versions() {
                        let schema = crate::schema::payload_schema(t, version);
                        // The schemas are generated from our own types and covered by
                        // tests that compile every one, so failure here is a build defect.
                        let validator = Validator::compile(&schema)
                            .unwrap_or_else(|e| panic!("schema of {t} v{version}: {e}"));
                        map.insert((t, version), validator);
                    }
                }
                map
            })
            .get(&(event_type, v))
    }

    /// The validator of the envelope around any payload.
    pub fn envelope() -> &'static Validator {
        static ENVELOPE: OnceLock<Validator> = OnceLock::new();
        ENVELOPE.get_or_init(|| {
            Validator::compile(&crate::schema::envelope_schema(None))
                .unwrap_or_else(|e| panic!("envelope schema: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_hand_written_patterns_agree_with_their_regexes(s in "[ -~]{0,10}|[A-Za-z0-9._:-]{0,130}|[A-Z]{2,4}|\\PC{0,5}") {
            let id = Regex::new(ID_PATTERN).unwrap();
            let currency = Regex::new(CURRENCY_PATTERN).unwrap();
            prop_assert_eq!(Pattern::Id.is_match(&s), id.is_match(&s));
            prop_assert_eq!(Pattern::Currency.is_match(&s), currency.is_match(&s));
        }
    }
}
