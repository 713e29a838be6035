//! `cargo xtask`: developer automation for Tributary that needs nothing but cargo.
//!
//! - `cargo xtask test`: installs the dev broker if missing, then fmt, clippy and every test.
//! - `cargo xtask up [--demo]`: builds, starts the dev broker (unless `KAFKA_BROKERS` is
//!   set), applies `deploy/topics.yaml`, starts every service, stops them all on Ctrl-C.
//! - `cargo xtask chaos`: the reliability harness (crates/chaos) on release binaries.
//! - `cargo xtask fuzz`: bounded fuzzing of the parsers (crates/fuzz).
//! - `cargo xtask bench`: benchmarks next to same-run baselines, into `docs/benchmarks.md`.
//! - `cargo xtask schemas`: rewrites `schemas/` after a compatible change to the event types.

mod bench;
mod broker;
mod cargo;
mod chaos;
mod demo;
#[cfg(test)]
mod deploy_checks;
mod fuzz;
mod test;
mod up;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test       install the dev broker if needed, then cargo fmt --check, clippy -D warnings
             and every test of the workspace
  up         build release binaries, start the dev broker (unless KAFKA_BROKERS is set),
             create the topics, start every service; Ctrl-C stops everything
             options: --demo (load a demo catalog through ingest)
  bench      run the benchmarks against baselines measured in the same run and write
             docs/benchmarks.md; options: --messages N (default 1000000), --only PACKAGE
             (re-run one benchmark; its rows replace its old ones)
  chaos      the whole suite on the dev broker under killed, stopped, paused and added
             instances and broker restarts, checked against what ingest accepted;
             options: --events N (default 20000), --seed S, --rate R, --soak 30m (steady
             load, no faults, memory and file descriptors watched), --fetch-wait-ms W
             (the services' fetch.wait.max.ms, default 100), --keep
  fuzz       a bounded libFuzzer run of each fuzz target (envelope, ingest_body,
             search_query), corpus seeded from schemas/samples; a crash becomes a
             regression test; options: --secs N per target (default 60), --target NAME
  schemas    regenerate schemas/ from the event types (refused if incompatible)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("up") => up::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => chaos::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("schemas") => cargo::run(
            &["test", "-q", "-p", "tributary-events", "--test", "schemas"],
            &[("UPDATE_SCHEMAS", "1")],
        ),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
