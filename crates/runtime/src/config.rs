//! Typed configuration every service flattens into its own clap struct.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rdkafka::ClientConfig;

use crate::kafka::{PropertyError, check_unprotected, parse_properties, redacted};

/// One `--kafka-config` value (or the whole `KAFKA_CONFIG`): librdkafka properties in the
/// form [`parse_properties`] reads. Its `Debug` hides secret values.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSetting(pub String);

impl std::fmt::Debug for KafkaSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match parse_properties(&self.0) {
            Ok(pairs) => write!(f, "{:?}", redacted(&pairs)),
            Err(_) => f.write_str("\"<malformed>\""),
        }
    }
}

impl std::str::FromStr for KafkaSetting {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<KafkaSetting, PropertyError> {
        parse_properties(s)?;
        Ok(KafkaSetting(s.to_owned()))
    }
}

/// Checks a `--kafka-config` value while the command line is read.
pub fn parse_setting(s: &str) -> Result<KafkaSetting, PropertyError> {
    s.parse()
}

impl From<&str> for KafkaSetting {
    fn from(s: &str) -> KafkaSetting {
        KafkaSetting(s.to_owned())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Settings shared by every service. Every flag has an environment variable and a default
/// that runs against the local stack.
#[derive(Debug, Clone, Args)]
pub struct RuntimeConfig {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Extra librdkafka properties, `key=value`; repeatable. `KAFKA_CONFIG` and each flag
    /// take a list separated by `,` (or by `;`, so that values may hold commas). Applied
    /// after the runtime's defaults; the settings the delivery guarantees rest on
    /// (auto commit and offset store, isolation level, idempotence, acks, group ids) are
    /// refused with an error.
    #[arg(long = "kafka-config", env = "KAFKA_CONFIG", value_parser = parse_setting)]
    pub kafka_config: Vec<KafkaSetting>,
    /// Consumer group id (default: the service's name). Dead letters go to `<group>.dlq`.
    #[arg(long, env = "GROUP_ID")]
    pub group_id: Option<String>,
    /// Static group membership: a stable id per instance (a StatefulSet pod's name), so a
    /// restart within the session timeout keeps its partitions without a rebalance.
    #[arg(long, env = "GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// Kafka client id (default: the service's name).
    #[arg(long, env = "CLIENT_ID")]
    pub client_id: Option<String>,
    /// Admin HTTP address (health, readiness, metrics, status); default: the service's port
    /// on all interfaces.
    #[arg(long, env = "ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// StatsD/DogStatsD agent address.
    #[arg(long, env = "STATSD_ADDR", default_value = "127.0.0.1:8125")]
    pub statsd_addr: String,
    /// Prefix of every metric name.
    #[arg(long, env = "METRICS_PREFIX", default_value = "tributary")]
    pub metrics_prefix: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Directory for local state (stateful services).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Page cache of each partition's state store, MiB (stateful services: one store per
    /// partition number owned, so the bound is this times the partitions).
    #[arg(long, env = "STATE_CACHE_MB", default_value_t = 64)]
    pub state_cache_mb: u64,
    /// Consumer session timeout; a crashed instance's partitions move after this long.
    #[arg(long, env = "SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// How often processed offsets are committed.
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = 1_000)]
    pub commit_interval_ms: u64,
    /// Messages read but not yet finished, per partition, before the partition is paused.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 5_000)]
    pub max_in_flight: usize,
    /// Attempts for a message whose handler fails transiently, before it is dead-lettered.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// First retry backoff; doubles per attempt, with jitter, up to `--max-backoff-ms`.
    #[arg(long, env = "BACKOFF_MS", default_value_t = 200)]
    pub backoff_ms: u64,
    /// Longest retry backoff.
    #[arg(long, env = "MAX_BACKOFF_MS", default_value_t = 10_000)]
    pub max_backoff_ms: u64,
    /// How long shutdown may take: finish in-flight work, flush, commit, leave the group.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 30_000)]
    pub shutdown_timeout_ms: u64,
}

impl RuntimeConfig {
    /// Defaults for `service`, as if no flag or variable were given (tests start from this).
    pub fn defaults() -> RuntimeConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: RuntimeConfig,
        }
        // An empty command line: the contract defaults (environment variables still apply).
        let mut config = <Wrapper as clap::Parser>::parse_from(["defaults"]).config;
        config.brokers = "127.0.0.1:9092".into();
        config
    }

    /// The group id, defaulting to the service name.
    pub fn group(&self, service: &str) -> String {
        self.group_id.clone().unwrap_or_else(|| service.to_owned())
    }

    /// The extra librdkafka properties, parsed and checked: a malformed item or a
    /// protected setting is an error naming it.
    pub fn properties(&self) -> Result<Vec<(String, String)>, PropertyError> {
        let mut pairs = Vec::new();
        for setting in &self.kafka_config {
            pairs.extend(parse_properties(&setting.0)?);
        }
        check_unprotected(&pairs)?;
        Ok(pairs)
    }

    /// Base client settings: brokers and client id; extra properties are applied by callers
    /// last, after their own defaults.
    fn base(&self, service: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set(
                "client.id",
                self.client_id.clone().unwrap_or_else(|| service.to_owned()),
            )
            // librdkafka logs through our context into tracing; keep its own chatter down.
            .set("log_level", "4")
            // librdkafka backs reconnects off up to 10 s, so after a broker restart a
            // consumer (which connects on its own schedule, unlike a producer with a record
            // to send) waited up to 9.4 s more to fetch, heartbeat and commit; a rebalance
            // in that window missed its deadline. 1 s is the Java client's default.
            // (crates/testkit/examples/reconnect_delay.rs: 0.1-9.4 s vs 0.1-0.2 s.)
            .set(
                "reconnect.backoff.max.ms",
                crate::kafka::reconnect_backoff_max(&self.properties().unwrap_or_default()),
            );
        config
    }

    fn with_extra(&self, mut config: ClientConfig) -> Result<ClientConfig, PropertyError> {
        self.with_extra_for(&mut config, |_| true)?;
        Ok(config)
    }

    /// Applies the extra properties that `applies` accepts, then the unchecked overrides.
    fn with_extra_for(
        &self,
        config: &mut ClientConfig,
        applies: impl Fn(&str) -> bool,
    ) -> Result<(), PropertyError> {
        for (k, v) in self.properties()? {
            if applies(&k) {
                config.set(k, v);
            }
        }
        Ok(())
    }

    /// Consumer settings: manual offset storage and commits, earliest reset.
    pub fn consumer_config(&self, service: &str) -> Result<ClientConfig, PropertyError> {
        let mut config = self.base(service);
        config
            .set("group.id", self.group(service))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // Only the partitions that move are revoked on a rebalance; the others keep
            // processing (and a stateful processor keeps its state open).
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).max(100).to_string(),
            )
            // Partition EOF events would only be noise in the loop.
            .set("enable.partition.eof", "false");
        if let Some(id) = &self.group_instance_id {
            config.set("group.instance.id", id);
        }
        self.with_extra_for(&mut config, |key| !is_producer_only(key))?;
        Ok(config)
    }

    /// Producer settings: idempotent, acknowledged by all in-sync replicas.
    pub fn producer_config(&self, service: &str) -> Result<ClientConfig, PropertyError> {
        let mut config = self.base(service);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        // One KAFKA_CONFIG serves every client; librdkafka warns about a consumer
        // property given to a producer, so those stay with the consumer.
        self.with_extra_for(&mut config, |key| !is_consumer_only(key))?;
        Ok(config)
    }

    /// Settings for admin and metadata clients (some are consumers that never join a group).
    pub fn admin_config(&self, service: &str) -> Result<ClientConfig, PropertyError> {
        let mut config = self.base(service);
        // librdkafka checks a consumer's settings against each other even when it never
        // joins a group (`max.poll.interval.ms` >= `session.timeout.ms`): with the service's
        // own session timeout, any KAFKA_CONFIG valid for its consumer is valid here too.
        config.set("session.timeout.ms", self.session_timeout_ms.to_string());
        self.with_extra(config)
    }

    /// The shutdown deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// Properties librdkafka only reads in a producer (and warns about in a consumer).
fn is_producer_only(key: &str) -> bool {
    key.starts_with("queue.buffering.")
        || key.starts_with("batch.")
        || key.starts_with("compression.")
        || key.starts_with("sticky.partitioning")
        || matches!(
            key,
            "linger.ms"
                | "message.timeout.ms"
                | "delivery.timeout.ms"
                | "message.send.max.retries"
                | "retries"
                | "request.timeout.ms"
                | "partitioner"
                | "transactional.id"
                | "transaction.timeout.ms"
                | "enable.gapless.guarantee"
        )
}

/// Properties librdkafka only reads in a consumer (and warns about in a producer).
fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("auto.")
        || matches!(
            key,
            "max.partition.fetch.bytes"
                | "max.poll.interval.ms"
                | "session.timeout.ms"
                | "heartbeat.interval.ms"
                | "partition.assignment.strategy"
                | "group.protocol"
                | "check.crcs"
                | "enable.partition.eof"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: RuntimeConfig,
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = RuntimeConfig::defaults();
        assert_eq!(c.brokers, "127.0.0.1:9092");
        assert_eq!(c.statsd_addr, "127.0.0.1:8125");
        assert_eq!(c.group("enrichment"), "enrichment");
        assert_eq!(c.session_timeout_ms, 10_000);
        assert_eq!(c.state_cache_mb, 64);
        let consumer = c.consumer_config("enrichment").unwrap();
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("reconnect.backoff.max.ms"), Some("1000"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("10000"));
        let producer = c.producer_config("enrichment").unwrap();
        assert_eq!(producer.get("reconnect.backoff.max.ms"), Some("1000"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
    }

    #[test]
    fn a_longer_reconnect_backoff_given_raises_the_maximum_so_clients_start() {
        let mut c = RuntimeConfig::defaults();
        c.kafka_config = vec!["reconnect.backoff.ms=2000".into()];
        let consumer = c.consumer_config("enrichment").unwrap();
        assert_eq!(consumer.get("reconnect.backoff.max.ms"), Some("2000"));
        // librdkafka refuses a maximum below the backoff: the client must still be created.
        let created: Result<rdkafka::consumer::BaseConsumer, _> = consumer.create();
        assert!(created.is_ok(), "{:?}", created.err());
        let producer: Result<rdkafka::producer::BaseProducer, _> =
            c.producer_config("enrichment").unwrap().create();
        assert!(producer.is_ok(), "{:?}", producer.err());
        // A maximum given is kept as given.
        c.kafka_config = vec!["reconnect.backoff.max.ms=5000".into()];
        let consumer = c.consumer_config("enrichment").unwrap();
        assert_eq!(consumer.get("reconnect.backoff.max.ms"), Some("5000"));
    }

    #[test]
    fn repeated_kafka_config_flags_override_defaults() {
        let cli = Cli::parse_from([
            "svc",
            "--kafka-config",
            "session.timeout.ms=6000",
            "--kafka-config",
            "fetch.min.bytes=10,linger.ms=0",
            "--kafka-config",
            "debug=broker,topic",
        ]);
        let consumer = cli.config.consumer_config("svc").unwrap();
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("fetch.min.bytes"), Some("10"));
        assert_eq!(consumer.get("debug"), Some("broker,topic"));
        let producer = cli.config.producer_config("svc").unwrap();
        assert_eq!(producer.get("linger.ms"), Some("0"));
        assert_eq!(
            producer.get("fetch.min.bytes"),
            None,
            "consumer settings stay with the consumer"
        );
        assert_eq!(
            consumer.get("linger.ms"),
            None,
            "and producer settings with the producer"
        );
    }

    #[test]
    fn a_protected_setting_is_refused_by_name() {
        let cli = Cli::parse_from(["svc", "--kafka-config", "enable.auto.commit=true"]);
        let error = cli.config.consumer_config("svc").unwrap_err();
        assert!(error.to_string().contains("enable.auto.commit"), "{error}");
        let cli = Cli::parse_from(["svc", "--kafka-config", "enable.idempotence=false"]);
        assert!(cli.config.producer_config("svc").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let cli = Cli::parse_from([
            "svc",
            "--kafka-config",
            "sasl.password=hunter2,sasl.mechanism=PLAIN",
        ]);
        let shown = format!("{:?}", cli.config);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl.mechanism=PLAIN"), "{shown}");
    }

    #[test]
    fn cooperative_rebalancing_and_static_membership() {
        let mut c = RuntimeConfig::defaults();
        let consumer = c.consumer_config("svc").unwrap();
        assert_eq!(
            consumer.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(consumer.get("group.instance.id"), None);
        c.group_instance_id = Some("svc-0".into());
        let consumer = c.consumer_config("svc").unwrap();
        assert_eq!(consumer.get("group.instance.id"), Some("svc-0"));
    }

    #[test]
    fn a_malformed_property_is_an_error_not_ignored() {
        assert!(Cli::try_parse_from(["svc", "--kafka-config", "oops"]).is_err());
    }

    #[test]
    fn consumer_settings_in_kafka_config_are_valid_for_every_client() {
        let mut c = RuntimeConfig::defaults();
        c.session_timeout_ms = 6000;
        c.kafka_config = vec!["max.poll.interval.ms=15000".into()];
        let consumer: Result<rdkafka::consumer::BaseConsumer, _> =
            c.consumer_config("svc").unwrap().create();
        assert!(consumer.is_ok());
        let metadata: Result<rdkafka::consumer::BaseConsumer, _> =
            c.admin_config("svc").unwrap().create();
        assert!(metadata.is_ok(), "{:?}", metadata.err());
    }
}
