//! The delete circuit breaker as the worker applies it: held deletes parked,
//! the trip recorded in the stop znode, released by an operator or cleared
//! when no held delete is needed any more. The rule itself is `crate::breaker`.

use super::*;

impl Worker {
    /// Passes `ops` through the delete circuit breaker (see `breaker`):
    /// returns what to write now. Held deletes are parked, so they stay
    /// pending (and hold the checkpoint back) until released or no longer
    /// needed.
    pub(super) async fn hold_mass_deletes(
        &self,
        lease: &Lease,
        ops: Vec<Op>,
        dirty: &BTreeMap<String, Dirty>,
        (root_vanished, mirrored): (bool, usize),
    ) -> Vec<Op> {
        let deletes = ops.iter().filter(|o| matches!(o, Op::Delete { .. })).count();
        if deletes == 0 {
            return ops;
        }
        let now = Instant::now();
        let root_blocked = root_vanished && !self.route.config.allow_root_delete;
        if self.status.breaker_released.load(Ordering::Relaxed) {
            // Only the deletes an operator released skip the check; a new
            // mass delete meanwhile is judged like any other.
            let released = self.status.released_deletes.lock().unwrap();
            if ops
                .iter()
                .all(|o| !matches!(o, Op::Delete { .. }) || released.contains(o.rel()))
            {
                drop(released);
                self.delete_window.lock().unwrap().record(deletes, now);
                return ops;
            }
        }
        // Once tripped, every delete waits for the operator or for the
        // condition to clear: held deletes must not trickle through as the
        // window ages.
        let tripped = self.status.breaker.lock().unwrap().is_some();
        if !root_blocked && !tripped && self.delete_window.lock().unwrap().admit(deletes, mirrored, now) {
            return ops;
        }
        let (held, rest): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(|o| matches!(o, Op::Delete { .. }));
        let why = if root_blocked {
            "the source root vanished (allow_root_delete = false)".to_string()
        } else {
            format!(
                "{deletes} deletes would exceed max_delete_fraction = {} of {mirrored} mirrored nodes within {} s",
                self.route.config.max_delete_fraction, self.route.config.delete_window_s
            )
        };
        if tripped {
            debug!(held = held.len(), reason = %why, "delete circuit breaker still holding deletes");
        } else {
            warn!(held = held.len(), reason = %why, "delete circuit breaker: holding deletes; other writes go on; `zkbridge resume` releases them");
        }
        self.metrics.deletes_blocked.inc_by(held.len() as u64);
        {
            let mut held_set = self.status.held_deletes.lock().unwrap();
            for op in held {
                let rel = op.rel().to_string();
                let d = dirty_or_unmarked(dirty, &rel, now);
                self.queue.park(rel.clone(), d, now + PARK_FOR);
                held_set.insert(rel);
            }
        }
        if !tripped {
            let record = StopRecord {
                path: self.target.path.clone(),
                reason: format!("delete_breaker: {why}"),
                bridge: self.identity.bridge_id.clone(),
                ts_ms: now_ms(),
            };
            let path = conflict::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
            if let Err(e) = conflict::persist_stop(lease.client(), &path, &record, &self.target_zk.acl).await {
                warn!(error = %e, "cannot record the breaker's trip; it holds until restart");
            }
            *self.status.breaker.lock().unwrap() = Some(record);
        }
        rest
    }

    /// After each unit: forgets held deletes that are no longer parked (the
    /// source came back, or a resync rechecked them); clears the trip when
    /// none is left, or when an operator deleted the stop record.
    pub(super) async fn review_breaker(&self, lease: &Lease) {
        if self.status.breaker.lock().unwrap().is_none() {
            // Released deletes pass until every one of them is applied (they
            // may sit in units in flight for a while).
            let mut released = self.status.released_deletes.lock().unwrap();
            released.retain(|rel| self.queue.is_pending(rel));
            if released.is_empty() {
                self.status.breaker_released.store(false, Ordering::Relaxed);
            }
            return;
        }
        let path = conflict::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        let cleared_by_operator = matches!(lease.client().check_stat(&path).await, Ok(None));
        let none_left = {
            let mut held = self.status.held_deletes.lock().unwrap();
            held.retain(|rel| self.queue.is_pending(rel));
            held.is_empty()
        };
        if cleared_by_operator {
            info!("held deletes released by an operator");
            self.status.breaker_released.store(true, Ordering::Relaxed);
            let held = std::mem::take(&mut *self.status.held_deletes.lock().unwrap());
            self.status.released_deletes.lock().unwrap().extend(held);
            *self.status.breaker.lock().unwrap() = None;
            self.queue.unpark_all();
        } else if none_left {
            info!("delete circuit breaker cleared: no held delete is needed any more");
            *self.status.breaker.lock().unwrap() = None;
            if self.status.conflicts.stopped().is_none() {
                let _ = lease.client().delete(&path, None).await;
            }
        }
    }
}
