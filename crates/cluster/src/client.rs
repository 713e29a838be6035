//! The cluster client: one connection per broker, requests batched per broker (groups by
//! coordinator, partitions by leader) and sent to all brokers at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestGroup};
use kafka_protocol::messages::{ApiKey, BrokerId, GroupId, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::sync::Mutex as AsyncMutex;

use crate::connection::{Connection, api_name};
use crate::{ClusterConfig, Error, TopicPartition, tls};

/// [`Cluster::list_offsets`]: the earliest offset still held.
pub const EARLIEST: i64 = -2;
/// [`Cluster::list_offsets`]: the high watermark.
pub const LATEST: i64 = -1;

/// Topics, partitions and brokers.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// `host:port` by node id.
    pub brokers: BTreeMap<i32, String>,
    /// Partitions by topic, internal topics included.
    pub topics: BTreeMap<String, Vec<PartitionInfo>>,
    /// Names of the internal topics (`__consumer_offsets`, …).
    pub internal: BTreeSet<String>,
}

/// One partition's leader.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: i32,
    /// Leader node id (-1 when leaderless).
    pub leader: i32,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    /// Group id.
    pub group: String,
    /// `consumer` for Kafka consumers; empty for groups that only commit offsets.
    pub protocol_type: String,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, Default)]
pub struct GroupDescription {
    /// `Stable`, `Empty`, `PreparingRebalance`, …
    pub state: String,
    /// `consumer` for Kafka consumers.
    pub protocol_type: String,
    /// Current members.
    pub members: Vec<Member>,
}

/// One member of a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub host: String,
    /// The raw assignment (the consumer protocol's, for `consumer` groups).
    pub assignment: bytes::Bytes,
}

type Slot = Arc<AsyncMutex<Option<Connection>>>;

/// The client. Cheap to share behind an `Arc`; its calls may run concurrently.
pub struct Cluster {
    config: ClusterConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    connections: Mutex<HashMap<String, Slot>>,
    /// The brokers the last metadata named (fallbacks when the bootstrap ones are down).
    known: Mutex<Vec<String>>,
    requests: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("bootstrap", &self.config.bootstrap)
            .finish()
    }
}

/// Versions of each request whose fields this client fills in.
mod versions {
    pub(super) const METADATA: (i16, i16) = (1, 12);
    pub(super) const LIST_GROUPS: (i16, i16) = (0, 5);
    pub(super) const FIND_COORDINATOR: (i16, i16) = (0, 6);
    pub(super) const DESCRIBE_GROUPS: (i16, i16) = (0, 5);
    /// From version 2, null topics means every partition the group committed.
    pub(super) const OFFSET_FETCH: (i16, i16) = (2, 9);
    /// From version 8, one OffsetFetch asks for many groups.
    pub(super) const OFFSET_FETCH_BATCHED: i16 = 8;
    /// From version 4, one FindCoordinator asks for many keys.
    pub(super) const FIND_COORDINATOR_BATCHED: i16 = 4;
    pub(super) const LIST_OFFSETS: (i16, i16) = (1, 9);
    pub(super) const OFFSET_COMMIT: (i16, i16) = (2, 9);
}

/// Kafka's error for a group whose coordinator moved or is loading: ask again next round.
fn is_coordinator_error(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress
    )
}

impl Cluster {
    /// A client for `config`; connects lazily. Fails only on settings (TLS files).
    pub fn new(config: ClusterConfig) -> Result<Cluster, Error> {
        let tls = config.tls.as_ref().map(tls::client_config).transpose()?;
        Ok(Cluster {
            config,
            tls,
            connections: Mutex::new(HashMap::new()),
            known: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
        })
    }

    /// Requests sent since the client was made (for tests and metrics).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Sends the request `build(version)` to `broker` on its connection (opened, secured and
    /// authenticated on first use, and again after a failure).
    async fn request<R: Request>(
        &self,
        broker: &str,
        ours: (i16, i16),
        build: impl FnOnce(i16) -> R,
    ) -> Result<(R::Response, i16), Error> {
        let slot = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(broker.to_owned())
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        let timeout = self.config.request_timeout;
        let work = async {
            // A call dropped midway (its caller cancelled) left a request unanswered or
            // half-written: this connection's next bytes cannot be trusted.
            if guard.as_ref().is_some_and(Connection::interrupted) {
                *guard = None;
            }
            if guard.is_none() {
                *guard = Some(Connection::open(broker, &self.config, self.tls.as_ref()).await?);
            }
            let connection = guard.as_mut().expect("opened above");
            let version = connection.version::<R>(ours)?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let response = connection.call(&build(version), version).await?;
            Ok::<_, Error>((response, version))
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                broker: broker.to_owned(),
                api: api_name(R::KEY),
                timeout_ms: timeout.as_millis(),
            }),
        };
        if matches!(
            result,
            Err(Error::Io { .. }
                | Error::Timeout { .. }
                | Error::Protocol { .. }
                | Error::Auth { .. })
        ) {
            // The connection's state is unknown (a half-read answer): start afresh.
            *guard = None;
        }
        result
    }

    /// Tries each bootstrap broker in turn (then any known one) until one answers.
    async fn any_broker<T, F, Fut>(&self, known: &[String], f: F) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut last = None;
        let mut tried = BTreeSet::new();
        for broker in self.config.bootstrap.iter().chain(known) {
            if !tried.insert(broker.clone()) {
                continue;
            }
            match f(broker.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config {
            key: "bootstrap.servers".into(),
            reason: "names no broker".into(),
        }))
    }

    /// Every topic (internal ones included) with its partitions' leaders, and every broker.
    pub async fn metadata(&self) -> Result<Metadata, Error> {
        // The bootstrap brokers first, then any broker the last answer named.
        let known: Vec<String> = self.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let metadata = self
            .any_broker(&known, |broker| async move {
                let (response, _) = self
                    .request(&broker, versions::METADATA, |v| {
                        let request = MetadataRequest::default().with_topics(None);
                        // The field exists from version 4; it defaults to true there.
                        if v >= 4 {
                            request.with_allow_auto_topic_creation(false)
                        } else {
                            request
                        }
                    })
                    .await?;
                let mut metadata = Metadata::default();
                for b in response.brokers {
                    metadata
                        .brokers
                        .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
                }
                for t in response.topics {
                    let Some(name) = t.name else { continue };
                    // A topic with an error (a leader election, say) is kept with whatever
                    // partitions it lists: a partition without a leader reads as an error, it
                    // does not vanish.
                    let name = name.0.as_str().to_owned();
                    if t.is_internal {
                        metadata.internal.insert(name.clone());
                    }
                    let mut partitions: Vec<PartitionInfo> = t
                        .partitions
                        .iter()
                        .map(|p| PartitionInfo {
                            partition: p.partition_index,
                            leader: p.leader_id.0,
                        })
                        .collect();
                    partitions.sort_by_key(|p| p.partition);
                    metadata.topics.insert(name, partitions);
                }
                Ok(metadata)
            })
            .await?;
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) =
            metadata.brokers.values().cloned().collect();
        Ok(metadata)
    }

    /// Every group on every broker. One broker failing fails the call: a partial list
    /// would make groups look gone.
    pub async fn list_groups(&self, metadata: &Metadata) -> Result<Vec<ListedGroup>, Error> {
        let answers = join_all(metadata.brokers.values().map(|broker| async move {
            let (response, _) = self
                .request(broker, versions::LIST_GROUPS, |_| {
                    ListGroupsRequest::default()
                })
                .await?;
            if let Some(e) = ResponseError::try_from_code(response.error_code) {
                return Err(Error::Kafka {
                    broker: broker.clone(),
                    api: format!("{:?}", ApiKey::ListGroups),
                    error: e,
                });
            }
            Ok(response.groups)
        }))
        .await;
        let mut groups = BTreeMap::new();
        for answer in answers {
            for g in answer? {
                groups.insert(
                    g.group_id.0.as_str().to_owned(),
                    g.protocol_type.as_str().to_owned(),
                );
            }
        }
        Ok(groups
            .into_iter()
            .map(|(group, protocol_type)| ListedGroup {
                group,
                protocol_type,
            })
            .collect())
    }

    /// Each group's coordinator (`host:port`): one batched FindCoordinator where the
    /// broker speaks version 4 or later, one per group otherwise.
    pub async fn coordinators(
        &self,
        metadata: &Metadata,
        groups: &[String],
    ) -> Result<HashMap<String, Result<String, Error>>, Error> {
        if groups.is_empty() {
            return Ok(HashMap::new());
        }
        let known: Vec<String> = metadata.brokers.values().cloned().collect();
        self.any_broker(&known, |broker| async move {
            let mut out = HashMap::new();
            let keys: Vec<StrBytes> = groups
                .iter()
                .map(|g| StrBytes::from_string(g.clone()))
                .collect();
            let (response, version) = self
                .request(&broker, versions::FIND_COORDINATOR, |v| {
                    let request = FindCoordinatorRequest::default().with_key_type(0);
                    if v >= versions::FIND_COORDINATOR_BATCHED {
                        request.with_coordinator_keys(keys.clone())
                    } else {
                        request.with_key(keys[0].clone())
                    }
                })
                .await?;
            let error = |e: ResponseError| Error::Kafka {
                broker: broker.clone(),
                api: format!("{:?}", ApiKey::FindCoordinator),
                error: e,
            };
            if version >= versions::FIND_COORDINATOR_BATCHED {
                for c in response.coordinators {
                    let answer = match ResponseError::try_from_code(c.error_code) {
                        Some(e) => Err(error(e)),
                        None => Ok(format!("{}:{}", c.host.as_str(), c.port)),
                    };
                    out.insert(c.key.as_str().to_owned(), answer);
                }
                return Ok(out);
            }
            // An old broker: one question per group.
            let single = |response: kafka_protocol::messages::FindCoordinatorResponse| {
                match ResponseError::try_from_code(response.error_code) {
                    Some(e) => Err(error(e)),
                    None => Ok(format!("{}:{}", response.host.as_str(), response.port)),
                }
            };
            out.insert(groups[0].clone(), single(response));
            for group in &groups[1..] {
                let answer = self
                    .request(&broker, versions::FIND_COORDINATOR, |_| {
                        FindCoordinatorRequest::default()
                            .with_key_type(0)
                            .with_key(StrBytes::from_string(group.clone()))
                    })
                    .await
                    .and_then(|(r, _)| single(r));
                out.insert(group.clone(), answer);
            }
            Ok(out)
        })
        .await
    }

    /// Groups by coordinator; a group whose coordinator is unknown gets its error.
    fn by_coordinator<T>(
        groups: &[String],
        coordinators: &HashMap<String, Result<String, Error>>,
        out: &mut HashMap<String, Result<T, Error>>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut by = BTreeMap::<String, Vec<String>>::new();
        for group in groups {
            match coordinators.get(group) {
                Some(Ok(broker)) => by.entry(broker.clone()).or_default().push(group.clone()),
                Some(Err(e)) => {
                    out.insert(group.clone(), Err(e.clone()));
                }
                None => {
                    out.insert(
                        group.clone(),
                        Err(Error::Protocol {
                            broker: String::new(),
                            api: format!("{:?}", ApiKey::FindCoordinator),
                            message: format!("no coordinator named for group {group}"),
                        }),
                    );
                }
            }
        }
        by
    }

    /// Describes `groups`: one DescribeGroups per coordinator, all coordinators at once.
    pub async fn describe_groups(
        &self,
        groups: &[String],
        coordinators: &HashMap<String, Result<String, Error>>,
    ) -> HashMap<String, Result<GroupDescription, Error>> {
        let mut out = HashMap::new();
        let by = Self::by_coordinator(groups, coordinators, &mut out);
        let answers = join_all(by.into_iter().map(|(broker, groups)| async move {
            let ids: Vec<GroupId> = groups
                .iter()
                .map(|g| GroupId(StrBytes::from_string(g.clone())))
                .collect();
            let answer = self
                .request(&broker, versions::DESCRIBE_GROUPS, |_| {
                    DescribeGroupsRequest::default().with_groups(ids)
                })
                .await;
            (broker, groups, answer)
        }))
        .await;
        for (broker, groups, answer) in answers {
            match answer {
                Err(e) => out.extend(groups.into_iter().map(|g| (g, Err(e.clone())))),
                Ok((response, _)) => {
                    for g in response.groups {
                        let group = g.group_id.0.as_str().to_owned();
                        let answer = match ResponseError::try_from_code(g.error_code) {
                            Some(e) => Err(Error::Kafka {
                                broker: broker.clone(),
                                api: format!("{:?}", ApiKey::DescribeGroups),
                                error: e,
                            }),
                            None => Ok(GroupDescription {
                                state: g.group_state.as_str().to_owned(),
                                protocol_type: g.protocol_type.as_str().to_owned(),
                                members: g
                                    .members
                                    .into_iter()
                                    .map(|m| Member {
                                        member_id: m.member_id.as_str().to_owned(),
                                        client_id: m.client_id.as_str().to_owned(),
                                        host: m.client_host.as_str().to_owned(),
                                        assignment: m.member_assignment,
                                    })
                                    .collect(),
                            }),
                        };
                        out.insert(group, answer);
                    }
                }
            }
        }
        out
    }

    /// Every committed offset of `groups` (all partitions each committed): one batched
    /// OffsetFetch per coordinator from version 8, one per group before.
    pub async fn committed_offsets(
        &self,
        groups: &[String],
        coordinators: &HashMap<String, Result<String, Error>>,
    ) -> HashMap<String, Result<BTreeMap<TopicPartition, i64>, Error>> {
        let mut out = HashMap::new();
        let by = Self::by_coordinator(groups, coordinators, &mut out);
        let answers = join_all(
            by.into_iter()
                .map(|(broker, groups)| self.fetch_offsets_at(broker, groups)),
        )
        .await;
        for answer in answers {
            out.extend(answer);
        }
        out
    }

    async fn fetch_offsets_at(
        &self,
        broker: String,
        groups: Vec<String>,
    ) -> Vec<(String, Result<BTreeMap<TopicPartition, i64>, Error>)> {
        let error = |e: ResponseError| Error::Kafka {
            broker: broker.clone(),
            api: format!("{:?}", ApiKey::OffsetFetch),
            error: e,
        };
        let batch: Vec<OffsetFetchRequestGroup> = groups
            .iter()
            .map(|g| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(g.clone())))
                    .with_topics(None)
            })
            .collect();
        let first = self
            .request(&broker, versions::OFFSET_FETCH, |v| {
                if v >= versions::OFFSET_FETCH_BATCHED {
                    OffsetFetchRequest::default().with_groups(batch)
                } else {
                    OffsetFetchRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(groups[0].clone())))
                        .with_topics(None)
                }
            })
            .await;
        let (response, version) = match first {
            Ok(answer) => answer,
            Err(e) => return groups.into_iter().map(|g| (g, Err(e.clone()))).collect(),
        };
        let mut out = Vec::with_capacity(groups.len());
        if version >= versions::OFFSET_FETCH_BATCHED {
            let mut answered = BTreeSet::new();
            for g in response.groups {
                let group = g.group_id.0.as_str().to_owned();
                answered.insert(group.clone());
                if let Some(e) = ResponseError::try_from_code(g.error_code) {
                    out.push((group, Err(error(e))));
                    continue;
                }
                let mut offsets = BTreeMap::new();
                for t in g.topics {
                    for p in t.partitions {
                        if p.committed_offset >= 0
                            && ResponseError::try_from_code(p.error_code).is_none()
                        {
                            offsets.insert(
                                (t.name.0.as_str().to_owned(), p.partition_index),
                                p.committed_offset,
                            );
                        }
                    }
                }
                out.push((group, Ok(offsets)));
            }
            for group in groups {
                if !answered.contains(&group) {
                    let missing = Error::Protocol {
                        broker: broker.clone(),
                        api: format!("{:?}", ApiKey::OffsetFetch),
                        message: format!("no answer for group {group}"),
                    };
                    out.push((group, Err(missing)));
                }
            }
            return out;
        }
        // An old broker: one request per group, on the same connection.
        let single = |r: kafka_protocol::messages::OffsetFetchResponse| {
            if let Some(e) = ResponseError::try_from_code(r.error_code) {
                return Err(error(e));
            }
            let mut offsets = BTreeMap::new();
            for t in r.topics {
                for p in t.partitions {
                    if p.committed_offset >= 0
                        && ResponseError::try_from_code(p.error_code).is_none()
                    {
                        offsets.insert(
                            (t.name.0.as_str().to_owned(), p.partition_index),
                            p.committed_offset,
                        );
                    }
                }
            }
            Ok(offsets)
        };
        out.push((groups[0].clone(), single(response)));
        for group in &groups[1..] {
            let answer = self
                .request(&broker, versions::OFFSET_FETCH, |_| {
                    OffsetFetchRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                        .with_topics(None)
                })
                .await
                .and_then(|(r, _)| single(r));
            out.push((group.clone(), answer));
        }
        out
    }

    /// Each partition's high watermark (the offset the next record will get): one
    /// ListOffsets per leader, all leaders at once.
    pub async fn high_watermarks(
        &self,
        metadata: &Metadata,
        partitions: &BTreeSet<TopicPartition>,
    ) -> HashMap<TopicPartition, Result<i64, Error>> {
        self.list_offsets(metadata, partitions, LATEST).await
    }

    /// Each partition's offset for `timestamp`: [`EARLIEST`] (the low watermark),
    /// [`LATEST`] (the high watermark), or Unix milliseconds (the first record at or after
    /// it; -1 when there is none). One ListOffsets per leader, all leaders at once.
    pub async fn list_offsets(
        &self,
        metadata: &Metadata,
        partitions: &BTreeSet<TopicPartition>,
        timestamp: i64,
    ) -> HashMap<TopicPartition, Result<i64, Error>> {
        let mut out = HashMap::new();
        let mut by_leader = BTreeMap::<String, BTreeMap<String, Vec<i32>>>::new();
        for (topic, partition) in partitions {
            let leader = metadata
                .topics
                .get(topic)
                .and_then(|ps| ps.iter().find(|p| p.partition == *partition))
                .and_then(|p| metadata.brokers.get(&p.leader));
            match leader {
                Some(broker) => by_leader
                    .entry(broker.clone())
                    .or_default()
                    .entry(topic.clone())
                    .or_default()
                    .push(*partition),
                None => {
                    out.insert(
                        (topic.clone(), *partition),
                        Err(Error::Protocol {
                            broker: String::new(),
                            api: format!("{:?}", ApiKey::ListOffsets),
                            message: format!("{topic}/{partition} has no leader"),
                        }),
                    );
                }
            }
        }
        let answers = join_all(by_leader.into_iter().map(|(broker, topics)| async move {
            let asked: Vec<TopicPartition> = topics
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                .collect();
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(0)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(topic, partitions)| {
                            ListOffsetsTopic::default()
                                .with_name(TopicName(StrBytes::from_string(topic)))
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|p| {
                                            ListOffsetsPartition::default()
                                                .with_partition_index(p)
                                                .with_current_leader_epoch(-1)
                                                .with_timestamp(timestamp)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let answer = self
                .request(&broker, versions::LIST_OFFSETS, |_| request)
                .await;
            (broker, asked, answer)
        }))
        .await;
        for (broker, asked, answer) in answers {
            match answer {
                Err(e) => out.extend(asked.into_iter().map(|tp| (tp, Err(e.clone())))),
                Ok((response, _)) => {
                    for t in response.topics {
                        for p in t.partitions {
                            let tp = (t.name.0.as_str().to_owned(), p.partition_index);
                            let answer = match ResponseError::try_from_code(p.error_code) {
                                Some(e) => Err(Error::Kafka {
                                    broker: broker.clone(),
                                    api: format!("{:?}", ApiKey::ListOffsets),
                                    error: e,
                                }),
                                None => Ok(p.offset),
                            };
                            out.insert(tp, answer);
                        }
                    }
                    for tp in asked {
                        out.entry(tp).or_insert_with(|| {
                            Err(Error::Protocol {
                                broker: broker.clone(),
                                api: format!("{:?}", ApiKey::ListOffsets),
                                message: "partition missing from the answer".into(),
                            })
                        });
                    }
                }
            }
        }
        out
    }

    /// Commits `offsets` for `group` as an administrator (no member, generation -1): how
    /// an operator resets a group's position. The broker refuses it while the group has
    /// active members.
    pub async fn commit_offsets(
        &self,
        group: &str,
        coordinator: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), Error> {
        let mut topics = BTreeMap::<&str, Vec<OffsetCommitRequestPartition>>::new();
        for ((topic, partition), offset) in offsets {
            topics.entry(topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(-1),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::new())
            .with_retention_time_ms(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let (response, _) = self
            .request(coordinator, versions::OFFSET_COMMIT, |_| request)
            .await?;
        for t in response.topics {
            for p in t.partitions {
                if let Some(e) = ResponseError::try_from_code(p.error_code) {
                    return Err(Error::Kafka {
                        broker: coordinator.to_owned(),
                        api: format!("{:?}", ApiKey::OffsetCommit),
                        error: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether `error` means "ask the coordinator again later".
    pub fn is_retriable(error: &Error) -> bool {
        match error {
            Error::Kafka { error, .. } => is_coordinator_error(*error) || error.is_retriable(),
            Error::Io { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }
}
