//! The broker stops mid-test: requests get 503 with Retry-After and readiness says so;
//! once the broker is back, requests are accepted again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_broker_means_503_and_not_ready_until_it_returns() {
    let mut broker = TestBroker::start_durable().unwrap();
    let mut cfg = config(&broker);
    cfg.publish_timeout_ms = 1_500;
    let api = start(&broker, cfg).await;
    let post = || {
        api.http
            .post(format!("{}/v1/stock", api.base))
            .json(&json!({"product_id": "p-1", "quantity": 3}))
            .send()
    };
    let ready = || async {
        api.http
            .get(format!("{}/readyz", api.admin))
            .send()
            .await
            .unwrap()
            .status()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready().await != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post().await.unwrap().status(), 202);

    broker.stop().unwrap();
    let started = Instant::now();
    let res = post().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a bounded wait"
    );
    assert!(res.headers().get("retry-after").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready().await != 503 {
        assert!(
            Instant::now() < deadline,
            "readiness never reported the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reasons: Value = api
        .http
        .get(format!("{}/readyz", api.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        reasons["reasons"]
            .to_string()
            .contains("broker unreachable"),
        "{reasons}"
    );

    // A keyed request that failed in the outage: its retry after the outage derives the
    // same ids as the failed attempt (which may have been published after all), so its ids
    // carry the first attempt's time.
    let keyed = || {
        api.http
            .post(format!("{}/v1/stock", api.base))
            .header("idempotency-key", "outage-retry")
            .json(&json!({"product_id": "p-2", "quantity": 4}))
            .send()
    };
    let first_attempt = chrono::Utc::now().timestamp_millis();
    assert_eq!(keyed().await.unwrap().status(), 503);
    let failed_by = chrono::Utc::now().timestamp_millis();

    broker.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = post().await.unwrap().status();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "only 503 while recovering");
        assert!(Instant::now() < deadline, "never accepted again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready().await != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retried = keyed().await.unwrap();
    assert_eq!(retried.status(), 202);
    let body: Value = retried.json().await.unwrap();
    let id = ulid::Ulid::from_string(body["ids"][0].as_str().unwrap()).unwrap();
    let at = id.timestamp_ms() as i64;
    assert!(
        (first_attempt..=failed_by).contains(&at),
        "the retry's id keeps the failed attempt's time: {at} not in {first_attempt}..={failed_by}"
    );
    api.stop().await;
}
