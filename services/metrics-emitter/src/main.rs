//! The metrics-emitter binary: configuration, telemetry, run, exit status.

use clap::Parser;
use tributary_runtime::{Shutdown, telemetry};

/// Tributary metrics-emitter: business metrics from every topic and the lag of every group.
#[derive(Debug, Parser)]
#[command(name = "metrics-emitter", version, about)]
struct Cli {
    #[command(flatten)]
    config: metrics_emitter::EmitterConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.config.runtime.log_format);
    let shutdown = Shutdown::on_signals();
    let running = metrics_emitter::start(cli.config, shutdown).await?;
    running.wait().await
}
