//! Anti-entropy: a periodic, rate-limited comparison of a target subtree
//! with its source, so that a lost event, a bug, or a change made while no
//! bridge was running can never leave a silent, permanent divergence.
//!
//! A pass only reads and classifies; repairs go through the worker's queue
//! like any other dirty path, so they follow the route's conflict policy
//! and the lease's fencing. Each difference is one of:
//!
//! - *pending*: the source changed after the current checkpoint C — the
//!   change is on its way through the watch; nothing to do;
//! - *local change*: the source did not change after C, so the bridge has
//!   applied its version; yet the target node (or its parent's child list)
//!   changed after T, the target zxid from which this leader accounts for
//!   every write (the resumed checkpoint's commit, or the first checkpoint
//!   after a full copy). Only someone else can have written it: marked
//!   "seen changed in the target", so the conflict policy decides. This is
//!   how changes made while no bridge ran are found after a restart;
//! - *drift*: neither side changed, yet they differ — something was missed;
//!   marked dirty and repaired to the source's state.
//!
//! The bridge's own writes during a pass must come out pending, not local:
//! the nodes a first classification calls local or drift are read again from
//! the source after the target scan (see `pass`).
//!
//! `zkbridge_drift_nodes` is the number of local changes and drift found by
//! the last pass.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tracing::{info, warn};
use zookeeper_client::Client;

use crate::config::{AclMode, Endpoint, Route};
use crate::path::parent;
use crate::plan::{self, NodeKind, Op};
use crate::queue::TargetQueue;
use crate::tree::{self, Tree};
use crate::zk::Ensemble;

/// What a pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub local: Vec<String>,
    pub drift: Vec<String>,
    pub pending: usize,
    /// Ephemeral copies (`ephemerals = "ephemeral"`) that went with the
    /// session of a previous leader: re-created, neither drift nor a local
    /// change.
    pub expired_copies: Vec<String>,
}

/// The two positions a pass judges by.
#[derive(Debug, Clone, Copy)]
pub struct Positions {
    /// Source zxid of the current checkpoint: a source change after it may
    /// still be on its way.
    pub checkpoint: i64,
    /// Target zxid after which every target change not made by this
    /// leader is a local one.
    pub reference: i64,
}

/// Sorts the differences between two scans (see the module docs), but
/// those `skip` says to leave alone (kept by `target-wins`, or another
/// part's).
pub fn classify(
    route: &Route,
    source: &Tree,
    target: &Tree,
    at: Positions,
    mut skip: impl FnMut(&str) -> bool,
) -> Findings {
    let Positions {
        checkpoint: c,
        reference: t,
    } = at;
    let mut found = Findings::default();
    for op in plan::plan(route, source, target) {
        let rel = op.rel();
        if skip(rel) {
            continue;
        }
        let s = source.get(rel);
        let tn = target.get(rel);
        let sp = parent(rel).and_then(|p| source.get(p));
        let tp = parent(rel).and_then(|p| target.get(p));
        let source_changed = match &op {
            Op::Set { .. } => s.is_some_and(|s| s.stat.mzxid > c),
            Op::Create { .. } => s.is_some_and(|s| s.stat.mzxid > c || s.stat.czxid > c),
            // Gone from the source after C, or never there: the parent's
            // child list tells.
            Op::Delete { .. } => s.is_some() || sp.is_none_or(|p| p.stat.pzxid > c),
        };
        if source_changed {
            found.pending += 1;
            continue;
        }
        if matches!(
            op,
            Op::Create {
                kind: NodeKind::Ephemeral,
                ..
            }
        ) {
            found.expired_copies.push(rel.to_string());
            continue;
        }
        let target_changed = match &op {
            Op::Set { .. } => tn.is_some_and(|n| n.stat.mzxid > t),
            Op::Create { .. } => tp.is_some_and(|p| p.stat.pzxid > t),
            Op::Delete { .. } => tn.is_some_and(|n| n.stat.czxid > t),
        };
        if target_changed {
            found.local.push(rel.to_string());
        } else {
            found.drift.push(rel.to_string());
        }
    }
    found
}

/// A level of the trees with at least this many nodes is where a pass
/// splits them into parts: the levels above it are the top.
const FRONTIER_MIN: usize = 256;

/// Subtrees (frontier nodes) per part: with a balanced tree, a part holds
/// a few thousand nodes of each side whatever the tree's size.
const PART_ROOTS: usize = 16;

/// The levels of both trees above the frontier, and the frontier (sorted,
/// on either side), from which a pass reads the parts.
#[derive(Default)]
struct Top {
    source: Tree,
    target: Tree,
    frontier: Vec<String>,
}

/// Both trees' nodes for one part: some subtrees, and the top for context.
struct Part {
    source: Tree,
    target: Tree,
}

/// What a pass reads of the worker it runs beside.
pub trait WorkerView: Send + Sync {
    /// The lead's initial sync is done (passes start after it).
    fn initial_sync_done(&self) -> bool;
    /// Source zxid C of the worker's current checkpoint.
    fn checkpoint_zxid(&self) -> Option<i64>;
    /// Target zxid T from which every write not made by this leader is a
    /// local change; `-1` until known.
    fn reference_target_zxid(&self) -> i64;
    /// The path is kept by `target-wins`.
    fn is_kept(&self, rel: &str) -> bool;
}

/// Runs passes for one route/target while this instance leads it.
#[derive(Clone)]
pub struct Verifier {
    pub route: Arc<Route>,
    pub target: Endpoint,
    pub source_zk: Ensemble,
    pub target_zk: Ensemble,
    pub queue: Arc<TargetQueue>,
    pub status: Arc<dyn WorkerView>,
    pub drift: IntGauge,
    pub reads_per_s: u32,
    pub interval: Duration,
}

impl Verifier {
    /// Passes every `interval`; the first right after the lead's initial
    /// sync, which covers changes made in the target while no bridge ran
    /// and while the initial sync ran unwatched (the target watch is armed
    /// after it). Cancelled with the lead.
    pub async fn run(self) {
        loop {
            if self.status.initial_sync_done() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loop {
            let next = match self.pass().await {
                Ok(Some(found)) => {
                    self.drift.set((found.local.len() + found.drift.len()) as i64);
                    if found.local.is_empty() && found.drift.is_empty() {
                        info!(
                            pending = found.pending,
                            expired_copies = found.expired_copies.len(),
                            "anti-entropy pass: target matches source"
                        );
                    } else {
                        warn!(
                            local_changes = found.local.len(),
                            drift = found.drift.len(),
                            first = ?found.local.iter().chain(&found.drift).next(),
                            "anti-entropy pass found differences; repairing under the route's policy"
                        );
                    }
                    self.interval
                }
                // No checkpoint to judge against yet: soon, not in an hour.
                Ok(None) => Duration::from_secs(1),
                Err(e) => {
                    warn!(error = %e, "anti-entropy pass interrupted; next pass retries");
                    self.interval
                }
            };
            tokio::time::sleep(next).await;
        }
    }

    /// One pass, part by part (see [`Verifier::top`]): the top of the tree
    /// alone, then its subtrees a few at a time with the top for context,
    /// so that a pass holds a part of both trees rather than both whole.
    async fn pass(&self) -> Result<Option<Findings>, zookeeper_client::Error> {
        let Some(c) = self.status.checkpoint_zxid() else {
            return Ok(None);
        };
        let t = self.status.reference_target_zxid();
        if t <= 0 {
            return Ok(None);
        }
        let at = Positions {
            checkpoint: c,
            reference: t,
        };
        let route = &self.route;
        let src = self.source_zk.session().await.client;
        let tgt = self.target_zk.session().await.client;
        let top = self.top(&src, &tgt).await?;
        let in_top = |rel: &str| top.source.contains_key(rel) || top.target.contains_key(rel);
        // A top node's differences are found with the top alone, except
        // a scaffold whose mirrored descendants are all below it: that one
        // is found with the part that holds them, once.
        let mut judged = std::collections::HashSet::new();
        let mut found = Findings::default();
        let part = Part {
            source: top.source.clone(),
            target: top.target.clone(),
        };
        let everything = |_: &str| true;
        self.judge(&src, &tgt, part, at, &mut found, everything, |rel| {
            judged.insert(rel.to_string());
            true
        })
        .await?;
        let descend = |rel: &str| !route.filter.excluded(rel);
        for roots in top.frontier.chunks(PART_ROOTS) {
            let mut part = Part {
                source: top.source.clone(),
                target: top.target.clone(),
            };
            let read = tree::scan_paced(&src, &route.source.path, roots.to_vec(), self.reads_per_s, descend).await?;
            part.source.extend(read);
            let read = tree::scan_paced(&tgt, &self.target.path, roots.to_vec(), self.reads_per_s, descend).await?;
            part.target.extend(read);
            let below = |rel: &str| roots.iter().any(|r| crate::path::is_within(rel, r));
            self.judge(&src, &tgt, part, at, &mut found, below, |rel| {
                below(rel) || (in_top(rel) && judged.insert(rel.to_string()))
            })
            .await?;
        }
        Ok(Some(found))
    }

    /// The top of both trees, read level by level until a level holds at
    /// least [`FRONTIER_MIN`] nodes (or the trees end): those nodes, the
    /// frontier, are the roots of the parts a pass reads one after another.
    /// Levels above it are small by construction, so the top is too.
    async fn top(&self, src: &Client, tgt: &Client) -> Result<Top, zookeeper_client::Error> {
        let route = &self.route;
        let mut top = Top::default();
        let mut level = vec![String::new()];
        while !level.is_empty() {
            let mut next = std::collections::BTreeSet::new();
            for (client, base, tree) in [
                (src, &route.source.path, &mut top.source),
                (tgt, &self.target.path, &mut top.target),
            ] {
                for (rel, mut node) in tree::read_level_paced(client, base, level.clone(), self.reads_per_s).await? {
                    for name in std::mem::take(&mut node.children) {
                        let child = crate::path::child(&rel, &name);
                        if route.filter.excluded(&child) {
                            // Listed, as a scan records it: excluded, not absent.
                            tree.insert(child, tree::NodeState::unread());
                        } else {
                            next.insert(child);
                        }
                    }
                    tree.insert(rel, node);
                }
            }
            if next.len() >= FRONTIER_MIN {
                top.frontier = next.into_iter().collect();
                break;
            }
            level = next.into_iter().collect();
        }
        Ok(top)
    }

    /// Classifies one part, confirms what looks local or drift against a
    /// fresh source read, compares ACLs where the route copies them, and
    /// marks what needs repair. `holds` says which nodes the part answers
    /// for (their ACLs are compared), `ours` which differences (called once
    /// per difference found: the top's nodes come with every part).
    #[allow(clippy::too_many_arguments)]
    async fn judge(
        &self,
        src: &Client,
        tgt: &Client,
        part: Part,
        at: Positions,
        found: &mut Findings,
        holds: impl Fn(&str) -> bool,
        mut ours: impl FnMut(&str) -> bool,
    ) -> Result<(), zookeeper_client::Error> {
        let route = &self.route;
        let Part { mut source, target } = part;
        let kept = |rel: &str| self.status.is_kept(rel);
        let mut part = classify(route, &source, &target, at, |rel| kept(rel) || !ours(rel));
        if !part.local.is_empty() || !part.drift.is_empty() {
            // The source was read before the target: a change the bridge
            // applied between the two scans would look local (the target
            // changed after T, the source snapshot not after C). The
            // candidates' source nodes, and their parents, are read again
            // after the target scan; what changed after C since is pending.
            // Reading the target first would need no second read, but then
            // the pass's target reads meet the bridge's writes on the target
            // link right after every initial sync (the 40 ms bench's p99
            // doubled).
            let candidates: Vec<String> = part.local.iter().chain(&part.drift).cloned().collect();
            self.refresh(src, &mut source, candidates.clone()).await?;
            // Sorted again on the candidates alone (with their ancestors for
            // context): a second full comparison would double the pass's CPU.
            // Every ancestor comes along: the plan walks up from a mirrored
            // node to scaffold its parents.
            let subset = |tree: &Tree| -> Tree {
                candidates
                    .iter()
                    .flat_map(|rel| crate::path::self_and_ancestors(rel))
                    .filter_map(|rel| tree.get(rel).map(|n| (rel.to_string(), n.clone())))
                    .collect()
            };
            let again = classify(route, &subset(&source), &subset(&target), at, kept);
            let wanted: std::collections::HashSet<&String> = candidates.iter().collect();
            let local: Vec<String> = again.local.into_iter().filter(|r| wanted.contains(r)).collect();
            let drift: Vec<String> = again.drift.into_iter().filter(|r| wanted.contains(r)).collect();
            part.pending += candidates.len() - local.len() - drift.len();
            part.local = local;
            part.drift = drift;
        }
        if route.config.acls == AclMode::Copy {
            // An ACL read that fails costs the ACL part of the pass, not
            // what the data part found.
            match self.acl_differences(src, tgt, &source, &target, &part, holds).await {
                Ok(differs) => part.drift.extend(differs),
                Err(e) => warn!(error = %e, "anti-entropy: ACL comparison interrupted; the next pass retries"),
            }
        }
        for rel in &part.local {
            self.queue.mark_target(rel);
        }
        for rel in part.drift.iter().chain(&part.expired_copies) {
            self.queue.mark(rel);
        }
        found.pending += part.pending;
        found.local.extend(part.local);
        found.drift.extend(part.drift);
        found.expired_copies.extend(part.expired_copies);
        Ok(())
    }

    /// Reads `rels` and their parents from the source again, into `source`
    /// (a node gone since is removed with its subtree).
    async fn refresh(&self, src: &Client, source: &mut Tree, rels: Vec<String>) -> Result<(), zookeeper_client::Error> {
        let mut wanted: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for rel in rels {
            if let Some(p) = parent(&rel) {
                wanted.insert(p.to_string());
            }
            wanted.insert(rel);
        }
        let wanted: Vec<String> = wanted.into_iter().collect();
        let fresh = tree::read_nodes(src, &self.route.source.path, &wanted, 1).await?;
        for (rel, node) in wanted.into_iter().zip(fresh) {
            match node {
                Some((data, stat)) => {
                    source.insert(
                        rel,
                        tree::NodeState {
                            data: tree::digest(&data).to_vec(),
                            stat,
                            children: Vec::new(),
                        },
                    );
                }
                // Gone since: with its subtree, as a scan now would find it.
                None if rel.is_empty() => source.clear(),
                None => {
                    let below = format!("{rel}/");
                    source.retain(|k, _| k != &rel && !k.starts_with(&below));
                }
            }
        }
        Ok(())
    }

    /// Nodes whose target ACL differs from the source's, among those in
    /// both trees with nothing else to repair (a source ACL change fires no
    /// watch, so this is how one reaches the target). Read at the pass's rate.
    async fn acl_differences(
        &self,
        src: &Client,
        tgt: &Client,
        source: &Tree,
        target: &Tree,
        found: &Findings,
        holds: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, zookeeper_client::Error> {
        let route = &self.route;
        let found_already: std::collections::HashSet<&String> = found.local.iter().chain(&found.drift).collect();
        let rels: Vec<String> = source
            .iter()
            .filter(|(rel, n)| holds(rel) && plan::is_mirrored(route, rel, n) && target.contains_key(*rel))
            .map(|(rel, _)| rel.clone())
            .filter(|rel| !found_already.contains(rel) && !self.status.is_kept(rel))
            .collect();
        let mut differs = Vec::new();
        for chunk in rels.chunks(self.reads_per_s.max(1) as usize) {
            let s = tree::read_acls(src, &route.source.path, chunk, 1).await?;
            let t = tree::read_acls(tgt, &self.target.path, chunk, 1).await?;
            for ((rel, s), t) in chunk.iter().zip(s).zip(t) {
                if s.is_some() && t.is_some() && s != t {
                    differs.push(rel.clone());
                }
            }
            // At the pass's rate, however small the part.
            tokio::time::sleep(Duration::from_secs_f64(
                chunk.len() as f64 / self.reads_per_s.max(1) as f64,
            ))
            .await;
        }
        Ok(differs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::NodeState;

    fn route(extra: &str) -> Arc<Route> {
        crate::config::test_route(extra)
    }

    /// A node with its zxids: (czxid, mzxid, pzxid).
    fn node(data: &str, zxids: (i64, i64, i64), owner: i64) -> NodeState {
        crate::tree::test_node(data, zxids, owner)
    }

    fn tree(nodes: Vec<(&str, NodeState)>) -> Tree {
        nodes.into_iter().map(|(r, n)| (r.to_string(), n)).collect()
    }

    const C: i64 = 100;
    const T: i64 = 1000;
    const AT: Positions = Positions {
        checkpoint: C,
        reference: T,
    };

    #[test]
    fn source_changes_after_the_checkpoint_are_pending() {
        let source = tree(vec![
            ("", node("", (1, 1, 150), 0)),
            ("a", node("new", (1, 150, 1), 0)),
            ("b", node("b", (120, 120, 120), 0)),
        ]);
        let target = tree(vec![
            ("", node("", (900, 900, 900), 0)),
            ("a", node("old", (900, 900, 900), 0)),
            ("gone", node("g", (900, 900, 900), 0)),
        ]);
        let found = classify(&route(""), &source, &target, AT, |_| false);
        assert_eq!(found.pending, 3, "{found:?}");
        assert!(found.local.is_empty() && found.drift.is_empty());
    }

    #[test]
    fn target_changes_after_the_reference_are_local_and_others_drift() {
        let source = tree(vec![
            ("", node("", (1, 1, 50), 0)),
            ("set-local", node("s", (1, 1, 1), 0)),
            ("set-drift", node("s", (1, 1, 1), 0)),
        ]);
        let target = tree(vec![
            ("", node("", (900, 900, 900), 0)),
            ("set-local", node("local", (900, 1500, 900), 0)),
            ("set-drift", node("other", (900, 900, 900), 0)),
            ("created-locally", node("x", (1500, 1500, 1500), 0)),
        ]);
        let found = classify(&route(""), &source, &target, AT, |_| false);
        assert_eq!(found.local, ["created-locally", "set-local"]);
        assert_eq!(found.drift, ["set-drift"]);
        let kept = classify(&route(""), &source, &target, AT, |rel| rel == "set-local");
        assert_eq!(
            kept.local,
            ["created-locally"],
            "a path kept by target-wins is left alone"
        );
    }

    #[test]
    fn ephemeral_copies_gone_with_a_previous_leader_are_neither_drift_nor_local() {
        let source = tree(vec![("", node("", (1, 1, 1), 0)), ("e", node("e", (1, 1, 1), 42))]);
        // The copy went with the old leader's session: the parent's child
        // list changed after T.
        let target = tree(vec![("", node("", (900, 900, 1500), 0))]);
        let found = classify(&route("ephemerals = \"ephemeral\""), &source, &target, AT, |_| false);
        assert_eq!(found.expired_copies, ["e"]);
        assert!(found.local.is_empty() && found.drift.is_empty(), "{found:?}");
    }
}
