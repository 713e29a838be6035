//! Turning validated request events into envelopes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tributary_events::{ActivityKind, Envelope, EventType, TraceParent};
use ulid::Ulid;

use crate::body::kind_of;
use crate::error::{ApiError, Detail};

/// Which endpoint, and so which event type, a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/products`
    Products,
    /// `POST /v1/prices`
    Prices,
    /// `POST /v1/stock`
    Stock,
    /// `POST /v1/activity`
    Activity,
    /// `DELETE /v1/products/{id}`
    DeleteProduct,
}

impl Route {
    /// The event type a route publishes, for metrics (`activity.*` for the three kinds).
    pub fn type_label(self) -> &'static str {
        match self {
            Route::Products => EventType::ProductUpserted.name(),
            Route::Prices => EventType::PriceUpdated.name(),
            Route::Stock => EventType::StockChanged.name(),
            Route::Activity => "activity.*",
            Route::DeleteProduct => EventType::ProductDeleted.name(),
        }
    }

    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Route::Products => "products",
            Route::Prices => "prices",
            Route::Stock => "stock",
            Route::Activity => "activity",
            Route::DeleteProduct => "delete_product",
        }
    }
}

/// Where event ids come from.
#[derive(Debug, Clone)]
pub enum Ids {
    /// Fresh ULIDs.
    Fresh,
    /// A ULID whose 48-bit time part is when the request was first accepted (ids stay
    /// sortable by time, like fresh ones) and whose 80 random bits are derived from
    /// (client, idempotency key, the request's fingerprint, index): a replay yields the same
    /// ids from the remembered time, and a key reused for different content gets other ids,
    /// so downstream de-duplication never drops it as a repeat.
    Derived {
        client: String,
        key: String,
        fingerprint: [u8; 32],
        /// Unix milliseconds of the first acceptance.
        accepted_at_ms: u64,
    },
}

impl Ids {
    /// The id of the request's event at `index`.
    pub fn id(&self, index: usize) -> Ulid {
        match self {
            Ids::Fresh => Ulid::new(),
            Ids::Derived {
                client,
                key,
                fingerprint,
                accepted_at_ms,
            } => {
                let mut hash = Sha256::new();
                hash.update(b"tributary-ingest\0");
                hash.update(client.as_bytes());
                hash.update(b"\0");
                hash.update(key.as_bytes());
                hash.update(b"\0");
                hash.update(fingerprint);
                hash.update(index.to_be_bytes());
                let digest = hash.finalize();
                let mut random = [0u8; 16];
                random[6..].copy_from_slice(&digest[..10]);
                // ULID: 48 bits of milliseconds, then 80 random bits.
                let time = u128::from(accepted_at_ms & ((1 << 48) - 1)) << 80;
                Ulid::from(time | u128::from_be_bytes(random))
            }
        }
    }
}

/// Most violations reported for one request.
const MAX_DETAILS: usize = 1000;

/// Validates every event of a request (reporting every violation of every event), and
/// wraps them in envelopes in request order. One invalid event rejects the request.
pub fn envelopes(
    route: Route,
    values: Vec<Value>,
    now: DateTime<Utc>,
    trace: TraceParent,
    ids: &Ids,
) -> Result<Vec<Envelope>, ApiError> {
    let mut details = Vec::new();
    let mut events = Vec::with_capacity(values.len());
    for (index, mut value) in values.into_iter().enumerate() {
        if details.len() >= MAX_DETAILS {
            break;
        }
        if !value.is_object() {
            details.push(Detail {
                index,
                path: String::new(),
                message: format!("expected a JSON object, got {}", kind_of(&value)),
            });
            continue;
        }
        let (event_type, kind_problem) = match route {
            Route::Products => (EventType::ProductUpserted, None),
            Route::Prices => (EventType::PriceUpdated, None),
            Route::Stock => (EventType::StockChanged, None),
            Route::DeleteProduct => (EventType::ProductDeleted, None),
            Route::Activity => activity_type(&value),
        };
        if route == Route::Activity && value.get("time").is_none_or(Value::is_null) {
            value["time"] = json!(now.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let mut found: Vec<Detail> = match event_type.parse(1, value) {
            Ok(event) => {
                events.push(event);
                Vec::new()
            }
            Err(violations) => violations
                .into_iter()
                .map(|v| Detail {
                    index,
                    path: v.path,
                    message: v.message,
                })
                .collect(),
        };
        if let Some(problem) = kind_problem {
            found.retain(|d| d.path != "/kind");
            found.insert(0, problem(index));
        }
        details.extend(found);
    }
    if !details.is_empty() {
        details.truncate(MAX_DETAILS);
        return Err(ApiError::Validation(details));
    }
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let time = match &event {
                tributary_events::Event::Activity(a) => a.time.unwrap_or(now),
                _ => now,
            };
            Envelope::new("ingest", event)
                .at(time)
                .with_id(ids.id(index))
                .with_trace(trace)
        })
        .collect())
}

type KindProblem = fn(usize) -> Detail;

/// The envelope type an activity's `kind` selects; an invalid kind is reported as such
/// (the rest of the event is still checked, as a `product_viewed`).
fn activity_type(value: &Value) -> (EventType, Option<KindProblem>) {
    let kind = value.get("kind");
    let known = ActivityKind::ALL
        .into_iter()
        .find(|k| kind.and_then(Value::as_str) == Some(k.as_str()));
    match (known, kind) {
        (Some(kind), _) => (EventType::for_activity(kind), None),
        (None, None) => (
            EventType::ProductViewed,
            Some(|index| Detail {
                index,
                path: "/kind".into(),
                message: "is required".into(),
            }),
        ),
        (None, Some(_)) => (
            EventType::ProductViewed,
            Some(|index| Detail {
                index,
                path: "/kind".into(),
                message: "must be one of \"product_viewed\", \"added_to_cart\", \"order_placed\""
                    .into(),
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(route: Route, values: Vec<Value>) -> Result<Vec<Envelope>, ApiError> {
        envelopes(
            route,
            values,
            Utc::now(),
            TraceParent::new_root(),
            &Ids::Fresh,
        )
    }

    #[test]
    fn every_violation_of_every_event_is_reported_with_its_index() {
        let err = build(
            Route::Prices,
            vec![
                json!({"product_id": "p-1", "currency": "EUR", "wholesale_minor": 1, "retail_minor": 2}),
                json!({"product_id": "p 2", "currency": "euro", "wholesale_minor": -1}),
                json!("not an object"),
            ],
        )
        .unwrap_err();
        let ApiError::Validation(details) = err else {
            panic!()
        };
        let got: Vec<(usize, &str)> = details.iter().map(|d| (d.index, d.path.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (1, "/retail_minor"),
                (1, "/currency"),
                (1, "/product_id"),
                (1, "/wholesale_minor"),
                (2, "")
            ]
        );
    }

    #[test]
    fn an_activity_kind_selects_its_type_and_time_defaults_to_now() {
        let now = Utc::now();
        let envelopes = envelopes(
            Route::Activity,
            vec![json!({"kind": "added_to_cart", "product_id": "p", "retailer_id": "r"})],
            now,
            TraceParent::new_root(),
            &Ids::Fresh,
        )
        .unwrap();
        assert_eq!(envelopes[0].event_type(), EventType::AddedToCart);
        assert_eq!(envelopes[0].time.timestamp_millis(), now.timestamp_millis());
    }

    #[test]
    fn a_bad_kind_is_named_once_and_the_rest_is_still_checked() {
        let err = build(
            Route::Activity,
            vec![json!({"kind": "teleported", "retailer_id": 5})],
        )
        .unwrap_err();
        let ApiError::Validation(details) = err else {
            panic!()
        };
        let paths: Vec<&str> = details.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, vec!["/kind", "/product_id", "/retailer_id"]);
    }

    #[test]
    fn derived_ids_are_stable_per_client_key_and_index() {
        let derived = |client: &str, fingerprint: u8| Ids::Derived {
            client: client.into(),
            key: "k".into(),
            fingerprint: [fingerprint; 32],
            accepted_at_ms: 1_700_000_000_000,
        };
        let ids = derived("c", 1);
        assert_eq!(ids.id(0), derived("c", 1).id(0));
        assert_ne!(ids.id(0), ids.id(1));
        assert_ne!(ids.id(0), derived("c2", 1).id(0));
        assert_ne!(
            ids.id(0),
            derived("c", 2).id(0),
            "the key reused for other content"
        );
    }

    #[test]
    fn derived_ids_keep_the_acceptance_time_and_sort_by_it() {
        let at = |ms: u64| Ids::Derived {
            client: "c".into(),
            key: "k".into(),
            fingerprint: [1; 32],
            accepted_at_ms: ms,
        };
        let earlier = at(1_700_000_000_000);
        let later = at(1_700_000_000_001);
        assert_eq!(earlier.id(0).timestamp_ms(), 1_700_000_000_000);
        for i in 0..100 {
            // Whatever the derived bits, a later acceptance sorts after an earlier one.
            assert!(earlier.id(i) < later.id(0), "index {i}");
            assert!(earlier.id(i).to_string() < later.id(0).to_string());
            // Only the time part differs between the two acceptances.
            assert_eq!(earlier.id(i).random(), later.id(i).random());
        }
        let fresh = Ids::Fresh.id(0).timestamp_ms();
        let derived = at(fresh).id(0).timestamp_ms();
        assert_eq!(derived, fresh);
    }
}
