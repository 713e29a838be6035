//! Applying `deploy/topics.yaml` against a real broker.

use std::path::Path;

use tributary_runtime::topics::{TopicSpec, TopicsFile, apply, apply_file, partition_counts};
use tributary_testkit::TestBroker;

fn declaration() -> TopicsFile {
    TopicsFile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/topics.yaml"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_declaration_twice_creates_nothing_the_second_time() {
    // Its own broker: the declared names are fixed, so they must not meet other tests.
    let broker = TestBroker::start().unwrap();
    let config = broker.client_config();
    let file = declaration();

    let dry = apply_file(&config, &file, true).await.unwrap();
    assert_eq!(dry.created.len(), file.topics.len());
    let after_dry_run = partition_counts(&config).await.unwrap();
    assert!(
        file.topics
            .iter()
            .all(|t| !after_dry_run.contains_key(&t.name)),
        "a dry run created topics: {after_dry_run:?}"
    );

    let first = apply_file(&config, &file, false).await.unwrap();
    assert_eq!(first.created.len(), file.topics.len(), "{first}");
    let counts = partition_counts(&config).await.unwrap();
    for topic in &file.topics {
        assert_eq!(
            counts.get(&topic.name),
            Some(&topic.partitions),
            "{}",
            topic.name
        );
    }

    let second = apply_file(&config, &file, false).await.unwrap();
    assert!(
        second.created.is_empty(),
        "second apply created {:?}",
        second.created
    );
    assert!(second.differences.is_empty(), "{second}");
    // The dev broker reports no topic configs: they read as unknown, not as differences.
    assert_eq!(
        second.unchanged.len(),
        file.topics.len(),
        "every topic is accounted for: {second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_count_that_differs_is_reported_and_left_alone() {
    let broker = TestBroker::shared();
    let name = broker.create_topic("topics-differs", 2).await.unwrap();
    let config = broker.client_config();
    let report = apply(&config, &[TopicSpec::new(&name, 6)], -1, false)
        .await
        .unwrap();
    assert!(report.created.is_empty());
    assert_eq!(report.differences.len(), 1, "{report}");
    assert_eq!(report.differences[0].setting, "partitions");
    assert_eq!(
        (
            report.differences[0].declared.as_str(),
            report.differences[0].actual.as_str()
        ),
        ("6", "2")
    );
    assert_eq!(
        partition_counts(&config).await.unwrap()[&name],
        2,
        "never altered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_differs_is_reported_and_an_unreported_one_is_unknown() {
    let broker = TestBroker::shared();
    let config = broker.client_config();
    let name = tributary_testkit::unique_name("topics-config");
    let declared = TopicSpec::new(&name, 1).with_config("cleanup.policy", "delete");
    let created = apply(&config, std::slice::from_ref(&declared), -1, false)
        .await
        .unwrap();
    assert_eq!(created.created, vec![name.clone()]);

    let compacted = TopicSpec::new(&name, 1).with_config("cleanup.policy", "compact");
    let report = apply(&config, &[compacted], -1, false).await.unwrap();
    assert_eq!(report.differences.len(), 1, "{report}");
    let d = &report.differences[0];
    assert_eq!(
        (d.setting.as_str(), d.declared.as_str(), d.actual.as_str()),
        ("cleanup.policy", "compact", "delete")
    );

    // A topic made without configs: this broker reports no entries for it at all.
    let bare = broker.create_topic("topics-bare", 1).await.unwrap();
    let report = apply(
        &config,
        &[TopicSpec::new(&bare, 1).with_config("retention.ms", "1000")],
        -1,
        false,
    )
    .await
    .unwrap();
    assert!(report.differences.is_empty(), "{report}");
    assert_eq!(report.unknown_config, vec![bare]);
}
