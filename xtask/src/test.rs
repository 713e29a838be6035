//! `cargo xtask test`: every check CI runs, in one command, ending with a one-line summary:
//! fmt, clippy, every test of the workspace and a short chaos run.

use std::time::Instant;

use crate::cargo;

/// Events of the short chaos run in `cargo xtask test`.
const CHAOS_EVENTS: u64 = 6_000;

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(arg) = args.first() {
        anyhow::bail!("cargo xtask test takes no arguments (got {arg:?})");
    }
    let started = Instant::now();
    let broker = crate::broker::ensure()?;
    let broker = broker.to_string_lossy().into_owned();
    ensure_components();

    // Every step runs even after a failure, so one run reports everything that is wrong.
    let steps: [(&str, Vec<&str>); 3] = [
        ("fmt", vec!["fmt", "--all", "--check"]),
        (
            "clippy",
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("tests", vec!["test", "--workspace", "--no-fail-fast"]),
    ];
    let mut results = Vec::new();
    for (name, step_args) in steps {
        eprintln!("xtask: ── {name}: cargo {}", step_args.join(" "));
        let step_started = Instant::now();
        let ok = cargo::run(&step_args, &[("TRIB_BROKER_BIN", &broker)]).is_ok();
        results.push((name, ok, step_started.elapsed()));
    }
    // The short chaos run (about two minutes): the whole suite under faults, on the debug
    // binaries the tests just built.
    eprintln!("xtask: ── chaos: {CHAOS_EVENTS} events under faults");
    let step_started = Instant::now();
    let ok = crate::chaos::short_run(&broker, CHAOS_EVENTS)
        .inspect_err(|e| eprintln!("xtask: chaos: {e:#}"))
        .is_ok();
    results.push(("chaos", ok, step_started.elapsed()));
    let summary: Vec<String> = results
        .iter()
        .map(|(name, ok, took)| {
            format!(
                "{name} {} ({:.0}s)",
                if *ok { "ok" } else { "FAILED" },
                took.as_secs_f64()
            )
        })
        .collect();
    let failed = results.iter().any(|(_, ok, _)| !ok);
    println!(
        "xtask test: {} in {:.0}s: {}",
        if failed { "FAILED" } else { "passed" },
        started.elapsed().as_secs_f64(),
        summary.join(", ")
    );
    if failed {
        anyhow::bail!("some checks failed");
    }
    Ok(())
}

/// rustfmt and clippy ship as rustup components; add them on a machine that lacks them.
fn ensure_components() {
    let have = |sub: &str| {
        cargo::cargo()
            .args([sub, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("fmt") && have("clippy")) {
        eprintln!("xtask: adding the rustfmt and clippy components");
        let _ = std::process::Command::new("rustup")
            .args(["component", "add", "rustfmt", "clippy"])
            .status();
    }
}
