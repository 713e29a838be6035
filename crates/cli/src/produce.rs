//! `trib produce`: NDJSON onto a topic. A line is an envelope (an object with `type` and
//! `data`), checked like any consumer checks one, or a bare payload for one of the truth
//! topics, validated and wrapped as ingest does. Every line is checked before anything is
//! sent: one bad line and nothing is produced. Reports what the broker acknowledged.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Args;
use serde_json::{Value, json};
use tributary_events::{ActivityKind, Envelope, Event, EventType, topics};
use tributary_runtime::rdkafka::message::{Header, OwnedHeaders};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};

use crate::Context_;
use crate::{output, reader};

/// At most this many problems are listed.
const MAX_PROBLEMS: usize = 20;

/// `trib produce` arguments.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// The topic.
    topic: String,
    /// NDJSON file; `-` or nothing reads standard input.
    file: Option<PathBuf>,
}

/// The event type a bare payload on `topic` is, or why payloads cannot go there.
fn payload_type(topic: &str, value: &Value) -> Result<EventType, String> {
    match topic {
        topics::PRODUCTS => Ok(EventType::ProductUpserted),
        topics::PRICES => Ok(EventType::PriceUpdated),
        topics::STOCK => Ok(EventType::StockChanged),
        topics::ACTIVITY => {
            let kind = value.get("kind").and_then(Value::as_str);
            ActivityKind::ALL
                .into_iter()
                .find(|k| Some(k.as_str()) == kind)
                .map(EventType::for_activity)
                .ok_or_else(|| {
                    "/kind: must be one of \"product_viewed\", \"added_to_cart\", \"order_placed\""
                        .to_owned()
                })
        }
        other => Err(format!(
            "a bare payload (no type and data) can only go to {}, {}, {} or {}; write envelopes for {other}",
            topics::PRODUCTS,
            topics::PRICES,
            topics::STOCK,
            topics::ACTIVITY
        )),
    }
}

/// One NDJSON line as an envelope, or every problem with it.
fn envelope(topic: &str, line: &str) -> Result<Envelope, Vec<String>> {
    let value: Value = serde_json::from_str(line).map_err(|e| vec![format!("not JSON: {e}")])?;
    if !value.is_object() {
        return Err(vec!["not a JSON object".into()]);
    }
    if value.get("type").is_some() && value.get("data").is_some() {
        return Envelope::from_json(value).map_err(|e| vec![format!("not a valid envelope: {e}")]);
    }
    let event_type = payload_type(topic, &value).map_err(|e| vec![e])?;
    let mut value = value;
    let now = Utc::now();
    if event_type.name().starts_with("activity.") && value.get("time").is_none_or(Value::is_null) {
        value["time"] = json!(now.to_rfc3339());
    }
    let event = event_type.parse(1, value).map_err(|violations| {
        violations
            .into_iter()
            .map(|v| {
                format!(
                    "{} {}",
                    if v.path.is_empty() { "/" } else { &v.path },
                    v.message
                )
            })
            .collect::<Vec<_>>()
    })?;
    let time = match &event {
        Event::Activity(a) => a.time.unwrap_or(now),
        _ => now,
    };
    Ok(Envelope::new("trib", event).at(time))
}

pub(crate) async fn run(args: ProduceArgs, context: &Context_) -> anyhow::Result<()> {
    let mut text = String::new();
    match args.file.as_ref().filter(|f| f.as_os_str() != "-") {
        Some(path) => {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
        }
    }
    // The topic must exist: producing would otherwise create it with the broker's defaults.
    let config = context.client.clone();
    let topic = args.topic.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = reader::consumer(&config)?;
        reader::partitions(&consumer, &topic).map(|_| ())
    })
    .await
    .context("checking the topic")??;

    let mut envelopes = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match envelope(&args.topic, line) {
            Ok(e) => envelopes.push((n + 1, e)),
            Err(found) => {
                problems.extend(found.into_iter().map(|p| format!("line {}: {p}", n + 1)))
            }
        }
    }
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(MAX_PROBLEMS);
        problems.truncate(MAX_PROBLEMS);
        if more > 0 {
            problems.push(format!("… and {more} more"));
        }
        bail!("nothing was produced:\n  {}", problems.join("\n  "));
    }
    if envelopes.is_empty() {
        bail!("no records: the input is empty");
    }
    let producer: FutureProducer = context
        .client
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("Kafka producer")?;
    let sends = envelopes.iter().map(|(line, envelope)| {
        let bytes = envelope.encode();
        let headers = envelope.headers();
        let producer = producer.clone();
        let topic = args.topic.clone();
        let key = envelope.key.clone();
        let line = *line;
        async move {
            let headers = headers.iter().fold(OwnedHeaders::new(), |hs, (k, v)| {
                hs.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
                .key(key.as_str())
                .payload(bytes.as_slice())
                .headers(headers);
            let answer = producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e);
            (line, answer)
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let mut acknowledged = 0;
    let mut failures = Vec::new();
    for ((line, answer), (_, envelope)) in answers.into_iter().zip(&envelopes) {
        match answer {
            Ok(delivery) => {
                acknowledged += 1;
                output::line(
                    context.json,
                    || {
                        format!(
                            "line {line} → {}/{}@{} id={}",
                            args.topic, delivery.partition, delivery.offset, envelope.id
                        )
                    },
                    || {
                        json!({"line": line, "topic": args.topic, "partition": delivery.partition,
                               "offset": delivery.offset, "id": envelope.id.to_string()})
                    },
                );
            }
            Err(e) => failures.push(format!("line {line}: {e}")),
        }
    }
    if !context.json {
        eprintln!("{acknowledged} record(s) acknowledged");
    }
    if !failures.is_empty() {
        bail!(
            "{} record(s) not acknowledged (they may or may not be on the topic):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_validated_and_wrapped_by_topic() {
        let e = envelope(topics::STOCK, r#"{"product_id": "p-1", "quantity": 3}"#).unwrap();
        assert_eq!(e.key, "p-1");
        assert_eq!(e.to_json()["type"], "catalog.stock.changed");
        let viewed = envelope(
            topics::ACTIVITY,
            r#"{"kind": "product_viewed", "product_id": "p", "retailer_id": "r"}"#,
        )
        .unwrap();
        assert_eq!(viewed.to_json()["type"], "activity.product_viewed");
        let wrong =
            envelope(topics::STOCK, r#"{"product_id": "p-1", "quantity": "3"}"#).unwrap_err();
        assert!(wrong[0].starts_with("/quantity"), "{wrong:?}");
        assert!(envelope(topics::STOCK, "{nope").unwrap_err()[0].starts_with("not JSON"));
        assert!(envelope(topics::STOCK, "[1]").is_err());
        let elsewhere = envelope("analytics.aggregates.v1", r#"{"x": 1}"#).unwrap_err();
        assert!(elsewhere[0].contains("write envelopes"), "{elsewhere:?}");
    }

    #[test]
    fn envelopes_pass_through_checked() {
        let original = envelope(topics::STOCK, r#"{"product_id": "p-1", "quantity": 3}"#).unwrap();
        let line = original.to_json().to_string();
        let again = envelope("any.topic", &line).unwrap();
        assert_eq!(again, original);
        let mut future = original.to_json();
        future["v"] = json!(99);
        assert!(envelope("any.topic", &future.to_string()).is_err());
    }
}
