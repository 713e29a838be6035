//! `trib topics apply` and `trib topics list`: topics as code. Apply creates the declared
//! topics that are missing and reports the ones that differ, deleting nothing; list shows
//! every topic on the cluster next to the declaration.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use tributary_runtime::rdkafka::ClientConfig;
use tributary_runtime::topics::{TopicsFile, apply_file, partition_counts};

use crate::output;

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
    /// Every topic on the cluster with its partitions, and how it stands against the
    /// declaration (as declared, differs, missing, undeclared).
    List {
        /// The declaration file (topics are listed without it if it does not exist).
        #[arg(long, short, default_value = "deploy/topics.yaml")]
        file: PathBuf,
    },
}

pub(crate) async fn run(
    command: TopicsCommand,
    config: &ClientConfig,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        TopicsCommand::List { file } => list(config, &file, json).await,
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

async fn list(config: &ClientConfig, file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let counts = partition_counts(config)
        .await
        .context("reading the cluster's topics")?;
    let declaration = if file.exists() {
        Some(TopicsFile::load(file)?)
    } else {
        None
    };
    let report = match &declaration {
        Some(d) => Some(
            apply_file(config, d, true)
                .await
                .context("comparing with the declaration")?,
        ),
        None => None,
    };
    let declared: std::collections::BTreeSet<String> = declaration
        .iter()
        .flat_map(|d| d.topics.iter().map(|t| t.name.clone()))
        .collect();
    let mut names: std::collections::BTreeSet<String> = counts
        .keys()
        .filter(|t| !t.starts_with("__"))
        .cloned()
        .collect();
    names.extend(declared.iter().cloned());
    for name in names {
        let partitions = counts.get(&name).copied();
        let differences: Vec<String> = report
            .iter()
            .flat_map(|r| r.differences.iter().filter(|d| d.topic == name))
            .map(|d| format!("{}: declared {}, is {}", d.setting, d.declared, d.actual))
            .collect();
        let state = match (declared.contains(&name), partitions) {
            (true, None) => "missing",
            (true, Some(_)) if !differences.is_empty() => "differs",
            (true, Some(_))
                if report
                    .as_ref()
                    .is_some_and(|r| r.unknown_config.contains(&name)) =>
            {
                "declared (configs not reported)"
            }
            (true, Some(_)) => "as declared",
            (false, _) => "undeclared",
        };
        output::line(
            json,
            || {
                let mut text = format!(
                    "{name}  partitions={}  {state}",
                    partitions.map_or("-".to_owned(), |p| p.to_string())
                );
                for d in &differences {
                    text.push_str(&format!("\n  {d}"));
                }
                text
            },
            || json!({"topic": name, "partitions": partitions, "state": state, "differences": differences}),
        );
    }
    Ok(())
}
