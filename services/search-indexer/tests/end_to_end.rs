//! End to end through the real HTTP APIs: products, prices and stock posted to ingest,
//! joined by enrichment, found by search with the right fields; a price change, a deletion
//! and a product without stock, as a retailer would see them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tributary_events::topics;
use tributary_runtime::{RuntimeConfig, Shutdown};
use tributary_testkit::TestBroker;

const WAIT: Duration = Duration::from_secs(60);

fn runtime(broker: &TestBroker, data_dir: Option<&std::path::Path>) -> RuntimeConfig {
    let mut runtime = RuntimeConfig::defaults();
    runtime.brokers = broker.bootstrap();
    runtime.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    runtime.statsd_addr = "127.0.0.1:9".into();
    runtime.session_timeout_ms = 6000;
    runtime.commit_interval_ms = 200;
    runtime.shutdown_timeout_ms = 10_000;
    runtime.kafka_config = vec![tributary_testkit::DEV_CLIENT_SETTING.into()];
    if let Some(dir) = data_dir {
        runtime.data_dir = dir.to_owned();
    }
    runtime
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) {
    let response = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 202, "POST {path}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn products_posted_to_ingest_are_found_by_search_with_their_latest_values() {
    let broker = TestBroker::shared();
    for topic in [
        topics::PRODUCTS,
        topics::PRICES,
        topics::STOCK,
        topics::ACTIVITY,
        topics::PRODUCTS_ENRICHED,
        topics::AGGREGATES,
    ] {
        broker.create_named_topic(topic, 6).await.unwrap();
    }
    let shutdown = Shutdown::new();

    let mut ingest_config = ingest::IngestConfig::with_runtime(runtime(broker, None));
    ingest_config.listen = "127.0.0.1:0".parse().unwrap();
    ingest_config.client_keys = ingest::config::Secret::default();
    ingest_config.client_keys_file = None;
    ingest_config.rate_limit = 0.0;
    let ingest = ingest::start(ingest_config, shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://{}", ingest.api_addr);

    let enrichment_dir = tempfile::tempdir().unwrap();
    let mut enrichment_runtime = runtime(broker, Some(enrichment_dir.path()));
    enrichment_runtime.group_id = Some(tributary_testkit::unique_name("e2e-enrichment"));
    let enrichment = enrichment::start(
        enrichment::EnrichmentConfig::with_runtime(enrichment_runtime),
        shutdown.clone(),
    )
    .await
    .unwrap();

    let search_dir = tempfile::tempdir().unwrap();
    let mut search_runtime = runtime(broker, Some(search_dir.path()));
    search_runtime.group_id = Some(tributary_testkit::unique_name("e2e-search"));
    let mut search_config = search_indexer::SearchConfig::with_runtime(search_runtime);
    search_config.listen = "127.0.0.1:0".parse().unwrap();
    let indexer = search_indexer::start(search_config, shutdown.clone())
        .await
        .unwrap();
    let api = indexer.api_addr;

    let http = reqwest::Client::new();
    let products: Vec<Value> = (1..=4)
        .map(|i| {
            json!({
                "product_id": format!("e2e-{i}"),
                "brand_id": if i % 2 == 0 { "nike" } else { "acme" },
                "sku": format!("SKU-{i}"),
                "name": format!("Walking Boot {i}"),
                "category": "boots",
                "description": "Waterproof leather for long walks",
                "attributes": {"colour": if i == 1 { "green" } else { "brown" }},
            })
        })
        .collect();
    post(&http, &base, "/v1/products", Value::Array(products)).await;
    let prices: Vec<Value> = (1..=4)
        .map(|i| json!({"product_id": format!("e2e-{i}"), "currency": "EUR", "wholesale_minor": 1000 * i, "retail_minor": 2000 * i}))
        .collect();
    post(&http, &base, "/v1/prices", Value::Array(prices)).await;
    // e2e-4 never gets stock: it stays incomplete and never appears.
    let stock: Vec<Value> = (1..=3)
        .map(|i| json!({"product_id": format!("e2e-{i}"), "quantity": 10 * i}))
        .collect();
    post(&http, &base, "/v1/stock", Value::Array(stock)).await;

    let found = search_until(api, "q=walk&sort=price_asc", WAIT, |b| b["total"] == 3).await;
    assert_eq!(ids(&found), ["e2e-1", "e2e-2", "e2e-3"]);
    let first = &found["hits"][0];
    assert_eq!(first["name"], "Walking Boot 1");
    assert_eq!(first["brand_id"], "acme");
    assert_eq!(first["category"], "boots");
    assert_eq!(first["retail_minor"], 2000);
    assert_eq!(first["currency"], "EUR");
    assert_eq!(first["stock"], 10);
    assert_eq!(
        ids(&search(api, "q=green").await),
        ["e2e-1"],
        "attribute values are searchable"
    );
    assert_eq!(
        found["facets"],
        json!({"brand": {"acme": 2, "nike": 1}, "category": {"boots": 3}})
    );
    assert_eq!(get(api, "/v1/products/e2e-4").await.0, 404);

    // A price change, timed from ingest's acknowledgement to the search showing it.
    let acknowledged = Instant::now();
    post(
        &http,
        &base,
        "/v1/prices",
        json!({"product_id": "e2e-3", "currency": "EUR", "wholesale_minor": 100, "retail_minor": 500}),
    )
    .await;
    let cheaper = search_until(api, "q=walk&sort=price_asc", WAIT, |b| {
        b["hits"][0]["product_id"] == "e2e-3"
    })
    .await;
    println!(
        "price change searchable {} ms after ingest acknowledged it",
        acknowledged.elapsed().as_millis()
    );
    assert_eq!(cheaper["hits"][0]["retail_minor"], 500);

    // A deleted product disappears.
    let response = http
        .delete(format!("{base}/v1/products/e2e-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    search_until(api, "q=walk", WAIT, |b| b["total"] == 2).await;
    assert_eq!(get(api, "/v1/products/e2e-1").await.0, 404);
    assert_eq!(
        get(api, "/v1/products/e2e-2").await.1["price"]["retail_minor"],
        4000
    );

    shutdown.trigger();
    indexer.wait().await.unwrap();
    enrichment.wait().await.unwrap();
    ingest.wait().await.unwrap();
}
