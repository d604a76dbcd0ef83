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
        // are written blind (see `blind_write`); the others are checked
        // against the target's current state.
        let checkpoint_c = self.status.get().checkpoint.as_ref().map(|c| c.source_zxid);
        let mut upserts = Vec::new();
        let mut checked: Vec<(&String, &Dirty, Option<NodeState>)> = Vec::new();
        for ((rel, dirty), s) in paths.iter().zip(source_nodes) {
            let s = s.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            let kept = self.status.is_kept(rel);
            let blind = s
                .as_ref()
                .and_then(|node| blind_write(&self.route, rel, dirty, node, checkpoint_c, kept));
            match (blind, s) {
                (Some(blind), Some(mut node)) => {
                    let data = std::mem::take(&mut node.data);
                    upserts.push(blind.op(&self.route, rel.clone(), &node, data));
                }
                (_, s) => checked.push((rel, dirty, s)),
            }
        }
        let checked_rels: Vec<String> = checked.iter().map(|(rel, _, _)| (*rel).clone()).collect();
        let target_nodes = tree::read_nodes(&tgt, &self.target.path, &checked_rels, self.limits.max_in_flight)
            .await
            .map_err(|e| fail(Side::Target, e, &paths))?;

        let Some(mut decided) = self.decide_checked(lease, &tgt, checked, target_nodes).await else {
            // Stopped by a conflict: nothing more is applied; the unit
            // waits for the resume.
            self.queue.requeue(paths);
            return Ok(());
        };
        decided.upserts.extend(upserts);
        self.commit_unit(lease, unit, &src, &tgt, paths, decided).await
    }

    /// The ops for paths checked against the target's current state, with
    /// the conflict policy applied to local changes; `None` when a conflict
    /// stopped the route.
    async fn decide_checked(
        &self,
        lease: &Lease,
        tgt: &Client,
        checked: Vec<(&String, &Dirty, Option<NodeState>)>,
        target_nodes: Vec<Option<(Vec<u8>, zookeeper_client::Stat)>>,
    ) -> Option<Decided> {
        let mut upserts = Vec::new();
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
                            return None;
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
                            let _ = conflict::unpersist_kept(tgt, &dir, rel).await;
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

        Some(Decided {
            upserts,
            delete_roots,
            root_vanished,
        })
    }

    /// Writes a unit's ops — deletes expanded to the target subtree, the
    /// breaker's holds taken out — then its ACLs and sequence counters.
    async fn commit_unit(
        &self,
        lease: &Lease,
        unit: u64,
        src: &Client,
        tgt: &Client,
        paths: Vec<(String, Dirty)>,
        decided: Decided,
    ) -> Result<(), (Interrupted, Vec<(String, Dirty)>)> {
        let Decided {
            mut upserts,
            delete_roots,
            root_vanished,
        } = decided;
        let fail = |side, source, paths: &Vec<(String, Dirty)>| (Interrupted { side, source }, paths.clone());
        let deletes = self
            .subtree_deletes(tgt, delete_roots)
            .await
            .map_err(|e| fail(Side::Target, e, &paths))?;
        // Blind and checked upserts are not sorted yet: the root may be anywhere.
        if upserts.iter().any(|o| o.rel().is_empty()) {
            self.ensure_target_parent(tgt).await.map_err(|e| (e, paths.clone()))?;
        }
        let dirty: BTreeMap<String, Dirty> = paths.iter().cloned().collect();
        upserts.sort_by(|a, b| a.rel().cmp(b.rel()));
        let ops: Vec<Op> = deletes.into_iter().chain(upserts).collect();
        let ops = self
            .hold_mass_deletes(lease, src, ops, &dirty, root_vanished)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let checkpoint = self.ride_along_checkpoint(Some(unit));
        self.write(lease, ops, &dirty, Instant::now(), checkpoint)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let acl_rels = paths
            .iter()
            .map(|(rel, _)| rel)
            .filter(|rel| !self.status.is_kept(rel))
            .cloned()
            .collect();
        self.sync_acls(lease, src, acl_rels)
            .await
            .map_err(|e| (e, paths.clone()))?;
        let parents: std::collections::BTreeSet<String> = paths
            .iter()
            .filter(|(rel, _)| path::is_sequential_name(rel))
            .filter_map(|(rel, _)| parent(rel).map(str::to_string))
            .collect();
        self.align_sequence_counters(lease, src, parents.into_iter().collect())
            .await
            .map_err(|e| (e, paths))
    }
}

/// What `decide_checked` found to write.
struct Decided {
    upserts: Vec<Op>,
    /// Paths whose target subtree is deleted.
    delete_roots: Vec<String>,
    /// The route root is gone from the source.
    root_vanished: bool,
}

/// How a source change is written without reading the target first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blind {
    Create,
    Set,
}

impl Blind {
    /// The checkpoint C proves what the target holds: a node created at or
    /// before C is there (a set), one created after C is not (a create).
    pub(super) fn of(node: &NodeState, checkpoint_c: i64) -> Blind {
        if node.stat.czxid > checkpoint_c {
            Blind::Create
        } else {
            Blind::Set
        }
    }

    pub(super) fn op(self, route: &Route, rel: String, node: &NodeState, data: Vec<u8>) -> Op {
        match self {
            Blind::Create => Op::Create {
                kind: NodeKind::of(route, node),
                data,
                rel,
            },
            Blind::Set => Op::Set { data, rel },
        }
    }
}

/// Whether a source change is written without reading the target first,
/// and how (see [`Blind::of`]): a round trip saved, which is most of the
/// lag to a distant region. Not for a change seen in the target, a path
/// whose blind write already failed (see `Refusal`), scaffolding, a node
/// the route does not mirror, or a target version kept by policy: those
/// are read first.
fn blind_write(
    route: &Route,
    rel: &str,
    dirty: &Dirty,
    node: &NodeState,
    checkpoint_c: Option<i64>,
    kept: bool,
) -> Option<Blind> {
    let c = checkpoint_c?;
    let blind = dirty.seen == Seen::InSource
        && dirty.target_read == TargetRead::MayWriteBlind
        && dirty.need == Need::Mirror
        && plan::is_mirrored(route, rel, node)
        && !kept;
    blind.then(|| Blind::of(node, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node created at `czxid`.
    fn node(czxid: i64, owner: i64) -> NodeState {
        crate::tree::test_node("data", (czxid, czxid, 1), owner)
    }

    #[test]
    fn the_checkpoint_decides_what_is_written_blind() {
        let route = crate::config::test_route("exclude = [\"tmp\"]");
        let marked = Dirty::unmarked(Instant::now());
        let c = Some(100);
        assert_eq!(
            blind_write(&route, "a", &marked, &node(50, 0), c, false),
            Some(Blind::Set)
        );
        assert_eq!(
            blind_write(&route, "a", &marked, &node(150, 0), c, false),
            Some(Blind::Create),
            "created after the checkpoint: not in the target yet"
        );
        assert_eq!(
            blind_write(&route, "a", &marked, &node(50, 0), None, false),
            None,
            "no checkpoint"
        );
        assert_eq!(
            blind_write(&route, "a", &marked, &node(50, 0), c, true),
            None,
            "kept by policy"
        );
        assert_eq!(
            blind_write(&route, "tmp", &marked, &node(50, 0), c, false),
            None,
            "excluded"
        );
        assert_eq!(
            blind_write(&route, "e", &marked, &node(50, 7), c, false),
            None,
            "ephemeral, skipped"
        );
        let read_first = [
            Dirty {
                seen: Seen::InTargetOnly,
                ..marked
            },
            Dirty {
                target_read: TargetRead::ReadFirst,
                ..marked
            },
            Dirty {
                need: Need::Exist,
                ..marked
            },
        ];
        for dirty in read_first {
            assert_eq!(
                blind_write(&route, "a", &dirty, &node(50, 0), c, false),
                None,
                "{dirty:?}"
            );
        }
    }
}
