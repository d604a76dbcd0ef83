//! What the target must do to match the source: the reconcile decision, kept
//! pure so that the bridge, `sync` and `diff` agree by construction.
//!
//! Rules (see docs/architecture.md):
//! - a node is *mirrored* when it is persistent in the source, matches
//!   `include`, and neither it nor an ancestor matches `exclude`;
//! - ancestors of mirrored nodes are *scaffolding*: created in the target when
//!   missing (with the source's data), otherwise left alone;
//! - a target node with no mirrored counterpart is deleted when the route
//!   propagates deletes and the filter manages it, or when an ancestor is
//!   being deleted (ZooKeeper has no orphans);
//! - ops are ordered parents-first for creates and children-first for deletes.

use std::collections::BTreeSet;

use crate::config::{DeleteMode, EphemeralMode, Route};
use crate::path::parent;
use crate::tree::{NodeState, Tree};

/// The type a node is created with in the target.
///
/// Container and TTL nodes cannot be told apart from persistent ones by a
/// client: ZooKeeper keeps their type in `ephemeralOwner` but reports 0 to
/// clients for both (`DataNode.getClientEphemeralOwner`). They are mirrored
/// as persistent nodes; see docs/architecture.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeKind {
    #[default]
    Persistent,
    /// Owned by the leader's target session: vanishes with it, and the next
    /// leader creates it again (`ephemerals = "ephemeral"`).
    Ephemeral,
}

impl NodeKind {
    /// How the route mirrors a source node of this stat.
    pub fn of(route: &Route, node: &NodeState) -> NodeKind {
        if node.is_ephemeral() && route.config.ephemerals == EphemeralMode::Ephemeral {
            NodeKind::Ephemeral
        } else {
            NodeKind::Persistent
        }
    }
}

/// One write to a target, addressed relative to the target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create { rel: String, data: Vec<u8>, kind: NodeKind },
    Set { rel: String, data: Vec<u8> },
    Delete { rel: String },
}

impl Op {
    pub fn rel(&self) -> &str {
        match self {
            Op::Create { rel, .. } | Op::Set { rel, .. } | Op::Delete { rel } => rel,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Set { .. } => "set",
            Op::Delete { .. } => "delete",
        }
    }

    /// Approximate bytes this op adds to a `multi` request.
    pub fn wire_size(&self, base_len: usize) -> usize {
        let payload = match self {
            Op::Create { data, .. } | Op::Set { data, .. } => data.len(),
            Op::Delete { .. } => 0,
        };
        payload + self.rel().len() + base_len + 64
    }
}

/// Whether the route mirrors the source node at `rel` (filters and node
/// type: ephemerals only when the route's `ephemerals` mode asks).
pub fn is_mirrored(route: &Route, rel: &str, node: &NodeState) -> bool {
    let type_ok = !node.is_ephemeral() || route.config.ephemerals != EphemeralMode::Skip;
    type_ok && !node.is_listed_only() && !node.is_unreadable() && route.filter.managed(rel)
}

/// The full plan from two scans: deletes first (children before parents),
/// then creates and sets (parents before children).
pub fn plan(route: &Route, source: &Tree, target: &Tree) -> Vec<Op> {
    let mirrored: BTreeSet<&str> = source
        .iter()
        .filter(|(rel, node)| is_mirrored(route, rel, node))
        .map(|(rel, _)| rel.as_str())
        .collect();
    let mut scaffold: BTreeSet<&str> = BTreeSet::new();
    for rel in &mirrored {
        let mut p = parent(rel);
        while let Some(up) = p {
            if mirrored.contains(up) || !scaffold.insert(up) {
                break;
            }
            p = parent(up);
        }
    }

    // Source nodes that could not be read: their target twins and subtrees
    // are left alone (absent from the scan is not absent from the source).
    let unreadable: BTreeSet<&str> = source
        .iter()
        .filter(|(_, n)| n.is_unreadable())
        .map(|(rel, _)| rel.as_str())
        .collect();
    let under_unreadable = |rel: &str| {
        let mut p = Some(rel);
        while let Some(up) = p {
            if unreadable.contains(up) {
                return true;
            }
            p = parent(up);
        }
        false
    };
    let mut deletes: Vec<Op> = Vec::new();
    let mut deleting: BTreeSet<&str> = BTreeSet::new();
    if route.config.deletes == DeleteMode::Propagate {
        for rel in target.keys() {
            if !unreadable.is_empty() && under_unreadable(rel) {
                continue;
            }
            let wanted = mirrored.contains(rel.as_str()) || scaffold.contains(rel.as_str());
            let under_deleted = parent(rel).is_some_and(|p| deleting.contains(p));
            if under_deleted || (!wanted && route.filter.managed(rel)) {
                deleting.insert(rel);
                deletes.push(Op::Delete { rel: rel.clone() });
            }
        }
    }
    deletes.reverse();

    let mut writes = deletes;
    let wanted = mirrored
        .iter()
        .map(|r| (*r, true))
        .chain(scaffold.iter().map(|r| (*r, false)));
    let mut upserts: Vec<(&str, bool)> = wanted.collect();
    upserts.sort_unstable();
    for (rel, is_mirrored) in upserts {
        let src = &source[rel];
        match target.get(rel) {
            None => writes.push(Op::Create {
                rel: rel.into(),
                data: src.data.clone(),
                kind: NodeKind::of(route, src),
            }),
            Some(t) if is_mirrored && t.data != src.data => writes.push(Op::Set {
                rel: rel.into(),
                data: src.data.clone(),
            }),
            Some(_) => {}
        }
    }
    writes
}

/// What a dirty path needs in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// To mirror the source node: created, updated or deleted.
    Mirror,
    /// Only to exist, as the ancestor of a mirrored node (scaffolding):
    /// created when missing, never updated.
    Exist,
}

/// The decision for one dirty path from point reads: `source` and `target`
/// are the nodes' current states (`None` when absent). [`Need::Exist`] asks
/// only that the node exist (a mirrored child needs it). A delete returned here
/// covers the node alone; the caller expands it to the target subtree.
pub fn decide(
    route: &Route,
    rel: &str,
    source: Option<&NodeState>,
    target: Option<&NodeState>,
    need: Need,
) -> Option<Op> {
    let scaffold = need == Need::Exist;
    if source.is_some_and(NodeState::is_unreadable) {
        return None;
    }
    let mirrored = source.is_some_and(|s| is_mirrored(route, rel, s));
    let wanted = mirrored || (scaffold && source.is_some_and(|s| !s.is_ephemeral()));
    match (source, target) {
        (Some(s), None) if wanted => Some(Op::Create {
            rel: rel.into(),
            data: s.data.clone(),
            kind: NodeKind::of(route, s),
        }),
        (Some(s), Some(t)) if mirrored && s.data != t.data => Some(Op::Set {
            rel: rel.into(),
            data: s.data.clone(),
        }),
        (_, Some(_))
            if !wanted && !scaffold && route.filter.managed(rel) && route.config.deletes == DeleteMode::Propagate =>
        {
            // A source node that is excluded keeps its target twin: only an
            // absent (or ephemeral, skipped) source node means delete.
            if source.is_some_and(|s| !s.is_ephemeral()) {
                None
            } else {
                Some(Op::Delete { rel: rel.into() })
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn route(extra: &str) -> Arc<Route> {
        crate::config::test_route(extra)
    }

    fn node(data: &str, owner: i64) -> NodeState {
        crate::tree::test_node(data, (1, 1, 1), owner)
    }

    fn tree(nodes: &[(&str, &str)]) -> Tree {
        nodes.iter().map(|(r, d)| (r.to_string(), node(d, 0))).collect()
    }

    #[test]
    fn copies_into_empty_target_parents_first() {
        let r = route("");
        let ops = plan(&r, &tree(&[("", "root"), ("a", "1"), ("a/b", "2")]), &Tree::new());
        let rels: Vec<_> = ops.iter().map(|o| (o.kind(), o.rel())).collect();
        assert_eq!(rels, vec![("create", ""), ("create", "a"), ("create", "a/b")]);
    }

    #[test]
    fn deletes_children_first_and_skips_equal_data() {
        let r = route("");
        let src = tree(&[("", "x"), ("a", "1")]);
        let tgt = tree(&[("", "x"), ("a", "1"), ("z", ""), ("z/y", "")]);
        let ops = plan(&r, &src, &tgt);
        assert_eq!(
            ops,
            vec![Op::Delete { rel: "z/y".into() }, Op::Delete { rel: "z".into() }]
        );
    }

    #[test]
    fn keep_mode_never_deletes() {
        let r = route("deletes = \"keep\"");
        let ops = plan(&r, &tree(&[("", "")]), &tree(&[("", ""), ("z", "")]));
        assert!(ops.is_empty());
    }

    #[test]
    fn excluded_and_ephemeral_nodes() {
        let r = route("exclude = [\"tmp\"]");
        let mut src = tree(&[("", ""), ("tmp", "s"), ("tmp/x", "s")]);
        src.insert("eph".into(), node("e", 0x1234));
        let tgt = tree(&[("", ""), ("tmp", "local"), ("eph", "e")]);
        let ops = plan(&r, &src, &tgt);
        // tmp and its subtree are not managed: left as the target has them;
        // the ephemeral is skipped, so its stale copy goes.
        assert_eq!(ops, vec![Op::Delete { rel: "eph".into() }]);
    }

    #[test]
    fn scaffolding_is_created_but_not_updated() {
        let r = route("include = [\"app/**\"]");
        let src = tree(&[("", "r"), ("app", "A"), ("app/x", "1"), ("other", "o")]);
        let ops = plan(&r, &src, &Tree::new());
        let rels: Vec<_> = ops.iter().map(|o| o.rel()).collect();
        assert_eq!(rels, vec!["", "app", "app/x"]);
        let tgt = tree(&[("", "r"), ("app", "different"), ("app/x", "1")]);
        assert!(plan(&r, &src, &tgt).is_empty());
    }

    #[test]
    fn decide_matches_plan_for_point_changes() {
        let r = route("exclude = [\"tmp\"]");
        let s = node("new", 0);
        let t = node("old", 0);
        assert_eq!(
            decide(&r, "a", Some(&s), None, Need::Mirror),
            Some(Op::Create {
                rel: "a".into(),
                data: b"new".to_vec(),
                kind: NodeKind::Persistent,
            })
        );
        assert_eq!(
            decide(&r, "a", Some(&s), Some(&t), Need::Mirror),
            Some(Op::Set {
                rel: "a".into(),
                data: b"new".to_vec()
            })
        );
        assert_eq!(
            decide(&r, "a", None, Some(&t), Need::Mirror),
            Some(Op::Delete { rel: "a".into() })
        );
        assert_eq!(decide(&r, "tmp", Some(&s), Some(&t), Need::Mirror), None);
        assert_eq!(decide(&r, "a", Some(&s), Some(&s), Need::Mirror), None);
    }
}
