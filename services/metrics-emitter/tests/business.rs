//! Business metrics end to end: known events on the real topics produce exactly the
//! expected DogStatsD counter totals and `event.age_ms` samples; bad records of every kind
//! are dead-lettered and metrics keep flowing. (Its own test binary: the metrics recorder is
//! process-wide and must point at this test's agent.)

mod common;

use std::time::{Duration, Instant};

use common::events::*;
use common::*;
use tributary_events::{ActivityKind, topics};
use tributary_runtime::Shutdown;
use tributary_runtime::dlq;
use tributary_testkit::{RawRecord, TestBroker, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn known_events_produce_exact_counter_totals_tags_and_ages() {
    // SQLite storage: the memory engine lists no groups, and the lag gauges are checked too.
    let broker = TestBroker::start_durable().unwrap();
    for topic in topics::ALL {
        broker.create_named_topic(topic, 2).await.unwrap();
    }
    let agent = Agent::start();
    let group = unique_name("emitter");
    let mut config = config(&broker, &group);
    config.runtime.statsd_addr = agent.addr.to_string();
    let shutdown = Shutdown::new();
    let running = metrics_emitter::start(config, shutdown.clone())
        .await
        .unwrap();

    let catalog = [
        (topics::PRODUCTS, product("p-1", "b1", "shoes")),
        (topics::PRODUCTS, product("p-2", "b1", "shoes")),
        (topics::PRODUCTS, product("p-3", "b2", "bags")),
        (topics::PRODUCTS, deleted("p-3")),
        (topics::PRICES, price("p-1", "EUR")),
        (topics::PRICES, price("p-2", "EUR")),
        (topics::PRICES, price("p-3", "USD")),
        (topics::STOCK, stock("p-1", 5)),
        (topics::STOCK, stock("p-2", 0)),
        (topics::STOCK, stock("p-3", 0)),
        (topics::PRODUCTS_ENRICHED, enriched("p-1", true)),
        (topics::PRODUCTS_ENRICHED, enriched("p-2", false)),
        (topics::AGGREGATES, aggregate("p-1")),
    ];
    for (topic, envelope) in &catalog {
        broker
            .produce_envelopes(topic, std::slice::from_ref(envelope))
            .await
            .unwrap();
    }
    // Activity happened 5 s ago: its age must say so. A poison record sits in the middle.
    let before = [
        activity(ActivityKind::ProductViewed, "p-1", None, 5),
        activity(ActivityKind::ProductViewed, "p-2", None, 5),
        activity(ActivityKind::AddedToCart, "p-1", None, 5),
    ];
    let after = [
        activity(
            ActivityKind::OrderPlaced,
            "p-1",
            Some((Some(3), 1000, "EUR")),
            5,
        ),
        activity(
            ActivityKind::OrderPlaced,
            "p-2",
            Some((None, 250, "USD")),
            5,
        ),
    ];
    broker
        .produce_envelopes(topics::ACTIVITY, &before)
        .await
        .unwrap();
    // Bad input of every kind: malformed, an unknown version, a wrongly typed field, an
    // oversized field, an unknown type, not an envelope. Each is dead-lettered; none stops
    // the stream.
    let good = after[0].to_json();
    let with = |path: &str, value: serde_json::Value| {
        let mut v = good.clone();
        *v.pointer_mut(path).unwrap() = value;
        v.to_string()
    };
    let poison = [
        ("{not json".to_owned(), "not_json"),
        (with("/v", 99.into()), "unsupported_version"),
        (with("/data/quantity", "three".into()), "invalid_payload"),
        (
            with("/data/retailer_id", "r".repeat(300_000).into()),
            "invalid_payload",
        ),
        (with("/type", "activity.teleported".into()), "unknown_type"),
        ("[1, 2, 3]".to_owned(), "not_envelope"),
    ];
    let records: Vec<RawRecord> = poison
        .iter()
        .map(|(value, _)| RawRecord::new("p-1", value.as_bytes()))
        .collect();
    broker
        .produce_raw(topics::ACTIVITY, &records)
        .await
        .unwrap();
    broker
        .produce_envelopes(topics::ACTIVITY, &after)
        .await
        .unwrap();

    let expected = totals(&[
        (
            "tributary.catalog.product.upserted",
            &["brand:b1", "category:shoes"],
            2.0,
        ),
        (
            "tributary.catalog.product.upserted",
            &["brand:b2", "category:bags"],
            1.0,
        ),
        ("tributary.catalog.product.deleted", &[], 1.0),
        ("tributary.catalog.price.updated", &["currency:EUR"], 2.0),
        ("tributary.catalog.price.updated", &["currency:USD"], 1.0),
        ("tributary.catalog.stock.changed", &[], 3.0),
        ("tributary.catalog.stock.out_of_stock", &[], 2.0),
        (
            "tributary.catalog.product.enriched",
            &["complete:true"],
            1.0,
        ),
        (
            "tributary.catalog.product.enriched",
            &["complete:false"],
            1.0,
        ),
        ("tributary.activity.event", &["kind:product_viewed"], 2.0),
        ("tributary.activity.event", &["kind:added_to_cart"], 1.0),
        ("tributary.activity.event", &["kind:order_placed"], 2.0),
        ("tributary.activity.order.units", &[], 4.0),
        (
            "tributary.activity.order.revenue_minor",
            &["currency:EUR"],
            3000.0,
        ),
        (
            "tributary.activity.order.revenue_minor",
            &["currency:USD"],
            250.0,
        ),
        (
            "tributary.analytics.window.aggregated",
            &["dim:product", "window:1m"],
            1.0,
        ),
    ]);
    let business = |totals: Totals| -> Totals {
        totals
            .into_iter()
            .filter(|((name, _), _)| {
                [
                    "tributary.catalog.",
                    "tributary.activity.",
                    "tributary.analytics.",
                ]
                .iter()
                .any(|p| name.starts_with(p))
            })
            .collect()
    };
    let started = Instant::now();
    while business(agent.totals("tributary.")) != expected {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "totals never matched; got {:#?}",
            business(agent.totals("tributary."))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every bad record went to the group's dead-letter topic, in order, with the runtime's
    // headers, and the orders after them were still counted (above).
    let dead = broker
        .consume_count(
            &[&format!("{group}.dlq")],
            poison.len(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    for (record, (value, kind)) in dead.iter().zip(&poison) {
        assert_eq!(record.value.as_deref(), Some(value.as_bytes()));
        assert_eq!(record.header(dlq::ORIGINAL_TOPIC), Some(topics::ACTIVITY));
        assert_eq!(record.header(dlq::ERROR_KIND), Some(*kind), "{value:.80}");
        assert!(record.header(dlq::ORIGINAL_OFFSET).is_some());
    }

    // The lag monitor's gauges for this very group, with their tags.
    let started = Instant::now();
    let gauge = |name: &str, tags: &[String]| {
        agent.lines().iter().any(|l| {
            l.starts_with(&format!("{name}:"))
                && l.contains("|g")
                && tags.iter().all(|t| l.contains(t.as_str()))
        })
    };
    let group_tag = format!("group:{group}");
    let lag_tags = [
        group_tag.clone(),
        format!("topic:{}", topics::ACTIVITY),
        "partition:".to_owned(),
    ];
    while !(gauge(
        "tributary.kafka.consumer.status",
        std::slice::from_ref(&group_tag),
    ) && gauge("tributary.kafka.consumer.lag", &lag_tags))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no lag gauges for {group}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A clean stop sends everything; nothing is counted twice.
    shutdown.trigger();
    running.wait().await.unwrap();
    agent.quiesce();
    assert_eq!(business(agent.totals("tributary.")), expected);

    // One age sample per envelope, tagged with its topic; activity is 5 s old.
    let ages = agent.samples("tributary.event.age_ms");
    for (topic, count) in [
        (topics::PRODUCTS, 4),
        (topics::PRICES, 3),
        (topics::STOCK, 3),
        (topics::PRODUCTS_ENRICHED, 2),
        (topics::AGGREGATES, 1),
        (topics::ACTIVITY, 5),
    ] {
        let tag = format!("topic:{topic}");
        let samples: Vec<f64> = ages
            .iter()
            .filter(|(tags, _)| tags.contains(&tag))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(samples.len(), count, "age samples for {topic}");
        if topic == topics::ACTIVITY {
            assert!(
                samples.iter().all(|&ms| (5_000.0..65_000.0).contains(&ms)),
                "{samples:?}"
            );
        }
    }
}
