//! Delivering outputs: a delivery that fails while the broker is away is sent again in
//! order (the newest value of every key is written last, so a compacted topic keeps it),
//! the partition shows as stuck meanwhile, and records the broker refuses for good are
//! dead-lettered (cut down when the dead letter itself is too large) while the rest flows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use tributary_events::{Envelope, Event, Product};
use tributary_runtime::dlq;
use tributary_runtime::{Incoming, Output, ProcessError, Processor};
use tributary_testkit::{RawRecord, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_failing_during_an_outage_are_sent_again_in_order() {
    // Its own durable broker: this test stops and restarts it.
    let mut broker = TestBroker::start_durable().unwrap();
    let input = broker.create_topic("rt-order-in", 2).await.unwrap();
    let output = broker.create_topic("rt-order-out", 2).await.unwrap();
    let group = unique_group("rt-order-group");
    // Ten keys, each updated many times; the quantity is the update's sequence number.
    let updates: Vec<_> = (0..1500)
        .map(|i| stock(&format!("k-{}", i % 10), i))
        .collect();
    broker
        .produce_envelopes(&input, &updates[..1000])
        .await
        .unwrap();

    // Processing holds after 200 messages until the broker is gone: the other 800 are
    // processed during the outage whatever the machine's load (without the gate, a loaded
    // machine could finish all 1,000 before the kill, and nothing would fail).
    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let recorder = Recorder::new(Behaviour {
        forward_to: Some(output.clone()),
        delay: Duration::from_millis(2),
        gate: Some(Gate {
            after: 200,
            open: gate,
        }),
        ..Behaviour::default()
    });
    let mut config = config(&broker, &group);
    // Deliveries give up quickly, so the outage turns into failed deliveries that the
    // runtime must send again, rather than into librdkafka's own in-order retries.
    config.kafka_config.push("message.timeout.ms=1500".into());
    // The group session outlives the outage, so the partitions stay assigned (and show as
    // stuck) while the broker is away, rather than being given up after 6 s.
    config.session_timeout_ms = 30_000;
    let (running, shutdown) = start(config, &[&input], recorder.clone()).await;
    eventually("processing under way", Duration::from_secs(30), || {
        recorder.count() >= 200
    })
    .await;

    // Killed, not stopped: a stopping broker drains its connections for seconds, serving
    // them; an outage is the broker gone at once.
    broker.kill().unwrap();
    open_gate.send(true).unwrap();
    // Three failed rounds: librdkafka times a record out only when it next scans its
    // queues, and while it backs off reconnecting that took up to 9 s a round on this
    // machine; a loaded one took longer than 60 s once.
    eventually(
        "a partition reported stuck while deliveries fail",
        Duration::from_secs(120),
        || {
            running
                .health
                .not_ready_reasons()
                .iter()
                .any(|r| r.contains("stuck") && r.contains("delivery"))
        },
    )
    .await;
    broker.restart().unwrap();
    broker
        .produce_envelopes(&input, &updates[1000..])
        .await
        .unwrap();

    let newest: BTreeMap<String, u64> = updates
        .iter()
        .map(|e| match &e.event {
            Event::StockChanged(s) => (e.key.clone(), s.quantity),
            _ => unreachable!(),
        })
        .collect();
    // Everything committed means every output acknowledged, re-sends included (an offset
    // is finished only once its outputs are); reading the output before that would catch
    // a re-send round half way, when an older value is briefly the last one of its key.
    eventually("every input committed", Duration::from_secs(120), || {
        committed(&broker, &group, &input, 2).values().sum::<i64>() == 1500
    })
    .await;
    let written = output_end(&broker, &output);
    let expected_ids: BTreeSet<String> = updates.iter().map(|e| e.id.to_string()).collect();
    let records = broker
        .consume_until(&[&output], Duration::from_secs(120), |records| {
            let ids: BTreeSet<String> = records
                .iter()
                .filter_map(|r| r.envelope().ok())
                .map(|e| e.id.to_string())
                .collect();
            expected_ids.is_subset(&ids) && records.len() as i64 >= written
        })
        .await
        .unwrap();
    // What compaction would keep: the last record of each key in its partition.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<_>> = BTreeMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for rs in by_partition.values_mut() {
        rs.sort_by_key(|r| r.offset);
        for r in rs.iter() {
            if let Ok(Envelope {
                key,
                event: Event::StockChanged(s),
                ..
            }) = r.envelope()
            {
                last.insert(key, s.quantity);
            }
        }
    }
    assert_eq!(
        last, newest,
        "the newest value of every key is written last"
    );
    eventually("ready again", Duration::from_secs(60), || {
        running.health.not_ready_reasons().is_empty()
    })
    .await;
    shutdown.trigger();
    running.wait().await.unwrap();
}

/// How many records `topic` (2 partitions) holds: the sum of its high watermarks.
fn output_end(broker: &TestBroker, topic: &str) -> i64 {
    use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = broker.client_config().create().unwrap();
    (0..2)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// Forwards by key: `huge` gets an output larger than the producer's limit, `nowhere` an
/// output to a topic the broker refuses (its name is invalid: a broker that creates topics
/// on first use, as the dev broker and Kafka's default do, creates any valid one), anything
/// else is forwarded.
struct Refusable {
    forward_to: String,
}

impl Processor for Refusable {
    async fn process(&self, message: Incoming) -> Result<Vec<Output>, ProcessError> {
        let key = message.key_str().unwrap_or_default().to_owned();
        let Some(envelope) = message.envelope else {
            return Ok(vec![]);
        };
        Ok(match key.as_str() {
            "huge" => vec![Output::event(
                self.forward_to.clone(),
                Envelope::new(
                    "test",
                    Event::ProductUpserted(Product {
                        product_id: "huge".into(),
                        brand_id: "b".into(),
                        sku: "s".into(),
                        name: "n".into(),
                        category: "c".into(),
                        description: Some("x".repeat(40_000)),
                        attributes: None,
                        images: None,
                    }),
                ),
            )],
            "nowhere" => vec![Output::event("rt no such topic!", envelope)],
            _ => vec![Output::event(self.forward_to.clone(), envelope)],
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_the_broker_refuses_for_good_are_dead_lettered_and_the_rest_flows() {
    let broker = TestBroker::shared();
    let input = broker.create_topic("rt-refused-in", 1).await.unwrap();
    let output = broker.create_topic("rt-refused-out", 1).await.unwrap();
    let group = unique_group("rt-refused-group");
    let dlq_topic = format!("{group}.dlq");

    let mut records: Vec<RawRecord> = (0..10)
        .map(|i| RawRecord::from_envelope(&stock(&format!("p-{i}"), i)))
        .collect();
    records.insert(2, RawRecord::from_envelope(&stock("huge", 1)));
    records.insert(5, RawRecord::from_envelope(&stock("nowhere", 1)));
    // Undecodable, with a large header: its dead letter (plus the dlq.* headers) is over
    // the producer's limit, so it must be cut down to be kept at all.
    let mut poison = RawRecord::new("poison", vec![b'{'; 15_000]);
    poison.headers.push(("bulky".into(), "h".repeat(4_900)));
    records.insert(8, poison);
    broker.produce_raw(&input, &records).await.unwrap();

    let mut config = config(broker, &group);
    config.kafka_config.push("message.max.bytes=20000".into());
    config
        .kafka_config
        .push("topic.metadata.propagation.max.ms=1000".into());
    let processor = Refusable {
        forward_to: output.clone(),
    };
    let (running, shutdown) = start(config, &[&input], processor).await;
    // The service creates its dead-letter topic before it consumes; a reader subscribed
    // before that would not see the topic for minutes (librdkafka's metadata refresh).
    eventually("the service consumes", Duration::from_secs(30), || {
        !running.health.status()["partitions"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;

    let letters = broker
        .consume_count(&[&dlq_topic], 3, Duration::from_secs(60))
        .await
        .unwrap();
    let kinds: BTreeMap<String, String> = letters
        .iter()
        .map(|r| {
            (
                r.key_str().unwrap_or_default().to_owned(),
                r.header(dlq::ERROR_KIND).unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(kinds["huge"], dlq::KIND_OUTPUT_REJECTED, "{letters:?}");
    assert_eq!(kinds["nowhere"], dlq::KIND_OUTPUT_REJECTED);
    assert_eq!(kinds["poison"], "not_json");
    let huge = letters
        .iter()
        .find(|r| r.key_str() == Some("huge"))
        .unwrap();
    assert!(
        huge.header(dlq::ERROR_MESSAGE).unwrap().contains("refused"),
        "the error names the refusal: {:?}",
        huge.header(dlq::ERROR_MESSAGE)
    );
    assert!(
        huge.envelope().is_ok(),
        "the input itself is kept, decodable"
    );
    let poison = letters
        .iter()
        .find(|r| r.key_str() == Some("poison"))
        .unwrap();
    assert!(
        poison.header(dlq::TRUNCATED).is_some(),
        "the cut-down dead letter says so"
    );
    assert!(poison.header("bulky").is_none(), "original headers dropped");
    assert_eq!(
        poison.value.as_ref().map(Vec::len),
        Some(15_000),
        "the value itself fit and is whole"
    );
    let forwarded = broker
        .consume_count(&[&output], 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(forwarded.len(), 10, "everything else flowed");
    eventually("all 13 committed", Duration::from_secs(30), || {
        committed(broker, &group, &input, 1).get(&0) == Some(&13)
    })
    .await;
    assert!(running.health.not_ready_reasons().is_empty());
    shutdown.trigger();
    running.wait().await.unwrap();
}
