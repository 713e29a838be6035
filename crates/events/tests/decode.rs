//! Decoding classifies every failure, and validation reports every violation with its path.

use serde_json::{Value, json};
use tributary_events::{DecodeError, Envelope, Event, EventType, Price};

fn envelope(event_type: &str, v: Value, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "01JBZ7Q3M4N5P6R7S8T9V0W1X2", "type": event_type, "v": v,
        "time": "2026-11-01T10:15:00Z", "source": "test", "key": "p-1", "data": data
    }))
    .unwrap()
}

fn price(data: Value) -> Vec<u8> {
    envelope("catalog.price.updated", json!(1), data)
}

fn paths(violations: &[tributary_events::Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.path.as_str()).collect()
}

#[test]
fn a_valid_envelope_decodes_to_its_typed_event() {
    let bytes = price(
        json!({"product_id": "p-1", "currency": "EUR", "wholesale_minor": 100, "retail_minor": 250}),
    );
    let decoded = Envelope::decode(&bytes).unwrap();
    assert_eq!(decoded.event_type(), EventType::PriceUpdated);
    assert_eq!(decoded.key, "p-1");
    assert_eq!(
        decoded.event,
        Event::PriceUpdated(Price {
            product_id: "p-1".into(),
            currency: "EUR".into(),
            wholesale_minor: 100,
            retail_minor: 250
        })
    );
}

#[test]
fn unknown_envelope_and_payload_fields_are_ignored() {
    let mut value: Value = serde_json::from_slice(&price(
        json!({"product_id": "p-1", "currency": "EUR", "wholesale_minor": 1, "retail_minor": 2, "tax": {"x": 1}}),
    ))
    .unwrap();
    value["added_later"] = json!([1, 2, 3]);
    assert!(Envelope::from_json(value).is_ok());
}

#[test]
fn bytes_that_are_not_json_are_classified_not_json() {
    for bytes in [
        &b"{"[..],
        b"",
        b"\xff\xfe{}",
        b"{\"a\": 1} trailing",
        b"NaN",
    ] {
        let err = Envelope::decode(bytes).unwrap_err();
        assert_eq!(err.kind(), "not_json", "{bytes:?}: {err}");
    }
}

#[test]
fn json_that_is_not_an_envelope_names_every_missing_field() {
    let err = Envelope::decode(b"{\"id\": 5, \"v\": \"one\"}").unwrap_err();
    let DecodeError::NotEnvelope(violations) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        paths(violations),
        vec!["/type", "/time", "/source", "/key", "/data", "/id", "/v"],
        "{err}"
    );
    for bytes in [&b"[]"[..], b"42", b"null", b"\"text\""] {
        assert_eq!(Envelope::decode(bytes).unwrap_err().kind(), "not_envelope");
    }
    let bad_id = envelope("catalog.price.updated", json!(1), json!({})).replace_id("not-a-ulid");
    assert_eq!(
        Envelope::decode(&bad_id).unwrap_err().kind(),
        "not_envelope"
    );
}

#[test]
fn an_unknown_type_is_classified_unknown_type() {
    let err =
        Envelope::decode(&envelope("catalog.product.teleported", json!(1), json!({}))).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownType("catalog.product.teleported".into())
    );
}

#[test]
fn an_unsupported_version_is_classified_unsupported_version() {
    for v in [json!(2), json!(99), json!(u64::MAX)] {
        let err =
            Envelope::decode(&envelope("catalog.price.updated", v.clone(), json!({}))).unwrap_err();
        assert_eq!(err.kind(), "unsupported_version", "v={v}: {err}");
    }
    // A version below 1 or of the wrong type is not a valid envelope at all.
    for v in [json!(0), json!(-1), json!("1"), json!(1.5)] {
        let err =
            Envelope::decode(&envelope("catalog.price.updated", v.clone(), json!({}))).unwrap_err();
        assert_eq!(err.kind(), "not_envelope", "v={v}: {err}");
    }
}

#[test]
fn an_invalid_payload_reports_every_violation_with_its_path() {
    let err = Envelope::decode(&price(json!({
        "product_id": "has spaces", "currency": "eur", "wholesale_minor": -5, "retail_minor": "12"
    })))
    .unwrap_err();
    let DecodeError::InvalidPayload { violations, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        paths(violations),
        vec![
            "/data/currency",
            "/data/product_id",
            "/data/retail_minor",
            "/data/wholesale_minor"
        ],
        "{err}"
    );
    assert!(
        violations[0].message.contains("ISO 4217"),
        "{}",
        violations[0]
    );
    assert!(
        violations[2]
            .message
            .contains("expected integer, got string"),
        "{}",
        violations[2]
    );
    assert!(violations[3].message.contains(">= 0"), "{}", violations[3]);
}

#[test]
fn missing_required_payload_fields_are_each_named() {
    let err = Envelope::decode(&envelope(
        "catalog.product.upserted",
        json!(1),
        json!({"product_id": "p"}),
    ))
    .unwrap_err();
    let DecodeError::InvalidPayload { violations, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        paths(violations),
        vec![
            "/data/brand_id",
            "/data/sku",
            "/data/name",
            "/data/category"
        ]
    );
    assert!(violations.iter().all(|v| v.message == "is required"));
}

#[test]
fn an_order_requires_price_currency_and_order_id() {
    let data = json!({"kind": "order_placed", "product_id": "p-1", "retailer_id": "r-1"});
    let err = Envelope::decode(&envelope("activity.order_placed", json!(1), data)).unwrap_err();
    let DecodeError::InvalidPayload { violations, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        paths(violations),
        vec!["/data/unit_price_minor", "/data/currency", "/data/order_id"]
    );
    let view = json!({"kind": "product_viewed", "product_id": "p-1", "retailer_id": "r-1"});
    assert!(Envelope::decode(&envelope("activity.product_viewed", json!(1), view)).is_ok());
}

#[test]
fn an_activity_kind_must_match_its_envelope_type() {
    let data = json!({"kind": "added_to_cart", "product_id": "p-1", "retailer_id": "r-1"});
    let err = Envelope::decode(&envelope("activity.product_viewed", json!(1), data)).unwrap_err();
    let DecodeError::InvalidPayload { violations, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(paths(violations), vec!["/data/kind"]);
}

#[test]
fn oversized_and_nested_values_are_rejected_by_path() {
    let data = json!({
        "product_id": "p-1", "brand_id": "b", "sku": "s", "name": "x".repeat(513), "category": "c",
        "images": vec!["u"; 65], "attributes": {"a": {"deep": {"deeper": 1}}}
    });
    let err = Envelope::decode(&envelope("catalog.product.upserted", json!(1), data)).unwrap_err();
    let DecodeError::InvalidPayload { violations, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        paths(violations),
        vec!["/data/attributes/a", "/data/images", "/data/name"],
        "{err}"
    );
}

#[test]
fn path_tokens_are_escaped_as_json_pointers() {
    let data = json!({"product_id": "p", "brand_id": "b", "sku": "s", "name": "n", "category": "c",
                      "attributes": {"a/b~c": 1}});
    let err = Envelope::decode(&envelope("catalog.product.upserted", json!(1), data)).unwrap_err();
    let DecodeError::InvalidPayload { violations, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(paths(violations), vec!["/data/attributes/a~1b~0c"]);
}

#[test]
fn the_headers_repeat_type_version_and_trace() {
    let bytes = price(
        json!({"product_id": "p-1", "currency": "EUR", "wholesale_minor": 1, "retail_minor": 2}),
    );
    let e = Envelope::decode(&bytes)
        .unwrap()
        .with_trace(tributary_events::TraceParent::new_root());
    let headers = e.headers();
    assert_eq!(headers[0], ("type", "catalog.price.updated".to_string()));
    assert_eq!(headers[1], ("v", "1".to_string()));
    assert_eq!(headers[2].0, "trace");
    assert_eq!(Some(headers[2].1.clone()), e.trace);
}

trait ReplaceId {
    fn replace_id(self, id: &str) -> Vec<u8>;
}

impl ReplaceId for Vec<u8> {
    fn replace_id(self, id: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&self).unwrap();
        v["id"] = json!(id);
        serde_json::to_vec(&v).unwrap()
    }
}
