//! The consumer loop against the bare rdkafka client, on the same broker in the same run:
//! a no-op processor next to a bare consumer, and consume→produce pass-through next to a bare
//! consumer that produces each message. Prints one JSON line per scenario (read by
//! `cargo xtask bench`, which writes `docs/benchmarks.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tributary_events::{Envelope, Event, Product};
use tributary_runtime::rdkafka;
use tributary_runtime::{
    Incoming, Output, ProcessError, Processor, RuntimeConfig, ServiceSpec, Shutdown,
};
use tributary_testkit::{TestBroker, send_waiting, unique_name};

const PARTITIONS: i32 = 6;

/// A product envelope of about 400 bytes, the size the design's numbers use.
fn envelope(i: u64) -> Envelope {
    let mut e = Envelope::new(
        "bench",
        Event::ProductUpserted(Product {
            product_id: format!("p-{}", i % 10_000),
            brand_id: format!("b-{}", i % 50),
            sku: format!("SKU-{i:08}"),
            name: "Organic cotton tee, heavyweight".into(),
            category: "tops".into(),
            description: Some("x".repeat(120)),
            attributes: None,
            images: None,
        }),
    );
    e.trace = Some(tributary_events::TraceParent::new_root().to_string());
    e
}

struct Counting {
    seen: Arc<AtomicU64>,
    first: Arc<std::sync::OnceLock<Instant>>,
    forward: Option<String>,
}

impl Processor for Counting {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        self.first.get_or_init(Instant::now);
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(match (&self.forward, message.envelope) {
            (Some(topic), Some(envelope)) => vec![Output::event(topic.clone(), envelope)],
            _ => vec![],
        })
    }
}

fn bare_consume(broker: &TestBroker, topic: &str, n: u64, forward: Option<&str>) -> f64 {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", unique_name("bench-bare"))
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", tributary_testkit::FETCH_WAIT_MAX_MS)
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let producer: Option<FutureProducer> = forward.map(|_| broker.producer().unwrap());
    let mut deliveries = Vec::new();
    let mut seen = 0;
    let mut first = None;
    while seen < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
            if let (Some(producer), Some(out)) = (&producer, forward) {
                let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(out)
                    .key(m.key().unwrap_or_default())
                    .payload(m.payload().unwrap_or_default());
                deliveries.push(send_waiting(producer, record));
            }
        }
    }
    if !deliveries.is_empty() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for d in deliveries {
                d.await.unwrap().unwrap();
            }
        });
    }
    n as f64 / first.unwrap().elapsed().as_secs_f64()
}

async fn loop_consume(broker: &TestBroker, topic: &str, n: u64, forward: Option<&str>) -> f64 {
    let seen = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::new());
    let group = unique_name("bench-loop");
    let mut config = RuntimeConfig::defaults();
    config.brokers = broker.bootstrap();
    config.group_id = Some(group.clone());
    config.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    config.statsd_addr = "127.0.0.1:9".into();
    config.session_timeout_ms = 6000;
    config.commit_interval_ms = 100;
    config.max_in_flight = n as usize + 1;
    config.kafka_config = vec![tributary_testkit::DEV_CLIENT_SETTING.into()];
    let processor = Counting {
        seen: seen.clone(),
        first: first.clone(),
        forward: forward.map(str::to_owned),
    };
    let shutdown = Shutdown::new();
    let running = tributary_runtime::start(
        ServiceSpec::new("bench", &[topic], 0),
        config,
        processor,
        shutdown.clone(),
    )
    .await
    .unwrap();
    // Done means committed: every message processed and, in pass-through, its output acked.
    let committed_total = || -> u64 {
        let status = running.health.status();
        status["partitions"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["position"].as_u64()).sum())
            .unwrap_or(0)
    };
    let mut last_report = Instant::now();
    while committed_total() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if std::env::var_os("BENCH_DEBUG").is_some()
            && last_report.elapsed() > Duration::from_secs(5)
        {
            eprintln!(
                "bench: seen {} status {}",
                seen.load(Ordering::Relaxed),
                running.health.status()
            );
            last_report = Instant::now();
        }
    }
    let rate = n as f64 / first.get().unwrap().elapsed().as_secs_f64();
    shutdown.trigger();
    running.wait().await.unwrap();
    rate
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Memory storage: SQLite serves tens of thousands of records a second, too few to
    // measure a client against. The loop's in-flight budget is raised below so it never
    // pauses: this measures its cost per message; back-pressure has its own test.
    let broker = TestBroker::start().expect("a memory-storage broker");
    let input = broker.create_topic("bench-in", PARTITIONS).await.unwrap();
    let sample = envelope(0).encode().len();
    // Full producer batches (up to 1 MB, the client default), as a bulk load writes them:
    // the fewer batches the broker stores, the less it costs both sides of the comparison.
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "100")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let mut deliveries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let e = envelope(i);
        let value = e.encode();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&input)
            .key(e.key.as_str())
            .payload(value.as_slice());
        deliveries.push(send_waiting(&producer, record));
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    let out_bare = broker
        .create_topic("bench-out-bare", PARTITIONS)
        .await
        .unwrap();
    let out_loop = broker
        .create_topic("bench-out-loop", PARTITIONS)
        .await
        .unwrap();

    // BENCH_SCENARIOS (comma-separated: bare-noop, loop-noop, bare-pass, loop-pass) runs a
    // subset, for profiling one side alone; the table needs all four.
    let only = std::env::var("BENCH_SCENARIOS").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == name))
    };
    eprintln!("bench: {n} records produced");
    let rate = |name: &str| -> bool {
        let run = wanted(name);
        if run {
            eprintln!("bench: {name}");
        }
        run
    };
    let bare_noop = if rate("bare-noop") {
        tokio::task::block_in_place(|| bare_consume(&broker, &input, n, None))
    } else {
        f64::NAN
    };
    let loop_noop = if rate("loop-noop") {
        loop_consume(&broker, &input, n, None).await
    } else {
        f64::NAN
    };
    let bare_pass = if rate("bare-pass") {
        tokio::task::block_in_place(|| bare_consume(&broker, &input, n, Some(&out_bare)))
    } else {
        f64::NAN
    };
    let loop_pass = if rate("loop-pass") {
        loop_consume(&broker, &input, n, Some(&out_loop)).await
    } else {
        f64::NAN
    };
    for (scenario, ours, bare) in [
        ("consume, no-op processor", loop_noop, bare_noop),
        ("consume → produce pass-through", loop_pass, bare_pass),
    ] {
        println!(
            "{}",
            json!({"bench": "consumer_loop", "scenario": scenario, "messages": n,
                   "record_bytes": sample, "ours_per_s": ours.round(), "baseline_per_s": bare.round(),
                   "ratio": (ours / bare * 100.0).round() / 100.0})
        );
    }
}
