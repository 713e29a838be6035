//! A commit the group coordinator refuses is not counted as done: the offset is offered
//! again until the broker accepts it. (Counting a commit when it was sent once let a
//! refused interval commit, sent while a rebalance moved the group's generation on, stand
//! in for the handover commit, and the next owner re-processed what was already done.)
//! librdkafka's mock cluster is the one broker that refuses commits on demand.

mod common;

use std::time::Duration;

use common::*;
use tributary_runtime::RuntimeConfig;
use tributary_runtime::rdkafka::ClientConfig;
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::mocking::MockCluster;
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "refused-in";
const GROUP: &str = "refused-group";
const RECORDS: i64 = 50;
/// Long enough that every record is processed before the first interval commit.
const COMMIT_INTERVAL_MS: u64 = 3_000;

fn committed(bootstrap: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    match consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .unwrap()
        .elements()[0]
        .offset()
    {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_commit_is_offered_again_until_the_broker_takes_it() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    // The service would create its dead-letter topic and compare its configs; the mock
    // cluster does neither, so the topic exists and the request is refused at once.
    cluster.create_topic(&format!("{GROUP}.dlq"), 1, 1).unwrap();
    cluster
        .apiversion(RDKafkaApiKey::DescribeConfigs, None, None)
        .unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for i in 0..RECORDS {
        let envelope = stock("p-1", i as u64);
        let value = envelope.encode();
        producer
            .send(
                FutureRecord::<str, [u8]>::to(TOPIC)
                    .key("p-1")
                    .payload(&value),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }

    let mut config = RuntimeConfig::defaults();
    config.brokers = bootstrap.clone();
    config.group_id = Some(GROUP.to_owned());
    config.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    config.statsd_addr = "127.0.0.1:9".into();
    config.commit_interval_ms = COMMIT_INTERVAL_MS;
    config.shutdown_timeout_ms = 10_000;
    let recorder = Recorder::default();
    let (running, shutdown) = start(config, &[TOPIC], recorder.clone()).await;
    eventually("every record processed", Duration::from_secs(60), || {
        recorder.count() == RECORDS as usize
    })
    .await;
    // The setup this test needs: nothing committed yet, so the first interval commit carries
    // the final watermark, and it is the one refused.
    assert_eq!(
        committed(&bootstrap),
        None,
        "a commit happened before every record was processed: raise COMMIT_INTERVAL_MS"
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    );
    // Refused once, then offered again (an unchanged watermark after a few intervals).
    eventually(
        "the watermark committed after a refusal",
        Duration::from_secs(60),
        || committed(&bootstrap) == Some(RECORDS),
    )
    .await;
    shutdown.trigger();
    running.wait().await.unwrap();
}
