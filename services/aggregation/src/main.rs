//! The aggregation binary: configuration, telemetry, run, exit status.

use clap::Parser;
use tributary_runtime::{Shutdown, telemetry};

// librdkafka's and the runtime's threads allocate on one thread and free on another, which
// glibc's allocator serves poorly; mimalloc halved enrichment's CPU per message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tributary aggregation: windowed counts and revenue per product and per brand.
#[derive(Debug, Parser)]
#[command(name = "aggregation", version, about)]
struct Cli {
    #[command(flatten)]
    config: aggregation::AggregationConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.config.runtime.log_format);
    let shutdown = Shutdown::on_signals();
    let result = match aggregation::start(cli.config, shutdown).await {
        Ok(running) => running.wait().await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "aggregation stopped with an error"
            );
            // 1: fatal or failed start; 2: an unclean stop (work left for the next run).
            let code = e
                .downcast_ref::<tributary_runtime::RuntimeError>()
                .map_or(1, tributary_runtime::RuntimeError::exit_code);
            std::process::ExitCode::from(code)
        }
    }
}
