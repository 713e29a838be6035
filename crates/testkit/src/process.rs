//! What a benchmark measures besides the service: a child process's memory, CPU time and
//! disk use from `/proc`, and the bare-consumer baseline.

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{TestBroker, unique_name};

/// Records per second a bare rdkafka `BaseConsumer` reads the first `n` records of `topics`
/// at (no decoding, no commits), from its first record: the baseline of the service
/// benchmarks. Fetches wait at most [`crate::FETCH_WAIT_MAX_MS`], as every client's do.
pub fn bare_consumer_rate(broker: &TestBroker, topics: &[&str], n: u64) -> f64 {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", unique_name("bench-bare"))
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", crate::FETCH_WAIT_MAX_MS)
        .create()
        .expect("a bare consumer");
    consumer
        .subscribe(topics)
        .expect("subscribing the bare consumer");
    let mut seen = 0;
    let mut first = None;
    while seen < n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    first.map_or(0.0, |f| n as f64 / f.elapsed().as_secs_f64())
}

/// Peak (`VmHWM`) and current (`VmRSS`) resident memory of a process, in MiB.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU seconds (user + system) a process used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are the 14th and 15th fields of the line, the 12th and 13th after
    // the command name's closing parenthesis (the name may hold spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse().ok())
        .collect();
    ticks.iter().sum::<f64>() / 100.0
}

/// Bytes of every file under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
