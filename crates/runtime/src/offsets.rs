//! Per-partition contiguous watermark: which offset is safe to commit.
//!
//! Messages of one partition finish out of order (their outputs are acknowledged out of
//! order), but a commit says "everything before this offset is done". Committing the highest
//! finished offset would skip an unfinished earlier one on a crash (fede1024/rust-rdkafka #89).
//! The tracker therefore commits only up to the first offset still in flight.

use std::collections::BTreeSet;

/// Offsets of one partition that were handed to processing and not yet finished.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    in_flight: BTreeSet<i64>,
    highest_seen: Option<i64>,
    committed: Option<i64>,
}

impl OffsetTracker {
    /// A tracker for a partition whose processing starts at `position` (when known).
    pub fn starting_at(position: Option<i64>) -> OffsetTracker {
        OffsetTracker {
            in_flight: BTreeSet::new(),
            highest_seen: position.map(|p| p - 1),
            committed: position,
        }
    }

    /// Records that `offset` was read and is being processed.
    pub fn begin(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.highest_seen = Some(self.highest_seen.map_or(offset, |h| h.max(offset)));
    }

    /// Records that `offset` is finished: every output it produced is acknowledged.
    pub fn complete(&mut self, offset: i64) {
        self.in_flight.remove(&offset);
    }

    /// The offset to commit (the next offset to read): the first unfinished offset, or one
    /// past the highest seen when nothing is in flight. `None` before any message.
    pub fn watermark(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(&first) => Some(first),
            None => self.highest_seen.map(|h| h + 1),
        }
    }

    /// The watermark when it moved past the last commit, to commit now.
    pub fn to_commit(&self) -> Option<i64> {
        self.watermark()
            .filter(|w| self.committed.is_none_or(|c| *w > c))
    }

    /// Records a successful commit of `offset`.
    pub fn committed(&mut self, offset: i64) {
        self.committed = Some(self.committed.map_or(offset, |c| c.max(offset)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_is_committable_before_any_message() {
        assert_eq!(OffsetTracker::default().to_commit(), None);
    }

    #[test]
    fn out_of_order_completions_never_commit_past_the_first_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.begin(o);
        }
        t.complete(12);
        t.complete(14);
        assert_eq!(t.to_commit(), Some(10));
        t.complete(10);
        assert_eq!(t.to_commit(), Some(11));
        t.complete(11);
        assert_eq!(t.to_commit(), Some(13));
        t.complete(13);
        assert_eq!(t.to_commit(), Some(15));
    }

    #[test]
    fn a_commit_is_offered_once_per_advance() {
        let mut t = OffsetTracker::starting_at(Some(5));
        assert_eq!(
            t.to_commit(),
            None,
            "the start position is already committed"
        );
        t.begin(5);
        t.complete(5);
        assert_eq!(t.to_commit(), Some(6));
        t.committed(6);
        assert_eq!(t.to_commit(), None);
    }

    proptest! {
        #[test]
        fn the_watermark_is_always_the_first_unfinished_offset(
            n in 1usize..200,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let mut t = OffsetTracker::default();
            let mut pending: Vec<i64> = (0..n as i64).collect();
            for &o in &pending { t.begin(o); }
            for index in order {
                if pending.is_empty() { break; }
                let o = pending.remove(index.index(pending.len()));
                t.complete(o);
                let expected = pending.iter().min().copied().unwrap_or(n as i64);
                prop_assert_eq!(t.watermark(), Some(expected));
            }
        }
    }
}
