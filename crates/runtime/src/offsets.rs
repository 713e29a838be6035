//! Per-partition contiguous watermark: which offset is safe to commit.
//!
//! Messages of one partition finish out of order (their outputs are acknowledged out of
//! order), but a commit says "everything before this offset is done". Committing the highest
//! finished offset would skip an unfinished earlier one on a crash (fede1024/rust-rdkafka #89).
//! The tracker therefore commits only up to the first offset still in flight.
//!
//! It also refuses what a correct fetch stream never produces: an offset at or below one
//! it has already seen, or below where the partition started. Such a message can only come
//! from a stale route (a previous assignment's fetch), and accepting it could move the
//! watermark over work that went elsewhere. Offsets that are skipped forward are legitimate
//! on compacted topics and around transaction markers; the tracker counts them as gaps so a
//! routing regression shows up in `/status` instead of hiding in the commit.

use std::collections::BTreeSet;

/// Why the tracker refused an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The offset is at or below one already begun, or below the start position.
    #[error("offset {offset} is behind the partition's next offset {expected}")]
    Stale {
        /// The refused offset.
        offset: i64,
        /// The next offset the partition expects.
        expected: i64,
    },
}

/// Offsets of one partition that were handed to processing and not yet finished.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    in_flight: BTreeSet<i64>,
    /// The next offset a fetch is expected to return (one past the highest begun, or the
    /// start position).
    next: Option<i64>,
    committed: Option<i64>,
    /// An asynchronous commit sent and not yet answered: (offset, when it was sent).
    offered: Option<(i64, std::time::Instant)>,
    gaps: u64,
}

impl OffsetTracker {
    /// A tracker for a partition whose processing starts at `position` (when known), which
    /// counts as committed.
    pub fn starting_at(position: Option<i64>) -> OffsetTracker {
        OffsetTracker {
            next: position,
            committed: position,
            ..OffsetTracker::default()
        }
    }

    /// Records that `offset` was read and is being processed; refuses an offset a correct
    /// fetch stream cannot deliver now.
    pub fn begin(&mut self, offset: i64) -> Result<(), Refused> {
        if let Some(expected) = self.next {
            if offset < expected {
                return Err(Refused::Stale { offset, expected });
            }
            if offset > expected {
                self.gaps += 1;
            }
        }
        self.in_flight.insert(offset);
        self.next = Some(offset + 1);
        Ok(())
    }

    /// Records that `offset` is finished: every output it produced is acknowledged.
    pub fn complete(&mut self, offset: i64) {
        self.in_flight.remove(&offset);
    }

    /// The offset to commit (the next offset to read): the first unfinished offset, or one
    /// past the highest begun when nothing is in flight. `None` before any message.
    pub fn watermark(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(&first) => Some(first),
            None => self.next,
        }
    }

    /// The watermark when it moved past the last commit, to commit now.
    pub fn to_commit(&self) -> Option<i64> {
        self.watermark()
            .filter(|w| self.committed.is_none_or(|c| *w > c))
    }

    /// The watermark to send in an asynchronous commit now: as [`to_commit`](Self::to_commit),
    /// except while the same offset was offered less than `patience` ago (an asynchronous
    /// commit is never confirmed to us, so an unchanged watermark is offered again only now
    /// and then, not at every interval).
    pub fn to_offer(&self, now: std::time::Instant, patience: std::time::Duration) -> Option<i64> {
        self.to_commit().filter(|&w| {
            !matches!(self.offered, Some((o, at)) if o == w && now.duration_since(at) < patience)
        })
    }

    /// Records that an asynchronous commit of `offset` was sent.
    pub fn offered(&mut self, offset: i64, now: std::time::Instant) {
        self.offered = Some((offset, now));
    }

    /// Records a successful commit of `offset` (confirmed by the broker).
    pub fn committed(&mut self, offset: i64) {
        self.committed = Some(self.committed.map_or(offset, |c| c.max(offset)));
        if self.offered.is_some_and(|(o, _)| o <= offset) {
            self.offered = None;
        }
    }

    /// The last committed offset, as the tracker knows it.
    pub fn last_committed(&self) -> Option<i64> {
        self.committed
    }

    /// Sets the last committed offset without touching what is in flight.
    pub fn set_last_committed(&mut self, committed: Option<i64>) {
        self.committed = committed;
    }

    /// Offsets read and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How many times the fetch stream skipped forward (compaction, transaction markers).
    pub fn gaps(&self) -> u64 {
        self.gaps
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
            t.begin(o).unwrap();
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
        t.begin(5).unwrap();
        t.complete(5);
        assert_eq!(t.to_commit(), Some(6));
        t.committed(6);
        assert_eq!(t.to_commit(), None);
    }

    #[test]
    fn an_unconfirmed_offer_is_repeated_only_when_overdue_or_overtaken() {
        let start = std::time::Instant::now();
        let patience = std::time::Duration::from_secs(5);
        let mut t = OffsetTracker::starting_at(Some(0));
        t.begin(0).unwrap();
        t.complete(0);
        assert_eq!(t.to_offer(start, patience), Some(1));
        t.offered(1, start);
        assert_eq!(t.to_offer(start, patience), None, "sent a moment ago");
        assert_eq!(t.to_commit(), Some(1), "not committed until confirmed");
        assert_eq!(
            t.to_offer(start + patience, patience),
            Some(1),
            "unconfirmed after the patience: offered again"
        );
        t.begin(1).unwrap();
        t.complete(1);
        assert_eq!(
            t.to_offer(start, patience),
            Some(2),
            "a newer watermark goes at once"
        );
        t.committed(2);
        assert_eq!(t.to_offer(start, patience), None);
    }

    #[test]
    fn a_stale_offset_is_refused_and_cannot_move_the_watermark() {
        // The routing-cache defect: offsets 5..8 went to a previous assignment's worker
        // and the new tracker is fed a replay of an earlier offset.
        let mut t = OffsetTracker::starting_at(Some(5));
        t.begin(5).unwrap();
        assert_eq!(
            t.begin(5),
            Err(Refused::Stale {
                offset: 5,
                expected: 6
            })
        );
        assert_eq!(
            t.begin(3),
            Err(Refused::Stale {
                offset: 3,
                expected: 6
            })
        );
        assert_eq!(t.watermark(), Some(5), "5 is still in flight");
        let mut fresh = OffsetTracker::starting_at(Some(10));
        assert!(fresh.begin(9).is_err(), "below the start position");
    }

    #[test]
    fn forward_gaps_are_accepted_and_counted() {
        let mut t = OffsetTracker::starting_at(Some(0));
        t.begin(0).unwrap();
        t.begin(4).unwrap(); // 1..3 compacted away
        t.complete(0);
        t.complete(4);
        assert_eq!(t.to_commit(), Some(5));
        assert_eq!(t.gaps(), 1);
    }

    proptest! {
        #[test]
        fn the_watermark_is_always_the_first_unfinished_offset(
            n in 1usize..200,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let mut t = OffsetTracker::default();
            let mut pending: Vec<i64> = (0..n as i64).collect();
            for &o in &pending { t.begin(o).unwrap(); }
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
