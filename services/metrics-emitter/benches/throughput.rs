//! metrics-emitter (the real binary) over activity events, next to a bare rdkafka consumer
//! reading the same records in the same run; with the StatsD packets/s it sends and its
//! memory. Prints one JSON line for `cargo xtask bench`.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tributary_events::{Activity, ActivityKind, Envelope, Event, topics};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_testkit::process::{bare_consumer_rate, memory_mib};
use tributary_testkit::{TestBroker, send_waiting, unique_name};

const PARTITIONS: i32 = 6;

fn event(i: u64) -> Envelope {
    let kind = ActivityKind::ALL[(i % 3) as usize];
    let order = kind == ActivityKind::OrderPlaced;
    Envelope::new(
        "bench",
        Event::Activity(Activity {
            kind,
            product_id: format!("p-{}", i % 10_000),
            retailer_id: format!("r-{}", i % 20),
            time: Some(chrono::Utc::now()),
            quantity: order.then_some(1 + i % 3),
            unit_price_minor: order.then_some(1999),
            currency: order.then(|| "EUR".to_owned()),
            order_id: order.then(|| format!("o-{i}")),
        }),
    )
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
    let sample = event(2).encode().len();
    let mut deliveries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let e = event(i);
        let value = e.encode();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topics::ACTIVITY)
            .key(e.key.as_str())
            .payload(value.as_slice());
        deliveries.push(send_waiting(&producer, record));
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    eprintln!("bench: {n} activity events produced; bare consumer");
    let baseline = bare_consumer_rate(&broker, &[topics::ACTIVITY], n);

    // The StatsD agent: counts packets and lines.
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let agent_addr = agent.local_addr().unwrap();
    let packets = Arc::new(AtomicU64::new(0));
    let lines = Arc::new(AtomicU64::new(0));
    let (p, l) = (packets.clone(), lines.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok(size) = agent.recv(&mut buf) {
            p.fetch_add(1, Ordering::Relaxed);
            l.fetch_add(
                buf[..size].split(|b| *b == b'\n').count() as u64,
                Ordering::Relaxed,
            );
        }
    });
    let admin = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    eprintln!("bench: metrics-emitter");
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrics-emitter"))
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env("GROUP_ID", unique_name("bench-emitter"))
        .env("STATSD_ADDR", agent_addr.to_string())
        .env("ADMIN_ADDR", admin.to_string())
        .env("SESSION_TIMEOUT_MS", "6000")
        .env("COMMIT_INTERVAL_MS", "100")
        .env("KAFKA_CONFIG", tributary_testkit::DEV_CLIENT_SETTING)
        // Above the record count, so the run measures the cost per event, not back-pressure
        // (see the consumer-loop benchmark).
        .env("MAX_IN_FLIGHT", (n + 1).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let processed = || async {
        let status: Value = match client.get(format!("http://{admin}/status")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        status["partitions"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["topic"] == topics::ACTIVITY)
                    .filter_map(|p| p["position"].as_u64())
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    // The clock starts at the first committed progress and counts what follows it.
    let (start, from, packets_from, lines_from) = loop {
        let done = processed().await;
        if done > 0 {
            break (
                Instant::now(),
                done,
                packets.load(Ordering::Relaxed),
                lines.load(Ordering::Relaxed),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    while processed().await < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ours = (n - from) as f64 / elapsed;
    let packets_per_s = (packets.load(Ordering::Relaxed) - packets_from) as f64 / elapsed;
    let lines_per_s = (lines.load(Ordering::Relaxed) - lines_from) as f64 / elapsed;
    let (peak, rss) = memory_mib(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    println!(
        "{}",
        json!({"bench": "metrics_emitter", "scenario": "activity events → DogStatsD (real binary)",
               "messages": n, "record_bytes": sample,
               "ours_per_s": ours.round(), "baseline_per_s": baseline.round(),
               "ratio": (ours / baseline * 100.0).round() / 100.0,
               "notes": format!("{packets_per_s:.0} StatsD packets/s ({lines_per_s:.0} lines/s); RSS {rss:.0} MiB, peak {peak:.0} MiB")})
    );
}
