//! aggregation (the real binary: product and brand windows of a minute and an hour, the
//! brand re-keying through its repartition topic, effectively-once state with a changelog)
//! over 1M activity events, next to a bare rdkafka consumer and Quix Streams computing
//! per-product 1-minute windows on the same topic in the same run; then the end-to-end
//! latency from ingest's acknowledgement to the window being readable on the aggregates
//! API at 10k events/s. Prints JSON lines for `cargo xtask bench`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tributary_events::{Activity, ActivityKind, Envelope, Event, Product, topics};
use tributary_runtime::rdkafka::TopicPartitionList;
use tributary_runtime::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use tributary_runtime::rdkafka::client::DefaultClientContext;
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::{RuntimeConfig, Shutdown};
use tributary_testkit::process::{bare_consumer_rate, cpu_seconds, disk_bytes, memory_mib};
use tributary_testkit::{TestBroker, send_waiting, unique_name};

const PARTITIONS: i32 = 6;
const PRODUCTS: u64 = 10_000;
const BRANDS: u64 = 200;
/// Quix Streams, pinned: the version the table was measured with.
const QUIX: &str = "quixstreams==3.28.1";
/// How long the peer is measured at most (its rate is steady well before).
const PEER_WINDOW: Duration = Duration::from_secs(90);

fn base_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T06:00:00Z")
        .unwrap()
        .to_utc()
}

fn product(i: u64) -> Envelope {
    let id = format!("p-{i:05}");
    Envelope::new(
        "bench",
        Event::ProductUpserted(Product {
            product_id: id.clone(),
            brand_id: format!("b-{}", i % BRANDS),
            sku: format!("SKU-{id}"),
            name: format!("Product {id}"),
            category: "tops".into(),
            description: None,
            attributes: None,
            images: None,
        }),
    )
}

fn activity(kind: ActivityKind, product_id: String, time: DateTime<Utc>, i: u64) -> Envelope {
    let order = kind == ActivityKind::OrderPlaced;
    Envelope::new(
        "bench",
        Event::Activity(Activity {
            kind,
            product_id,
            retailer_id: "r-1".into(),
            time: None,
            quantity: order.then_some(1 + i % 3),
            unit_price_minor: order.then_some(100 + i % 900),
            currency: order.then(|| "EUR".to_owned()),
            order_id: order.then(|| format!("o-{i}")),
        }),
    )
    .at(time)
}

/// Event `i` of the stream: a pseudo-random product, views, carts and orders in turn, event
/// time advancing 3.6 ms per event (1M events span an hour: sixty 1-minute windows close).
fn event(i: u64) -> Envelope {
    let k = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33;
    let time = base_time() + chrono::Duration::microseconds(i as i64 * 3_600);
    activity(
        ActivityKind::ALL[(i % 3) as usize],
        format!("p-{:05}", k % PRODUCTS),
        time,
        i,
    )
}

async fn produce(broker: &TestBroker, topic: &str, envelopes: impl Iterator<Item = Envelope>) {
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "100")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for e in envelopes {
        let value = e.encode();
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .key(e.key.as_str())
            .payload(value.as_slice());
        deliveries.push(send_waiting(&producer, record));
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
}

/// The suite's topics, with their retention set explicitly: Quix Streams copies the
/// input's `retention.ms` to its changelog topics, and the dev broker's DescribeConfigs
/// lists only the configs a topic was created with.
async fn create_topics(broker: &TestBroker) {
    let admin: AdminClient<DefaultClientContext> = broker.client_config().create().unwrap();
    let new: Vec<NewTopic<'_>> = topics::ALL
        .iter()
        .map(|t| {
            NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1))
                .set("retention.ms", "604800000")
                .set("retention.bytes", "-1")
        })
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// The sum of `topic`'s positions in a `/status` document.
fn positions(status: &Value, topic: &str) -> u64 {
    status["partitions"].as_array().map_or(0, |ps| {
        ps.iter()
            .filter(|p| p["topic"] == topic)
            .filter_map(|p| p["position"].as_u64())
            .sum()
    })
}

fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// A child process, stopped with SIGTERM when dropped (also when the benchmark panics).
struct Service(Child);

impl Service {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The real binary, a child process with an empty `DATA_DIR` and the default settings.
fn spawn_aggregation(
    broker: &TestBroker,
    data_dir: &Path,
    admin: SocketAddr,
    api: SocketAddr,
) -> Service {
    Service(
        Command::new(env!("CARGO_BIN_EXE_aggregation"))
            .env("KAFKA_BROKERS", broker.bootstrap())
            .env("GROUP_ID", unique_name("bench-aggregation"))
            .env("DATA_DIR", data_dir)
            .env("STATSD_ADDR", "127.0.0.1:9")
            .env("ADMIN_ADDR", admin.to_string())
            .env("AGGREGATION_ADDR", api.to_string())
            .env("KAFKA_CONFIG", tributary_testkit::DEV_CLIENT_SETTING)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn status(client: &reqwest::Client, admin: SocketAddr) -> Value {
    match client.get(format!("http://{admin}/status")).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

struct Ours {
    rate: f64,
    cpu_us: f64,
    rss: f64,
    peak: f64,
    disk_mib: f64,
}

/// Aggregation's rate: from its first committed batch until every activity record and
/// every re-keyed record (the brand windows) is processed and committed.
async fn ours(broker: &TestBroker, n: u64) -> Ours {
    let data_dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let child = spawn_aggregation(broker, data_dir.path(), admin, free_addr());
    let client = reqwest::Client::new();
    let done =
        |s: &Value| positions(s, topics::ACTIVITY) + positions(s, aggregation::REPARTITION_TOPIC);
    let (start, from, cpu_from) = loop {
        let done = done(&status(&client, admin).await);
        if done > 0 {
            break (Instant::now(), done, cpu_seconds(child.pid()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut reported = Instant::now();
    loop {
        let s = status(&client, admin).await;
        if done(&s) >= 2 * n {
            break;
        }
        if std::env::var_os("BENCH_DEBUG").is_some() && reported.elapsed() > Duration::from_secs(2)
        {
            reported = Instant::now();
            eprintln!(
                "{:.1}s activity {} repartition {}",
                start.elapsed().as_secs_f64(),
                positions(&s, topics::ACTIVITY),
                positions(&s, aggregation::REPARTITION_TOPIC)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Counted in activity events: each is processed twice (its product's windows, then its
    // brand's from the repartition topic), both halves inside the clock.
    let events = (2 * n - from) as f64 / 2.0;
    let (peak, rss) = memory_mib(child.pid());
    let cpu_us = (cpu_seconds(child.pid()) - cpu_from) * 1e6 / events;
    drop(child);
    Ours {
        rate: events / elapsed,
        cpu_us,
        rss,
        peak,
        disk_mib: disk_bytes(data_dir.path()) as f64 / (1024.0 * 1024.0),
    }
}

/// Prints how many records each topic holds (where the service's work goes).
fn records_per_topic(broker: &TestBroker) {
    let consumer: BaseConsumer = broker.client_config().create().unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    for topic in metadata.topics() {
        let records: i64 = topic
            .partitions()
            .iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(topic.name(), p.id(), Duration::from_secs(10))
                    .map_or(0, |(low, high)| high - low)
            })
            .sum();
        eprintln!("bench: {} holds {records} records", topic.name());
        if topic.name().ends_with(".dlq") && records > 0 {
            dead_letter_reasons(broker, topic.name());
        }
    }
}

/// Prints how many dead letters give each reason (its first words).
fn dead_letter_reasons(broker: &TestBroker, topic: &str) {
    use tributary_runtime::rdkafka::Message;
    use tributary_runtime::rdkafka::message::Headers;
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", unique_name("bench-dlq"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let reason = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == tributary_runtime::dlq::ERROR_MESSAGE)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default();
        // Times and ids differ per record: the reason is what is left without them.
        let short: String = reason
            .split_whitespace()
            .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
            .collect::<Vec<_>>()
            .join(" ");
        if reasons.is_empty() {
            eprintln!("bench:   first dead letter: {reason}");
        }
        *reasons.entry(short).or_default() += 1;
    }
    for (reason, count) in reasons {
        eprintln!("bench:   {count} × {reason}");
    }
}

/// A virtualenv with Quix Streams under the target directory, made once.
fn quix_python() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let venv = target.join("bench-venv");
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import quixstreams"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        eprintln!("bench: installing {QUIX} into {}", venv.display());
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        let installed = made
            && Command::new(&python)
                .args(["-m", "pip", "install", "-q", QUIX])
                .status()
                .is_ok_and(|s| s.success());
        if !installed || !ready(&python) {
            return None;
        }
    }
    Some(python)
}

/// Quix Streams' rate: from its first commit, over at most [`PEER_WINDOW`], read from its
/// group's committed offsets.
fn quix(broker: &TestBroker, python: &Path, n: u64) -> (f64, f64) {
    let group = unique_name("bench-quix");
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/quix_windows.py"))
        .env("BROKERS", broker.bootstrap())
        .env("TOPIC", topics::ACTIVITY)
        .env("GROUP", &group)
        .env("OUTPUT", unique_name("bench-quix-out"))
        .env("STATE_DIR", state.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topics::ACTIVITY, p);
    }
    let committed = || -> u64 {
        consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .map(|c| {
                c.elements()
                    .iter()
                    .filter_map(|e| e.offset().to_raw())
                    .filter(|o| *o > 0)
                    .map(|o| o as u64)
                    .sum()
            })
            .unwrap_or(0)
    };
    let started = Instant::now();
    let (start, from) = loop {
        let done = committed();
        if done > 0 {
            break (Instant::now(), done);
        }
        assert!(
            started.elapsed() < Duration::from_secs(300) && child.try_wait().unwrap().is_none(),
            "Quix Streams did not commit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut done = from;
    while done < n && start.elapsed() < PEER_WINDOW {
        std::thread::sleep(Duration::from_millis(50));
        done = committed();
    }
    let rate = (done - from) as f64 / start.elapsed().as_secs_f64();
    let (_, rss) = memory_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (rate, rss)
}

/// Percentile `p` (0..=100) of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i]
}

/// End-to-end latency at `rate` events/s for `seconds`: ingest (in this process, real HTTP)
/// → activity topic → aggregation (the real binary) → its aggregates API. A probe event
/// for a product seen nowhere else rides in every 50th request; its latency runs from
/// ingest's acknowledgement to the API answering a window that counts it.
async fn latency(rate: u64, seconds: u64) -> (f64, f64, usize) {
    let broker = TestBroker::start().unwrap();
    create_topics(&broker).await;
    let mut runtime = RuntimeConfig::defaults();
    runtime.brokers = broker.bootstrap();
    runtime.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    runtime.statsd_addr = "127.0.0.1:9".into();
    let mut config = ingest::IngestConfig::with_runtime(runtime);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.client_keys = ingest::config::Secret::default();
    config.rate_limit = 0.0;
    let shutdown = Shutdown::new();
    let ingest = ingest::start(config, shutdown.clone()).await.unwrap();
    let ingest_addr = ingest.api_addr;

    let data_dir = tempfile::tempdir().unwrap();
    let (admin, api) = (free_addr(), free_addr());
    let child = spawn_aggregation(&broker, data_dir.path(), admin, api);
    let client = reqwest::Client::new();
    loop {
        let ready = client.get(format!("http://{admin}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 100 events per request, a request every 100 / rate seconds.
    let per_request = 100u64;
    let interval = Duration::from_secs_f64(per_request as f64 / rate as f64);
    let requests = seconds * rate / per_request;
    let mut ticker = tokio::time::interval(interval);
    let mut probes = tokio::task::JoinSet::new();
    for r in 0..requests {
        ticker.tick().await;
        let now = Utc::now();
        let probe = (r % 50 == 0).then(|| format!("lat-{r}"));
        let body: Vec<Value> = (0..per_request)
            .map(|i| {
                let id = match (&probe, i) {
                    (Some(p), 0) => p.clone(),
                    _ => format!("p-{:05}", (r * per_request + i) % PRODUCTS),
                };
                json!({"kind": "product_viewed", "product_id": id, "retailer_id": "r-1",
                       "time": now.to_rfc3339()})
            })
            .collect();
        let client = client.clone();
        let posted = client
            .post(format!("http://{ingest_addr}/v1/activity"))
            .json(&body)
            .send();
        let Some(probe) = probe else {
            tokio::spawn(async move {
                let _ = posted.await;
            });
            continue;
        };
        probes.spawn(async move {
            let answer = posted.await.unwrap();
            assert!(
                answer.status().is_success(),
                "ingest refused: {}",
                answer.status()
            );
            let acked = Instant::now();
            let url = format!(
                "http://{api}/v1/aggregates?dim=product&id={probe}&window=1m&from={}&to={}",
                (now - chrono::Duration::minutes(2)).to_rfc3339_opts(SecondsFormat::Secs, true),
                (now + chrono::Duration::minutes(2)).to_rfc3339_opts(SecondsFormat::Secs, true)
            );
            loop {
                let answer: Value = match client.get(&url).send().await {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                if answer["windows"][0]["views"] == 1 {
                    return acked.elapsed().as_secs_f64() * 1000.0;
                }
                assert!(
                    acked.elapsed() < Duration::from_secs(30),
                    "probe {probe} never counted"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    let mut samples: Vec<f64> = probes.join_all().await;
    samples.sort_by(f64::total_cmp);
    drop(child);
    shutdown.trigger();
    let _ = ingest.wait().await;
    (
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.len(),
    )
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let sample = event(0).encode().len();
    let python = quix_python();
    let broker = TestBroker::start().expect("a memory-storage broker");
    create_topics(&broker).await;
    produce(&broker, topics::PRODUCTS, (0..PRODUCTS).map(product)).await;
    produce(&broker, topics::ACTIVITY, (0..n).map(event)).await;
    eprintln!("bench: {n} activity events produced; bare consumer");
    let baseline =
        tokio::task::block_in_place(|| bare_consumer_rate(&broker, &[topics::ACTIVITY], n));
    eprintln!("bench: aggregation");
    let ours = ours(&broker, n).await;
    eprintln!(
        "bench: aggregation {:.0}/s ({:.0} µs CPU per event), bare {baseline:.0}/s",
        ours.rate, ours.cpu_us
    );
    if std::env::var_os("BENCH_DEBUG").is_some() {
        tokio::task::block_in_place(|| records_per_topic(&broker));
    }
    let peer = python.as_ref().map(|python| {
        eprintln!("bench: Quix Streams");
        tokio::task::block_in_place(|| quix(&broker, python, n))
    });
    eprintln!("bench: Quix Streams {peer:?}");
    drop(broker);
    eprintln!("bench: latency");
    let (p50, p99, probes) = latency(10_000, 20).await;

    let scenario = format!(
        "{n} activity events over {PRODUCTS} products and {BRANDS} brands → product and brand windows of 1m and 1h (real binary)"
    );
    let mut notes = format!(
        "{:.0} µs CPU per event; RSS {:.0} MiB, peak {:.0} MiB; {:.0} MiB on disk; latency ingest ack → readable on the API at 10k events/s over {probes} probes",
        ours.cpu_us, ours.rss, ours.peak, ours.disk_mib
    );
    let mut rows: BTreeMap<&str, f64> = BTreeMap::new();
    rows.insert("bare consumer", baseline);
    match peer {
        Some((rate, rss)) => {
            rows.insert("Quix Streams (1m product windows)", rate);
            notes.push_str(&format!("; Quix Streams RSS {rss:.0} MiB"));
        }
        None => notes.push_str("; Quix Streams not installable here (python3 -m venv, pip)"),
    }
    for (vs, baseline) in rows {
        println!(
            "{}",
            json!({"bench": "aggregation", "scenario": format!("{scenario}, vs {vs}"),
                   "messages": n, "record_bytes": sample,
                   "ours_per_s": ours.rate.round(), "baseline_per_s": baseline.round(),
                   "ratio": (ours.rate / baseline * 100.0).round() / 100.0,
                   "p50_ms": p50, "p99_ms": p99,
                   "notes": notes})
        );
    }
}
