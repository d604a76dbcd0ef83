//! `zkbridge diff`: what the bridge would still change, per route/target.
//!
//! It runs the same scans and the same plan as the worker's resync, so "diff
//! is clean" means exactly "the bridge has nothing left to do". An
//! active-active route has no source: every member is compared with every
//! other, node by node (`diff_active`).

use std::collections::BTreeMap;

use serde::Serialize;
use zookeeper_client::Client;

use crate::config::Resolved;
use crate::path::join;
use crate::plan::{self, Op};
use crate::tree;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub route: String,
    pub target: String,
    pub kind: DifferenceKind,
    pub source_path: String,
    pub target_path: String,
}

/// How a target node differs from its source (`kind` in `diff --json`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DifferenceKind {
    /// In the source, not in the target.
    Missing,
    /// In the target only.
    Extra,
    /// The data differs.
    Different,
    /// Differs, but the target's version is kept by the route's
    /// `target-wins` policy (not drift).
    Kept,
}

impl DifferenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Missing => "missing",
            DifferenceKind::Extra => "extra",
            DifferenceKind::Different => "different",
            DifferenceKind::Kept => "kept",
        }
    }
}

impl Difference {
    /// Whether the bridge still has work here (everything but `kept`).
    pub fn is_drift(&self) -> bool {
        self.kind != DifferenceKind::Kept
    }
}

/// Compares every (or one) route's source with each of its targets.
pub async fn diff(config: &Resolved, only_route: Option<&str>) -> anyhow::Result<Vec<Difference>> {
    let routes: Vec<_> = config
        .routes
        .iter()
        .filter(|r| only_route.is_none_or(|n| r.name() == n))
        .collect();
    let active: Vec<_> = config
        .active
        .iter()
        .filter(|r| only_route.is_none_or(|n| r.name() == n))
        .collect();
    if let Some(name) = only_route {
        anyhow::ensure!(
            !routes.is_empty() || !active.is_empty(),
            "--route {name}: no such route in the configuration"
        );
    }
    let in_flight = config.config.bridge.max_in_flight;
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    let mut out = Vec::new();
    for route in active {
        out.extend(diff_active(config, route, &mut clients).await?);
    }
    for configured in routes {
        // Compared from the primary the members agree on now.
        let mut members = crate::role::store::Clients::new();
        for m in configured.members() {
            let c = client(config, &mut clients, &m.ensemble)
                .await
                .map_err(|e| e.to_string());
            members.insert(m.ensemble.clone(), c);
        }
        let (route, _) = crate::role::current(configured, &config.config.bridge.meta_path, &members)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let route = &route;
        let source_client = client(config, &mut clients, &route.source.ensemble).await?;
        let source = tree::scan(&source_client, &route.source.path, in_flight, |rel| {
            !route.filter.excluded(rel)
        })
        .await
        .map_err(|e| anyhow::anyhow!("route {}: reading source {}: {e}", route.name(), route.source))?;
        for target in &route.targets {
            let target_client = client(config, &mut clients, &target.ensemble).await?;
            let tgt = tree::scan(&target_client, &target.path, in_flight, |rel| {
                !route.filter.excluded(rel)
            })
            .await
            .map_err(|e| anyhow::anyhow!("route {}: reading target {target}: {e}", route.name()))?;
            let kept_dir = crate::znodes::kept_dir(&config.config.bridge.meta_path, route.name(), &target.ensemble);
            let kept = crate::conflict::load_kept(&target_client, &kept_dir)
                .await
                .map_err(|e| anyhow::anyhow!("route {}: reading kept paths in {target}: {e}", route.name()))?;
            for op in plan::plan(route, &source, &tgt) {
                let source_mzxid = source.get(op.rel()).map(|n| n.stat.mzxid).unwrap_or(-1);
                let kind = match op {
                    _ if kept
                        .get(op.rel())
                        .is_some_and(|at| crate::conflict::still_kept(*at, source_mzxid)) =>
                    {
                        DifferenceKind::Kept
                    }
                    Op::Create { .. } => DifferenceKind::Missing,
                    Op::Set { .. } => DifferenceKind::Different,
                    Op::Delete { .. } => DifferenceKind::Extra,
                };
                out.push(Difference {
                    route: route.name().to_string(),
                    target: target.ensemble.clone(),
                    kind,
                    source_path: join(&route.source.path, op.rel()),
                    target_path: join(&target.path, op.rel()),
                });
            }
        }
    }
    Ok(out)
}

/// An active-active route: every member against every other, on the
/// nodes the route carries (managed, not ephemeral); origin records live
/// under `meta_path`, outside every member, and are not compared. For the
/// pair (a, b), `missing` is a node only in a, `extra` one only in b.
async fn diff_active(
    config: &Resolved,
    route: &crate::config::ActiveRoute,
    clients: &mut BTreeMap<String, Client>,
) -> anyhow::Result<Vec<Difference>> {
    let in_flight = config.config.bridge.max_in_flight;
    let mut trees = Vec::new();
    for m in &route.members {
        let c = client(config, clients, &m.ensemble).await?;
        let tree = tree::scan(&c, &m.path, in_flight, |rel| !route.filter.excluded(rel))
            .await
            .map_err(|e| anyhow::anyhow!("route {}: reading member {m}: {e}", route.name()))?;
        let carried: BTreeMap<String, Vec<u8>> = tree
            .into_iter()
            .filter(|(rel, n)| {
                n.stat.mzxid >= 0 && !n.is_unreadable() && !n.is_ephemeral() && route.filter.managed(rel)
            })
            .map(|(rel, n)| (rel, n.data))
            .collect();
        trees.push(carried);
    }
    let mut out = Vec::new();
    for (i, a) in route.members.iter().enumerate() {
        for (j, b) in route.members.iter().enumerate().skip(i + 1) {
            let (ta, tb) = (&trees[i], &trees[j]);
            let rels: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            for rel in rels {
                let kind = match (ta.get(rel), tb.get(rel)) {
                    (Some(x), Some(y)) if x == y => continue,
                    (Some(_), Some(_)) => DifferenceKind::Different,
                    (Some(_), None) => DifferenceKind::Missing,
                    (None, _) => DifferenceKind::Extra,
                };
                out.push(Difference {
                    route: route.name().to_string(),
                    target: crate::config::pair_label(&a.ensemble, &b.ensemble),
                    kind,
                    source_path: join(&a.path, rel),
                    target_path: join(&b.path, rel),
                });
            }
        }
    }
    Ok(out)
}

async fn client(config: &Resolved, clients: &mut BTreeMap<String, Client>, name: &str) -> anyhow::Result<Client> {
    if let Some(c) = clients.get(name) {
        return Ok(c.clone());
    }
    let c = crate::zk::connect(config.ensemble(name))
        .await
        .map_err(|e| anyhow::anyhow!("ensemble {name} ({}): {e}", config.ensemble(name).connect))?;
    clients.insert(name.to_string(), c.clone());
    Ok(c)
}
