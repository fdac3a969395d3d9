//! How far a partition may be committed when its records are handled out of
//! order.
//!
//! The consumer loop hands records of different keys to handlers at once, so
//! the record at offset 7 may be done before the one at offset 5. The group
//! may only commit up to the *lowest record not yet handled*: committing 8
//! while 5 is still being handled would lose 5 in a crash. [`Progress`]
//! tracks, for one partition, the offsets received and not yet done, and
//! says when that watermark moves.

use std::collections::BTreeSet;

/// The records of one partition the loop received and is not done with.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Received, and not yet handled (or dead-lettered).
    pending: BTreeSet<i64>,
    /// Of those, how many a handler is working on right now.
    pub running: usize,
    /// One past the highest offset received.
    next: Option<i64>,
    /// The end of the partition the consumer last reported: every record
    /// before it was received (the commit markers of transactions, which
    /// are never handed out, included).
    end: Option<i64>,
    /// Whether no record was received since the end was reported.
    at_end: bool,
    /// The watermark last reported by [`Progress::advance`].
    reported: Option<i64>,
}

impl Progress {
    /// Notes a record received at `offset`.
    pub fn received(&mut self, offset: i64) {
        self.pending.insert(offset);
        if self.end.is_none_or(|end| offset >= end) {
            self.at_end = false;
        }
        self.next = Some(self.next.map_or(offset + 1, |next| next.max(offset + 1)));
    }

    /// Notes that the record at `offset` is done with.
    pub fn done(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// Notes that the consumer reached the end of the partition at `end`
    /// (`None`: it handed out nothing of it, it was empty from where the
    /// consumer started).
    pub fn reached(&mut self, end: Option<i64>) {
        if let Some(end) = end {
            self.end = Some(self.end.map_or(end, |e| e.max(end)));
        }
        self.at_end = true;
    }

    /// Whether every record received is done and the consumer reported the
    /// end of the partition after them: nothing is left to read right now.
    pub fn at_end(&self) -> bool {
        self.pending.is_empty() && self.at_end
    }

    /// The offset the group may commit: the lowest one received and not done,
    /// or, when all are done, one past the last one (or the reported end, if
    /// that is further: past the commit marker of a transaction).
    pub fn watermark(&self) -> Option<i64> {
        match self.pending.first() {
            Some(lowest) => Some(*lowest),
            None => match (self.next, self.end) {
                (Some(next), Some(end)) => Some(next.max(end)),
                (next, end) => next.or(end),
            },
        }
    }

    /// The watermark, if it moved since it was last reported.
    pub fn advance(&mut self) -> Option<i64> {
        let watermark = self.watermark()?;
        if self.reported.is_some_and(|reported| reported >= watermark) {
            return None;
        }
        self.reported = Some(watermark);
        Some(watermark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_lowest_record_not_done() {
        let mut p = Progress::default();
        assert_eq!(p.watermark(), None);
        for offset in 5..10 {
            p.received(offset);
        }
        assert_eq!(p.advance(), Some(5));
        // Done out of order: the watermark waits for 5.
        p.done(7);
        p.done(9);
        assert_eq!(p.advance(), None);
        assert_eq!(p.watermark(), Some(5));
        p.done(5);
        assert_eq!(p.advance(), Some(6));
        p.done(6);
        assert_eq!(p.advance(), Some(8));
        p.done(8);
        // All done: one past the last.
        assert_eq!(p.advance(), Some(10));
        assert_eq!(p.advance(), None);
    }

    #[test]
    fn the_end_moves_the_watermark_past_a_commit_marker_once_all_is_done() {
        let mut p = Progress::default();
        p.received(0);
        p.received(1);
        // Offset 2 is a transaction's commit marker: the end is 3.
        p.reached(Some(3));
        assert!(!p.at_end());
        p.done(1);
        assert_eq!(p.advance(), Some(0));
        p.done(0);
        assert!(p.at_end());
        assert_eq!(p.advance(), Some(3));
        // Records after the end.
        p.received(3);
        assert!(!p.at_end());
        p.done(3);
        assert_eq!(p.advance(), Some(4));
        assert!(!p.at_end(), "the end was not reported after 3");
        p.reached(Some(5));
        assert!(p.at_end());
        assert_eq!(p.advance(), Some(5));
    }

    #[test]
    fn an_empty_partition_is_at_its_end() {
        let mut p = Progress::default();
        p.reached(None);
        assert!(p.at_end());
        assert_eq!(p.advance(), None);
    }
}
