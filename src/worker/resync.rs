//! Full scans: a resume from the checkpoint (target work proportional to
//! the change), a full compare, or a streaming copy into an empty target.

use super::*;

impl Worker {
    /// Full scan of the source; then either a full scan of the target and
    /// the plan that makes them equal, or — with a valid checkpoint C — a
    /// resume that reads and writes the target only where the source changed
    /// after C.
    pub(super) async fn resync(&self, lease: &Lease, reason: ResyncReason) -> Result<(), Interrupted> {
        let started = Instant::now();
        let (src, tgt) = self.clients(lease).await;
        let start = self.resync_start(&src, &tgt, reason).await?;
        let scan_started = Instant::now();
        let (scanned, ops) = self.scan_and_plan(lease, &src, &tgt, start.resume_from).await?;
        let ops = self.guard_plan(lease, &src, &tgt, &scanned, ops).await?;
        let planned = ops.len() + scanned.streamed;
        self.status.update(|s| {
            s.scanned = scanned.summary.nodes as u64;
            s.planned = planned as u64;
        });
        if !self.status.get().initial_sync_done {
            self.note_reference_zxid(lease, &tgt, &start).await;
        }
        if start.resume_from.is_some() {
            self.metrics.resume_writes.inc_by(planned as u64);
        }
        let since = Instant::now();
        let scan_ms = (since - scan_started).as_millis() as u64;
        let checkpoint = self.ride_along_checkpoint(None);
        self.write(lease, ops, &BTreeMap::new(), since, checkpoint).await?;
        let write_ms = since.elapsed().as_millis() as u64;
        self.finish_resync(lease, &src, scanned.summary).await?;
        let mirrored = scanned.mirrored;
        self.metrics.mirrored.set(mirrored as i64);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let how = if start.resume_from.is_some() {
            "resumed from checkpoint"
        } else {
            "full"
        };
        let first = !self.status.get().initial_sync_done;
        self.status.update(|s| {
            s.initial_sync_done = true;
            s.panicked = None;
        });
        if first {
            info!(
                nodes = mirrored,
                ops = planned,
                elapsed_ms,
                scan_ms,
                write_ms,
                how,
                "initial sync done"
            );
        } else {
            info!(
                reason = reason.as_str(),
                nodes = mirrored,
                ops = planned,
                elapsed_ms,
                how,
                "resync done"
            );
        }
        Ok(())
    }

    /// Learns both ensembles' ids and the stored checkpoint, and decides
    /// where the resync starts (see [`resume_point`]).
    async fn resync_start(&self, src: &Client, tgt: &Client, reason: ResyncReason) -> Result<ResyncStart, Interrupted> {
        let meta = &self.identity.meta_path;
        let on = |side| move |source| Interrupted { side, source };
        let source_id = ensemble_id(src, meta, &self.source_zk.acl)
            .await
            .map_err(on(Side::Source))?;
        ensemble_id(tgt, meta, &self.target_zk.acl)
            .await
            .map_err(on(Side::Target))?;
        *self.source_id.lock().unwrap() = Some(source_id.clone());
        let (stored, stored_target_zxid) = match tgt
            .get_data(&checkpoint_path(meta, self.route.name(), &self.target.ensemble))
            .await
        {
            // A damaged checkpoint means a full resync, never a guess.
            Ok((data, stat)) => (serde_json::from_slice::<Checkpoint>(&data).ok(), stat.mzxid),
            Err(Error::NoNode) => (None, -1),
            Err(source) => return Err(on(Side::Target)(source)),
        };
        let point = resume_point(stored.as_ref(), reason, &source_id);
        if let ResumePoint::OtherSource(c) = &point {
            warn!(
                checkpoint_source = %c.source_ensemble_id,
                current_source = %source_id,
                "checkpoint belongs to another source ensemble (rebuilt or re-pointed): full resync"
            );
        }
        // Also when the reason asks for a full scan anyway: a checkpoint
        // of another source is never taken as this one's.
        let mismatch = stored.as_ref().is_some_and(|c| c.source_ensemble_id != source_id);
        self.metrics.resync(if mismatch {
            ResyncReason::CheckpointMismatch
        } else {
            reason
        });
        if mismatch || stored.is_none() {
            // A rebuilt source restarts zxids low: a checkpoint remembered
            // from the old one must not hold the new ones back.
            self.status.update(|s| s.checkpoint = None);
        }
        if let Some(c) = stored.as_ref().filter(|_| !mismatch) {
            // Another instance may have led since this one last did.
            self.status.update(|s| {
                if c.supersedes(s.checkpoint.as_ref()) {
                    self.metrics.checkpoint_zxid.set(c.source_zxid);
                    s.checkpoint = Some(c.clone());
                }
            });
        }
        let resume_from = match point {
            ResumePoint::From(zxid) => Some(zxid),
            _ => None,
        };
        Ok(ResyncStart {
            resume_from,
            stored_target_zxid,
        })
    }

    /// Scans the source (and the target where needed) and plans the ops;
    /// a full copy into an empty target is written while it reads (see
    /// `stream_copy`), the plan being "create everything" anyway.
    async fn scan_and_plan(
        &self,
        lease: &Lease,
        src: &Client,
        tgt: &Client,
        resume_from: Option<i64>,
    ) -> Result<(Scanned, Vec<Op>), Interrupted> {
        let route = &self.route;
        let scan_target = || async {
            tree::scan(tgt, &self.target.path, self.limits.max_in_flight, |rel| {
                !route.filter.excluded(rel)
            })
            .await
            .map_err(|source| Interrupted {
                side: Side::Target,
                source,
            })
        };
        let full_target = match resume_from {
            None => Some(scan_target().await?),
            Some(_) => None,
        };
        let streaming = full_target.as_ref().is_some_and(|t| t.is_empty()) && route.config.include == ["**"];
        let (source, summary, streamed) = if streaming {
            self.ensure_target_parent(tgt).await?;
            let (summary, streamed) = self.stream_copy(lease, src).await?;
            (tree::Tree::new(), summary, streamed)
        } else {
            let source = tree::scan(src, &route.source.path, self.limits.max_in_flight, |rel| {
                !route.filter.excluded(rel)
            })
            .await
            .map_err(|source| Interrupted {
                side: Side::Source,
                source,
            })?;
            let mut summary = SourceSummary::default();
            for (rel, node) in &source {
                summary.add(route, rel, node, resume_from);
            }
            (source, summary, 0)
        };
        for rel in &summary.unreadable {
            self.report_unreadable(rel);
        }
        // Managed nodes in the target, when it was scanned.
        let mut in_target = 0;
        let ops = match resume_from {
            Some(c) if !source.is_empty() => self.resume_plan(tgt, &source, c).await?,
            _ if streaming => Vec::new(),
            _ => {
                let target = match full_target {
                    Some(t) => t,
                    None => scan_target().await?,
                };
                in_target = target.keys().filter(|rel| route.filter.managed(rel)).count();
                plan::plan(route, &source, &target)
            }
        };
        let mirrored = summary.mirrored;
        // What the target mirrored before this scan, for the breaker: the
        // scan's count, or for a resume (which reads the target only where
        // the source changed) the source's count with the plan undone.
        let creates = ops.iter().filter(|o| matches!(o, Op::Create { .. })).count();
        let deletes = ops.iter().filter(|o| matches!(o, Op::Delete { .. })).count();
        let target_before = match resume_from {
            _ if streaming => streamed,
            Some(_) => (mirrored + deletes).saturating_sub(creates),
            None => in_target,
        };
        let scanned = Scanned {
            source,
            summary,
            streamed,
            mirrored,
            target_before,
        };
        Ok((scanned, ops))
    }

    /// The planned ops less what the delete breaker holds and what policy
    /// keeps: the breaker judges a (re)scan like live changes — its
    /// deletes, net of its creates, against what the target mirrored
    /// before it; target versions kept by policy stay, unless the source
    /// changed the node since (which ends the keep).
    async fn guard_plan(
        &self,
        lease: &Lease,
        src: &Client,
        tgt: &Client,
        scanned: &Scanned,
        ops: Vec<Op>,
    ) -> Result<Vec<Op>, Interrupted> {
        let source = &scanned.source;
        self.breaker
            .lock()
            .unwrap()
            .set_count(scanned.target_before, Instant::now());
        let mut ops = self
            .hold_mass_deletes(lease, src, ops, &BTreeMap::new(), scanned.summary.nodes == 0)
            .await?;
        let mut ended = Vec::new();
        ops.retain(|op| {
            let source_mzxid = source.get(op.rel()).map(|n| n.stat.mzxid).unwrap_or(-1);
            match self.status.keeps(op.rel(), source_mzxid) {
                Some(true) => false,
                Some(false) => {
                    ended.push(op.rel().to_string());
                    true
                }
                None => true,
            }
        });
        let kept_dir = crate::znodes::kept_dir(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        for rel in ended {
            let _ = conflict::unpersist_kept(tgt, &kept_dir, &rel).await;
        }
        if ops
            .first()
            .is_some_and(|o| matches!(o, Op::Create { rel, .. } if rel.is_empty()))
        {
            self.ensure_target_parent(tgt).await?;
        }
        Ok(ops)
    }

    /// From T on, every write to the target is accounted for: ours since
    /// the resumed checkpoint, or — for a full copy, which runs before the
    /// target watch is armed — ours since this instance took the lead (its
    /// lease node's creation), so that a local change made during the copy
    /// is judged as one.
    async fn note_reference_zxid(&self, lease: &Lease, tgt: &Client, start: &ResyncStart) {
        let reference = match start.resume_from {
            Some(_) => Some(start.stored_target_zxid).filter(|z| *z > 0),
            None => match tgt.check_stat(lease.path()).await {
                Ok(Some(stat)) => Some(stat.czxid),
                _ => None,
            },
        };
        self.status.update(|s| s.reference_target_zxid = reference);
    }

    /// What follows the writes of a resync: ACLs, sequence counters, and a
    /// checkpoint where none rode along.
    async fn finish_resync(&self, lease: &Lease, src: &Client, summary: SourceSummary) -> Result<(), Interrupted> {
        if self.route.config.acls == AclMode::Copy {
            // A resume looks at nodes changed since C; an ACL-only change
            // leaves no trace there and is found by the anti-entropy pass
            // that follows a resume.
            let mut acl_rels = summary.acl_rels;
            acl_rels.retain(|rel| !self.status.is_kept(rel));
            self.sync_acls(lease, src, acl_rels).await?;
        }
        let sequential_parents = summary.sequential_parents;
        self.align_sequence_counters(lease, src, sequential_parents).await?;
        // A first checkpoint has no node to ride along on, and a streamed
        // copy leaves no batch to carry one: it is written before the sync
        // counts as done, so that the changes that follow are written blind
        // (see `reconcile`) instead of a target read later.
        if let Some(checkpoint) = self.checkpoint_for(self.queue.barrier_completed_by(None)) {
            self.write_checkpoint(lease, checkpoint).await;
        }
        Ok(())
    }

    /// Copies the source into an empty target while scanning it: each node
    /// read becomes a create at once, and creates are written in pipelined
    /// batches as they come, parents first (the scan reads a node after its parent and a
    /// session's requests are applied in order). Scan and write overlap, so
    /// the copy takes about as long as the slower of the two instead of
    /// their sum. Keeps no tree: returns what the rest of the resync needs
    /// to know of the source, and the number of creates.
    pub(super) async fn stream_copy(&self, lease: &Lease, src: &Client) -> Result<(SourceSummary, usize), Interrupted> {
        let route = &self.route;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Op>();
        // The scan may read four waves of batches ahead of the writes, so
        // memory stays bounded by that window, not by the tree, when the
        // target is the slower side.
        let ahead = self.limits.batch_max_ops * self.limits.max_in_flight * 4;
        let backlog = tokio::sync::Semaphore::new(tree::backlog_permits(self.limits.max_in_flight, ahead));
        let mut summary = SourceSummary::default();
        let gathered = &mut summary;
        let scan = tree::scan_streaming(
            src,
            &route.source.path,
            self.limits.max_in_flight,
            &backlog,
            |rel| !route.filter.excluded(rel),
            // Owning the sender: when the scan ends, the writer's channel
            // closes and it finishes.
            move |rel, node| {
                gathered.add(route, &rel, &node, None);
                // Once the writer stopped (an error), the scan only reads.
                if !plan::is_mirrored(route, &rel, &node) || tx.is_closed() {
                    return false;
                }
                tx.send(Op::Create {
                    kind: NodeKind::of(route, &node),
                    rel,
                    data: node.data,
                })
                .is_ok()
            },
        );
        let write = async {
            // Owning the receiver: on an error it goes, and the scan stops
            // handing over payloads that nobody would write.
            let written = self.write_streamed(lease, rx, |n| backlog.add_permits(n)).await;
            if written.is_err() {
                // Nothing will add permits back: the scan must not wait.
                backlog.close();
            }
            written
        };
        let (scanned, written) = tokio::join!(scan, write);
        scanned.map_err(|source| Interrupted {
            side: Side::Source,
            source,
        })?;
        Ok((summary, written?))
    }

    /// The ops a resume from checkpoint `c` needs: the target is read only
    /// for source nodes changed after `c` (`mzxid > c`) and for the child
    /// lists of source nodes whose children changed after `c` (`pzxid > c`,
    /// the only place a delete can hide).
    pub(super) async fn resume_plan(&self, tgt: &Client, source: &tree::Tree, c: i64) -> Result<Vec<Op>, Interrupted> {
        let route = &self.route;
        let read = |n: &NodeState| !n.is_listed_only();
        let changed: Vec<String> = source
            .iter()
            .filter(|(_, n)| read(n) && n.stat.mzxid > c)
            .map(|(r, _)| r.clone())
            .collect();
        let reparented: Vec<String> = source
            .iter()
            .filter(|(_, n)| read(n) && n.stat.pzxid > c)
            .map(|(r, _)| r.clone())
            .collect();
        // Changed nodes that existed at C are in the target (the checkpoint
        // says so) and the kept ones are handled with reads: those are
        // written blind, the rest read first. Nodes created after C are
        // created blind. A blind write that finds otherwise is retried with
        // reads (see `write_one`).
        let (blind, changed): (Vec<String>, Vec<String>) = changed.into_iter().partition(|rel| {
            source.get(rel).is_some_and(|n| plan::is_mirrored(route, rel, n)) && !self.status.is_kept(rel)
        });
        let mut upserts: Vec<Op> = blind
            .into_iter()
            .map(|rel| {
                let n = &source[&rel];
                super::unit::Blind::of(n, c).op(route, rel, n, n.data.clone())
            })
            .collect();
        self.metrics.resume_scanned.inc_by(source.len() as u64);
        self.metrics
            .resume_reads
            .inc_by((changed.len() + reparented.len()) as u64);
        let fail = |source| Interrupted {
            side: Side::Target,
            source,
        };
        let target_nodes = tree::read_nodes(tgt, &self.target.path, &changed, self.limits.max_in_flight)
            .await
            .map_err(fail)?;
        let target_lists = tree::scan_from(
            tgt,
            &self.target.path,
            reparented.clone(),
            self.limits.max_in_flight,
            |_| false,
        )
        .await
        .map_err(fail)?;

        for (rel, t) in changed.iter().zip(target_nodes) {
            let t = t.map(|(data, stat)| NodeState {
                data,
                stat,
                children: Vec::new(),
            });
            if let Some(op) = plan::decide(route, rel, source.get(rel), t.as_ref(), Need::Mirror) {
                upserts.push(op);
            }
        }
        let delete_roots = deletes_under(route, source, &reparented, &target_lists);
        let mut ops = self.subtree_deletes(tgt, delete_roots).await.map_err(fail)?;
        self.metrics.resume_reads.inc_by(ops.len() as u64);
        upserts.sort_by(|a, b| a.rel().cmp(b.rel()));
        ops.extend(upserts);
        Ok(ops)
    }

    /// Delete ops, children first, for the whole target subtrees at `roots`:
    /// a delete covers the node's subtree, since ZooKeeper deletes children
    /// first and events for them may have been coalesced or lost.
    pub(super) async fn subtree_deletes(&self, tgt: &Client, roots: Vec<String>) -> Result<Vec<Op>, Error> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        let subtree = tree::scan_from(tgt, &self.target.path, roots, self.limits.max_in_flight, |_| true).await?;
        Ok(subtree.into_keys().rev().map(|rel| Op::Delete { rel }).collect())
    }

    /// Creates the target path's ancestors (not the path itself, which is the
    /// mirror of the source root and created with its data).
    pub(super) async fn ensure_target_parent(&self, tgt: &Client) -> Result<(), Interrupted> {
        let Some(parent) = path::parent_absolute(&self.target.path).filter(|p| *p != "/") else {
            return Ok(());
        };
        match tgt.mkdir(parent, &persistent(&self.target_zk.acl)).await {
            Ok(()) | Err(Error::NodeExists) => Ok(()),
            Err(source) => Err(Interrupted {
                side: Side::Target,
                source,
            }),
        }
    }
}

/// The target children of `reparented` nodes that the source no longer
/// has (or no longer mirrors): the roots of the subtrees to delete.
fn deletes_under(route: &Route, source: &tree::Tree, reparented: &[String], target_lists: &tree::Tree) -> Vec<String> {
    let mut roots = Vec::new();
    for parent_rel in reparented {
        let Some(listed) = target_lists.get(parent_rel) else {
            continue;
        };
        for child in &listed.children {
            let rel = path::child(parent_rel, child);
            let present = NodeState {
                data: Vec::new(),
                stat: listed.stat,
                children: Vec::new(),
            };
            if let Some(Op::Delete { rel }) = plan::decide(route, &rel, source.get(&rel), Some(&present), Need::Mirror)
            {
                roots.push(rel);
            }
        }
    }
    roots
}

/// Where a resync starts, and the target zxid of the stored checkpoint.
struct ResyncStart {
    /// The checkpoint's source zxid when the resync resumes from it.
    resume_from: Option<i64>,
    stored_target_zxid: i64,
}

/// What a resync's scan found.
struct Scanned {
    /// The source tree, where a plan needs it (empty after a streamed copy,
    /// which keeps none).
    source: BTreeMap<String, NodeState>,
    summary: SourceSummary,
    /// Nodes a streaming copy wrote already.
    streamed: usize,
    /// Mirrored nodes in the source.
    mirrored: usize,
    /// Mirrored nodes in the target before the scan (for the breaker).
    target_before: usize,
}

/// What the end of a resync needs to know of the source, gathered node by
/// node as the scan reads them, so that a streamed copy of a million nodes
/// need not keep the tree to learn it.
#[derive(Debug, Default)]
pub(super) struct SourceSummary {
    /// Nodes scanned, excluded ones listed by their parents included (0:
    /// the source root is missing).
    nodes: usize,
    mirrored: usize,
    /// Nodes this session may not read: reported, their twins left alone.
    unreadable: Vec<String>,
    /// Mirrored nodes whose ACLs to copy (`acls = "copy"`): all of them,
    /// or on a resume those changed after the checkpoint.
    acl_rels: Vec<String>,
    /// Managed nodes with sequential children, whose counters to align.
    sequential_parents: Vec<String>,
}

impl SourceSummary {
    fn add(&mut self, route: &Route, rel: &str, node: &NodeState, resume_from: Option<i64>) {
        self.nodes += 1;
        if node.is_unreadable() {
            self.unreadable.push(rel.to_string());
        }
        let mirrored = plan::is_mirrored(route, rel, node);
        self.mirrored += usize::from(mirrored);
        if mirrored && route.config.acls == AclMode::Copy && resume_from.is_none_or(|c| node.stat.mzxid > c) {
            self.acl_rels.push(rel.to_string());
        }
        if route.filter.managed(rel) && node.children.iter().any(|c| path::is_sequential_name(c)) {
            self.sequential_parents.push(rel.to_string());
        }
    }
}

/// Where a resync may start from.
#[derive(Debug, PartialEq)]
enum ResumePoint<'a> {
    /// After this source zxid: the checkpoint is this source's.
    From(i64),
    /// From scratch: no checkpoint, or the reason asks for a full scan.
    Scratch,
    /// From scratch: the checkpoint is another source ensemble's (rebuilt
    /// or re-pointed).
    OtherSource(&'a Checkpoint),
}

/// Decides where a resync starts. An overflow (changes were dropped) or a
/// re-created source root (anything may differ) needs a full compare; a
/// checkpoint counts only for the ensemble that wrote it.
fn resume_point<'a>(stored: Option<&'a Checkpoint>, reason: ResyncReason, source_id: &str) -> ResumePoint<'a> {
    match (stored, reason) {
        (_, ResyncReason::Overflow | ResyncReason::SourceRoot) => ResumePoint::Scratch,
        (Some(c), _) if c.source_ensemble_id == source_id => ResumePoint::From(c.source_zxid),
        (Some(c), _) => ResumePoint::OtherSource(c),
        (None, _) => ResumePoint::Scratch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::znodes::test_checkpoint as checkpoint;

    #[test]
    fn a_resync_resumes_only_from_its_own_sources_checkpoint() {
        let own = checkpoint("src-1", 42);
        let other = checkpoint("src-0", 99);
        assert_eq!(
            resume_point(Some(&own), ResyncReason::Startup, "src-1"),
            ResumePoint::From(42)
        );
        assert_eq!(
            resume_point(Some(&own), ResyncReason::SessionExpired, "src-1"),
            ResumePoint::From(42)
        );
        assert_eq!(
            resume_point(Some(&other), ResyncReason::Startup, "src-1"),
            ResumePoint::OtherSource(&other)
        );
        assert_eq!(resume_point(None, ResyncReason::Startup, "src-1"), ResumePoint::Scratch);
        // Changes were dropped, or the root was re-created: compare everything.
        for reason in [ResyncReason::Overflow, ResyncReason::SourceRoot] {
            assert_eq!(resume_point(Some(&own), reason, "src-1"), ResumePoint::Scratch);
        }
    }
}
