//! `trib tail`: a topic's records as decoded envelopes, with partition and offset. A reader
//! like kcat: it assigns partitions itself, joins no group and commits nothing. A record
//! that is not a valid envelope is printed raw and flagged, never skipped.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{Value, json};
use tributary_events::Envelope;
use tributary_runtime::rdkafka::consumer::Consumer;
use tributary_runtime::rdkafka::message::Message;
use tributary_runtime::rdkafka::{Offset, TopicPartitionList};

use crate::Context_;
use crate::{output, reader};

/// `trib tail` arguments.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The topic.
    topic: String,
    /// Where to start: `beginning`, `end`, `-N` (the last N records of each partition) or
    /// an RFC 3339 time (the first record at or after it).
    #[arg(long, default_value = "beginning", allow_hyphen_values = true)]
    from: String,
    /// Keep printing new records (otherwise stop at the end the topic had when started).
    #[arg(long, short)]
    follow: bool,
    /// Only envelopes of this type (e.g. `catalog.product.upserted`).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only records with this key.
    #[arg(long)]
    key: Option<String>,
    /// Only envelopes whose data field (a dotted path, e.g. `brand` or `attributes.color`)
    /// has this value; repeatable, all must match.
    #[arg(long = "where", value_name = "FIELD=VALUE")]
    filters: Vec<String>,
}

/// Where each partition starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum From {
    Beginning,
    End,
    Last(i64),
    Time(DateTime<Utc>),
}

fn parse_from(text: &str) -> anyhow::Result<From> {
    match text {
        "beginning" => Ok(From::Beginning),
        "end" => Ok(From::End),
        _ if text.starts_with('-') => text[1..]
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(From::Last)
            .with_context(|| format!("--from {text}: expected -N with N a whole number")),
        _ => DateTime::parse_from_rfc3339(text)
            .map(|t| From::Time(t.with_timezone(&Utc)))
            .with_context(|| {
                format!("--from {text}: expected beginning, end, -N or an RFC 3339 time (2026-11-01T10:00:00Z)")
            }),
    }
}

/// A `--where` filter: a path into the envelope's data and the value it must have.
fn parse_filter(text: &str) -> anyhow::Result<(Vec<String>, String)> {
    let (field, value) = text
        .split_once('=')
        .filter(|(f, _)| !f.trim().is_empty())
        .with_context(|| format!("--where {text}: expected FIELD=VALUE"))?;
    Ok((
        field.trim().split('.').map(str::to_owned).collect(),
        value.to_owned(),
    ))
}

/// Whether `data` holds `value` at `path` (strings compared as they are, other values as
/// JSON text).
fn matches(data: &Value, path: &[String], value: &str) -> bool {
    let found = path.iter().try_fold(data, |v, field| v.get(field));
    match found {
        Some(Value::String(s)) => s == value,
        Some(other) => {
            let text = other.to_string();
            text == value
        }
        None => false,
    }
}

pub(crate) async fn run(args: TailArgs, context: &Context_) -> anyhow::Result<()> {
    let from = parse_from(&args.from)?;
    let filters = args
        .filters
        .iter()
        .map(|f| parse_filter(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = context.client.clone();
    let json = context.json;
    tokio::task::spawn_blocking(move || tail(config, args, from, filters, json))
        .await
        .context("tail")?
}

fn tail(
    config: tributary_runtime::rdkafka::ClientConfig,
    args: TailArgs,
    from: From,
    filters: Vec<(Vec<String>, String)>,
    json: bool,
) -> anyhow::Result<()> {
    let consumer = reader::consumer(&config)?;
    let topic = &args.topic;
    let partitions = reader::partitions(&consumer, topic)
        .with_context(|| format!("at {}", config.get("bootstrap.servers").unwrap_or("?")))?;
    let mut starts = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for (&p, &(low, high)) in &partitions {
        let start = match &from {
            From::Beginning => low,
            From::End => high,
            From::Last(n) => (high - n).max(low),
            From::Time(t) => {
                let mut query = TopicPartitionList::new();
                query.add_partition_offset(topic, p, Offset::Offset(t.timestamp_millis()))?;
                let found = consumer
                    .offsets_for_times(query, reader::TIMEOUT)
                    .with_context(|| format!("cannot look up {topic}/{p} by time"))?;
                match found.elements().first().map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => o,
                    _ => high,
                }
            }
        };
        starts.insert(p, start);
        ends.insert(p, high);
    }
    reader::read(&consumer, topic, &starts, &ends, args.follow, |message| {
        print(message, &args, &filters, json);
        Ok(())
    })
}

fn print(
    message: &tributary_runtime::rdkafka::message::BorrowedMessage<'_>,
    args: &TailArgs,
    filters: &[(Vec<String>, String)],
    json: bool,
) {
    let key = message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned());
    if args.key.as_ref().is_some_and(|k| key.as_ref() != Some(k)) {
        return;
    }
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    let timestamp = message.timestamp().to_millis();
    let payload = message.payload().unwrap_or_default();
    match Envelope::decode(payload) {
        Ok(envelope) => {
            let value = envelope.to_json();
            let kind = value["type"].as_str().unwrap_or_default().to_owned();
            if args.event_type.as_ref().is_some_and(|t| *t != kind) {
                return;
            }
            if !filters
                .iter()
                .all(|(path, v)| matches(&value["data"], path, v))
            {
                return;
            }
            output::line(
                json,
                || {
                    format!(
                        "{topic}/{partition}@{offset} {} {kind} key={} id={}{} {}",
                        value["time"].as_str().unwrap_or_default(),
                        envelope.key,
                        envelope.id,
                        envelope
                            .trace
                            .as_ref()
                            .map_or_else(String::new, |t| format!(" trace={t}")),
                        value["data"]
                    )
                },
                || {
                    json!({"topic": topic, "partition": partition, "offset": offset,
                           "timestamp": timestamp, "key": key, "envelope": value})
                },
            );
        }
        Err(error) => {
            // Never skipped: an operator tailing a topic wants to see what is wrong on it.
            let raw = String::from_utf8_lossy(payload).into_owned();
            output::line(
                json,
                || {
                    format!(
                        "{topic}/{partition}@{offset} UNDECODABLE ({error}) key={} raw={raw}",
                        key.as_deref().unwrap_or("")
                    )
                },
                || {
                    json!({"topic": topic, "partition": partition, "offset": offset,
                           "timestamp": timestamp, "key": key, "undecodable": error.to_string(),
                           "raw": raw})
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_reads_every_form_and_names_bad_ones() {
        assert_eq!(parse_from("beginning").unwrap(), From::Beginning);
        assert_eq!(parse_from("end").unwrap(), From::End);
        assert_eq!(parse_from("-5").unwrap(), From::Last(5));
        assert!(matches!(
            parse_from("2026-11-01T10:00:00Z").unwrap(),
            From::Time(_)
        ));
        for bad in ["-x", "--3", "yesterday", "2026-13-01T00:00:00Z"] {
            let e = parse_from(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn where_filters_follow_dotted_paths() {
        let data = json!({"brand": "acme", "price": {"amount_minor": 1999}, "ok": true});
        let (path, value) = parse_filter("price.amount_minor=1999").unwrap();
        assert!(matches(&data, &path, &value));
        let (path, value) = parse_filter("brand=acme").unwrap();
        assert!(matches(&data, &path, &value));
        let (path, value) = parse_filter("brand=other").unwrap();
        assert!(!matches(&data, &path, &value));
        assert!(matches(&data, &["ok".into()], "true"));
        assert!(!matches(&data, &["missing".into()], "x"));
        assert!(parse_filter("=x").is_err() && parse_filter("nothing").is_err());
    }
}
