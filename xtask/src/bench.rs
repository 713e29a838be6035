//! `cargo xtask bench`: every benchmark next to a baseline measured in the same run, written
//! as a table to `docs/benchmarks.md` with the machine it ran on.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cargo::{self, workspace_root};

/// What each benchmark's baseline is, for the reader of the table.
const NOTES: &str = "\
- **consumer_loop**: `tributary-runtime`'s loop (decode and validate every envelope, per-partition \
workers, watermark commits, and in pass-through an acknowledged output per input) against a bare \
rdkafka `BaseConsumer` on the same topic, broker and run (the bare consumer neither decodes nor \
commits; in pass-through it produces each payload unchanged and awaits every ack). 6 partitions, \
the dev broker with memory storage on the same machine, both sides with `fetch.wait.max.ms=5` \
(the dev broker holds every fetch for the full wait). The loop's in-flight budget is set above \
the message count so the run measures the loop's cost per message, not its back-pressure \
(covered by its own test).
- **decode**: `Envelope::decode` (parse, validate every field against the generated schema, \
build the typed event) against `serde_json::from_slice::<Value>` of the same bytes, the floor \
any JSON consumer pays. One core, no broker.
- **ingest**: a Rust load generator in the same process (256 keep-alive HTTP/1.1 \
connections, requests pre-built byte for byte and responses read with a minimal parser, so it \
costs about what wrk would) posting stock events to ingest, which validates, wraps and \
publishes each and answers only once the broker acknowledged it; against a bare rdkafka \
producer publishing the same number of envelopes (pre-built, with the same headers) to the same \
topic and awaiting every ack, with the same producer settings and allocator. Each scenario runs \
three rounds, each next to its own baseline (the broker's storage grows through the run); the \
median round is shown. The dev broker with memory storage. Load generator, ingest and broker share the \
machine's two cores. Goals: single-event at least 30,000 requests/s, batches at least 0.6x.
- **metrics_emitter**: the real `metrics-emitter` binary (a child process, its StatsD sent to a \
UDP socket that counts packets and lines) reading 1M activity events (a third each viewed, \
carted, ordered) from the six envelope topics, against a bare rdkafka `BaseConsumer` reading \
the same records without decoding. Its rate is read from `/status` positions (processed and \
committed). Counters are aggregated per second in the process; `event.age_ms` and the \
runtime's `processing.seconds` are distributions, sent per sample. Memory is the process's \
resident set (`VmRSS`, peak `VmHWM`) at the end.
- **lag_round**: one round of the metrics-emitter's lag monitor (list every group, describe \
them, read their committed offsets and every partition's high watermark, evaluate) over 300 \
groups with 4 partitions each on the dev broker (SQLite storage), after a first round that \
opens the connection; rounds per second. Against, in the same run, what the monitor did before \
the cluster client: one librdkafka client per group reading its committed offsets (created \
beforehand, not timed) and one watermark request per partition. Threads are the process's \
added threads (`/proc/self/status`).
- **enrichment**: the real `enrichment` binary (a child process with an empty `DATA_DIR`) \
reading 1M updates (a third each product, price and stock, for 100k products, nearly every one \
changing its enriched product) from the three co-partitioned inputs, and publishing each \
enriched value, its changelog entries and a checkpoint per batch, with the default state batch \
(1,000 messages or 100 ms per task). Its rate is read from `/status` positions, which move only \
once a batch's outputs, changelog, checkpoint and redb transaction are all durable. Against, in \
the same run on the same records: a bare rdkafka `BaseConsumer` (no decoding, no commits), and \
the runtime's loop with a co-partitioned no-op processor (decoding, the same task layout, \
commits, no state, no outputs). Memory is the process's resident set at the end; disk is the \
size of its `DATA_DIR`.
- **aggregation**: the real `aggregation` binary (a child process, empty `DATA_DIR`, default \
settings: a 5 min grace, brand windows closed by the slowest activity partition within a 15 min \
skew (a backlog read from six partitions at once skews event time between them by minutes; \
with `BENCH_DEBUG=1` the benchmark prints its dead letters: none), interim values flushed at \
most once a second per partition (one value per changed window), state batches of 10,000 messages or 100 ms) reading 1M activity events (views, carts and orders in turn over 10k \
products of 200 brands, event time spanning an hour) after the 10k products: product windows \
of 1m and 1h straight from the stream, every event re-keyed by brand through the repartition \
topic and counted in the brand's windows, window values published, changelog and checkpoint \
per batch. Its rate counts an event once both halves are committed (activity and repartition \
positions in `/status`). Against, in the same run on the same topic: a bare rdkafka \
`BaseConsumer` (no decoding, no commits, no outputs), and Quix Streams (`quixstreams==3.28.1` \
in a virtualenv the benchmark makes, at-least-once, RocksDB state with changelog topics) \
computing per-product 1-minute tumbling windows of the same counts from the envelope's event \
time and publishing final values, measured from its group's committed offsets over at most \
90 s. Latency: ingest (real HTTP) → activity topic → aggregation → `GET /v1/aggregates`, a \
probe event for a fresh product in every 50th request of 100 events at 10k events/s for 20 s, \
from ingest's acknowledgement until the API counts it. Goals: at least 0.8x the bare \
consumer and 25x Quix Streams. What bounds these goals on two cores: a bare rdkafka producer \
(`crates/testkit/examples/produce_ceiling.rs`, no Tributary code) gets 435k acknowledged \
records/s into the memory dev broker (641k/s with lz4; measured 2026-12-03) with both cores busy, \
and every event costs one such repartition record plus reading and decoding it twice (the \
decode rows: about 1.7 µs an envelope), about 9 µs of machine time an event before any window \
is counted: at most ~220k events/s, under 25x Quix (~285k/s) and far under 0.8x the bare \
consumer.
- **search_indexer**: the real `search-indexer` binary (a child process, empty `DATA_DIR`, \
default settings: index commits at least 200 ms apart, batches of 5,000 messages or 100 ms \
per partition, one tantivy indexing thread with a 64 MB buffer) indexing 1M enriched \
products (distinct ids, names and descriptions from word lists, two attributes, 500 brands, \
6 categories) from `catalog.products-enriched.v1` (6 partitions, the dev broker with memory \
storage). Its rate counts a document once the index commit holding its offset is done \
(positions in `/status`), from the first such commit. Against, in the same run on the same \
topic: a bare rdkafka `BaseConsumer` (no decoding, no commits). Latency: one client sends a \
fixed mix of six searches (text, text with an order, brand and stock filters, category by \
popularity, a price range by price, a deeper page) at a steady 50/s while the index is \
built. Freshness: once caught up, 20 new products, each from the broker's acknowledgement \
until `GET /v1/products/{id}` finds it.";

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut messages = "1000000".to_owned();
    let mut only: Option<String> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--messages" => messages = iter.next().context("--messages needs a number")?.clone(),
            "--only" => only = Some(iter.next().context("--only needs a package")?.clone()),
            other => bail!(
                "unknown option {other:?} (cargo xtask bench [--messages N] [--only PACKAGE])"
            ),
        }
    }
    let broker = crate::broker::ensure()?;
    let broker_name = crate::broker::version_of(&broker)
        .map_or_else(|| broker.display().to_string(), |(n, v)| format!("{n} {v}"));
    let broker = broker.to_string_lossy().into_owned();
    let mut rows = Vec::new();
    for (package, bench) in [
        ("tributary-events", "decode"),
        ("tributary-runtime", "consumer_loop"),
        ("ingest", "load"),
        ("metrics-emitter", "throughput"),
        ("metrics-emitter", "lag_round"),
        ("enrichment", "throughput"),
        ("aggregation", "throughput"),
        ("search-indexer", "throughput"),
    ] {
        // `--only` names a package (all its benchmarks) or one benchmark.
        if only.as_ref().is_some_and(|o| o != package && o != bench) {
            continue;
        }
        eprintln!("xtask: benchmark {bench}");
        let output = cargo::cargo()
            .args(["bench", "-q", "-p", package, "--bench", bench])
            .env("TRIB_BROKER_BIN", &broker)
            .env("BENCH_MESSAGES", &messages)
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("running benchmark {bench}"))?;
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            bail!("benchmark {bench} failed ({})", output.status);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines().filter(|l| l.starts_with('{')) {
            let row: Value = serde_json::from_str(line).context("benchmark output")?;
            println!("{line}");
            rows.push(row);
        }
    }
    let path = workspace_root().join("docs").join("benchmarks.md");
    let doc = match &only {
        // One benchmark re-run: its rows replace its old ones, the others stay as measured.
        Some(_) if rows.is_empty() => bail!("--only: no such benchmark package"),
        Some(_) => {
            let fresh = render(&rows, &broker_name);
            let mut names: Vec<String> = rows
                .iter()
                .map(|r| r["bench"].as_str().unwrap_or_default().to_owned())
                .collect();
            names.dedup();
            names.into_iter().fold(
                std::fs::read_to_string(&path).unwrap_or_default(),
                |doc, name| merge(&doc, &fresh, &name),
            )
        }
        None => render(&rows, &broker_name),
    };
    std::fs::write(&path, doc)?;
    println!("xtask bench: wrote {}", path.display());
    Ok(())
}

fn render(rows: &[Value], broker: &str) -> String {
    let mut doc = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench`; every number sits next to a baseline \
         measured in the same run on the same machine, and the ratio is ours / baseline.\n\n",
    );
    let _ = writeln!(doc, "## Machine\n\n{}\n", machine(broker));
    doc.push_str("## Results\n\n");
    doc.push_str("| benchmark | scenario | messages | record bytes | ours (msg/s) | baseline (msg/s) | ratio | latency p50 / p99 | also measured |\n");
    doc.push_str("|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for row in rows {
        let latency = match (row["p50_ms"].as_f64(), row["p99_ms"].as_f64()) {
            (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2} ms"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            doc,
            "| {} | {} | {} | {} | {} | {} | {:.2} | {latency} | {} |",
            row["bench"].as_str().unwrap_or_default(),
            row["scenario"].as_str().unwrap_or_default(),
            row["messages"],
            row["record_bytes"],
            thousands(row["ours_per_s"].as_f64().unwrap_or_default()),
            thousands(row["baseline_per_s"].as_f64().unwrap_or_default()),
            row["ratio"].as_f64().unwrap_or_default(),
            row["notes"].as_str().unwrap_or("-"),
        );
    }
    let _ = write!(doc, "\n## What each baseline is\n\n{NOTES}\n");
    doc
}

/// `old` with the table rows of benchmark `name` replaced by those in `fresh`, and a line
/// in its machine section saying when that benchmark was re-run alone.
fn merge(old: &str, fresh: &str, name: &str) -> String {
    let is_row = |l: &str| l.starts_with(&format!("| {name} |"));
    let new_rows: Vec<&str> = fresh.lines().filter(|l| is_row(l)).collect();
    if !old.contains("## Results") {
        return fresh.to_owned();
    }
    let mut out = Vec::new();
    let mut inserted = false;
    for line in old.lines() {
        if line.starts_with("- date: ") {
            out.push(line.to_owned());
            out.push(format!(
                "- {name} re-run alone (`cargo xtask bench --only`) on {}",
                command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            ));
            continue;
        }
        if line.starts_with(&format!("- {name} re-run alone")) {
            continue;
        }
        if is_row(line) {
            if !inserted {
                out.extend(new_rows.iter().map(|r| (*r).to_owned()));
                inserted = true;
            }
            continue;
        }
        if !inserted && line.is_empty() && out.last().is_some_and(|l: &String| l.starts_with("| "))
        {
            out.extend(new_rows.iter().map(|r| (*r).to_owned()));
            inserted = true;
        }
        out.push(line.to_owned());
    }
    let mut doc = out.join("\n");
    doc.push('\n');
    // The notes of every baseline, as this version describes them.
    if let (Some(at), Some(fresh_at)) = (
        doc.find("## What each baseline is"),
        fresh.find("## What each baseline is"),
    ) {
        doc.truncate(at);
        doc.push_str(&fresh[fresh_at..]);
    }
    doc
}

/// What `program args` printed, trimmed; empty when it could not run.
fn command(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine(broker: &str) -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!(
        "- CPU: {cpu}, {cores} cores available\n- memory: {memory_gib:.0} GiB\n- {}\n- kernel: {}\n- broker: {broker} on the same machine (storage per benchmark below)\n- date: {}",
        command("rustc", &["--version"]),
        command("uname", &["-sr"]),
        command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}
