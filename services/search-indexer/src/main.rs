//! The search-indexer binary: configuration, telemetry, run, exit status.

use clap::Parser;
use tributary_runtime::{Shutdown, telemetry};

// librdkafka's and the runtime's threads allocate on one thread and free on another, which
// glibc's allocator serves poorly (a third of the CPU in malloc and free in profiles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tributary search-indexer: complete products in a tantivy index, the search API, blue/green rebuilds.
#[derive(Debug, Parser)]
#[command(name = "search-indexer", version, about)]
struct Cli {
    #[command(flatten)]
    config: search_indexer::SearchConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.config.runtime.log_format);
    let shutdown = Shutdown::on_signals();
    let result = match search_indexer::start(cli.config, shutdown).await {
        Ok(running) => running.wait().await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "search-indexer stopped with an error"
            );
            // 1: fatal or failed start; 2: an unclean stop (work left for the next run).
            let code = e
                .downcast_ref::<tributary_runtime::RuntimeError>()
                .map_or(1, tributary_runtime::RuntimeError::exit_code);
            std::process::ExitCode::from(code)
        }
    }
}
