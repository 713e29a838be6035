//! The ingest service binary: configuration, telemetry, run, exit status.

use clap::Parser;
use tributary_runtime::{Shutdown, telemetry};

/// A request allocates per event (parsed JSON, envelope, encoded record) and frees it on
/// another thread once acknowledged; mimalloc's per-thread free lists make that pattern
/// markedly cheaper than glibc's allocator (measured in `cargo xtask bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tributary ingest: validates events over HTTP and publishes them to Kafka.
#[derive(Debug, Parser)]
#[command(name = "ingest", version, about)]
struct Cli {
    #[command(flatten)]
    config: ingest::IngestConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.config.runtime.log_format);
    let shutdown = Shutdown::on_signals();
    let running = ingest::start(cli.config, shutdown).await?;
    running.wait().await
}
