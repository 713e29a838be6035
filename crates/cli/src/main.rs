//! `trib`, the operator CLI: topics as code, tailing topics, consumer groups and their lag
//! (Burrow's rules, shared with metrics-emitter), and replaying a group from another offset.
//! Every command reads `--brokers` (`KAFKA_BROKERS`) and librdkafka settings (`-X key=value`
//! or `KAFKA_CONFIG`), prints text for people or JSON lines with `--json`, and exits
//! non-zero with a sentence naming what went wrong.

mod backup;
mod dlq;
mod groups;
mod output;
mod produce;
mod reader;
mod replay;
mod schema;
mod tail;
mod topics;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_cluster::{Cluster, ClusterConfig};
use tributary_runtime::rdkafka::ClientConfig;

/// The Tributary operator CLI.
#[derive(Debug, Parser)]
#[command(name = "trib", version, about)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    brokers: String,
    /// Extra librdkafka properties, `key=value`; repeatable, each a list separated by `,`
    /// (or `;`, so values may hold commas), read like the services read `KAFKA_CONFIG`.
    #[arg(long, env = "KAFKA_CONFIG", global = true, value_parser = tributary_runtime::config::parse_setting)]
    kafka_config: Vec<tributary_runtime::config::KafkaSetting>,
    /// One librdkafka property, `key=value` (repeatable), as kcat takes them.
    #[arg(short = 'X', global = true, value_name = "KEY=VALUE")]
    property: Vec<String>,
    /// JSON lines instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the topics declared in deploy/topics.yaml.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Print a topic's records as decoded envelopes (a reader: no group, no commits).
    Tail(tail::TailArgs),
    /// Send NDJSON (envelopes, or payloads validated and wrapped as ingest does) to a topic.
    Produce(produce::ProduceArgs),
    /// Every consumer group: state, members, committed offsets and lag.
    Groups(groups::GroupsArgs),
    /// Consumer lag with Burrow's status per group and partition (the rules metrics-emitter
    /// uses), from a few readings.
    Lag(groups::LagArgs),
    /// Back up topics: a compressed NDJSON file per partition and a manifest.
    Backup(backup::BackupArgs),
    /// Restore a backup into (empty) topics, in order, with the original timestamps.
    Restore(backup::RestoreArgs),
    /// Schema compatibility, as this repository's CI checks it.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// A group's dead letters: inspect them, send chosen ones back once fixed.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Move a stopped group's committed offsets (to rebuild derived state, or replay after
    /// a fix).
    Replay(replay::ReplayArgs),
}

/// What every command is given.
#[derive(Debug)]
pub(crate) struct Context_ {
    /// librdkafka settings (bootstrap servers included).
    pub(crate) client: ClientConfig,
    /// JSON lines.
    pub(crate) json: bool,
}

impl Context_ {
    /// The protocol client, with the same settings.
    pub(crate) fn cluster(&self) -> anyhow::Result<Cluster> {
        ClusterConfig::from_properties(self.client.config_map())
            .and_then(Cluster::new)
            .context("cluster client")
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut extra = Vec::new();
    for setting in &cli.kafka_config {
        extra.extend(tributary_runtime::kafka::parse_properties(&setting.0)?);
    }
    for property in &cli.property {
        let (key, value) = property
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .with_context(|| format!("-X {property}: expected key=value"))?;
        extra.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    let client = tributary_runtime::kafka::client_config(&cli.brokers, &extra);
    let context = Context_ {
        client,
        json: cli.json,
    };
    if matches!(
        cli.command,
        Command::Tail(_)
            | Command::Groups(_)
            | Command::Lag(_)
            | Command::Schema(_)
            | Command::Dlq(dlq::DlqCommand::Inspect(_))
            | Command::Topics(topics::TopicsCommand::List { .. })
    ) {
        output::read_only();
    }
    match cli.command {
        Command::Topics(command) => topics::run(command, &context.client, context.json).await,
        Command::Tail(args) => tail::run(args, &context).await,
        Command::Groups(args) => groups::groups(args, &context).await,
        Command::Lag(args) => groups::lag(args, &context).await,
        Command::Replay(args) => replay::run(args, &context).await,
        Command::Dlq(command) => dlq::run(command, &context).await,
        Command::Produce(args) => produce::run(args, &context).await,
        Command::Backup(args) => backup::backup(args, &context).await,
        Command::Schema(command) => schema::run(command, context.json),
        Command::Restore(args) => backup::restore(args, &context).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trib: {e:#}");
            ExitCode::FAILURE
        }
    }
}
