//! The delete circuit breaker as the worker applies it: held deletes parked,
//! the trip recorded in the stop znode, released by an operator or cleared
//! when no held delete is needed any more. The rule itself is `crate::breaker`.

use std::collections::BTreeSet;

use super::*;

impl Worker {
    /// Passes `ops` through the delete circuit breaker: returns what to
    /// write now. Held deletes are parked, so they stay pending (and hold
    /// the checkpoint back) until released or no longer needed.
    ///
    /// Before any delete goes, the source root is read once: when it is
    /// gone, every delete under it is held — also those whose events came
    /// before the root's own (a subtree deleted in one `multi` reports its
    /// children first) — unless the route sets `allow_root_delete`.
    pub(super) async fn hold_mass_deletes(
        &self,
        lease: &Lease,
        src: &Client,
        ops: Vec<Op>,
        dirty: &BTreeMap<String, Dirty>,
        root_vanished: bool,
    ) -> Result<Vec<Op>, Interrupted> {
        let creates = ops.iter().filter(|o| matches!(o, Op::Create { .. })).count();
        let deletes = ops.iter().filter(|o| matches!(o, Op::Delete { .. })).count();
        let now = Instant::now();
        if deletes == 0 {
            self.breaker.lock().unwrap().force(creates, 0, now);
            return Ok(ops);
        }
        {
            // Only the deletes an operator released skip the checks (the
            // root's too: the operator saw it gone); a new mass delete
            // meanwhile is judged like any other.
            let hold = self.hold.lock().unwrap();
            if !hold.released.is_empty()
                && ops
                    .iter()
                    .all(|o| !matches!(o, Op::Delete { .. }) || hold.released.contains(o.rel()))
            {
                drop(hold);
                self.breaker.lock().unwrap().force(creates, deletes, now);
                return Ok(ops);
            }
        }
        let config = &self.route.config;
        let root_vanished = !config.allow_root_delete
            && (root_vanished
                || src
                    .check_stat(&self.route.source.path)
                    .await
                    .map_err(|source| Interrupted {
                        side: Side::Source,
                        source,
                    })?
                    .is_none());
        // Once tripped, every delete waits for the operator or for the
        // condition to clear: held deletes must not trickle through as the
        // window ages.
        let tripped = self.hold.lock().unwrap().trip.is_some();
        let (allowed, verdict) = if root_vanished || tripped {
            self.breaker.lock().unwrap().force(creates, 0, now);
            (0, None)
        } else {
            let admission = self.breaker.lock().unwrap().admit(creates, deletes, now);
            if admission.held == 0 {
                return Ok(ops);
            }
            (admission.allowed, Some(admission.verdict))
        };
        let (held, rest) = split_held(ops, allowed);
        let holding = Holding {
            verdict,
            root_vanished,
            tripped,
            allowed,
            deletes,
        };
        self.park_held(lease, held, dirty, now, holding).await;
        Ok(rest)
    }

    /// Parks the held deletes (pending until released or no longer
    /// needed), says why, and records the trip when it is a new one.
    async fn park_held(
        &self,
        lease: &Lease,
        held: Vec<Op>,
        dirty: &BTreeMap<String, Dirty>,
        now: Instant,
        holding: Holding,
    ) {
        let config = &self.route.config;
        let Holding {
            verdict,
            root_vanished,
            tripped,
            allowed,
            deletes,
        } = holding;
        let why = match &verdict {
            _ if root_vanished => "the source root vanished (allow_root_delete = false)".to_string(),
            Some(v) => format!(
                "{} of {deletes} deletes held: {v} (max_delete_fraction = {}, delete_window_s = {})",
                held.len(),
                config.max_delete_fraction,
                config.delete_window_s
            ),
            None => "tripped earlier".to_string(),
        };
        if tripped {
            debug!(held = held.len(), reason = %why, "delete circuit breaker still holding deletes");
        } else if let Some(v) = &verdict {
            warn!(
                held = held.len(),
                allowed,
                peak = v.peak,
                current = v.current,
                would_leave = v.would_leave,
                line = v.line,
                reason = %why,
                "delete circuit breaker: holding deletes; other writes go on; `zkbridge resume` releases them"
            );
        } else {
            warn!(held = held.len(), reason = %why, "delete circuit breaker: holding deletes; other writes go on; `zkbridge resume` releases them");
        }
        self.metrics.deletes_blocked.inc_by(held.len() as u64);
        let mut held_paths = BTreeSet::new();
        for op in held {
            let rel = op.rel().to_string();
            let d = dirty_or_unmarked(dirty, &rel, now);
            self.queue.park(rel.clone(), d, now + PARK_FOR, Parking::HeldByBreaker);
            held_paths.insert(rel);
        }
        // Units run concurrently: several may have found the breaker
        // untripped; every one adds to the held set, and only the first
        // records the trip.
        let first_trip = {
            let mut hold = self.hold.lock().unwrap();
            let first = hold.trip.is_none();
            hold.trip
                .get_or_insert_with(|| Trip {
                    paths: BTreeSet::new(),
                    recorded: false,
                })
                .paths
                .extend(held_paths);
            first
        };
        if first_trip {
            let record = StopRecord {
                path: self.target.path.clone(),
                reason: format!("delete_breaker: {why}"),
                bridge: self.identity.bridge_id.clone(),
                ts_ms: now_ms(),
                breaker: verdict,
            };
            self.status.update(|s| s.breaker = Some(record));
            self.record_trip(lease).await;
        }
    }

    /// Writes the trip's stop record, where `zkbridge resume` finds it.
    /// Until it is written, a missing record means nothing (it is not an
    /// operator's release), so the trip is not reviewed; a failed write is
    /// retried at the next review.
    async fn record_trip(&self, lease: &Lease) {
        let Some(record) = self.status.get().breaker.clone() else {
            return;
        };
        let path = crate::znodes::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        match conflict::persist_stop(lease.client(), &path, &record, &self.target_zk.acl).await {
            Ok(()) => {
                if let Some(trip) = self.hold.lock().unwrap().trip.as_mut() {
                    trip.recorded = true;
                }
            }
            Err(e) => warn!(error = %e, "cannot record the breaker's trip yet; retrying after the next unit"),
        }
    }

    /// After each unit: forgets held deletes that are no longer parked (the
    /// source came back, or a resync rechecked them); clears the trip when
    /// none is left, or when an operator deleted the stop record.
    pub(super) async fn review_breaker(&self, lease: &Lease) {
        let recorded = {
            let mut hold = self.hold.lock().unwrap();
            // Released deletes pass until every one of them is applied (they
            // may sit in units in flight for a while).
            hold.released.retain(|rel| self.queue.is_pending(rel));
            match &hold.trip {
                None => return,
                Some(trip) => trip.recorded,
            }
        };
        if !recorded {
            return self.record_trip(lease).await;
        }
        let path = crate::znodes::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        let cleared_by_operator = self.stop_record_cleared(lease, &path).await;
        let none_left = {
            let mut hold = self.hold.lock().unwrap();
            let Some(trip) = hold.trip.as_mut() else { return };
            trip.paths.retain(|rel| self.queue.is_pending(rel));
            trip.paths.is_empty()
        };
        if cleared_by_operator || none_left {
            *self.stop_watch.lock().unwrap() = None;
        }
        if cleared_by_operator {
            info!("held deletes released by an operator");
            {
                let mut hold = self.hold.lock().unwrap();
                let trip = hold.trip.take().map(|t| t.paths).unwrap_or_default();
                hold.released.extend(trip);
            }
            self.status.update(|s| s.breaker = None);
            self.queue.unpark_all();
        } else if none_left {
            info!("delete circuit breaker cleared: no held delete is needed any more");
            self.hold.lock().unwrap().trip = None;
            self.status.update(|s| s.breaker = None);
            if self.status.get().stopped.is_none() {
                let _ = lease.client().delete(&path, None).await;
            }
        }
    }

    /// Whether an operator deleted the stop record since the trip. The
    /// record is watched, not read on every loop turn: one read arms the
    /// watch, then only its event is looked at. Any other event (a data
    /// change, a lost connection) re-arms it on the next turn.
    async fn stop_record_cleared(&self, lease: &Lease, path: &str) -> bool {
        use futures::FutureExt;
        let armed = self.stop_watch.lock().unwrap().take();
        let mut watch = match armed {
            Some(watch) => watch,
            None => match lease.client().check_and_watch_stat(path).await {
                Ok((None, _)) => return true,
                Ok((Some(_), watcher)) => Box::pin(watcher.changed()) as StopWatch,
                Err(e) => {
                    debug!(error = %e, "cannot watch the stop record; retrying");
                    return false;
                }
            },
        };
        match (&mut watch).now_or_never() {
            None => {
                *self.stop_watch.lock().unwrap() = Some(watch);
                false
            }
            Some(event) => event.event_type == EventType::NodeDeleted,
        }
    }
}

/// Why deletes are held, for the log and the stop record.
struct Holding {
    verdict: Option<crate::breaker::Verdict>,
    root_vanished: bool,
    /// The breaker had tripped before these ops.
    tripped: bool,
    /// Deletes let through.
    allowed: usize,
    /// Deletes judged.
    deletes: usize,
}

/// Splits `ops` into the deletes held and the rest, letting the first
/// `allowed` deletes through. Deletes come children first: the ones that go
/// are whole subtrees or their lower parts, never a parent whose child is
/// held.
fn split_held(ops: Vec<Op>, allowed: usize) -> (Vec<Op>, Vec<Op>) {
    let mut allowed_left = allowed;
    ops.into_iter().partition(|o| {
        if !matches!(o, Op::Delete { .. }) {
            return false;
        }
        if allowed_left > 0 {
            allowed_left -= 1;
            return false;
        }
        true
    })
}

/// Deletes the breaker keeps back, and those an operator let go.
#[derive(Default)]
pub(super) struct Hold {
    /// Set while tripped (the record is in the published status, and in
    /// the stop znode once written).
    trip: Option<Trip>,
    /// Held deletes an operator released: they skip the checks until each
    /// one is applied.
    released: BTreeSet<String>,
}

pub(super) struct Trip {
    /// The paths whose deletes are parked in the queue — which parks
    /// refused paths too, so it cannot tell them apart itself.
    paths: BTreeSet<String>,
    /// The stop znode is written: from now on its absence is a release.
    recorded: bool,
}

/// The pending event of the watch on the stop record.
pub(super) type StopWatch = std::pin::Pin<Box<dyn std::future::Future<Output = zookeeper_client::WatchedEvent> + Send>>;
