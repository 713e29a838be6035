//! The checks after quiescence, each against a reference computed from what ingest accepted:
//! the truth topics, the enriched topic, every search index, every aggregate window (served
//! and on the topic), the metrics-emitter's counters and the dead-letter topics.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use tributary_events::{ActivityKind, Envelope, Event, Price, Product, topics};

use crate::load::{Item, Ledger, Sent};
use crate::statsd::Agent;

/// One check's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What it checks.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// Numbers, or the first misses.
    pub detail: String,
}

impl Verdict {
    fn new(name: &str, passed: bool, detail: String) -> Verdict {
        Verdict {
            name: name.to_owned(),
            passed,
            detail,
        }
    }
}

/// A record as read back.
#[derive(Debug)]
pub struct Rec {
    /// Partition.
    pub partition: i32,
    /// Key as text.
    pub key: Option<String>,
    /// Value bytes (None: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers as text.
    pub headers: Vec<(String, String)>,
}

/// Reads every record of `topic` from the beginning to the high watermark each partition had
/// when the read began.
pub fn read_topic(brokers: &str, topic: &str) -> anyhow::Result<Vec<Rec>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "chaos-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", READ_FETCH_WAIT_MS)
        .set("log_level", "0")
        .create()?;
    let (ends, tpl) = unread(&consumer, topic, |_, low| low)?;
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    read_to_ends(&consumer, topic, ends, |m| {
        out.push(Rec {
            partition: m.partition(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    })?;
    Ok(out)
}

/// The checks' readers' `fetch.wait.max.ms`. During one chaos run `trib tail` (a plain
/// consumer) read the last 30,000 records of the aggregates topic in 2.8 s with 100 ms and
/// had not finished after 120 s with 5 ms; under another run's load a bare reader showed
/// no consistent difference (docs/architecture.md, the dev broker). The longer wait costs
/// a reader nothing but its last fetch.
const READ_FETCH_WAIT_MS: &str = "100";

/// Polls `consumer`, assigned where `ends` says to start, until every partition in `ends`
/// has reached its end, handing each record before it to `take`. A partition that reached
/// its end is paused: librdkafka would go on fetching it, and its new records are not
/// progress (counted as such, a partition that never reaches its end went unnoticed for as
/// long as the others grew).
fn read_to_ends(
    consumer: &BaseConsumer,
    topic: &str,
    mut ends: HashMap<i32, i64>,
    mut take: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let mut last_progress = std::time::Instant::now();
    while !ends.is_empty() {
        // An error is transient (the broker restarting): the deadline below decides.
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let p = m.partition();
            let Some(&end) = ends.get(&p) else { continue };
            last_progress = std::time::Instant::now();
            if m.offset() < end {
                take(&m);
            }
            if m.offset() + 1 >= end {
                ends.remove(&p);
                let mut done = TopicPartitionList::new();
                done.add_partition(topic, p);
                let _ = consumer.pause(&done);
            }
        }
        if last_progress.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("reading {topic}: no progress for 60 s, {ends:?} not reached");
        }
    }
    Ok(())
}

/// Each partition of `topic` with records between `from(partition, low watermark)` and its
/// high watermark now: the high watermarks, and where to start reading each.
fn unread(
    consumer: &BaseConsumer,
    topic: &str,
    from: impl Fn(i32, i64) -> i64,
) -> anyhow::Result<(HashMap<i32, i64>, TopicPartitionList)> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
    {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let start = from(p, low);
        if high > start {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        }
    }
    Ok((ends, tpl))
}

/// Every topic on the broker.
pub fn list_topics(brokers: &str) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "0")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect())
}

/// What the catalogue should be, per product, from the ledger.
#[derive(Debug, Default)]
pub struct Truth {
    product: HashMap<String, Product>,
    price: HashMap<String, Price>,
    stock: HashMap<String, u64>,
    deleted: BTreeSet<String>,
    /// (dim, id, window, start ms) → counts.
    windows: BTreeMap<(&'static str, String, &'static str, i64), Counts>,
    counters: BTreeMap<(&'static str, &'static str), f64>,
}

/// One window's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    views: u64,
    carts: u64,
    orders: u64,
    units: u64,
    revenue: u64,
}

const WINDOWS: [(&str, i64); 2] = [("1m", 60_000), ("1h", 3_600_000)];

impl Truth {
    /// Folds the ledger in acceptance order.
    pub fn from(ledger: &Ledger) -> Truth {
        let mut t = Truth::default();
        let mut count = |name: &'static str, tag: &'static str, by: f64| {
            *t.counters.entry((name, tag)).or_default() += by;
        };
        for (_, sent) in &ledger.accepted {
            match sent {
                Sent::Product(_) => count("catalog.product.upserted", "", 1.0),
                Sent::Deleted(_) => count("catalog.product.deleted", "", 1.0),
                Sent::Price(_) => count("catalog.price.updated", "", 1.0),
                Sent::Stock(s) => {
                    count("catalog.stock.changed", "", 1.0);
                    if s.quantity == 0 {
                        count("catalog.stock.out_of_stock", "", 1.0);
                    }
                }
                Sent::Activity(a, _) => {
                    let tag = match a.kind {
                        ActivityKind::ProductViewed => "kind:product_viewed",
                        ActivityKind::AddedToCart => "kind:added_to_cart",
                        ActivityKind::OrderPlaced => "kind:order_placed",
                    };
                    count("activity.event", tag, 1.0);
                    if a.kind == ActivityKind::OrderPlaced {
                        count("activity.order.units", "", a.units() as f64);
                        count(
                            "activity.order.revenue_minor",
                            "currency:EUR",
                            (a.units() * a.unit_price_minor.unwrap_or(0)) as f64,
                        );
                    }
                }
            }
        }
        for (_, sent) in &ledger.accepted {
            match sent {
                Sent::Product(p) => {
                    t.product.insert(p.product_id.clone(), p.clone());
                }
                Sent::Deleted(id) => {
                    t.product.remove(id);
                    t.price.remove(id);
                    t.stock.remove(id);
                    t.deleted.insert(id.clone());
                }
                Sent::Price(p) => {
                    t.price.insert(p.product_id.clone(), p.clone());
                }
                Sent::Stock(s) => {
                    t.stock.insert(s.product_id.clone(), s.quantity);
                }
                Sent::Activity(a, brand) => {
                    let ms = a.time.map_or(0, |t| t.timestamp_millis());
                    for (window, size) in WINDOWS {
                        let start = ms.div_euclid(size) * size;
                        for (dim, id) in [("product", &a.product_id), ("brand", brand)] {
                            let c = t
                                .windows
                                .entry((dim, id.clone(), window, start))
                                .or_default();
                            match a.kind {
                                ActivityKind::ProductViewed => c.views += 1,
                                ActivityKind::AddedToCart => c.carts += 1,
                                ActivityKind::OrderPlaced => {
                                    c.orders += 1;
                                    c.units += a.units();
                                    c.revenue += a.units() * a.unit_price_minor.unwrap_or(0);
                                }
                            }
                        }
                    }
                }
            }
        }
        t
    }

    fn complete(&self, id: &str) -> bool {
        self.product.contains_key(id) && self.price.contains_key(id) && self.stock.contains_key(id)
    }

    /// Products that should be searchable.
    pub fn complete_count(&self) -> usize {
        self.product.keys().filter(|id| self.complete(id)).count()
    }
}

fn show<T: std::fmt::Debug>(misses: &[T]) -> String {
    let shown: Vec<String> = misses.iter().take(3).map(|m| format!("{m:?}")).collect();
    format!("{} (first: {})", misses.len(), shown.join("; "))
}

/// Every accepted event is on its topic, under its id; nothing else is; duplicates carry the
/// id of the event they repeat.
pub fn truth_topics(brokers: &str, ledger: &Ledger) -> anyhow::Result<Verdict> {
    let mut expected: HashMap<String, (&'static str, String)> = HashMap::new();
    for (id, sent) in &ledger.accepted {
        expected.insert(id.to_uppercase(), (sent.topic(), sent.key().to_owned()));
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut unknown = Vec::new();
    let mut misplaced = Vec::new();
    let mut records = 0u64;
    for topic in [
        topics::PRODUCTS,
        topics::PRICES,
        topics::STOCK,
        topics::ACTIVITY,
    ] {
        for rec in read_topic(brokers, topic)? {
            records += 1;
            let Some(value) = rec.value.as_deref() else {
                unknown.push(format!("{topic}: tombstone under {:?}", rec.key));
                continue;
            };
            match Envelope::decode(value) {
                Ok(envelope) => {
                    let id = envelope.id.to_string();
                    match expected.get(&id) {
                        Some((t, key)) if *t == topic && Some(key) == rec.key.as_ref() => {
                            *seen.entry(id).or_default() += 1;
                        }
                        Some(_) => misplaced.push(format!("{id} on {topic}")),
                        None => unknown.push(format!("{topic}: id {id} never accepted")),
                    }
                }
                Err(e) => unknown.push(format!("{topic}: undecodable record ({e})")),
            }
        }
    }
    // The last accepted id per (topic, key): compaction may remove any record but that one.
    let mut last: HashMap<(&'static str, &str), &str> = HashMap::new();
    for (id, sent) in &ledger.accepted {
        last.insert((sent.topic(), sent.key()), id.as_str());
    }
    let latest: std::collections::HashSet<String> =
        last.values().map(|id| id.to_uppercase()).collect();
    let mut missing = Vec::new();
    let mut superseded = BTreeMap::<&str, u64>::new();
    for (id, (topic, key)) in &expected {
        if seen.contains_key(id) {
            continue;
        }
        if latest.contains(id) || *topic == topics::ACTIVITY {
            missing.push(format!("{id} ({topic} {key})"));
        } else {
            *superseded.entry(topic).or_default() += 1;
        }
    }
    let duplicates: u64 = seen.values().map(|n| n - 1).sum();
    let passed = missing.is_empty() && unknown.is_empty() && misplaced.is_empty();
    let mut detail = format!(
        "{} accepted, {} records read, {} repeated under their own id, superseded and gone {:?}",
        expected.len(),
        records,
        duplicates,
        superseded
    );
    if !missing.is_empty() {
        detail += &format!("; MISSING {}", show(&missing));
    }
    if !unknown.is_empty() {
        detail += &format!("; UNKNOWN {}", show(&unknown));
    }
    if !misplaced.is_empty() {
        detail += &format!("; MISPLACED {}", show(&misplaced));
    }
    Ok(Verdict::new(
        "truth topics: every accepted event once per id",
        passed,
        detail,
    ))
}

/// The enriched topic's latest value per product is the merge of the latest truth (a
/// tombstone, or nothing, for a deleted product).
pub fn enriched(brokers: &str, truth: &Truth, items: &[Item]) -> anyhow::Result<Verdict> {
    let mut latest: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    for rec in read_topic(brokers, topics::PRODUCTS_ENRICHED)? {
        if let Some(key) = rec.key {
            latest.insert(key, rec.value);
        }
    }
    let mut misses = Vec::new();
    for item in items {
        let id = &item.id;
        let actual = latest.get(id).cloned().flatten();
        match (truth.product.get(id), actual) {
            (None, None) => {}
            (None, Some(_)) => misses.push(format!("{id}: deleted, but a value is latest")),
            (Some(_), None) => misses.push(format!("{id}: no enriched value")),
            (Some(product), Some(bytes)) => match Envelope::decode(&bytes) {
                Ok(Envelope {
                    event: Event::ProductEnriched(e),
                    ..
                }) => {
                    let price = truth.price.get(id);
                    let stock = truth.stock.get(id).copied();
                    if &e.product != product
                        || e.price.as_ref() != price
                        || e.stock != stock
                        || e.complete != truth.complete(id)
                    {
                        misses.push(format!(
                            "{id}: enriched {:?}/{:?}/{:?}, truth {:?}/{:?}/{:?}",
                            e.product.name,
                            e.price.as_ref().map(|p| p.retail_minor),
                            e.stock,
                            product.name,
                            price.map(|p| p.retail_minor),
                            stock
                        ));
                    }
                }
                other => misses.push(format!("{id}: not an enriched product: {other:?}")),
            },
        }
    }
    let passed = misses.is_empty();
    let detail = if passed {
        format!(
            "{} products ({} live, {} deleted) equal the merge of the truth",
            items.len(),
            truth.product.len(),
            truth.deleted.len()
        )
    } else {
        format!("MISMATCH {}", show(&misses))
    };
    Ok(Verdict::new(
        "enriched topic: latest per product = merge of truth",
        passed,
        detail,
    ))
}

/// One search-indexer instance holds exactly the complete products, with their latest values.
pub async fn search(
    http: &reqwest::Client,
    label: &str,
    base: &str,
    truth: &Truth,
    items: &[Item],
) -> Verdict {
    let name = format!("search index {label}: exactly the complete products, latest values");
    let total = match http.get(format!("{base}/v1/search?limit=1")).send().await {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["total"].as_u64()),
        Err(_) => None,
    };
    let expected_total = truth.complete_count() as u64;
    let checks = futures_util::stream::iter(items.iter().map(|item| async move {
        let id = &item.id;
        let answer = http.get(format!("{base}/v1/products/{id}")).send().await;
        let (status, doc) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(e) => return Some(format!("{id}: {e}")),
        };
        if !truth.complete(id) {
            return (status != 404)
                .then(|| format!("{id}: incomplete or deleted, answered {status}"));
        }
        if status != 200 {
            return Some(format!("{id}: complete, answered {status}"));
        }
        let product = &truth.product[id];
        let want = (
            Some(product.name.as_str()),
            truth.price.get(id).map(|p| p.retail_minor),
            truth.stock.get(id).copied(),
        );
        let got = (
            doc["name"].as_str(),
            doc["price"]["retail_minor"].as_u64(),
            doc["stock"].as_u64(),
        );
        (want != got).then(|| format!("{id}: indexed {got:?}, truth {want:?}"))
    }))
    .buffer_unordered(16)
    .filter_map(|m| async move { m })
    .collect::<Vec<String>>()
    .await;
    let passed = checks.is_empty() && total == Some(expected_total);
    let detail = if passed {
        format!("{expected_total} searchable of {} products", items.len())
    } else {
        format!(
            "total {total:?} (want {expected_total}); MISMATCH {}",
            show(&checks)
        )
    };
    Verdict::new(&name, passed, detail)
}

/// Every product and brand window (1m, 1h) on the aggregates API equals the reference.
pub async fn aggregates(
    http: &reqwest::Client,
    bases: &[String],
    truth: &Truth,
    items: &[Item],
    from_ms: i64,
    to_ms: i64,
) -> Verdict {
    let name = "aggregates API: every window equals the reference";
    let mut keys: BTreeSet<(&'static str, String)> = BTreeSet::new();
    for item in items {
        keys.insert(("product", item.id.clone()));
        keys.insert(("brand", item.brand.clone()));
    }
    let from = rfc3339(from_ms);
    let to = rfc3339(to_ms);
    let queries: Vec<(&'static str, String, &'static str)> = keys
        .into_iter()
        .flat_map(|(dim, id)| WINDOWS.iter().map(move |(w, _)| (dim, id.clone(), *w)))
        .collect();
    let windows = queries.len();
    let misses = futures_util::stream::iter(queries.into_iter().map(|(dim, id, window)| {
        let from = from.clone();
        let to = to.clone();
        async move {
            let path =
                format!("/v1/aggregates?dim={dim}&id={id}&window={window}&from={from}&to={to}");
            let got = match query_any(http, bases, &path).await {
                Ok(v) => v,
                Err(e) => return Some(format!("{dim} {id} {window}: {e:#}")),
            };
            let mut actual = BTreeMap::new();
            for w in got["windows"].as_array().into_iter().flatten() {
                let start = w["start"]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map_or(-1, |t| t.timestamp_millis());
                let c = Counts {
                    views: w["views"].as_u64().unwrap_or(u64::MAX),
                    carts: w["carts"].as_u64().unwrap_or(u64::MAX),
                    orders: w["orders"].as_u64().unwrap_or(u64::MAX),
                    units: w["units"].as_u64().unwrap_or(u64::MAX),
                    revenue: w["revenue_minor"].as_u64().unwrap_or(u64::MAX),
                };
                actual.insert(start, c);
            }
            let expected: BTreeMap<i64, Counts> = truth
                .windows
                .range((dim, id.clone(), window, i64::MIN)..=(dim, id.clone(), window, i64::MAX))
                .map(|((_, _, _, start), c)| (*start, *c))
                .collect();
            (actual != expected).then(|| {
                let differing: Vec<String> = expected
                    .iter()
                    .filter(|(s, c)| actual.get(s) != Some(c))
                    .map(|(s, c)| format!("{} want {c:?} got {:?}", rfc3339(*s), actual.get(s)))
                    .chain(
                        actual
                            .iter()
                            .filter(|(s, _)| !expected.contains_key(s))
                            .map(|(s, c)| format!("{} unexpected {c:?}", rfc3339(*s))),
                    )
                    .take(2)
                    .collect();
                format!("{dim} {id} {window}: {}", differing.join(", "))
            })
        }
    }))
    .buffer_unordered(16)
    .filter_map(|m| async move { m })
    .collect::<Vec<String>>()
    .await;
    let passed = misses.is_empty();
    let detail = if passed {
        format!(
            "{windows} series ({} windows with events) equal",
            truth.windows.len()
        )
    } else {
        format!("MISMATCH {}", show(&misses))
    };
    Verdict::new(name, passed, detail)
}

/// The aggregates topic as a reader sees it: the latest value of every record key, read on
/// from where the previous call stopped (the checks poll until they hold, and a long run's
/// topic holds millions of records).
pub struct AggregatesTail {
    consumer: BaseConsumer,
    topic: String,
    /// Per partition, the next offset to read.
    next: HashMap<i32, i64>,
    latest: LatestRows,
    /// Records read so far.
    pub read: u64,
}

impl std::fmt::Debug for AggregatesTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatesTail")
            .field("topic", &self.topic)
            .field("next", &self.next)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

/// What the records read so far say.
#[derive(Debug, Default)]
struct LatestRows {
    /// Record key → the window its latest value is of, the counts of that row, and
    /// whether it is final.
    rows: HashMap<String, (WindowKey, Counts, bool)>,
    /// Record keys that had a final value: their latest must be final too.
    finals: HashSet<String>,
    /// Records that are not window aggregates, at most a few kept.
    strays: Vec<String>,
}

/// (dim, id, window, start ms), as in the reference.
type WindowKey = (String, String, String, i64);

impl AggregatesTail {
    /// A reader of `topic` that has read nothing yet.
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<AggregatesTail> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "chaos-aggregates-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", READ_FETCH_WAIT_MS)
            .set("log_level", "0")
            .create()?;
        Ok(AggregatesTail {
            consumer,
            topic: topic.to_owned(),
            next: HashMap::new(),
            latest: LatestRows::default(),
            read: 0,
        })
    }

    /// Reads on to the high watermark each partition has now.
    pub fn catch_up(&mut self) -> anyhow::Result<()> {
        let topic = self.topic.clone();
        // Below the low watermark only when the broker dropped records meanwhile.
        let (ends, tpl) = unread(&self.consumer, &topic, |p, low| {
            self.next.get(&p).copied().unwrap_or(low).max(low)
        })?;
        if ends.is_empty() {
            return Ok(());
        }
        self.consumer.assign(&tpl)?;
        let (next, latest, read) = (&mut self.next, &mut self.latest, &mut self.read);
        let result = read_to_ends(&self.consumer, &topic, ends, |m| {
            *read += 1;
            next.insert(m.partition(), m.offset() + 1);
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            latest.record(key, m.payload());
        });
        // librdkafka keeps fetching for assigned partitions between calls, and the dev
        // broker pays for every empty fetch (architecture.md). The pauses of partitions
        // that reached their ends are lifted first: a pause can outlive the assignment.
        let _ = self.consumer.resume(&tpl);
        let _ = self.consumer.unassign();
        result
    }
}

impl LatestRows {
    fn record(&mut self, key: Option<String>, payload: Option<&[u8]>) {
        let Some(key) = key else {
            self.stray("a record without a key".into());
            return;
        };
        let Some(payload) = payload else {
            // Aggregation never deletes a window by key.
            self.stray(format!("{key}: a tombstone"));
            self.rows.remove(&key);
            return;
        };
        match Envelope::decode(payload).map(|e| e.event) {
            Ok(Event::WindowAggregated(w)) => {
                let window = (
                    w.dim.as_str().to_owned(),
                    w.id.clone(),
                    w.window.as_str().to_owned(),
                    w.start.timestamp_millis(),
                );
                let counts = Counts {
                    views: w.views,
                    carts: w.carts,
                    orders: w.orders,
                    units: w.units,
                    revenue: w.revenue_minor,
                };
                if w.is_final {
                    self.finals.insert(key.clone());
                }
                self.rows.insert(key, (window, counts, w.is_final));
            }
            Ok(other) => self.stray(format!("{key}: {}", other.event_type())),
            Err(e) => self.stray(format!("{key}: {e}")),
        }
    }

    fn stray(&mut self, what: String) {
        if self.strays.len() < 5 {
            self.strays.push(what);
        }
    }
}

/// The aggregates topic, read as a consumer of it would: the latest value of every window
/// (its rows summed over currencies) equals the reference, it holds no other window, and a
/// window that was published final is final in its latest value.
/// What the API serves comes from the stores; this is what the flushes, the closes and the
/// re-publication after a crash or a rebalance put on the topic.
pub fn aggregates_topic(tail: &mut AggregatesTail, truth: &Truth) -> anyhow::Result<Verdict> {
    let name = "aggregates topic: every window's latest value equals the reference";
    tail.catch_up()?;
    let mut actual: BTreeMap<&WindowKey, Counts> = BTreeMap::new();
    for (window, c, _) in tail.latest.rows.values() {
        let sum = actual.entry(window).or_default();
        sum.views += c.views;
        sum.carts += c.carts;
        sum.orders += c.orders;
        sum.units += c.units;
        sum.revenue += c.revenue;
    }
    let mut misses: Vec<String> = Vec::new();
    let mut matched = 0;
    for ((dim, id, window, start), want) in &truth.windows {
        let key = ((*dim).to_owned(), id.clone(), (*window).to_owned(), *start);
        match actual.remove(&key) {
            Some(got) if got == *want => matched += 1,
            got => misses.push(format!(
                "{dim} {id} {window} {}: want {want:?} got {got:?}",
                rfc3339(*start)
            )),
        }
    }
    misses.extend(
        actual
            .iter()
            .map(|((dim, id, window, start), c)| {
                format!("{dim} {id} {window} {}: unexpected {c:?}", rfc3339(*start))
            })
            .take(5),
    );
    // A window's final value may go out again after a crash (and an interim one before it,
    // from a restored state that had not closed it yet), but the last word is final.
    misses.extend(
        tail.latest
            .finals
            .iter()
            .filter(|key| tail.latest.rows.get(*key).is_some_and(|(_, _, f)| !f))
            .map(|key| format!("{key}: a value that is not final after the final one"))
            .take(5),
    );
    misses.extend(
        tail.latest
            .strays
            .iter()
            .map(|s| format!("not a window value: {s}")),
    );
    let passed = misses.is_empty();
    let detail = if passed {
        format!(
            "{matched} windows equal, from {} records ({} keys)",
            tail.read,
            tail.latest.rows.len()
        )
    } else {
        format!("MISMATCH {}", show(&misses))
    };
    Ok(Verdict::new(name, passed, detail))
}

/// Asks the first instance that answers; follows a `421 not_owned` to the owner.
async fn query_any(http: &reqwest::Client, bases: &[String], path: &str) -> anyhow::Result<Value> {
    let mut last = String::from("no aggregation instance");
    for base in bases {
        let mut url = format!("{base}{path}");
        for _ in 0..3 {
            let response = match http.get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            };
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match (status, location) {
                (200, _) => return Ok(body),
                (421, Some(owner)) => url = owner,
                _ => {
                    last = format!("{status} {body}");
                    break;
                }
            }
        }
    }
    anyhow::bail!(last)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The metrics-emitter's counters are at least the truth (at least once: a replay after a
/// crash may count again, nothing may go uncounted).
pub fn counters(agent: &Agent, truth: &Truth) -> Verdict {
    let mut misses = Vec::new();
    let mut over = Vec::new();
    for ((name, tag), want) in &truth.counters {
        let tags: Vec<&str> = if tag.is_empty() { vec![] } else { vec![*tag] };
        let got = agent.total("metrics-emitter", &format!("tributary.{name}"), &tags);
        if got < *want {
            misses.push(format!("{name} {tag}: {got} < {want}"));
        } else {
            over.push(got / want.max(1.0));
        }
    }
    let passed = misses.is_empty();
    let detail = if passed {
        let max = over.iter().copied().fold(1.0f64, f64::max);
        format!(
            "{} counters at or above the truth (highest ratio {max:.3})",
            truth.counters.len()
        )
    } else {
        format!("BELOW {}", show(&misses))
    };
    Verdict::new(
        "metrics-emitter counters never below the truth",
        passed,
        detail,
    )
}

/// No dead-letter topic holds anything: every event sent was valid.
pub fn dead_letters(brokers: &str) -> anyhow::Result<Verdict> {
    let mut found = Vec::new();
    let mut topics_seen = 0;
    for topic in list_topics(brokers)?
        .into_iter()
        .filter(|t| t.ends_with(".dlq"))
    {
        topics_seen += 1;
        for rec in read_topic(brokers, &topic).context("reading a DLQ")? {
            let error: Vec<String> = rec
                .headers
                .iter()
                .filter(|(k, _)| k.contains("error") || k.contains("original.topic"))
                .map(|(k, v)| format!("{k}={v:.120}"))
                .collect();
            found.push(format!("{topic}[{}]: {}", rec.partition, error.join(" ")));
        }
    }
    let passed = found.is_empty();
    let detail = if passed {
        format!("{topics_seen} dead-letter topics, all empty")
    } else {
        format!("DEAD LETTERS {}", show(&found))
    };
    Ok(Verdict::new("no valid event dead-lettered", passed, detail))
}
