//! The lag monitor: on an interval, reads every consumer group's members and committed
//! offsets and every partition's high watermark through one cluster client (a few batched
//! requests per broker, however many groups there are), keeps Burrow's window of commits
//! per group-partition, and evaluates it with Burrow's rules (see `rules`).
//!
//! Commit times: Kafka's OffsetFetch carries none (Burrow reads them from
//! `__consumer_offsets`, which the dev broker does not have), so a commit is known when a
//! group's offset differs from the one read before, and timed when it was first read. A
//! group re-committing the same offset therefore looks like one that stopped committing:
//! it reads STOP (once the last change is older than the window spans) rather than STALL.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Cluster, Error as ClusterError, TopicPartition};
use serde::Serialize;

use super::assignment;
use super::rules::{self, Commit, Evaluation, Partition, Status};

/// `GET /lag`: every group on the cluster with its evaluated partitions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LagReport {
    /// Groups by name.
    pub groups: Vec<GroupLag>,
}

/// One consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    /// Group id.
    pub group: String,
    /// The worst of its partitions' statuses, capped at ERR as Burrow caps it (a STOP,
    /// STALL or REWIND partition makes the group ERR); ERR too when it could not be read.
    pub status: Status,
    /// The share of its partitions whose window of commits is full (0 to 1).
    pub complete: f64,
    /// Active members when last read.
    pub members: usize,
    /// Why the group could not be read (then ERR), or described (members unknown; its
    /// status still comes from its offsets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Partitions the group committed offsets for or has assigned, by topic and number.
    pub partitions: Vec<PartitionLag>,
}

/// One partition of one group.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset; `null` while the group has committed none.
    pub committed: Option<i64>,
    /// The partition's high watermark; `null` if it could not be read.
    pub high_watermark: Option<i64>,
    /// `high_watermark - committed`; `null` when either is unknown.
    pub lag: Option<i64>,
    /// This partition's evaluation.
    pub status: Status,
    /// How full its window of commits is (0 to 1); a partial window is evaluated too.
    pub complete: f64,
}

/// Burrow's evaluator settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Commits kept and evaluated per group-partition (Burrow's `intervals`).
    pub window: usize,
    /// Lag at or below this is no lag (Burrow's `allowed-lag`).
    pub allowed_lag: i64,
    /// A window less complete than this is not judged (Burrow's `minimum-complete`).
    pub minimum_complete: f64,
}

/// What the monitor remembers of one group-partition.
#[derive(Debug, Default)]
struct History {
    commits: VecDeque<Commit>,
}

/// Reads the cluster and evaluates every group.
#[derive(Debug)]
pub struct LagMonitor {
    cluster: Cluster,
    settings: Settings,
    /// (group, topic, partition) → its commits.
    history: HashMap<(String, String, i32), History>,
    /// The partition's end at recent readings (Burrow's broker offsets).
    ends: HashMap<TopicPartition, VecDeque<i64>>,
    last: LagReport,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl LagMonitor {
    /// A monitor reading through `cluster`.
    pub fn new(cluster: Cluster, settings: Settings) -> LagMonitor {
        LagMonitor {
            cluster,
            settings: Settings {
                window: settings.window.max(1),
                ..settings
            },
            history: HashMap::new(),
            ends: HashMap::new(),
            last: LagReport::default(),
        }
    }

    /// The cluster client (requests counted by tests).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Reads the cluster once, records what changed and returns the evaluation. When the
    /// groups cannot be listed, every known group turns ERR.
    pub async fn observe(&mut self) -> LagReport {
        let report = match self.read().await {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(%error, "Lag monitor");
                let mut report = self.last.clone();
                for group in &mut report.groups {
                    group.status = Status::Err;
                    group.error = Some(error.clone());
                    for p in &mut group.partitions {
                        p.status = Status::Err;
                    }
                }
                report
            }
        };
        self.last = report.clone();
        report
    }

    /// Reads the cluster once like [`observe`](Self::observe), but says why when the
    /// cluster could not be read instead of reporting every group ERR.
    pub async fn try_observe(&mut self) -> Result<LagReport, String> {
        let report = self.read().await?;
        self.last = report.clone();
        Ok(report)
    }

    async fn read(&mut self) -> Result<LagReport, String> {
        let metadata = self
            .cluster
            .metadata()
            .await
            .map_err(|e| format!("cannot read topics: {e}"))?;
        let listed = self
            .cluster
            .list_groups(&metadata)
            .await
            .map_err(|e| format!("cannot list groups: {e}"))?;
        let names: Vec<String> = listed.iter().map(|g| g.group.clone()).collect();
        let coordinators = self
            .cluster
            .coordinators(&metadata, &names)
            .await
            .map_err(|e| format!("cannot find group coordinators: {e}"))?;
        let (described, committed) = tokio::join!(
            self.cluster.describe_groups(&names, &coordinators),
            self.cluster.committed_offsets(&names, &coordinators),
        );
        let exists = |(topic, _): &TopicPartition| {
            metadata.topics.contains_key(topic) && !metadata.internal.contains(topic)
        };

        // Every partition some group committed or is assigned, on a topic that exists.
        let mut groups = Vec::with_capacity(listed.len());
        let mut wanted = BTreeSet::new();
        for g in &listed {
            let description = described.get(&g.group).and_then(|d| d.as_ref().ok());
            let consumer = description
                .map_or(g.protocol_type.as_str(), |d| d.protocol_type.as_str())
                == "consumer";
            let assigned: BTreeSet<TopicPartition> = match description {
                Some(d) if consumer => d
                    .members
                    .iter()
                    .flat_map(|m| assignment::parse(&m.assignment))
                    .filter(exists)
                    .collect(),
                _ => BTreeSet::new(),
            };
            let members = description.map_or(0, |d| d.members.len());
            // Members unknown is worth saying, though the offsets still judge the group.
            let described_error = match described.get(&g.group) {
                Some(Err(e)) => Some(format!("cannot describe the group: {e}")),
                _ => None,
            };
            let offsets = match committed.get(&g.group) {
                Some(Ok(offsets)) => Ok(offsets
                    .iter()
                    .filter(|(tp, _)| exists(tp))
                    .map(|(tp, o)| (tp.clone(), *o))
                    .collect::<BTreeMap<_, _>>()),
                Some(Err(e)) => Err(format!("cannot read committed offsets: {e}")),
                None => Err("no committed offsets answered".to_owned()),
            };
            if let Ok(offsets) = &offsets {
                wanted.extend(offsets.keys().cloned());
                wanted.extend(assigned.iter().cloned());
            }
            groups.push(GroupRead {
                name: g.group.clone(),
                members,
                assigned,
                offsets,
                described_error,
            });
        }
        let ends = self.cluster.high_watermarks(&metadata, &wanted).await;
        Ok(self.evaluate(groups, &ends))
    }

    fn evaluate(
        &mut self,
        groups: Vec<GroupRead>,
        ends: &HashMap<TopicPartition, Result<i64, ClusterError>>,
    ) -> LagReport {
        let now = now_ms();
        let window = self.settings.window;
        for (tp, end) in ends {
            if let Ok(end) = end {
                let seen = self.ends.entry(tp.clone()).or_default();
                seen.push_back(*end);
                while seen.len() > window {
                    seen.pop_front();
                }
            }
        }
        self.ends.retain(|tp, _| ends.contains_key(tp));

        let mut report = LagReport::default();
        let mut seen = BTreeSet::new();
        // Groups that could not be read this round: unreadable is not gone, their windows
        // are kept.
        let mut unread = BTreeSet::new();
        for GroupRead {
            name,
            members,
            assigned,
            offsets,
            described_error,
        } in groups
        {
            let offsets = match offsets {
                Ok(offsets) => offsets,
                Err(error) => {
                    unread.insert(name.clone());
                    report.groups.push(GroupLag {
                        group: name,
                        status: Status::Err,
                        complete: 0.0,
                        members,
                        error: Some(error),
                        partitions: Vec::new(),
                    });
                    continue;
                }
            };
            let keys: BTreeSet<TopicPartition> =
                offsets.keys().chain(assigned.iter()).cloned().collect();
            let mut partitions = Vec::with_capacity(keys.len());
            let mut evaluations = Vec::with_capacity(keys.len());
            for key in keys {
                let end = ends.get(&key).and_then(|e| e.as_ref().ok()).copied();
                let committed = offsets.get(&key).copied();
                let history_key = (name.clone(), key.0.clone(), key.1);
                if committed.is_some() {
                    // Kept even when the end could not be read this round.
                    seen.insert(history_key.clone());
                }
                let evaluation = match (committed, end) {
                    (Some(committed), Some(end)) => {
                        let history = self.history.entry(history_key).or_default();
                        // A commit is known when the offset changed since the last reading.
                        if history.commits.back().map(|c| c.offset) != Some(committed) {
                            history.commits.push_back(Commit {
                                offset: committed,
                                timestamp_ms: now,
                                lag: Some((end - committed).max(0)),
                            });
                            while history.commits.len() > window {
                                history.commits.pop_front();
                            }
                        }
                        let commits: Vec<Commit> = history.commits.iter().copied().collect();
                        let broker_offsets: Vec<i64> = self
                            .ends
                            .get(&key)
                            .map(|e| e.iter().copied().collect())
                            .unwrap_or_default();
                        rules::evaluate(
                            &Partition {
                                commits: &commits,
                                capacity: window,
                                broker_offsets: &broker_offsets,
                                current_lag: (end - committed).max(0),
                            },
                            now,
                            self.settings.allowed_lag,
                            self.settings.minimum_complete,
                        )
                    }
                    // Nothing committed yet: nothing to judge.
                    (None, _) => Evaluation {
                        status: Status::Ok,
                        complete: 0.0,
                    },
                    (Some(_), None) => Evaluation {
                        status: Status::Err,
                        complete: 0.0,
                    },
                };
                evaluations.push(evaluation);
                partitions.push(PartitionLag {
                    topic: key.0,
                    partition: key.1,
                    committed,
                    high_watermark: end,
                    lag: committed.zip(end).map(|(c, h)| (h - c).max(0)),
                    status: evaluation.status,
                    complete: evaluation.complete,
                });
            }
            let group = rules::group(evaluations);
            report.groups.push(GroupLag {
                group: name,
                status: group.status,
                complete: group.complete,
                members,
                error: described_error,
                partitions,
            });
        }
        // Forget groups and partitions that are gone.
        self.history
            .retain(|k, _| seen.contains(k) || unread.contains(&k.0));
        report.groups.sort_by(|a, b| a.group.cmp(&b.group));
        report
    }
}

/// One group as read.
#[derive(Debug)]
struct GroupRead {
    name: String,
    members: usize,
    assigned: BTreeSet<TopicPartition>,
    /// Committed offsets, or why they could not be read.
    offsets: Result<BTreeMap<TopicPartition, i64>, String>,
    /// Why the group could not be described (members unknown), if so.
    described_error: Option<String>,
}
