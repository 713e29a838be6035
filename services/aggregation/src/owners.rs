//! Where each partition's windows are served: every instance publishes the partitions whose
//! state it holds and the address of its aggregates API to a compacted topic of its group
//! (`<group>.instances`), and reads everyone's, so that a key owned elsewhere is answered
//! with its owner's address (Kafka Streams' `application.server`, which librdkafka cannot
//! carry in the group protocol).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tributary_runtime::Shutdown;
use tributary_runtime::rdkafka::consumer::{Consumer, StreamConsumer};
use tributary_runtime::rdkafka::message::Message;
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};
use tributary_runtime::topics::TopicSpec;
use tributary_state::StateReader;

/// How often an instance says again what it serves, when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A claim not renewed for this long is ignored (its instance stopped without saying so).
const STALE_MS: i64 = 30_000;

/// What one instance serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Its aggregates API, e.g. `http://aggregation-1.aggregation:8082`.
    pub url: String,
    /// The partitions whose state it holds, ready.
    pub partitions: Vec<i32>,
    /// When it said so, ms since the epoch.
    pub at_ms: i64,
}

/// Every instance's latest claim, by URL.
#[derive(Debug, Clone)]
pub struct Owners {
    me: String,
    claims: Arc<Mutex<HashMap<String, Claim>>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Owners {
    /// Owners known to no one but `me` (until claims arrive).
    pub fn new(me: &str) -> Owners {
        Owners {
            me: me.to_owned(),
            claims: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// This instance's URL.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Records a claim read from the topic (`None`: the instance at `url` left).
    pub fn record(&self, url: &str, claim: Option<Claim>) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        match claim {
            Some(claim) => {
                claims.insert(url.to_owned(), claim);
            }
            None => {
                claims.remove(url);
            }
        }
    }

    /// The URL of the other instance that serves `partition`: of the fresh claims that
    /// name it, the newest (a partition that moved is claimed by its new owner later).
    pub fn owner_of(&self, partition: i32) -> Option<String> {
        let now = now_ms();
        let claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims
            .values()
            .filter(|c| c.url != self.me && now - c.at_ms < STALE_MS)
            .filter(|c| c.partitions.contains(&partition))
            .max_by_key(|c| c.at_ms)
            .map(|c| c.url.clone())
    }
}

/// The topic of `group`'s claims.
pub fn topic(group: &str) -> String {
    format!("{group}.instances")
}

/// Creates the claims topic, then publishes this instance's claim whenever the partitions
/// it serves change (and every [`HEARTBEAT`]), and reads every instance's claims, until
/// `shutdown`; on the way out it withdraws its claim.
pub async fn start(
    runtime: &tributary_runtime::RuntimeConfig,
    service: &str,
    url: &str,
    reader: StateReader,
    shutdown: Shutdown,
) -> anyhow::Result<Owners> {
    let topic = topic(&runtime.group(service));
    let admin = runtime.admin_config(service)?;
    let spec = TopicSpec::new(&topic, 1)
        .with_config("cleanup.policy", "compact")
        .with_config("min.compaction.lag.ms", "60000");
    tributary_runtime::topics::apply(&admin, &[spec], -1, false)
        .await
        .with_context(|| format!("creating {topic}"))?;
    let producer: FutureProducer = runtime
        .producer_config(service)?
        .create()
        .context("creating the claims producer")?;
    // A reader, never a group member: it assigns itself the one partition.
    let consumer: StreamConsumer = {
        let mut config = runtime.admin_config(service)?;
        config
            .set("group.id", format!("{topic}.reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        config.create().context("creating the claims reader")?
    };
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .context("assigning the claims topic")?;
    consumer
        .assign(&assignment)
        .context("assigning the claims topic")?;

    let owners = Owners::new(url);
    let reading = owners.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = stop.wait() => break,
                message = consumer.recv() => message,
            };
            match message {
                Ok(m) => {
                    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    match m.payload().map(serde_json::from_slice::<Claim>) {
                        Some(Ok(claim)) => reading.record(key, Some(claim)),
                        None => reading.record(key, None),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, key, "Unreadable claim on the instances topic; ignored");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Reading the instances topic failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    let me = url.to_owned();
    tokio::spawn(async move {
        let mut said: Option<Vec<i32>> = None;
        let mut said_at = tokio::time::Instant::now();
        loop {
            let mut partitions = reader.owned();
            partitions.sort_unstable();
            if said.as_ref() != Some(&partitions) || said_at.elapsed() >= HEARTBEAT {
                let claim = Claim {
                    url: me.clone(),
                    partitions: partitions.clone(),
                    at_ms: now_ms(),
                };
                let payload = serde_json::to_vec(&claim).unwrap_or_default();
                let record = FutureRecord::to(&topic).key(&me).payload(&payload);
                match producer.send(record, Duration::from_secs(5)).await {
                    Ok(_) => {
                        said = Some(partitions);
                        said_at = tokio::time::Instant::now();
                    }
                    Err((e, _)) => {
                        tracing::warn!(error = %e, "Publishing this instance's partitions failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        // Withdrawn: whoever takes the partitions over claims them.
        let record = FutureRecord::<str, [u8]>::to(&topic).key(&me);
        if let Err((e, _)) = producer.send(record, Duration::from_secs(2)).await {
            tracing::warn!(error = %e, "Withdrawing this instance's claim failed; it goes stale");
        }
    });
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(url: &str, partitions: &[i32], at_ms: i64) -> Option<Claim> {
        Some(Claim {
            url: url.into(),
            partitions: partitions.to_vec(),
            at_ms,
        })
    }

    #[test]
    fn the_owner_is_the_newest_fresh_claim_of_another_instance() {
        let now = now_ms();
        let owners = Owners::new("http://me");
        owners.record("http://me", claim("http://me", &[0, 1], now));
        owners.record("http://a", claim("http://a", &[2, 3], now - 5_000));
        // b took partition 3 over after a said it had it.
        owners.record("http://b", claim("http://b", &[3, 4], now - 1_000));
        owners.record(
            "http://gone",
            claim("http://gone", &[5], now - STALE_MS - 1),
        );
        assert_eq!(owners.owner_of(0), None, "never this instance");
        assert_eq!(owners.owner_of(2).as_deref(), Some("http://a"));
        assert_eq!(owners.owner_of(3).as_deref(), Some("http://b"));
        assert_eq!(owners.owner_of(5), None, "a stale claim is ignored");
        owners.record("http://a", None);
        assert_eq!(owners.owner_of(2), None, "a withdrawn claim is gone");
    }
}
