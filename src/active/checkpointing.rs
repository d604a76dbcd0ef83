//! How far a pair got, and what it may do while a member is being filled:
//! the heartbeat and checkpoint, the conflict log's bound, and `Filling`,
//! all learnt from and kept in ZooKeeper.

use std::collections::BTreeMap;

use tracing::{info, warn};
use zookeeper_client::Client;

use super::outcome::PathError;
use super::pair::{Drained, Filling, Mark, Pair, Watches};
use crate::checkpoint::persistent;
use crate::lease::Lease;
use crate::znodes::{checkpoint_path, heartbeat_path, now_ms, Checkpoint, Heartbeat};

impl Pair {
    pub(super) fn filling_now(&self) -> Filling {
        *self.first.lock().unwrap()
    }

    /// What the pair may do while a member is being filled (see
    /// [`Filling`]), from the two pairs' checkpoints.
    pub(super) async fn filling(&self, to: &Client, from: &Client) -> Result<Filling, zookeeper_client::Error> {
        let mine = checkpoint_path(&self.meta, self.route.name(), &self.from.ensemble);
        let into_source = checkpoint_path(&self.meta, self.route.name(), &self.to.ensemble);
        // The pair into the source has run (its checkpoint is there): the
        // destination has been a member before, so a destination without
        // this pair's checkpoint lost its data. A route that is new has
        // neither, and nothing of a member's own to give back.
        let into_source_ran = from.check_stat(&into_source).await?.is_some();
        let filling = Filling {
            refill: into_source_ran && to.check_stat(&mine).await?.is_none(),
            infer_deletes: into_source_ran,
        };
        if !filling.infer_deletes {
            info!(route = self.route.name(), member = %self.from, "no checkpoint of the pair into this member yet (new or rebuilt): nodes missing there are not taken as deletes until it is filled");
        }
        Ok(filling)
    }

    /// Writes the source member's heartbeat, carries every change made
    /// before it, and then records in the destination that the pair has
    /// caught up to it: the heartbeat's zxid and time (the lag counts from
    /// that time). Events are delivered before the reply to a later
    /// write on the same session, so the heartbeat's reply means every
    /// earlier change is marked.
    pub(super) async fn checkpoint(
        &self,
        lease: &Lease,
        from: &Client,
        from_id: &str,
        watches: &mut Watches,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<Drained, PathError> {
        let ts_ms = now_ms();
        let beat = Heartbeat {
            bridge: self.lease_record.instance.clone(),
            ts_ms,
        };
        let path = heartbeat_path(&self.meta, self.route.name());
        let zxid = crate::checkpoint::put_json(from, &path, &beat, &self.from_zk.acl)
            .await
            .map_err(|e| self.error_of(&self.from.ensemble, e))?;
        let drained = watches.drain_into(self, dirty);
        if drained.ended || drained.away {
            // What the watch missed is not covered: no checkpoint.
            return Ok(drained);
        }
        self.work(lease, from, dirty).await?;
        if dirty.values().any(|m| !m.parked) {
            return Ok(drained);
        }
        let checkpoint = Checkpoint {
            version: 1,
            source_ensemble_id: from_id.to_string(),
            source_zxid: zxid,
            heartbeat_ts_ms: ts_ms,
            bridge: self.lease_record.instance.clone(),
            updated_ms: now_ms(),
        };
        let path = checkpoint_path(&self.meta, self.route.name(), &self.from.ensemble);
        let data = serde_json::to_vec(&checkpoint).expect("JSON of a plain struct");
        let put = |create: bool| {
            let mut writer = lease.writer();
            if create {
                writer.add_create(&path, &data, &persistent(&self.to_zk.acl))?;
            } else {
                writer.add_set_data(&path, &data, None)?;
            }
            Ok::<_, zookeeper_client::Error>(writer)
        };
        let mut result = put(false)?.commit().await;
        if let Err(zookeeper_client::CheckWriteError::OperationFailed {
            source: zookeeper_client::Error::NoNode,
            ..
        }) = result
        {
            if let Some(dir) = crate::path::parent_absolute(&path) {
                let _ = crate::checkpoint::ensure_path(lease.client(), dir, &self.to_zk.acl).await;
            }
            result = put(true)?.commit().await;
        }
        match result {
            Ok(_) => {
                self.trim_conflicts(lease).await;
                self.metrics.checkpoint_zxid.set(zxid);
                self.status.update(|s| {
                    s.checkpoint = Some(checkpoint);
                    if !dirty.values().any(|m| m.parked) {
                        s.last_error = None;
                    }
                });
                self.after_checkpoint(from).await;
                Ok(drained)
            }
            Err(zookeeper_client::CheckWriteError::CheckFailed { .. }) => Err(PathError::LeaseLost),
            Err(e) => Err(self.error_of(&self.to.ensemble, e.into())),
        }
    }
    /// After a checkpoint: this pair has filled its destination once, and
    /// the pair into the source may have filled it meanwhile.
    async fn after_checkpoint(&self, from: &Client) {
        let infer = self.filling_now().infer_deletes;
        let into_source = checkpoint_path(&self.meta, self.route.name(), &self.to.ensemble);
        let filled = infer || matches!(from.check_stat(&into_source).await, Ok(Some(_)));
        let mut filling = self.first.lock().unwrap();
        filling.refill = false;
        filling.infer_deletes = filled;
    }

    /// Keeps the destination's conflict log bounded, once new entries came.
    async fn trim_conflicts(&self, lease: &Lease) {
        use std::sync::atomic::Ordering;
        let counted = self.metrics.lww_lost.get();
        if counted == self.trimmed_at.load(Ordering::Relaxed) {
            return;
        }
        match super::conflicts::trim(lease.client(), &self.meta, self.route.name()).await {
            Ok(_) => self.trimmed_at.store(counted, Ordering::Relaxed),
            Err(e) => {
                warn!(route = self.route.name(), member = %self.to.ensemble, error = %e, "cannot trim the conflict log; trying again at the next checkpoint")
            }
        }
    }
}
