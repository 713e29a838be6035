//! Burrow's lag evaluation, rule for rule (linkedin/Burrow
//! `core/internal/evaluator/caching.go`), over the commits seen for one group-partition.
//!
//! Pure functions, so every rule is tested from synthetic histories, including every case
//! of Burrow's own table (`caching_test.go`); the monitor feeds them what it reads.

use serde::Serialize;

/// A partition's (or group's) evaluated state. The numeric code is the value of the
/// `kafka.consumer.status` gauge. Variants are declared in Burrow's order of severity
/// (OK < WARN < ERR < STOP < STALL < REWIND), which `Ord` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Status {
    /// Nothing wrong: no lag beyond the allowance, or the consumer caught up in the window,
    /// or its lag went down at some point.
    #[serde(rename = "OK")]
    Ok,
    /// The consumer commits new offsets, but its lag never went down across the window
    /// (growing or flat): it is not keeping up.
    #[serde(rename = "WARN")]
    Warn,
    /// For a group: some partition is STOP, STALL or REWIND (Burrow caps a group there).
    /// For a partition or group: its offsets could not be read.
    #[serde(rename = "ERR")]
    Err,
    /// The last commit is older than the window is long (the consumer stopped committing)
    /// while there is lag, and the partition's end was not at the committed offset at any
    /// recent reading.
    #[serde(rename = "STOP")]
    Stop,
    /// Every commit in the window is the same offset while there is lag throughout: the
    /// consumer is stuck.
    #[serde(rename = "STALL")]
    Stall,
    /// A commit went backwards and no later commit came back to where it had been.
    #[serde(rename = "REWIND")]
    Rewind,
}

impl Status {
    /// The gauge value: 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND, 5 ERR.
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Stall => 2,
            Status::Stop => 3,
            Status::Rewind => 4,
            Status::Err => 5,
        }
    }

    /// The name used in `/lag`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Rewind => "REWIND",
            Status::Err => "ERR",
        }
    }
}

/// One commit of a group-partition, as Burrow stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The committed offset.
    pub offset: i64,
    /// When it was committed (Unix milliseconds).
    pub timestamp_ms: i64,
    /// The partition's end minus the offset when it was committed; `None` when the end was
    /// not known then.
    pub lag: Option<i64>,
}

/// What is known of one group-partition.
#[derive(Debug, Clone, Copy)]
pub struct Partition<'a> {
    /// The last commits, oldest first (at most `capacity`).
    pub commits: &'a [Commit],
    /// The window's size (Burrow's `intervals`).
    pub capacity: usize,
    /// The partition's end (high watermark) at recent readings, oldest first.
    pub broker_offsets: &'a [i64],
    /// The newest end minus the newest commit.
    pub current_lag: i64,
}

/// A partition's evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Its status.
    pub status: Status,
    /// How full its window is (commits held ÷ window size), 0 to 1.
    pub complete: f64,
}

/// Evaluates a partition as Burrow's `evaluatePartitionStatus` does: a window that is not
/// full yet is evaluated too (and says how full it is in `complete`), unless it is less
/// complete than `minimum_complete` (Burrow's `minimum-complete`, 0 by default), when it is
/// OK. `allowed_lag` is Burrow's `allowed-lag`.
///
/// One difference: a window of a single commit is not STALL. Burrow's stall rule holds
/// trivially for one commit, so every lagging partition would read STALL (and its group
/// ERR) the first time it is seen: at every monitor start and for every new group. Burrow
/// rarely sees such a window (it replays `__consumer_offsets`); a monitor that reads offsets
/// sees one for each partition at its first reading. A consumer that is really stuck reads
/// STOP at the next reading instead (a one-commit window spans no time).
pub fn evaluate(
    partition: &Partition<'_>,
    now_ms: i64,
    allowed_lag: i64,
    minimum_complete: f64,
) -> Evaluation {
    let commits = partition.commits;
    if commits.is_empty() {
        return Evaluation {
            status: Status::Ok,
            complete: 0.0,
        };
    }
    let capacity = partition.capacity.max(1);
    let complete = if commits.len() < capacity {
        commits.len() as f64 / capacity as f64
    } else {
        1.0
    };
    let status = if complete >= minimum_complete {
        match status(
            commits,
            partition.broker_offsets,
            partition.current_lag,
            now_ms,
            allowed_lag,
        ) {
            Status::Stall if commits.len() < 2 => Status::Ok,
            judged => judged,
        }
    } else {
        Status::Ok
    };
    Evaluation { status, complete }
}

/// Burrow's `calculatePartitionStatus`: the rules, in Burrow's order, over a non-empty
/// window of commits.
pub fn status(
    commits: &[Commit],
    broker_offsets: &[i64],
    current_lag: i64,
    now_ms: i64,
    allowed_lag: i64,
) -> Status {
    // Rule 1: no lag beyond the allowance is OK, whatever else.
    if current_lag <= allowed_lag {
        return Status::Ok;
    }
    // Rule 2: stopped committing, and not caught up at any recent reading.
    if offsets_stopped(commits, now_ms) && !recent_lag_zero(commits, broker_offsets) {
        return Status::Stop;
    }
    // Rule 3: went backwards and did not come back.
    if let Some(at) = rewind_index(commits) {
        if !rewind_recovered(commits, at) {
            return Status::Rewind;
        }
    }
    if lag_always_above(commits, allowed_lag) {
        // Rule 4: the same offset, again and again.
        if offsets_stalled(commits) {
            return Status::Stall;
        }
        // Rule 5: moving, but the lag never went down.
        if lag_not_decreasing(commits) {
            return Status::Warn;
        }
    }
    Status::Ok
}

/// Whether every known lag in the window is above the allowance.
fn lag_always_above(commits: &[Commit], allowed_lag: i64) -> bool {
    commits
        .iter()
        .all(|c| c.lag.is_none_or(|lag| lag > allowed_lag))
}

/// The first commit lower than the one before it.
fn rewind_index(commits: &[Commit]) -> Option<usize> {
    (1..commits.len()).find(|&i| commits[i].offset < commits[i - 1].offset)
}

/// Whether a commit at or after `at` is back at the offset before the rewind.
fn rewind_recovered(commits: &[Commit], at: usize) -> bool {
    let before = commits[at - 1].offset;
    commits[at..].iter().any(|c| c.offset >= before)
}

/// Whether the time since the last commit exceeds the time the window spans.
fn offsets_stopped(commits: &[Commit], now_ms: i64) -> bool {
    let first = commits[0].timestamp_ms;
    let last = commits[commits.len() - 1].timestamp_ms;
    now_ms.saturating_sub(last) > last.saturating_sub(first)
}

/// Whether every commit is the same offset.
fn offsets_stalled(commits: &[Commit]) -> bool {
    commits.windows(2).all(|w| w[0].offset == w[1].offset)
}

/// Whether no known lag is lower than the known lag before it.
fn lag_not_decreasing(commits: &[Commit]) -> bool {
    let mut last: Option<i64> = None;
    for lag in commits.iter().filter_map(|c| c.lag) {
        if last.is_some_and(|l| lag < l) {
            return false;
        }
        last = Some(lag);
    }
    true
}

/// Whether the partition's end was at or below the newest commit at some recent reading:
/// the consumer was caught up a moment ago.
fn recent_lag_zero(commits: &[Commit], broker_offsets: &[i64]) -> bool {
    let last = commits[commits.len() - 1].offset;
    broker_offsets.iter().any(|&end| end <= last)
}

/// A group's status and completeness from its partitions', as Burrow's
/// `evaluateConsumerStatus`: the worst partition status, capped at ERR (a STOP, STALL or
/// REWIND partition makes its group ERR); complete is the share of partitions whose window
/// is full (0 for a group with none).
pub fn group(partitions: impl IntoIterator<Item = Evaluation>) -> Evaluation {
    let mut status = Status::Ok;
    let (mut total, mut full) = (0usize, 0usize);
    for p in partitions {
        total += 1;
        if p.complete >= 1.0 {
            full += 1;
        }
        status = status.max(p.status.min(Status::Err));
    }
    Evaluation {
        status,
        complete: if total == 0 {
            0.0
        } else {
            full as f64 / total as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case of Burrow's `caching_test.go`: commits as (offset, timestamp ms, lag), broker
    /// offsets, current lag, now in seconds, allowed lag, and the status Burrow expects.
    struct Case {
        commits: &'static [(i64, i64, Option<i64>)],
        broker_offsets: &'static [i64],
        current_lag: i64,
        now_s: i64,
        allowed_lag: i64,
        status: Status,
    }

    const BURROW: &[Case] = &[
        // 0 - returns OK because there is zero lag somewhere
        Case {
            commits: &[
                (1000, 100000, Some(0)),
                (2000, 200000, Some(50)),
                (3000, 300000, Some(100)),
                (4000, 400000, Some(150)),
                (5000, 500000, Some(200)),
            ],
            broker_offsets: &[5200],
            current_lag: 200,
            now_s: 600,
            allowed_lag: 0,
            status: Status::Ok,
        },
        // 1 - same status. does not return true for stop because time since last commit (400s) is equal to the difference (500-100), not greater than
        Case {
            commits: &[
                (1000, 100000, Some(0)),
                (2000, 200000, Some(50)),
                (3000, 300000, Some(100)),
                (4000, 400000, Some(150)),
                (5000, 500000, Some(200)),
            ],
            broker_offsets: &[5200],
            current_lag: 200,
            now_s: 900,
            allowed_lag: 0,
            status: Status::Ok,
        },
        // 2 - status is now STOP because the time since last commit is great enough (500s), even though lag is zero at the start (fixed due to #290)
        Case {
            commits: &[
                (1000, 100000, Some(0)),
                (2000, 200000, Some(50)),
                (3000, 300000, Some(100)),
                (4000, 400000, Some(150)),
                (5000, 500000, Some(200)),
            ],
            broker_offsets: &[5200],
            current_lag: 200,
            now_s: 1000,
            allowed_lag: 0,
            status: Status::Stop,
        },
        // 3 - status is STOP when lag is always non-zero as well
        Case {
            commits: &[
                (1000, 100000, Some(50)),
                (2000, 200000, Some(100)),
                (3000, 300000, Some(150)),
                (4000, 400000, Some(200)),
                (5000, 500000, Some(250)),
            ],
            broker_offsets: &[5250],
            current_lag: 250,
            now_s: 1000,
            allowed_lag: 0,
            status: Status::Stop,
        },
        // 4 - status is OK because of zero lag, but stall is true because the offset is always the same and there is lag (another commit with turn this to stall)
        Case {
            commits: &[
                (1000, 100000, Some(0)),
                (1000, 200000, Some(50)),
                (1000, 300000, Some(100)),
                (1000, 400000, Some(150)),
                (1000, 500000, Some(200)),
            ],
            broker_offsets: &[1200],
            current_lag: 200,
            now_s: 600,
            allowed_lag: 0,
            status: Status::Ok,
        },
        // 5 - status is now STALL because the lag is always non-zero
        Case {
            commits: &[
                (1000, 100000, Some(100)),
                (1000, 200000, Some(150)),
                (1000, 300000, Some(200)),
                (1000, 400000, Some(250)),
                (1000, 500000, Some(300)),
            ],
            broker_offsets: &[1300],
            current_lag: 300,
            now_s: 600,
            allowed_lag: 0,
            status: Status::Stall,
        },
        // 6 - status is still STALL even when the lag stays the same
        Case {
            commits: &[
                (1000, 100000, Some(100)),
                (1000, 200000, Some(100)),
                (1000, 300000, Some(100)),
                (1000, 400000, Some(100)),
                (1000, 500000, Some(100)),
            ],
            broker_offsets: &[1100],
            current_lag: 100,
            now_s: 600,
            allowed_lag: 0,
            status: Status::Stall,
        },
        // 7 - status is OK because the offsets go backwards, but though the lag does decrease within the window (caught up the rewind)
        Case {
            commits: &[
                (1000, 100000, Some(100)),
                (2000, 200000, Some(150)),
                (3000, 300000, Some(200)),
                (2000, 400000, Some(1250)),
                (4000, 500000, Some(300)),
            ],
            broker_offsets: &[4300],
            current_lag: 300,
            now_s: 600,
            allowed_lag: 0,
            status: Status::Ok,
        },
        // 8 - status is OK because the current lag is 0 (even though the offsets show lag), even though it would be considered stopped due to timestamps
        Case {
            commits: &[
                (1000, 100000, Some(50)),
                (2000, 200000, Some(100)),
                (3000, 300000, Some(150)),
                (4000, 400000, Some(200)),
                (5000, 500000, Some(250)),
            ],
            broker_offsets: &[5250],
            current_lag: 0,
            now_s: 1000,
            allowed_lag: 0,
            status: Status::Ok,
        },
        // 9 - status is STOP due to timestamps because the current lag is non-zero, even though lag is always zero in offsets, only because there is new data (#290)
        Case {
            commits: &[
                (792748079, 1512224618356, Some(0)),
                (792748080, 1512224619362, Some(0)),
                (792748081, 1512224620366, Some(0)),
                (792748082, 1512224621367, Some(0)),
                (792748083, 1512224622370, Some(0)),
                (792748084, 1512224623373, Some(0)),
                (792748085, 1512224624378, Some(0)),
                (792748086, 1512224625379, Some(0)),
                (792748087, 1512224626383, Some(0)),
                (792748088, 1512224627383, Some(0)),
                (792748089, 1512224628383, Some(0)),
                (792748090, 1512224629388, Some(0)),
                (792748091, 1512224630391, Some(0)),
                (792748092, 1512224631394, Some(0)),
                (792748093, 1512224632397, Some(0)),
            ],
            broker_offsets: &[792749024, 792749000, 792748800, 792748600, 792748500],
            current_lag: 931,
            now_s: 1512224650,
            allowed_lag: 0,
            status: Status::Stop,
        },
        // 10 - status is OK, even though it would be stop due to timestamps, as within the recent broker offset window the lag was zero (#303)
        Case {
            commits: &[
                (792748079, 1512224618356, Some(0)),
                (792748080, 1512224619362, Some(0)),
                (792748081, 1512224620366, Some(0)),
                (792748082, 1512224621367, Some(0)),
                (792748083, 1512224622370, Some(0)),
                (792748084, 1512224623373, Some(0)),
                (792748085, 1512224624378, Some(0)),
                (792748086, 1512224625379, Some(0)),
                (792748087, 1512224626383, Some(0)),
                (792748088, 1512224627383, Some(0)),
                (792748089, 1512224628383, Some(0)),
                (792748090, 1512224629388, Some(0)),
                (792748091, 1512224630391, Some(0)),
                (792748092, 1512224631394, Some(0)),
                (792748093, 1512224632397, Some(0)),
            ],
            broker_offsets: &[792748094, 792748093, 792748093, 792748093],
            current_lag: 1,
            now_s: 1512224650,
            allowed_lag: 0,
            status: Status::Ok,
        },
        // 11 - same case as test 0 with additional `nil` lag entries which should not affect results
        Case {
            commits: &[
                (1000, 100000, Some(0)),
                (1500, 150000, None),
                (2000, 200000, Some(50)),
                (2500, 250000, None),
                (3000, 300000, Some(100)),
                (3500, 350000, None),
                (4000, 400000, Some(150)),
                (4500, 450000, None),
                (5000, 500000, Some(200)),
                (5500, 550000, None),
            ],
            broker_offsets: &[5700],
            current_lag: 200,
            now_s: 600,
            allowed_lag: 0,
            status: Status::Ok,
        },
        // 12 - status is OK despite the fact that the current lag is greater zero and the time since last commit is great enough because of the configured allowed lag
        Case {
            commits: &[
                (1000, 100000, Some(2)),
                (2000, 200000, Some(1)),
                (2000, 300000, Some(1)),
            ],
            broker_offsets: &[2001],
            current_lag: 1,
            now_s: 550,
            allowed_lag: 1,
            status: Status::Ok,
        },
        // 13 - same as 5 but with an allowed lag
        Case {
            commits: &[
                (1000, 100000, Some(100)),
                (1000, 200000, Some(150)),
                (1000, 300000, Some(200)),
                (1000, 400000, Some(250)),
                (1000, 500000, Some(300)),
            ],
            broker_offsets: &[1300],
            current_lag: 300,
            now_s: 600,
            allowed_lag: 99,
            status: Status::Stall,
        },
        // 14 - same as 7 but with an allowed lag
        Case {
            commits: &[
                (1000, 100000, Some(100)),
                (2000, 200000, Some(150)),
                (3000, 300000, Some(200)),
                (2000, 400000, Some(1250)),
                (4000, 500000, Some(300)),
            ],
            broker_offsets: &[4300],
            current_lag: 300,
            now_s: 600,
            allowed_lag: 99,
            status: Status::Ok,
        },
        // 15 - Rewind, but we did not catch up to the previous point
        Case {
            commits: &[
                (1000, 100000, Some(100)),
                (2000, 200000, Some(150)),
                (3000, 300000, Some(200)),
                (2000, 400000, Some(1250)),
                (2500, 500000, Some(300)),
            ],
            broker_offsets: &[4300],
            current_lag: 300,
            now_s: 600,
            allowed_lag: 0,
            status: Status::Rewind,
        },
    ];

    fn commits(raw: &[(i64, i64, Option<i64>)]) -> Vec<Commit> {
        raw.iter()
            .map(|&(offset, timestamp_ms, lag)| Commit {
                offset,
                timestamp_ms,
                lag,
            })
            .collect()
    }

    #[test]
    fn every_case_of_burrows_own_table() {
        for (i, case) in BURROW.iter().enumerate() {
            let got = status(
                &commits(case.commits),
                case.broker_offsets,
                case.current_lag,
                case.now_s * 1000,
                case.allowed_lag,
            );
            assert_eq!(got, case.status, "Burrow case {i}");
        }
    }

    #[test]
    fn a_lag_that_grows_or_stays_flat_while_the_consumer_moves_warns() {
        // Not in Burrow's table, but its rule 5: WARN for growing and for flat lag.
        let growing = commits(&[
            (10, 1000, Some(5)),
            (20, 2000, Some(8)),
            (30, 3000, Some(9)),
        ]);
        assert_eq!(status(&growing, &[39], 9, 3500, 0), Status::Warn);
        let flat = commits(&[
            (10, 1000, Some(5)),
            (20, 2000, Some(5)),
            (30, 3000, Some(5)),
        ]);
        assert_eq!(status(&flat, &[35], 5, 3500, 0), Status::Warn);
        let shrank = commits(&[
            (10, 1000, Some(5)),
            (20, 2000, Some(3)),
            (30, 3000, Some(4)),
        ]);
        assert_eq!(status(&shrank, &[34], 4, 3500, 0), Status::Ok);
    }

    #[test]
    fn a_partial_window_is_evaluated_and_says_how_complete_it_is() {
        let two = commits(&[(10, 1000, Some(5)), (20, 2000, Some(8))]);
        let partition = Partition {
            commits: &two,
            capacity: 10,
            broker_offsets: &[28],
            current_lag: 8,
        };
        assert_eq!(
            evaluate(&partition, 2500, 0, 0.0),
            Evaluation {
                status: Status::Warn,
                complete: 0.2
            }
        );
        // One commit is no trend: not STALL at first sight (Burrow would say STALL); STOP
        // once that commit is older than the (empty) span of its window.
        let one = commits(&[(10, 1000, Some(5))]);
        let first_sight = Partition {
            commits: &one,
            capacity: 10,
            broker_offsets: &[15],
            current_lag: 5,
        };
        assert_eq!(status(&one, &[15], 5, 1000, 0), Status::Stall, "Burrow");
        assert_eq!(evaluate(&first_sight, 1000, 0, 0.0).status, Status::Ok);
        assert_eq!(evaluate(&first_sight, 1001, 0, 0.0).status, Status::Stop);
        // Below the configured minimum it is not judged.
        assert_eq!(evaluate(&partition, 2500, 0, 0.5).status, Status::Ok);
        let none = Partition {
            commits: &[],
            capacity: 10,
            broker_offsets: &[],
            current_lag: 3,
        };
        assert_eq!(evaluate(&none, 0, 0, 0.0).complete, 0.0);
    }

    #[test]
    fn stop_comes_from_the_age_of_the_last_commit_not_from_membership() {
        // Commits 1 s apart over 4 s; the last one 5 s ago: older than the window is long.
        let window = commits(&[
            (10, 1000, Some(2)),
            (12, 3000, Some(3)),
            (14, 5000, Some(3)),
        ]);
        assert_eq!(status(&window, &[17], 3, 9001, 0), Status::Stop);
        assert_eq!(
            status(&window, &[17], 3, 9000, 0),
            Status::Warn,
            "not older yet"
        );
        // The end was at the last commit at a recent reading: caught up a moment ago.
        assert_eq!(status(&window, &[14, 17], 3, 9001, 0), Status::Warn);
    }

    #[test]
    fn a_group_is_its_worst_partition_capped_at_err() {
        let p = |status, complete| Evaluation { status, complete };
        let g = group([p(Status::Ok, 1.0), p(Status::Warn, 0.5)]);
        assert_eq!(g, p(Status::Warn, 0.5));
        for worst in [Status::Stop, Status::Stall, Status::Rewind, Status::Err] {
            assert_eq!(
                group([p(Status::Warn, 1.0), p(worst, 1.0)]).status,
                Status::Err
            );
        }
        assert_eq!(group([]), p(Status::Ok, 0.0));
        assert_eq!(Status::Err.code(), 5);
        assert_eq!(
            serde_json::to_value(Status::Rewind).unwrap(),
            serde_json::json!("REWIND")
        );
    }
}
