//! The hand-off between capture and apply: a per-target set of dirty paths.
//!
//! Events carry no data, so repeated events for one path coalesce into one
//! entry; the worker later reads the source's *current* state. The set is
//! bounded: past `max_pending` entries it is dropped in favour of a full
//! resync request, which costs one scan but keeps memory flat however long a
//! target stays unreachable.

use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::time::Instant;

use prometheus::IntGauge;
use tokio::sync::Notify;

use crate::plan::Need;

/// Why a full scan of the route into the target is needed (the `reason`
/// label of `zkbridge_resyncs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    Startup,
    Reconnect,
    SessionExpired,
    Overflow,
    SourceRoot,
    CheckpointMismatch,
}

impl ResyncReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Startup => "startup",
            ResyncReason::Reconnect => "reconnect",
            ResyncReason::SessionExpired => "session_expired",
            ResyncReason::Overflow => "overflow",
            ResyncReason::SourceRoot => "source_root",
            ResyncReason::CheckpointMismatch => "checkpoint_mismatch",
        }
    }
}

/// A dirty path: when and in which order it was first seen dirty, and what
/// the events so far say about it. Each flag is merged by [`Dirty::absorb`]
/// towards the side that needs more work, so coalescing never loses a need.
#[derive(Debug, Clone, Copy)]
pub struct Dirty {
    /// First seen dirty (for the latency histogram).
    pub since: Instant,
    /// Order in which the path was (first) marked: a heartbeat barrier is
    /// reached once nothing marked before it is still pending.
    pub seq: u64,
    pub need: Need,
    pub seen: Seen,
    pub change: Change,
    pub target_read: TargetRead,
}

/// Where the change that marked a path was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// In the source (or unsure): the target follows it.
    InSource,
    /// In the target only (no source event): if source and target differ,
    /// the target was changed locally — a conflict.
    InTargetOnly,
}

/// What the events said changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Only data: such a path is kept apart from other units by its own
    /// name only, not by its ancestors and descendants (see `take`).
    Data,
    /// A create, delete, scaffolding or target change: the tree's shape may
    /// change.
    Shape,
}

/// How the next attempt learns the target's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRead {
    /// Trusts the checkpoint and may write without reading the target.
    MayWriteBlind,
    /// A write without a read found the target otherwise than expected:
    /// read it first.
    ReadFirst,
}

impl Dirty {
    /// A path marked by nothing (a resync's ops): ordered before everything.
    pub fn unmarked(since: Instant) -> Dirty {
        Dirty {
            since,
            seq: 0,
            need: Need::Mirror,
            seen: Seen::InSource,
            change: Change::Shape,
            target_read: TargetRead::MayWriteBlind,
        }
    }

    /// Merges another record of the same path into this one: the earlier
    /// first sight, and of each flag the value that asks for more.
    pub fn absorb(&mut self, other: Dirty) {
        self.since = self.since.min(other.since);
        self.seq = self.seq.min(other.seq);
        if other.need == Need::Mirror {
            self.need = Need::Mirror;
        }
        if other.seen == Seen::InSource {
            self.seen = Seen::InSource;
        }
        if other.change == Change::Shape {
            self.change = Change::Shape;
        }
        if other.target_read == TargetRead::ReadFirst {
            self.target_read = TargetRead::ReadFirst;
        }
    }

    /// The same record for an attempt that found the tree's shape other
    /// than expected: no longer kept apart by its own name only.
    pub fn reshaping(self) -> Dirty {
        Dirty {
            change: Change::Shape,
            ..self
        }
    }
}

/// A path set aside: retried at `until`, pending meanwhile.
#[derive(Debug, Clone)]
struct Parked {
    dirty: Dirty,
    /// When it was last set aside.
    since: Instant,
    until: Instant,
    why: Parking,
}

/// Why a path is set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parking {
    /// The target refused it for a reason that will not clear by itself
    /// soon (no permission, too large): the error, as shown to operators.
    Refused(String),
    /// Its delete is held by the delete circuit breaker.
    HeldByBreaker,
}

/// What the queue holds for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// This instance does not lead the route/target: it tracks nothing.
    NotLeading,
    /// Nothing waits for it.
    Idle,
    /// Marked dirty, first seen at `since`.
    Dirty { since: Instant },
    /// In a unit being written now.
    InFlight,
    /// Set aside (last) at `since`, retried at `until`.
    Parked {
        since: Instant,
        until: Instant,
        why: Parking,
    },
    /// A full resync is pending or running: it covers every path.
    Resyncing,
}

/// A point in the source's event stream: every event received before the
/// heartbeat reply with zxid `zxid` was marked before this barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub zxid: i64,
    pub ts_ms: i64,
    seq: u64,
}

/// A unit in flight: the smallest seq among its paths, and its paths.
struct Unit {
    min_seq: u64,
    paths: Vec<String>,
}

#[derive(Default)]
struct State {
    dirty: BTreeMap<String, Dirty>,
    /// Paths that failed for a reason that will not clear by itself soon
    /// (no permission, data too large): retried at the given instant, and
    /// still counted as pending meanwhile.
    parked: BTreeMap<String, Parked>,
    resync: Option<ResyncReason>,
    /// A resync taken by the worker and not yet finished.
    resync_active: bool,
    /// Units taken by the worker and not yet settled: unit id → (smallest
    /// seq among its paths, its paths). Several may be in flight at once; a
    /// path is never in two (the later unit waits), so a path's writes
    /// cannot overtake each other.
    in_flight: BTreeMap<u64, Unit>,
    /// Every path in a unit in flight, kept as units start and settle
    /// (rebuilding it for each `take` costs a scan of up to 128 units).
    held: std::collections::BTreeSet<String>,
    /// Those of `held` whose shape may change (not data-only).
    reshaping: std::collections::BTreeSet<String>,
    next_unit: u64,
    next_seq: u64,
    barriers: std::collections::VecDeque<Barrier>,
    /// Whether this instance leads the route/target. A standby tracks
    /// nothing: the leader it replaces may have applied any of it, and it
    /// resyncs from the checkpoint when it takes over.
    standby: bool,
    /// The capture has armed its watch and asked for a first resync.
    armed: bool,
}

impl State {
    fn pending(&self) -> i64 {
        (self.dirty.len() + self.parked.len()) as i64
    }

    /// Pending paths and those in units in flight: what the
    /// `zkbridge_pending_paths` gauge shows once work is taken.
    fn waiting(&self) -> i64 {
        self.pending() + self.in_flight_paths() as i64
    }

    fn in_flight_paths(&self) -> usize {
        self.in_flight.values().map(|u| u.paths.len()).sum()
    }

    /// Smallest seq still waiting: dirty, parked, or in a unit in flight
    /// other than `except`.
    fn oldest_pending(&self, except: Option<u64>) -> u64 {
        self.dirty
            .values()
            .map(|d| d.seq)
            .chain(self.parked.values().map(|p| p.dirty.seq))
            .chain(
                self.in_flight
                    .iter()
                    .filter(|(id, _)| Some(**id) != except)
                    .map(|(_, u)| u.min_seq),
            )
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// Whether `rel` or one of its ancestors (up to the route root `""`) is in
/// the set `contains` describes.
fn self_or_ancestor_in(rel: &str, contains: impl Fn(&str) -> bool) -> bool {
    crate::path::self_and_ancestors(rel).any(contains)
}

pub struct TargetQueue {
    state: Mutex<State>,
    notify: Notify,
    max_pending: usize,
    pending_gauge: IntGauge,
}

/// Work taken from the queue by the worker.
pub enum Work {
    Resync(ResyncReason),
    /// A unit of paths, with the id to settle it by.
    Paths(u64, Vec<(String, Dirty)>),
}

impl TargetQueue {
    pub fn new(max_pending: usize, pending_gauge: IntGauge) -> Self {
        TargetQueue {
            state: Mutex::default(),
            notify: Notify::new(),
            max_pending,
            pending_gauge,
        }
    }

    /// Marks a path (relative to the route root) dirty after a source event
    /// that may change the tree's shape (or when unsure what changed).
    pub fn mark(&self, rel: &str) {
        self.mark_dirty(rel, Seen::InSource, Change::Shape)
    }

    /// Marks a path dirty after a source event that changed its data only.
    pub fn mark_data(&self, rel: &str) {
        self.mark_dirty(rel, Seen::InSource, Change::Data)
    }

    /// Marks a path dirty after an event in the target that was not the
    /// echo of an own write.
    pub fn mark_target(&self, rel: &str) {
        self.mark_dirty(rel, Seen::InTargetOnly, Change::Shape)
    }

    fn mark_dirty(&self, rel: &str, seen: Seen, change: Change) {
        let mut st = self.state.lock().unwrap();
        st.next_seq += 1;
        let seq = st.next_seq;
        if st.resync.is_some() || st.standby {
            // A pending full scan covers this change already.
            return;
        }
        let marked = Dirty {
            since: Instant::now(),
            seq,
            need: Need::Mirror,
            seen,
            change,
            target_read: TargetRead::MayWriteBlind,
        };
        match st.dirty.get_mut(rel) {
            Some(d) => d.absorb(marked),
            None => {
                if st.dirty.len() >= self.max_pending {
                    tracing::warn!(
                        max_pending_paths = self.max_pending,
                        "pending paths overflowed: tracking them one by one stops; a full resync replaces them"
                    );
                    st.dirty.clear();
                    st.parked.clear();
                    st.resync = Some(ResyncReason::Overflow);
                } else {
                    st.dirty.insert(rel.to_string(), marked);
                }
            }
        }
        self.pending_gauge.set(st.pending());
        drop(st);
        self.notify.notify_one();
    }

    /// Switches between leading (tracking changes) and standing by
    /// (tracking nothing). Taking the lead starts with a resync, from the
    /// checkpoint, once the capture's watch is armed.
    pub fn set_leading(&self, leading: bool) {
        let mut st = self.state.lock().unwrap();
        st.standby = !leading;
        // Work in progress ended with the lead that took it (dropped, not
        // settled).
        st.resync_active = false;
        st.in_flight.clear();
        st.held.clear();
        st.reshaping.clear();
        st.dirty.clear();
        st.parked.clear();
        st.barriers.clear();
        st.resync = (leading && st.armed).then_some(ResyncReason::Startup);
        self.pending_gauge.set(0);
        drop(st);
        self.notify.notify_one();
    }

    /// Sets a path aside until `until`, for `why`; it stays pending
    /// meanwhile.
    pub fn park(&self, rel: String, dirty: Dirty, until: Instant, why: Parking) {
        let mut st = self.state.lock().unwrap();
        if st.resync.is_none() {
            let since = st.parked.get(&rel).map_or_else(Instant::now, |p| p.since);
            st.parked.insert(
                rel,
                Parked {
                    dirty,
                    since,
                    until,
                    why,
                },
            );
        }
        self.pending_gauge.set(st.pending());
    }

    /// Whether `rel` still waits: dirty, parked, or in a unit in flight.
    pub fn is_pending(&self, rel: &str) -> bool {
        let st = self.state.lock().unwrap();
        st.dirty.contains_key(rel) || st.parked.contains_key(rel) || st.held.contains(rel)
    }

    /// Whether `rel` is parked.
    pub fn is_parked(&self, rel: &str) -> bool {
        self.state.lock().unwrap().parked.contains_key(rel)
    }

    /// What the queue holds for `rel` now (for `zkbridge explain`).
    pub fn path_state(&self, rel: &str) -> PathState {
        let st = self.state.lock().unwrap();
        if st.standby {
            return PathState::NotLeading;
        }
        if let Some(p) = st.parked.get(rel) {
            return PathState::Parked {
                since: p.since,
                until: p.until,
                why: p.why.clone(),
            };
        }
        if st.held.contains(rel) {
            return PathState::InFlight;
        }
        if let Some(d) = st.dirty.get(rel) {
            return PathState::Dirty { since: d.since };
        }
        if st.resync.is_some() || st.resync_active {
            return PathState::Resyncing;
        }
        PathState::Idle
    }

    /// Makes every parked path due now (an operator released them).
    pub fn unpark_all(&self) {
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        for parked in st.parked.values_mut() {
            parked.until = now;
        }
        drop(st);
        self.notify.notify_one();
    }

    /// When the earliest parked path is due, if any.
    pub fn next_parked_due(&self) -> Option<Instant> {
        self.state.lock().unwrap().parked.values().map(|p| p.until).min()
    }

    /// Puts paths back after a failed attempt, keeping their first-seen time.
    pub fn requeue(&self, paths: impl IntoIterator<Item = (String, Dirty)>) {
        let mut st = self.state.lock().unwrap();
        if st.resync.is_none() {
            for (rel, d) in paths {
                st.dirty.entry(rel).and_modify(|e| e.absorb(d)).or_insert(d);
            }
        }
        self.pending_gauge.set(st.pending());
        drop(st);
        self.notify.notify_one();
    }

    /// Requests a full scan; supersedes every dirty path.
    pub fn request_resync(&self, reason: ResyncReason) {
        let mut st = self.state.lock().unwrap();
        st.armed = true;
        st.dirty.clear();
        st.parked.clear();
        if st.standby {
            return;
        }
        if st.resync.is_none() || reason == ResyncReason::SessionExpired {
            st.resync = Some(reason);
        }
        self.pending_gauge.set(0);
        drop(st);
        self.notify.notify_one();
    }

    /// Takes the next piece of work, at most `max` paths, without waiting.
    /// A resync is handed out once no unit is in flight, and nothing else
    /// until it settles (its scan covers every change marked before it
    /// started); paths that are in a unit still in flight wait for it to
    /// settle. One function on purpose: every step reads and changes the
    /// same state under one lock, and split up it would take the lock per
    /// step and see the state move in between.
    pub fn take(&self, max: usize) -> Option<Work> {
        let mut st = self.state.lock().unwrap();
        if st.resync_active {
            return None;
        }
        if st.resync.is_some() {
            if !st.in_flight.is_empty() {
                return None;
            }
            let reason = st.resync.take()?;
            // The scan that follows reads after this instant, so it covers
            // every change marked so far.
            st.resync_active = true;
            st.dirty.clear();
            st.parked.clear();
            self.pending_gauge.set(0);
            return Some(Work::Resync(reason));
        }
        let now = Instant::now();
        let due: Vec<String> = st
            .parked
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for rel in due {
            if let Some(parked) = st.parked.remove(&rel) {
                st.dirty.entry(rel).or_insert(parked.dirty);
            }
        }
        if st.dirty.is_empty() {
            return None;
        }
        // A path is busy while an in-flight unit holds it. A path whose
        // shape may change is also busy while a unit holds an ancestor
        // (whose delete covers its subtree) or a descendant (whose create
        // needs it) that may change shape too. A data change needs neither:
        // most changes are data changes, and waiting for a neighbour costs a
        // round trip to the target. A unit taken for a data change may find
        // its node deleted and delete the target subtree; no create beneath
        // can race that delete: the node must be re-created before any child
        // (events arrive in zxid order), its re-create marks it reshaping
        // while the unit still holds it, and a reshaping path that waits
        // holds back everything beneath it (below).
        let (held, reshaping) = (&st.held, &st.reshaping);
        let is_busy = |rel: &str, change: Change| {
            if held.contains(rel) {
                return true;
            }
            if change == Change::Data || reshaping.is_empty() {
                return false;
            }
            if self_or_ancestor_in(rel, |p| reshaping.contains(p)) {
                return true;
            }
            let below = if rel.is_empty() {
                String::new()
            } else {
                format!("{rel}/")
            };
            reshaping
                .range::<str, _>((std::ops::Bound::Included(below.as_str()), std::ops::Bound::Unbounded))
                .next()
                .is_some_and(|b| b.starts_with(below.as_str()))
        };
        // A reshaping path that must wait also holds back new work beneath
        // it, or a busy ancestor (the root, say) would starve while units
        // keep starting under it: its subtree drains, then it goes.
        let mut waiting: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut chosen: Vec<String> = Vec::new();
        for (rel, dirty) in &st.dirty {
            if chosen.len() >= max {
                break;
            }
            if self_or_ancestor_in(rel, |p| waiting.contains(p)) {
                continue;
            }
            if is_busy(rel, dirty.change) {
                if dirty.change == Change::Shape {
                    waiting.insert(rel.as_str());
                }
                continue;
            }
            chosen.push(rel.clone());
        }
        if chosen.is_empty() {
            return None;
        }
        let taken: Vec<(String, Dirty)> = chosen
            .into_iter()
            .filter_map(|rel| st.dirty.remove_entry(&rel))
            .collect();
        let unit = st.next_unit;
        st.next_unit += 1;
        let min_seq = taken.iter().map(|(_, d)| d.seq).min().unwrap_or(u64::MAX);
        for (rel, d) in &taken {
            st.held.insert(rel.clone());
            if d.change == Change::Shape {
                st.reshaping.insert(rel.clone());
            }
        }
        let paths = taken.iter().map(|(r, _)| r.clone()).collect();
        st.in_flight.insert(unit, Unit { min_seq, paths });
        self.pending_gauge.set(st.waiting());
        Some(Work::Paths(unit, taken))
    }

    /// Records that a unit (`Some(id)`) or the resync (`None`) is finished
    /// — committed, re-queued or parked — and updates the pending gauge.
    pub fn settle(&self, unit: Option<u64>) {
        let mut st = self.state.lock().unwrap();
        match unit {
            Some(id) => {
                if let Some(unit) = st.in_flight.remove(&id) {
                    for rel in &unit.paths {
                        st.held.remove(rel);
                        st.reshaping.remove(rel);
                    }
                }
            }
            None => st.resync_active = false,
        }
        self.pending_gauge.set(st.waiting());
        drop(st);
        // A path that waited for this unit may be taken now.
        self.notify.notify_one();
    }

    /// Records a heartbeat barrier: everything marked so far precedes it.
    pub fn barrier(&self, zxid: i64, ts_ms: i64) {
        let mut st = self.state.lock().unwrap();
        if st.standby {
            return;
        }
        let seq = st.next_seq;
        st.barriers.push_back(Barrier { zxid, ts_ms, seq });
        // A target that is away must not make barriers pile up: only the
        // newest few matter.
        while st.barriers.len() > 64 {
            st.barriers.pop_front();
        }
        drop(st);
        self.notify.notify_one();
    }

    /// The newest barrier that is fully applied — nothing marked before it
    /// is dirty, parked or in flight, and no resync is pending or running —
    /// consuming it and older ones.
    pub fn reached_barrier(&self) -> Option<Barrier> {
        let mut st = self.state.lock().unwrap();
        if st.resync.is_some() || st.resync_active {
            return None;
        }
        let oldest_pending = st.oldest_pending(None);
        let mut reached = None;
        while st.barriers.front().is_some_and(|b| b.seq < oldest_pending) {
            reached = st.barriers.pop_front();
        }
        reached
    }

    /// The newest barrier that `unit` completes (the resync, for `None`):
    /// reached as soon as that unit commits in full, every other unit in
    /// flight being older than it or unrelated. Lets the worker put the
    /// checkpoint in the same `multi` as the last writes it covers. Not
    /// consumed here; `reached_barrier` consumes it after the commit.
    pub fn barrier_completed_by(&self, unit: Option<u64>) -> Option<Barrier> {
        let st = self.state.lock().unwrap();
        if st.resync.is_some() {
            return None;
        }
        let oldest_waiting = st.oldest_pending(unit);
        st.barriers.iter().rev().find(|b| b.seq < oldest_waiting).copied()
    }

    /// Waits until work may be available.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Paths waiting: dirty, parked, or in a unit in flight (what the
    /// `zkbridge_pending_paths` gauge shows).
    pub fn pending_paths(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.waiting() as usize
    }

    pub fn parked_count(&self) -> usize {
        self.state.lock().unwrap().parked.len()
    }

    /// Nothing left but parked paths (which wait for an operator or time).
    pub fn only_parked(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.dirty.is_empty() && st.resync.is_none() && st.in_flight.is_empty() && !st.resync_active
    }

    pub fn is_idle(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.dirty.is_empty() && st.parked.is_empty() && st.resync.is_none() && st.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max: usize) -> TargetQueue {
        TargetQueue::new(max, IntGauge::new("p", "p").unwrap())
    }

    #[test]
    fn nothing_is_handed_out_while_a_resync_runs() {
        let q = queue(10);
        q.set_leading(true);
        q.request_resync(ResyncReason::Startup);
        assert!(matches!(q.take(10), Some(Work::Resync(_))));
        q.mark("a");
        q.request_resync(ResyncReason::SessionExpired);
        assert!(
            q.take(10).is_none(),
            "neither the path nor a second resync while the first runs"
        );
        q.settle(None);
        assert!(matches!(q.take(10), Some(Work::Resync(ResyncReason::SessionExpired))));
        // The lead ends mid-resync (the lease is lost): the next lead
        // starts with a resync of its own.
        q.set_leading(false);
        q.set_leading(true);
        assert!(matches!(q.take(10), Some(Work::Resync(ResyncReason::Startup))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_path_comes_back_when_its_time_is_up() {
        let q = queue(10);
        q.mark("a");
        let Some(Work::Paths(unit, p)) = q.take(10) else {
            panic!()
        };
        let until = Instant::now() + std::time::Duration::from_secs(30);
        q.park("a".into(), p[0].1, until, Parking::Refused("no_auth".into()));
        assert!(matches!(q.path_state("a"), PathState::Parked { .. }));
        q.settle(Some(unit));
        assert!(q.is_pending("a"), "a parked path is still pending");
        assert_eq!(q.next_parked_due(), Some(until));
        tokio::time::advance(std::time::Duration::from_secs(29)).await;
        assert!(q.take(10).is_none(), "not before its time");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let Some(Work::Paths(_, p)) = q.take(10) else {
            panic!("due after 30 s")
        };
        assert_eq!(p[0].0, "a");
    }

    #[test]
    fn coalescing_keeps_every_need() {
        let q = queue(10);
        q.mark_target("a");
        q.mark_data("a");
        let Some(Work::Paths(_, p)) = q.take(10) else { panic!() };
        let d = p[0].1;
        // A source event joins a target one: the source decides, no conflict.
        assert_eq!(d.seen, Seen::InSource);
        // A target event may have reshaped it: not data-only any more.
        assert_eq!(d.change, Change::Shape);
        let later = Dirty {
            since: d.since + std::time::Duration::from_secs(1),
            seq: d.seq + 5,
            need: Need::Exist,
            seen: Seen::InTargetOnly,
            change: Change::Data,
            target_read: TargetRead::ReadFirst,
        };
        let mut merged = later;
        merged.absorb(d);
        assert_eq!((merged.since, merged.seq), (d.since, d.seq), "the first sight stays");
        assert_eq!(merged.need, Need::Mirror);
        assert_eq!(merged.seen, Seen::InSource);
        assert_eq!(merged.change, Change::Shape);
        assert_eq!(
            merged.target_read,
            TargetRead::ReadFirst,
            "a failed blind write is not forgotten"
        );
    }

    #[test]
    fn barrier_waits_for_paths_marked_before_it() {
        let q = queue(10);
        q.mark("a");
        q.barrier(100, 1);
        q.mark("b");
        assert_eq!(q.reached_barrier(), None, "a is still dirty");
        let Some(Work::Paths(unit, p)) = q.take(1) else {
            panic!()
        };
        assert_eq!(p[0].0, "a");
        assert_eq!(q.reached_barrier(), None, "a is in flight");
        q.settle(Some(unit));
        assert_eq!(
            q.reached_barrier().map(|b| b.zxid),
            Some(100),
            "b came after the barrier"
        );
        q.request_resync(ResyncReason::Startup);
        q.barrier(200, 2);
        assert_eq!(q.reached_barrier(), None, "resync pending");
        assert!(matches!(q.take(10), Some(Work::Resync(_))));
        assert_eq!(q.reached_barrier(), None, "resync running");
        q.settle(None);
        assert_eq!(q.reached_barrier().map(|b| b.zxid), Some(200));
    }

    #[test]
    fn barrier_completed_by_in_flight_ignores_later_marks() {
        let q = queue(10);
        q.mark("a");
        q.barrier(100, 1);
        q.mark("b");
        q.barrier(200, 2);
        let Some(Work::Paths(unit, p)) = q.take(1) else {
            panic!()
        };
        assert_eq!(p[0].0, "a");
        assert_eq!(
            q.barrier_completed_by(Some(unit)).map(|b| b.zxid),
            Some(100),
            "b, marked before 200, still waits"
        );
        q.settle(Some(unit));
        assert_eq!(q.reached_barrier().map(|b| b.zxid), Some(100));
        let Some(Work::Paths(unit, _)) = q.take(1) else {
            panic!()
        };
        assert_eq!(q.barrier_completed_by(Some(unit)).map(|b| b.zxid), Some(200));
        assert_eq!(q.reached_barrier(), None, "not before the commit");
    }

    /// Several units in flight: a path in one waits for it; a unit's
    /// checkpoint never covers an older unit still in flight.
    #[test]
    fn units_in_flight_keep_paths_apart_and_barriers_honest() {
        let q = queue(10);
        q.mark("a");
        q.barrier(100, 1);
        q.mark("b");
        q.barrier(200, 2);
        let Some(Work::Paths(first, p)) = q.take(1) else {
            panic!()
        };
        assert_eq!(p[0].0, "a");
        q.mark("a");
        let Some(Work::Paths(second, p)) = q.take(10) else {
            panic!()
        };
        let rels: Vec<_> = p.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, ["b"], "a is in flight in the first unit: it waits");
        assert_eq!(
            q.barrier_completed_by(Some(second)).map(|b| b.zxid),
            None,
            "the first unit is older"
        );
        assert!(q.take(10).is_none());
        q.settle(Some(first));
        assert_eq!(q.reached_barrier().map(|b| b.zxid), Some(100));
        let Some(Work::Paths(_, p)) = q.take(10) else { panic!() };
        assert_eq!(p[0].0, "a", "taken again once its unit settled");
        q.request_resync(ResyncReason::Overflow);
        assert!(q.take(10).is_none(), "a resync waits for the units in flight");
    }

    /// A unit deleting `a` (and its subtree) and one creating `a/b` must not
    /// be in flight together: the delete could take the fresh create along.
    #[test]
    fn ancestors_and_descendants_of_a_path_in_flight_wait() {
        let q = queue(10);
        q.mark("a");
        let Some(Work::Paths(first, _)) = q.take(1) else {
            panic!()
        };
        for rel in ["a/b", "a/b/c", "ab"] {
            q.mark(rel);
        }
        let Some(Work::Paths(_, p)) = q.take(10) else { panic!() };
        let rels: Vec<_> = p.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, ["ab"], "only the unrelated sibling");
        q.settle(Some(first));
        let Some(Work::Paths(_, p)) = q.take(10) else { panic!() };
        assert_eq!(p.len(), 2);
    }

    /// Data changes wait only for a unit holding the same path: a unit's
    /// ancestors and descendants cannot be undone by a data write.
    #[test]
    fn data_changes_wait_only_for_their_own_path() {
        let q = queue(10);
        q.mark("a");
        q.mark_data("x");
        let Some(Work::Paths(first, _)) = q.take(10) else {
            panic!()
        };
        for rel in ["a/b", "x"] {
            q.mark_data(rel);
        }
        q.mark_data("");
        q.mark("x/new");
        let Some(Work::Paths(_, p)) = q.take(10) else { panic!() };
        let rels: Vec<_> = p.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            rels,
            ["", "a/b", "x/new"],
            "x waits for itself; the data changes around a, and a create under a data-only x, go"
        );
        // A path that saw a create as well as a data change is not data-only.
        q.mark_data("a/c");
        q.mark("a/c");
        assert!(q.take(10).is_none(), "x waits for its unit, a/c for a's");
        q.settle(Some(first));
        let Some(Work::Paths(_, p)) = q.take(10) else { panic!() };
        let rels: Vec<_> = p.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, ["a/c", "x"]);
    }

    /// A waiting ancestor holds back new work beneath it: the root, dirty
    /// while units run under it, goes once they drain instead of starving.
    #[test]
    fn a_waiting_ancestor_is_not_starved() {
        let q = queue(10);
        q.mark("a/b");
        let Some(Work::Paths(first, _)) = q.take(1) else {
            panic!()
        };
        q.mark("");
        q.mark("a/c");
        q.mark("z");
        assert!(q.take(10).is_none(), "the root waits, and everything is under it");
        q.settle(Some(first));
        let Some(Work::Paths(_, p)) = q.take(1) else { panic!() };
        assert_eq!(p[0].0, "", "the root goes first");
    }

    #[test]
    fn coalesces_and_orders_parents_first() {
        let q = queue(10);
        q.mark("a/b");
        q.mark("a");
        q.mark("a/b");
        let Some(Work::Paths(_, p)) = q.take(10) else {
            panic!("expected paths")
        };
        let rels: Vec<_> = p.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, vec!["a", "a/b"]);
        assert!(q.take(10).is_none());
    }

    #[test]
    fn overflow_turns_into_one_resync() {
        let q = queue(2);
        for p in ["a", "b", "c", "d"] {
            q.mark(p);
        }
        assert!(matches!(q.take(10), Some(Work::Resync(ResyncReason::Overflow))));
        assert!(q.take(10).is_none());
    }
}
