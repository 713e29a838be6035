//! `trib schema check`: the schema compatibility check of `crates/events` as a command, for
//! the CI of services written outside this repository. Against a directory of committed
//! schemas it checks what this build's event types write; given two directories (or two
//! files) it checks that every old schema has a successor its readers survive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tributary_events::{compat, schema};

use crate::output;

/// `trib schema` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SchemaCommand {
    /// Check schema compatibility (additive-only within a version; versions never removed).
    Check(CheckArgs),
}

/// `trib schema check` arguments.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The committed (old) schemas: a directory of `*.json` or one file. Alone, it is
    /// checked against the event types this `trib` was built with.
    #[arg(default_value = "schemas")]
    old: PathBuf,
    /// The new schemas (a directory or one file), to check two sets against each other.
    new: Option<PathBuf>,
}

/// `path` as file name → text: every `*.json` of a directory, or one file.
fn read(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    if path.is_dir() {
        return schema::read_dir(path).with_context(|| format!("cannot read {}", path.display()));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok(BTreeMap::from([(name, text)]))
}

/// Problems of replacing `old` by `new`, file by file (a single file on each side is
/// compared whatever their names).
fn compare(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let single = old.len() == 1 && new.len() == 1;
    let mut problems = Vec::new();
    for (name, text) in old {
        let successor = if single {
            new.values().next()
        } else {
            new.get(name)
        };
        let Some(successor) = successor else {
            problems.push(format!("{name}: removed; versions are never removed"));
            continue;
        };
        match (
            serde_json::from_str::<Value>(text),
            serde_json::from_str::<Value>(successor),
        ) {
            (Ok(a), Ok(b)) => problems.extend(
                compat::check_backward(&a, &b)
                    .into_iter()
                    .map(|i| format!("{name}: {i}")),
            ),
            (Err(e), _) => problems.push(format!("{name} (old): not JSON: {e}")),
            (_, Err(e)) => problems.push(format!("{name} (new): not JSON: {e}")),
        }
    }
    problems
}

pub(crate) fn run(command: SchemaCommand, json: bool) -> anyhow::Result<()> {
    let SchemaCommand::Check(args) = command;
    let old = read(&args.old)?;
    if old.is_empty() {
        bail!("{} holds no *.json schema", args.old.display());
    }
    let problems = match &args.new {
        Some(new) => compare(&old, &read(new)?),
        None => schema::incompatibilities(&old),
    };
    for problem in &problems {
        output::line(
            json,
            || problem.clone(),
            || json!({"incompatible": problem}),
        );
    }
    if !problems.is_empty() {
        bail!("{} incompatible change(s)", problems.len());
    }
    output::line(
        json,
        || format!("compatible: {} schema(s) checked", old.len()),
        || json!({"compatible": true, "checked": old.len()}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, Value)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_added_optional_field_is_compatible_and_a_new_required_one_is_not() {
        let old = set(&[(
            "a.v1.json",
            json!({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}),
        )]);
        let optional = set(&[(
            "a.v1.json",
            json!({"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}}, "required": ["x"]}),
        )]);
        assert!(compare(&old, &optional).is_empty());
        let required = set(&[(
            "a.v1.json",
            json!({"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer"}}, "required": ["x", "y"]}),
        )]);
        assert!(!compare(&old, &required).is_empty());
        assert_eq!(
            compare(&old, &set(&[])),
            ["a.v1.json: removed; versions are never removed"]
        );
    }
}
