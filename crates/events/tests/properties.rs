//! Property tests: every event round-trips through its bytes, and no input makes decoding panic.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use tributary_events::*;

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,40}"
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{1,{max}}}")).unwrap()
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000_000)
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().unwrap())
}

fn product() -> impl Strategy<Value = Product> {
    (
        id(),
        id(),
        text(30),
        text(60),
        text(20),
        proptest::option::of(text(200)),
        proptest::option::of(proptest::collection::btree_map(text(10), text(20), 0..5)),
        proptest::option::of(proptest::collection::vec(text(40), 0..4)),
    )
        .prop_map(
            |(product_id, brand_id, sku, name, category, description, attributes, images)| {
                Product {
                    product_id,
                    brand_id,
                    sku,
                    name,
                    category,
                    description,
                    attributes,
                    images,
                }
            },
        )
}

fn price() -> impl Strategy<Value = Price> {
    (id(), "[A-Z]{3}", any::<u64>(), any::<u64>()).prop_map(
        |(product_id, currency, wholesale_minor, retail_minor)| Price {
            product_id,
            currency,
            wholesale_minor,
            retail_minor,
        },
    )
}

fn activity() -> impl Strategy<Value = Activity> {
    (
        prop_oneof![
            Just(ActivityKind::ProductViewed),
            Just(ActivityKind::AddedToCart),
            Just(ActivityKind::OrderPlaced)
        ],
        id(),
        id(),
        proptest::option::of(time()),
        proptest::option::of(1u64..1000),
        any::<u64>(),
        "[A-Z]{3}",
        id(),
    )
        .prop_map(
            |(kind, product_id, retailer_id, time, quantity, unit, currency, order)| {
                let order_fields = kind == ActivityKind::OrderPlaced;
                Activity {
                    kind,
                    product_id,
                    retailer_id,
                    time,
                    quantity,
                    unit_price_minor: order_fields.then_some(unit),
                    currency: order_fields.then_some(currency),
                    order_id: order_fields.then_some(order),
                }
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        product().prop_map(Event::ProductUpserted),
        id().prop_map(|product_id| Event::ProductDeleted(ProductDeleted { product_id })),
        price().prop_map(Event::PriceUpdated),
        (id(), any::<u64>(), proptest::option::of(text(20))).prop_map(
            |(product_id, quantity, warehouse)| {
                Event::StockChanged(Stock {
                    product_id,
                    quantity,
                    warehouse,
                })
            }
        ),
        (
            product(),
            proptest::option::of(price()),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            time()
        )
            .prop_map(|(product, price, stock, complete, updated_at)| {
                Event::ProductEnriched(EnrichedProduct {
                    product,
                    price,
                    stock,
                    complete,
                    updated_at,
                })
            }),
        activity().prop_map(Event::Activity),
        (
            id(),
            time(),
            any::<u64>(),
            any::<bool>(),
            proptest::option::of("[A-Z]{3}")
        )
            .prop_map(|(id, start, n, is_final, currency)| {
                Event::WindowAggregated(WindowAggregate {
                    dim: Dimension::Brand,
                    id,
                    window: WindowSize::Hour,
                    start,
                    end: start + chrono::Duration::hours(1),
                    views: n,
                    carts: n / 2,
                    orders: n / 3,
                    units: n / 4,
                    revenue_minor: n / 5,
                    currency,
                    is_final,
                })
            }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (event(), time(), any::<bool>(), text(20)).prop_map(|(event, at, traced, source)| {
        let e = Envelope::new(source, event).at(at);
        if traced {
            e.with_trace(TraceParent::new_root())
        } else {
            e
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_envelope_round_trips_through_its_bytes(e in envelope()) {
        let decoded = Envelope::decode(&e.encode());
        prop_assert_eq!(decoded, Ok(e));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic_and_fail_with_a_kind(
        e in envelope(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = e.encode();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        if let Err(err) = Envelope::decode(&bytes) {
            prop_assert!(!err.kind().is_empty());
        }
    }

    #[test]
    fn truncated_envelopes_are_not_json(e in envelope(), cut in any::<prop::sample::Index>()) {
        let bytes = e.encode();
        let cut = cut.index(bytes.len());
        prop_assert_eq!(Envelope::decode(&bytes[..cut]).map_err(|e| e.kind()), Err("not_json"));
    }

    #[test]
    fn arbitrary_json_values_never_panic(value in arbitrary_json()) {
        let _ = Envelope::from_json(value);
    }
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("id"),
            Just("type"),
            Just("v"),
            Just("data"),
            Just("catalog.price.updated")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("type".to_string()),
                    Just("v".to_string()),
                    Just("time".to_string()),
                    Just("data".to_string()),
                    Just("key".to_string()),
                    Just("source".to_string()),
                    "[a-z_]{1,12}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
