//! The admin endpoints over real HTTP: health, readiness before and after assignment,
//! Prometheus metrics and status.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_assignment_and_metrics_and_status_report_the_work() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-admin", 3).await.unwrap();
    let group = unique_group("rt-admin-group");
    let http = reqwest::Client::new();
    let (running, shutdown) = start(config(broker, &group), &[&topic], Recorder::default()).await;
    let base = format!("http://{}", running.admin_addr);

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // Right after start the group has not been joined: not ready, and the body says why.
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], false);
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("no partitions assigned") || reasons.contains("broker unreachable"),
        "{body}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let envelopes: Vec<_> = (0..30).map(|i| stock(&format!("p-{i}"), i)).collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    // /status: every assigned partition with position, high watermark and lag; poll until
    // the consumer caught up (lag 0 everywhere, positions summing to 30).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status: Value = http
            .get(format!("{base}/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let partitions = status["partitions"].as_array().unwrap();
        let caught_up = partitions.len() == 3
            && partitions.iter().all(|p| p["lag"] == 0)
            && partitions
                .iter()
                .map(|p| p["position"].as_i64().unwrap_or(0))
                .sum::<i64>()
                == 30;
        if caught_up {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never caught up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["service"], "runtime-test");
    assert_eq!(status["group"], group.as_str());
    for p in status["partitions"].as_array().unwrap() {
        assert_eq!(p["topic"], topic.as_str());
        assert_eq!(p["position"], p["high_watermark"], "{p}");
    }

    // Interval commits are asynchronous; the commit histogram times the synchronous ones
    // (revocation, shutdown).
    let names = [
        "tributary_messages_in",
        "tributary_processing_seconds",
        "tributary_rebalances",
        "tributary_consumer_lag",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        let missing: Vec<_> = names.iter().filter(|n| !text.contains(*n)).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics lacks {missing:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains(&format!("topic=\"{topic}\"")),
        "per-topic labels"
    );

    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_paths_and_methods_get_a_json_answer() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-admin-404", 1).await.unwrap();
    let group = unique_group("rt-admin-404-group");
    let http = reqwest::Client::new();
    let (running, shutdown) = start(config(broker, &group), &[&topic], Recorder::default()).await;
    let base = format!("http://{}", running.admin_addr);

    let res = http.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "not_found");

    let res = http.post(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    let allow = res.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
    assert!(body["message"].as_str().unwrap().contains("POST"), "{body}");
    shutdown.trigger();
    running.wait().await.unwrap();
}
