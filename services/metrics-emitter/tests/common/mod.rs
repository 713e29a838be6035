//! Shared helpers of the metrics-emitter tests: configuration, `/lag` over HTTP, polling.
#![allow(dead_code, unreachable_pub)]

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
