//! The delete circuit breaker: a source that briefly looks empty (a
//! partition, a wrong path, a leader election) must not empty every region.
//!
//! Deletes a worker is about to apply are counted over a sliding window of
//! `delete_window_s`; if they would exceed `max_delete_fraction` of the
//! nodes the route mirrors into the target, they are held (other writes go
//! on), counted in `zkbridge_deletes_blocked_total`, and the route/target
//! reports itself not ready until an operator runs `zkbridge resume` or the
//! condition clears (the source nodes come back). A vanished source root is
//! held the same way unless the route sets `allow_root_delete = true`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Deletes per window that never trip the breaker, whatever the fraction:
/// small routes can be cleaned up without an operator. (A vanished root is
/// held regardless, unless the route allows it.)
pub const ALWAYS_ALLOWED: usize = 10;

/// Deletes applied recently, for the sliding window.
pub struct DeleteWindow {
    window: Duration,
    fraction: f64,
    applied: VecDeque<(Instant, usize)>,
}

impl DeleteWindow {
    pub fn new(window: Duration, fraction: f64) -> Self {
        DeleteWindow {
            window,
            fraction,
            applied: VecDeque::new(),
        }
    }

    fn recent(&mut self, now: Instant) -> usize {
        while self
            .applied
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            self.applied.pop_front();
        }
        self.applied.iter().map(|(_, n)| n).sum()
    }

    /// Whether `deletes` more may go now, with `mirrored` nodes in the
    /// target; records them when they may.
    pub fn admit(&mut self, deletes: usize, mirrored: usize, now: Instant) -> bool {
        let limit = (self.fraction * mirrored as f64).floor() as usize;
        if self.recent(now) + deletes > limit.max(ALWAYS_ALLOWED) {
            return false;
        }
        self.record(deletes, now);
        true
    }

    /// Records deletes that go regardless (released by an operator).
    pub fn record(&mut self, deletes: usize, now: Instant) {
        self.applied.push_back((now, deletes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_mass_delete_and_forgets_old_ones() {
        let mut w = DeleteWindow::new(Duration::from_secs(60), 0.5);
        let t0 = Instant::now();
        assert!(w.admit(10, 100, t0), "ordinary deletes pass");
        assert!(w.admit(40, 100, t0));
        assert!(!w.admit(1, 100, t0), "51 of 100 within the window");
        assert!(w.admit(45, 100, t0 + Duration::from_secs(61)), "the window moved on");
        assert!(!w.admit(60, 100, t0 + Duration::from_secs(200)), "60% at once");
        let mut small = DeleteWindow::new(Duration::from_secs(60), 0.5);
        assert!(small.admit(3, 3, t0), "a small route may be emptied");
        assert!(!small.admit(ALWAYS_ALLOWED, 3, t0), "but not past the floor");
    }
}
