//! Every fuzz target over its seeds and its regressions (inputs that once crashed it, kept
//! in `regressions/<target>/`): what the fuzzer found stays fixed.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The envelopes of `schemas/samples/`, one per input, as the fuzzer's corpus is seeded.
fn sample_envelopes() -> Vec<Vec<u8>> {
    let samples = root().join("../../schemas/samples");
    let mut out = Vec::new();
    for file in files(&samples) {
        let text = std::fs::read(&file).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        for envelope in value
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![value.clone()])
        {
            out.push(serde_json::to_vec(&envelope).unwrap());
        }
    }
    assert!(out.len() >= 9, "every event type has samples");
    out
}

#[test]
fn envelope_target_holds_for_every_sample_and_regression() {
    for sample in sample_envelopes() {
        tributary_fuzz::envelope(&sample);
        assert!(
            tributary_events::Envelope::decode(&sample).is_ok(),
            "a committed sample decodes"
        );
    }
    for file in files(&root().join("regressions/envelope")) {
        tributary_fuzz::envelope(&std::fs::read(file).unwrap());
    }
}

#[test]
fn ingest_body_target_holds_for_every_sample_payload_and_regression() {
    for sample in sample_envelopes() {
        let envelope: serde_json::Value = serde_json::from_slice(&sample).unwrap();
        let data = serde_json::to_vec(&envelope["data"]).unwrap();
        for selector in 0u8..8 {
            let mut input = vec![selector];
            input.extend_from_slice(&data);
            tributary_fuzz::ingest_body(&input);
        }
    }
    for file in files(&root().join("regressions/ingest_body")) {
        tributary_fuzz::ingest_body(&std::fs::read(file).unwrap());
    }
}

#[test]
fn search_query_target_holds_for_every_seed_and_regression() {
    let seeds = files(&root().join("seeds/search_query"));
    assert!(!seeds.is_empty());
    for file in seeds
        .into_iter()
        .chain(files(&root().join("regressions/search_query")))
    {
        tributary_fuzz::search_query(&std::fs::read(file).unwrap());
    }
}
