//! Test harness for Tributary: a real dev broker (nisshi) on a free loopback port, uniquely named
//! topics and groups per test, and helpers to produce envelopes and to consume until a
//! condition holds within a deadline (never a bare sleep).
//!
//! The broker binary comes from `TRIB_BROKER_BIN` (or the older `TANSU_BIN`), else `nisshi`
//! on `PATH`, else `~/.cargo/bin`; `cargo xtask test` installs it when it is missing.

mod broker;
mod clients;
pub mod process;

pub use broker::{BrokerBin, Flavour, Storage, TestBroker, find_broker};
pub use clients::{RawRecord, Record, send_waiting, unique_name};

/// How long the dev broker may hold a fetch, in ms, in test and benchmark clients. The dev
/// broker holds every fetch for the full `fetch.wait.max.ms` even when data is there
/// (ARCHITECTURE.md section 9): librdkafka's 500 ms default caps a consumer near 60k
/// records/s. Production configs keep the default.
pub const FETCH_WAIT_MAX_MS: &str = "5";

/// [`FETCH_WAIT_MAX_MS`] as a `KAFKA_CONFIG` item, for services started by tests and benches.
pub const DEV_CLIENT_SETTING: &str = "fetch.wait.max.ms=5";

/// What can go wrong while setting up a test.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// No usable dev broker binary was found.
    #[error(
        "dev broker: {0}; run `cargo xtask test`, which installs it, or `cargo install nisshi \
         --version 0.8.1 --locked --ignore-rust-version`"
    )]
    BrokerNotFound(String),
    /// The broker process could not be started or stopped.
    #[error("broker process: {0}")]
    Process(#[from] std::io::Error),
    /// The broker did not answer metadata requests in time.
    #[error("broker on {bootstrap} not ready after {waited:?}; log tail:\n{log}")]
    NotReady {
        /// Its address.
        bootstrap: String,
        /// How long we waited.
        waited: std::time::Duration,
        /// The end of its log.
        log: String,
    },
    /// A Kafka client call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Topic creation was refused.
    #[error("cannot create topic {0}: {1}")]
    CreateTopic(String, rdkafka::types::RDKafkaErrorCode),
    /// A delivery failed.
    #[error("delivery to {topic} failed: {error}")]
    Delivery {
        /// The topic.
        topic: String,
        /// The client's error.
        error: rdkafka::error::KafkaError,
    },
    /// The condition did not hold before the deadline.
    #[error("deadline passed after {waited:?} with {received} records received: {what}")]
    Deadline {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: std::time::Duration,
        /// Records received until then.
        received: usize,
    },
}

/// The result type of the harness.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
