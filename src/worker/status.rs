//! What the worker tells `/status`, `/readyz` and the anti-entropy pass.

use super::*;

/// What `/status` and `/readyz` need to know about a worker.
#[derive(Default)]
pub struct WorkerStatus {
    /// When this instance took the lead (ms since the epoch): the lag of a
    /// leader that has committed no checkpoint yet counts from here.
    pub leading_since_ms: std::sync::atomic::AtomicI64,
    /// This instance holds the route/target's lease.
    pub leading: AtomicBool,
    /// The initial sync since this instance took the lead is finished.
    pub initial_sync_done: AtomicBool,
    /// While not leading: another instance holds the lease (this one is a
    /// standby behind it), as opposed to nobody leading yet.
    pub other_leader: Mutex<Option<String>>,
    pub last_error: Mutex<Option<String>>,
    /// The worker's last panic, until a restarted worker finished its
    /// initial sync (see `supervise`).
    pub panicked: Mutex<Option<String>>,
    /// The last checkpoint this worker committed (or resumed from).
    pub checkpoint: Mutex<Option<Checkpoint>>,
    /// Target zxid from which every target change not made by this leader
    /// is a local change: the resumed checkpoint's commit, or the first
    /// checkpoint after a full copy. `-1` until known.
    pub reference_target_zxid: std::sync::atomic::AtomicI64,
    /// Echoes of own writes, paths kept by policy, a stop.
    pub conflicts: Conflicts,
    /// Set while the delete circuit breaker holds deletes (also in the
    /// `stopped` znode, where `zkbridge resume` clears it).
    pub breaker: Mutex<Option<StopRecord>>,
    /// Paths whose deletes the breaker holds (parked in the queue).
    pub held_deletes: Mutex<std::collections::BTreeSet<String>>,
    /// Held deletes an operator released, until they are applied.
    pub released_deletes: Mutex<std::collections::BTreeSet<String>>,
    /// An operator released the held deletes: they go until none is left.
    pub breaker_released: AtomicBool,
    /// Source nodes read by the last resync, and the ops it planned (for
    /// `zkbridge sync`'s progress).
    pub scanned: std::sync::atomic::AtomicU64,
    pub planned: std::sync::atomic::AtomicU64,
}

impl crate::verify::WorkerView for WorkerStatus {
    fn initial_sync_done(&self) -> bool {
        self.initial_sync_done.load(Ordering::Relaxed)
    }

    fn checkpoint_zxid(&self) -> Option<i64> {
        self.checkpoint.lock().unwrap().as_ref().map(|c| c.source_zxid)
    }

    fn reference_target_zxid(&self) -> i64 {
        self.reference_target_zxid.load(Ordering::Relaxed)
    }

    fn is_kept(&self, rel: &str) -> bool {
        self.conflicts.is_kept(rel)
    }
}
