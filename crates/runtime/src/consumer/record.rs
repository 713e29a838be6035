//! Records to publish: outputs of a processor and dead letters, kept until acknowledged so
//! a failed delivery can be sent again, and cut down when a dead letter is too large.

use rdkafka::message::{Headers, Message, OwnedMessage};
use tributary_events::{TraceParent, envelope};

use crate::dlq::{self, DeadLetter};
use crate::processor::Output;

/// What a record is, which decides what happens when the broker refuses it for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An output of a processor: refused, the input is dead-lettered instead.
    Output,
    /// A dead letter, at a truncation stage (0: whole): refused for its size, it is sent
    /// again cut down further.
    DeadLetter(u8),
}

/// A record to publish.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) kind: Kind,
}

impl OutRecord {
    pub(crate) fn from_output(output: Output, trace: &TraceParent) -> OutRecord {
        match output {
            Output::Event {
                topic,
                mut envelope,
            } => {
                if envelope.trace.is_none() {
                    envelope.trace = Some(trace.to_string());
                }
                OutRecord {
                    topic,
                    key: Some(envelope.key.clone().into_bytes()),
                    value: Some(envelope.encode()),
                    headers: envelope
                        .headers()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                        .collect(),
                    kind: Kind::Output,
                }
            }
            Output::Tombstone { topic, key } => OutRecord {
                topic,
                key: Some(key.into_bytes()),
                value: None,
                headers: vec![(
                    envelope::HEADER_TRACEPARENT.to_owned(),
                    trace.to_string().into_bytes(),
                )],
                kind: Kind::Output,
            },
        }
    }

    /// This dead letter cut down one stage further, or `None` when nothing is left to cut.
    pub(crate) fn truncated(&self) -> Option<OutRecord> {
        let Kind::DeadLetter(stage) = self.kind else {
            return None;
        };
        let next = stage + 1;
        let keep = match next {
            1 => 256 * 1024,
            2 => 16 * 1024,
            3 => 0,
            _ => return None,
        };
        let original = self.value.as_ref().map_or(0, Vec::len);
        let mut record = self.clone();
        record.kind = Kind::DeadLetter(next);
        // The dlq.* headers say where it came from; the original headers are what may be
        // large, so they go first.
        record
            .headers
            .retain(|(k, _)| k.starts_with("dlq.") && k != dlq::TRUNCATED);
        if let Some(value) = &mut record.value {
            value.truncate(keep);
        }
        if keep == 0 {
            record.value = None;
        }
        let kept = record.value.as_ref().map_or(0, Vec::len);
        record.headers.push((
            dlq::TRUNCATED.to_owned(),
            format!(
                "refused by the broker as too large: value cut to {kept} of {original} bytes, \
                 original headers dropped"
            )
            .into_bytes(),
        ));
        Some(record)
    }
}

/// The dead letter of `message`: its key, value and headers untouched, then the `dlq.*`
/// headers saying where it came from and why.
pub(crate) fn dead_letter(
    message: &OwnedMessage,
    letter: &DeadLetter,
    service: &str,
    dlq_topic: &str,
) -> OutRecord {
    // rdkafka panics on a header name that is not UTF-8; such headers cannot be copied,
    // and the dead letter says so instead.
    let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    }));
    let mut headers: Vec<(String, Vec<u8>)> = match copied {
        Ok(headers) => headers,
        Err(_) => vec![(
            dlq::TRUNCATED.to_owned(),
            b"original headers dropped: a header name is not UTF-8".to_vec(),
        )],
    };
    headers.extend(
        dlq::headers(
            letter,
            service,
            message.topic(),
            message.partition(),
            message.offset(),
        )
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes())),
    );
    OutRecord {
        topic: dlq_topic.to_owned(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        kind: Kind::DeadLetter(0),
    }
}

/// The dead letter of an output that has no input (from `on_tick`) and that the broker
/// refused: the output itself, with `dlq.*` headers naming where it was meant to go.
pub(crate) fn dead_letter_of_output(
    record: &OutRecord,
    letter: &DeadLetter,
    service: &str,
    dlq_topic: &str,
) -> OutRecord {
    let mut headers = record.headers.clone();
    headers.extend(
        dlq::headers(letter, service, &record.topic, -1, -1)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes())),
    );
    OutRecord {
        topic: dlq_topic.to_owned(),
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        kind: Kind::DeadLetter(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> OutRecord {
        OutRecord {
            topic: "g.dlq".into(),
            key: Some(b"k".to_vec()),
            value: Some(vec![b'x'; 1_000_000]),
            headers: vec![
                ("big".into(), vec![b'h'; 100_000]),
                (dlq::ERROR_KIND.into(), b"not_json".to_vec()),
            ],
            kind: Kind::DeadLetter(0),
        }
    }

    #[test]
    fn a_dead_letter_is_cut_down_in_stages_and_says_so() {
        let one = letter().truncated().unwrap();
        assert_eq!(one.value.as_ref().unwrap().len(), 256 * 1024);
        assert!(one.headers.iter().all(|(k, _)| k != "big"));
        let note = one
            .headers
            .iter()
            .find(|(k, _)| k == dlq::TRUNCATED)
            .unwrap();
        let note = String::from_utf8_lossy(&note.1);
        assert!(note.contains("262144 of 1000000"), "{note}");
        let two = one.truncated().unwrap();
        assert_eq!(two.value.as_ref().unwrap().len(), 16 * 1024);
        assert_eq!(
            two.headers
                .iter()
                .filter(|(k, _)| k == dlq::TRUNCATED)
                .count(),
            1
        );
        let three = two.truncated().unwrap();
        assert!(three.value.is_none());
        assert!(three.headers.iter().any(|(k, _)| k == dlq::ERROR_KIND));
        assert!(three.truncated().is_none(), "nothing left to cut");
    }

    #[test]
    fn an_output_is_never_truncated() {
        let mut record = letter();
        record.kind = Kind::Output;
        assert!(record.truncated().is_none());
    }
}
