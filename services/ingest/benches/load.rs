//! Ingest under load from a Rust load generator on the same machine: single-event POSTs and
//! 100-event batches (events/s, p50/p99 latency), next to a bare rdkafka producer publishing
//! the same envelopes in the same run. Prints JSON lines for `cargo xtask bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest::IngestConfig;
use serde_json::{Value, json};
use tributary_events::{Envelope, Event, Stock, topics};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::{RuntimeConfig, Shutdown};
use tributary_testkit::{TestBroker, send_waiting};

/// Concurrent connections of the load generator: enough that acknowledgement latency, not
/// the generator, bounds throughput.
const CONCURRENCY: usize = 256;

fn stock(i: usize) -> Value {
    json!({"product_id": format!("p-{}", i % 10_000), "quantity": i % 100, "warehouse": "ams-1"})
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Sends `requests` POSTs of `batch` events each from `CONCURRENCY` tasks. Bodies are built
/// before the clock starts, so the generator spends its share of the CPU on HTTP only.
async fn load(base: &str, requests: usize, batch: usize) -> (f64, f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let url = Arc::new(format!("{base}/v1/stock"));
    let bodies: Vec<Vec<Vec<u8>>> = (0..CONCURRENCY)
        .map(|worker| {
            (worker..requests)
                .step_by(CONCURRENCY)
                .map(|i| {
                    if batch == 1 {
                        serde_json::to_vec(&stock(i)).unwrap()
                    } else {
                        let events: Vec<Value> = (0..batch).map(|j| stock(i * batch + j)).collect();
                        serde_json::to_vec(&events).unwrap()
                    }
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker_bodies in bodies {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(worker_bodies.len());
            for body in worker_bodies {
                let sent = Instant::now();
                let res = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    res.status(),
                    202,
                    "{}",
                    res.text().await.unwrap_or_default()
                );
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    (
        (requests * batch) as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    )
}

async fn bare(config: &RuntimeConfig, events: usize) -> f64 {
    // The same producer settings ingest uses, warmed up (connection, producer id, metadata)
    // before the clock starts, as ingest's is by the time load arrives.
    let producer: FutureProducer = config.producer_config("bench").unwrap().create().unwrap();
    producer
        .send(
            FutureRecord::<str, str>::to(topics::STOCK)
                .key("warm")
                .payload("{}"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let envelopes: Vec<Envelope> = (0..events)
        .map(|i| {
            Envelope::new(
                "bench",
                Event::StockChanged(Stock {
                    product_id: format!("p-{}", i % 10_000),
                    quantity: (i % 100) as u64,
                    warehouse: Some("ams-1".into()),
                }),
            )
        })
        .collect();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events);
    for e in &envelopes {
        let value = e.encode();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topics::STOCK)
            .key(e.key.as_str())
            .payload(value.as_slice());
        deliveries.push(send_waiting(&producer, record));
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let scale: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
        / 10;
    let broker = TestBroker::start().unwrap();
    broker.create_named_topic(topics::STOCK, 6).await.unwrap();
    let mut runtime = RuntimeConfig::defaults();
    runtime.brokers = broker.bootstrap();
    runtime.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    runtime.statsd_addr = "127.0.0.1:9".into();
    let bare_config = runtime.clone();
    let mut config = IngestConfig::with_runtime(runtime);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.client_keys = ingest::config::Secret::default();
    config.rate_limit = 0.0;
    config.publish_timeout_ms = 30_000;
    let shutdown = Shutdown::new();
    let running = ingest::start(config, shutdown.clone()).await.unwrap();
    let base = format!("http://{}", running.api_addr);

    let bare_rate = bare(&bare_config, scale).await;
    let (single_rate, single_p50, single_p99) = load(&base, scale / 2, 1).await;
    let (batch_rate, batch_p50, batch_p99) = load(&base, scale / 100, 100).await;
    for (scenario, events, rate, p50, p99) in [
        (
            "POST, 1 event per request",
            scale / 2,
            single_rate,
            single_p50,
            single_p99,
        ),
        (
            "POST, 100 events per request",
            scale,
            batch_rate,
            batch_p50,
            batch_p99,
        ),
    ] {
        println!(
            "{}",
            json!({"bench": "ingest", "scenario": scenario, "messages": events,
                   "record_bytes": serde_json::to_vec(&stock(1)).unwrap().len(),
                   "ours_per_s": rate.round(), "baseline_per_s": bare_rate.round(),
                   "ratio": (rate / bare_rate * 100.0).round() / 100.0,
                   "p50_ms": (p50 * 100.0).round() / 100.0, "p99_ms": (p99 * 100.0).round() / 100.0})
        );
    }
    shutdown.trigger();
    running.wait().await.unwrap();
}
