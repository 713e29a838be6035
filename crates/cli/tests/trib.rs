//! `trib` (the real binary) against the dev broker: tail, groups, lag and replay, in text
//! and JSON, and the errors an operator meets (missing topic, bad arguments, a group that
//! is still running, an unreachable broker).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ok, trib};
use serde_json::Value;
use tributary_cluster::{Cluster, ClusterConfig};
use tributary_events::{Activity, ActivityKind, Envelope, Event};
use tributary_testkit::{RawRecord, TestBroker, unique_name};

fn failed(output: &Output, says: &str) {
    assert!(!output.status.success(), "trib should have failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(says),
        "stderr does not say {says:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn activity(kind: ActivityKind, product: &str) -> Envelope {
    let mut envelope = Envelope::new(
        "test",
        Event::Activity(Activity {
            kind,
            product_id: product.to_owned(),
            retailer_id: "r-1".to_owned(),
            time: None,
            quantity: None,
            unit_price_minor: None,
            currency: None,
            order_id: None,
        }),
    );
    envelope.key = product.to_owned();
    envelope
}

fn cluster(broker: &TestBroker) -> Cluster {
    let properties = HashMap::from([("bootstrap.servers".to_owned(), broker.bootstrap())]);
    Cluster::new(ClusterConfig::from_properties(&properties).unwrap()).unwrap()
}

async fn commit(broker: &TestBroker, group: &str, offsets: &[(&str, i32, i64)]) {
    let cluster = cluster(broker);
    let metadata = cluster.metadata().await.unwrap();
    let coordinators = cluster
        .coordinators(&metadata, &[group.to_owned()])
        .await
        .unwrap();
    let offsets: BTreeMap<(String, i32), i64> = offsets
        .iter()
        .map(|(t, p, o)| (((*t).to_owned(), *p), *o))
        .collect();
    cluster
        .commit_offsets(group, coordinators[group].as_ref().unwrap(), &offsets)
        .await
        .unwrap();
}

async fn committed(broker: &TestBroker, group: &str) -> BTreeMap<(String, i32), i64> {
    let cluster = cluster(broker);
    let metadata = cluster.metadata().await.unwrap();
    let groups = [group.to_owned()];
    let coordinators = cluster.coordinators(&metadata, &groups).await.unwrap();
    cluster.committed_offsets(&groups, &coordinators).await[group]
        .clone()
        .unwrap()
}

/// A one-partition topic: three activity envelopes and one record that is not JSON.
async fn seeded(broker: &TestBroker) -> String {
    let topic = broker.create_topic("tail", 1).await.unwrap();
    let envelopes = [
        activity(ActivityKind::ProductViewed, "p-1"),
        activity(ActivityKind::AddedToCart, "p-2"),
        activity(ActivityKind::ProductViewed, "p-3"),
    ];
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();
    broker
        .produce_raw(&topic, &[RawRecord::new("junk", "not json {")])
        .await
        .unwrap();
    topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_record_decoded_or_flagged_and_filters() {
    let broker = TestBroker::shared();
    let topic = seeded(broker).await;

    let text = ok(&trib(broker, &["tail", &topic]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with(&format!("{topic}/0@0 ")), "{text}");
    assert!(lines[0].contains("activity.product_viewed") && lines[0].contains("key=p-1"));
    assert!(
        lines[3].contains("UNDECODABLE") && lines[3].contains("not json {"),
        "the bad record is shown raw and flagged: {text}"
    );

    let all = json_lines(&ok(&trib(broker, &["tail", &topic, "--json"])));
    assert_eq!(all.len(), 4);
    assert_eq!(all[1]["offset"], 1);
    assert_eq!(all[1]["envelope"]["type"], "activity.added_to_cart");
    assert_eq!(all[1]["envelope"]["data"]["product_id"], "p-2");
    assert!(all[3]["undecodable"].as_str().unwrap().contains("JSON"));
    assert_eq!(all[3]["raw"], "not json {");

    // Filters: by type, key and data field; the undecodable record is never hidden by a
    // filter on what it cannot be read for.
    let viewed = json_lines(&ok(&trib(
        broker,
        &[
            "tail",
            &topic,
            "--json",
            "--type",
            "activity.product_viewed",
        ],
    )));
    let offsets: Vec<i64> = viewed
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 2, 3]);
    let keyed = json_lines(&ok(&trib(
        broker,
        &["tail", &topic, "--json", "--key", "p-3"],
    )));
    assert_eq!(keyed.len(), 1);
    assert_eq!(keyed[0]["offset"], 2);
    let wherever = json_lines(&ok(&trib(
        broker,
        &["tail", &topic, "--json", "--where", "product_id=p-2"],
    )));
    let offsets: Vec<i64> = wherever
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 3]);

    // Starting points.
    let last = json_lines(&ok(&trib(
        broker,
        &["tail", &topic, "--json", "--from", "-2"],
    )));
    let offsets: Vec<i64> = last.iter().map(|r| r["offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, [2, 3]);
    assert!(ok(&trib(broker, &["tail", &topic, "--from", "end"])).is_empty());
    assert!(
        ok(&trib(
            broker,
            &["tail", &topic, "--from", "2999-01-01T00:00:00Z"]
        ))
        .is_empty()
    );
    let since = ok(&trib(
        broker,
        &["tail", &topic, "--from", "2000-01-01T00:00:00Z"],
    ));
    assert_eq!(since.lines().count(), 4);

    // A reader: it never made a group.
    let cluster = cluster(broker);
    let metadata = cluster.metadata().await.unwrap();
    let groups = cluster.list_groups(&metadata).await.unwrap();
    assert!(!groups.iter().any(|g| g.group == "trib-tail"), "{groups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_new_records() {
    let broker = TestBroker::shared();
    let topic = seeded(broker).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_trib"))
        .args(["tail", &topic, "--from", "end", "--follow", "--json"])
        .env("KAFKA_BROKERS", broker.bootstrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .next()
            .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
    });
    // Produce until the follower prints (it may assign after the first record lands).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "--follow printed nothing");
        broker
            .produce_envelopes(&topic, &[activity(ActivityKind::ProductViewed, "p-new")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let first = reader.join().unwrap().expect("a line");
    assert_eq!(first["envelope"]["key"], "p-new");
    assert!(first["offset"].as_i64().unwrap() >= 4);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_lag_report_committed_offsets_lag_and_status() {
    let broker = TestBroker::shared();
    let topic = seeded(broker).await;
    let group = unique_name("trib-group");
    commit(broker, &group, &[(&topic, 0, 1)]).await;

    let listed = json_lines(&ok(&trib(broker, &["groups", "--group", &group, "--json"])));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["group"], group.as_str());
    assert_eq!(listed[0]["lag"], 3);
    assert_eq!(listed[0]["partitions"][0]["committed"], 1);
    assert_eq!(listed[0]["partitions"][0]["high_watermark"], 4);
    let text = ok(&trib(broker, &["groups", "--group", &group]));
    assert!(
        text.contains(&format!("{topic}/0  committed=1  end=4  lag=3")),
        "{text}"
    );

    let lag = json_lines(&ok(&trib(
        broker,
        &[
            "lag",
            "--group",
            &group,
            "--samples",
            "2",
            "--interval-ms",
            "50",
            "--json",
        ],
    )));
    assert_eq!(lag.len(), 1);
    let p = &lag[0]["partitions"][0];
    assert_eq!(p["lag"], 3);
    // Nobody commits: Burrow's STOP once the one commit is older than its (empty) span.
    assert_eq!(p["status"], "STOP", "{lag:?}");
    assert_eq!(
        lag[0]["status"], "ERR",
        "a STOP partition caps its group at ERR"
    );
    let text = ok(&trib(
        broker,
        &[
            "lag",
            "--group",
            &group,
            "--samples",
            "2",
            "--interval-ms",
            "50",
        ],
    ));
    assert!(
        text.starts_with(&format!("{group}  ERR  complete=")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{topic}/0  committed=1  end=4  lag=3  STOP")),
        "{text}"
    );

    failed(
        &trib(broker, &["groups", "--group", "no-such-group"]),
        "no group named no-such-group",
    );
    failed(
        &trib(
            broker,
            &["lag", "--group", "no-such-group", "--samples", "1"],
        ),
        "no group named",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_a_stopped_groups_offsets_and_refuses_a_running_one() {
    let broker = TestBroker::shared();
    let topic = seeded(broker).await;
    let group = unique_name("trib-replay");
    commit(broker, &group, &[(&topic, 0, 3)]).await;
    let key = (topic.clone(), 0);

    // Dry run: says what would happen, changes nothing.
    let dry = json_lines(&ok(&trib(
        broker,
        &[
            "replay",
            "--group",
            &group,
            "--to",
            "earliest",
            "--dry-run",
            "--json",
        ],
    )));
    assert_eq!(dry[0]["current"], 3);
    assert_eq!(dry[0]["target"], 0);
    assert_eq!(dry[0]["lag_after"], 4);
    assert_eq!(dry[1]["committed"], false);
    assert_eq!(committed(broker, &group).await[&key], 3);

    let text = ok(&trib(
        broker,
        &["replay", "--group", &group, "--to", "earliest", "--dry-run"],
    ));
    assert!(
        text.contains(&format!(
            "{topic}/0  current=3  target=0  end=4  lag after=4"
        )) && text.contains("dry run: nothing was committed"),
        "{text}"
    );
    let text = ok(&trib(
        broker,
        &["replay", "--group", &group, "--to", "earliest"],
    ));
    assert!(
        text.contains(&format!("committed 1 offset(s) for group {group}")),
        "{text}"
    );
    assert_eq!(committed(broker, &group).await[&key], 0);
    ok(&trib(broker, &["replay", "--group", &group, "--to", "2"]));
    assert_eq!(committed(broker, &group).await[&key], 2);
    ok(&trib(
        broker,
        &["replay", "--group", &group, "--to", "latest"],
    ));
    assert_eq!(committed(broker, &group).await[&key], 4);
    ok(&trib(
        broker,
        &["replay", "--group", &group, "--to", "2000-01-01T00:00:00Z"],
    ));
    assert_eq!(committed(broker, &group).await[&key], 0);

    // A time between records: the first record at or after it.
    let timed = broker.create_topic("replay-timed", 1).await.unwrap();
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = broker.client_config().create().unwrap();
        for ts in [1_000i64, 2_000, 3_000] {
            let record: FutureRecord<'_, str, str> =
                FutureRecord::to(&timed).key("k").payload("v").timestamp(ts);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap();
        }
    }
    let timed_group = unique_name("trib-timed");
    let timed_key = (timed.clone(), 0);
    ok(&trib(
        broker,
        &[
            "replay",
            "--group",
            &timed_group,
            "--to",
            "1970-01-01T00:00:01.500Z",
            "--topic",
            &timed,
        ],
    ));
    assert_eq!(committed(broker, &timed_group).await[&timed_key], 1);
    ok(&trib(
        broker,
        &[
            "replay",
            "--group",
            &timed_group,
            "--to",
            "2999-01-01T00:00:00Z",
            "--topic",
            &timed,
        ],
    ));
    assert_eq!(
        committed(broker, &timed_group).await[&timed_key],
        3,
        "after every record: the end"
    );

    // A fresh group is positioned on named topics.
    let fresh = unique_name("trib-fresh");
    ok(&trib(
        broker,
        &[
            "replay", "--group", &fresh, "--to", "latest", "--topic", &topic,
        ],
    ));
    assert_eq!(committed(broker, &fresh).await[&key], 4);

    // Errors an operator meets.
    failed(
        &trib(broker, &["replay", "--group", &group, "--to", "99"]),
        "outside the records held",
    );
    failed(
        &trib(broker, &["replay", "--group", &group, "--to", "soon"]),
        "--to soon",
    );
    failed(
        &trib(
            broker,
            &[
                "replay",
                "--group",
                &unique_name("none"),
                "--to",
                "earliest",
            ],
        ),
        "has committed no offsets",
    );
    failed(
        &trib(
            broker,
            &[
                "replay",
                "--group",
                &group,
                "--to",
                "earliest",
                "--topic",
                "no-such-topic",
            ],
        ),
        "no topic named no-such-topic",
    );

    // A running member: refused, and the offsets stay.
    let consumer = broker.consumer(&group).unwrap();
    use rdkafka::consumer::Consumer;
    consumer.subscribe(&[&topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "never assigned");
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    let before = committed(broker, &group).await;
    failed(
        &trib(broker, &["replay", "--group", &group, "--to", "latest"]),
        "active member",
    );
    assert_eq!(committed(broker, &group).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_a_clear_error_not_a_panic() {
    let broker = TestBroker::shared();
    failed(
        &trib(broker, &["tail", "no-such-topic"]),
        "no topic named no-such-topic",
    );
    failed(
        &trib(broker, &["tail", "x", "--from", "yesterday"]),
        "--from yesterday",
    );
    failed(
        &trib(broker, &["tail", "x", "--where", "nothing"]),
        "--where nothing",
    );
    failed(
        &trib(broker, &["-X", "novalue", "groups"]),
        "expected key=value",
    );
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = Command::new(env!("CARGO_BIN_EXE_trib"))
        .args(["groups", "-X", "socket.timeout.ms=2000"])
        .env("KAFKA_BROKERS", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    failed(&unreachable, &format!("127.0.0.1:{port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_validates_every_line_then_sends_and_reports_acknowledgements() {
    let broker = TestBroker::shared();
    let stock = tributary_events::topics::STOCK;
    broker.create_named_topic(stock, 1).await.unwrap();
    let dir = std::env::temp_dir().join(unique_name("produce"));
    std::fs::create_dir_all(&dir).unwrap();

    // Bare payloads, validated and wrapped as ingest does.
    let payloads = dir.join("stock.ndjson");
    std::fs::write(
        &payloads,
        "{\"product_id\": \"p-1\", \"quantity\": 3}\n\n{\"product_id\": \"p-2\", \"quantity\": 0}\n",
    )
    .unwrap();
    let acked = json_lines(&ok(&trib(
        broker,
        &["produce", stock, payloads.to_str().unwrap(), "--json"],
    )));
    assert_eq!(acked.len(), 2);
    assert_eq!(acked[1]["line"], 3);
    let on_topic = json_lines(&ok(&trib(broker, &["tail", stock, "--json"])));
    let ids: Vec<&Value> = on_topic.iter().map(|r| &r["envelope"]["id"]).collect();
    assert_eq!(ids, [&acked[0]["id"], &acked[1]["id"]]);
    assert_eq!(on_topic[0]["envelope"]["type"], "catalog.stock.changed");
    assert_eq!(on_topic[0]["key"], "p-1");
    assert_eq!(on_topic[1]["envelope"]["data"]["quantity"], 0);
    let text = trib(broker, &["produce", stock, payloads.to_str().unwrap()]);
    let out = ok(&text);
    assert!(
        out.starts_with(&format!("line 1 → {stock}/0@2 id=")),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&text.stderr).contains("2 record(s) acknowledged"));

    // One bad line: nothing is sent, and the line and field are named.
    let mixed = dir.join("mixed.ndjson");
    std::fs::write(
        &mixed,
        "{\"product_id\": \"p-3\", \"quantity\": 1}\n{\"product_id\": \"p-4\", \"quantity\": \"lots\"}\nnot json\n",
    )
    .unwrap();
    let refused = trib(broker, &["produce", stock, mixed.to_str().unwrap()]);
    failed(&refused, "line 2: /quantity");
    failed(&refused, "line 3: not JSON");
    assert_eq!(
        ok(&trib(broker, &["tail", stock])).lines().count(),
        4,
        "nothing sent"
    );

    // Envelopes from standard input go to any topic as they are.
    let topic = broker.create_topic("produce", 1).await.unwrap();
    let envelope = activity(ActivityKind::ProductViewed, "p-9");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trib"))
        .args(["produce", &topic, "-"])
        .env("KAFKA_BROKERS", broker.bootstrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", envelope.to_json()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 record(s) acknowledged"), "{stderr}");
    let read = json_lines(&ok(&trib(broker, &["tail", &topic, "--json"])));
    assert_eq!(read[0]["envelope"]["id"], envelope.id.to_string());

    failed(
        &trib(
            broker,
            &["produce", "no-such-topic", payloads.to_str().unwrap()],
        ),
        "no topic named",
    );
    failed(
        &trib(broker, &["produce", &topic, payloads.to_str().unwrap()]),
        "write envelopes",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_list_sets_the_cluster_against_the_declaration() {
    let broker = TestBroker::shared();
    let present = broker.create_topic("declared", 2).await.unwrap();
    let wrong = broker.create_topic("drifted", 1).await.unwrap();
    let extra = broker.create_topic("undeclared", 1).await.unwrap();
    let missing = unique_name("missing");
    let dir = std::env::temp_dir().join(unique_name("topics"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("topics.yaml");
    std::fs::write(
        &file,
        format!(
            "defaults:\n  replication_factor: -1\ntopics:\n  - name: {present}\n    partitions: 2\n  - name: {wrong}\n    partitions: 4\n  - name: {missing}\n    partitions: 3\n"
        ),
    )
    .unwrap();
    let listed = json_lines(&ok(&trib(
        broker,
        &["topics", "list", "--file", file.to_str().unwrap(), "--json"],
    )));
    let state = |name: &str| {
        listed
            .iter()
            .find(|t| t["topic"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed:?}"))
            .clone()
    };
    assert_eq!(state(&present)["state"], "as declared");
    assert_eq!(state(&present)["partitions"], 2);
    assert_eq!(state(&wrong)["state"], "differs");
    assert!(
        state(&wrong)["differences"][0]
            .as_str()
            .unwrap()
            .contains("partitions")
    );
    assert_eq!(state(&missing)["state"], "missing");
    assert!(state(&missing)["partitions"].is_null());
    assert_eq!(state(&extra)["state"], "undeclared");
    let text = ok(&trib(
        broker,
        &["topics", "list", "--file", file.to_str().unwrap()],
    ));
    assert!(
        text.contains(&format!(
            "{wrong}  partitions=1  differs\n  partitions: declared 4, is 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{missing}  partitions=-  missing")),
        "{text}"
    );
    // Listing creates nothing.
    let again = json_lines(&ok(&trib(
        broker,
        &["topics", "list", "--file", file.to_str().unwrap(), "--json"],
    )));
    assert!(
        again
            .iter()
            .any(|t| t["topic"] == missing.as_str() && t["state"] == "missing")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn schema_check_passes_the_committed_schemas_and_names_a_break() {
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trib"))
            .args(args)
            .output()
            .unwrap()
    };
    let passed = ok(&run(&["schema", "check", schemas.to_str().unwrap()]));
    assert!(passed.starts_with("compatible:"), "{passed}");

    // A reader of this schema expects `quantity` to be a string: today's types write an
    // integer, which it would not survive.
    let dir = std::env::temp_dir().join(unique_name("schemas"));
    std::fs::create_dir_all(&dir).unwrap();
    let name = "catalog.stock.changed.v1.json";
    let mut stock: Value =
        serde_json::from_str(&std::fs::read_to_string(schemas.join(name)).unwrap()).unwrap();
    stock["properties"]["data"]["properties"]["quantity"] = serde_json::json!({"type": "string"});
    std::fs::write(dir.join(name), stock.to_string()).unwrap();
    let broke = run(&["schema", "check", dir.to_str().unwrap()]);
    failed(&broke, "incompatible change");
    assert!(
        String::from_utf8_lossy(&broke.stdout).contains("/data/quantity"),
        "{}",
        String::from_utf8_lossy(&broke.stdout)
    );

    // Two sets: a version that disappears is named.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("other.v1.json"), "{}").unwrap();
    let removed = run(&[
        "schema",
        "check",
        schemas.to_str().unwrap(),
        empty.to_str().unwrap(),
        "--json",
    ]);
    failed(&removed, "incompatible change");
    let lines = String::from_utf8_lossy(&removed.stdout).into_owned();
    assert!(lines.contains("versions are never removed"), "{lines}");
    let _ = std::fs::remove_dir_all(&dir);
}
