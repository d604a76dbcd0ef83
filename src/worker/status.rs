//! What a worker publishes about itself: one snapshot, written only by the
//! worker (and, between a panic and the restart, by its supervisor), read
//! by `/status`, `/readyz`, `sync` and the anti-entropy pass through
//! [`StatusView`]s that cannot change it.

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::znodes::{Checkpoint, StopRecord};

/// Whether this instance leads the route/target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Waiting for the lease. `behind` names the instance that holds it
    /// (this one is a standby behind a leader, which `/readyz` accepts), or
    /// `None` while nobody is known to lead.
    Waiting { behind: Option<String> },
    /// Holding the lease since `since_ms` (ms since the epoch): the lag of
    /// a leader that has committed no checkpoint yet counts from here.
    Leading { since_ms: i64 },
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership::Waiting { behind: None }
    }
}

/// One worker's state as others may see it.
#[derive(Clone, Debug, Default)]
pub struct WorkerSnapshot {
    pub leadership: Leadership,
    /// The initial sync since this instance took the lead is finished.
    pub initial_sync_done: bool,
    pub last_error: Option<String>,
    /// The worker's last panic, until a restarted worker finished its
    /// initial sync (see `supervise`).
    pub panicked: Option<String>,
    /// The last checkpoint this worker committed (or resumed from).
    pub checkpoint: Option<Checkpoint>,
    /// Target zxid from which every target change not made by this leader
    /// is a local change: the resumed checkpoint's commit, or the first
    /// checkpoint after a full copy. `None` until known.
    pub reference_target_zxid: Option<i64>,
    /// Relative path → source mzxid at which the target's own version was
    /// kept (conflict policy `target-wins`), until the source changes again.
    pub kept: BTreeMap<String, i64>,
    /// Set while the conflict policy `fail` stopped the route/target.
    pub stopped: Option<StopRecord>,
    /// Set while the delete circuit breaker holds deletes (also in the
    /// `stopped` znode, where `zkbridge resume` clears it).
    pub breaker: Option<StopRecord>,
    /// Source nodes read by the last resync, and the ops it planned (for
    /// `zkbridge sync`'s progress).
    pub scanned: u64,
    pub planned: u64,
    /// Creates and sets, and deletes, this worker committed since it
    /// started (for `zkbridge sync`'s progress).
    pub written: u64,
    pub deleted: u64,
}

impl WorkerSnapshot {
    pub fn leading(&self) -> bool {
        matches!(self.leadership, Leadership::Leading { .. })
    }

    pub fn is_kept(&self, rel: &str) -> bool {
        self.kept.contains_key(rel)
    }

    /// Now minus the heartbeat time of the last checkpoint; for a leader
    /// with no checkpoint yet, now minus when it took the lead, so that a
    /// route that never manages one shows a growing lag rather than none.
    pub fn lag_seconds(&self, now_ms: i64) -> Option<f64> {
        let ts = match (&self.checkpoint, &self.leadership) {
            (Some(c), _) => c.heartbeat_ts_ms,
            (None, Leadership::Leading { since_ms }) => *since_ms,
            (None, Leadership::Waiting { .. }) => return None,
        };
        Some(((now_ms - ts) as f64 / 1000.0).max(0.0))
    }
}

/// A read-only view of a worker's snapshot.
pub type StatusView = watch::Receiver<WorkerSnapshot>;

/// The write side of a worker's snapshot. Cloned only to hand it from the
/// supervisor to each (re)started worker: one of them writes at a time.
#[derive(Clone)]
pub struct StatusTx(std::sync::Arc<watch::Sender<WorkerSnapshot>>);

impl Default for StatusTx {
    fn default() -> Self {
        StatusTx(std::sync::Arc::new(watch::Sender::new(WorkerSnapshot::default())))
    }
}

impl StatusTx {
    pub fn view(&self) -> StatusView {
        self.0.subscribe()
    }

    /// The current snapshot; not to be held across an `.await`.
    pub fn get(&self) -> watch::Ref<'_, WorkerSnapshot> {
        self.0.borrow()
    }

    pub fn update(&self, change: impl FnOnce(&mut WorkerSnapshot)) {
        self.0.send_modify(change);
    }

    /// Whether the target's version of `rel` is kept against a source whose
    /// node now has mzxid `source_mzxid` (`-1` absent). A source change since
    /// the keep ends it (the entry is dropped; the caller unpersists it).
    pub fn keeps(&self, rel: &str, source_mzxid: i64) -> Option<bool> {
        let at = *self.get().kept.get(rel)?;
        if crate::conflict::still_kept(at, source_mzxid) {
            Some(true)
        } else {
            self.update(|s| {
                s.kept.remove(rel);
            });
            Some(false)
        }
    }

    pub fn is_kept(&self, rel: &str) -> bool {
        self.get().is_kept(rel)
    }

    pub fn set_error(&self, error: Option<String>) {
        self.update(|s| s.last_error = error);
    }

    /// The supervisor's record of a panic: the worker is gone, so it leads
    /// nothing until it is restarted.
    pub fn after_panic(&self, error: String) {
        self.update(|s| {
            s.leadership = Leadership::Waiting { behind: None };
            s.last_error = Some(error.clone());
            s.panicked = Some(error);
        });
    }
}

impl crate::verify::WorkerView for StatusView {
    fn initial_sync_done(&self) -> bool {
        self.borrow().initial_sync_done
    }

    fn checkpoint_zxid(&self) -> Option<i64> {
        self.borrow().checkpoint.as_ref().map(|c| c.source_zxid)
    }

    fn reference_target_zxid(&self) -> i64 {
        self.borrow().reference_target_zxid.unwrap_or(-1)
    }

    fn is_kept(&self, rel: &str) -> bool {
        self.borrow().is_kept(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_path_ends_when_the_source_changes_again() {
        let status = StatusTx::default();
        status.update(|s| {
            s.kept.insert("a".into(), 10);
        });
        assert_eq!(status.keeps("a", 10), Some(true));
        assert_eq!(status.keeps("a", 11), Some(false));
        assert_eq!(status.keeps("a", 11), None);
        assert!(!status.view().borrow().is_kept("a"));
    }

    #[test]
    fn lag_counts_from_the_checkpoint_or_from_taking_the_lead() {
        let mut s = WorkerSnapshot::default();
        assert_eq!(s.lag_seconds(10_000), None, "a standby reports no lag of its own");
        s.leadership = Leadership::Leading { since_ms: 4_000 };
        assert_eq!(s.lag_seconds(10_000), Some(6.0));
        s.checkpoint = Some(Checkpoint {
            version: 1,
            source_ensemble_id: "s".into(),
            source_zxid: 7,
            heartbeat_ts_ms: 9_000,
            bridge: "b".into(),
            updated_ms: 9_000,
        });
        assert_eq!(s.lag_seconds(10_000), Some(1.0));
        assert_eq!(s.lag_seconds(8_000), Some(0.0), "a clock step back is no negative lag");
    }
}
