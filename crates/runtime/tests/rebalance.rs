//! Rebalances lose nothing: members join and leave while records flow, partitions come
//! back to the member that had them, and every offset is processed; with cooperative
//! rebalancing only the partitions that move are revoked; a second consumer joining
//! mid-stream repeats nothing that was handed over.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tributary_testkit::TestBroker;

/// Produces `total` envelopes in chunks while the test runs; returns the count per
/// partition once done.
fn produce_steadily(
    broker: &'static TestBroker,
    topic: String,
    total: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0;
        while i < total {
            let chunk: Vec<_> = (i..(i + 50).min(total))
                .map(|n| stock(&format!("p-{}", n % 97), n))
                .collect();
            i += chunk.len() as u64;
            broker.produce_envelopes(&topic, &chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

async fn members_join_and_leave_while_records_flow(strategy: Option<&str>) {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-churn", 6).await.unwrap();
    let group = unique_group("rt-churn-group");
    let total = 4000;
    let configure = || {
        let mut config = config(broker, &group);
        if let Some(strategy) = strategy {
            config.kafka_config.push(
                format!("partition.assignment.strategy={strategy}")
                    .as_str()
                    .into(),
            );
        }
        config
    };
    let producer = produce_steadily(broker, topic.clone(), total);
    let slow = Behaviour {
        delay: Duration::from_millis(1),
        ..Behaviour::default()
    };
    let stayer = Recorder::new(slow.clone());
    let (a, stop_a) = start(configure(), &[&topic], stayer.clone()).await;
    eventually(
        "the first member is under way",
        Duration::from_secs(30),
        || stayer.count() >= 100,
    )
    .await;

    // A second member joins and leaves three times: each time it takes partitions from
    // the first, and when it leaves they come back to the first.
    let mut visitors = Vec::new();
    for round in 0..3 {
        let visitor = Recorder::new(slow.clone());
        let (b, stop_b) = start(configure(), &[&topic], visitor.clone()).await;
        let before = visitor.count();
        eventually(
            &format!("visitor {round} processes records"),
            Duration::from_secs(60),
            || visitor.count() > before + 20,
        )
        .await;
        stop_b.trigger();
        b.wait().await.unwrap();
        eventually(
            &format!("the first member owns all six partitions again after round {round}"),
            Duration::from_secs(60),
            || stayer.owned().len() == 6,
        )
        .await;
        visitors.push(visitor);
    }
    producer.await.unwrap();

    let ends = end_offsets(broker, &topic, 6);
    assert_eq!(ends.values().sum::<i64>(), total as i64);
    let everything = || {
        let mut all: BTreeSet<(i32, i64)> = stayer.processed().into_iter().collect();
        for v in &visitors {
            all.extend(v.processed());
        }
        all
    };
    eventually("every record processed", Duration::from_secs(90), || {
        everything().len() == total as usize
    })
    .await;
    let processed = everything();
    for (&p, &end) in &ends {
        for offset in 0..end {
            assert!(
                processed.contains(&(p, offset)),
                "partition {p} offset {offset} was never processed"
            );
        }
    }
    eventually(
        "the stayer committed everything",
        Duration::from_secs(30),
        || committed(broker, &group, &topic, 6) == ends,
    )
    .await;
    assert!(
        visitors.iter().all(|v| v.count() > 0),
        "every visitor took part"
    );
    stop_a.trigger();
    a.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eager_rebalances_that_hand_partitions_back_lose_nothing() {
    // Eager: every rebalance revokes every partition and assigns them again, the case in
    // which a stale route used to drop messages.
    members_join_and_leave_while_records_flow(Some("range")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cooperative_rebalances_lose_nothing() {
    members_join_and_leave_while_records_flow(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cooperative_rebalance_revokes_only_the_partitions_that_move() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-coop", 6).await.unwrap();
    let group = unique_group("rt-coop-group");
    let producer = produce_steadily(broker, topic.clone(), 2000);
    let first = Recorder::default();
    let (a, stop_a) = start(config(broker, &group), &[&topic], first.clone()).await;
    eventually(
        "the first member owns all six",
        Duration::from_secs(30),
        || first.owned().len() == 6,
    )
    .await;
    let second = Recorder::default();
    let (b, stop_b) = start(config(broker, &group), &[&topic], second.clone()).await;
    eventually(
        "the second member got partitions",
        Duration::from_secs(60),
        || !second.owned().is_empty(),
    )
    .await;
    eventually(
        "the first member gave them up",
        Duration::from_secs(30),
        || first.owned().len() + second.owned().len() == 6,
    )
    .await;
    let revoked: BTreeSet<i32> = first.revoked.lock().unwrap().iter().copied().collect();
    let kept = first.owned();
    assert!(!kept.is_empty(), "the first member kept partitions");
    assert!(
        revoked.is_disjoint(&kept),
        "partitions it kept were revoked too (eager behaviour): revoked {revoked:?}, kept {kept:?}"
    );
    assert_eq!(
        revoked,
        second.owned(),
        "exactly the partitions that moved were revoked"
    );
    producer.await.unwrap();
    stop_b.trigger();
    stop_a.trigger();
    b.wait().await.unwrap();
    a.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_consumer_joining_loses_nothing_and_repeats_nothing() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-rebalance", 6).await.unwrap();
    let group = unique_group("rt-rebalance-group");
    let total = 3000;
    let envelopes: Vec<_> = (0..total)
        .map(|i| stock(&format!("p-{}", i % 89), i))
        .collect();
    broker.produce_envelopes(&topic, &envelopes).await.unwrap();

    let slow = Behaviour {
        delay: Duration::from_millis(3),
        ..Behaviour::default()
    };
    let first = Recorder::new(slow.clone());
    let (a, stop_a) = start(config(broker, &group), &[&topic], first.clone()).await;
    eventually(
        "the first consumer is under way",
        Duration::from_secs(30),
        || first.count() >= 300,
    )
    .await;
    let second = Recorder::new(slow);
    let (b, stop_b) = start(config(broker, &group), &[&topic], second.clone()).await;

    eventually("every input processed", Duration::from_secs(90), || {
        let mut all: BTreeSet<(i32, i64)> = first.processed().into_iter().collect();
        all.extend(second.processed());
        all.len() == total as usize
    })
    .await;
    assert!(second.count() > 0, "the newcomer took over work");
    let a_set: BTreeSet<_> = first.processed().into_iter().collect();
    let repeated: Vec<_> = second
        .processed()
        .into_iter()
        .filter(|m| a_set.contains(m))
        .collect();
    assert!(
        repeated.is_empty(),
        "handed-over partitions were reprocessed: {repeated:?}"
    );
    assert_eq!(
        first.count() + second.count(),
        total as usize,
        "each message exactly once"
    );

    stop_a.trigger();
    stop_b.trigger();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_member_restarted_within_its_session_gets_its_partitions_back_without_a_rebalance()
{
    let broker = TestBroker::shared();
    let topic = broker.create_topic("rt-static", 6).await.unwrap();
    let group = unique_group("rt-static-group");
    // Eager rebalancing: any rebalance at all would revoke every partition of the other
    // member, so "nothing revoked" proves there was none (under cooperative-sticky the
    // other member could sit through a rebalance untouched).
    let member = |id: &str| {
        let mut config = config(broker, &group);
        config.group_instance_id = Some(id.to_owned());
        config
            .kafka_config
            .push("partition.assignment.strategy=range".into());
        config
    };
    let first = Recorder::default();
    let (a, stop_a) = start(member("pod-0"), &[&topic], first.clone()).await;
    let second = Recorder::default();
    let (b, stop_b) = start(member("pod-1"), &[&topic], second.clone()).await;
    eventually(
        "both members own partitions",
        Duration::from_secs(60),
        || {
            !first.owned().is_empty()
                && !second.owned().is_empty()
                && first.owned().len() + second.owned().len() == 6
        },
    )
    .await;
    let before = first.owned();
    let kept = second.owned();
    let revoked_so_far = second.revoked.lock().unwrap().len();

    // pod-0 stops (a static member leaves no group on close) and comes back at once.
    stop_a.trigger();
    a.wait().await.unwrap();
    let again = Recorder::default();
    let (a2, stop_a2) = start(member("pod-0"), &[&topic], again.clone()).await;
    eventually(
        "the restarted member owns its partitions again",
        Duration::from_secs(30),
        || again.owned() == before,
    )
    .await;
    let revoked_since = second.revoked.lock().unwrap()[revoked_so_far..].to_vec();
    assert!(
        revoked_since.is_empty(),
        "the other member kept its partitions throughout: revoked {revoked_since:?}"
    );
    assert_eq!(second.owned(), kept);

    stop_a2.trigger();
    stop_b.trigger();
    a2.wait().await.unwrap();
    b.wait().await.unwrap();
}
