//! `cargo xtask fuzz`: a bounded libFuzzer run of every fuzz target (crates/fuzz), its corpus
//! seeded from `schemas/samples/`; a crash is copied into the target's regressions, which
//! `cargo test` runs from then on.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cargo::{self, workspace_root};

/// The fuzz targets (crates/fuzz/fuzz/fuzz_targets).
const TARGETS: [&str; 3] = ["envelope", "ingest_body", "search_query"];
/// The cargo-fuzz release installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut secs = 60u64;
    let mut only: Option<String> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => {
                secs = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--secs takes a number of seconds")?;
            }
            "--target" => only = Some(args.next().context("--target takes a name")?.clone()),
            other => {
                bail!("unknown option {other:?} (cargo xtask fuzz [--secs N] [--target NAME])")
            }
        }
    }
    let targets: Vec<&str> = match &only {
        Some(name) if TARGETS.contains(&name.as_str()) => vec![name.as_str()],
        Some(name) => bail!("no fuzz target {name:?}; there are {TARGETS:?}"),
        None => TARGETS.to_vec(),
    };
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz_dir = root.join("crates").join("fuzz").join("fuzz");
    let mut failed = Vec::new();
    for target in targets {
        let seeds = seed_corpus(&root, target)?;
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let before = artifacts(&fuzz_dir, target);
        eprintln!("xtask: fuzzing {target} for {secs} s");
        let status = cargo::cargo()
            .arg("fuzz")
            .arg("run")
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .arg(target)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-max_len=65536")
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1")
            // The stable toolchain is the machine's only one; cargo-fuzz's sanitizer flags
            // are unstable options, which this lets it take.
            .env("RUSTC_BOOTSTRAP", "1")
            .status()
            .context("running cargo fuzz")?;
        let found: Vec<PathBuf> = artifacts(&fuzz_dir, target)
            .into_iter()
            .filter(|a| !before.contains(a))
            .collect();
        for artifact in &found {
            let name = artifact.file_name().unwrap_or_default();
            let kept = root.join("crates/fuzz/regressions").join(target).join(name);
            std::fs::copy(artifact, &kept)?;
            eprintln!(
                "xtask: {target} crashed on {}; kept as {} (a regression test from now on)",
                artifact.display(),
                kept.display()
            );
        }
        if !status.success() || !found.is_empty() {
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {failed:?}; their inputs are in crates/fuzz/regressions");
    }
    eprintln!("xtask: fuzzing found nothing");
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = cargo::cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        cargo::run(
            &[
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ],
            &[],
        )?;
    }
    Ok(())
}

fn artifacts(fuzz_dir: &Path, target: &str) -> Vec<PathBuf> {
    std::fs::read_dir(fuzz_dir.join("artifacts").join(target))
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The read-only seed corpus of a target, made fresh from `schemas/samples/` (every
/// envelope; every payload behind each route and format byte) and `crates/fuzz/seeds/`.
fn seed_corpus(root: &Path, target: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join("target").join("fuzz-seeds").join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut n = 0;
    let mut write = |bytes: &[u8]| -> anyhow::Result<()> {
        n += 1;
        std::fs::write(dir.join(format!("seed-{n:04}")), bytes)?;
        Ok(())
    };
    let mut samples: Vec<PathBuf> = std::fs::read_dir(root.join("schemas").join("samples"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    samples.sort();
    for file in samples {
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)
            .with_context(|| format!("{}", file.display()))?;
        for envelope in value
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![value.clone()])
        {
            match target {
                "envelope" => write(&serde_json::to_vec(&envelope)?)?,
                "ingest_body" => {
                    let data = serde_json::to_vec(&envelope["data"])?;
                    for selector in 0u8..8 {
                        let mut input = vec![selector];
                        input.extend_from_slice(&data);
                        write(&input)?;
                    }
                }
                _ => {}
            }
        }
    }
    let committed = root.join("crates").join("fuzz").join("seeds").join(target);
    if let Ok(entries) = std::fs::read_dir(committed) {
        for entry in entries.filter_map(Result::ok) {
            write(&std::fs::read(entry.path())?)?;
        }
    }
    Ok(dir)
}
