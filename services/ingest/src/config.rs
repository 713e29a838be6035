//! Ingest's configuration: the runtime's shared settings plus the HTTP API's limits and keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tributary_runtime::RuntimeConfig;

/// A secret that never prints.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<none>"
        } else {
            "<redacted>"
        })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Every ingest setting; flags with environment variables and local defaults.
#[derive(Debug, Clone, Args)]
pub struct IngestConfig {
    /// Settings shared by every service.
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// Public API address.
    #[arg(long, env = "INGEST_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most events in one request.
    #[arg(long, env = "INGEST_MAX_EVENTS", default_value_t = 10_000)]
    pub max_events: usize,
    /// Client signing keys, `id:key,id:key`. Without keys (here or in the file) the API is
    /// open, and says so at start.
    #[arg(long, env = "INGEST_CLIENT_KEYS", default_value = "")]
    pub client_keys: Secret,
    /// A file of client keys, one `id:key` per line (`#` comments allowed).
    #[arg(long, env = "INGEST_CLIENT_KEYS_FILE")]
    pub client_keys_file: Option<PathBuf>,
    /// Signatures older (or further in the future) than this are refused.
    #[arg(long, env = "INGEST_SIGNATURE_MAX_AGE_SECS", default_value_t = 300)]
    pub signature_max_age_secs: u64,
    /// Whether POSTs signed with the older `v1` scheme (body only, not method and path) are
    /// accepted; DELETE always needs `v2`.
    #[arg(long, env = "INGEST_ACCEPT_V1", default_value_t = true, action = clap::ArgAction::Set)]
    pub accept_v1: bool,
    /// How long a request's headers, and then its body, may each take to arrive, ms
    /// (slow-loris): slower headers close the connection, a slower body is answered 408.
    #[arg(long, env = "INGEST_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// How long a response is remembered for its `Idempotency-Key`.
    #[arg(long, env = "INGEST_IDEMPOTENCY_WINDOW_SECS", default_value_t = 86_400)]
    pub idempotency_window_secs: u64,
    /// Most remembered idempotency keys; the oldest are forgotten first.
    #[arg(long, env = "INGEST_IDEMPOTENCY_CAPACITY", default_value_t = 100_000)]
    pub idempotency_capacity: usize,
    /// Requests per second per client (token bucket); 0 turns the limit off.
    #[arg(long, env = "INGEST_RATE_LIMIT", default_value_t = 5_000.0)]
    pub rate_limit: f64,
    /// Burst size of the per-client token bucket (default: one second of the rate).
    #[arg(long, env = "INGEST_RATE_BURST")]
    pub rate_burst: Option<f64>,
    /// How long a request waits for the broker's acknowledgements before answering 503.
    #[arg(long, env = "INGEST_PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A key entry is not `id:key`.
    #[error("invalid client key entry {0:?}: expected id:key")]
    Entry(String),
    /// The key file could not be read.
    #[error("cannot read {0}: {1}")]
    File(String, std::io::Error),
}

impl IngestConfig {
    /// The defaults of every ingest setting around the given shared settings, as if no
    /// flag were given (tests and benchmarks start from this).
    pub fn with_runtime(runtime: RuntimeConfig) -> IngestConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: IngestConfig,
        }
        let mut config = <Wrapper as clap::Parser>::parse_from(["ingest"]).config;
        config.runtime = runtime;
        config
    }

    /// Client id → signing key, from the variable and the file.
    pub fn keys(&self) -> Result<HashMap<String, Vec<u8>>, KeysError> {
        let mut entries: Vec<String> = self
            .client_keys
            .0
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(path) = &self.client_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| KeysError::File(path.display().to_string(), e))?;
            entries.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        entries
            .into_iter()
            .map(|entry| match entry.split_once(':') {
                Some((id, key)) if !id.is_empty() && !key.is_empty() => {
                    Ok((id.to_owned(), key.as_bytes().to_vec()))
                }
                _ => Err(KeysError::Entry(
                    entry.split(':').next().unwrap_or("").to_owned(),
                )),
            })
            .collect()
    }

    /// The body deadline.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms.max(1))
    }

    /// The publish deadline.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}
