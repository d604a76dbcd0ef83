//! Conflict policies: what a local change in the target does to the route
//! (overwritten, kept, or the route stopped until `zkbridge resume`).

use super::*;

impl Worker {
    /// Waits until an operator deletes the stop record. `true` once cleared.
    pub(super) async fn await_resume(&self, lease: &Lease, stop: &StopRecord) -> bool {
        let path = crate::znodes::stopped_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        match lease.client().check_and_watch_stat(&path).await {
            Ok((None, _)) => true,
            Ok((Some(_), watcher)) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), watcher.changed()).await;
                false
            }
            Err(e) => {
                debug!(error = %e, path = %stop.path, "cannot read the stop record");
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
        }
    }

    /// Applies the route's policy to a local change at `rel`. Returns
    /// whether the reconcile op for it should still be written.
    pub(super) async fn on_conflict(
        &self,
        lease: &Lease,
        rel: &str,
        source: Option<&NodeState>,
        target: Option<&NodeState>,
    ) -> bool {
        let path = join(&self.target.path, rel);
        let source_mzxid = source.map(|s| s.stat.mzxid).unwrap_or(-1);
        let target_mzxid = target.map(|t| t.stat.mzxid).unwrap_or(-1);
        let (meta, route, target_name) = (&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        match self.route.config.conflict() {
            // Refused at load for mirror routes: only active-active ones
            // resolve by time, and they have their own worker.
            ConflictPolicy::SourceWins | ConflictPolicy::LastWriterWins => {
                self.metrics.overwritten.inc();
                info!(%path, source_mzxid = format!("{source_mzxid:#x}"), target_mzxid = format!("{target_mzxid:#x}"), "target changed locally: overwritten (source-wins)");
                true
            }
            ConflictPolicy::TargetWins => {
                self.metrics.kept.inc();
                info!(%path, source_mzxid = format!("{source_mzxid:#x}"), target_mzxid = format!("{target_mzxid:#x}"), "target changed locally: kept (target-wins) until the source changes it again");
                self.status.update(|s| {
                    s.kept.insert(rel.to_string(), source_mzxid);
                });
                let dir = crate::znodes::kept_dir(meta, route, target_name);
                if let Err(e) =
                    conflict::persist_kept(lease.client(), &dir, rel, source_mzxid, &self.target_zk.acl).await
                {
                    warn!(%path, error = %e, "cannot record the kept path; it is kept until restart");
                }
                false
            }
            ConflictPolicy::Fail => {
                self.metrics.stopped.inc();
                warn!(%path, source_mzxid = format!("{source_mzxid:#x}"), target_mzxid = format!("{target_mzxid:#x}"), "target changed locally: route/target stopped (conflict = fail); resolve the path, then `zkbridge resume`");
                let record = StopRecord {
                    path: path.clone(),
                    reason: "conflict".into(),
                    bridge: self.identity.bridge_id.clone(),
                    ts_ms: now_ms(),
                    breaker: None,
                };
                let stop_path = crate::znodes::stopped_path(meta, route, target_name);
                if let Err(e) = conflict::persist_stop(lease.client(), &stop_path, &record, &self.target_zk.acl).await {
                    warn!(error = %e, "cannot record the stop; it holds until restart");
                }
                self.status.update(|s| {
                    s.last_error = Some(format!("{path}: changed locally; stopped by conflict = fail"));
                    s.stopped = Some(record);
                });
                false
            }
        }
    }
}
