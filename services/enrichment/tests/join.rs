//! The join against a real broker: products, prices and stock in, enriched products out,
//! each change once, duplicates silent, deletes as tombstones, poison to the DLQ.

mod common;

use std::time::Duration;

use common::*;
use tributary_runtime::Shutdown;
use tributary_testkit::{RawRecord, TestBroker};

const WAIT: Duration = Duration::from_secs(60);

/// Records of `key` among `records`.
fn of<'a>(
    records: &'a [tributary_testkit::Record],
    key: &str,
) -> Vec<&'a tributary_testkit::Record> {
    records
        .iter()
        .filter(|r| r.key_str() == Some(key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_then_price_then_product_gives_exactly_one_complete_product() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "enr-order", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = enrichment::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    // Each fact is processed before the next is sent: the order is the test's subject.
    publish(broker, &topics, &[stock("p-1", 7)]).await;
    wait_caught_up(running.admin_addr, 1, WAIT).await;
    publish(broker, &topics, &[price("p-1", 1999)]).await;
    wait_caught_up(running.admin_addr, 2, WAIT).await;
    publish(broker, &topics, &[product("p-1", "Boot")]).await;
    wait_caught_up(running.admin_addr, 3, WAIT).await;
    // A sentinel after it bounds the read (one partition: everything for p-1 came first).
    publish(broker, &topics, &[product("sentinel", "S")]).await;
    let records = read_output(broker, &topics.output, WAIT, |rs| {
        !of(rs, "sentinel").is_empty()
    })
    .await;
    let mine = of(&records, "p-1");
    assert_eq!(mine.len(), 1, "exactly one enriched value for p-1");
    let envelope = mine[0].envelope().unwrap();
    let data = envelope.to_json()["data"].clone();
    assert_eq!(data["complete"], true);
    assert_eq!(data["stock"], 7);
    assert_eq!(data["price"]["retail_minor"], 1999);
    assert_eq!(data["name"], "Boot");
    assert_eq!(envelope.event_type().name(), "catalog.product.enriched");
    assert_eq!(mine[0].header("type"), Some("catalog.product.enriched"));
    shutdown.trigger();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_emits_a_new_value_a_duplicate_nothing_and_a_delete_a_tombstone() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "enr-changes", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = enrichment::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let steps = [
        product("p-2", "Bag"),
        price("p-2", 500),
        stock("p-2", 1),
        price("p-2", 650),
        price("p-2", 650),     // duplicate: no output
        product("p-2", "Bag"), // duplicate: no output
        deleted("p-2"),
    ];
    for (i, step) in steps.iter().enumerate() {
        publish(broker, &topics, std::slice::from_ref(step)).await;
        wait_caught_up(running.admin_addr, i as i64 + 1, WAIT).await;
    }
    publish(broker, &topics, &[product("sentinel", "S")]).await;
    let records = read_output(broker, &topics.output, WAIT, |rs| {
        !of(rs, "sentinel").is_empty()
    })
    .await;
    let mine = of(&records, "p-2");
    let summary: Vec<String> = mine
        .iter()
        .map(|r| match &r.value {
            None => "tombstone".to_owned(),
            Some(_) => {
                let data = r.envelope().unwrap().to_json()["data"].clone();
                format!(
                    "{}:{}:{}",
                    data["price"]["retail_minor"], data["stock"], data["complete"]
                )
            }
        })
        .collect();
    assert_eq!(
        summary,
        [
            "null:null:false",
            "500:null:false",
            "500:1:true",
            "650:1:true",
            "tombstone"
        ]
    );
    // The delete removed the product's state.
    shutdown.trigger();
    running.wait().await.unwrap();
    let states = stored_states(dir.path(), &topics.group);
    assert!(!states.contains_key("p-2"), "{states:?}");
    assert!(states.contains_key("sentinel"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_goes_to_the_dead_letter_topic_and_processing_goes_on() {
    let broker = TestBroker::shared();
    let topics = Topics::create(broker, "enr-poison", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = enrichment::start(config(broker, &topics, dir.path()), shutdown.clone())
        .await
        .unwrap();
    let valid = product("p-3", "Hat");
    let mut future = valid.to_json();
    future["v"] = 99.into();
    let mut wrong_type = valid.to_json();
    wrong_type["data"]["name"] = 12.into();
    let activity = serde_json::json!({
        "id": "01J00000000000000000000000", "type": "activity.product_viewed", "v": 1,
        "time": "2026-01-01T00:00:00Z", "source": "test", "key": "p-3",
        "data": {"kind": "product_viewed", "product_id": "p-3", "retailer_id": "r-1"}
    });
    let poison = [
        RawRecord::new("p-3", "{not json"),
        RawRecord::new("p-3", future.to_string()),
        RawRecord::new("p-3", wrong_type.to_string()),
        RawRecord::new("p-3", activity.to_string()),
        RawRecord::new("p-3", vec![b'x'; 900_000]),
    ];
    broker.produce_raw(&topics.products, &poison).await.unwrap();
    publish(broker, &topics, &[valid, price("p-3", 10), stock("p-3", 2)]).await;
    let letters = read_output(broker, &topics.dlq(), WAIT, |rs| rs.len() >= poison.len()).await;
    let kinds: Vec<&str> = letters
        .iter()
        .filter_map(|r| r.header("dlq.error.kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "not_json",
            "unsupported_version",
            "invalid_payload",
            "permanent",
            "not_json"
        ],
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .all(|r| r.header("dlq.original.topic") == Some(topics.products.as_str()))
    );
    let records = read_output(broker, &topics.output, WAIT, |rs| {
        of(rs, "p-3").iter().any(|r| {
            r.envelope()
                .is_ok_and(|e| e.to_json()["data"]["complete"] == true)
        })
    })
    .await;
    assert!(!records.is_empty());
    shutdown.trigger();
    running.wait().await.unwrap();
}
