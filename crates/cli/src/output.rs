//! Printing: one line per item, as text for people or as a JSON object per line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

/// Whether the command only reads: then a closed stdout (`| head`) ends it quietly. A
/// command that changes something carries on to the end when its output is cut, so it never
/// stops half-done.
static READ_ONLY: AtomicBool = AtomicBool::new(false);

/// Declares the running command read-only (see [`line`]).
pub(crate) fn read_only() {
    READ_ONLY.store(true, Ordering::Relaxed);
}

/// Writes `value` as one JSON line, or `text` when not in JSON mode.
pub(crate) fn line(json: bool, text: impl FnOnce() -> String, value: impl FnOnce() -> Value) {
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{}", value())
    } else {
        writeln!(out, "{}", text())
    };
    if written.is_err() && READ_ONLY.load(Ordering::Relaxed) {
        std::process::exit(0);
    }
}
