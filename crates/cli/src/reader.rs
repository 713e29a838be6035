//! Reading a topic as `trib` does: a client that assigns partitions itself, joins no group
//! and commits nothing (like kcat), up to the end each partition had when it started.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use tributary_runtime::rdkafka::ClientConfig;
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::message::BorrowedMessage;
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};

/// How long a metadata or watermark request may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// A reader client with `config`'s settings.
pub(crate) fn consumer(config: &ClientConfig) -> anyhow::Result<BaseConsumer> {
    let mut config = config.clone();
    config
        .set("group.id", "trib-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    // Short fetch waits unless set: a broker that holds every fetch for the full wait would
    // otherwise pace the reading.
    if config.get("fetch.wait.max.ms").is_none() {
        config.set("fetch.wait.max.ms", "10");
    }
    config.create().context("Kafka client")
}

/// Each partition of `topic` with its low and high watermarks; an error naming the topic
/// when it does not exist.
pub(crate) fn partitions(
    consumer: &BaseConsumer,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .context("cannot read the cluster's metadata")?;
    let ids: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ids.is_empty() {
        bail!("no topic named {topic} on the cluster");
    }
    let mut out = BTreeMap::new();
    for p in ids {
        let marks = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .with_context(|| format!("cannot read {topic}/{p}'s offsets"))?;
        out.insert(p, marks);
    }
    Ok(out)
}

/// Reads `topic` from each partition's start in `starts` up to its end in `ends`
/// (exclusive), handing every record to `on`. With `follow`, keeps reading past the ends.
pub(crate) fn read(
    consumer: &BaseConsumer,
    topic: &str,
    starts: &BTreeMap<i32, i64>,
    ends: &BTreeMap<i32, i64>,
    follow: bool,
    mut on: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut pending: BTreeMap<i32, i64> = ends
        .iter()
        .filter(|(p, end)| starts.get(p).is_some_and(|s| s < end))
        .map(|(p, end)| (*p, *end))
        .collect();
    if !follow && pending.is_empty() {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    for (p, start) in starts {
        assignment.add_partition_offset(topic, *p, Offset::Offset(*start))?;
    }
    consumer
        .assign(&assignment)
        .context("assigning partitions")?;
    loop {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.with_context(|| format!("reading {topic}"))?;
        use tributary_runtime::rdkafka::message::Message;
        let (partition, offset) = (message.partition(), message.offset());
        on(&message)?;
        if !follow {
            if pending
                .get(&partition)
                .is_some_and(|end| offset + 1 >= *end)
            {
                pending.remove(&partition);
            }
            if pending.is_empty() {
                return Ok(());
            }
        }
    }
}
