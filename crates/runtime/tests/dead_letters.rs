//! Poison messages go to `<group>.dlq` with every header and the original bytes, and the
//! messages after them are processed.

mod common;

use std::time::Duration;

use common::*;
use tributary_runtime::dlq;
use tributary_testkit::{RawRecord, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_poison_is_dead_lettered_and_processing_goes_on() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-dlq", 1).await.unwrap();
    let group = unique_group("rt-dlq-group");
    let recorder = Recorder::default();
    let (running, shutdown) = start(config(broker, &group), &[&topic], recorder.clone()).await;

    let mut unknown_type = stock("p", 1).to_json();
    unknown_type["type"] = "catalog.product.teleported".into();
    let mut unsupported = stock("p", 1).to_json();
    unsupported["v"] = 7.into();
    let mut invalid = stock("p", 1).to_json();
    invalid["data"]["quantity"] = (-3).into();
    let mut bad_json = RawRecord::new("k-json", &b"{\"id\": \"01J"[..]);
    bad_json
        .headers
        .push(("origin".into(), "partner-feed".into()));
    let records = vec![
        RawRecord::from_envelope(&stock("ok-1", 1)),
        bad_json,
        RawRecord::new("k-type", serde_json::to_vec(&unknown_type).unwrap()),
        RawRecord::new("k-version", serde_json::to_vec(&unsupported).unwrap()),
        RawRecord::new("k-payload", serde_json::to_vec(&invalid).unwrap()),
        RawRecord::new("k-envelope", &b"[1, 2, 3]"[..]),
        RawRecord::from_envelope(&stock("permanent", 1)),
        RawRecord::from_envelope(&stock("panic", 1)),
        RawRecord::from_envelope(&stock("ok-2", 2)),
    ];
    broker.produce_raw(&topic, &records).await.unwrap();

    let dlq_topic = format!("{group}.dlq");
    let letters = broker
        .consume_count(&[&dlq_topic], 7, Duration::from_secs(30))
        .await
        .unwrap();
    let kinds: Vec<&str> = letters
        .iter()
        .map(|r| r.header(dlq::ERROR_KIND).unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "not_json",
            "unknown_type",
            "unsupported_version",
            "invalid_payload",
            "not_envelope",
            "permanent",
            "permanent"
        ]
    );
    for (letter, original_offset) in letters.iter().zip(1..) {
        let original = &records[original_offset as usize];
        assert_eq!(letter.key, original.key, "original key kept");
        assert_eq!(letter.value, original.value, "original bytes kept");
        assert_eq!(letter.header(dlq::ORIGINAL_TOPIC), Some(topic.as_str()));
        assert_eq!(letter.header(dlq::ORIGINAL_PARTITION), Some("0"));
        assert_eq!(
            letter.header(dlq::ORIGINAL_OFFSET),
            Some(original_offset.to_string().as_str())
        );
        assert_eq!(letter.header(dlq::SERVICE), Some("runtime-test"));
        assert_eq!(letter.header(dlq::ATTEMPTS), Some("1"));
        assert!(!letter.header(dlq::ERROR_MESSAGE).unwrap().is_empty());
        let failed_at = letter.header(dlq::FAILED_AT).unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(failed_at).is_ok(),
            "{failed_at}"
        );
    }
    assert_eq!(
        letters[0].header("origin"),
        Some("partner-feed"),
        "original headers kept"
    );
    assert!(
        letters[3]
            .header(dlq::ERROR_MESSAGE)
            .unwrap()
            .contains("/data/quantity")
    );
    assert!(
        letters[6]
            .header(dlq::ERROR_MESSAGE)
            .unwrap()
            .contains("handler bug")
    );

    eventually(
        "both good messages processed",
        Duration::from_secs(20),
        || recorder.processed() == vec![(0, 0), (0, 8)],
    )
    .await;
    // Everything, poison included, is finished and committed.
    eventually("all nine committed", Duration::from_secs(10), || {
        committed(broker, &group, &topic, 1).get(&0) == Some(&9)
    })
    .await;
    let status = running.health.status();
    assert_eq!(status["dlq"]["count"], 7);
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_errors_are_retried_with_backoff_then_dead_lettered() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-retry", 1).await.unwrap();
    let group = unique_group("rt-retry-group");
    let recorder = Recorder::default();
    let mut cfg = config(broker, &group);
    cfg.max_attempts = 4;
    cfg.backoff_ms = 40;
    cfg.max_backoff_ms = 1000;
    let (running, shutdown) = start(cfg, &[&topic], recorder.clone()).await;
    let started = std::time::Instant::now();
    broker
        .produce_envelopes(
            &topic,
            &[stock("flaky", 1), stock("transient", 2), stock("after", 3)],
        )
        .await
        .unwrap();

    let dlq_topic = format!("{group}.dlq");
    let letters = broker
        .consume_count(&[&dlq_topic], 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(letters[0].key_str(), Some("transient"));
    assert_eq!(
        letters[0].header(dlq::ERROR_KIND),
        Some("retries_exhausted")
    );
    assert_eq!(letters[0].header(dlq::ATTEMPTS), Some("4"));
    // Backoff doubles from 40 ms with jitter in [d/2, d]: at least 20+40+80 ms in all.
    assert!(started.elapsed() >= Duration::from_millis(140));

    eventually("flaky and after processed", Duration::from_secs(20), || {
        recorder.processed() == vec![(0, 0), (0, 2)]
    })
    .await;
    let attempts = recorder.attempts.lock().unwrap().clone();
    assert_eq!(
        attempts[&(0, 0)],
        2,
        "flaky succeeded on its second attempt"
    );
    assert_eq!(attempts[&(0, 1)], 4, "transient tried max_attempts times");
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_message_waits_past_max_attempts_and_is_never_dead_lettered() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-blocked", 1).await.unwrap();
    let group = unique_group("rt-blocked-group");
    let recorder = Recorder::default();
    let mut cfg = config(broker, &group);
    cfg.max_attempts = 3;
    cfg.backoff_ms = 40;
    cfg.max_backoff_ms = 150;
    let (running, shutdown) = start(cfg, &[&topic], recorder.clone()).await;
    broker
        .produce_envelopes(&topic, &[stock("blocked", 1), stock("after", 2)])
        .await
        .unwrap();

    // While it is blocked, its partition shows as stuck and says why.
    eventually(
        "the partition shows as stuck",
        Duration::from_secs(20),
        || {
            let status = running.health.status();
            status["partitions"][0]["state"] == "stuck"
                && status["partitions"][0]["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("local state unreadable"))
        },
    )
    .await;
    assert!(recorder.processed().is_empty(), "nothing overtakes it");

    // It goes through once unblocked, far past max_attempts, and the next one after it.
    eventually("both processed in order", Duration::from_secs(20), || {
        recorder.processed() == vec![(0, 0), (0, 1)]
    })
    .await;
    assert_eq!(
        recorder.attempts.lock().unwrap()[&(0, 0)],
        BLOCKED_ATTEMPTS + 1
    );
    eventually("both committed", Duration::from_secs(10), || {
        committed(broker, &group, &topic, 1).get(&0) == Some(&2)
    })
    .await;
    let status = running.health.status();
    assert_eq!(status["dlq"]["count"], 0, "nothing dead-lettered");
    assert_eq!(
        status["partitions"][0]["state"], "running",
        "no longer stuck"
    );
    assert!(status["partitions"][0]["problem"].is_null());
    shutdown.trigger();
    running.wait().await.unwrap();
}
