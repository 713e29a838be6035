//! `trib dlq inspect` and `trib dlq redrive`: a group's dead letters (`<group>.dlq`) with the
//! headers saying where each came from and why it failed, and sending chosen ones back to
//! their original topic once the cause is fixed (the same key, bytes and original headers;
//! the envelope id is unchanged, so consumers that de-duplicate on it process it once).

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use tributary_events::Envelope;
use tributary_runtime::dlq;
use tributary_runtime::rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};

use crate::Context_;
use crate::{output, reader};

/// `trib dlq` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List a group's dead letters with their headers.
    Inspect(Selection),
    /// Send chosen dead letters back to their original topic.
    Redrive {
        #[command(flatten)]
        selection: Selection,
        /// List what would be sent without sending.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which dead letters.
#[derive(Debug, Args)]
pub(crate) struct Selection {
    /// The consumer group whose dead letters (`<group>.dlq`) to read.
    group: String,
    /// Only letters whose record is an envelope of this type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only letters dead-lettered at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only letters of this error kind (`permanent`, `invalid_payload`, …).
    #[arg(long)]
    kind: Option<String>,
}

/// One dead letter, read.
#[derive(Debug)]
struct Letter {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    /// `None` for a tombstone (kept one when sent back).
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn read(message: &BorrowedMessage<'_>) -> anyhow::Result<Letter> {
        Ok(Letter {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: reader::headers_of(message).map_err(|e| anyhow::anyhow!(e))?,
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned())
    }

    fn envelope_type(&self) -> Option<String> {
        Envelope::decode(self.value.as_deref()?)
            .ok()
            .and_then(|e| e.to_json()["type"].as_str().map(str::to_owned))
    }

    fn to_json(&self, dlq_topic: &str) -> Value {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref().map_or(Value::Null, |v| {
                        Value::String(String::from_utf8_lossy(v).into_owned())
                    }),
                )
            })
            .collect();
        let value = match self.value.as_deref() {
            None => Value::Null,
            Some(bytes) => match Envelope::decode(bytes) {
                Ok(e) => e.to_json(),
                Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
            },
        };
        json!({
            "dlq": {"topic": dlq_topic, "partition": self.partition, "offset": self.offset},
            "original": {
                "topic": self.header(dlq::ORIGINAL_TOPIC),
                "partition": self.header(dlq::ORIGINAL_PARTITION).and_then(|p| p.parse::<i32>().ok()),
                "offset": self.header(dlq::ORIGINAL_OFFSET).and_then(|o| o.parse::<i64>().ok()),
            },
            "error": {"kind": self.header(dlq::ERROR_KIND), "message": self.header(dlq::ERROR_MESSAGE)},
            "service": self.header(dlq::SERVICE),
            "attempts": self.header(dlq::ATTEMPTS).and_then(|a| a.parse::<u32>().ok()),
            "failed_at": self.header(dlq::FAILED_AT),
            "truncated": self.header(dlq::TRUNCATED),
            "key": self.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
            "value": value,
        })
    }

    fn summary(&self, dlq_topic: &str) -> String {
        let or = |h: &str| self.header(h).unwrap_or_else(|| "?".into());
        format!(
            "{dlq_topic}/{}@{}  from {}/{}@{}  {}  at {}  attempts={}  service={}  key={}  type={}\n  {}",
            self.partition,
            self.offset,
            or(dlq::ORIGINAL_TOPIC),
            or(dlq::ORIGINAL_PARTITION),
            or(dlq::ORIGINAL_OFFSET),
            or(dlq::ERROR_KIND),
            or(dlq::FAILED_AT),
            or(dlq::ATTEMPTS),
            or(dlq::SERVICE),
            self.key
                .as_ref()
                .map_or_else(String::new, |k| String::from_utf8_lossy(k).into_owned()),
            self.envelope_type()
                .unwrap_or_else(|| "(not an envelope)".into()),
            or(dlq::ERROR_MESSAGE),
        )
    }
}

/// Every selected letter of the group's dead-letter topic, in order per partition.
async fn select(
    selection: &Selection,
    context: &Context_,
) -> anyhow::Result<(String, Vec<Letter>)> {
    let since = selection
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .with_context(|| {
                    format!("--since {s}: expected an RFC 3339 time (2026-11-01T10:00:00Z)")
                })
        })
        .transpose()?;
    let topic = format!("{}.dlq", selection.group);
    let config = context.client.clone();
    let read_topic = topic.clone();
    let letters = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Letter>> {
        let consumer = reader::consumer(&config)?;
        let partitions = reader::partitions(&consumer, &read_topic)
            .with_context(|| "the group has never dead-lettered anything, or is misnamed")?;
        let starts = partitions.iter().map(|(p, (low, _))| (*p, *low)).collect();
        let ends = partitions
            .iter()
            .map(|(p, (_, high))| (*p, *high))
            .collect();
        let mut letters = Vec::new();
        reader::read(&consumer, &read_topic, &starts, &ends, false, |m| {
            letters.push(Letter::read(m)?);
            Ok(())
        })?;
        Ok(letters)
    })
    .await
    .context("reading dead letters")??;
    let letters = letters
        .into_iter()
        .filter(|l| {
            selection
                .event_type
                .as_ref()
                .is_none_or(|t| l.envelope_type().as_ref() == Some(t))
        })
        .filter(|l| {
            selection
                .kind
                .as_ref()
                .is_none_or(|k| l.header(dlq::ERROR_KIND).as_ref() == Some(k))
        })
        .filter(|l| {
            since.is_none_or(|since| {
                l.header(dlq::FAILED_AT)
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .is_some_and(|t| t >= since)
            })
        })
        .collect();
    Ok((topic, letters))
}

pub(crate) async fn run(command: DlqCommand, context: &Context_) -> anyhow::Result<()> {
    match command {
        DlqCommand::Inspect(selection) => {
            let (topic, letters) = select(&selection, context).await?;
            for letter in &letters {
                output::line(
                    context.json,
                    || letter.summary(&topic),
                    || letter.to_json(&topic),
                );
            }
            if !context.json {
                eprintln!("{} dead letter(s)", letters.len());
            }
            Ok(())
        }
        DlqCommand::Redrive { selection, dry_run } => {
            let (topic, letters) = select(&selection, context).await?;
            redrive(&topic, &letters, dry_run, context).await
        }
    }
}

async fn redrive(
    dlq_topic: &str,
    letters: &[Letter],
    dry_run: bool,
    context: &Context_,
) -> anyhow::Result<()> {
    // Each letter must say where it came from and be whole.
    for letter in letters {
        let at = format!("{dlq_topic}/{}@{}", letter.partition, letter.offset);
        if letter.header(dlq::ORIGINAL_TOPIC).is_none() {
            bail!(
                "{at} has no {} header: nothing says where to send it",
                dlq::ORIGINAL_TOPIC
            );
        }
        if let Some(cut) = letter.header(dlq::TRUNCATED) {
            bail!(
                "{at} was truncated when dead-lettered ({cut}): its original bytes are gone; leave it out (--type, --kind, --since)"
            );
        }
    }
    let producer: FutureProducer = context
        .client
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("Kafka producer")?;
    let mut sent = 0;
    for letter in letters {
        let to = letter.header(dlq::ORIGINAL_TOPIC).expect("checked above");
        if dry_run {
            output::line(
                context.json,
                || {
                    format!(
                        "would send {dlq_topic}/{}@{} to {to}",
                        letter.partition, letter.offset
                    )
                },
                || json!({"dlq_offset": letter.offset, "dlq_partition": letter.partition, "to": to, "sent": false}),
            );
            continue;
        }
        // The original record: its key, bytes and headers, without the dead-letter ones.
        let headers = letter
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .fold(OwnedHeaders::new(), |hs, (k, v)| {
                hs.insert(Header {
                    key: k,
                    value: v.as_deref(),
                })
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&to).headers(headers);
        if let Some(value) = &letter.value {
            record = record.payload(value.as_slice());
        }
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| {
                format!(
                    "sending {dlq_topic}/{}@{} to {to}",
                    letter.partition, letter.offset
                )
            })?;
        sent += 1;
        output::line(
            context.json,
            || {
                format!(
                    "sent {dlq_topic}/{}@{} to {to}/{}@{}",
                    letter.partition, letter.offset, delivery.partition, delivery.offset
                )
            },
            || {
                json!({"dlq_offset": letter.offset, "dlq_partition": letter.partition, "to": to,
                       "partition": delivery.partition, "offset": delivery.offset, "sent": true})
            },
        );
    }
    if !dry_run && !context.json {
        eprintln!("{sent} dead letter(s) sent back");
    }
    Ok(())
}
