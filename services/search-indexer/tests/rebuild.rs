//! Blue/green rebuilds: a new index generation built from offset 0 under a new consumer
//! group while the live one serves, swapped in once caught up, with no failed search.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tributary_runtime::Shutdown;
use tributary_testkit::TestBroker;

const PRODUCTS: usize = 3_000;
const WAIT: Duration = Duration::from_secs(120);
/// What `QUERY` matches: the shoe third of the catalogue.
const SHOES: usize = PRODUCTS / 3;
const QUERY: &str = "q=shoe&sort=price_asc&limit=100&offset=50";

fn items() -> Vec<Item> {
    (0..PRODUCTS)
        .map(|i| {
            let kind = ["shoe", "boot", "hat"][i % 3];
            Item::new(
                &format!("p{i}"),
                &format!("Model {i} {kind}"),
                &format!("brand-{}", i % 7),
                kind,
                1_000 + (i as u64 * 37) % 5_000,
                (i % 4) as u64,
            )
        })
        .collect()
}

/// The answer without scores (BM25 statistics count deleted documents, so a rebuilt
/// index may score the same hits a little differently).
fn without_scores(mut body: Value) -> Value {
    for hit in body["hits"].as_array_mut().unwrap() {
        hit.as_object_mut().unwrap().remove("score");
    }
    body
}

async fn post(admin: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `/status` until the rebuild of `generation` was swapped in.
async fn wait_swapped(admin: std::net::SocketAddr, generation: u64) -> Value {
    let started = Instant::now();
    loop {
        let status = status(admin).await;
        if status["index"]["generation"] == generation && status["rebuild"]["state"] == "idle" {
            return status;
        }
        assert!(
            started.elapsed() < WAIT,
            "generation {generation} never swapped in: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_clients_search_fails_no_search_and_gives_the_same_results() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "search-rebuild", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = search_indexer::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let (api, admin) = (running.api_addr, running.admin_addr);
    let envelopes: Vec<_> = items().iter().map(|i| i.enriched(true)).collect();
    publish(broker, &topics.products, &envelopes).await;
    let before = search_until(api, "", WAIT, |b| b["total"] == PRODUCTS).await;
    let before_query = without_scores(search(api, QUERY).await);
    assert_eq!(before_query["hits"].as_array().unwrap().len(), 100);

    // Clients search continuously through the rebuild and the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, searches) = (stop.clone(), searches.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http
                    .get(format!("http://{api}/v1/search?{QUERY}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let body: Value = r.json().await.unwrap();
                        if body["total"] != SHOES {
                            failures.push(format!("total {}", body["total"]));
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("request: {e}")),
                }
                searches.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    let (code, body) = post(admin, "/admin/rebuild").await;
    assert_eq!((code, &body["generation"]), (202, &json!(2)), "{body}");
    let (code, body) = post(admin, "/admin/rebuild").await;
    assert_eq!(code, 409, "a second rebuild while one runs: {body}");
    assert_eq!(body["error"], "rebuild_in_progress");

    let status = wait_swapped(admin, 2).await;
    // Searches go on a moment on the new index, then stop.
    let after_swap = searches.load(Ordering::Relaxed);
    let started = Instant::now();
    while searches.load(Ordering::Relaxed) < after_swap + 20 {
        assert!(started.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "failed searches: {failures:?}");
    assert!(searches.load(Ordering::Relaxed) > 40);

    // The new generation: its own group and directory, the old one gone, same answers.
    assert_eq!(status["index"]["group"], format!("{}.g2", topics.group));
    assert_eq!(status["group"], format!("{}.g2", topics.group));
    assert_eq!(status["rebuild"]["last"]["replaced"], 1);
    assert_eq!(status["index"]["documents"], PRODUCTS);
    assert!(
        !dir.path().join("index-1").exists(),
        "the old index is removed"
    );
    assert!(dir.path().join("index-2").exists());
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("generations.json")).unwrap())
            .unwrap();
    assert_eq!(recorded, json!({"live": 2, "building": null}));
    assert_eq!(without_scores(search(api, QUERY).await), before_query);
    assert_eq!(
        search(api, "").await["facets"],
        before["facets"],
        "the same facets"
    );

    // The new generation is the one consuming now.
    publish(
        broker,
        &topics.products,
        &[Item::new("fresh", "Fresh Shoe", "brand-1", "shoe", 1, 1).enriched(true)],
    )
    .await;
    search_until(api, "q=fresh", WAIT, |b| b["total"] == 1).await;

    shutdown.trigger();
    running.wait().await.unwrap();

    // A restart keeps generation 2, and `--rebuild` builds generation 3 at start.
    let mut cfg = config(broker, &topics, dir.path());
    cfg.rebuild = true;
    let shutdown = Shutdown::new();
    let running = search_indexer::start(cfg, shutdown.clone()).await.unwrap();
    let status = wait_swapped(running.admin_addr, 3).await;
    assert_eq!(status["index"]["documents"], PRODUCTS + 1);
    assert!(!dir.path().join("index-2").exists());
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_that_cannot_write_its_index_is_given_up_and_the_live_index_serves_on() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "search-rebuild-fail", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = search_indexer::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let (api, admin) = (running.api_addr, running.admin_addr);
    let envelopes: Vec<_> = items().iter().map(|i| i.enriched(true)).collect();
    publish(broker, &topics.products, &envelopes).await;
    search_until(api, "", WAIT, |b| b["total"] == PRODUCTS).await;

    // The new index's directory disappears under it (a full or failed disk would do the
    // same): its writes fail.
    let (code, _) = post(admin, "/admin/rebuild").await;
    assert_eq!(code, 202);
    std::fs::remove_dir_all(dir.path().join("index-2")).unwrap();
    let started = Instant::now();
    let status = loop {
        let status = status(admin).await;
        if status["rebuild"]["state"] == "failed" {
            break status;
        }
        assert!(
            started.elapsed() < WAIT,
            "the rebuild was never given up: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["rebuild"]["generation"], 2);
    assert!(
        status["rebuild"]["error"]
            .as_str()
            .unwrap()
            .contains("index"),
        "{status:#}"
    );
    // The live index serves on, and a new rebuild can start and finish.
    assert_eq!(status["index"]["generation"], 1);
    assert_eq!(search(api, "").await["total"], PRODUCTS);
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("generations.json")).unwrap())
            .unwrap();
    assert_eq!(recorded, json!({"live": 1, "building": null}));
    let (code, body) = post(admin, "/admin/rebuild").await;
    assert_eq!(code, 202, "{body}");
    wait_swapped(admin, 2).await;
    assert_eq!(search(api, "").await["total"], PRODUCTS);

    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_index_that_cannot_be_written_stops_the_service_with_an_error() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "search-live-fail", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let running = search_indexer::start(config(broker, &topics, dir.path()), Shutdown::new())
        .await
        .unwrap();
    let api = running.api_addr;
    publish(broker, &topics.products, &[items()[0].enriched(true)]).await;
    search_until(api, "", WAIT, |b| b["total"] == 1).await;
    std::fs::remove_dir_all(dir.path().join("index-1")).unwrap();
    publish(broker, &topics.products, &[items()[1].enriched(true)]).await;
    // No shutdown was asked for: the service stops by itself, with the reason.
    let result = tokio::time::timeout(WAIT, running.wait())
        .await
        .expect("the service stops");
    let error = result.expect_err("a fatal error").to_string();
    assert!(error.contains("index"), "{error}");
}
