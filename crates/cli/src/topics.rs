//! `trib topics apply`: create missing declared topics, report differences, delete nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use tributary_runtime::rdkafka::ClientConfig;
use tributary_runtime::topics::{TopicsFile, apply_file};

/// Topic subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create every declared topic that is missing; report the ones that differ.
    Apply {
        /// The declaration file.
        #[arg(long, short, default_value = "deploy/topics.yaml")]
        file: PathBuf,
        /// Report what would be created without creating anything.
        #[arg(long)]
        dry_run: bool,
        /// Keep retrying for this many seconds while the cluster is unreachable
        /// (useful right after starting a broker).
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
    },
}

pub(crate) async fn run(command: TopicsCommand, config: &ClientConfig) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Apply {
            file,
            dry_run,
            wait_secs,
        } => {
            let declaration = TopicsFile::load(&file)?;
            let deadline = Instant::now() + Duration::from_secs(wait_secs);
            let report = loop {
                match apply_file(config, &declaration, dry_run).await {
                    Ok(report) => break report,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("cluster not ready ({e}); retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e).context("applying topics"),
                }
            };
            if dry_run {
                println!("dry run: nothing was created");
            }
            println!("{report}");
            Ok(())
        }
    }
}
