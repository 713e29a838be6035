//! `trib backup` and `trib restore`: topics to files and back. Each partition becomes one
//! zstd-compressed NDJSON file of its records in order (timestamp, key, value, headers;
//! bytes that are not UTF-8 in base64), and `manifest.json` lists every file with the
//! partition's offsets, record count and SHA-256. Restore checks every checksum first, then
//! writes each partition's records in order to the same partition number with their
//! original timestamps. A backup of the restored topics gives identical partition files.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tributary_runtime::rdkafka::Timestamp;
use tributary_runtime::rdkafka::consumer::Consumer;
use tributary_runtime::rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use tributary_runtime::rdkafka::producer::{FutureProducer, FutureRecord};

use crate::Context_;
use crate::{output, reader};

/// The manifest's format name.
const FORMAT: &str = "tributary-backup/1";
/// zstd level: fast, and deterministic for the same input.
const LEVEL: i32 = 3;

/// `trib backup` arguments.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// Topics to back up.
    #[arg(required = true)]
    topics: Vec<String>,
    /// Directory to write into (created; must be empty or new).
    #[arg(long)]
    out: PathBuf,
}

/// `trib restore` arguments.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// A directory written by `trib backup`.
    dir: PathBuf,
    /// Restore a topic under another name: `FROM=TO` (repeatable).
    #[arg(long = "to-topic", value_name = "FROM=TO")]
    renames: Vec<String>,
    /// Write into partitions that already hold records (by default refused: restoring
    /// twice would duplicate every record).
    #[arg(long)]
    allow_nonempty: bool,
}

/// `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    created_at: String,
    topics: BTreeMap<String, BTreeMap<i32, PartitionEntry>>,
}

/// One partition's file.
#[derive(Debug, Serialize, Deserialize)]
struct PartitionEntry {
    /// Relative to the backup directory.
    file: String,
    /// The partition's first offset read.
    low: i64,
    /// The partition's high watermark when the backup started (records up to it are in).
    high: i64,
    records: u64,
    sha256: String,
}

/// A byte string as JSON: text when it is UTF-8, else `{"base64": …}`.
fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({"base64": STANDARD.encode(bytes)}),
    }
}

fn json_bytes(value: &Value, what: &str) -> anyhow::Result<Vec<u8>> {
    match value {
        Value::String(text) => Ok(text.as_bytes().to_vec()),
        Value::Object(o) => {
            let b64 = o
                .get("base64")
                .and_then(Value::as_str)
                .with_context(|| format!("{what}: expected text or {{\"base64\": …}}"))?;
            STANDARD
                .decode(b64)
                .with_context(|| format!("{what}: bad base64"))
        }
        _ => bail!("{what}: expected text or {{\"base64\": …}}"),
    }
}

/// One record as its backup line.
fn record_line(message: &BorrowedMessage<'_>) -> anyhow::Result<Value> {
    let headers: Vec<Value> = reader::headers_of(message)
        .map_err(|e| anyhow::anyhow!("{e}: it cannot be backed up"))?
        .into_iter()
        .map(|(k, v)| json!([k, v.as_deref().map(bytes_json)]))
        .collect();
    let (timestamp, kind) = match message.timestamp() {
        Timestamp::CreateTime(t) => (Some(t), "create"),
        Timestamp::LogAppendTime(t) => (Some(t), "log_append"),
        Timestamp::NotAvailable => (None, "none"),
    };
    let mut line = Map::new();
    line.insert("timestamp".into(), json!(timestamp));
    line.insert("timestamp_type".into(), json!(kind));
    line.insert("key".into(), message.key().map_or(Value::Null, bytes_json));
    line.insert(
        "value".into(),
        message.payload().map_or(Value::Null, bytes_json),
    );
    line.insert("headers".into(), Value::Array(headers));
    Ok(Value::Object(line))
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} records ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

pub(crate) async fn backup(args: BackupArgs, context: &Context_) -> anyhow::Result<()> {
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .with_context(|| format!("cannot read {}", args.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: back up into a new directory",
            args.out.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let config = context.client.clone();
    let json = context.json;
    let manifest = tokio::task::spawn_blocking(move || -> anyhow::Result<Manifest> {
        let consumer = reader::consumer(&config)?;
        let mut manifest = Manifest {
            format: FORMAT.into(),
            created_at: chrono::Utc::now().to_rfc3339(),
            topics: BTreeMap::new(),
        };
        for topic in &args.topics {
            let partitions = reader::partitions(&consumer, topic)?;
            let dir = args.out.join(topic);
            std::fs::create_dir_all(&dir)?;
            let total: i64 = partitions.values().map(|(low, high)| high - low).sum();
            let bar = progress(total.max(0) as u64, topic);
            let mut entries = BTreeMap::new();
            for &p in partitions.keys() {
                // Read just before the partition is: a long backup must not start a
                // partition from an offset retention deleted meanwhile.
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, reader::TIMEOUT)
                    .with_context(|| format!("cannot read {topic}/{p}'s offsets"))?;
                let file = format!("{topic}/{p}.ndjson.zst");
                let path = args.out.join(&file);
                let out = std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let mut writer = BufWriter::new(zstd::Encoder::new(out, LEVEL)?);
                let mut records = 0u64;
                reader::read(
                    &consumer,
                    topic,
                    &BTreeMap::from([(p, low)]),
                    &BTreeMap::from([(p, high)]),
                    false,
                    |message| {
                        serde_json::to_writer(&mut writer, &record_line(message)?)?;
                        writer.write_all(b"\n")?;
                        records += 1;
                        bar.inc(1);
                        Ok(())
                    },
                )?;
                writer
                    .into_inner()
                    .map_err(|e| e.into_error())?
                    .finish()?
                    .sync_all()?;
                entries.insert(
                    p,
                    PartitionEntry {
                        sha256: sha256_of(&path)?,
                        file,
                        low,
                        high,
                        records,
                    },
                );
            }
            bar.finish_and_clear();
            let count: u64 = entries.values().map(|e| e.records).sum();
            output::line(
                json,
                || {
                    format!(
                        "{topic}: {count} record(s) in {} partition file(s)",
                        entries.len()
                    )
                },
                || json!({"topic": topic, "records": count, "partitions": entries.len()}),
            );
            manifest.topics.insert(topic.clone(), entries);
        }
        let path = args.out.join("manifest.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(manifest)
    })
    .await
    .context("backup")??;
    if !context.json {
        let total: u64 = manifest
            .topics
            .values()
            .flat_map(|ps| ps.values().map(|e| e.records))
            .sum();
        eprintln!("backed up {total} record(s)");
    }
    Ok(())
}

pub(crate) async fn restore(args: RestoreArgs, context: &Context_) -> anyhow::Result<()> {
    let manifest_path = args.dir.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .with_context(|| format!("{} is not a backup manifest", manifest_path.display()))?;
    if manifest.format != FORMAT {
        bail!(
            "{}: format {} is not {FORMAT}",
            manifest_path.display(),
            manifest.format
        );
    }
    let mut renames = BTreeMap::new();
    for rename in &args.renames {
        let (from, to) = rename
            .split_once('=')
            .filter(|(f, t)| !f.is_empty() && !t.is_empty())
            .with_context(|| format!("--to-topic {rename}: expected FROM=TO"))?;
        if !manifest.topics.contains_key(from) {
            bail!("--to-topic {rename}: the backup holds no topic {from}");
        }
        renames.insert(from.to_owned(), to.to_owned());
    }
    // Two topics of the backup into one target would mix their records.
    let mut into = BTreeMap::new();
    for topic in manifest.topics.keys() {
        let to = renames.get(topic).unwrap_or(topic);
        if let Some(other) = into.insert(to.clone(), topic.clone()) {
            bail!(
                "{other} and {topic} would both be restored into {to}: give each its own --to-topic"
            );
        }
    }
    // Every file whole before anything is written.
    for entries in manifest.topics.values() {
        for entry in entries.values() {
            let path = args.dir.join(&entry.file);
            let found = sha256_of(&path)?;
            if found != entry.sha256 {
                bail!(
                    "{} is damaged (SHA-256 {found}, the manifest says {}): nothing was restored",
                    path.display(),
                    entry.sha256
                );
            }
        }
    }
    // Every target partition exists (and is empty unless allowed).
    let config = context.client.clone();
    let targets: Vec<(String, String, Vec<i32>)> = manifest
        .topics
        .iter()
        .map(|(topic, entries)| {
            let to = renames.get(topic).cloned().unwrap_or_else(|| topic.clone());
            (topic.clone(), to, entries.keys().copied().collect())
        })
        .collect();
    let allow = args.allow_nonempty;
    let checked = targets.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer = reader::consumer(&config)?;
        for (_, to, partitions) in &checked {
            let have = reader::partitions(&consumer, to)
                .with_context(|| format!("create {to} (with at least {} partitions) first", partitions.len()))?;
            for p in partitions {
                match have.get(p) {
                    None => bail!("{to} has no partition {p}: it needs at least {} partitions", partitions.iter().max().map_or(0, |m| m + 1)),
                    Some((low, high)) if high > low && !allow => {
                        bail!("{to}/{p} already holds records ({low}..{high}): restore into empty topics, or pass --allow-nonempty")
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    })
    .await
    .context("checking the target topics")??;

    let producer: FutureProducer = context
        .client
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("Kafka producer")?;
    let mut restored = 0u64;
    for (from, to, _) in &targets {
        let entries = &manifest.topics[from];
        let total: u64 = entries.values().map(|e| e.records).sum();
        let bar = progress(total, to);
        let mut count = 0u64;
        for (&p, entry) in entries {
            let path = args.dir.join(&entry.file);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let lines = BufReader::new(zstd::Decoder::new(file)?).lines();
            let mut pending = Vec::new();
            for (n, line) in lines.enumerate() {
                let at = || format!("{} line {}", path.display(), n + 1);
                let line: Value = serde_json::from_str(&line.with_context(at)?).with_context(at)?;
                let key = match &line["key"] {
                    Value::Null => None,
                    v => Some(json_bytes(v, &at())?),
                };
                let value = match &line["value"] {
                    Value::Null => None,
                    v => Some(json_bytes(v, &at())?),
                };
                let mut headers = OwnedHeaders::new();
                for h in line["headers"].as_array().cloned().unwrap_or_default() {
                    let name = h[0].as_str().with_context(at)?.to_owned();
                    let value = match &h[1] {
                        Value::Null => None,
                        v => Some(json_bytes(v, &at())?),
                    };
                    headers = headers.insert(Header {
                        key: &name,
                        value: value.as_deref(),
                    });
                }
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(to).partition(p).headers(headers);
                if let Some(key) = &key {
                    record = record.key(key.as_slice());
                }
                if let Some(value) = &value {
                    record = record.payload(value.as_slice());
                }
                if let Some(ts) = line["timestamp"].as_i64() {
                    record = record.timestamp(ts);
                }
                // Sent in order (the idempotent producer keeps a partition's order), acked
                // in batches.
                let delivery = producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .with_context(|| format!("sending {}", at()))?;
                pending.push(delivery);
                if pending.len() >= 1000 {
                    for d in pending.drain(..) {
                        d.await
                            .context("the producer went away")?
                            .map_err(|(e, _)| e)
                            .with_context(|| format!("restoring {to}/{p}"))?;
                    }
                }
                count += 1;
                bar.inc(1);
            }
            for d in pending.drain(..) {
                d.await
                    .context("the producer went away")?
                    .map_err(|(e, _)| e)
                    .with_context(|| format!("restoring {to}/{p}"))?;
            }
        }
        bar.finish_and_clear();
        restored += count;
        output::line(
            context.json,
            || format!("{from} → {to}: {count} record(s) restored"),
            || json!({"from": from, "to": to, "records": count}),
        );
    }
    if !context.json {
        eprintln!("restored {restored} record(s)");
    }
    Ok(())
}
