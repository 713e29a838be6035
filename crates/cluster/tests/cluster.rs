//! The cluster client against the dev broker: topics, groups, members, committed offsets
//! and watermarks, read in batches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tributary_cluster::{Cluster, ClusterConfig, Error};
use tributary_testkit::{RawRecord, TestBroker, unique_name};

fn client(broker: &TestBroker) -> Cluster {
    let properties = HashMap::from([("bootstrap.servers".to_owned(), broker.bootstrap())]);
    Cluster::new(ClusterConfig::from_properties(&properties).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_topics_groups_members_offsets_and_watermarks() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("cluster", 3).await.unwrap();
    let records: Vec<RawRecord> = (0..30)
        .map(|i| RawRecord::new(format!("k{i}"), format!("v{i}")))
        .collect();
    broker.produce_raw(&topic, &records).await.unwrap();

    // A live member that committed, and a group committed by an administrator.
    let live = unique_name("live");
    let consumer = broker.consumer(&live).unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().unwrap().count() < 3 {
        assert!(Instant::now() < deadline, "never assigned");
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();

    let cluster = client(broker);
    let metadata = cluster.metadata().await.unwrap();
    assert_eq!(metadata.topics[&topic].len(), 3);
    assert!(!metadata.brokers.is_empty());
    let admin = unique_name("admin");
    let coordinators = cluster
        .coordinators(&metadata, std::slice::from_ref(&admin))
        .await
        .unwrap();
    let coordinator = coordinators[&admin].clone().unwrap();
    let wanted = BTreeMap::from([((topic.clone(), 1), 4), ((topic.clone(), 2), 0)]);
    cluster
        .commit_offsets(&admin, &coordinator, &wanted)
        .await
        .unwrap();

    let listed = cluster.list_groups(&metadata).await.unwrap();
    let names: BTreeSet<String> = listed.iter().map(|g| g.group.clone()).collect();
    assert!(names.contains(&live) && names.contains(&admin), "{names:?}");

    let groups = vec![live.clone(), admin.clone(), unique_name("never-seen")];
    let coordinators = cluster.coordinators(&metadata, &groups).await.unwrap();
    let before = cluster.requests_sent();
    let described = cluster.describe_groups(&groups, &coordinators).await;
    let committed = cluster.committed_offsets(&groups, &coordinators).await;
    assert_eq!(
        cluster.requests_sent() - before,
        2,
        "one DescribeGroups and one OffsetFetch for all groups on one broker"
    );
    let members = &described[&live].as_ref().unwrap().members;
    assert_eq!(members.len(), 1);
    assert!(described[&admin].as_ref().unwrap().members.is_empty());
    assert_eq!(
        committed[&live].as_ref().unwrap(),
        &BTreeMap::from([((topic.clone(), 0), 1)])
    );
    assert_eq!(committed[&admin].as_ref().unwrap(), &wanted);
    assert!(committed[&groups[2]].as_ref().unwrap().is_empty());

    let partitions: BTreeSet<(String, i32)> = (0..3).map(|p| (topic.clone(), p)).collect();
    let watermarks = cluster.high_watermarks(&metadata, &partitions).await;
    let total: i64 = watermarks.values().map(|w| *w.as_ref().unwrap()).sum();
    assert_eq!(total, 30);

    // A live member's group refuses an administrator's commit: the broker says why.
    let refused = cluster
        .commit_offsets(&live, &coordinators[&live].clone().unwrap(), &wanted)
        .await;
    assert!(matches!(refused, Err(Error::Kafka { .. })), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_an_error_naming_the_broker() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let properties = HashMap::from([
        ("bootstrap.servers".to_owned(), format!("127.0.0.1:{port}")),
        ("socket.timeout.ms".to_owned(), "2000".to_owned()),
    ]);
    let cluster = Cluster::new(ClusterConfig::from_properties(&properties).unwrap()).unwrap();
    let err = cluster.metadata().await.unwrap_err();
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}
