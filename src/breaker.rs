//! The delete circuit breaker's rule: a tree that collapses (a wrong path, a
//! runaway cleanup, a source that briefly looks empty) must not empty every
//! region; a tree that merely turns over (a work queue, registrations) must
//! never trip it.
//!
//! So it measures the shrink, not the traffic: deletes are held when
//! applying them would bring the route/target's mirrored node count below
//! `(1 − max_delete_fraction) ×` the largest count seen within the last
//! `delete_window_s`. Creates offset deletes. `max_delete_fraction = 1.0`
//! turns the rule off (the line is 0). A shrink of at most [`SMALL_SHRINK`]
//! nodes below the peak is always allowed, so a small route can be cleaned
//! up without an operator. The vanished-root guard is the worker's (it needs
//! a read of the source).
//!
//! Decisions only, no IO: the worker asks [`DeleteBreaker::admit`] and
//! applies the answer (see `worker::breaker`).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Nodes a tree may shrink below its peak whatever the fraction: small
/// routes can be cleaned up without an operator.
pub const SMALL_SHRINK: usize = 10;

/// The mirrored node count over the window, as the worker admits writes.
///
/// The count moves when creates and deletes are *admitted*, not when they
/// commit: units in flight at once are judged against each other's deletes,
/// so many small units cannot together pass the line. A (re)sync sets it to
/// what it found.
#[derive(Debug)]
pub struct DeleteBreaker {
    window: Duration,
    fraction: f64,
    count: usize,
    /// Counts seen within the window, decreasing, newest last.
    history: VecDeque<(Instant, usize)>,
}

/// The numbers a decision was made on, for the log, `status` and the stop
/// record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Largest mirrored count within the window.
    pub peak: usize,
    /// Mirrored count before the ops judged.
    pub current: usize,
    /// What applying every delete asked about would leave.
    pub would_leave: usize,
    /// The count below which deletes are held.
    pub line: usize,
}

/// How many of the deletes asked about may go now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    pub allowed: usize,
    pub held: usize,
    pub verdict: Verdict,
}

impl DeleteBreaker {
    pub fn new(window: Duration, fraction: f64) -> Self {
        DeleteBreaker {
            window,
            fraction,
            count: 0,
            history: VecDeque::new(),
        }
    }

    /// The mirrored count as a (re)sync found it. The window's peak
    /// remembers the count before, so a resync that plans a collapse is
    /// judged like a live one.
    pub fn set_count(&mut self, count: usize, now: Instant) {
        self.count = count;
        self.remember(now);
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.count
    }

    /// Keeps the window's counts as a decreasing queue: a count is dropped
    /// once a newer one at least as large arrives (it can never be the peak
    /// again) or it leaves the window. The front is the peak; churn keeps
    /// the queue short.
    fn remember(&mut self, now: Instant) {
        while self
            .history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            self.history.pop_front();
        }
        while self.history.back().is_some_and(|(_, c)| *c <= self.count) {
            self.history.pop_back();
        }
        self.history.push_back((now, self.count));
    }

    /// Largest count within the window (the current one included).
    pub fn peak(&mut self, now: Instant) -> usize {
        self.remember(now);
        self.history.front().map(|(_, c)| *c).unwrap_or(self.count)
    }

    /// The count below which deletes are held.
    pub fn line(&mut self, now: Instant) -> usize {
        let peak = self.peak(now);
        let by_fraction = ((1.0 - self.fraction).max(0.0) * peak as f64).ceil() as usize;
        by_fraction.min(peak.saturating_sub(SMALL_SHRINK))
    }

    /// Judges `deletes` deletes going with `creates` creates: the deletes
    /// that keep the count at or above the line may go, the rest are held.
    /// Admitted ops move the count.
    pub fn admit(&mut self, creates: usize, deletes: usize, now: Instant) -> Admission {
        let line = self.line(now);
        let peak = self.peak(now);
        let current = self.count;
        let with_creates = current + creates;
        let allowed = deletes.min(with_creates.saturating_sub(line));
        let verdict = Verdict {
            peak,
            current,
            would_leave: with_creates.saturating_sub(deletes),
            line,
        };
        self.count = with_creates - allowed;
        self.remember(now);
        Admission {
            allowed,
            held: deletes - allowed,
            verdict,
        }
    }

    /// Records deletes that go regardless of the rule (released by an
    /// operator).
    pub fn force(&mut self, creates: usize, deletes: usize, now: Instant) {
        self.count = (self.count + creates).saturating_sub(deletes);
        self.remember(now);
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "applying them would leave {} mirrored nodes (now {}), below the line of {} under the window's peak of {}",
            self.would_leave, self.current, self.line, self.peak
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn churn_never_trips_however_much_turns_over() {
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        let t0 = Instant::now();
        b.set_count(100, t0);
        // 100 nodes turned over 50 times within the window, one unit of a
        // create and one of a delete at a time, and in mixed units.
        for i in 0..5000u64 {
            let now = t0 + Duration::from_millis(i * 10);
            assert_eq!(b.admit(1, 0, now).held, 0);
            assert_eq!(b.admit(0, 1, now).held, 0, "turnover {i}");
            assert_eq!(b.admit(3, 3, now).held, 0);
        }
        assert_eq!(b.count(), 100);
    }

    #[test]
    fn a_collapse_below_the_line_is_held_and_what_keeps_above_it_goes() {
        let t0 = Instant::now();
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        b.set_count(100, t0);
        assert_eq!(b.admit(0, 40, t0).held, 0, "a 40 % shrink goes");
        let a = b.admit(0, 20, t0);
        assert_eq!(
            (a.allowed, a.held),
            (10, 10),
            "only what keeps 50 of the peak of 100 goes"
        );
        assert_eq!(
            a.verdict,
            Verdict {
                peak: 100,
                current: 60,
                would_leave: 40,
                line: 50
            }
        );
        assert_eq!(b.admit(0, 1, t0).held, 1, "at the line, nothing more goes");
        assert_eq!(b.admit(1, 1, t0).held, 0, "a create makes room for a delete");
    }

    #[test]
    fn many_small_units_are_judged_together() {
        let t0 = Instant::now();
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        b.set_count(1000, t0);
        let held: usize = (0..128).map(|_| b.admit(0, 10, t0).held).sum();
        assert_eq!(held, 1280 - 500);
    }

    #[test]
    fn the_peak_ages_out_of_the_window() {
        let t0 = Instant::now();
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        b.set_count(100, t0);
        assert_eq!(b.admit(0, 50, t0).held, 0);
        assert_eq!(
            b.admit(0, 25, t0 + Duration::from_secs(30)).held,
            25,
            "the peak of 100 is still in the window"
        );
        let later = t0 + Duration::from_secs(91);
        assert_eq!(b.peak(later), 50);
        assert_eq!(b.admit(0, 25, later).held, 0, "a slow, steady shrink is no collapse");
    }

    #[test]
    fn a_fraction_of_one_turns_the_rule_off() {
        let t0 = Instant::now();
        let mut b = DeleteBreaker::new(MINUTE, 1.0);
        b.set_count(1000, t0);
        assert_eq!(b.admit(0, 1000, t0).held, 0);
    }

    #[test]
    fn small_trees_can_be_emptied_within_the_small_shrink() {
        let t0 = Instant::now();
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        b.set_count(8, t0);
        assert_eq!(b.admit(0, 8, t0).held, 0, "a tree of 8 may be emptied");
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        b.set_count(30, t0);
        let a = b.admit(0, 30, t0);
        assert_eq!((a.allowed, a.held), (15, 15), "30 nodes: the fraction decides");
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        b.set_count(16, t0);
        assert_eq!(
            b.admit(0, 16, t0).allowed,
            10,
            "16 nodes: ten may go, the line stays at 6"
        );
    }

    #[test]
    fn a_resync_is_judged_against_the_count_before_it() {
        let t0 = Instant::now();
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        // A restart: the target held 100; the resume plans 60 deletes.
        b.set_count(100, t0);
        assert_eq!(b.admit(0, 60, t0).held, 10);
        let mut b = DeleteBreaker::new(MINUTE, 0.5);
        b.set_count(100, t0);
        assert_eq!(b.admit(0, 40, t0).held, 0);
    }
}
