//! Printing: one line per item, as text for people or as a JSON object per line.

use std::io::Write;

use serde_json::Value;

/// Writes `value` as one JSON line, or `text` when not in JSON mode. A closed pipe (`| head`)
/// ends the output quietly.
pub(crate) fn line(json: bool, text: impl FnOnce() -> String, value: impl FnOnce() -> Value) {
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{}", value())
    } else {
        writeln!(out, "{}", text())
    };
    if written.is_err() {
        std::process::exit(0);
    }
}
