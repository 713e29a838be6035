//! `cargo xtask chaos`: builds the binaries and runs the reliability harness (crates/chaos).

use std::process::Command;

use anyhow::{Context, bail};

use crate::cargo::{self, workspace_root};

/// `cargo xtask chaos [options]`: release binaries, then the harness with the options given.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let broker = crate::broker::ensure()?;
    eprintln!("xtask: building release binaries");
    cargo::run(&["build", "--release", "--workspace", "--bins"], &[])?;
    let bin_dir = workspace_root().join("target").join("release");
    harness(&bin_dir, &broker.to_string_lossy(), args)
}

/// The short run of `cargo xtask test`, on debug binaries.
pub(crate) fn short_run(broker: &str, events: u64) -> anyhow::Result<()> {
    cargo::run(&["build", "--workspace", "--bins"], &[])?;
    let bin_dir = workspace_root().join("target").join("debug");
    harness(&bin_dir, broker, &["--events".into(), events.to_string()])
}

fn harness(bin_dir: &std::path::Path, broker: &str, args: &[String]) -> anyhow::Result<()> {
    let status = Command::new(bin_dir.join("chaos"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--topics")
        .arg(workspace_root().join("deploy").join("topics.yaml"))
        .args(args)
        .env("TRIB_BROKER_BIN", broker)
        .status()
        .context("running the chaos harness")?;
    if !status.success() {
        bail!("the chaos run failed ({status}); its report is above");
    }
    Ok(())
}
