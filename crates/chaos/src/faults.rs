//! Faults on a seeded schedule while the load runs: SIGKILL and SIGTERM of any service
//! (each restarted on its own data), broker restarts (clean and SIGKILL), a consumer paused
//! past its session timeout, and extra consumer instances started and stopped so partitions
//! move while events flow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::check::AggregatesTail;
use crate::stack::{SESSION_TIMEOUT_MS, Service, Stack};

/// The kinds of fault, as the report names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL, then restart on the same data directory.
    Kill,
    /// SIGTERM (clean shutdown), then restart.
    Term,
    /// The broker stopped (cleanly or by SIGKILL) and started again on the same storage.
    BrokerRestart,
    /// SIGSTOP past the session timeout, then SIGCONT.
    Pause,
    /// An extra instance of a consumer service joins.
    ScaleUp,
    /// An extra instance leaves (SIGTERM or SIGKILL).
    ScaleDown,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Kill,
        Kind::Term,
        Kind::BrokerRestart,
        Kind::Pause,
        Kind::ScaleUp,
        Kind::ScaleDown,
    ];

    /// The report's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "SIGKILL + restart",
            Kind::Term => "SIGTERM + restart",
            Kind::BrokerRestart => "broker restart",
            Kind::Pause => "SIGSTOP past session timeout",
            Kind::ScaleUp => "extra instance started",
            Kind::ScaleDown => "extra instance stopped",
        }
    }
}

/// One fault injected.
#[derive(Debug, Clone)]
pub struct Injected {
    /// Seconds into the stream.
    pub at: f64,
    /// What.
    pub kind: Kind,
    /// On which instance (or `broker`).
    pub target: String,
    /// What happened (exit code, how long it was down).
    pub outcome: String,
}

/// What the fault thread found besides the faults it made.
#[derive(Debug, Default)]
pub struct Findings {
    /// Faults injected, in order.
    pub injected: Vec<Injected>,
    /// Instances that exited on their own, or did not exit 0 on SIGTERM: each a failure.
    pub problems: Vec<String>,
}

/// Injects faults until `done` is set, one at a time with a seeded pause between them; the
/// first six are one of each kind in a seeded order, so even a short run has them all.
pub fn run(
    stack: &Mutex<Stack>,
    seed: u64,
    done: &AtomicBool,
    started: Instant,
    findings: &Mutex<Findings>,
    tail: &Mutex<AggregatesTail>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa17);
    let mut first = Kind::ALL.to_vec();
    first.shuffle(&mut rng);
    let mut count = 0usize;
    // Let the stream get going before the first fault.
    if sleep_unless_done(done, Duration::from_secs(3)) {
        return;
    }
    while !done.load(Ordering::SeqCst) {
        watch(stack, findings);
        let kind = first
            .get(count)
            .copied()
            .unwrap_or_else(|| Kind::ALL[rng.random_range(0..Kind::ALL.len())]);
        count += 1;
        let at = started.elapsed().as_secs_f64();
        if kind == Kind::BrokerRestart {
            // What the broker's compaction at start would fold away is read first.
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = tail.catch_up() {
                eprintln!("chaos: reading the aggregates topic before a broker restart: {e:#}");
            }
        }
        if let Some((kind, target, outcome)) = inject(stack, kind, &mut rng, findings) {
            let mut f = findings.lock().unwrap_or_else(|e| e.into_inner());
            f.injected.push(Injected {
                at,
                kind,
                target,
                outcome,
            });
        }
        let gap = Duration::from_millis(rng.random_range(1_500..5_000));
        if sleep_unless_done(done, gap) {
            break;
        }
    }
    watch(stack, findings);
}

/// Sleeps `d` in small steps; true when `done` was set meanwhile.
fn sleep_unless_done(done: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if done.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done.load(Ordering::SeqCst)
}

/// Notes (and restarts) any base instance that exited without being told to.
pub fn watch(stack: &Mutex<Stack>, findings: &Mutex<Findings>) {
    let mut stack = stack.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..stack.instances.len() {
        let instance = &mut stack.instances[i];
        if instance.n == 0 && !instance.is_running() {
            let label = instance.label();
            findings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .problems
                .push(format!("{label} exited on its own (see its log)"));
            if let Err(e) = stack.restart(i) {
                findings
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .problems
                    .push(format!("{label} could not be restarted: {e:#}"));
            }
        }
    }
}

fn inject(
    stack: &Mutex<Stack>,
    kind: Kind,
    rng: &mut StdRng,
    findings: &Mutex<Findings>,
) -> Option<(Kind, String, String)> {
    let problem = |p: String| {
        findings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .push(p)
    };
    match kind {
        Kind::Kill | Kind::Term => {
            let service = Service::ALL[rng.random_range(0..Service::ALL.len())];
            let down = Duration::from_millis(rng.random_range(200..3_000));
            let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
            let running = s.running(service);
            let index = *running.get(rng.random_range(0..running.len().max(1)))?;
            let label = s.instances[index].label();
            let outcome = if kind == Kind::Kill {
                s.instances[index].kill();
                "killed".to_owned()
            } else {
                let started = Instant::now();
                let code = s.instances[index].terminate(Duration::from_secs(30));
                if code != Some(0) {
                    problem(format!("{label} exited {code:?} on SIGTERM, not 0"));
                }
                format!(
                    "exit {} after {:.1} s",
                    code.map_or("killed".into(), |c| c.to_string()),
                    started.elapsed().as_secs_f64()
                )
            };
            drop(s);
            std::thread::sleep(down);
            let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = s.restart(index) {
                problem(format!("{label} could not be restarted: {e:#}"));
            }
            Some((
                kind,
                label,
                format!("{outcome}; restarted {:.1} s later", down.as_secs_f64()),
            ))
        }
        Kind::BrokerRestart => {
            let hard = rng.random_bool(0.5);
            let down = Duration::from_millis(rng.random_range(500..4_000));
            let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
            let stopped = if hard {
                s.broker.kill()
            } else {
                s.broker.stop()
            };
            if let Err(e) = stopped {
                problem(format!("stopping the broker: {e}"));
            }
            std::thread::sleep(down);
            if let Err(e) = s.broker.restart() {
                problem(format!("restarting the broker: {e}"));
            }
            Some((
                kind,
                "broker".into(),
                format!(
                    "{} ; down {:.1} s",
                    if hard { "SIGKILL" } else { "clean stop" },
                    down.as_secs_f64()
                ),
            ))
        }
        Kind::Pause => {
            let service = Service::CONSUMERS[rng.random_range(0..Service::CONSUMERS.len())];
            let held = Duration::from_millis(SESSION_TIMEOUT_MS + rng.random_range(1_000..4_000));
            let label = {
                let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
                let running = s.running(service);
                let index = *running.get(rng.random_range(0..running.len().max(1)))?;
                s.instances[index].pause();
                (index, s.instances[index].label())
            };
            // The stack is not locked while the instance is stopped: other faults wait,
            // the checks of liveness must not see a paused instance as dead.
            std::thread::sleep(held);
            let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
            s.instances[label.0].resume();
            Some((
                kind,
                label.1,
                format!("stopped {:.1} s", held.as_secs_f64()),
            ))
        }
        Kind::ScaleUp => {
            let service = Service::CONSUMERS[rng.random_range(0..Service::CONSUMERS.len())];
            let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
            // A search-indexer extra is a new replica (its own group) that reads the whole
            // history: one at a time, or in a long run each one more re-reads millions of
            // records and starves the dev broker (the 1M-event run of seed 1212 slowed from
            // 290 to 136 events/s with two of them 1.3M and 1.9M records behind).
            let most = if service == Service::SearchIndexer {
                2
            } else {
                3
            };
            if s.running(service).len() >= most {
                return None;
            }
            match s.add(service) {
                Ok(index) => Some((kind, s.instances[index].label(), "joined".into())),
                Err(e) => {
                    problem(format!("adding a {} instance: {e:#}", service.name()));
                    None
                }
            }
        }
        Kind::ScaleDown => {
            let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
            let running: Vec<usize> = Service::CONSUMERS
                .iter()
                .flat_map(|&service| s.running(service))
                .collect();
            let extras: Vec<usize> = running
                .into_iter()
                .filter(|&i| s.instances[i].n > 0)
                .collect();
            let Some(&index) = extras.get(rng.random_range(0..extras.len().max(1))) else {
                // Nothing to stop yet: start one instead, so partitions still move.
                drop(s);
                return inject(stack, Kind::ScaleUp, rng, findings);
            };
            let label = s.instances[index].label();
            if rng.random_bool(0.5) {
                s.instances[index].kill();
                Some((kind, label, "SIGKILL".into()))
            } else {
                let code = s.instances[index].terminate(Duration::from_secs(30));
                if code != Some(0) {
                    problem(format!("{label} exited {code:?} on SIGTERM, not 0"));
                }
                Some((kind, label, format!("SIGTERM, exit {code:?}")))
            }
        }
    }
}

/// After the stream: every paused instance continues, every base instance runs, the broker
/// runs.
pub fn heal(stack: &Arc<Mutex<Stack>>, findings: &Mutex<Findings>) {
    {
        let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
        for instance in &mut s.instances {
            instance.resume();
        }
        if !s.broker.is_running() {
            let _ = s.broker.restart();
        }
    }
    watch(stack, findings);
}
