//! The committed schemas in `schemas/` are current, compatible and their samples decode.
//!
//! Run with `UPDATE_SCHEMAS=1` (or `cargo xtask schemas`) to rewrite the committed schemas
//! after a compatible change; an incompatible change is refused either way.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tributary_events::schema::{
    file_name, incompatibilities, parse_file_name, read_dir, render_all, update,
};
use tributary_events::{Envelope, EventType};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn committed() -> BTreeMap<String, String> {
    read_dir(&schemas_dir()).expect("schemas/ is readable")
}

fn git(args: &[&str]) -> Option<String> {
    // From the repository's root: paths below are relative to it.
    let out = Command::new("git")
        .arg("-C")
        .arg(schemas_dir().join(".."))
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Every version of `schemas/` ever committed (as far as the clone's history goes): the
/// current types must stay compatible with each, so neither regenerating `schemas/` from
/// incompatible types, nor deleting a file and regenerating it, nor a break committed a few
/// commits back can pass. Empty without git; a note says so.
fn committed_versions() -> Vec<BTreeMap<String, String>> {
    let Some(log) = git(&["log", "--format=%H", "--", "schemas/"]) else {
        eprintln!("note: no git history: schemas/ checked against the working tree only");
        return Vec::new();
    };
    let mut sets = Vec::new();
    for rev in log.lines().filter(|l| !l.is_empty()) {
        let Some(listing) = git(&["ls-tree", "--name-only", rev, "schemas/"]) else {
            continue;
        };
        let mut files = BTreeMap::new();
        for path in listing.lines().filter(|p| p.ends_with(".json")) {
            if let Some(text) = git(&["show", &format!("{rev}:{path}")]) {
                let name = path.trim_start_matches("schemas/").to_owned();
                files.insert(name, text);
            }
        }
        sets.push(files);
    }
    if sets.iter().all(BTreeMap::is_empty) {
        eprintln!("note: no committed schemas in the history (a shallow clone?)");
    }
    sets
}

#[test]
fn the_history_check_reads_committed_schemas() {
    // Guards the check above against reading nothing (as it once did, from a wrong
    // directory): in a clone with history, HEAD's schemas are found.
    if git(&["rev-parse", "HEAD"]).is_some()
        && git(&["ls-tree", "--name-only", "HEAD", "schemas/"]).is_some_and(|l| !l.is_empty())
    {
        assert!(
            committed_versions().iter().any(|set| !set.is_empty()),
            "git lists schemas/ at HEAD, but the history check read none"
        );
    }
}

#[test]
fn current_types_are_backward_compatible_with_committed_schemas() {
    let mut problems = incompatibilities(&committed());
    for earlier in committed_versions() {
        problems.extend(incompatibilities(&earlier));
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "breaking changes inside a version (add a new version on a new topic instead):\n{}",
        problems.join("\n")
    );
}

#[test]
fn committed_schemas_are_up_to_date() {
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        // Checked first, written only when compatible (see `schema::update`).
        match update(&schemas_dir(), &committed_versions()) {
            Ok(written) => eprintln!("rewrote {written:?}"),
            Err(problems) => panic!(
                "schemas/ not rewritten: breaking changes inside a version:\n{}",
                problems.join("\n")
            ),
        }
    }
    let current = render_all();
    let committed = committed();
    let stale: Vec<&String> = current
        .iter()
        .filter(|(name, text)| committed.get(name) != Some(text))
        .map(|(name, _)| name)
        .collect();
    assert!(
        stale.is_empty(),
        "schemas/ is stale for {stale:?}: run `cargo xtask schemas` and commit the result"
    );
}

#[test]
fn every_committed_sample_still_decodes() {
    let dir = schemas_dir().join("samples");
    let mut seen = BTreeMap::new();
    for entry in fs::read_dir(&dir).expect("schemas/samples exists") {
        let path = entry.expect("readable entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (t, v) = parse_file_name(&name).unwrap_or_else(|| panic!("{name}: bad sample name"));
        let samples: Vec<Value> =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).expect("a JSON array");
        assert!(!samples.is_empty(), "{name} holds no sample");
        for (i, sample) in samples.into_iter().enumerate() {
            let bytes = serde_json::to_vec(&sample).unwrap();
            let decoded = Envelope::decode(&bytes)
                .unwrap_or_else(|e| panic!("{name} sample {i} no longer decodes: {e}"));
            assert_eq!(
                (decoded.event_type(), decoded.v),
                (t, v),
                "{name} sample {i}"
            );
        }
        seen.insert((t, v), name);
    }
    for t in EventType::ALL {
        for &v in t.supported_versions() {
            assert!(
                seen.contains_key(&(t, v)),
                "no sample for {}",
                file_name(t, v)
            );
        }
    }
}

#[test]
fn the_event_catalogue_documents_every_type_and_its_examples_decode() {
    let path = schemas_dir().join("../docs/events.md");
    let doc = fs::read_to_string(path).expect("docs/events.md exists");
    for t in EventType::ALL {
        assert!(doc.contains(t.name()), "docs/events.md lacks {t}");
    }
    let mut examples = 0;
    for block in doc.split("```json").skip(1) {
        let json = block.split("```").next().unwrap_or_default();
        let decoded = Envelope::decode(json.as_bytes());
        assert!(
            decoded.is_ok(),
            "an example in docs/events.md does not decode: {decoded:?}\n{json}"
        );
        examples += 1;
    }
    assert!(
        examples >= EventType::ALL.len() - 2,
        "only {examples} examples"
    );
}
