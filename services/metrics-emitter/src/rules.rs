//! Burrow's lag evaluation rules over a window of observations of one group-partition.
//!
//! Pure functions, so every rule is tested from synthetic histories; the monitor feeds
//! them what it reads from the cluster.

use serde::Serialize;

/// A partition's (or group's) evaluated state. The numeric code is the value of the
/// `kafka.consumer.status` gauge; a group's status is the worst of its partitions'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Status {
    /// Caught up at some point in the window, or the lag is not growing.
    #[serde(rename = "OK")]
    Ok,
    /// The consumer moves but the lag grew across the whole window: it is falling behind.
    #[serde(rename = "WARN")]
    Warn,
    /// The group has members but its committed offset did not move across the window
    /// while there was lag: a consumer is stuck (or stopped committing).
    #[serde(rename = "STALL")]
    Stall,
    /// Nobody consumes: the group has no active member and its committed offset stands
    /// still while there is lag. (A group that commits without joining, as consumers with
    /// manual assignment do, is judged by its offsets like any other.)
    #[serde(rename = "STOP")]
    Stop,
    /// The committed offset went backwards within the window (a reset or replay).
    #[serde(rename = "REWIND")]
    Rewind,
    /// The group's offsets could not be read.
    #[serde(rename = "ERR")]
    Err,
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

/// What is known of a group's members when its offsets were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// At least one member is in the group.
    Active,
    /// The group has no member.
    Empty,
}

/// One reading of a group-partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The group's committed offset (the next offset it will read).
    pub committed: i64,
    /// The partition's high watermark (the offset the next record will get).
    pub high_watermark: i64,
}

impl Observation {
    /// Records written and not yet committed by the group (never negative: a high
    /// watermark read just before a commit can trail it).
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.committed).max(0)
    }
}

/// Evaluates the observations of one group-partition, oldest first. `capacity` is the
/// window size: rules about trends (STALL, WARN) need a full window, as in Burrow, so a
/// consumer is not judged on two readings; STOP and REWIND are facts and need none.
///
/// Committed offsets alone cannot tell a member committing the same offset (STALL) from
/// nobody committing (STOP): membership does. An empty group with lag is STOP at once, as
/// long as its offset is not moving (someone may commit for it without joining).
pub fn evaluate(window: &[Observation], capacity: usize, members: Membership) -> Status {
    let Some(last) = window.last() else {
        return Status::Ok;
    };
    if window.windows(2).any(|w| w[1].committed < w[0].committed) {
        return Status::Rewind;
    }
    let moving = window.len() >= 2 && window[window.len() - 2].committed != last.committed;
    if last.lag() > 0 && members == Membership::Empty && !moving {
        return Status::Stop;
    }
    if window.iter().any(|o| o.lag() == 0) {
        return Status::Ok;
    }
    if window.len() < capacity.max(2) {
        return Status::Ok;
    }
    let first = window[0];
    if window.iter().all(|o| o.committed == first.committed) {
        return match members {
            Membership::Active => Status::Stall,
            Membership::Empty => Status::Stop,
        };
    }
    let never_shrank = window.windows(2).all(|w| w[1].lag() >= w[0].lag());
    if never_shrank && last.lag() > first.lag() {
        return Status::Warn;
    }
    Status::Ok
}

/// A group's status: the worst of its partitions' (OK for a group with none).
pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
    statuses.into_iter().max().unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window from (committed, high watermark) pairs.
    fn window(points: &[(i64, i64)]) -> Vec<Observation> {
        points
            .iter()
            .map(|&(committed, high_watermark)| Observation {
                committed,
                high_watermark,
            })
            .collect()
    }

    #[test]
    fn a_consumer_that_caught_up_in_the_window_is_ok() {
        let w = window(&[(10, 20), (20, 20), (25, 40), (30, 50), (35, 60)]);
        assert_eq!(evaluate(&w, 5, Membership::Active), Status::Ok);
    }

    #[test]
    fn a_consumer_keeping_pace_with_a_steady_backlog_is_ok() {
        let w = window(&[(10, 20), (20, 30), (30, 40), (40, 50), (50, 60)]);
        assert_eq!(evaluate(&w, 5, Membership::Active), Status::Ok);
    }

    #[test]
    fn a_shrinking_lag_is_ok() {
        let w = window(&[(10, 100), (30, 100), (50, 110), (70, 115), (90, 120)]);
        assert_eq!(evaluate(&w, 5, Membership::Active), Status::Ok);
    }

    #[test]
    fn a_lag_growing_across_the_whole_window_warns() {
        let w = window(&[(10, 20), (15, 30), (20, 40), (25, 50), (30, 60)]);
        assert_eq!(evaluate(&w, 5, Membership::Active), Status::Warn);
    }

    #[test]
    fn a_lag_that_shrank_once_in_the_window_does_not_warn() {
        let w = window(&[(10, 20), (15, 30), (28, 35), (30, 50), (35, 60)]);
        assert_eq!(evaluate(&w, 5, Membership::Active), Status::Ok);
    }

    #[test]
    fn members_that_do_not_move_while_lagging_stall() {
        let w = window(&[(10, 20), (10, 20), (10, 25), (10, 25), (10, 30)]);
        assert_eq!(evaluate(&w, 5, Membership::Active), Status::Stall);
    }

    #[test]
    fn no_members_while_lagging_is_stop_without_waiting_for_a_full_window() {
        let w = window(&[(10, 10), (10, 15)]);
        assert_eq!(evaluate(&w, 5, Membership::Empty), Status::Stop);
    }

    #[test]
    fn no_members_and_no_lag_is_ok() {
        let w = window(&[(10, 12), (12, 12)]);
        assert_eq!(evaluate(&w, 5, Membership::Empty), Status::Ok);
    }

    #[test]
    fn a_committed_offset_that_went_backwards_is_rewind() {
        let w = window(&[(50, 60), (60, 60), (20, 60)]);
        assert_eq!(evaluate(&w, 5, Membership::Active), Status::Rewind);
        assert_eq!(evaluate(&w, 5, Membership::Empty), Status::Rewind);
    }

    #[test]
    fn an_empty_group_whose_offsets_move_is_judged_by_its_offsets() {
        // Committed by a consumer with manual assignment, which never joins the group.
        let falling_behind = window(&[(10, 20), (15, 30), (20, 40)]);
        assert_eq!(
            evaluate(&falling_behind[..2], 3, Membership::Empty),
            Status::Ok
        );
        assert_eq!(
            evaluate(&falling_behind, 3, Membership::Empty),
            Status::Warn
        );
        // Once it stops moving, it is STOP.
        let stopped = window(&[(10, 20), (15, 30), (15, 30)]);
        assert_eq!(evaluate(&stopped, 3, Membership::Empty), Status::Stop);
    }

    #[test]
    fn trends_wait_for_a_full_window() {
        let stalled = window(&[(10, 20), (10, 20), (10, 25)]);
        assert_eq!(evaluate(&stalled, 5, Membership::Active), Status::Ok);
        assert_eq!(evaluate(&stalled, 3, Membership::Active), Status::Stall);
    }

    #[test]
    fn an_empty_window_is_ok_and_lag_is_never_negative() {
        assert_eq!(evaluate(&[], 5, Membership::Empty), Status::Ok);
        let o = Observation {
            committed: 12,
            high_watermark: 10,
        };
        assert_eq!(o.lag(), 0);
    }

    #[test]
    fn a_group_is_as_bad_as_its_worst_partition() {
        assert_eq!(
            worst([Status::Ok, Status::Stall, Status::Warn]),
            Status::Stall
        );
        assert_eq!(worst([]), Status::Ok);
        assert_eq!(Status::Err.code(), 5);
        assert_eq!(
            serde_json::to_value(Status::Rewind).unwrap(),
            serde_json::json!("REWIND")
        );
    }
}
