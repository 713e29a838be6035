//! Ingest under load from a Rust load generator on the same machine: single-event POSTs and
//! 100-event batches (events/s, p50/p99 latency), next to a bare rdkafka producer publishing
//! the same envelopes in the same run. Prints JSON lines for `cargo xtask bench`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ingest::IngestConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_events::{Envelope, Event, Stock, TraceParent, topics};
use tributary_runtime::kafka::owned_headers;
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::{RuntimeConfig, Shutdown};
use tributary_testkit::{TestBroker, send_waiting};

/// Concurrent connections of the load generator: enough that acknowledgement latency, not
/// the generator, bounds throughput.
const CONCURRENCY: usize = 256;

/// Measurements per scenario, each next to its own baseline; the median is reported.
const ROUNDS: usize = 3;

/// The allocator of the ingest binary, so the service is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn stock(i: usize) -> Value {
    json!({"product_id": format!("p-{}", i % 10_000), "quantity": i % 100, "warehouse": "ams-1"})
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Sends `requests` POSTs of `batch` events each from `CONCURRENCY` keep-alive connections.
/// Requests are built byte for byte before the clock starts and responses are read with a
/// minimal HTTP/1.1 parser (status line and `content-length`), so the generator, which
/// shares the machine with ingest and the broker, spends as little CPU as a tool like wrk.
async fn load(addr: SocketAddr, requests: usize, batch: usize) -> (f64, f64, f64) {
    let requests_per_worker: Vec<Vec<Vec<u8>>> = (0..CONCURRENCY)
        .map(|worker| {
            (worker..requests)
                .step_by(CONCURRENCY)
                .map(|i| {
                    let body = if batch == 1 {
                        serde_json::to_vec(&stock(i)).unwrap()
                    } else {
                        let events: Vec<Value> = (0..batch).map(|j| stock(i * batch + j)).collect();
                        serde_json::to_vec(&events).unwrap()
                    };
                    let mut request = format!(
                        "POST /v1/stock HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    request.extend_from_slice(&body);
                    request
                })
                .collect()
        })
        .collect();
    let mut connections = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        connections.push(stream);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut stream, worker_requests) in connections.into_iter().zip(requests_per_worker) {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(worker_requests.len());
            let mut buffer = Vec::with_capacity(16 * 1024);
            for request in worker_requests {
                let sent = Instant::now();
                stream.write_all(&request).await.unwrap();
                let status = read_response(&mut stream, &mut buffer).await;
                assert_eq!(status, 202, "{}", String::from_utf8_lossy(&buffer));
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

/// Reads one HTTP/1.1 response (headers and a `content-length` body) into `buffer` and
/// returns its status.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> u16 {
    buffer.clear();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "ingest closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buffer[..header_end]).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length");
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "ingest closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
    }
    status
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
            .with_trace(TraceParent::new_root())
        })
        .collect();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events);
    for e in &envelopes {
        let value = e.encode();
        let headers = owned_headers(e.headers());
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topics::STOCK)
            .key(e.key.as_str())
            .payload(value.as_slice())
            .headers(headers);
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

    // Rounds alternate the baseline and each scenario, so both see the broker in the same
    // state (its storage grows through the run); the median round is reported.
    for (scenario, requests, batch) in [
        ("POST, 1 event per request", scale / 2, 1),
        ("POST, 100 events per request", scale / 100, 100),
    ] {
        // BENCH_ONLY=<batch size> runs one scenario (for profiling).
        if std::env::var("BENCH_ONLY").is_ok_and(|only| only != batch.to_string()) {
            continue;
        }
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let bare_rate = bare(&bare_config, requests * batch).await;
            let (rate, p50, p99) = load(running.api_addr, requests, batch).await;
            rounds.push((rate / bare_rate, rate, bare_rate, p50, p99));
        }
        rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, rate, bare_rate, p50, p99) = rounds[rounds.len() / 2];
        println!(
            "{}",
            json!({"bench": "ingest", "scenario": scenario, "messages": requests * batch,
                   "record_bytes": serde_json::to_vec(&stock(1)).unwrap().len(),
                   "ours_per_s": rate.round(), "baseline_per_s": bare_rate.round(),
                   "requests_per_s": (rate / batch as f64).round(),
                   "ratio": (ratio * 100.0).round() / 100.0,
                   "p50_ms": (p50 * 100.0).round() / 100.0, "p99_ms": (p99 * 100.0).round() / 100.0})
        );
    }
    shutdown.trigger();
    running.wait().await.unwrap();
}
