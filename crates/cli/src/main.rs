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
    /// Extra librdkafka properties, `key=value,key=value`.
    #[arg(long, env = "KAFKA_CONFIG", default_value = "", global = true)]
    kafka_config: String,
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
    let extra = tributary_runtime::kafka::parse_properties(&cli.kafka_config)?;
    let config = tributary_runtime::kafka::client_config(&cli.brokers, &extra);
    match cli.command {
        Command::Topics(command) => topics::run(command, &config).await,
    }
}
