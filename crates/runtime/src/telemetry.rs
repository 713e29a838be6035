//! Logs through `tracing`: JSON or pretty, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter without `RUST_LOG`: our `info`, and only warnings from tantivy, whose `info`
/// is a handful of lines per index commit (several a second).
pub const DEFAULT_FILTER: &str = "info,tantivy=warn";

/// Installs the global subscriber. Calling it again (tests start several services in one
/// process) keeps the first one.
pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
