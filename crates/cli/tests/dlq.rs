//! `trib dlq` against a real consumer: a record the service could not process is
//! dead-lettered; `inspect` shows it with where it came from and why; once the cause is
//! fixed, `redrive` sends it back and the service processes it.

mod common;

use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::trib;
use serde_json::Value;
use tributary_events::{Envelope, Event, Stock};
use tributary_runtime::{
    Incoming, Output as Emit, ProcessError, Processor, RuntimeConfig, ServiceSpec, Shutdown,
};
use tributary_testkit::{DEV_CLIENT_SETTING, RawRecord, TestBroker, unique_name};

/// Fails the record keyed `fixme` permanently while `broken`; records every key it processed.
#[derive(Debug, Clone, Default)]
struct Flaky {
    broken: Arc<AtomicBool>,
    processed: Arc<Mutex<Vec<String>>>,
}

impl Processor for Flaky {
    async fn process(&self, message: Incoming) -> Result<Vec<Emit>, ProcessError> {
        let key = message.key_str().unwrap_or_default().to_owned();
        if key == "fixme" && self.broken.load(Ordering::SeqCst) {
            return Err(ProcessError::Permanent("the price service said no".into()));
        }
        self.processed.lock().unwrap().push(key);
        Ok(vec![])
    }
}

fn stock(product: &str) -> Envelope {
    Envelope::new(
        "test",
        Event::StockChanged(Stock {
            product_id: product.to_owned(),
            quantity: 1,
            warehouse: None,
        }),
    )
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_inspected_and_redriven_into_processing() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("dlq-cli", 1).await.unwrap();
    let group = unique_name("dlq-cli-group");
    let mut config = RuntimeConfig::defaults();
    config.brokers = broker.bootstrap();
    config.group_id = Some(group.clone());
    config.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    config.statsd_addr = "127.0.0.1:9".into();
    config.session_timeout_ms = 6000;
    config.commit_interval_ms = 200;
    config.backoff_ms = 10;
    config.max_backoff_ms = 50;
    config.kafka_config = vec![DEV_CLIENT_SETTING.into()];
    let processor = Flaky::default();
    processor.broken.store(true, Ordering::SeqCst);
    let shutdown = Shutdown::new();
    let running = tributary_runtime::start(
        ServiceSpec::new("dlq-cli-test", &[&topic], 0),
        config,
        processor.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();

    let records = vec![
        RawRecord::from_envelope(&stock("ok-1")),
        RawRecord::from_envelope(&stock("fixme")),
        RawRecord::new("garbage", "{not json"),
        RawRecord::from_envelope(&stock("ok-2")),
    ];
    broker.produce_raw(&topic, &records).await.unwrap();
    eventually("ok-2 processed", || {
        processor
            .processed
            .lock()
            .unwrap()
            .contains(&"ok-2".to_owned())
    })
    .await;
    let dlq_topic = format!("{group}.dlq");
    broker
        .consume_count(&[&dlq_topic], 2, Duration::from_secs(30))
        .await
        .unwrap();

    // Inspect: both letters, where they came from and why.
    let letters = json_lines(&trib(broker, &["dlq", "inspect", &group, "--json"]));
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0]["original"]["topic"], topic.as_str());
    assert_eq!(letters[0]["original"]["offset"], 1);
    assert_eq!(letters[0]["error"]["kind"], "permanent");
    assert!(
        letters[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("price service")
    );
    assert_eq!(letters[0]["key"], "fixme");
    assert_eq!(letters[0]["value"]["type"], "catalog.stock.changed");
    assert_eq!(
        letters[0]["headers"]["v"], "1",
        "the original headers are kept"
    );
    assert_eq!(letters[1]["error"]["kind"], "not_json");
    assert_eq!(letters[1]["value"], "{not json");
    let text = String::from_utf8(trib(broker, &["dlq", "inspect", &group]).stdout).unwrap();
    assert!(
        text.contains(&format!("from {topic}/0@1  permanent")),
        "{text}"
    );

    // Selections.
    let permanent = json_lines(&trib(
        broker,
        &["dlq", "inspect", &group, "--kind", "permanent", "--json"],
    ));
    assert_eq!(permanent.len(), 1);
    let typed = json_lines(&trib(
        broker,
        &[
            "dlq",
            "inspect",
            &group,
            "--type",
            "catalog.stock.changed",
            "--json",
        ],
    ));
    assert_eq!(typed.len(), 1);
    let later = json_lines(&trib(
        broker,
        &[
            "dlq",
            "inspect",
            &group,
            "--since",
            "2999-01-01T00:00:00Z",
            "--json",
        ],
    ));
    assert!(later.is_empty());

    // Fixed: redrive the permanent failure; the service processes it.
    processor.broken.store(false, Ordering::SeqCst);
    let dry = json_lines(&trib(
        broker,
        &[
            "dlq",
            "redrive",
            &group,
            "--kind",
            "permanent",
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0]["sent"], false);
    let sent = json_lines(&trib(
        broker,
        &["dlq", "redrive", &group, "--kind", "permanent", "--json"],
    ));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["to"], topic.as_str());
    eventually("the redriven record is processed", || {
        processor
            .processed
            .lock()
            .unwrap()
            .contains(&"fixme".to_owned())
    })
    .await;
    // What was redriven is the original record: same key, bytes and headers.
    let redriven = broker
        .consume_until(&[&topic], Duration::from_secs(30), |rs| rs.len() >= 5)
        .await
        .unwrap();
    assert_eq!(redriven[4].key, records[1].key);
    assert_eq!(redriven[4].value, records[1].value);
    let names: Vec<&str> = redriven[4]
        .headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    let original: Vec<&str> = records[1].headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, original, "the original headers, and no dlq.* header");

    // A group that never dead-lettered anything.
    let none = trib(broker, &["dlq", "inspect", &unique_name("clean")]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no topic named"));
    shutdown.trigger();
    running.wait().await.unwrap();
}
