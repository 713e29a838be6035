//! The broker is killed with SIGKILL while ingest publishes with idempotence on, then
//! restarted on the same data: every event ingest acknowledged (202) is readable afterwards.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tributary_events::topics;
use tributary_testkit::TestBroker;

/// Concurrent clients, so the producer has batches in flight when the broker dies.
const CLIENTS: usize = 8;
/// Events acknowledged before the crash, and again after the restart.
const PHASE: usize = 400;

struct Load {
    accepted: Mutex<Vec<String>>,
    refused: AtomicUsize,
    unexpected: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Load {
    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_a_broker_sigkill() {
    let mut broker = TestBroker::start_durable().unwrap();
    let mut cfg = config(&broker);
    cfg.publish_timeout_ms = 2_000;
    assert!(
        cfg.runtime
            .producer_config("ingest")
            .unwrap()
            .get("enable.idempotence")
            .is_some_and(|v| v == "true"),
        "the service under test produces with idempotence on"
    );
    let api = start(&broker, cfg).await;
    api.wait_ready().await;

    let load = Arc::new(Load {
        accepted: Mutex::new(Vec::new()),
        refused: AtomicUsize::new(0),
        unexpected: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let load = Arc::clone(&load);
        let http = api.http.clone();
        let url = format!("{}/v1/stock", api.base);
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !load.stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({"product_id": format!("p-{client}-{}", n % 40), "quantity": n});
                match http.post(&url).json(&body).send().await {
                    Ok(res) if res.status() == 202 => {
                        let body: serde_json::Value = res.json().await.unwrap();
                        load.accepted.lock().unwrap().extend(ids(&body));
                    }
                    // The broker is down or recovering: refused, and the client may retry.
                    Ok(res) if res.status() == 503 => {
                        load.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(res) => {
                        let answer = format!("{}: {}", res.status(), res.text().await.unwrap());
                        load.unexpected.lock().unwrap().push(answer);
                    }
                    Err(e) => load.unexpected.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }

    until(
        "acknowledged before the crash",
        Duration::from_secs(60),
        || load.accepted() >= PHASE,
    )
    .await;
    broker.kill().unwrap();
    let at_crash = load.accepted();
    until(
        "requests refused while down",
        Duration::from_secs(30),
        || load.refused.load(Ordering::Relaxed) > 0,
    )
    .await;
    broker.restart().unwrap();
    until(
        "acknowledged after the restart",
        Duration::from_secs(90),
        || load.accepted() >= at_crash + PHASE,
    )
    .await;
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let unexpected = load.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "answers other than 202/503: {unexpected:?}"
    );

    let acknowledged = load.accepted.lock().unwrap().clone();
    let published = published(&broker, topics::STOCK, &acknowledged).await;
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for (_, envelope) in &published {
        *copies.entry(envelope.id.to_string()).or_default() += 1;
    }
    let missing = acknowledged
        .iter()
        .filter(|id| !copies.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "acknowledged events missing after the crash");
    eprintln!(
        "{} acknowledged ({} before the kill), {} refused while down, {} read back, {} ids \
         written more than once",
        acknowledged.len(),
        at_crash,
        load.refused.load(Ordering::Relaxed),
        published.len(),
        copies.values().filter(|&&n| n > 1).count()
    );
    api.stop().await;
}
