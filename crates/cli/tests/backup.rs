//! `trib backup` and `trib restore` against the dev broker: a backup restored into empty
//! topics and backed up again gives byte-identical partition files (keys, values that are
//! not UTF-8, tombstones, headers and timestamps all survive); damaged files, non-empty
//! targets and missing partitions are refused before anything is written.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{ok, trib};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tributary_testkit::{TestBroker, unique_name};

fn refused(output: &Output, says: &str) {
    assert!(!output.status.success(), "should have failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(says),
        "stderr does not say {says:?}: {stderr}"
    );
}

fn high_watermarks(broker: &TestBroker, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = broker.client_config().create().unwrap();
    (0..partitions)
        .map(|p| {
            client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

fn file(dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    std::fs::read(dir.join(topic).join(format!("{partition}.ndjson.zst"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_backup_gives_identical_files() {
    let broker = TestBroker::shared();
    let source = broker.create_topic("backup-src", 3).await.unwrap();
    let producer: FutureProducer = broker.client_config().create().unwrap();
    for i in 0..60i64 {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "v",
                value: Some("1"),
            })
            .insert(Header {
                key: "bin",
                value: Some(&[0xff, 0x00, i as u8][..]),
            });
        let key = format!("k{i}");
        let value: Vec<u8> = if i % 7 == 0 {
            vec![0xc3, 0x28, i as u8]
        } else {
            format!("value {i}").into_bytes()
        };
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&source)
            .partition((i % 3) as i32)
            .key(key.as_str())
            .headers(headers)
            .timestamp(1_700_000_000_000 + i);
        if i % 10 != 5 {
            record = record.payload(value.as_slice());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let root = std::env::temp_dir().join(unique_name("backup"));
    let first = root.join("first");
    let out = ok(&trib(
        broker,
        &[
            "backup",
            &source,
            "--out",
            first.to_str().unwrap(),
            "--json",
        ],
    ));
    let summary: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(summary["records"], 60);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(first.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["topics"][&source]["1"]["records"], 20);
    assert_eq!(manifest["topics"][&source]["1"]["high"], 20);

    // What a line holds: partition 0 has i = 0, 3, 6, …; i = 0 has a value that is not
    // UTF-8, i = 15 none (a tombstone).
    let lines: Vec<Value> =
        std::str::from_utf8(&zstd::decode_all(&file(&first, &source, 0)[..]).unwrap())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[0]["key"], "k0");
    assert_eq!(lines[0]["timestamp"], 1_700_000_000_000i64);
    assert_eq!(lines[0]["timestamp_type"], "create");
    assert_eq!(lines[0]["value"]["base64"], "wygA");
    assert_eq!(lines[0]["headers"][0], serde_json::json!(["v", "1"]));
    assert_eq!(
        lines[0]["headers"][1],
        serde_json::json!(["bin", {"base64": "/wAA"}])
    );
    assert_eq!(lines[1]["value"], "value 3");
    assert!(
        lines[5]["value"].is_null(),
        "i = 15 is a tombstone: {}",
        lines[5]
    );

    // Into an empty topic, then back up again: the same bytes.
    let target = broker.create_topic("backup-dst", 3).await.unwrap();
    let rename = format!("{source}={target}");
    ok(&trib(
        broker,
        &["restore", first.to_str().unwrap(), "--to-topic", &rename],
    ));
    assert_eq!(high_watermarks(broker, &target, 3), vec![20, 20, 20]);
    let second = root.join("second");
    ok(&trib(
        broker,
        &["backup", &target, "--out", second.to_str().unwrap()],
    ));
    for p in 0..3 {
        assert_eq!(
            file(&first, &source, p),
            file(&second, &target, p),
            "partition {p}"
        );
    }

    // Restoring twice would duplicate: refused, nothing written.
    refused(
        &trib(
            broker,
            &["restore", first.to_str().unwrap(), "--to-topic", &rename],
        ),
        "already holds records",
    );
    assert_eq!(high_watermarks(broker, &target, 3), vec![20, 20, 20]);

    // Too few partitions.
    let narrow = broker.create_topic("backup-narrow", 2).await.unwrap();
    refused(
        &trib(
            broker,
            &[
                "restore",
                first.to_str().unwrap(),
                "--to-topic",
                &format!("{source}={narrow}"),
            ],
        ),
        "has no partition 2",
    );
    assert_eq!(
        high_watermarks(broker, &narrow, 2),
        vec![0, 0],
        "nothing written"
    );

    // A damaged file: named, and nothing restored anywhere.
    let fresh = broker.create_topic("backup-fresh", 3).await.unwrap();
    let damaged = first.join(&source).join("2.ndjson.zst");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    refused(
        &trib(
            broker,
            &[
                "restore",
                first.to_str().unwrap(),
                "--to-topic",
                &format!("{source}={fresh}"),
            ],
        ),
        "2.ndjson.zst is damaged",
    );
    assert_eq!(high_watermarks(broker, &fresh, 3), vec![0, 0, 0]);

    // Other mistakes.
    refused(
        &trib(
            broker,
            &["backup", &source, "--out", first.to_str().unwrap()],
        ),
        "is not empty",
    );
    refused(
        &trib(
            broker,
            &[
                "backup",
                "no-such-topic",
                "--out",
                root.join("x").to_str().unwrap(),
            ],
        ),
        "no topic named",
    );
    refused(
        &trib(broker, &["restore", root.to_str().unwrap()]),
        "manifest.json",
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_partitions_and_two_topics_into_one_are_handled() {
    let broker = TestBroker::shared();
    // Records in partition 0 only; partition 1 stays empty.
    let a = broker.create_topic("backup-a", 2).await.unwrap();
    let b = broker.create_topic("backup-b", 2).await.unwrap();
    let producer: FutureProducer = broker.client_config().create().unwrap();
    for topic in [&a, &b] {
        for i in 0..3 {
            let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
                .partition(0)
                .key("k")
                .payload(if i == 1 { "x" } else { "y" });
            producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap();
        }
    }
    let root = std::env::temp_dir().join(unique_name("backup2"));
    let dir = root.join("both");
    ok(&trib(
        broker,
        &["backup", &a, &b, "--out", dir.to_str().unwrap()],
    ));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["topics"][&a]["1"]["records"], 0);
    assert_eq!(manifest["topics"][&b]["0"]["records"], 3);
    // a → b while the backup also holds b: both would land in b.
    refused(
        &trib(
            broker,
            &[
                "restore",
                dir.to_str().unwrap(),
                "--to-topic",
                &format!("{a}={b}"),
            ],
        ),
        "would both be restored into",
    );
    assert_eq!(
        high_watermarks(broker, &b, 2),
        vec![3, 0],
        "nothing written"
    );
    let a2 = broker.create_topic("backup-a2", 2).await.unwrap();
    let b2 = broker.create_topic("backup-b2", 2).await.unwrap();
    ok(&trib(
        broker,
        &[
            "restore",
            dir.to_str().unwrap(),
            "--to-topic",
            &format!("{a}={a2}"),
            "--to-topic",
            &format!("{b}={b2}"),
        ],
    ));
    assert_eq!(high_watermarks(broker, &a2, 2), vec![3, 0]);
    assert_eq!(high_watermarks(broker, &b2, 2), vec![3, 0]);
    let _ = std::fs::remove_dir_all(&root);
}
