//! Shared helpers of the metrics-emitter tests: configuration, `/lag` over HTTP, polling.
#![allow(dead_code, unreachable_pub)]

pub mod events;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metrics_emitter::EmitterConfig;
use serde_json::Value;
use tributary_runtime::RuntimeConfig;
use tributary_testkit::TestBroker;

/// Test-sized settings: fast commits, a short lag interval and window.
pub fn config(broker: &TestBroker, group: &str) -> EmitterConfig {
    let mut runtime = RuntimeConfig::defaults();
    runtime.brokers = broker.bootstrap();
    runtime.group_id = Some(group.to_owned());
    runtime.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    runtime.statsd_addr = "127.0.0.1:9".into();
    runtime.session_timeout_ms = 6000;
    runtime.commit_interval_ms = 200;
    runtime.shutdown_timeout_ms = 10_000;
    runtime.kafka_config = vec![tributary_testkit::DEV_CLIENT_SETTING.into()];
    let mut config = EmitterConfig::with_runtime(runtime);
    config.lag_interval_ms = 200;
    config.lag_window = 3;
    config
}

/// `GET /lag`.
pub async fn lag(admin: SocketAddr) -> Value {
    let response = reqwest::get(format!("http://{admin}/lag")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The `/lag` entry of `group`, if listed.
pub fn group<'a>(report: &'a Value, group: &str) -> Option<&'a Value> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group)
}

/// Polls `/lag` until `check` accepts `group`'s entry; panics with the last report after
/// `deadline`.
pub async fn wait_for_group(
    admin: SocketAddr,
    name: &str,
    deadline: Duration,
    mut check: impl FnMut(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let report = lag(admin).await;
        if let Some(g) = group(&report, name) {
            if check(g) {
                return g.clone();
            }
        }
        assert!(
            started.elapsed() < deadline,
            "timed out waiting on group {name}; last /lag:\n{report:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A StatsD agent stand-in: a UDP socket drained by its own thread into a list of lines.
pub struct Agent {
    pub addr: SocketAddr,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Times the receiver found the socket empty (its read timed out).
    idle: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Counter totals by (name, tags without `service`, sorted).
pub type Totals = std::collections::BTreeMap<(String, Vec<String>), f64>;

impl Agent {
    pub fn start() -> Agent {
        use std::sync::atomic::Ordering;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let idle = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (l, i) = (lines.clone(), idle.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        l.lock().unwrap().extend(text.lines().map(str::to_owned));
                    }
                    Err(_) => {
                        i.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Agent { addr, lines, idle }
    }

    /// Returns once the receiver has found the socket empty after this call began, so
    /// every packet sent before the call is in `lines`.
    pub fn quiesce(&self) {
        use std::sync::atomic::Ordering;
        let seen = self.idle.load(Ordering::SeqCst);
        let started = Instant::now();
        while self.idle.load(Ordering::SeqCst) < seen + 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "agent stuck");
            std::thread::yield_now();
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Sums of every counter (`|c`) named `prefix.*`, by name and tags.
    pub fn totals(&self, prefix: &str) -> Totals {
        let mut totals = Totals::new();
        for line in self.lines() {
            if let Some((name, kind, value, tags)) = parse(&line) {
                if kind == "c" && name.starts_with(prefix) {
                    *totals.entry((name, tags)).or_default() += value;
                }
            }
        }
        totals
    }

    /// Every sample (`|d`, `|h`, `|ms`) of `name`, with its tags.
    pub fn samples(&self, name: &str) -> Vec<(Vec<String>, f64)> {
        self.lines()
            .iter()
            .filter_map(|l| parse(l))
            .filter(|(n, kind, _, _)| n == name && matches!(kind.as_str(), "d" | "h" | "ms"))
            .map(|(_, _, value, tags)| (tags, value))
            .collect()
    }
}

/// `name:value|type|#tag:v,...` → (name, type, value, tags sorted, without `service`).
fn parse(line: &str) -> Option<(String, String, f64, Vec<String>)> {
    let (name, rest) = line.split_once(':')?;
    let mut parts = rest.split('|');
    let value: f64 = parts.next()?.parse().ok()?;
    let kind = parts.next()?.to_owned();
    let mut tags: Vec<String> = parts
        .find_map(|p| p.strip_prefix('#'))
        .map(|t| {
            t.split(',')
                .filter(|t| !t.starts_with("service:"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    Some((name.to_owned(), kind, value, tags))
}

/// The expected totals from (name, tags, value) triples.
pub fn totals(expected: &[(&str, &[&str], f64)]) -> Totals {
    let mut totals = Totals::new();
    for (name, tags, value) in expected {
        let mut tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        tags.sort();
        *totals.entry(((*name).to_owned(), tags)).or_default() += value;
    }
    totals
}
