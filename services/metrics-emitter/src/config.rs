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
    /// Observations kept (and evaluated) per group-partition: Burrow's window.
    #[arg(long, env = "LAG_WINDOW", default_value_t = 10)]
    pub lag_window: usize,
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
            max_tag_values: 1_000,
        }
    }

    /// The lag monitor's interval.
    pub fn lag_interval(&self) -> Duration {
        Duration::from_millis(self.lag_interval_ms.max(50))
    }
}
