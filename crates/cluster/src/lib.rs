//! One Kafka protocol client for cluster-wide reads and offset writes: topics and leaders,
//! every consumer group with its members, committed offsets and high watermarks, batched
//! so that a round over hundreds of groups is a handful of requests per broker on one
//! connection each (no client, thread or connection per group).
//!
//! It speaks the wire protocol through `kafka-protocol` (every message generated from
//! Kafka's own schemas), negotiates versions with each broker, and honours the TLS and SASL
//! settings of `KAFKA_CONFIG` as librdkafka names them (see [`ClusterConfig`]).

mod client;
mod config;
mod connection;
pub mod lag;
mod scram;
mod tls;

use std::sync::Arc;

pub use client::{
    Cluster, EARLIEST, GroupDescription, LATEST, ListedGroup, Member, Metadata, PartitionInfo,
};
pub use config::{ClusterConfig, Mechanism, SaslConfig, TlsConfig};
pub use kafka_protocol::error::ResponseError;

/// A (topic, partition) pair.
pub type TopicPartition = (String, i32);

/// What went wrong talking to the cluster.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A setting is missing, malformed or not supported.
    #[error("client setting `{key}` {reason}")]
    Config {
        /// The librdkafka property.
        key: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The connection failed.
    #[error("broker {broker}: {source}")]
    Io {
        /// `host:port`.
        broker: String,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// No answer within the request timeout.
    #[error("broker {broker}: no answer to {api} within {timeout_ms} ms")]
    Timeout {
        /// `host:port`.
        broker: String,
        /// The request.
        api: String,
        /// The timeout.
        timeout_ms: u128,
    },
    /// TLS or SASL failed.
    #[error("broker {broker}: {message}")]
    Auth {
        /// `host:port`.
        broker: String,
        /// What failed.
        message: String,
    },
    /// The broker does not speak a version of the request this client can fill in.
    #[error("broker {broker} does not support a usable version of {api}")]
    Unsupported {
        /// `host:port`.
        broker: String,
        /// The request.
        api: String,
    },
    /// The broker answered with an error code.
    #[error("broker {broker}: {api} failed: {error}")]
    Kafka {
        /// `host:port`.
        broker: String,
        /// The request.
        api: String,
        /// Kafka's error.
        error: ResponseError,
    },
    /// An answer that could not be encoded, decoded or made sense of.
    #[error("broker {broker}: {api}: {message}")]
    Protocol {
        /// `host:port`.
        broker: String,
        /// The request.
        api: String,
        /// What was wrong.
        message: String,
    },
}

impl From<(String, std::io::Error)> for Error {
    fn from((broker, source): (String, std::io::Error)) -> Error {
        Error::Io {
            broker,
            source: Arc::new(source),
        }
    }
}
