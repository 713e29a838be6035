//! The envelope around every event, its byte encoding and its Kafka header mapping.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use ulid::Ulid;

use crate::event::{Event, EventType};
use crate::trace::TraceParent;
use crate::validate::{Validator, Violation};

/// Kafka header repeating the envelope's `type`, so routing needs no payload parse.
pub const HEADER_TYPE: &str = "type";
/// Kafka header repeating the envelope's `v`.
pub const HEADER_VERSION: &str = "v";
/// Kafka header repeating the envelope's `trace`.
pub const HEADER_TRACE: &str = "trace";
/// The same trace context under the W3C name, for OpenTelemetry-instrumented consumers.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// One event with its metadata: the value of every record on every envelope topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique, time-sortable id; downstream deduplication keys on it.
    pub id: Ulid,
    /// Schema version of `event` as written.
    pub v: u32,
    /// Event time: when it happened, not when it was written.
    pub time: DateTime<Utc>,
    /// The service that wrote the event.
    pub source: String,
    /// The Kafka record key.
    pub key: String,
    /// W3C traceparent, when the producer traces.
    pub trace: Option<String>,
    /// The typed payload; decides `type`.
    pub event: Event,
}

#[derive(Serialize)]
struct Wire<'a> {
    id: String,
    #[serde(rename = "type")]
    event_type: &'static str,
    v: u32,
    time: &'a DateTime<Utc>,
    source: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a str>,
    data: &'a Event,
}

/// Why a record's bytes are not a usable event. Each kind is dead-lettered as such.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not JSON (or not UTF-8).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an envelope object.
    #[error("not an envelope: {}", join(.0))]
    NotEnvelope(Vec<Violation>),
    /// An envelope whose `type` this build does not know.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A known type at a version this build cannot read.
    #[error("unsupported version {v} of {event_type} (supported: {supported:?})")]
    UnsupportedVersion {
        /// The envelope type.
        event_type: EventType,
        /// The version found.
        v: u64,
        /// The versions this build reads.
        supported: Vec<u32>,
    },
    /// A known type and version whose `data` fails validation.
    #[error("invalid {event_type} v{v} payload: {}", join(.violations))]
    InvalidPayload {
        /// The envelope type.
        event_type: EventType,
        /// The version.
        v: u32,
        /// Every violation, with paths from the envelope root (`/data/...`).
        violations: Vec<Violation>,
    },
}

fn join(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl DecodeError {
    /// A stable, machine-readable name of the kind (the `dlq.error.kind` header).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotEnvelope(_) => "not_envelope",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::InvalidPayload { .. } => "invalid_payload",
        }
    }
}

impl Envelope {
    /// Wraps an event written now by `source`, with a fresh id and the event's own key.
    pub fn new(source: impl Into<String>, event: Event) -> Envelope {
        Envelope {
            id: Ulid::new(),
            v: event.event_type().current_version(),
            time: Utc::now(),
            source: source.into(),
            key: event.key(),
            trace: None,
            event,
        }
    }

    /// Sets the event time.
    pub fn at(mut self, time: DateTime<Utc>) -> Envelope {
        self.time = time;
        self
    }

    /// Sets the id (ingest derives ids from idempotency keys).
    pub fn with_id(mut self, id: Ulid) -> Envelope {
        self.id = id;
        self
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: TraceParent) -> Envelope {
        self.trace = Some(trace.to_string());
        self
    }

    /// The envelope `type`.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The parsed trace context, when `trace` is a valid traceparent.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        self.trace.as_deref().and_then(TraceParent::parse)
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            id: self.id.to_string(),
            event_type: self.event_type().name(),
            v: self.v,
            time: &self.time,
            source: &self.source,
            key: &self.key,
            trace: self.trace.as_deref(),
            data: &self.event,
        }
    }

    /// The record value: the envelope as compact JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings, integers and maps to a Vec cannot fail.
        serde_json::to_vec(&self.wire()).unwrap_or_default()
    }

    /// The envelope as a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.wire()).unwrap_or_default()
    }

    /// The Kafka headers that repeat `type`, `v` and `trace`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (HEADER_TYPE, self.event_type().name().to_owned()),
            (HEADER_VERSION, self.v.to_string()),
        ];
        if let Some(trace) = &self.trace {
            headers.push((HEADER_TRACE, trace.clone()));
            headers.push((HEADER_TRACEPARENT, trace.clone()));
        }
        headers
    }

    /// Decodes a record value, classifying every failure. Never panics, whatever the bytes.
    ///
    /// Valid input takes one typed pass; only input that fails it is parsed into a JSON
    /// value and walked against the schema, which names every violation.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if let Some(envelope) = crate::fast::decode(bytes) {
            return Ok(envelope);
        }
        Envelope::decode_checked(bytes)
    }

    /// The typed fast path alone: `Some` only for input it accepts, for tests that hold it
    /// to the walker.
    #[doc(hidden)]
    pub fn decode_fast(bytes: &[u8]) -> Option<Envelope> {
        crate::fast::decode(bytes)
    }

    /// Decodes through the schema walker alone (what [`Envelope::decode`] falls back to),
    /// for tests that compare the two paths.
    #[doc(hidden)]
    pub fn decode_checked(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        Envelope::from_json(value)
    }

    /// Decodes an already parsed JSON value.
    pub fn from_json(value: Value) -> Result<Envelope, DecodeError> {
        let violations = Validator::envelope().validate(&value);
        if !violations.is_empty() {
            return Err(DecodeError::NotEnvelope(violations));
        }
        let Value::Object(mut map) = value else {
            return Err(DecodeError::NotEnvelope(vec![Violation::new(
                "",
                "expected object",
            )]));
        };
        let type_name = map.get("type").and_then(Value::as_str).unwrap_or_default();
        let event_type = EventType::from_name(type_name)
            .ok_or_else(|| DecodeError::UnknownType(type_name.to_owned()))?;
        let raw_v = map.get("v").and_then(Value::as_u64).unwrap_or_default();
        let v = u32::try_from(raw_v)
            .ok()
            .filter(|v| event_type.supported_versions().contains(v))
            .ok_or_else(|| DecodeError::UnsupportedVersion {
                event_type,
                v: raw_v,
                supported: event_type.supported_versions().to_vec(),
            })?;
        let data = map.remove("data").unwrap_or_default();
        let event =
            event_type
                .parse(v, data)
                .map_err(|violations| DecodeError::InvalidPayload {
                    event_type,
                    v,
                    violations: violations.into_iter().map(|x| x.under("/data")).collect(),
                })?;
        let text = |name: &str| {
            map.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        // The envelope schema already checked both formats; a failure here is a defect,
        // reported as a classified error rather than a panic.
        let id = Ulid::from_string(&text("id"))
            .map_err(|e| DecodeError::NotEnvelope(vec![Violation::new("/id", e.to_string())]))?;
        let time = DateTime::parse_from_rfc3339(&text("time"))
            .map_err(|e| DecodeError::NotEnvelope(vec![Violation::new("/time", e.to_string())]))?
            .with_timezone(&Utc);
        Ok(Envelope {
            id,
            v,
            time,
            source: text("source"),
            key: text("key"),
            trace: map.get("trace").and_then(Value::as_str).map(str::to_owned),
            event,
        })
    }
}
