//! Request bodies: one JSON object, a JSON array of objects, or NDJSON; limits enforced.

use serde_json::Value;

use crate::error::{ApiError, Detail};

/// How the events in a body are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One object or an array of objects.
    Json,
    /// One object per line.
    Ndjson,
}

/// Reads the `Content-Type`; a missing one is taken as JSON.
pub fn format(content_type: Option<&str>) -> Result<Format, ApiError> {
    let Some(content_type) = content_type else {
        return Ok(Format::Json);
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/json" => Ok(Format::Json),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content type {other:?} is not supported; send application/json or application/x-ndjson"
        ))),
    }
}

/// The events of a body, in order, each still raw JSON (validated later, all at once).
pub fn events(bytes: &[u8], format: Format, max_events: usize) -> Result<Vec<Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::body(
            0,
            "the body is empty; send at least one event",
        ));
    }
    match format {
        Format::Json => json(bytes, max_events),
        Format::Ndjson => ndjson(bytes, max_events),
    }
}

fn too_many(max_events: usize) -> ApiError {
    ApiError::TooLarge(format!("more than {max_events} events in one request"))
}

fn json(bytes: &[u8], max_events: usize) -> Result<Vec<Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::body(0, format!("invalid JSON: {e}")))?;
    match value {
        Value::Object(_) => Ok(vec![value]),
        Value::Array(items) if items.is_empty() => Err(ApiError::body(
            0,
            "the array is empty; send at least one event",
        )),
        Value::Array(items) if items.len() > max_events => Err(too_many(max_events)),
        Value::Array(items) => Ok(items),
        other => Err(ApiError::body(
            0,
            format!(
                "expected a JSON object or an array of objects, got {}",
                kind_of(&other)
            ),
        )),
    }
}

fn ndjson(bytes: &[u8], max_events: usize) -> Result<Vec<Value>, ApiError> {
    let mut events = Vec::new();
    let mut details = Vec::new();
    let lines = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace));
    for (index, (line_number, line)) in lines.enumerate() {
        if index >= max_events {
            return Err(too_many(max_events));
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => events.push(value),
            Err(e) => details.push(Detail {
                index,
                path: String::new(),
                message: format!("line {}: invalid JSON: {e}", line_number + 1),
            }),
        }
    }
    if details.is_empty() {
        Ok(events)
    } else {
        Err(ApiError::Validation(details))
    }
}

/// The JSON type of a value, for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_read_by_their_essence() {
        assert_eq!(format(None).unwrap(), Format::Json);
        assert_eq!(
            format(Some("application/json; charset=utf-8")).unwrap(),
            Format::Json
        );
        assert_eq!(
            format(Some("Application/X-NDJSON")).unwrap(),
            Format::Ndjson
        );
        assert!(matches!(
            format(Some("application/x-www-form-urlencoded")),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn a_bad_ndjson_line_is_named_by_its_index_and_line() {
        let body = b"{\"a\":1}\n\n{oops\n{\"b\":2}\n";
        let Err(ApiError::Validation(details)) = events(body, Format::Ndjson, 10) else {
            panic!("expected a validation error")
        };
        assert_eq!(details.len(), 1);
        assert_eq!(details[0].index, 1);
        assert!(
            details[0].message.starts_with("line 3:"),
            "{}",
            details[0].message
        );
    }

    #[test]
    fn limits_and_shapes_are_enforced() {
        assert!(matches!(
            events(b"[{}, {}, {}]", Format::Json, 2),
            Err(ApiError::TooLarge(_))
        ));
        assert!(matches!(
            events(b"{}\n{}\n{}", Format::Ndjson, 2),
            Err(ApiError::TooLarge(_))
        ));
        assert!(matches!(
            events(b"  ", Format::Json, 2),
            Err(ApiError::Validation(_))
        ));
        assert!(matches!(
            events(b"[]", Format::Json, 2),
            Err(ApiError::Validation(_))
        ));
        assert!(matches!(
            events(b"42", Format::Json, 2),
            Err(ApiError::Validation(_))
        ));
        assert_eq!(events(b"[{}, 1]", Format::Json, 2).unwrap().len(), 2);
    }
}
