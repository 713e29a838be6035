//! Finding the dev broker (nisshi), and installing it once per machine when it is missing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The nisshi release the suite is tested against.
pub(crate) const VERSION: &str = "0.8.1";

/// The binary's name, as cargo installs it.
const NAME: &str = "nisshi";

/// An override: `TRIB_BROKER_BIN`, or `TANSU_BIN`, its older name. It may point at any
/// Kafka-compatible dev broker the testkit knows how to start (nisshi, or Tansu 0.6); it is
/// used as given, never installed over.
pub(crate) fn overridden() -> Option<(&'static str, PathBuf)> {
    ["TRIB_BROKER_BIN", "TANSU_BIN"]
        .into_iter()
        .find_map(|var| std::env::var_os(var).map(|bin| (var, PathBuf::from(bin))))
}

fn candidates() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(paths) = std::env::var_os("PATH") {
        found.extend(std::env::split_paths(&paths).map(|dir| dir.join(NAME)));
    }
    found.push(cargo_bin().join(NAME));
    found
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// `nisshi 0.8.1` → ("nisshi", "0.8.1").
pub(crate) fn version_of(bin: &PathBuf) -> Option<(String, String)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    Some((words.next()?.to_owned(), words.next()?.to_owned()))
}

/// The dev broker's path: the override if one is set, else nisshi 0.8.1, installed with
/// cargo when no such binary is found.
pub(crate) fn ensure() -> anyhow::Result<PathBuf> {
    if let Some((var, bin)) = overridden() {
        if !bin.is_file() {
            bail!("{var}={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let wanted = |p: &PathBuf| {
        p.is_file()
            && version_of(p).is_some_and(|(name, version)| name == NAME && version == VERSION)
    };
    if let Some(bin) = candidates().into_iter().find(wanted) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing the dev broker ({NAME} {VERSION}, memory and SQLite storage); \
         this takes several minutes, once per machine"
    );
    // nisshi 0.8.1 declares rustc 1.96 but builds and runs on 1.95, this machine's toolchain.
    // Memory (dynostore) and SQLite (libsql) storage only: PostgreSQL support is not used
    // and only lengthens the build.
    let status = crate::cargo::cargo()
        .args(["install", NAME, "--version", VERSION, "--locked"])
        .args(["--ignore-rust-version", "--no-default-features"])
        .args(["--features", "dynostore,libsql"])
        .status()
        .with_context(|| format!("running cargo install {NAME}"))?;
    if !status.success() {
        bail!("cargo install {NAME} {VERSION} failed ({status})");
    }
    let bin = cargo_bin().join(NAME);
    if !wanted(&bin) {
        bail!(
            "{NAME} {VERSION} was installed but {} does not report it",
            bin.display()
        );
    }
    Ok(bin)
}
