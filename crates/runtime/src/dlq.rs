//! Dead letters: the untouched original record plus headers saying where it came from and
//! why it failed, so an operator can inspect and replay it.

use chrono::Utc;

/// Header: the topic the record was read from.
pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
/// Header: its partition.
pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
/// Header: its offset.
pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
/// Header: the error kind (`not_json`, `not_envelope`, `unknown_type`,
/// `unsupported_version`, `invalid_payload`, `permanent`, `retries_exhausted`,
/// `output_rejected`).
pub const ERROR_KIND: &str = "dlq.error.kind";
/// Header: the error message.
pub const ERROR_MESSAGE: &str = "dlq.error.message";
/// Header: the service that gave up on it.
pub const SERVICE: &str = "dlq.service";
/// Header: how many times processing was attempted.
pub const ATTEMPTS: &str = "dlq.attempts";
/// Header: when it was dead-lettered (RFC 3339).
pub const FAILED_AT: &str = "dlq.failed_at";

/// Header: present when the broker refused the dead letter as too large and it was cut
/// down; says what was cut.
pub const TRUNCATED: &str = "dlq.truncated";

/// Error kind of a handler's permanent failure.
pub const KIND_PERMANENT: &str = "permanent";
/// Error kind of a transient failure that outlived its retries.
pub const KIND_RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// Error kind of an input whose output the broker refused for good (too large, unknown or
/// unauthorized topic); the error message names the output's topic and the broker's error.
pub const KIND_OUTPUT_REJECTED: &str = "output_rejected";

/// Longest error message carried in a header; a validation report can be long.
const MAX_MESSAGE: usize = 4096;

/// Why a message is being dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Machine-readable kind.
    pub kind: String,
    /// Human-readable message.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
}

/// The `dlq.*` headers for a record from `topic`/`partition`/`offset`.
pub fn headers(
    letter: &DeadLetter,
    service: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<(&'static str, String)> {
    let mut message = letter.message.clone();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    vec![
        (ORIGINAL_TOPIC, topic.to_owned()),
        (ORIGINAL_PARTITION, partition.to_string()),
        (ORIGINAL_OFFSET, offset.to_string()),
        (ERROR_KIND, letter.kind.clone()),
        (ERROR_MESSAGE, message),
        (SERVICE, service.to_owned()),
        (ATTEMPTS, letter.attempts.to_string()),
        (FAILED_AT, Utc::now().to_rfc3339()),
    ]
}
