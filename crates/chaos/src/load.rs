//! The load: a seeded catalogue and a stream of catalogue changes and retailer activity sent
//! through ingest's HTTP API as a careful client sends it (signed, with an idempotency key,
//! retrying until accepted), and the ledger of what ingest accepted, which the checks use as
//! the truth.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::Sha256;
use tributary_events::{Activity, ActivityKind, Price, Product, Stock, topics};

/// The client id the harness signs as.
pub const CLIENT: &str = "chaos";
/// Brands and categories of the catalogue.
const BRANDS: usize = 12;
const CATEGORIES: [&str; 6] = ["tops", "trousers", "dresses", "shoes", "bags", "outerwear"];
/// Concurrent clients; each owns the products whose index is its number modulo this, so
/// each product's changes are sent, and accepted, in one order.
pub const WORKERS: usize = 4;

/// One product of the catalogue; its brand and category never change.
#[derive(Debug, Clone)]
pub struct Item {
    /// Product id.
    pub id: String,
    /// Brand id.
    pub brand: String,
    /// Category.
    pub category: String,
    /// Deleted at some point of the stream and then never mentioned again (and never given
    /// activity: what a brand window counts for a deleted product is not defined here).
    pub doomed: bool,
}

/// The catalogue of a run.
pub fn catalogue(products: usize, seed: u64) -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xca7a_109e);
    (0..products)
        .map(|i| Item {
            id: format!("p-{i:06}"),
            brand: format!("brand-{:02}", i % BRANDS),
            category: CATEGORIES[(i / BRANDS) % CATEGORIES.len()].to_owned(),
            doomed: rng.random_ratio(1, 10),
        })
        .collect()
}

/// One event ingest accepted.
#[derive(Debug, Clone)]
pub enum Sent {
    /// `POST /v1/products`.
    Product(Product),
    /// `DELETE /v1/products/{id}`.
    Deleted(String),
    /// `POST /v1/prices`.
    Price(Price),
    /// `POST /v1/stock`.
    Stock(Stock),
    /// `POST /v1/activity`; its brand as the catalogue says.
    Activity(Activity, String),
}

impl Sent {
    /// The topic ingest publishes it to.
    pub fn topic(&self) -> &'static str {
        match self {
            Sent::Product(_) | Sent::Deleted(_) => topics::PRODUCTS,
            Sent::Price(_) => topics::PRICES,
            Sent::Stock(_) => topics::STOCK,
            Sent::Activity(..) => topics::ACTIVITY,
        }
    }

    /// Its key (the product id).
    pub fn key(&self) -> &str {
        match self {
            Sent::Product(p) => &p.product_id,
            Sent::Deleted(id) => id,
            Sent::Price(p) => &p.product_id,
            Sent::Stock(s) => &s.product_id,
            Sent::Activity(a, _) => &a.product_id,
        }
    }
}

/// Everything ingest accepted, in the order it answered (which, per product, is the order
/// sent: a product's changes come from one client, one request at a time).
#[derive(Debug, Default)]
pub struct Ledger {
    /// (id ingest gave it, event).
    pub accepted: Vec<(String, Sent)>,
    /// Requests answered 202.
    pub requests: u64,
    /// Attempts that had to be repeated (connection lost, 429, 503, timeouts).
    pub retries: u64,
    /// Answers other than 202, 429 and 503 to a valid request: each is a failure.
    pub refused: Vec<String>,
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://127.0.0.1:<port>` of ingest.
    pub base: String,
    /// The signing key of [`CLIENT`].
    pub key: String,
    /// Distinguishes this run's idempotency keys.
    pub run: String,
}

/// How much to send, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Events to send in all (the stream stops when they are used up).
    pub events: u64,
    /// Events per second at most (0: as fast as ingest takes them).
    pub rate: u64,
    /// Stop at this instant even if events are left (soak mode).
    pub until: Option<Instant>,
}

/// Counts shared by the clients while the stream runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events accepted so far.
    pub accepted: AtomicU64,
    remaining: AtomicI64,
}

/// A signed HTTP client of ingest.
#[derive(Debug, Clone)]
struct Client {
    http: reqwest::Client,
    target: Target,
}

impl Client {
    fn sign(&self, t: u64, method: &str, path: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.target.key.as_bytes())
            .expect("HMAC takes any key length");
        for part in [t.to_string().as_bytes(), method.as_bytes(), path.as_bytes()] {
            mac.update(part);
            mac.update(b".");
        }
        mac.update(body);
        format!("t={t},v2={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Sends until ingest accepts: 202 gives the ids; 429, 503, a lost connection or a
    /// timeout are retried with the same idempotency key; anything else is an error.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        idempotency_key: &str,
        ledger: &Mutex<Ledger>,
    ) -> anyhow::Result<Vec<String>> {
        let started = Instant::now();
        loop {
            let t = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let signature = self.sign(t, method.as_str(), path, &body);
            let answer = self
                .http
                .request(method.clone(), format!("{}{path}", self.target.base))
                .header("Content-Type", "application/json")
                .header("X-Client-Id", CLIENT)
                .header("X-Signature", signature)
                .header("Idempotency-Key", idempotency_key)
                .body(body.clone())
                .send()
                .await;
            let wait = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    match status {
                        202 => {
                            let value: Value = serde_json::from_str(&text)
                                .with_context(|| format!("202 body {text:?}"))?;
                            let ids = value["ids"]
                                .as_array()
                                .context("202 without ids")?
                                .iter()
                                .filter_map(|id| id.as_str().map(str::to_owned))
                                .collect();
                            return Ok(ids);
                        }
                        429 | 503 => serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|v| v["retry_after"].as_u64())
                            .map_or(Duration::from_millis(500), |s| {
                                Duration::from_secs(s).min(Duration::from_secs(2))
                            }),
                        _ => bail!("{method} {path} answered {status}: {text:.300}"),
                    }
                }
                // Ingest is down, restarting or stopped: the request may or may not have been
                // published; the same idempotency key makes the retry safe.
                Err(_) => Duration::from_millis(200),
            };
            ledger.lock().unwrap_or_else(|e| e.into_inner()).retries += 1;
            if started.elapsed() > Duration::from_secs(600) {
                bail!("{method} {path} was not accepted within 10 minutes");
            }
            tokio::time::sleep(wait).await;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn product(item: &Item, version: u32) -> Product {
    Product {
        product_id: item.id.clone(),
        brand_id: item.brand.clone(),
        sku: format!("SKU-{}", item.id),
        name: format!("{} {} v{version}", item.brand, item.category),
        category: item.category.clone(),
        description: (version % 2 == 1).then(|| format!("revision {version}")),
        attributes: None,
        images: None,
    }
}

fn price(item: &Item, rng: &mut StdRng) -> Price {
    let retail = rng.random_range(500..50_000u64);
    Price {
        product_id: item.id.clone(),
        currency: "EUR".into(),
        wholesale_minor: retail / 2,
        retail_minor: retail,
    }
}

fn stock(item: &Item, rng: &mut StdRng) -> Stock {
    Stock {
        product_id: item.id.clone(),
        quantity: if rng.random_ratio(1, 5) {
            0
        } else {
            rng.random_range(1..500)
        },
        warehouse: None,
    }
}

fn activity(item: &Item, rng: &mut StdRng, time: DateTime<Utc>, n: u64) -> Activity {
    let kind = match rng.random_range(0..10) {
        0 => ActivityKind::OrderPlaced,
        1..=3 => ActivityKind::AddedToCart,
        _ => ActivityKind::ProductViewed,
    };
    let order = kind == ActivityKind::OrderPlaced;
    Activity {
        kind,
        product_id: item.id.clone(),
        retailer_id: format!("r-{:03}", rng.random_range(0..40)),
        time: Some(time),
        quantity: order.then(|| rng.random_range(1..5)),
        unit_price_minor: order.then(|| rng.random_range(100..10_000)),
        currency: order.then(|| "EUR".to_owned()),
        order_id: order.then(|| format!("o-{n}")),
    }
}

/// Sends the whole catalogue (product, price, stock of every item) before the stream.
pub async fn seed(
    items: &[Item],
    target: &Target,
    ledger: &Arc<Mutex<Ledger>>,
    seed: u64,
) -> anyhow::Result<()> {
    let client = Client {
        http: http_client()?,
        target: target.clone(),
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for (path, n) in [("/v1/products", 0), ("/v1/prices", 1), ("/v1/stock", 2)] {
        for (i, chunk) in items.chunks(200).enumerate() {
            let events: Vec<Sent> = chunk
                .iter()
                .map(|item| match n {
                    0 => Sent::Product(product(item, 0)),
                    1 => Sent::Price(price(item, &mut rng)),
                    _ => Sent::Stock(stock(item, &mut rng)),
                })
                .collect();
            let key = format!("{}-seed-{n}-{i}", target.run);
            post(&client, path, events, &key, ledger).await?;
        }
    }
    Ok(())
}

async fn post(
    client: &Client,
    path: &str,
    events: Vec<Sent>,
    key: &str,
    ledger: &Mutex<Ledger>,
) -> anyhow::Result<()> {
    let body: Vec<Value> = events
        .iter()
        .map(|e| match e {
            Sent::Product(p) => serde_json::to_value(p),
            Sent::Price(p) => serde_json::to_value(p),
            Sent::Stock(s) => serde_json::to_value(s),
            Sent::Activity(a, _) => serde_json::to_value(a),
            Sent::Deleted(_) => Ok(Value::Null),
        })
        .collect::<Result<_, _>>()?;
    let ids = client
        .send(
            reqwest::Method::POST,
            path,
            serde_json::to_vec(&body)?,
            key,
            ledger,
        )
        .await?;
    record(ledger, ids, events)
}

fn record(ledger: &Mutex<Ledger>, ids: Vec<String>, events: Vec<Sent>) -> anyhow::Result<()> {
    if ids.len() != events.len() {
        bail!(
            "ingest accepted {} ids for {} events",
            ids.len(),
            events.len()
        );
    }
    let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
    ledger.requests += 1;
    ledger.accepted.extend(ids.into_iter().zip(events));
    Ok(())
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()?)
}

/// Runs the stream: [`WORKERS`] clients, each over its own products, until the events are
/// used up or the deadline passes. Returns the number of events accepted.
pub async fn stream(
    items: Arc<Vec<Item>>,
    target: Target,
    ledger: Arc<Mutex<Ledger>>,
    pace: Pace,
    progress: Arc<Progress>,
    seed: u64,
) -> anyhow::Result<u64> {
    progress
        .remaining
        .store(pace.events.min(i64::MAX as u64) as i64, Ordering::SeqCst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let client = Client {
            http: http_client()?,
            target: target.clone(),
        };
        let items = items.clone();
        let ledger = ledger.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            run_worker(
                worker, &items, &client, &ledger, pace, &progress, started, seed,
            )
            .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(progress.accepted.load(Ordering::SeqCst))
}

#[allow(clippy::too_many_arguments)]
async fn run_worker(
    worker: usize,
    items: &[Item],
    client: &Client,
    ledger: &Mutex<Ledger>,
    pace: Pace,
    progress: &Progress,
    started: Instant,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker as u64 * 7919));
    let mine: Vec<&Item> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| i % WORKERS == worker)
        .map(|(_, item)| item)
        .collect();
    let mut deleted: BTreeSet<usize> = BTreeSet::new();
    let mut versions: HashMap<usize, u32> = HashMap::new();
    let live_for_activity: Vec<usize> = (0..mine.len()).filter(|&i| !mine[i].doomed).collect();
    if mine.is_empty() || live_for_activity.is_empty() {
        return Ok(());
    }
    let mut request = 0u64;
    loop {
        if pace.until.is_some_and(|until| Instant::now() >= until) {
            return Ok(());
        }
        // Bigger requests at higher rates: four clients one request at a time each.
        let max_batch = (pace.rate / 50).clamp(40, 250) as i64;
        let size: i64 = rng.random_range(1..=max_batch);
        let left = progress.remaining.fetch_sub(size, Ordering::SeqCst);
        if left <= 0 {
            return Ok(());
        }
        let size = size.min(left) as usize;
        if pace.rate > 0 {
            // Hold the total rate: wait until the events accepted so far are due.
            let due = Duration::from_secs_f64(
                progress.accepted.load(Ordering::SeqCst) as f64 / pace.rate as f64,
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        request += 1;
        let key = format!("{}-w{worker}-{request}", client.target.run);
        let choice = rng.random_range(0..100);
        // Distinct products per request: each product's order is then the request order.
        let pick = |rng: &mut StdRng, pool: &[usize], n: usize| -> Vec<usize> {
            let mut set = BTreeSet::new();
            for _ in 0..n * 3 {
                if set.len() >= n.min(pool.len()) {
                    break;
                }
                set.insert(pool[rng.random_range(0..pool.len())]);
            }
            set.into_iter().collect()
        };
        let alive: Vec<usize> = (0..mine.len()).filter(|i| !deleted.contains(i)).collect();
        let doomed_alive: Vec<usize> = alive.iter().copied().filter(|&i| mine[i].doomed).collect();
        let accepted = if choice < 2 && !doomed_alive.is_empty() {
            let i = doomed_alive[rng.random_range(0..doomed_alive.len())];
            let path = format!("/v1/products/{}", mine[i].id);
            let ids = client
                .send(reqwest::Method::DELETE, &path, Vec::new(), &key, ledger)
                .await?;
            record(ledger, ids, vec![Sent::Deleted(mine[i].id.clone())])?;
            deleted.insert(i);
            1
        } else if choice < 25 {
            let chosen = pick(&mut rng, &alive, size.min(20));
            let (path, events): (&str, Vec<Sent>) = match choice % 3 {
                0 => (
                    "/v1/products",
                    chosen
                        .iter()
                        .map(|&i| {
                            let v = versions.entry(i).or_insert(0);
                            *v += 1;
                            Sent::Product(product(mine[i], *v))
                        })
                        .collect(),
                ),
                1 => (
                    "/v1/prices",
                    chosen
                        .iter()
                        .map(|&i| Sent::Price(price(mine[i], &mut rng)))
                        .collect(),
                ),
                _ => (
                    "/v1/stock",
                    chosen
                        .iter()
                        .map(|&i| Sent::Stock(stock(mine[i], &mut rng)))
                        .collect(),
                ),
            };
            let n = events.len();
            post(client, path, events, &key, ledger).await?;
            n
        } else {
            let time = Utc
                .timestamp_millis_opt(now_ms())
                .single()
                .unwrap_or_else(Utc::now);
            let chosen: Vec<usize> = (0..size)
                .map(|_| live_for_activity[rng.random_range(0..live_for_activity.len())])
                .collect();
            let events: Vec<Sent> = chosen
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    Sent::Activity(
                        activity(
                            mine[i],
                            &mut rng,
                            time,
                            ((worker as u64) << 40) | (request * 100 + j as u64),
                        ),
                        mine[i].brand.clone(),
                    )
                })
                .collect();
            let n = events.len();
            post(client, "/v1/activity", events, &key, ledger).await?;
            n
        };
        progress
            .accepted
            .fetch_add(accepted as u64, Ordering::SeqCst);
        // A catalogue request sends at most 20 distinct products, a delete one event: what
        // the request took from the budget and did not send goes back, so `--events N`
        // sends N events (a run of 1,000,000 sent 925,677 before this).
        if accepted < size {
            progress
                .remaining
                .fetch_add((size - accepted) as i64, Ordering::SeqCst);
        }
    }
}
