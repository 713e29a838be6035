//! The index's own offsets, with the real binary: a restart resumes from the offsets in the
//! last commit's payload without indexing anything again, an emptied `DATA_DIR` is rebuilt
//! from offset 0 whatever the group committed, and SIGKILL mid-stream loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tributary_testkit::TestBroker;

const WAIT: Duration = Duration::from_secs(120);
const CHANGES: &str = "tributary_search_index_changes";

/// Polls `/status` until every input partition is running with no lag.
async fn wait_caught_up(admin: std::net::SocketAddr) -> Value {
    let started = Instant::now();
    loop {
        let status = status(admin).await;
        let parts = status["partitions"].as_array().cloned().unwrap_or_default();
        if !parts.is_empty()
            && parts
                .iter()
                .all(|p| p["state"] == "running" && p["lag"] == 0)
        {
            return status;
        }
        assert!(started.elapsed() < WAIT, "never caught up: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_resumes_from_the_index_offsets_and_an_empty_index_starts_over() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "search-restart", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<Item> = (0..2_000)
        .map(|i| {
            Item::new(
                &format!("p{i}"),
                &format!("Shoe {i}"),
                "b",
                "shoes",
                100 + i,
                1,
            )
        })
        .collect();
    publish(
        broker,
        &topics.products,
        &items.iter().map(|i| i.enriched(true)).collect::<Vec<_>>(),
    )
    .await;

    let mut indexer = spawn(broker, &topics, dir.path(), &[]);
    search_until(indexer.api, "", WAIT, |b| b["total"] == 2_000).await;
    assert_eq!(metric(indexer.admin, CHANGES).await, 2_000.0);
    terminate(&mut indexer);

    // A restart: every partition resumes where the index's last commit ends.
    let mut indexer = spawn(broker, &topics, dir.path(), &[]);
    wait_caught_up(indexer.admin).await;
    assert_eq!(search(indexer.api, "").await["total"], 2_000);
    assert_eq!(
        metric(indexer.admin, CHANGES).await,
        0.0,
        "nothing was indexed again"
    );
    let more: Vec<_> = (2_000..2_010)
        .map(|i| Item::new(&format!("p{i}"), "Late Shoe", "b", "shoes", 1, 1).enriched(true))
        .collect();
    publish(broker, &topics.products, &more).await;
    search_until(indexer.api, "", WAIT, |b| b["total"] == 2_010).await;
    assert_eq!(metric(indexer.admin, CHANGES).await, 10.0);
    terminate(&mut indexer);

    // An emptied DATA_DIR: the group has committed everything, yet the index is built
    // again from offset 0 (the index, not the group, says where it ends).
    // It is not ready before the index covers its inputs: once ready, the whole catalogue
    // is searchable.
    let empty = tempfile::tempdir().unwrap();
    let mut indexer = spawn(broker, &topics, empty.path(), &[]);
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://{}/readyz", indexer.admin)).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(started.elapsed() < WAIT, "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(search(indexer.api, "").await["total"], 2_010);
    terminate(&mut indexer);
}

/// The sum of the input partitions' positions: how far the stream is indexed.
async fn position(admin: std::net::SocketAddr) -> i64 {
    status(admin).await["partitions"]
        .as_array()
        .map_or(0, |ps| {
            ps.iter().map(|p| p["position"].as_i64().unwrap_or(0)).sum()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_and_the_index_holds_each_latest_value() {
    const PRODUCTS: u64 = 500;
    const VERSIONS: u64 = 6;
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "search-crash", 3).await;
    let dir = tempfile::tempdir().unwrap();
    // Version v of product i costs v * 10,000 + i: the latest is the highest.
    let updates: Vec<_> = (1..=VERSIONS)
        .flat_map(|v| {
            (0..PRODUCTS).map(move |i| {
                Item::new(
                    &format!("p{i}"),
                    &format!("Shoe {i}"),
                    "b",
                    "shoes",
                    v * 10_000 + i,
                    v,
                )
                .enriched(true)
            })
        })
        .collect();

    let mut indexer = spawn(broker, &topics, dir.path(), &[]);
    let producer = {
        let topics = topics.clone();
        tokio::spawn(async move {
            for chunk in updates.chunks(100) {
                publish(broker, &topics.products, chunk).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Every tenth product is deleted at the end.
            for i in (0..PRODUCTS).step_by(10) {
                tombstone(broker, &topics.products, &format!("p{i}")).await;
            }
        })
    };
    let mut kills = 0;
    for at_least in [500, 1_500, 2_500] {
        let started = Instant::now();
        while position(indexer.admin).await < at_least {
            assert!(started.elapsed() < WAIT, "no progress to {at_least}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        indexer.child.kill().unwrap();
        indexer.child.wait().unwrap();
        kills += 1;
        indexer = spawn(broker, &topics, dir.path(), &[]);
    }
    producer.await.unwrap();
    let deleted = PRODUCTS / 10;
    let expected = PRODUCTS - deleted;
    let all = search_until(indexer.api, "sort=price_desc&limit=100", WAIT, |b| {
        b["total"] == expected && b["hits"][0]["retail_minor"] == VERSIONS * 10_000 + PRODUCTS - 1
    })
    .await;
    assert_eq!(kills, 3);
    assert_eq!(all["total"], expected);
    // Every product holds its latest version; every deleted one is gone.
    wait_caught_up(indexer.admin).await;
    for i in 0..PRODUCTS {
        let (status, doc) = get(indexer.api, &format!("/v1/products/p{i}")).await;
        if i % 10 == 0 {
            assert_eq!(status, 404, "p{i} was deleted: {doc}");
        } else {
            assert_eq!(status, 200, "p{i}");
            assert_eq!(doc["price"]["retail_minor"], VERSIONS * 10_000 + i, "p{i}");
            assert_eq!(doc["stock"], VERSIONS, "p{i}");
        }
    }
    // Only the latest versions are searchable: no older one survived a crash.
    let old = search(indexer.api, &format!("max_price={}", VERSIONS * 10_000 - 1)).await;
    assert_eq!(old["total"], 0, "{old}");
    terminate(&mut indexer);
}
