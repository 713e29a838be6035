//! Declarative topics: parse `deploy/topics.yaml` and apply it to a cluster.
//!
//! Applying is idempotent and conservative: missing topics are created; a topic that
//! exists with another partition count or config is *reported*, never altered, because
//! changing partitions breaks co-partitioning and changing retention can lose data. Nothing
//! is ever deleted. Brokers that answer DescribeConfigs with no entries (the dev broker
//! does) get their configs reported as unknown rather than as differences.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;

/// How long one admin round trip may take before the apply fails.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long comparing configs may take: it only informs a report.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why topics could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid topic declaration.
    #[error("invalid topic declaration: {0}")]
    Parse(String),
    /// The cluster refused or did not answer.
    #[error("kafka admin: {0}")]
    Kafka(#[from] KafkaError),
    /// One topic could not be created.
    #[error("cannot create topic {topic}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// A blocking admin call could not run.
    #[error("admin task failed: {0}")]
    Task(String),
}

/// The parsed `deploy/topics.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Values for topics that do not set their own.
    #[serde(default)]
    pub defaults: Defaults,
    /// The declared topics.
    pub topics: Vec<TopicSpec>,
}

/// File-wide defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Replication factor; -1 means the broker's `default.replication.factor`.
    #[serde(default = "broker_default")]
    pub replication_factor: i32,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            replication_factor: broker_default(),
        }
    }
}

fn broker_default() -> i32 {
    -1
}

/// One declared topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor, overriding the default.
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Topic configs (`cleanup.policy`, `retention.ms`, ...).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions and the given configs.
    pub fn new(name: impl Into<String>, partitions: i32) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: None,
            config: BTreeMap::new(),
        }
    }

    /// Adds one config entry.
    pub fn with_config(mut self, key: &str, value: &str) -> TopicSpec {
        self.config.insert(key.to_owned(), value.to_owned());
        self
    }
}

impl TopicsFile {
    /// Parses a declaration, checking names and partition counts.
    pub fn parse(text: &str) -> Result<TopicsFile, TopicsError> {
        let file: TopicsFile =
            serde_yaml_ng::from_str(text).map_err(|e| TopicsError::Parse(e.to_string()))?;
        for topic in &file.topics {
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if topic.name.is_empty() || topic.name.len() > 249 || !topic.name.chars().all(legal) {
                return Err(TopicsError::Parse(format!(
                    "illegal topic name {:?}",
                    topic.name
                )));
            }
            if topic.partitions < 1 {
                return Err(TopicsError::Parse(format!(
                    "{}: partitions must be >= 1",
                    topic.name
                )));
            }
        }
        let mut names: Vec<&str> = file.topics.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(TopicsError::Parse(format!("{} is declared twice", w[0])));
        }
        Ok(file)
    }

    /// Reads and parses a declaration file.
    pub fn load(path: &Path) -> Result<TopicsFile, TopicsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopicsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        TopicsFile::parse(&text)
    }
}

/// What one apply found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Topics created (or, in a dry run, that would be created).
    pub created: Vec<String>,
    /// Topics that exist as declared.
    pub unchanged: Vec<String>,
    /// Existing topics that differ from the declaration; left as they are.
    pub differences: Vec<Difference>,
    /// Existing topics whose configs the broker did not report.
    pub unknown_config: Vec<String>,
}

/// One way an existing topic differs from its declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The topic.
    pub topic: String,
    /// What differs (`partitions`, or a config name).
    pub setting: String,
    /// The declared value.
    pub declared: String,
    /// The value on the cluster.
    pub actual: String,
}

impl std::fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for t in &self.created {
            writeln!(f, "  + {t}")?;
        }
        for d in &self.differences {
            writeln!(
                f,
                "  ~ {}: {} is {} on the cluster, {} declared (left unchanged)",
                d.topic, d.setting, d.actual, d.declared
            )?;
        }
        for t in &self.unknown_config {
            writeln!(f, "  ? {t}: the broker does not report topic configs")?;
        }
        write!(
            f,
            "{} created, {} unchanged, {} differing, {} with unknown config",
            self.created.len(),
            self.unchanged.len(),
            self.differences.len(),
            self.unknown_config.len()
        )
    }
}

/// Applies declared topics to the cluster behind `config` (bootstrap servers and any
/// client settings). With `dry_run`, reports what it would create and creates nothing.
pub async fn apply(
    config: &ClientConfig,
    topics: &[TopicSpec],
    default_replication: i32,
    dry_run: bool,
) -> Result<ApplyReport, TopicsError> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let existing = partition_counts(config).await?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let mut report = ApplyReport::default();

    let missing: Vec<&TopicSpec> = topics
        .iter()
        .filter(|t| !existing.contains_key(&t.name))
        .collect();
    if !missing.is_empty() && !dry_run {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                let replication = t.replication_factor.unwrap_or(default_replication);
                t.config.iter().fold(
                    NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication)),
                    |topic, (k, v)| topic.set(k, v),
                )
            })
            .collect();
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(_) => {}
                // Another instance created it between our metadata read and now: fine.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
            }
        }
    }
    report.created = missing.iter().map(|t| t.name.clone()).collect();

    let present: Vec<&TopicSpec> = topics
        .iter()
        .filter(|t| existing.contains_key(&t.name))
        .collect();
    let specifiers: Vec<ResourceSpecifier<'_>> = present
        .iter()
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    // Configs are only compared, never changed: a cluster that will not describe them (no
    // DescribeConfigs permission, or a broker without the API) leaves them unknown, and
    // the topics are used all the same.
    let configs = if specifiers.is_empty() {
        Vec::new()
    } else {
        let options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
        admin
            .describe_configs(&specifiers, &options)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "Cannot describe topic configs; reporting them unknown");
                Vec::new()
            })
    };
    for (i, spec) in present.iter().enumerate() {
        let before = report.differences.len();
        let actual_partitions = existing[&spec.name];
        if actual_partitions != spec.partitions {
            report.differences.push(Difference {
                topic: spec.name.clone(),
                setting: "partitions".into(),
                declared: spec.partitions.to_string(),
                actual: actual_partitions.to_string(),
            });
        }
        match configs.get(i) {
            Some(Ok(resource)) if !resource.entries.is_empty() => {
                for (key, declared) in &spec.config {
                    let actual = resource
                        .get(key)
                        .and_then(|e| e.value.clone())
                        .unwrap_or_else(|| "unset".into());
                    if &actual != declared {
                        report.differences.push(Difference {
                            topic: spec.name.clone(),
                            setting: key.clone(),
                            declared: declared.clone(),
                            actual,
                        });
                    }
                }
            }
            _ if spec.config.is_empty() => {}
            _ => report.unknown_config.push(spec.name.clone()),
        }
        if report.differences.len() == before {
            report.unchanged.push(spec.name.clone());
        }
    }
    Ok(report)
}

/// Applies a whole declaration file.
pub async fn apply_file(
    config: &ClientConfig,
    file: &TopicsFile,
    dry_run: bool,
) -> Result<ApplyReport, TopicsError> {
    apply(
        config,
        &file.topics,
        file.defaults.replication_factor,
        dry_run,
    )
    .await
}

/// Partition count of every topic on the cluster.
pub async fn partition_counts(config: &ClientConfig) -> Result<BTreeMap<String, i32>, TopicsError> {
    let config = config.clone();
    // Metadata requests block; keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(None, ADMIN_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    })
    .await
    .map_err(|e| TopicsError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_declaration_parses_and_co_partitions_catalog_and_activity() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/topics.yaml");
        let file = TopicsFile::load(&path).unwrap();
        let partitions = |name: &str| {
            file.topics
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("{name} declared"))
                .partitions
        };
        for topic in [
            "catalog.products.v1",
            "catalog.prices.v1",
            "catalog.stock.v1",
            "activity.events.v1",
        ] {
            assert_eq!(partitions(topic), 6, "{topic}");
        }
        for topic in ["catalog.products-enriched.v1", "analytics.aggregates.v1"] {
            assert!(partitions(topic) >= 1);
        }
    }

    #[test]
    fn duplicate_names_and_bad_partition_counts_are_refused() {
        let dup = "topics:\n  - {name: a, partitions: 1}\n  - {name: a, partitions: 2}\n";
        assert!(
            matches!(TopicsFile::parse(dup), Err(TopicsError::Parse(m)) if m.contains("twice"))
        );
        let zero = "topics:\n  - {name: a, partitions: 0}\n";
        assert!(TopicsFile::parse(zero).is_err());
        let bad_name = "topics:\n  - {name: 'a b', partitions: 1}\n";
        assert!(TopicsFile::parse(bad_name).is_err());
        let unknown = "topics:\n  - {name: a, partitions: 1, partitons: 3}\n";
        assert!(TopicsFile::parse(unknown).is_err());
    }
}
