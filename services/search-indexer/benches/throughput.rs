//! search-indexer (the real binary) indexing 1M enriched products from the topic, next to a
//! bare rdkafka consumer reading the same records in the same run; search latency at a
//! fixed query mix while it indexes; freshness once caught up; memory and index size.
//! Prints JSON lines for `cargo xtask bench`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tributary_events::{EnrichedProduct, Envelope, Event, Price, Product, topics};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_testkit::process::{bare_consumer_rate, cpu_seconds, disk_bytes, memory_mib};
use tributary_testkit::{TestBroker, send_waiting, unique_name};

const PARTITIONS: i32 = 6;
const WORDS: [&str; 10] = [
    "organic",
    "linen",
    "merino",
    "recycled",
    "classic",
    "relaxed",
    "cropped",
    "oversized",
    "heavyweight",
    "tailored",
];
const CATEGORIES: [&str; 6] = ["tops", "trousers", "dresses", "shoes", "bags", "outerwear"];
const COLOURS: [&str; 4] = ["navy", "black", "sand", "olive"];

/// Searches per second while indexing: a steady load, not one that takes a core.
const SEARCHES_PER_S: u64 = 50;

/// The query mix, in turn: text, text with an order, filters, facets of everything.
const QUERIES: [&str; 6] = [
    "q=linen",
    "q=organic%20shoe&sort=price_asc",
    "brand=b-7&in_stock=true",
    "category=tops&sort=popularity&limit=50",
    "min_price=2000&max_price=5000&sort=price_desc",
    "q=navy%20merino&offset=40",
];

fn product(i: u64) -> Envelope {
    let id = format!("p-{i:07}");
    let category = CATEGORIES[(i / 7) as usize % CATEGORIES.len()];
    let retail = 1_500 + (i * 37) % 20_000;
    let name = format!(
        "{} {} {}",
        WORDS[i as usize % 10],
        WORDS[(i / 10) as usize % 10],
        category.trim_end_matches('s')
    );
    let attributes = [("colour", COLOURS[i as usize % 4]), ("size", "M")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Envelope::new(
        "bench",
        Event::ProductEnriched(EnrichedProduct {
            product: Product {
                product_id: id.clone(),
                brand_id: format!("b-{}", i % 500),
                sku: format!("SKU-{id}"),
                name,
                category: category.into(),
                description: Some(format!(
                    "A {} piece in {} cotton, garment dyed.",
                    category.trim_end_matches('s'),
                    WORDS[(i / 100) as usize % 10]
                )),
                attributes: Some(attributes),
                images: None,
            },
            price: Some(Price {
                product_id: id,
                currency: "EUR".into(),
                wholesale_minor: retail / 2,
                retail_minor: retail,
            }),
            stock: Some(i % 40),
            complete: true,
            updated_at: chrono::Utc::now(),
        }),
    )
}

fn positions(status: &Value) -> u64 {
    status["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["topic"] == topics::PRODUCTS_ENRICHED)
                .filter_map(|p| p["position"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let broker = TestBroker::start().expect("a memory-storage broker");
    for topic in [topics::PRODUCTS_ENRICHED, topics::AGGREGATES] {
        broker.create_named_topic(topic, PARTITIONS).await.unwrap();
    }
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "100")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let sample = product(0).encode().len();
    let mut deliveries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let e = product(i);
        let value = e.encode();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topics::PRODUCTS_ENRICHED)
            .key(e.key.as_str())
            .payload(value.as_slice());
        deliveries.push(send_waiting(&producer, record));
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    eprintln!("bench: {n} enriched products produced; bare consumer");
    let baseline = tokio::task::block_in_place(|| {
        bare_consumer_rate(&broker, &[topics::PRODUCTS_ENRICHED], n)
    });

    eprintln!("bench: search-indexer");
    let data_dir = tempfile::tempdir().unwrap();
    let free = || {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let (admin, api) = (free(), free());
    let mut child = Command::new(env!("CARGO_BIN_EXE_search-indexer"))
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("GROUP_ID", unique_name("bench-search"))
        .env("DATA_DIR", data_dir.path())
        .env("STATSD_ADDR", "127.0.0.1:9")
        .env("ADMIN_ADDR", admin.to_string())
        .env("SEARCH_ADDR", api.to_string())
        .env("SESSION_TIMEOUT_MS", "6000")
        .env("KAFKA_CONFIG", tributary_testkit::DEV_CLIENT_SETTING)
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
    // The clock starts at the first durable commit (a position moves only once the
    // index commit holding it is done) and counts what follows it.
    let (start, from, cpu_from) = loop {
        let done = positions(&status().await);
        if done > 0 {
            break (Instant::now(), done, cpu_seconds(child.id()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // One client sends the query mix at a steady 50 searches/s while the index is built.
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut q = 0;
    let mut last_check = Instant::now();
    let mut last = status().await;
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / SEARCHES_PER_S));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while positions(&last) < n {
        pace.tick().await;
        let query = QUERIES[q % QUERIES.len()];
        q += 1;
        let sent = Instant::now();
        match client
            .get(format!("http://{api}/v1/search?{query}"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            _ => failures += 1,
        }
        if last_check.elapsed() > Duration::from_millis(20) {
            last = status().await;
            last_check = Instant::now();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ours = (n - from) as f64 / elapsed;
    let cpu_us = (cpu_seconds(child.id()) - cpu_from) * 1e6 / (n - from) as f64;
    let (peak, rss) = memory_mib(child.id());
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    // Freshness once caught up: a new product's price, from the broker's acknowledgement
    // to the search showing it.
    let mut fresh = Vec::new();
    for k in 0..20u64 {
        let e = product(n + k);
        let id = e.key.clone();
        let value = e.encode();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topics::PRODUCTS_ENRICHED)
            .key(id.as_str())
            .payload(value.as_slice());
        send_waiting(&producer, record).await.unwrap().unwrap();
        let acked = Instant::now();
        loop {
            let r = client
                .get(format!("http://{api}/v1/products/{id}"))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(30),
                "{id} never searchable"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        fresh.push(acked.elapsed().as_secs_f64() * 1000.0);
    }
    fresh.sort_by(f64::total_cmp);
    let documents = client
        .get(format!("http://{api}/v1/search?limit=1"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["total"]
        .as_u64()
        .unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let disk = disk_bytes(data_dir.path()) as f64 / (1024.0 * 1024.0);
    let notes = format!(
        "{cpu_us:.0} µs CPU per document; latency is search at the query mix, {SEARCHES_PER_S}/s, while indexing ({} searches, {failures} failed); freshness (broker ack → searchable) p50 {:.0} ms / p99 {:.0} ms once caught up; RSS {rss:.0} MiB, peak {peak:.0} MiB; {documents} documents, {disk:.0} MiB on disk",
        latencies.len(),
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
    );
    println!(
        "{}",
        json!({"bench": "search_indexer",
               "scenario": format!("{n} enriched products → tantivy index (real binary), vs bare consumer"),
               "messages": n, "record_bytes": sample,
               "ours_per_s": ours.round(), "baseline_per_s": baseline.round(),
               "ratio": (ours / baseline * 100.0).round() / 100.0,
               "p50_ms": p50, "p99_ms": p99,
               "notes": notes})
    );
}
