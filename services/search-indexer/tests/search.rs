//! The search API over a real broker: what is indexed (complete products only, with their
//! latest values), full text, filters, sorts, facets and paging, dead letters, and hostile
//! parameters.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::*;
use serde_json::json;
use tributary_runtime::Shutdown;
use tributary_testkit::{RawRecord, TestBroker};

const WAIT: Duration = Duration::from_secs(60);

fn catalogue() -> Vec<Item> {
    let mut p1 = Item::new("p1", "Red Running Shoes", "nike", "shoes", 5000, 3);
    p1.description = Some("Light shoes for running".into());
    p1.attributes.insert("colour".into(), "red".into());
    p1.attributes.insert("material".into(), "mesh".into());
    let mut p2 = Item::new("p2", "Blue Boots", "acme", "boots", 12000, 0);
    p2.attributes.insert("material".into(), "leather".into());
    let p3 = Item::new("p3", "Trail Runner", "nike", "shoes", 8000, 10);
    let mut p4 = Item::new("p4", "Classic Sneaker", "acme", "shoes", 3000, 5);
    p4.description = Some("A shoe for every day".into());
    let mut p5 = Item::new("p5", "Winter Boot", "nord", "boots", 15000, 2);
    p5.attributes.insert("colour".into(), "black".into());
    let p6 = Item::new("p6", "Canvas Shoe", "nord", "shoes", 2000, 1);
    vec![p1, p2, p3, p4, p5, p6]
}

fn set(ids: Vec<String>) -> BTreeSet<String> {
    ids.into_iter().collect()
}

fn names(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn searches_find_complete_products_by_text_filters_orders_facets_and_pages() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "search-api", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = search_indexer::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let api = running.api_addr;

    let items = catalogue();
    let mut envelopes: Vec<_> = items.iter().map(|i| i.enriched(true)).collect();
    // Incomplete (no stock): never searchable.
    envelopes.push(Item::new("p7", "Secret Shoe", "nike", "shoes", 100, 0).enriched(false));
    publish(broker, &topics.products, &envelopes).await;
    // Popularity: p3's hour is the busiest (100); p1's hour so far is 20 (1 unit) but the
    // hour before was 60, which still counts; p6 has 25 (5 carts) and a window two hours
    // back, arriving later, which no longer counts.
    let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    let hours_ago = |h| now - chrono::Duration::hours(h);
    publish(
        broker,
        &topics.aggregates,
        &[
            hour("p3", now, 100, 0, 0),
            hour("p6", now, 0, 5, 0),
            hour("p1", now, 0, 0, 1),
            hour("p1", hours_ago(1), 60, 0, 0),
            hour("p6", hours_ago(2), 1_000, 0, 0),
        ],
    )
    .await;

    let popular = search_until(api, "sort=popularity", WAIT, |b| {
        b["total"] == 6 && ids(b)[..3] == ["p3", "p1", "p6"]
    })
    .await;
    assert!(!ids(&popular).contains(&"p7".to_owned()));

    // A hit carries the contract's fields.
    let hit = search(api, "q=red").await;
    assert_eq!(hit["total"], 1);
    let h = &hit["hits"][0];
    assert_eq!(
        (
            &h["product_id"],
            &h["name"],
            &h["brand_id"],
            &h["category"],
            &h["retail_minor"],
            &h["currency"],
            &h["stock"]
        ),
        (
            &json!("p1"),
            &json!("Red Running Shoes"),
            &json!("nike"),
            &json!("shoes"),
            &json!(5000),
            &json!("EUR"),
            &json!(3)
        )
    );
    assert!(h["score"].as_f64().unwrap() > 0.0);

    // Full text: lower-cased, stemmed, over name, description and attribute values; every
    // word must match.
    let found = |q: &'static str| async move { set(ids(&search(api, q).await)) };
    assert_eq!(found("q=SHOE").await, names(&["p1", "p4", "p6"]));
    assert_eq!(found("q=runs").await, names(&["p1"]));
    assert_eq!(found("q=leather").await, names(&["p2"]));
    assert_eq!(found("q=red%20shoes").await, names(&["p1"]));
    assert_eq!(found("q=secret").await, names(&[]));
    assert_eq!(found("q=boot").await, names(&["p2", "p5"]));

    // Filters.
    assert_eq!(found("brand=nike").await, names(&["p1", "p3"]));
    assert_eq!(found("category=boots").await, names(&["p2", "p5"]));
    assert_eq!(
        found("min_price=3000&max_price=8000").await,
        names(&["p1", "p3", "p4"])
    );
    assert_eq!(found("in_stock=false").await, names(&["p2"]));
    assert_eq!(
        found("in_stock=true&category=shoes&max_price=4000").await,
        names(&["p4", "p6"])
    );

    // Orders and pages.
    let asc = ids(&search(api, "sort=price_asc").await);
    assert_eq!(asc, ["p6", "p4", "p1", "p3", "p2", "p5"]);
    let desc = ids(&search(api, "sort=price_desc").await);
    assert_eq!(desc, ["p5", "p2", "p3", "p1", "p4", "p6"]);
    let page = search(api, "sort=price_asc&limit=2&offset=2").await;
    assert_eq!(ids(&page), ["p1", "p3"]);
    assert_eq!(
        page["total"], 6,
        "the total counts every match, not the page"
    );
    let last = search(api, "sort=price_asc&limit=4&offset=4").await;
    assert_eq!(ids(&last), ["p2", "p5"]);

    // Facets count every match.
    let all = search(api, "").await;
    assert_eq!(
        all["facets"],
        json!({"brand": {"nike": 2, "acme": 2, "nord": 2}, "category": {"shoes": 4, "boots": 2}})
    );
    let shoes = search(api, "q=shoe").await;
    assert_eq!(
        shoes["facets"],
        json!({"brand": {"nike": 1, "acme": 1, "nord": 1}, "category": {"shoes": 3}})
    );

    // The product document.
    let (status, doc) = get(api, "/v1/products/p1").await;
    assert_eq!(status, 200);
    assert_eq!(doc["name"], "Red Running Shoes");
    assert_eq!(doc["price"]["retail_minor"], 5000);
    assert_eq!(doc["stock"], 3);
    assert_eq!(doc["attributes"]["material"], "mesh");
    let (status, body) = get(api, "/v1/products/p7").await;
    assert_eq!(status, 404, "an incomplete product is not served: {body}");
    let (status, body) = get(api, "/v1/products/a%20b").await;
    assert_eq!((status, &body["parameter"]), (400, &json!("product_id")));

    // A price change shows the new price; a deleted product disappears; a product that
    // becomes incomplete leaves.
    let mut p4 = items[3].clone();
    p4.retail = 9000;
    publish(broker, &topics.products, &[p4.enriched(true)]).await;
    tombstone(broker, &topics.products, "p6").await;
    publish(broker, &topics.products, &[items[4].enriched(false)]).await;
    let after = search_until(api, "sort=price_asc", WAIT, |b| b["total"] == 4).await;
    assert_eq!(ids(&after), ["p1", "p3", "p4", "p2"]);
    assert_eq!(after["hits"][2]["retail_minor"], 9000);
    assert_eq!(get(api, "/v1/products/p6").await.0, 404);
    assert_eq!(get(api, "/v1/products/p5").await.0, 404);
    assert_eq!(
        get(api, "/v1/products/p4").await.1["price"]["retail_minor"],
        9000
    );

    // Bad records are dead-lettered and indexing goes on.
    let wrong_type = Item::new("p9", "Wrong", "nike", "shoes", 1, 1).product();
    let wrong_type = tributary_events::Envelope::new(
        "test",
        tributary_events::Event::ProductUpserted(wrong_type),
    );
    let mut unknown_version = Item::new("p10", "Future", "nike", "shoes", 1, 1)
        .enriched(true)
        .to_json();
    unknown_version["v"] = json!(99);
    broker
        .produce_raw(
            &topics.products,
            &[
                RawRecord::new("p8", "not json"),
                RawRecord::from_envelope(&wrong_type),
                RawRecord::new("p10", serde_json::to_vec(&unknown_version).unwrap()),
            ],
        )
        .await
        .unwrap();
    publish(
        broker,
        &topics.products,
        &[Item::new("p11", "After The Poison", "acme", "hats", 700, 4).enriched(true)],
    )
    .await;
    search_until(api, "q=poison", WAIT, |b| b["total"] == 1).await;
    let dead = broker
        .consume_until(&[topics.dlq().as_str()], WAIT, |records| records.len() >= 3)
        .await
        .unwrap();
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|r| r.header("dlq.error.kind").is_some()));

    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_parameters_get_a_named_400_or_a_clamp_and_never_a_500() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "search-hostile", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = search_indexer::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let api = running.api_addr;
    publish(broker, &topics.products, &[catalogue()[0].enriched(true)]).await;
    search_until(api, "", WAIT, |b| b["total"] == 1).await;

    let long_q = "shoe ".repeat(5_000);
    let many_words = (0..40)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join("+");
    let cases: Vec<(String, &str)> = vec![
        ("limit=1000000000".into(), "limit"),
        ("limit=-1".into(), "limit"),
        ("limit=0".into(), "limit"),
        ("limit=ten".into(), "limit"),
        ("offset=-5".into(), "offset"),
        ("offset=100000000000000000000000000000".into(), "offset"),
        ("offset=1e3".into(), "offset"),
        ("min_price=abc".into(), "min_price"),
        ("min_price=1.5".into(), "min_price"),
        ("max_price=-1".into(), "max_price"),
        ("min_price=10&max_price=5".into(), "min_price"),
        ("in_stock=yes".into(), "in_stock"),
        ("sort=%3Bdrop".into(), "sort"),
        ("brand=..%2F..%2Fetc".into(), "brand"),
        ("limit=1&limit=2".into(), "limit"),
        (format!("q={long_q}"), "q"),
        (format!("q={many_words}"), "q"),
    ];
    for (query, parameter) in &cases {
        let (status, body) = get(api, &format!("/v1/search?{query}")).await;
        assert_eq!(status, 400, "{query:.80}: {body}");
        assert_eq!(body["parameter"], *parameter, "{query:.80}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(parameter),
            "{body}"
        );
    }
    // Query syntax is not interpreted: these are words (or nothing), answered normally.
    for q in [
        "%22((AND%20OR%3A*~%5E",
        "shoe%20AND%20NOT",
        "%00%01",
        "%E2%9C%93%F0%9F%91%9F",
        "title%3A%5B*%20TO%20*%5D",
        "-shoe",
        "%2B%2B%2B",
    ] {
        let (status, body) = get(api, &format!("/v1/search?q={q}")).await;
        assert_eq!(status, 200, "q={q}: {body}");
        assert!(body["total"].is_u64(), "{body}");
    }
    // Malformed percent-encoding and a huge query string never reach a panic.
    let (status, _) = get(api, "/v1/search?q=%zz%").await;
    assert!(
        status == 200 || status == 400,
        "bad percent-encoding: {status}"
    );
    let huge = format!("/v1/search?q={}", "a".repeat(200_000));
    let response = reqwest::get(format!("http://{api}{huge}")).await;
    if let Ok(r) = response {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let (status, body) = get(api, &format!("/v1/products/{}", "x".repeat(300))).await;
    assert_eq!((status, &body["parameter"]), (400, &json!("product_id")));
    // The service is still there.
    assert_eq!(search(api, "q=shoe").await["total"], 1);

    shutdown.trigger();
    running.wait().await.unwrap();
}
