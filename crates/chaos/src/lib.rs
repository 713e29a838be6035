//! The reliability harness behind `cargo xtask chaos`: the whole suite on the dev broker
//! under a realistic load while services are killed, stopped, paused and scaled and the
//! broker restarts; then, once quiet, every promise of ARCHITECTURE.md section 5 is checked
//! against a reference computed from what ingest accepted. Soak mode runs a steady load
//! without faults and watches every service's memory and file descriptors.

pub mod check;
pub mod faults;
pub mod load;
pub mod soak;
pub mod stack;
pub mod statsd;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tributary_events::topics;

use crate::check::{Truth, Verdict};
use crate::faults::Findings;
use crate::load::{Ledger, Pace, Progress, Target};
use crate::stack::{Service, Stack};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events to send (catalogue included).
    pub events: u64,
    /// Seeds the catalogue, the load and the fault schedule.
    pub seed: u64,
    /// Soak mode: a steady load this long, no faults, memory and descriptors watched.
    pub soak: Option<Duration>,
    /// Events per second (0: the default for the mode).
    pub rate: u64,
    /// Where the service binaries and `trib` are.
    pub bin_dir: PathBuf,
    /// `deploy/topics.yaml`.
    pub topics_file: PathBuf,
    /// Keep the working directory (logs, data) even when every check passes.
    pub keep: bool,
    /// The services' `fetch.wait.max.ms`.
    pub fetch_wait_ms: u32,
}

/// The services' default `fetch.wait.max.ms` in a run. The dev broker answers a fetch that
/// finds nothing only when the wait is over, and with a dozen caught-up consumers asking
/// every 5 ms (the tests' setting) it has little left for the consumers that have a
/// backlog: `crates/testkit/examples/batch_read_rate.rs` measured a reader at 1,587
/// records/s beside 12 such consumers, 8,692/s when they wait 100 ms, about 20,000/s alone.
/// A 3-minute soak at 600 events/s settled 110 s after its stream with 5 ms, 14 s with
/// 100 ms; a record reaches a caught-up consumer about 50 ms later per hop.
pub const FETCH_WAIT_MS: u32 = 100;

/// What a service logs when a revocation missed its deadline (tributary-runtime).
const LATE_REVOCATION: &str = "Revocation did not finish in time";

/// Runs the stack, the load, the faults and the checks; prints the report. Ok(true) when every
/// check passed.
pub fn run(options: &Options) -> anyhow::Result<bool> {
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!(
        "tributary-chaos-{}-{}",
        std::process::id(),
        options.seed
    ));
    std::fs::create_dir_all(&work)?;
    let agent = statsd::Agent::start()?;
    let mut key_rng = StdRng::seed_from_u64(options.seed ^ 0x006b_6579);
    let key = hex::encode(key_rng.random::<[u8; 16]>());
    println!(
        "chaos: seed {} · {} · work dir {}",
        options.seed,
        match options.soak {
            Some(d) => format!("soak {} s", d.as_secs()),
            None => format!("{} events", options.events),
        },
        work.display()
    );
    let stack = Stack::start(
        &options.bin_dir,
        &options.topics_file,
        &work,
        &agent.addr.to_string(),
        &key,
        options.fetch_wait_ms,
    )?;
    let ingest = stack.instances[0]
        .api_url()
        .context("ingest has an API port")?;
    let brokers = stack.broker.bootstrap();
    let stack = Arc::new(Mutex::new(stack));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(drive(
        options, &stack, &ingest, &brokers, &key, &agent, started,
    ));
    let passed = matches!(result, Ok(true));
    stack.lock().unwrap_or_else(|e| e.into_inner()).stop();
    if passed && !options.keep {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!("chaos: logs and data kept in {}", work.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    options: &Options,
    stack: &Arc<Mutex<Stack>>,
    ingest: &str,
    brokers: &str,
    key: &str,
    agent: &statsd::Agent,
    started: Instant,
) -> anyhow::Result<bool> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let admins: Vec<(String, String)> = {
        let s = stack.lock().unwrap_or_else(|e| e.into_inner());
        s.instances
            .iter()
            .map(|i| (i.label(), i.admin_url()))
            .collect()
    };
    for (label, admin) in &admins {
        wait_for(&http, &format!("{admin}/readyz"), Duration::from_secs(180))
            .await
            .with_context(|| format!("{label} never became ready"))?;
    }
    println!(
        "chaos: stack ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let products = (options.events / 20).clamp(60, 20_000) as usize;
    let items = Arc::new(load::catalogue(products, options.seed));
    let run_id = format!("chaos-{}-{}", options.seed, now_ms());
    let target = Target {
        base: ingest.to_owned(),
        key: key.to_owned(),
        run: run_id,
    };
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    load::seed(&items, &target, &ledger, options.seed).await?;
    // Activity comes only after aggregation knows every product's brand: what an event held
    // for an unknown product counts for its brand after a crash is a documented limit of
    // aggregation, not what this run tests.
    let aggregation_admin = admins
        .iter()
        .find(|(l, _)| l == "aggregation#0")
        .map(|(_, a)| a.clone())
        .context("aggregation#0")?;
    wait_products_read(&http, &aggregation_admin, Duration::from_secs(180)).await?;
    let from_ms = now_ms();

    let done = Arc::new(AtomicBool::new(false));
    let findings = Arc::new(Mutex::new(Findings::default()));
    // Read from the start of the stream and before every broker restart: the dev broker
    // compacts at start, and a final value followed by a stale one would otherwise reach
    // the check as the stale one alone.
    let tail = Arc::new(Mutex::new(check::AggregatesTail::new(
        brokers,
        topics::AGGREGATES,
    )?));
    let stream_started = Instant::now();
    // Kept up to date while the stream runs, so that the read before a broker restart is
    // short (a fault waits for it) and its reads spread over the run.
    let tailing = {
        let (tail, done) = (tail.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(5));
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = tail.catch_up() {
                    eprintln!("chaos: reading the aggregates topic: {e:#}");
                }
            }
        })
    };
    let soaking = options.soak.is_some();
    let background = {
        let (stack, done, findings, tail) =
            (stack.clone(), done.clone(), findings.clone(), tail.clone());
        let seed = options.seed;
        let every = options.soak.map_or(Duration::from_secs(5), |d| {
            (d / 60).max(Duration::from_secs(2))
        });
        std::thread::spawn(move || {
            if soaking {
                soak::sample(&stack, every, &done)
            } else {
                faults::run(&stack, seed, &done, stream_started, &findings, &tail);
                Vec::new()
            }
        })
    };
    let seeded = ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .accepted
        .len() as u64;
    // A chaos run checks correctness, not speed: a load faster than the consumers can
    // follow under faults only piles up lag (on the dev broker a million-event run at
    // full speed ended with millions of records behind), so a long run is paced at what
    // the stack sustains on a small machine unless `--rate` says otherwise.
    const MAX_DEFAULT_RATE: u64 = 350;
    let rate = match (options.rate, options.soak) {
        (0, Some(_)) => 200,
        (0, None) => (options.events / 90).clamp(20, MAX_DEFAULT_RATE),
        (r, _) => r,
    };
    let pace = Pace {
        events: match options.soak {
            Some(_) => u64::MAX / 2,
            None => options.events.saturating_sub(seeded),
        },
        rate,
        until: options.soak.map(|d| Instant::now() + d),
    };
    let progress = Arc::new(Progress::default());
    let reporter = {
        let progress = progress.clone();
        let findings = findings.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let accepted = progress.accepted.load(Ordering::SeqCst);
                let faults = findings.lock().map_or(0, |f| f.injected.len());
                println!(
                    "chaos: {:.0} s: {accepted} events streamed ({:.0}/s), {faults} faults so far",
                    stream_started.elapsed().as_secs_f64(),
                    accepted as f64 / stream_started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let streamed = load::stream(
        items.clone(),
        target,
        ledger.clone(),
        pace,
        progress,
        options.seed,
    )
    .await;
    reporter.abort();
    done.store(true, Ordering::SeqCst);
    let series = background.join().unwrap_or_default();
    let _ = tailing.join();
    let streamed = streamed?;
    faults::heal(stack, &findings);
    let stream_secs = stream_started.elapsed().as_secs_f64();
    let to_ms = now_ms() + 3_600_000;
    println!(
        "chaos: stream done: {streamed} events in {stream_secs:.1} s ({:.0}/s); checking",
        streamed as f64 / stream_secs.max(0.001)
    );

    // The clients are done: the ledger is complete.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
    let truth = Truth::from(&ledger);
    // The derived views converge: poll them until they all hold, or until the consumers'
    // lag has not shrunk for SETTLE_STALL (a backlog left by a long run may take minutes to
    // drain on a small machine; a view that never converges fails once progress stops).
    let mut best_lag = u64::MAX;
    let mut progressed = Instant::now();
    // First the backlog drains (cheap to watch), then the checks run.
    loop {
        let lag = consumer_lag(&http, stack).await;
        if lag == 0 || progressed.elapsed() > SETTLE_STALL {
            break;
        }
        if lag < best_lag {
            best_lag = lag;
            progressed = Instant::now();
        }
        if stream_started.elapsed().as_secs() % 30 < 2 {
            println!("chaos: draining: consumer lag {lag}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut best_lag = u64::MAX;
    let mut progressed = Instant::now();
    let verdicts = loop {
        let mut verdicts =
            converging_checks(&http, stack, brokers, &truth, &items, agent, from_ms, to_ms).await?;
        let on_topic = {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            check::aggregates_topic(&mut tail, &truth)?
        };
        verdicts.push(on_topic);
        if verdicts.iter().all(|v| v.passed) {
            break verdicts;
        }
        let lag = consumer_lag(&http, stack).await;
        if lag < best_lag {
            best_lag = lag;
            progressed = Instant::now();
        }
        if progressed.elapsed() > SETTLE_STALL {
            break verdicts;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let settled = stream_started.elapsed().as_secs_f64() - stream_secs;
    let mut all = vec![check::truth_topics(brokers, &ledger)?];
    all.extend(verdicts);
    all.push(check::dead_letters(brokers)?);
    // A revocation that missed its deadline (a broker outage during a rebalance) is no
    // failure: its input is processed again by the next owner, which the data checks
    // above cover. It is reported, so a run where it becomes common is noticed.
    let late = stack
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .logs()
        .iter()
        .map(|log| log.matches(LATE_REVOCATION).count())
        .sum::<usize>();
    let findings = findings.lock().unwrap_or_else(|e| e.into_inner());
    all.push(Verdict {
        name: "services: no crash, clean exit on SIGTERM".into(),
        passed: findings.problems.is_empty() && ledger.refused.is_empty(),
        detail: if findings.problems.is_empty() && ledger.refused.is_empty() {
            format!("every exit was one the run caused; {late} late revocation(s)")
        } else {
            format!("{:?} {:?}", findings.problems, ledger.refused)
        },
    });
    if soaking {
        all.extend(soak::verdicts(&series));
    }

    println!();
    if !soaking {
        println!("Faults injected ({}):", findings.injected.len());
        println!("| at (s) | fault | target | outcome |\n|---|---|---|---|");
        for f in &findings.injected {
            println!(
                "| {:.1} | {} | {} | {} |",
                f.at,
                f.kind.name(),
                f.target,
                f.outcome
            );
        }
        println!();
    } else {
        println!("Memory and file descriptors:");
        println!("{}", soak::table(&series));
    }
    println!(
        "Load: {} events accepted in {} requests ({} retried attempts); stream {:.0} s, views settled {:.0} s after it",
        ledger.accepted.len(),
        ledger.requests,
        ledger.retries,
        stream_secs,
        settled
    );
    println!();
    println!("| check | result | detail |\n|---|---|---|");
    for v in &all {
        println!(
            "| {} | {} | {} |",
            v.name,
            if v.passed { "pass" } else { "FAIL" },
            v.detail
        );
    }
    let passed = all.iter().all(|v| v.passed);
    println!();
    println!(
        "chaos: {} (seed {}; replay with `cargo xtask chaos --seed {}{}`) in {:.0} s",
        if passed { "PASSED" } else { "FAILED" },
        options.seed,
        options.seed,
        match options.soak {
            Some(d) => format!(" --soak {}s", d.as_secs()),
            None => format!(" --events {}", options.events),
        },
        started.elapsed().as_secs_f64()
    );
    Ok(passed)
}

#[allow(clippy::too_many_arguments)]
async fn converging_checks(
    http: &reqwest::Client,
    stack: &Arc<Mutex<Stack>>,
    brokers: &str,
    truth: &Truth,
    items: &[load::Item],
    agent: &statsd::Agent,
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<Vec<Verdict>> {
    let (searchers, aggregators) = {
        let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
        let searchers: Vec<(String, String)> = s
            .running(Service::SearchIndexer)
            .into_iter()
            .filter_map(|i| Some((s.instances[i].label(), s.instances[i].api_url()?)))
            .collect();
        let aggregators: Vec<String> = s
            .running(Service::Aggregation)
            .into_iter()
            .filter_map(|i| s.instances[i].api_url())
            .collect();
        (searchers, aggregators)
    };
    let brokers_owned = brokers.to_owned();
    let mut verdicts = vec![check::enriched(&brokers_owned, truth, items)?];
    for (label, base) in &searchers {
        verdicts.push(check::search(http, label, base, truth, items).await);
    }
    verdicts.push(
        check::aggregates(http, &aggregators, truth, items, from_ms - 3_600_000, to_ms).await,
    );
    verdicts.push(check::counters(agent, truth));
    Ok(verdicts)
}

/// How long the checks wait for the consumers' lag to shrink before they give up.
const SETTLE_STALL: Duration = Duration::from_secs(180);

/// The lag every running consumer instance reports on `/status`, summed.
async fn consumer_lag(http: &reqwest::Client, stack: &Arc<Mutex<Stack>>) -> u64 {
    let admins: Vec<String> = {
        let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
        let running: Vec<usize> = Service::CONSUMERS
            .iter()
            .flat_map(|&service| s.running(service))
            .collect();
        running
            .into_iter()
            .map(|i| s.instances[i].admin_url())
            .collect()
    };
    let mut total = 0;
    for admin in admins {
        if let Ok(r) = http.get(format!("{admin}/status")).send().await {
            if let Ok(status) = r.json::<Value>().await {
                total += status["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["lag"].as_u64())
                    .sum::<u64>();
            }
        }
    }
    total
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn wait_for(http: &reqwest::Client, url: &str, deadline: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < deadline {
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("{url}: {last}")
}

/// Waits until aggregation's `/status` shows every partition of the products topic read
/// to its end.
async fn wait_products_read(
    http: &reqwest::Client,
    admin: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{admin}/status")).send().await {
            if let Ok(status) = r.json::<Value>().await {
                let parts: Vec<&Value> = status["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["topic"] == topics::PRODUCTS)
                    .collect();
                if !parts.is_empty() && parts.iter().all(|p| p["lag"].as_i64() == Some(0)) {
                    return Ok(());
                }
            }
        }
        if started.elapsed() > deadline {
            bail!("aggregation did not read the catalogue within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
