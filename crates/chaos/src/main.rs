//! `chaos`: the whole suite under faults, checked against a reference (see the library).
//! Run it through `cargo xtask chaos`, which builds the binaries first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// The whole suite under faults, checked against a reference computed from what ingest accepted.
#[derive(Debug, Parser)]
#[command(name = "chaos", version)]
struct Args {
    /// Events to send through ingest (the catalogue included).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Seed of the catalogue, the load and the fault schedule (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Soak mode: a steady load this long (`30m`, `90s`), no faults; memory and file
    /// descriptors of every service are watched.
    #[arg(long, value_parser = duration)]
    soak: Option<Duration>,
    /// Events per second (default: about 90 s of stream for a chaos run, at most 350/s,
    /// which the stack sustains under faults on two cores; 200/s for a soak).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Directory of the service binaries and `trib` (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The topics file to apply.
    #[arg(long)]
    topics: Option<PathBuf>,
    /// Keep logs and data even when every check passes.
    #[arg(long)]
    keep: bool,
    /// The services' `fetch.wait.max.ms`: how long the dev broker holds a fetch that finds
    /// nothing. Shorter waits deliver sooner but cost the broker more (docs/architecture.md,
    /// the dev broker).
    #[arg(long, default_value_t = tributary_chaos::FETCH_WAIT_MS)]
    fetch_wait_ms: u32,
}

fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 30m or 90s"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: the unit is s, m or h")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Ctrl-C or SIGTERM: no service instance may outlive the harness (the broker's own
    // watchdog stops it when this process ends).
    let _ = ctrlc::set_handler(|| {
        tributary_chaos::stack::kill_all_children();
        eprintln!("chaos: interrupted; every service instance killed");
        std::process::exit(130);
    });
    let bin_dir = args.bin_dir.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_default()
    });
    let topics = args.topics.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/topics.yaml")
    });
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
    });
    let options = tributary_chaos::Options {
        events: args.events,
        seed,
        soak: args.soak,
        rate: args.rate,
        bin_dir,
        topics_file: topics,
        keep: args.keep,
        fetch_wait_ms: args.fetch_wait_ms,
    };
    match tributary_chaos::run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}
