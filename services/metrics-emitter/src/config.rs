//! The metrics-emitter's configuration: the runtime's shared settings plus the lag monitor's.

use std::time::Duration;

use clap::Args;
use tributary_runtime::RuntimeConfig;

/// Every metrics-emitter setting; flags with environment variables and local defaults.
#[derive(Debug, Clone, Args)]
pub struct EmitterConfig {
    /// Settings shared by every service.
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// How often the lag monitor reads every group's offsets, in milliseconds.
    #[arg(long, env = "LAG_INTERVAL_MS", default_value_t = 10_000)]
    pub lag_interval_ms: u64,
    /// Commits kept (and evaluated) per group-partition: Burrow's `intervals`.
    #[arg(long, env = "LAG_WINDOW", default_value_t = 10)]
    pub lag_window: usize,
    /// Lag at or below this counts as none: Burrow's `allowed-lag`.
    #[arg(long, env = "LAG_ALLOWED", default_value_t = 0)]
    pub lag_allowed: i64,
    /// A window of commits less complete than this (0 to 1) is not judged: Burrow's
    /// `minimum-complete` (0: partial windows are judged, as in Burrow).
    #[arg(long, env = "LAG_MIN_COMPLETE", default_value_t = 0.0)]
    pub lag_min_complete: f64,
    /// Distinct combinations of data-derived tag values (brand, category, currency) each
    /// business metric reports; later new ones are reported as `other` (and counted).
    #[arg(long, env = "METRICS_MAX_TAG_VALUES", default_value_t = 1_000)]
    pub max_tag_values: usize,
}

impl EmitterConfig {
    /// Defaults with the given runtime settings (tests and tools).
    pub fn with_runtime(runtime: RuntimeConfig) -> EmitterConfig {
        EmitterConfig {
            runtime,
            lag_interval_ms: 10_000,
            lag_window: 10,
            lag_allowed: 0,
            lag_min_complete: 0.0,
            max_tag_values: 1_000,
        }
    }

    /// Burrow's evaluator settings.
    pub fn lag_settings(&self) -> tributary_cluster::lag::Settings {
        tributary_cluster::lag::Settings {
            window: self.lag_window,
            allowed_lag: self.lag_allowed,
            minimum_complete: self.lag_min_complete,
        }
    }

    /// The lag monitor's interval.
    pub fn lag_interval(&self) -> Duration {
        Duration::from_millis(self.lag_interval_ms.max(50))
    }
}
