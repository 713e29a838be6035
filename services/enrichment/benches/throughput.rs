//! enrichment (the real binary, with its state store and changelog) over 1M product, price
//! and stock updates for 100k products, next to a bare rdkafka consumer and the runtime's
//! no-op loop reading the same records in the same run; with its memory and state size.
//! Prints JSON lines for `cargo xtask bench`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tributary_events::{Envelope, Event, Price, Product, Stock, topics};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::{
    Incoming, Output, ProcessError, Processor, RuntimeConfig, ServiceSpec, Shutdown,
};
use tributary_testkit::process::{bare_consumer_rate, cpu_seconds, disk_bytes, memory_mib};
use tributary_testkit::{TestBroker, send_waiting, unique_name};

const PARTITIONS: i32 = 6;
const PRODUCTS: u64 = 100_000;
const INPUTS: [&str; 3] = [topics::PRODUCTS, topics::PRICES, topics::STOCK];

/// Update `i`: products, prices and stock in turn, for product `(i / 3) % 100k`, each with
/// a value that differs from that product's previous one, so that nearly every update
/// changes the enriched product and is published.
fn update(i: u64) -> (&'static str, Envelope) {
    let id = format!("p-{:06}", (i / 3) % PRODUCTS);
    let (topic, event) = match i % 3 {
        0 => (
            topics::PRODUCTS,
            Event::ProductUpserted(Product {
                product_id: id.clone(),
                brand_id: format!("b-{}", (i / 3) % 500),
                sku: format!("SKU-{id}"),
                name: format!("Organic cotton tee, revision {}", i / (3 * PRODUCTS)),
                category: "tops".into(),
                description: Some("Heavyweight jersey, garment dyed.".into()),
                attributes: None,
                images: None,
            }),
        ),
        1 => (
            topics::PRICES,
            Event::PriceUpdated(Price {
                product_id: id.clone(),
                currency: "EUR".into(),
                wholesale_minor: 1000 + i % 997,
                retail_minor: 2000 + i % 997,
            }),
        ),
        _ => (
            topics::STOCK,
            Event::StockChanged(Stock {
                product_id: id.clone(),
                quantity: 1 + i % 50,
                warehouse: None,
            }),
        ),
    };
    (topic, Envelope::new("bench", event))
}

/// A co-partitioned processor that does nothing: the runtime's cost with enrichment's task
/// layout (partition p of the three inputs is one task), without its state.
struct NoOp {
    first: Arc<std::sync::OnceLock<Instant>>,
    seen: Arc<AtomicU64>,
}

impl Processor for NoOp {
    async fn process(&self, _: Incoming) -> Result<Vec<Output>, ProcessError> {
        self.first.get_or_init(Instant::now);
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(Vec::new())
    }

    fn co_partitioned(&self) -> bool {
        true
    }
}

async fn no_op_loop(broker: &TestBroker, n: u64) -> f64 {
    let first = Arc::new(std::sync::OnceLock::new());
    let mut config = RuntimeConfig::defaults();
    config.brokers = broker.bootstrap();
    config.group_id = Some(unique_name("bench-loop"));
    config.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    config.statsd_addr = "127.0.0.1:9".into();
    config.session_timeout_ms = 6000;
    config.commit_interval_ms = 100;
    config.max_in_flight = n as usize + 1;
    config.kafka_config = vec![tributary_testkit::DEV_CLIENT_SETTING.into()];
    let shutdown = Shutdown::new();
    let processor = NoOp {
        first: first.clone(),
        seen: Arc::new(AtomicU64::new(0)),
    };
    let running = tributary_runtime::start(
        ServiceSpec::new("bench", &INPUTS, 0),
        config,
        processor,
        shutdown.clone(),
    )
    .await
    .unwrap();
    // Done means finished: every position (the committed watermark) reached the end.
    while positions(&running.health.status()) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / first.get().unwrap().elapsed().as_secs_f64();
    shutdown.trigger();
    running.wait().await.unwrap();
    rate
}

/// The sum of the input partitions' positions in a `/status` document.
fn positions(status: &Value) -> u64 {
    status["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| INPUTS.iter().any(|t| p["topic"] == *t))
                .filter_map(|p| p["position"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Memory storage, full producer batches: as in the consumer-loop benchmark.
    let broker = TestBroker::start().expect("a memory-storage broker");
    for topic in topics::ALL {
        broker.create_named_topic(topic, PARTITIONS).await.unwrap();
    }
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "100")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let sample = update(0).1.encode().len();
    let mut deliveries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (topic, e) = update(i);
        let value = e.encode();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .key(e.key.as_str())
            .payload(value.as_slice());
        deliveries.push(send_waiting(&producer, record));
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    eprintln!("bench: {n} updates produced; bare consumer");
    let baseline = tokio::task::block_in_place(|| bare_consumer_rate(&broker, &INPUTS, n));
    eprintln!("bench: no-op loop");
    let loop_rate = no_op_loop(&broker, n).await;

    eprintln!("bench: enrichment");
    let data_dir = tempfile::tempdir().unwrap();
    let admin = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_enrichment"))
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("GROUP_ID", unique_name("bench-enrichment"))
        .env("DATA_DIR", data_dir.path())
        .env("STATSD_ADDR", "127.0.0.1:9")
        .env("ADMIN_ADDR", admin.to_string())
        .env("SESSION_TIMEOUT_MS", "6000")
        .env("COMMIT_INTERVAL_MS", "100")
        .env("KAFKA_CONFIG", tributary_testkit::DEV_CLIENT_SETTING)
        // The default in-flight budget (unlike the loops above): enrichment is slower than
        // the fetch, so a budget above the record count would hold the whole backlog in
        // memory, and the resident set would measure the benchmark, not the service.
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let status = || async {
        match client.get(format!("http://{admin}/status")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    };
    // The clock starts at the first committed batch and counts what follows it: a position
    // moves only once a batch's outputs, changelog, checkpoint and state are all durable.
    let (start, from, cpu_from) = loop {
        let done = positions(&status().await);
        if done > 0 {
            break (Instant::now(), done, cpu_seconds(child.id()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut last = status().await;
    let mut reported = Instant::now();
    while positions(&last) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
        last = status().await;
        if std::env::var_os("BENCH_DEBUG").is_some() && reported.elapsed() > Duration::from_secs(2)
        {
            reported = Instant::now();
            let parts: Vec<String> = last["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}/{} {} if={} pos={}",
                        p["topic"]
                            .as_str()
                            .unwrap_or("")
                            .chars()
                            .take(12)
                            .collect::<String>(),
                        p["partition"],
                        p["state"],
                        p["in_flight"],
                        p["position"]
                    )
                })
                .collect();
            eprintln!(
                "{:.1}s {}",
                start.elapsed().as_secs_f64(),
                parts.join(" | ")
            );
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ours = (n - from) as f64 / elapsed;
    let (peak, rss) = memory_mib(child.id());
    let cpu_us = (cpu_seconds(child.id()) - cpu_from) * 1e6 / (n - from) as f64;
    let entries: u64 = last["state"]["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["entries"].as_u64()).sum())
        .unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let disk = disk_bytes(data_dir.path()) as f64 / (1024.0 * 1024.0);
    let scenario = format!(
        "{n} updates over {} products → enriched (real binary)",
        PRODUCTS.min(n.div_ceil(3))
    );
    let notes = format!(
        "{cpu_us:.0} µs CPU per update; RSS {rss:.0} MiB, peak {peak:.0} MiB; {entries} products in state, {disk:.0} MiB on disk"
    );
    for (vs, baseline) in [("bare consumer", baseline), ("no-op loop", loop_rate)] {
        println!(
            "{}",
            json!({"bench": "enrichment", "scenario": format!("{scenario}, vs {vs}"),
                   "messages": n, "record_bytes": sample,
                   "ours_per_s": ours.round(), "baseline_per_s": baseline.round(),
                   "ratio": (ours / baseline * 100.0).round() / 100.0,
                   "notes": notes})
        );
    }
}
