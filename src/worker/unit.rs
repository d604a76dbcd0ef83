//! Reconcile one unit of dirty paths to the source's current state.

use super::*;

impl Worker {
    /// Reconciles a batch of dirty paths to the source's current state.
    pub(super) async fn reconcile(
        &self,
        lease: &Lease,
        unit: u64,
        paths: Vec<(String, Dirty)>,
    ) -> Result<(), (Interrupted, Vec<(String, Dirty)>)> {
        let (src, tgt) = self.clients(lease).await;
        let rels: Vec<String> = paths.iter().map(|(r, _)| r.clone()).collect();
        let fail = |side, source, paths: &Vec<(String, Dirty)>| (Interrupted { side, source }, paths.clone());
        let source_nodes = tree::read_nodes(&src, &self.route.source.path, &rels, self.limits.max_in_flight)
            .await
            .map_err(|e| fail(Side::Source, e, &paths))?;

        // Source changes to nodes the checkpoint proves are in the target
        // (created at or before C) are written blind, without reading the
        // target first: a round trip saved, which is most of the lag to a
        // distant region. Nodes created after C are created blind. A blind
        // write that finds the target otherwise (NoNode, NodeExists) comes
        // back as "seen changed in the target" and is reconciled with reads.
        let checkpoint_c = self.status.get().checkpoint.as_ref().map(|c| c.source_zxid);
        let mut upserts = Vec::new();
        let mut checked: Vec<(&String, &Dirty, Option<NodeState>)> = Vec::new();
        for ((rel, dirty), s) in paths.iter().zip(source_nodes) {
            let s = s.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            let blind = match (&s, checkpoint_c) {
                (Some(node), Some(c))
                    if dirty.seen == Seen::InSource
                        && dirty.target_read == TargetRead::MayWriteBlind
                        && dirty.need == Need::Mirror
                        && plan::is_mirrored(&self.route, rel, node)
                        && !self.status.is_kept(rel) =>
                {
                    Some(c)
                }
                _ => None,
            };
            match (blind, s) {
                (Some(c), Some(node)) => upserts.push(if node.stat.czxid > c {
                    Op::Create {
                        rel: rel.clone(),
                        kind: NodeKind::of(&self.route, &node),
                        data: node.data,
                    }
                } else {
                    Op::Set {
                        rel: rel.clone(),
                        data: node.data,
                    }
                }),
                (_, s) => checked.push((rel, dirty, s)),
            }
        }
        let checked_rels: Vec<String> = checked.iter().map(|(rel, _, _)| (*rel).clone()).collect();
        let target_nodes = tree::read_nodes(&tgt, &self.target.path, &checked_rels, self.limits.max_in_flight)
            .await
            .map_err(|e| fail(Side::Target, e, &paths))?;

        let mut delete_roots = Vec::new();
        let mut root_vanished = false;
        for ((rel, dirty, s), t) in checked.into_iter().zip(target_nodes) {
            let t = t.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            if s.as_ref().is_some_and(NodeState::is_unreadable) {
                self.report_unreadable(rel);
            }
            let decision = plan::decide(&self.route, rel, s.as_ref(), t.as_ref(), dirty.need);
            let source_mzxid = s.as_ref().map(|s| s.stat.mzxid).unwrap_or(-1);
            // An ephemeral mirror goes with the session that owned it (a
            // previous leader): re-creating it is not a conflict.
            let ephemeral_mirror = matches!(
                decision,
                Some(Op::Create {
                    kind: NodeKind::Ephemeral,
                    ..
                })
            );
            if decision.is_some() && !ephemeral_mirror {
                if dirty.seen == Seen::InTargetOnly {
                    if !self.on_conflict(lease, rel, s.as_ref(), t.as_ref()).await {
                        if self.status.get().stopped.is_some() {
                            // Nothing more is applied; the unit waits for the resume.
                            self.queue.requeue(paths.clone());
                            return Ok(());
                        }
                        continue;
                    }
                } else {
                    match self.status.keeps(rel, source_mzxid) {
                        Some(true) => continue,
                        Some(false) => {
                            let dir = crate::znodes::kept_dir(
                                &self.identity.meta_path,
                                self.route.name(),
                                &self.target.ensemble,
                            );
                            let _ = conflict::unpersist_kept(&tgt, &dir, rel).await;
                        }
                        None => {}
                    }
                }
            }
            match decision {
                Some(Op::Delete { rel }) => {
                    root_vanished |= rel.is_empty();
                    delete_roots.push(rel)
                }
                Some(op) => upserts.push(op),
                None => {}
            }
        }

        let deletes = self
            .subtree_deletes(&tgt, delete_roots)
            .await
            .map_err(|e| fail(Side::Target, e, &paths))?;
        if upserts.first().is_some_and(|o| o.rel().is_empty()) {
            self.ensure_target_parent(&tgt).await.map_err(|e| (e, paths.clone()))?;
        }
        let dirty: BTreeMap<String, Dirty> = paths.iter().cloned().collect();
        upserts.sort_by(|a, b| a.rel().cmp(b.rel()));
        let ops: Vec<Op> = deletes.into_iter().chain(upserts).collect();
        let ops = self
            .hold_mass_deletes(lease, &src, ops, &dirty, root_vanished)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let checkpoint = self.ride_along_checkpoint(Some(unit));
        self.write(lease, ops, &dirty, Instant::now(), checkpoint)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let acl_rels = rels.into_iter().filter(|rel| !self.status.is_kept(rel)).collect();
        self.sync_acls(lease, &src, acl_rels)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let parents: std::collections::BTreeSet<String> = paths
            .iter()
            .filter(|(rel, _)| path::is_sequential_name(rel))
            .filter_map(|(rel, _)| parent(rel).map(str::to_string))
            .collect();
        self.align_sequence_counters(lease, &src, parents.into_iter().collect())
            .await
            .map_err(|e| (e, paths))
    }
}
