//! Finding the dev broker, and installing it once per machine when it is missing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The Tansu release the suite is tested against.
pub(crate) const VERSION: &str = "0.6.0";

fn candidates() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        found.push(PathBuf::from(bin));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        found.extend(std::env::split_paths(&paths).map(|dir| dir.join("tansu")));
    }
    found.push(cargo_bin().join("tansu"));
    found
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

fn version_of(bin: &PathBuf) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// The path of Tansu 0.6.0, installing it with cargo when no such binary is found.
pub(crate) fn ensure() -> anyhow::Result<PathBuf> {
    if let Some(bin) = candidates()
        .into_iter()
        .find(|p| p.is_file() && version_of(p).as_deref() == Some(VERSION))
    {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing the dev broker (tansu {VERSION} with memory and SQLite storage); \
         this takes several minutes, once per machine"
    );
    let status = crate::cargo::cargo()
        .args(["install", "tansu", "--version", VERSION, "--locked"])
        .args(["--features", "dynostore,libsql"])
        .status()
        .context("running cargo install tansu")?;
    if !status.success() {
        bail!("cargo install tansu {VERSION} failed ({status})");
    }
    let bin = cargo_bin().join("tansu");
    if version_of(&bin).as_deref() != Some(VERSION) {
        bail!(
            "tansu {VERSION} was installed but {} does not report it",
            bin.display()
        );
    }
    Ok(bin)
}
