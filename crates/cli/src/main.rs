//! `trib`, the operator CLI: applies declared topics (and, as the suite grows, tails topics,
//! inspects dead letters and replays groups).

mod topics;

use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the topics declared in deploy/topics.yaml.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut extra = Vec::new();
    for setting in &cli.kafka_config {
        extra.extend(tributary_runtime::kafka::parse_properties(&setting.0)?);
    }
    let config = tributary_runtime::kafka::client_config(&cli.brokers, &extra);
    match cli.command {
        Command::Topics(command) => topics::run(command, &config).await,
    }
}
