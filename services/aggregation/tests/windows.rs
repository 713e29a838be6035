//! Aggregation against a real broker: counts and revenue per product and per brand equal a
//! reference computed here (a brand spread over every partition, activity arriving before
//! its product); late events inside the grace period amend their window and later ones are
//! dead-lettered; order inside a window does not matter; copies of an event under its id
//! count once; a partition opened again re-publishes only what may not have gone out; bad
//! queries are named.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use tributary_events::{ActivityKind, Envelope, Event};
use tributary_runtime::{Shutdown, dlq};
use tributary_testkit::{RawRecord, TestBroker};

const WAIT: Duration = Duration::from_secs(90);

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn product_of(e: &Envelope) -> &str {
    match &e.event {
        Event::Activity(a) => &a.product_id,
        _ => "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_and_revenue_match_a_reference_per_product_and_per_brand() {
    const PARTITIONS: i32 = 6;
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-ref", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(broker, &topics, dir.path());
    // Events arrive up to three minutes out of order here; none may be late.
    config.grace_ms = 3_600_000;
    let shutdown = Shutdown::new();
    let running = aggregation::start(config, shutdown.clone()).await.unwrap();

    let brand_of = |i: usize| if i < 24 { "b-spread" } else { "b-other" };
    let spread: BTreeSet<i32> = (0..24)
        .map(|i| aggregation::api::partition_of(&format!("p-{i}"), PARTITIONS))
        .collect();
    assert_eq!(
        spread.len(),
        PARTITIONS as usize,
        "b-spread's products are on every partition"
    );
    let base = at("2026-11-23T10:10:00Z");
    let events: Vec<Envelope> = (0..600usize)
        .map(|i| {
            let time = base + chrono::Duration::milliseconds(((i * 7919) % 170_000) as i64);
            activity(
                ActivityKind::ALL[i % 3],
                &format!("p-{}", i % 30),
                time,
                1 + (i % 3) as u64,
                100 + (i % 7) as u64,
            )
        })
        .collect();
    let products: Vec<Envelope> = (0..30)
        .map(|i| product(&format!("p-{i}"), brand_of(i)))
        .collect();
    // Half the activity arrives before any product is known: it is held, then released.
    broker
        .produce_envelopes(&topics.activity, &events[..300])
        .await
        .unwrap();
    broker
        .produce_envelopes(&topics.products, &products)
        .await
        .unwrap();
    broker
        .produce_envelopes(&topics.activity, &events[300..])
        .await
        .unwrap();

    let api = running.api_addr;
    for i in 0..30 {
        let id = format!("p-{i}");
        let mine: Vec<&Envelope> = events.iter().filter(|e| product_of(e) == id).collect();
        for (window, seconds) in [("1m", 60), ("1h", 3600)] {
            let want = reference(mine.iter().copied(), seconds);
            eventually(&format!("{id} {window}"), WAIT, || async {
                windows(api, "product", &id, window).await == want
            })
            .await;
        }
    }
    for brand in ["b-spread", "b-other"] {
        let mine: Vec<&Envelope> = events
            .iter()
            .filter(|e| {
                let p: usize = product_of(e)[2..].parse().unwrap();
                brand_of(p) == brand
            })
            .collect();
        for (window, seconds) in [("1m", 60), ("1h", 3600)] {
            let want = reference(mine.iter().copied(), seconds);
            eventually(&format!("{brand} {window}"), WAIT, || async {
                windows(api, "brand", brand, window).await == want
            })
            .await;
        }
    }

    // The topic carries the same values: the latest record of the brand's hour.
    let want = reference(
        events.iter().filter(|e| {
            let p: usize = product_of(e)[2..].parse().unwrap();
            brand_of(p) == "b-spread"
        }),
        3600,
    );
    let key = "brand:b-spread:1h:2026-11-23T10:00:00Z";
    let total = &want["2026-11-23T10:00:00Z"];
    let records = broker
        .consume_until(&[&topics.output], WAIT, |records| {
            records
                .iter()
                .rev()
                .find(|r| r.key_str() == Some(key))
                .and_then(|r| r.envelope().ok())
                .is_some_and(|e| match e.event {
                    Event::WindowAggregated(w) => {
                        w.views == total.views
                            && w.carts == total.carts
                            && w.orders == total.orders
                            && w.units == total.units
                            && w.revenue_minor == total.revenue_minor
                    }
                    _ => false,
                })
        })
        .await
        .unwrap();
    assert!(!records.is_empty());
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_events_amend_inside_the_grace_period_and_are_dead_lettered_after_it() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-late", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = aggregation::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    broker
        .produce_envelopes(&topics.products, &[product("p-1", "b-1")])
        .await
        .unwrap();
    let view = |t: &str| activity(ActivityKind::ProductViewed, "p-1", at(t), 1, 0);
    let poison = tributary_testkit::RawRecord::from_envelope(&Envelope::new(
        "test",
        Event::StockChanged(tributary_events::Stock {
            product_id: "p-1".into(),
            quantity: 1,
            warehouse: None,
        }),
    ));
    let records = vec![
        RawRecord::from_envelope(&view("2026-11-23T10:10:30Z")),
        // Stream time 10:11:00.5: the 10:10 window ends at 10:11:00, its grace at 10:11:01.
        RawRecord::from_envelope(&view("2026-11-23T10:11:00.500Z")),
        // Inside the grace period: amends 10:10.
        RawRecord::from_envelope(&view("2026-11-23T10:10:45Z")),
        // Stream time 10:11:05: 10:10 closes.
        RawRecord::from_envelope(&view("2026-11-23T10:11:05Z")),
        // After it: late, dead-lettered.
        RawRecord::from_envelope(&view("2026-11-23T10:10:50Z")),
        // Not an activity event: dead-lettered, and processing goes on.
        poison,
        RawRecord::from_envelope(&view("2026-11-23T10:11:06Z")),
    ];
    broker
        .produce_raw(&topics.activity, &records)
        .await
        .unwrap();

    let api = running.api_addr;
    eventually(
        "10:10 final with 2 views, 10:11 open with 3",
        WAIT,
        || async {
            let (status, body) = get(api, "dim=product&id=p-1&window=1m").await;
            status == 200
                && body["windows"].as_array().is_some_and(|ws| {
                    ws.len() == 2
                        && ws[0]["start"] == "2026-11-23T10:10:00Z"
                        && ws[0]["views"] == 2
                        && ws[0]["final"] == true
                        && ws[1]["start"] == "2026-11-23T10:11:00Z"
                        && ws[1]["views"] == 3
                        && ws[1]["final"] == false
                })
        },
    )
    .await;
    let letters = broker
        .consume_count(&[&topics.dlq()], 2, WAIT)
        .await
        .unwrap();
    let messages: Vec<&str> = letters
        .iter()
        .map(|l| l.header(dlq::ERROR_MESSAGE).unwrap())
        .collect();
    assert!(messages[0].contains("late"), "{messages:?}");
    assert_eq!(letters[0].header(dlq::ORIGINAL_OFFSET), Some("4"));
    assert!(
        messages[1].contains("not an event aggregation reads"),
        "{messages:?}"
    );
    // The closed window's final value is on the topic.
    let key = "product:p-1:1m:2026-11-23T10:10:00Z";
    broker
        .consume_until(&[&topics.output], WAIT, |records| {
            records.iter().any(|r| {
                r.key_str() == Some(key)
                    && r.envelope().is_ok_and(|e| match e.event {
                        Event::WindowAggregated(w) => w.is_final && w.views == 2,
                        _ => false,
                    })
            })
        })
        .await
        .unwrap();

    // Bad queries are refused naming the parameter.
    for (query, parameter) in [
        ("dim=shop&id=p-1&window=1m", "dim"),
        ("dim=product&id=p-1", "window"),
        ("dim=product&id=p-1&window=1d", "window"),
        ("dim=product&window=1m", "id"),
        ("dim=product&id=p%201&window=1m", "id"),
        ("dim=product&id=p-1&window=1m&from=10am", "from"),
    ] {
        let (status, body) = get(api, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
    }
    let long = "x".repeat(200);
    let (status, _) = get(api, &format!("dim=product&id={long}&window=1m")).await;
    assert_eq!(status, 400);
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_events_inside_a_window_give_the_in_order_result() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-order", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(broker, &topics, dir.path());
    config.grace_ms = 120_000;
    let shutdown = Shutdown::new();
    let running = aggregation::start(config, shutdown.clone()).await.unwrap();
    let base = at("2026-11-23T08:00:00Z");
    let make = |product: &str, i: usize| {
        activity(
            ActivityKind::ALL[i % 3],
            product,
            base + chrono::Duration::seconds((i * 13 % 150) as i64),
            1 + (i % 4) as u64,
            250,
        )
    };
    let in_order: Vec<Envelope> = {
        let mut v: Vec<Envelope> = (0..60).map(|i| make("p-in", i)).collect();
        v.sort_by_key(|e| e.time);
        v
    };
    // The same events for another product, in a scrambled order.
    let shuffled: Vec<Envelope> = (0..60).map(|i| make("p-out", (i * 37) % 60)).collect();
    broker
        .produce_envelopes(&topics.activity, &in_order)
        .await
        .unwrap();
    broker
        .produce_envelopes(&topics.activity, &shuffled)
        .await
        .unwrap();
    let api = running.api_addr;
    let want = reference(in_order.iter(), 60);
    for id in ["p-in", "p-out"] {
        eventually(id, WAIT, || async {
            windows(api, "product", id, "1m").await == want
        })
        .await;
    }
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brand_windows_wait_for_the_slowest_partition_within_the_skew() {
    const PARTITIONS: i32 = 2;
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-skew", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(broker, &topics, dir.path());
    // A one-second grace period (common config), and partitions may drift 30 minutes apart.
    config.max_skew_ms = 1_800_000;
    let shutdown = Shutdown::new();
    let running = aggregation::start(config, shutdown.clone()).await.unwrap();
    let api = running.api_addr;
    let on = |partition: i32| {
        (0..)
            .map(|i| format!("p-{i}"))
            .find(|id| aggregation::api::partition_of(id, PARTITIONS) == partition)
            .unwrap()
    };
    let (fast, slow) = (on(0), on(1));
    broker
        .produce_envelopes(
            &topics.products,
            &[product(&fast, "b-skew"), product(&slow, "b-skew")],
        )
        .await
        .unwrap();
    let base = at("2026-11-23T10:00:00Z");
    let views = |id: &str, offset_s: i64, n: i64| -> Vec<Envelope> {
        (0..n)
            .map(|i| {
                let time = base + chrono::Duration::seconds(offset_s + i * 30);
                activity(ActivityKind::ProductViewed, id, time, 1, 0)
            })
            .collect()
    };
    let total = |w: &Windows| w.values().map(|t| t.views).sum::<u64>();
    // One view each, waited for: both products' brands are known from here on (activity
    // before its product is held and released later, which would not test the clock).
    let first = [views(&fast, 0, 1), views(&slow, 0, 1)].concat();
    broker
        .produce_envelopes(&topics.activity, &first)
        .await
        .unwrap();
    eventually("both products' brands known", WAIT, || async {
        total(&windows(api, "brand", "b-skew", "1m").await) == 2
    })
    .await;

    // The fast partition is read 20 minutes of event time ahead of the slow one, as when a
    // backlog is read unevenly; its events reach the brand windows first.
    let ahead = views(&fast, 0, 40);
    broker
        .produce_envelopes(&topics.activity, &ahead)
        .await
        .unwrap();
    eventually("the fast partition's events in the brand", WAIT, || async {
        total(&windows(api, "brand", "b-skew", "1m").await) == 42
    })
    .await;
    // The slow partition's events of the same 20 minutes: on time for their products
    // (that partition's stream time), so on time for their brand, though 20 minutes
    // behind what the brand saw.
    let behind = views(&slow, 15, 40);
    broker
        .produce_envelopes(&topics.activity, &behind)
        .await
        .unwrap();
    let all: Vec<&Envelope> = first.iter().chain(&ahead).chain(&behind).collect();
    let want = reference(all.iter().copied(), 60);
    eventually("every event in the brand's windows", WAIT, || async {
        windows(api, "brand", "b-skew", "1m").await == want
    })
    .await;

    // The slow partition goes quiet; the fast one moves to 11:00. The clock trails it by
    // the skew (10:30), so the brand's windows of 10:00-10:20 close all the same.
    broker
        .produce_envelopes(&topics.activity, &views(&fast, 3600, 1))
        .await
        .unwrap();
    eventually("the brand's windows final", WAIT, || async {
        let (status, body) =
            get(api, "dim=brand&id=b-skew&window=1m&to=2026-11-23T10:30:00Z").await;
        status == 200
            && body["windows"]
                .as_array()
                .is_some_and(|ws| ws.len() == want.len() && ws.iter().all(|w| w["final"] == true))
    })
    .await;
    // Nothing was late.
    assert!(
        broker
            .consume_count(&[&topics.dlq()], 1, Duration::from_secs(2))
            .await
            .is_err(),
        "a dead letter"
    );
    shutdown.trigger();
    running.wait().await.unwrap();
}

/// A burst of events inside one window, then silence: the window's latest value still
/// reaches the topic (flushed after the interim period without new input), and the burst
/// went out as fewer values than events (at most one per window per interim period).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_s_latest_value_reaches_the_topic_when_the_stream_goes_quiet() {
    const EVENTS: usize = 40;
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-quiet", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(broker, &topics, dir.path());
    config.interim_ms = 1_000;
    // No event comes after the burst: nothing closes, only the interim flush publishes.
    config.grace_ms = 3_600_000;
    let shutdown = Shutdown::new();
    let running = aggregation::start(config, shutdown.clone()).await.unwrap();

    broker
        .produce_envelopes(&topics.products, &[product("p-quiet", "b-quiet")])
        .await
        .unwrap();
    let base = at("2026-11-23T11:30:00Z");
    let events: Vec<Envelope> = (0..EVENTS)
        .map(|i| {
            activity(
                ActivityKind::ProductViewed,
                "p-quiet",
                base + chrono::Duration::milliseconds(i as i64 * 100),
                1,
                0,
            )
        })
        .collect();
    // The product first, so that no event is held (held ones reach the brand later).
    eventually("the product's brand is known", WAIT, || async {
        processed(running.service.admin_addr).await >= 1
    })
    .await;
    broker
        .produce_envelopes(&topics.activity, &events)
        .await
        .unwrap();

    let keys = [
        "product:p-quiet:1m:2026-11-23T11:30:00Z",
        "product:p-quiet:1h:2026-11-23T11:00:00Z",
        "brand:b-quiet:1m:2026-11-23T11:30:00Z",
        "brand:b-quiet:1h:2026-11-23T11:00:00Z",
    ];
    let views_of = |records: &[tributary_testkit::Record], key: &str| -> Vec<(u64, bool)> {
        records
            .iter()
            .filter(|r| r.key_str() == Some(key))
            .filter_map(|r| match r.envelope().ok()?.event {
                Event::WindowAggregated(w) => Some((w.views, w.is_final)),
                _ => None,
            })
            .collect()
    };
    let records = broker
        .consume_until(&[&topics.output], WAIT, |records| {
            keys.iter().all(|key| {
                views_of(records, key).last().map(|(views, _)| *views) == Some(EVENTS as u64)
            })
        })
        .await
        .unwrap();
    for key in keys {
        let values = views_of(&records, key);
        assert!(
            values.windows(2).all(|w| w[0].0 <= w[1].0) && values.iter().all(|(_, f)| !f),
            "{key}: interim values only, never going back: {values:?}"
        );
        assert!(
            values.len() < EVENTS / 4,
            "{key}: {EVENTS} events published as {} values: {values:?}",
            values.len()
        );
    }
    shutdown.trigger();
    running.wait().await.unwrap();

    // Which values were flushed before a stop is not remembered: a partition opened again
    // re-publishes its open windows, the same value under the same id.
    let key = keys[0];
    let before: Vec<_> = records
        .iter()
        .filter(|r| r.key_str() == Some(key))
        .collect();
    let last_id = before.last().unwrap().envelope().unwrap().id;
    let shutdown = Shutdown::new();
    let running = aggregation::start(
        {
            let mut config = common::config(broker, &topics, dir.path());
            config.interim_ms = 1_000;
            config.grace_ms = 3_600_000;
            config
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let records = broker
        .consume_until(&[&topics.output], WAIT, |records| {
            records.iter().filter(|r| r.key_str() == Some(key)).count() > before.len()
        })
        .await
        .unwrap();
    let again = records
        .iter()
        .filter(|r| r.key_str() == Some(key))
        .nth(before.len())
        .unwrap()
        .envelope()
        .unwrap();
    assert_eq!(again.id, last_id, "the same value under the same id");
    match again.event {
        Event::WindowAggregated(w) => assert_eq!(w.views, EVENTS as u64),
        other => panic!("{other:?}"),
    }
    shutdown.trigger();
    running.wait().await.unwrap();
}

/// A partition opened again re-publishes only the open windows no flush is known to have
/// published: windows whose values went out before a later message committed stay quiet,
/// the ones changed after it go out again (same value, same id), and so does a window
/// without an epoch (as a version without epochs writes it during a rolling deploy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_opened_partition_re_publishes_only_windows_changed_since_a_known_flush() {
    let broker = TestBroker::shared();
    // One partition: one task, one epoch, one total order of the output.
    let topics = Topics::create(broker, "agg-epoch", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = common::config(broker, &topics, dir.path());
        // Nothing closes during the test: only flushes publish.
        config.grace_ms = 3_600_000;
        config
    };
    let keys_of = |product: &str, brand: &str| {
        [
            format!("product:{product}:1m:2026-11-23T11:30:00Z"),
            format!("product:{product}:1h:2026-11-23T11:00:00Z"),
            format!("brand:{brand}:1m:2026-11-23T11:30:00Z"),
            format!("brand:{brand}:1h:2026-11-23T11:00:00Z"),
        ]
    };
    let (early, late) = (keys_of("p-early", "b-early"), keys_of("p-late", "b-late"));
    let views = |records: &[tributary_testkit::Record], key: &str| -> Vec<(u64, ulid::Ulid)> {
        records
            .iter()
            .filter(|r| r.key_str() == Some(key))
            .filter_map(|r| {
                let envelope = r.envelope().ok()?;
                match envelope.event {
                    Event::WindowAggregated(w) => Some((w.views, envelope.id)),
                    _ => None,
                }
            })
            .collect()
    };
    let all_at = |records: &[tributary_testkit::Record], keys: &[String], n: u64| {
        keys.iter()
            .all(|key| views(records, key).last().map(|(v, _)| *v) == Some(n))
    };
    let base = at("2026-11-23T11:30:00Z");
    let burst = |product: &str, n: usize| -> Vec<Envelope> {
        (0..n)
            .map(|i| {
                activity(
                    ActivityKind::ProductViewed,
                    product,
                    base + chrono::Duration::milliseconds(i as i64 * 10),
                    1,
                    0,
                )
            })
            .collect()
    };

    let shutdown = Shutdown::new();
    let running = aggregation::start(config(), shutdown.clone())
        .await
        .unwrap();
    broker
        .produce_envelopes(
            &topics.products,
            &[
                product("p-early", "b-early"),
                product("p-late", "b-late"),
                product("p-marker", "b-marker"),
            ],
        )
        .await
        .unwrap();
    eventually("the products' brands are known", WAIT, || async {
        processed(running.service.admin_addr).await >= 3
    })
    .await;
    // The early windows go out; only then do the late ones change (and with their first
    // message the epoch moves on, committed with them).
    broker
        .produce_envelopes(&topics.activity, &burst("p-early", 5))
        .await
        .unwrap();
    broker
        .consume_until(&[&topics.output], WAIT, |r| all_at(r, &early, 5))
        .await
        .unwrap();
    broker
        .produce_envelopes(&topics.activity, &burst("p-late", 7))
        .await
        .unwrap();
    let before = broker
        .consume_until(&[&topics.output], WAIT, |r| all_at(r, &late, 7))
        .await
        .unwrap();
    shutdown.trigger();
    running.wait().await.unwrap();

    // One early window loses its epoch, as a version without epochs would write it.
    {
        let store = tributary_state::Store::open(
            &dir.path()
                .join(&topics.group)
                .join(aggregation::STORE)
                .join("p0.redb"),
        )
        .unwrap();
        let key = aggregation::window::state_key(
            tributary_events::Dimension::Product,
            "p-early",
            tributary_events::WindowSize::Minute,
            base.timestamp_millis(),
        );
        let table = aggregation::aggregator::WINDOWS.name();
        let mut value: serde_json::Value =
            serde_json::from_slice(&store.get(table, &key).unwrap().unwrap()).unwrap();
        assert!(
            value.as_object_mut().unwrap().remove("epoch").is_some(),
            "windows are stamped: {value}"
        );
        let entry = [table.as_bytes(), b"\0", key.as_bytes()].concat();
        let changes = [(entry, Some(serde_json::to_vec(&value).unwrap()))].into();
        store
            .commit(&changes, &store.checkpoint().unwrap())
            .unwrap();
    }
    let unstamped = &early[0];

    let shutdown = Shutdown::new();
    let running = aggregation::start(config(), shutdown.clone())
        .await
        .unwrap();
    // The late windows and the unstamped one go out again, from the same values under the
    // same ids.
    let again = broker
        .consume_until(&[&topics.output], WAIT, |r| {
            late.iter()
                .chain([unstamped])
                .all(|key| views(r, key).len() > views(&before, key).len())
        })
        .await
        .unwrap();
    for key in late.iter().chain([unstamped]) {
        let (old, new) = (views(&before, key), views(&again, key));
        assert_eq!(
            new[old.len()],
            *old.last().unwrap(),
            "{key}: re-published with the value and id it had"
        );
    }
    // A marker changed after the re-publication: its value follows whatever the
    // re-publication sent (one partition, one order), so every early window re-published
    // would be read by then.
    broker
        .produce_envelopes(&topics.activity, &burst("p-marker", 1))
        .await
        .unwrap();
    let after = broker
        .consume_until(&[&topics.output], WAIT, |r| {
            all_at(r, &keys_of("p-marker", "b-marker"), 1)
        })
        .await
        .unwrap();
    for key in &early[1..] {
        assert_eq!(
            views(&after, key),
            views(&before, key),
            "{key}: published before a later message committed, not re-published"
        );
    }
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_an_event_under_its_id_count_once_and_other_events_each_time() {
    // Ingest publishes a request again after a crash under the same ids: such copies must
    // not count twice, for the product or for its brand. An equal event under another id
    // is another event and counts. An id from a host whose clock runs a day ahead comes
    // first: it must not age the others out of the de-duplication horizon.
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "agg-copies", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(broker, &topics, dir.path());
    let shutdown = Shutdown::new();
    let running = aggregation::start(config, shutdown.clone()).await.unwrap();
    broker
        .produce_envelopes(&topics.products, &[product("p-dup", "b-dup")])
        .await
        .unwrap();
    let base = at("2026-11-23T09:00:00Z");
    let originals: Vec<Envelope> = (0..30)
        .map(|i| {
            activity(
                ActivityKind::ALL[i % 3],
                "p-dup",
                base + chrono::Duration::seconds(i as i64),
                2,
                300,
            )
        })
        .collect();
    let equal_but_new: Vec<Envelope> = originals[..10]
        .iter()
        .map(|e| e.clone().with_id(ulid::Ulid::new()))
        .collect();
    // The marker comes last on the partition: once it is counted, every copy before it was
    // processed.
    let marker = activity(
        ActivityKind::ProductViewed,
        "p-dup",
        base + chrono::Duration::seconds(40),
        1,
        0,
    );
    let ahead = activity(
        ActivityKind::AddedToCart,
        "p-dup",
        base + chrono::Duration::seconds(35),
        1,
        0,
    )
    .with_id(ulid::Ulid::from_parts(
        u64::try_from(Utc::now().timestamp_millis() + 86_400_000).unwrap(),
        7,
    ));
    let mut sent = vec![ahead.clone()];
    sent.extend(originals.iter().cloned());
    sent.extend(originals.iter().rev().cloned());
    sent.extend(equal_but_new.iter().cloned());
    sent.extend(originals[..5].iter().cloned());
    sent.push(marker.clone());
    broker
        .produce_envelopes(&topics.activity, &sent)
        .await
        .unwrap();
    let counted: Vec<&Envelope> = std::iter::once(&ahead)
        .chain(&originals)
        .chain(&equal_but_new)
        .chain(std::iter::once(&marker))
        .collect();
    let want = reference(counted.iter().copied(), 60);
    let api = running.api_addr;
    eventually("product windows", WAIT, || async {
        windows(api, "product", "p-dup", "1m").await == want
    })
    .await;
    eventually("brand windows", WAIT, || async {
        windows(api, "brand", "b-dup", "1m").await == want
    })
    .await;
    shutdown.trigger();
    running.wait().await.unwrap();
}
