//! The lag monitor: on an interval, reads every consumer group's membership and committed
//! offsets and every partition's high watermark, keeps the last N observations per
//! group-partition, and evaluates them with Burrow's rules (see `rules`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use tributary_runtime::rdkafka::config::ClientConfig;
use tributary_runtime::rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_runtime::rdkafka::error::KafkaError;
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};

use crate::assignment;
use crate::rules::{self, Membership, Observation, Status};

/// How long one request to the cluster may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Metric names (before the configured prefix).
pub mod names {
    /// Gauge, tags `group`, `topic`, `partition`: high watermark minus committed offset.
    pub const LAG: &str = "kafka.consumer.lag";
    /// Gauge, tag `group`: 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND, 5 ERR.
    pub const STATUS: &str = "kafka.consumer.status";
}

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
    /// The worst of its partitions' statuses (ERR when the group could not be read).
    pub status: Status,
    /// Active members when last read.
    pub members: usize,
    /// Why the group could not be read (ERR only).
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
}

/// A group as listed by the cluster.
#[derive(Debug, Clone)]
struct GroupInfo {
    name: String,
    members: usize,
    assigned: BTreeSet<(String, i32)>,
}

impl GroupInfo {
    fn membership(&self) -> Membership {
        if self.members == 0 {
            Membership::Empty
        } else {
            Membership::Active
        }
    }
}

/// Reads the cluster and evaluates every group. Its calls block: run it off the async
/// runtime.
pub struct LagMonitor {
    base: ClientConfig,
    window: usize,
    cluster: BaseConsumer,
    /// One client per group, used only to fetch that group's committed offsets (it never
    /// subscribes, so it never joins the group or commits).
    readers: HashMap<String, BaseConsumer>,
    history: HashMap<(String, String, i32), VecDeque<Observation>>,
    last: LagReport,
}

impl std::fmt::Debug for LagMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagMonitor")
            .field("window", &self.window)
            .field("groups", &self.readers.len())
            .finish()
    }
}

impl LagMonitor {
    /// A monitor using `base` (brokers and client properties) that keeps `window`
    /// observations per group-partition.
    pub fn new(base: ClientConfig, window: usize) -> Result<LagMonitor, KafkaError> {
        let cluster = base.create()?;
        Ok(LagMonitor {
            base,
            window: window.max(2),
            cluster,
            readers: HashMap::new(),
            history: HashMap::new(),
            last: LagReport::default(),
        })
    }

    /// Reads the cluster once, records one observation per group-partition and returns
    /// the evaluation. When the group list cannot be read, every known group turns ERR.
    pub fn observe(&mut self) -> LagReport {
        let read = self
            .read_groups()
            .map_err(|e| format!("cannot list groups: {e}"))
            .and_then(|groups| self.evaluate_groups(groups));
        let report = match read {
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

    /// Every group with its members (ListGroups, then DescribeGroups at each coordinator).
    /// A broker that describes members without their assignments (the dev broker) yields
    /// groups whose partitions are known from their commits only.
    fn read_groups(&mut self) -> Result<Vec<GroupInfo>, String> {
        let list = self
            .cluster
            .fetch_group_list(None, REQUEST_TIMEOUT)
            .map_err(|e| e.to_string())?;
        Ok(list
            .groups()
            .iter()
            .map(|g| GroupInfo {
                name: g.name().to_owned(),
                members: g.members().len(),
                assigned: if g.protocol_type() == "consumer" {
                    g.members()
                        .iter()
                        .filter_map(|m| m.assignment())
                        .flat_map(assignment::parse)
                        .collect()
                } else {
                    BTreeSet::new()
                },
            })
            .collect())
    }

    /// Every partition of every non-internal topic on the cluster.
    fn partitions(&self) -> Result<Vec<(String, i32)>, KafkaError> {
        let metadata = self.cluster.fetch_metadata(None, REQUEST_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__"))
            .flat_map(|t| {
                t.partitions()
                    .iter()
                    .map(move |p| (t.name().to_owned(), p.id()))
            })
            .collect())
    }

    fn committed(
        &mut self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<BTreeMap<(String, i32), i64>, KafkaError> {
        if !self.readers.contains_key(group) {
            let reader: BaseConsumer = self
                .base
                .clone()
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .create()?;
            self.readers.insert(group.to_owned(), reader);
        }
        let reader = &self.readers[group];
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        let committed = reader.committed_offsets(tpl, REQUEST_TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some(((e.topic().to_owned(), e.partition()), n)),
                _ => None,
            })
            .collect())
    }

    fn evaluate_groups(&mut self, groups: Vec<GroupInfo>) -> Result<LagReport, String> {
        let partitions = self
            .partitions()
            .map_err(|e| format!("cannot read topics: {e}"))?;
        let mut watermarks: HashMap<(String, i32), Option<i64>> = HashMap::new();
        let mut report = LagReport::default();
        let mut seen_keys = BTreeSet::new();
        for info in groups {
            let committed = match self.committed(&info.name, &partitions) {
                Ok(c) => c,
                Err(e) => {
                    report.groups.push(GroupLag {
                        group: info.name,
                        status: Status::Err,
                        members: info.members,
                        error: Some(format!("cannot read committed offsets: {e}")),
                        partitions: Vec::new(),
                    });
                    continue;
                }
            };
            let mut keys: BTreeSet<(String, i32)> = committed.keys().cloned().collect();
            keys.extend(info.assigned.iter().cloned());
            let mut group = GroupLag {
                group: info.name.clone(),
                status: Status::Ok,
                members: info.members,
                error: None,
                partitions: Vec::with_capacity(keys.len()),
            };
            for key in keys {
                let high_watermark = *watermarks.entry(key.clone()).or_insert_with(|| {
                    self.cluster
                        .fetch_watermarks(&key.0, key.1, REQUEST_TIMEOUT)
                        .map(|(_, high)| high)
                        .ok()
                });
                let committed = committed.get(&key).copied();
                let history_key = (info.name.clone(), key.0.clone(), key.1);
                let status = match (committed, high_watermark) {
                    (Some(committed), Some(high_watermark)) => {
                        let history = self.history.entry(history_key.clone()).or_default();
                        history.push_back(Observation {
                            committed,
                            high_watermark,
                        });
                        while history.len() > self.window {
                            history.pop_front();
                        }
                        let window: Vec<Observation> = history.iter().copied().collect();
                        rules::evaluate(&window, self.window, info.membership())
                    }
                    // Nothing committed yet: nothing to judge.
                    (None, _) => Status::Ok,
                    (Some(_), None) => Status::Err,
                };
                seen_keys.insert(history_key);
                group.partitions.push(PartitionLag {
                    topic: key.0,
                    partition: key.1,
                    committed,
                    high_watermark,
                    lag: committed.zip(high_watermark).map(|(c, h)| (h - c).max(0)),
                    status,
                });
            }
            group.status = rules::worst(group.partitions.iter().map(|p| p.status));
            report.groups.push(group);
        }
        // Forget groups and partitions that are gone.
        self.history.retain(|k, _| seen_keys.contains(k));
        let listed: BTreeSet<&str> = report.groups.iter().map(|g| g.group.as_str()).collect();
        self.readers.retain(|g, _| listed.contains(g.as_str()));
        report.groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(report)
    }
}

/// Sends the report as gauges.
pub fn export(report: &LagReport) {
    for group in &report.groups {
        metrics::gauge!(names::STATUS, "group" => group.group.clone())
            .set(f64::from(group.status.code()));
        for p in &group.partitions {
            if let Some(lag) = p.lag {
                metrics::gauge!(names::LAG, "group" => group.group.clone(), "topic" => p.topic.clone(), "partition" => p.partition.to_string())
                    .set(lag as f64);
            }
        }
    }
}
