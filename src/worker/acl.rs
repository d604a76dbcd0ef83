//! ACLs: the default ACL of every node zkbridge creates, or with
//! `acls = "copy"` the source's.

use super::*;

impl Worker {
    /// The ACLs the creates among `ops` get (see [`AclPlan`]).
    pub(super) async fn acl_plan(&self, lease: &Lease, ops: &[Op]) -> Result<AclPlan, Interrupted> {
        // A protected standby's mirrors are read-only for applications
        // (`standby_acl`, design §6); otherwise the ensemble's own ACL.
        let default = match self.route.config.standby_acl() {
            Some(acl) => Arc::new(acl),
            None => self.target_zk.acl.clone(),
        };
        let mut plan = AclPlan {
            default,
            copied: HashMap::new(),
        };
        if self.route.config.acls != AclMode::Copy {
            return Ok(plan);
        }
        let creates: Vec<String> = ops
            .iter()
            .filter(|op| matches!(op, Op::Create { .. }))
            .map(|op| op.rel().to_string())
            .collect();
        let (src, _) = self.clients(lease).await;
        let read = tree::read_acls(&src, &self.route.source.path, &creates, self.limits.max_in_flight)
            .await
            .map_err(|source| Interrupted {
                side: Side::Source,
                source,
            })?;
        plan.copied = creates
            .into_iter()
            .zip(read)
            .filter_map(|(rel, acl)| Some((rel, acl?)))
            .collect();
        Ok(plan)
    }

    /// Under `acls = "copy"`, brings the ACLs of existing target nodes at
    /// `rels` to their source's. ZooKeeper has no `setACL` in a `multi`, so
    /// these are single requests after the data writes; a source ACL change
    /// fires no watch, so ACL-only changes arrive through anti-entropy.
    pub(super) async fn sync_acls(&self, lease: &Lease, src: &Client, rels: Vec<String>) -> Result<(), Interrupted> {
        if self.route.config.acls != AclMode::Copy || rels.is_empty() {
            return Ok(());
        }
        let tgt = lease.client();
        let n = self.limits.max_in_flight;
        let sources = tree::read_acls(src, &self.route.source.path, &rels, n)
            .await
            .map_err(|source| Interrupted {
                side: Side::Source,
                source,
            })?;
        let targets = tree::read_acls(tgt, &self.target.path, &rels, n)
            .await
            .map_err(|source| Interrupted {
                side: Side::Target,
                source,
            })?;
        for ((rel, s), t) in rels.iter().zip(sources).zip(targets) {
            let (Some(s), Some(t)) = (s, t) else { continue };
            if s == t {
                continue;
            }
            let path = join(&self.target.path, rel);
            match tgt.set_acl(&path, &s, None).await {
                Ok(_) => {
                    self.metrics.applied_acls.inc();
                    debug!(%path, "ACL copied from source");
                }
                Err(Error::NoNode) => {}
                Err(e) if is_transient(&e) => {
                    return Err(Interrupted {
                        side: Side::Target,
                        source: e,
                    })
                }
                Err(e) => {
                    warn!(%path, error = %e, "target refused the source's ACL");
                    self.metrics.error(error_kind(&e));
                    self.status.set_error(Some(format!("{path}: setACL refused: {e}")));
                }
            }
        }
        Ok(())
    }
}

/// The ACL each node of a write is created with: the source node's under
/// `acls = "copy"` (read just before the write), else the target
/// ensemble's configured ACL.
pub(super) struct AclPlan {
    default: Arc<Vec<Acl>>,
    copied: HashMap<String, Vec<Acl>>,
}

impl AclPlan {
    pub(super) fn of(&self, rel: &str) -> &[Acl] {
        self.copied.get(rel).unwrap_or(&self.default)
    }
}
