//! Soak mode's sampling: every service's resident memory and open file descriptors over a
//! long steady run, and the verdict on whether either leaks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::check::Verdict;
use crate::stack::Stack;

/// One reading of one instance.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds into the run.
    pub at: f64,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Open file descriptors.
    pub fds: usize,
}

/// Readings per instance label.
pub type Series = Vec<(String, Vec<Sample>)>;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Samples every running base instance each `every` until `done`.
pub fn sample(stack: &Mutex<Stack>, every: Duration, done: &AtomicBool) -> Series {
    let started = Instant::now();
    let mut series: Series = Vec::new();
    loop {
        {
            let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
            for instance in &mut s.instances {
                if instance.n != 0 || !instance.is_running() {
                    continue;
                }
                let Some(pid) = instance.pid() else { continue };
                let (_, rss) = tributary_testkit::process::memory_mib(pid);
                let sample = Sample {
                    at: started.elapsed().as_secs_f64(),
                    rss_mib: rss,
                    fds: fds(pid),
                };
                let label = instance.label();
                match series.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, samples)) => samples.push(sample),
                    None => series.push((label, vec![sample])),
                }
            }
        }
        let until = Instant::now() + every;
        while Instant::now() < until {
            if done.load(Ordering::SeqCst) {
                return series;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A leak is growth that the steady state does not explain: after a warm-up (the first
/// quarter: caches, buffers and indexes fill), the lowest reading of the last quarter is
/// above the highest of the second quarter by more than a margin (25% and 32 MiB of memory;
/// 16 file descriptors).
pub fn verdicts(series: &Series) -> Vec<Verdict> {
    series
        .iter()
        .map(|(label, samples)| {
            let n = samples.len();
            let name = format!("{label}: no memory or descriptor leak");
            if n < 8 {
                return Verdict {
                    name,
                    passed: false,
                    detail: format!("only {n} samples: run the soak longer"),
                };
            }
            let second = &samples[n / 4..n / 2];
            let last = &samples[n * 3 / 4..];
            let max =
                |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).fold(f64::MIN, f64::max);
            let min =
                |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).fold(f64::MAX, f64::min);
            let rss = |s: &Sample| s.rss_mib;
            let fd = |s: &Sample| s.fds as f64;
            let rss_leak = min(last, rss) > max(second, rss) * 1.25 + 32.0;
            let fd_leak = min(last, fd) > max(second, fd) + 16.0;
            Verdict {
                name,
                passed: !rss_leak && !fd_leak,
                detail: format!(
                    "RSS {:.0} → {:.0} MiB (peak {:.0}), fds {} → {}",
                    samples[n / 4].rss_mib,
                    samples[n - 1].rss_mib,
                    max(samples, rss),
                    samples[n / 4].fds,
                    samples[n - 1].fds
                ),
            }
        })
        .collect()
}

/// The readings as a table of about ten rows: time, then RSS/fds per instance.
pub fn table(series: &Series) -> String {
    let mut out = String::from("| s |");
    for (label, _) in series {
        out += &format!(" {label} MiB / fds |");
    }
    out += "\n|---|";
    for _ in series {
        out += "---|";
    }
    out += "\n";
    let rows = series.iter().map(|(_, s)| s.len()).min().unwrap_or(0);
    let step = (rows / 10).max(1);
    for r in (0..rows).step_by(step) {
        out += &format!("| {:.0} |", series[0].1[r].at);
        for (_, samples) in series {
            out += &format!(" {:.0} / {} |", samples[r].rss_mib, samples[r].fds);
        }
        out += "\n";
    }
    out
}
