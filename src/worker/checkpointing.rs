//! Checkpoints: which heartbeat barrier the target has applied in full,
//! riding in the last batch of a unit or written alone, never moving back.

use super::*;

impl Worker {
    /// The checkpoint for barrier `barrier`, if it is newer than the last.
    pub(super) fn checkpoint_for(&self, barrier: Option<crate::queue::Barrier>) -> Option<Checkpoint> {
        let barrier = barrier?;
        let last = self
            .status
            .get()
            .checkpoint
            .as_ref()
            .map(|c| c.source_zxid)
            .unwrap_or(-1);
        if barrier.zxid <= last {
            return None;
        }
        let source_id = self.source_id.lock().unwrap().clone()?;
        Some(Checkpoint {
            version: 1,
            source_ensemble_id: source_id,
            source_zxid: barrier.zxid,
            heartbeat_ts_ms: barrier.ts_ms,
            bridge: self.identity.bridge_id.clone(),
            updated_ms: now_ms(),
        })
    }

    /// A checkpoint that can ride in the same `multi` as the last writes of
    /// the work in flight: only over an existing checkpoint node (a first
    /// checkpoint is created alone).
    pub(super) fn ride_along_checkpoint(&self, unit: Option<u64>) -> Option<Checkpoint> {
        self.status.get().checkpoint.as_ref()?;
        self.checkpoint_for(self.queue.barrier_completed_by(unit))
    }

    /// Commits the newest fully applied heartbeat barrier as the checkpoint
    /// on its own: used when there were no writes to carry it, or the
    /// batch that carried one was refused. Never ahead of the data: the
    /// barrier is only reached once everything before it is committed.
    pub(super) async fn write_checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) {
        let tgt = lease.client();
        let path = checkpoint_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        let data = serde_json::to_vec(&checkpoint).expect("JSON of a plain struct");
        // Before the first checkpoint of a route/target, the node is missing.
        let likely_missing = self.status.get().checkpoint.is_none();
        let mut result = fenced_put(lease, &path, &data, &self.target_zk.acl, likely_missing).await;
        if result == Err(Error::NoNode) {
            if let Some(parent) = path::parent_absolute(&path) {
                let _ = tgt.mkdir(parent, &persistent(&self.target_zk.acl)).await;
            }
            result = fenced_put(lease, &path, &data, &self.target_zk.acl, true).await;
        }
        match result {
            Ok(target_zxid) => self.checkpoint_committed(checkpoint, target_zxid).await,
            Err(e) => {
                warn!(error = %e, "cannot write checkpoint; the next heartbeat retries");
                self.metrics.error(error_kind(&e));
            }
        }
    }

    /// Records a committed checkpoint and reports progress to the source
    /// (for `zkbridge wait` and `zkbridge status`).
    pub(super) async fn checkpoint_committed(&self, checkpoint: Checkpoint, target_zxid: i64) {
        let progress = Progress {
            source_zxid: checkpoint.source_zxid,
            ts_ms: checkpoint.heartbeat_ts_ms,
        };
        let zxid = checkpoint.source_zxid;
        let mut newer = false;
        self.status.update(|s| {
            s.reference_target_zxid.get_or_insert(target_zxid);
            newer = checkpoint.supersedes(s.checkpoint.as_ref());
            if newer {
                s.checkpoint = Some(checkpoint);
            }
        });
        if !newer {
            return;
        }
        self.metrics.checkpoint_zxid.set(zxid);
        let src = self.source_zk.session().await.client;
        let path = progress_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        if let Err(e) = self.source_zk.put_record(&src, &path, &progress).await {
            debug!(error = %e, "cannot write progress to the source; the next checkpoint retries");
        }
    }
}
