//! Reading a topic as `trib` does: a client that assigns partitions itself, joins no group
//! and commits nothing (like kcat), up to the end each partition had when it started.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use tributary_runtime::rdkafka::ClientConfig;
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::error::KafkaError;
use tributary_runtime::rdkafka::message::Message;
use tributary_runtime::rdkafka::message::{BorrowedMessage, Headers};
use tributary_runtime::rdkafka::types::RDKafkaErrorCode;
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};

/// How long a metadata or watermark request may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a read to the end may go without any record or end-of-partition event before it
/// is abandoned (a partition without a leader, an unreachable broker).
const STALLED: Duration = Duration::from_secs(60);

/// One header: its name, and its value (`None` for a null one).
pub(crate) type RecordHeader = (String, Option<Vec<u8>>);

/// A record's headers as (name, value): `Err` when a header name is not UTF-8, which
/// rdkafka's header API cannot hand over (it panics; the runtime guards it the same way).
pub(crate) fn headers_of(message: &BorrowedMessage<'_>) -> Result<Vec<RecordHeader>, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    }));
    std::panic::set_hook(previous);
    read.map_err(|_| {
        format!(
            "{}/{}@{} has a header whose name is not UTF-8",
            message.topic(),
            message.partition(),
            message.offset()
        )
    })
}

/// A reader client with `config`'s settings.
pub(crate) fn consumer(config: &ClientConfig) -> anyhow::Result<BaseConsumer> {
    let mut config = config.clone();
    config
        .set("group.id", "trib-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events end a read whose last offsets hold no record (transaction
        // markers, compacted-away records): offset + 1 would never reach the end.
        .set("enable.partition.eof", "true")
        // A start offset deleted by retention meanwhile is an error, never a silent jump to
        // the end (librdkafka's default) that would lose a partition's records.
        .set("auto.offset.reset", "error");
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
    let mut progress = std::time::Instant::now();
    let mut warned = false;
    loop {
        if !follow && progress.elapsed() > STALLED {
            let waiting: Vec<String> = pending.keys().map(|p| format!("{topic}/{p}")).collect();
            bail!(
                "no record from {} for {} s (no leader, or the broker is unreachable)",
                waiting.join(", "),
                STALLED.as_secs()
            );
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                progress = std::time::Instant::now();
                if !follow {
                    pending.remove(&partition);
                    if pending.is_empty() {
                        return Ok(());
                    }
                }
                continue;
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                bail!("records of {topic} were deleted (retention) while being read: start again")
            }
            Some(Err(e)) => {
                // Transient (a broker connection lost and retried by the client): say so once
                // and go on; a read that stops moving ends with the deadline above.
                if !warned {
                    eprintln!("trib: reading {topic}: {e} (retrying)");
                    warned = true;
                }
                continue;
            }
            Some(Ok(message)) => message,
        };
        if message.topic() != topic {
            continue;
        }
        progress = std::time::Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        if !follow {
            let Some(&end) = pending.get(&partition) else {
                // Past its end already (records written since the start).
                continue;
            };
            if offset >= end {
                pending.remove(&partition);
            } else {
                on(&message)?;
                if offset + 1 >= end {
                    pending.remove(&partition);
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
        } else {
            on(&message)?;
        }
    }
}
