//! Restoring a store from its changelog when the restore is abandoned part way: it stops
//! (releasing the store's file, so the partition can be opened again on this instance at
//! once) and keeps what it read up to its last checkpoint, so the next attempt goes on
//! from there. Found by a million-event chaos run: partitions moved faster than a restore
//! on a busy broker could finish, each abandoned restore held the store locked to its
//! end, and every new attempt started over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tributary_runtime::rdkafka::producer::FutureProducer;
use tributary_runtime::{
    Health, Incoming, Output, PartitionId, ProcessError, Processor, RuntimeConfig, ServiceContext,
    StartFrom,
};
use tributary_state::changelog::{self, CHECKPOINT_KEY, CheckpointRecord, RestoreOptions};
use tributary_state::{State, StateError, Stateful, StatefulProcessor, Store};
use tributary_testkit::{DEV_CLIENT_SETTING, RawRecord, TestBroker};

/// Entries per batch of the changelogs below.
const BATCH: usize = 100;

/// A changelog as a committing store writes it: `batches` batches of `BATCH` entries
/// over `keys` distinct keys, each followed by its checkpoint (input partition `input`,
/// `topic/partition`, at the batch's number + 1). Entries carry no source header: always
/// vouched for.
fn changelog_records(batches: usize, keys: usize, input: &str) -> Vec<RawRecord> {
    let mut records = Vec::with_capacity(batches * (BATCH + 1));
    for b in 0..batches {
        for i in 0..BATCH {
            let n = (b * BATCH + i) % keys;
            records.push(RawRecord::new(
                format!("t\0k{n:06}").into_bytes(),
                format!("{{\"batch\":{b}}}").into_bytes(),
            ));
        }
        let checkpoint = CheckpointRecord {
            offsets: BTreeMap::from([(input.to_owned(), b as i64 + 1)]),
            reseed: None,
        };
        records.push(RawRecord::new(
            CHECKPOINT_KEY.to_vec(),
            serde_json::to_vec(&checkpoint).unwrap(),
        ));
    }
    records
}

fn client(broker: &TestBroker) -> tributary_runtime::rdkafka::ClientConfig {
    let mut client = broker.client_config();
    client.set("group.id", "restore-test");
    let (key, value) = DEV_CLIENT_SETTING.split_once('=').unwrap();
    client.set(key, value);
    client
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn options(abandoned: Option<Arc<AtomicBool>>) -> RestoreOptions {
    RestoreOptions {
        stall_timeout: Duration::from_secs(30),
        stale_after: Duration::from_secs(86_400),
        abandoned,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_restore_stops_and_keeps_what_it_read_to_its_last_checkpoint() {
    let broker = TestBroker::shared();
    let topic = broker.create_topic("restore-abandon", 1).await.unwrap();
    // 30 batches of 100 entries over 2,000 keys (fewer than the 10,000 ready entries
    // that make a restore commit part way on its own): 3,030 records.
    broker
        .produce_raw(&topic, &changelog_records(30, 2000, "in/0"))
        .await
        .unwrap();
    // Every record was written before this.
    let produced_by = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0.redb");
    let client = client(broker);

    // Abandoned when the first 1,000 records are read (progress is reported every
    // 1,000): the last checkpoint read by then is the ninth (batch 8's),
    // at offset 9 * 101 - 1.
    let abandoned = Arc::new(AtomicBool::new(false));
    let first = {
        let store = Store::open(&path).unwrap();
        let flag = abandoned.clone();
        let topic = topic.clone();
        let client = client.clone();
        tokio::task::spawn_blocking(move || {
            changelog::restore(
                &store,
                &client,
                &topic,
                0,
                options(Some(flag.clone())),
                |read, _| {
                    if read >= 1000 {
                        flag.store(true, Ordering::Release);
                    }
                },
            )
        })
        .await
        .unwrap()
    };
    assert!(
        matches!(first, Err(StateError::Abandoned)),
        "an abandoned restore stops: {first:?}"
    );

    let store = Store::open(&path).unwrap();
    let kept = store.checkpoint().unwrap();
    assert_eq!(
        kept.changelog_position,
        9 * 101,
        "kept up to the last checkpoint read"
    );
    assert_eq!(kept.offsets.get("in/0"), Some(&9));
    assert_eq!(
        store.len().unwrap(),
        900,
        "batches 0-8 applied, nothing after"
    );
    // The records after the kept position are as old as the checkpoint before them, not
    // as new as the restore: a store kept part way must not look fresher than they are,
    // or a resume after their tombstones expired would bring deleted keys back.
    let kept_at = store.committed_at().unwrap().unwrap();
    assert!(
        kept_at <= produced_by,
        "a commit part way records when its checkpoint was written ({kept_at}), not the restore's time (after {produced_by})"
    );

    // The next restore goes on from there, and ends where a whole restore ends.
    let (checkpoint, restored) = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || {
            let result = changelog::restore(&store, &client, &topic, 0, options(None), |_, _| {});
            (result, store)
        }
    })
    .await
    .map(|(result, _store)| result.unwrap())
    .unwrap();
    assert_eq!(
        restored.records,
        30 * 101 - 9 * 101,
        "read only what the first attempt had not kept"
    );
    assert_eq!(checkpoint.changelog_position, 30 * 101);
    assert_eq!(checkpoint.offsets.get("in/0"), Some(&30));
    let store = Store::open(&path).unwrap();
    assert!(
        store.committed_at().unwrap().unwrap() >= produced_by,
        "a restore that reaches the end records when it began"
    );
    assert_eq!(store.len().unwrap(), 2000);
    assert_eq!(
        store.get("t", "k000999").unwrap().as_deref(),
        Some(&b"{\"batch\":29}"[..]),
        "the newest value of a key written in the last batch"
    );
}

/// Does nothing: the test is about opening the state, not processing.
struct Idle;

impl StatefulProcessor for Idle {
    fn process(
        &self,
        _message: &Incoming,
        _state: &mut State<'_>,
    ) -> Result<Vec<Output>, ProcessError> {
        Ok(Vec::new())
    }
}

/// A started store over `inputs` (one partition each) with a changelog long enough that
/// its restore is far from done when a partition goes: 2,000 batches (202,000 records)
/// over 5,000 keys, checkpointing the first input. Returns the store, its context, its
/// data directory and the changelog's end.
async fn started_store(
    broker: &TestBroker,
    inputs: &[String],
) -> (Arc<Stateful<Idle>>, ServiceContext, tempfile::TempDir, i64) {
    let group = tributary_testkit::unique_name("restore-revoke");
    let data = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::defaults();
    config.brokers = broker.bootstrap();
    config.group_id = Some(group.clone());
    config.data_dir = data.path().to_path_buf();
    config.kafka_config = vec![DEV_CLIENT_SETTING.into()];
    let producer: FutureProducer = broker.producer().unwrap();
    let context = ServiceContext {
        service: "restore-test".into(),
        group: group.clone(),
        inputs: inputs.to_vec(),
        config,
        health: Health::new("restore-test", Some(&group)),
        producer,
        freeze: tributary_runtime::FreezeGuard::default(),
    };
    let stateful = Arc::new(Stateful::new("kv", Idle));
    stateful.on_start(&context).await.unwrap();
    let changelog = format!("{group}.kv.changelog");
    let records = changelog_records(2000, 5000, &format!("{}/0", inputs[0]));
    let high = records.len() as i64;
    broker.produce_raw(&changelog, &records).await.unwrap();
    (stateful, context, data, high)
}

/// Waits until the store reports a restore reading its changelog.
async fn restore_under_way(
    context: &ServiceContext,
    opening: &tokio::task::JoinHandle<Result<StartFrom, ProcessError>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !context
        .health
        .not_ready_reasons()
        .iter()
        .any(|r| r.contains("changelog records read"))
    {
        assert!(
            !opening.is_finished(),
            "the restore ended before it could be abandoned"
        );
        assert!(
            Instant::now() < deadline,
            "the restore never reported progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_restoring_stops_its_restore_and_keeps_its_progress() {
    let broker = TestBroker::shared();
    let input = broker.create_topic("restore-revoke-in", 1).await.unwrap();
    let (stateful, context, data, high) = started_store(broker, std::slice::from_ref(&input)).await;
    let group = context.group.clone();

    let partition = PartitionId::new(input.as_str(), 0);
    let opening = tokio::spawn({
        let stateful = stateful.clone();
        let partition = partition.clone();
        async move { stateful.on_assigned(&partition).await }
    });
    restore_under_way(&context, &opening).await;
    // The revocation: the runtime drops the assignment hook's future.
    opening.abort();
    assert!(opening.await.unwrap_err().is_cancelled());

    // The store opens again once the abandoned restore has stopped. Had it read on to
    // the end (as it did), the store would hold the whole changelog by then.
    let path = data.path().join(&group).join("kv").join("p0.redb");
    let deadline = Instant::now() + Duration::from_secs(60);
    let store = loop {
        match Store::open(&path) {
            Ok(store) => break store,
            Err(e) => {
                assert!(Instant::now() < deadline, "the store stayed locked: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let kept = store.checkpoint().unwrap().changelog_position;
    assert!(
        kept < high,
        "the abandoned restore stopped part way ({kept} of {high})"
    );
    assert!(
        kept > 0,
        "what it read up to its last checkpoint was kept ({kept})"
    );
    drop(store);

    // Assigned again here: the open goes on from what was kept and completes.
    let start = stateful.on_assigned(&partition).await.unwrap();
    assert!(
        matches!(start, StartFrom::Offset(2000)),
        "resumes after the last checkpoint's input offset: {start:?}"
    );
    let status = context.health.status();
    let state = &status["state"]["partitions"][0];
    assert_eq!(state["state"], "ready", "{status:#}");
    assert_eq!(state["entries"], 5000, "{status:#}");
    assert_eq!(
        state["restored_records"].as_i64(),
        Some(high - kept),
        "read only what the first attempt had not kept: {status:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_partitioned_inputs_revoked_while_restoring_are_not_fenced_when_assigned_again() {
    let broker = TestBroker::shared();
    let mut inputs = Vec::new();
    for name in ["restore-copart-a", "restore-copart-b", "restore-copart-c"] {
        inputs.push(broker.create_topic(name, 1).await.unwrap());
    }
    let (stateful, context, data, _high) = started_store(broker, &inputs).await;
    let ids: Vec<PartitionId> = inputs
        .iter()
        .map(|t| PartitionId::new(t.as_str(), 0))
        .collect();
    let assign = |id: &PartitionId| {
        let stateful = stateful.clone();
        let id = id.clone();
        async move { stateful.on_assigned(&id).await }
    };

    // The first input's hook opens partition 0's store; the other inputs' hooks wait on
    // that open, holding the same slot.
    let first = tokio::spawn(assign(&ids[0]));
    restore_under_way(&context, &first).await;
    let mut waiting = vec![Box::pin(assign(&ids[1])), Box::pin(assign(&ids[2]))];
    for hook in &mut waiting {
        assert!(futures_util::poll!(hook.as_mut()).is_pending());
    }
    // The revocation, as the runtime does it: every hook cancelled (the opening one
    // first, while the others still hold the slot), then the partition fenced.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    drop(waiting);
    stateful.fence(&ids[0]);

    // The abandoned restore has let go of the store (a failed open in between would
    // clear the stale slot and hide what this test is about).
    let path = data.path().join(&context.group).join("kv").join("p0.redb");
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = Store::open(&path) {
        assert!(Instant::now() < deadline, "the store stayed locked: {e}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The next ownership of the same partition, on this instance.
    for id in &ids {
        stateful.on_assigned(id).await.unwrap();
    }
    assert_eq!(
        stateful.reader().owned(),
        vec![0],
        "the new ownership's task is not fenced (a fenced one refuses every commit)"
    );
}
