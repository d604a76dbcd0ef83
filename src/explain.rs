//! `zkbridge explain` (design §8): why one path is, or is not, in sync in
//! each target. It reads the nodes and zkbridge's znodes itself, so it works
//! while no bridge runs; when the instance at `bridge.listen` answers, its
//! queue says what it holds for the path (pending since when, set aside
//! with which error, held by the breaker).
//!
//! The judgement is [`judge`]: pure, one rule per state, in the order an
//! operator should hear them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zookeeper_client::{Client, Error, Stat};

use crate::config::{AclMode, EphemeralMode, Resolved, Route};
use crate::znodes::StopRecord;
use crate::zxid::Zxid;

/// What a running instance's queue holds for a path in one target (the
/// `/explain` endpoint's answer, one per route member it has a worker for).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueReport {
    pub target: String,
    /// This instance leads the target: its queue is the one that counts.
    pub leading: bool,
    pub queue: QueueState,
}

/// A path in a leader's queue, with times relative to the answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum QueueState {
    /// Nothing waits for it.
    Idle,
    /// Marked dirty `since_s` seconds ago.
    Dirty { since_s: f64 },
    /// Being written now.
    InFlight,
    /// Set aside `since_s` ago after the target refused it; retried in
    /// `retry_in_s`.
    Parked {
        since_s: f64,
        retry_in_s: f64,
        error: String,
    },
    /// Its delete is held by the delete circuit breaker.
    Held { since_s: f64 },
    /// A full resync is pending or running; it covers every path.
    Resyncing,
    /// This instance does not lead the target.
    NotLeading,
}

/// The state words of design §8, first on each target's line.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    InSync,
    Pending,
    Parked,
    Held,
    Kept,
    Excluded,
    Stopped,
    Conflict,
}

impl State {
    pub fn words(self) -> &'static str {
        match self {
            State::InSync => "in sync",
            State::Pending => "pending",
            State::Parked => "parked",
            State::Held => "held",
            State::Kept => "kept",
            State::Excluded => "excluded",
            State::Stopped => "stopped",
            State::Conflict => "conflict",
        }
    }
}

/// A node as `explain` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeReport {
    pub path: String,
    pub exists: bool,
    /// `false` when zkbridge's credentials may not read it (NoAuth).
    pub readable: bool,
    pub bytes: usize,
    /// MD5 of the data, hex: enough to tell two copies apart at a glance.
    pub md5: Option<String>,
    pub mzxid: Option<Zxid>,
    pub ephemeral: bool,
    pub acl: Option<String>,
    #[serde(skip)]
    data: Vec<u8>,
}

impl NodeReport {
    fn absent(path: &str) -> NodeReport {
        NodeReport {
            path: path.to_string(),
            exists: false,
            readable: true,
            bytes: 0,
            md5: None,
            mzxid: None,
            ephemeral: false,
            acl: None,
            data: Vec::new(),
        }
    }

    fn found(path: &str, data: Vec<u8>, stat: &Stat, acl: Option<String>) -> NodeReport {
        NodeReport {
            path: path.to_string(),
            exists: true,
            readable: true,
            bytes: data.len(),
            md5: Some(format!("{:x}", md5::compute(&data))),
            mzxid: Some(Zxid(stat.mzxid)),
            ephemeral: crate::tree::owned_by_a_session(stat.ephemeral_owner),
            acl,
            data,
        }
    }

    /// One line for people: what it is, not its bytes.
    pub fn summary(&self) -> String {
        if !self.exists {
            return "absent".to_string();
        }
        if !self.readable {
            return "exists, not readable with zkbridge's credentials (NoAuth)".to_string();
        }
        format!(
            "{} bytes, md5 {}, mzxid {}, {}{}",
            self.bytes,
            self.md5.as_deref().unwrap_or("-"),
            self.mzxid.map(|z| z.to_string()).unwrap_or_default(),
            if self.ephemeral { "ephemeral" } else { "persistent" },
            self.acl.as_ref().map(|a| format!(", ACL {a}")).unwrap_or_default()
        )
    }
}

/// What the znodes say about one target of the route.
#[derive(Debug, Clone, Default)]
pub struct TargetZnodes {
    /// The route/target's stop record (a conflict under `fail`, or a trip
    /// of the delete breaker).
    pub stop: Option<StopRecord>,
    /// The path is kept by `target-wins` until the source changes it again.
    pub kept: bool,
}

/// One target's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub state: State,
    pub reason: String,
    pub node: NodeReport,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub route: String,
    /// The path relative to the route (`""` is its root).
    pub relative: String,
    /// The member the route mirrors from now.
    pub primary: String,
    pub source: NodeReport,
    pub targets: Vec<TargetReport>,
    /// Whether the instance at `bridge.listen` answered.
    pub instance_answered: bool,
}

/// The state of one target for a path, and why. Pure: the first rule that
/// applies decides, in the order an operator needs them — nothing is
/// mirrored here, the route is stopped, the path waits for something, the
/// policy keeps it, and only then whether the copies are equal.
pub fn judge(
    route: &Route,
    relative: &str,
    source: &NodeReport,
    target: &NodeReport,
    znodes: &TargetZnodes,
    queue: Option<&QueueReport>,
) -> (State, String) {
    if let Some(why) = route.filter.why_unmanaged(relative) {
        return (State::Excluded, why);
    }
    if source.exists && source.ephemeral && route.config.ephemerals == EphemeralMode::Skip {
        return (
            State::Excluded,
            "an ephemeral node, and the route skips ephemerals (ephemerals = \"skip\")".to_string(),
        );
    }
    let queue_state = queue.filter(|q| q.leading).map(|q| &q.queue);
    // A tripped breaker holds deletes only; other writes go on.
    let breaker = znodes.stop.as_ref().filter(|s| s.reason.starts_with("delete_breaker"));
    if let Some(stop) = breaker {
        let held = match queue_state {
            Some(QueueState::Held { since_s }) => Some(format!("its delete is held ({since_s:.0} s)")),
            // Without the leader's queue: a delete not applied while the
            // breaker holds deletes is one of them.
            None if !source.exists && target.exists => Some("its delete is not applied".to_string()),
            _ => None,
        };
        if let Some(held) = held {
            return (
                State::Held,
                format!(
                    "{held}: the delete circuit breaker tripped ({}); `zkbridge resume` releases held deletes",
                    stop.reason
                ),
            );
        }
    }
    if let Some(stop) = znodes.stop.as_ref().filter(|_| breaker.is_none()) {
        if stop.path == target.path {
            return (
                State::Conflict,
                format!("a local change here stopped the route (conflict = \"fail\", by {}); `zkbridge resume` after deciding which copy is right", stop.bridge),
            );
        }
        return (
            State::Stopped,
            format!(
                "the route/target is stopped ({} at {}); `zkbridge resume` clears it",
                stop.reason, stop.path
            ),
        );
    }
    match queue_state {
        Some(QueueState::Held { since_s }) => {
            return (
                State::Held,
                format!(
                    "its delete is held by the delete circuit breaker ({since_s:.0} s); `zkbridge resume` releases it"
                ),
            )
        }
        Some(QueueState::Parked {
            since_s,
            retry_in_s,
            error,
        }) => {
            return (
                State::Parked,
                format!("set aside {since_s:.0} s ago: {error}; retried in {retry_in_s:.0} s"),
            )
        }
        _ => {}
    }
    if source.exists && !source.readable {
        return (
            State::Parked,
            "the source node is not readable with zkbridge's credentials (NoAuth): skipped, its target copy left as it is".to_string(),
        );
    }
    if znodes.kept {
        return (
            State::Kept,
            "the target's own version is kept (conflict = \"target-wins\") until the source changes the node again"
                .to_string(),
        );
    }
    let equal_acl = route.config.acls != AclMode::Copy || source.acl == target.acl;
    let difference = match (source.exists, target.exists) {
        (false, false) => None,
        (true, false) => Some("missing in the target"),
        (false, true) if route.config.deletes == crate::config::DeleteMode::Keep => None,
        (false, true) => Some("only in the target (deleted in the source)"),
        (true, true) if source.data != target.data => Some("the data differs"),
        (true, true) if !equal_acl => Some("the ACL differs (acls = \"copy\")"),
        (true, true) => None,
    };
    let Some(difference) = difference else {
        let how = match (source.exists, target.exists) {
            (false, false) => "absent in both".to_string(),
            (false, true) => "deleted in the source; deletes = \"keep\" leaves the target's copy".to_string(),
            _ => format!("the same data ({} bytes)", source.bytes),
        };
        return (State::InSync, how);
    };
    let queued = match queue_state {
        Some(QueueState::Dirty { since_s }) => format!("queued {since_s:.1} s ago"),
        Some(QueueState::InFlight) => "being written now".to_string(),
        Some(QueueState::Resyncing) => "a full resync covers it".to_string(),
        Some(QueueState::Idle) => "not queued: the next anti-entropy pass (verify_interval_s) finds it".to_string(),
        Some(QueueState::NotLeading) | None => match queue {
            Some(_) => {
                "this instance does not lead the target; its leader's queue is not visible from here".to_string()
            }
            None => "no running instance answered at bridge.listen, so its queue is unknown".to_string(),
        },
        Some(QueueState::Held { .. } | QueueState::Parked { .. }) => unreachable!("answered above"),
    };
    (State::Pending, format!("{difference}; {queued}"))
}

/// Reads a node, its ACL included, as `explain` shows it.
async fn read_node(client: &Client, path: &str) -> Result<NodeReport, Error> {
    let (data, stat) = match client.get_data(path).await {
        Ok(found) => found,
        Err(Error::NoNode) => return Ok(NodeReport::absent(path)),
        Err(Error::NoAuth) => {
            return Ok(NodeReport {
                exists: true,
                readable: false,
                ..NodeReport::absent(path)
            })
        }
        Err(e) => return Err(e),
    };
    let acl = match client.get_acl(path).await {
        Ok((acl, _)) => Some(
            acl.iter()
                .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), a.permission()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        Err(_) => None,
    };
    Ok(NodeReport::found(path, data, &stat, acl))
}

/// The path relative to `route`'s source: `path` absolute in the source, or
/// already relative to the route.
pub fn relative_to(route: &Route, path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Ok(path.trim_matches('/').to_string());
    }
    crate::path::relative(&route.source.path, path.trim_end_matches('/'))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{path} is not under the route's source path {} ({}); give it absolute in the source or relative to the route",
                route.source.path, route.source.ensemble
            )
        })
}

/// Explains `path` for `configured` in every target, with a session on
/// each member that answered (`clients`). `answer` is what the instance at
/// `bridge.listen` said, when it answered.
pub async fn explain(
    config: &Resolved,
    configured: &Route,
    path: &str,
    clients: &crate::role::store::Clients,
    answer: Option<Vec<QueueReport>>,
) -> anyhow::Result<Explanation> {
    let meta = &config.config.bridge.meta_path;
    let connected: BTreeMap<String, Client> = clients
        .iter()
        .filter_map(|(name, c)| c.as_ref().ok().map(|c| (name.clone(), c.clone())))
        .collect();
    let (route, _) = crate::role::current(configured, meta, clients)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    // Relative to the configured source; the same relative path in every member.
    let relative = relative_to(configured, path).map_err(|e| anyhow::anyhow!(e))?;
    let source_client = connected
        .get(&route.source.ensemble)
        .ok_or_else(|| anyhow::anyhow!("ensemble {}: not connected", route.source.ensemble))?;
    let source_path = crate::path::join(&route.source.path, &relative);
    let source = read_node(source_client, &source_path)
        .await
        .map_err(|e| anyhow::anyhow!("reading {source_path} in {}: {e}", route.source.ensemble))?;
    let mut targets = Vec::new();
    for target in &route.targets {
        let target_path = crate::path::join(&target.path, &relative);
        let Some(client) = connected.get(&target.ensemble) else {
            targets.push(TargetReport {
                target: target.ensemble.clone(),
                state: State::Pending,
                reason: format!("ensemble {} is unreachable", target.ensemble),
                node: NodeReport::absent(&target_path),
            });
            continue;
        };
        let node = read_node(client, &target_path)
            .await
            .map_err(|e| anyhow::anyhow!("reading {target_path} in {}: {e}", target.ensemble))?;
        let stop_path = crate::znodes::stopped_path(meta, route.name(), &target.ensemble);
        let stop = crate::conflict::read_stopped(client, &stop_path).await.ok().flatten();
        let kept_dir = crate::znodes::kept_dir(meta, route.name(), &target.ensemble);
        let source_mzxid = source.mzxid.map(|z| z.0).unwrap_or(-1);
        let kept = crate::conflict::load_kept(client, &kept_dir)
            .await
            .ok()
            .and_then(|k| k.get(&relative).copied())
            .is_some_and(|at| crate::conflict::still_kept(at, source_mzxid));
        let znodes = TargetZnodes { stop, kept };
        let queue = answer.as_ref().and_then(|a| {
            let mut mine = a.iter().filter(|q| q.target == target.ensemble);
            mine.clone().find(|q| q.leading).or_else(|| mine.next())
        });
        let (state, reason) = judge(&route, &relative, &source, &node, &znodes, queue);
        targets.push(TargetReport {
            target: target.ensemble.clone(),
            state,
            reason,
            node,
        });
    }
    Ok(Explanation {
        route: route.name().to_string(),
        relative,
        primary: route.source.ensemble.clone(),
        source,
        targets,
        instance_answered: answer.is_some(),
    })
}

/// The text `zkbridge explain` prints: the source, then one line per
/// target that starts with its state.
pub fn render_text(e: &Explanation) -> String {
    let mut out = format!(
        "route {} path {:?} (primary {})\nsource {}: {}\n",
        e.route,
        e.relative,
        e.primary,
        e.source.path,
        e.source.summary()
    );
    for t in &e.targets {
        out.push_str(&format!(
            "{} {}:{} — {}\n    target node: {}\n",
            t.state.words(),
            t.target,
            t.node.path,
            t.reason,
            t.node.summary()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, data: &str) -> NodeReport {
        node_owned(path, data, 0)
    }

    fn node_owned(path: &str, data: &str, ephemeral_owner: i64) -> NodeReport {
        let stat = Stat {
            czxid: 1,
            mzxid: 2,
            ctime: 0,
            mtime: 0,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner,
            data_length: data.len() as i32,
            num_children: 0,
            pzxid: 1,
        };
        NodeReport::found(path, data.as_bytes().to_vec(), &stat, Some("world:anyone:31".into()))
    }

    fn report(queue: QueueState) -> QueueReport {
        QueueReport {
            target: "b".into(),
            leading: true,
            queue,
        }
    }

    fn stop(path: &str, reason: &str) -> StopRecord {
        StopRecord {
            path: path.into(),
            reason: reason.into(),
            bridge: "zkb-1".into(),
            ts_ms: 0,
            breaker: None,
        }
    }

    #[test]
    fn each_state_has_its_rule() {
        let route = crate::config::test_route("exclude = [\"tmp\"]");
        let (s, t) = (node("/s/a", "1"), node("/t/a", "1"));
        let none = TargetZnodes::default();
        let state =
            |rel: &str, t: &NodeReport, z: &TargetZnodes, q: Option<&QueueReport>| judge(&route, rel, &s, t, z, q).0;
        assert_eq!(state("a", &t, &none, None), State::InSync);
        assert_eq!(state("tmp/x", &t, &none, None), State::Excluded);
        let differs = node("/t/a", "2");
        assert_eq!(state("a", &differs, &none, None), State::Pending);
        assert_eq!(
            state("a", &differs, &none, Some(&report(QueueState::Dirty { since_s: 1.0 }))),
            State::Pending
        );
        let parked = report(QueueState::Parked {
            since_s: 3.0,
            retry_in_s: 27.0,
            error: "no_auth".into(),
        });
        assert_eq!(state("a", &differs, &none, Some(&parked)), State::Parked);
        let held = report(QueueState::Held { since_s: 5.0 });
        assert_eq!(state("a", &t, &none, Some(&held)), State::Held);
        let kept = TargetZnodes { stop: None, kept: true };
        assert_eq!(state("a", &differs, &kept, None), State::Kept);
        let conflict = TargetZnodes {
            stop: Some(stop("/t/a", "conflict")),
            kept: false,
        };
        assert_eq!(state("a", &differs, &conflict, None), State::Conflict);
        let elsewhere = TargetZnodes {
            stop: Some(stop("/t/other", "conflict")),
            kept: false,
        };
        assert_eq!(state("a", &differs, &elsewhere, None), State::Stopped);
        let breaker = TargetZnodes {
            stop: Some(stop("/t", "delete_breaker: 60 of 100 deletes held")),
            kept: false,
        };
        assert_eq!(state("a", &t, &breaker, Some(&held)), State::Held);
        assert_eq!(
            state("a", &t, &breaker, None),
            State::InSync,
            "the breaker holds deletes only"
        );
        let gone = NodeReport::absent("/s/a");
        assert_eq!(
            judge(&route, "a", &gone, &t, &breaker, None).0,
            State::Held,
            "a delete not applied while deletes are held"
        );
    }

    #[test]
    fn only_a_real_session_makes_a_node_ephemeral() {
        let route = crate::config::test_route("");
        let t = node("/t/a", "1");
        for (owner, ephemeral) in [
            (0x1000_0000_0001, true),
            (i64::MIN, false),
            (0xff00_0000_0000_0001u64 as i64, false),
        ] {
            let s = node_owned("/s/a", "1", owner);
            assert_eq!(s.ephemeral, ephemeral, "owner {owner:#x}");
            let state = judge(&route, "a", &s, &t, &TargetZnodes::default(), None).0;
            assert_eq!(
                state == State::Excluded,
                ephemeral,
                "containers and TTL nodes are mirrored"
            );
        }
    }

    #[test]
    fn a_path_is_taken_absolute_in_the_source_or_relative_to_the_route() {
        let route = crate::config::test_route("");
        assert_eq!(relative_to(&route, "/s/a/b").unwrap(), "a/b");
        assert_eq!(relative_to(&route, "/s").unwrap(), "");
        assert_eq!(relative_to(&route, "a/b/").unwrap(), "a/b");
        assert!(relative_to(&route, "/elsewhere/a").unwrap_err().contains("not under"));
    }
}
