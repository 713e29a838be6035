//! The Tributary event library: the envelope, typed v1 payloads, validation that reports
//! every violation, decoding that classifies every failure, and the JSON Schema contract.
//!
//! Evolution rules (seed 004, "schema discipline"): a new field is optional with a default;
//! readers ignore unknown fields; a field is never removed or retyped inside a version; a
//! breaking change is a new version on a new topic. [`compat::check_backward`] enforces the
//! rules against the committed schemas in `schemas/`.

pub mod activity;
pub mod analytics;
pub mod catalog;
pub mod compat;
pub mod envelope;
pub mod event;
mod fast;
pub mod rules;
pub mod schema;
pub mod trace;
pub mod validate;

pub use activity::{Activity, ActivityKind};
pub use analytics::{Dimension, WindowAggregate, WindowSize};
pub use catalog::{EnrichedProduct, Price, Product, ProductDeleted, Stock};
pub use envelope::{DecodeError, Envelope};
pub use event::{Event, EventType, topics};
pub use trace::TraceParent;
pub use validate::Violation;
