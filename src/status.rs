//! `zkbridge status` and `GET /status`: per route/target, who leads, how
//! far the mirror got and how far behind it is.
//!
//! Everything is read from zkbridge's znodes (lease nodes and checkpoint in
//! the target, progress in the source), never from one process's memory:
//! the answer is the same from any instance, from the CLI, and while every
//! bridge is stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use zookeeper_client::Client;

use crate::checkpoint::get_json;
use crate::config::Resolved;
use crate::lease::contenders;
use crate::znodes::{checkpoint_path, leases_dir, now_ms, progress_path, Checkpoint, Progress};
use crate::zxid::Zxid;

/// How long one read may take before its ensemble counts as unreachable.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize, PartialEq)]
pub struct RouteTargetStatus {
    pub route: String,
    pub source: String,
    pub target: String,
    pub target_path: String,
    /// `bridge.id` of the instance holding the lease; `null` when none does.
    pub leader: Option<String>,
    /// Instances waiting for the lease, next in line first.
    pub standby: Vec<String>,
    /// Source zxid of the last checkpoint.
    pub checkpoint_zxid: Option<Zxid>,
    /// Now minus the heartbeat time of the last checkpoint.
    pub lag_seconds: Option<f64>,
    /// Source zxid the target reported applied (progress znode).
    pub applied_zxid: Option<Zxid>,
    /// The leader's last error on this route/target.
    pub last_error: Option<String>,
    /// Set while the route/target is stopped (`conflict = "fail"`, delete
    /// breaker): the path and reason; `zkbridge resume` clears it.
    pub stopped: Option<crate::znodes::StopRecord>,
    /// Why some of the above could not be read.
    pub unavailable: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub routes: Vec<RouteTargetStatus>,
    /// Per route: its epoch, its primary and what each member says.
    pub roles: Vec<RouteRole>,
}

/// A route's role (design §6) as its members report it.
#[derive(Debug, Serialize, PartialEq)]
pub struct RouteRole {
    pub route: String,
    /// `null` while no member answers.
    pub epoch: Option<u64>,
    pub primary: Option<String>,
    pub reason: Option<&'static str>,
    pub since_ms: Option<i64>,
    /// Set when two members claim the same epoch with different primaries.
    pub split: Option<String>,
    pub members: Vec<MemberRole>,
    /// Nodes archived from demoted old primaries (`zkbridge divergent`).
    pub divergent_nodes: usize,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MemberRole {
    pub ensemble: String,
    /// `primary` or `mirror` under the route's current epoch.
    pub role: &'static str,
    /// The epoch its own role znode says; lower while it missed a flip.
    pub epoch: Option<u64>,
    pub unavailable: Option<String>,
}

/// A session per ensemble, or why there is none.
pub type Sessions = BTreeMap<String, Result<Client, String>>;

/// Reads the status of every route/target of `config` with `sessions`.
pub async fn collect(config: &Resolved, sessions: &Sessions) -> Status {
    let meta = &config.config.bridge.meta_path;
    let mut routes = Vec::new();
    let mut roles = Vec::new();
    for configured in &config.routes {
        let (role, oriented) = route_role(configured, meta, sessions).await;
        roles.push(role);
        let route = &oriented;
        for target in &route.targets {
            let mut s = RouteTargetStatus::new(
                route.name(),
                route.source.to_string(),
                target.ensemble.clone(),
                target.path.clone(),
            );
            let mut problems = Vec::new();
            match sessions.get(&target.ensemble) {
                Some(Ok(tgt)) => {
                    let (leases, checkpoint) = (
                        leases_dir(meta, route.name(), &target.ensemble),
                        checkpoint_path(meta, route.name(), &target.ensemble),
                    );
                    let who = format!("target {}", target.ensemble);
                    read_lead(&mut s, tgt, &leases, &checkpoint, &who, &mut problems).await;
                    let stop = crate::znodes::stopped_path(meta, route.name(), &target.ensemble);
                    match timed(crate::conflict::read_stopped(tgt, &stop)).await {
                        Ok(record) => s.stopped = record,
                        Err(e) => problems.push(format!("{who}: {e}")),
                    }
                }
                Some(Err(e)) => problems.push(format!("target {}: {e}", target.ensemble)),
                None => problems.push(format!("target {}: no session", target.ensemble)),
            }
            match sessions.get(&route.source.ensemble) {
                Some(Ok(src)) => {
                    let path = progress_path(meta, route.name(), &target.ensemble);
                    match timed(get_json::<Progress>(src, &path)).await {
                        Ok(Some(p)) => s.applied_zxid = Some(Zxid(p.source_zxid)),
                        Ok(None) => {}
                        Err(e) => problems.push(format!("source {}: {e}", route.source.ensemble)),
                    }
                }
                Some(Err(e)) => problems.push(format!("source {}: {e}", route.source.ensemble)),
                None => problems.push(format!("source {}: no session", route.source.ensemble)),
            }
            s.unavailable = (!problems.is_empty()).then(|| problems.join("; "));
            routes.push(s);
        }
    }
    for route in &config.active {
        for (from, to) in route.pairs() {
            routes.push(pair_status(route, from, to, meta, sessions).await);
        }
    }
    Status { routes, roles }
}

/// One member pair of an active-active route, as a row like a mirror's
/// route/target: `source` is the member whose changes it carries, `target`
/// the pair (`from->to`), and everything is read in the destination
/// member, where the pair keeps its lease and checkpoint.
async fn pair_status(
    route: &crate::config::ActiveRoute,
    from: &crate::config::Endpoint,
    to: &crate::config::Endpoint,
    meta: &str,
    sessions: &Sessions,
) -> RouteTargetStatus {
    let mut s = RouteTargetStatus::new(
        route.name(),
        from.to_string(),
        crate::config::pair_label(&from.ensemble, &to.ensemble),
        to.path.clone(),
    );
    let mut problems = Vec::new();
    match sessions.get(&to.ensemble) {
        Some(Ok(dst)) => {
            let (leases, checkpoint) = (
                leases_dir(meta, route.name(), &from.ensemble),
                checkpoint_path(meta, route.name(), &from.ensemble),
            );
            let who = format!("member {}", to.ensemble);
            read_lead(&mut s, dst, &leases, &checkpoint, &who, &mut problems).await;
            // A pair's checkpoint is also how far it applied.
            s.applied_zxid = s.checkpoint_zxid;
        }
        Some(Err(e)) => problems.push(format!("member {}: {e}", to.ensemble)),
        None => problems.push(format!("member {}: no session", to.ensemble)),
    }
    s.unavailable = (!problems.is_empty()).then(|| problems.join("; "));
    s
}

impl RouteTargetStatus {
    fn new(route: &str, source: String, target: String, target_path: String) -> Self {
        RouteTargetStatus {
            route: route.to_string(),
            source,
            target,
            target_path,
            leader: None,
            standby: Vec::new(),
            checkpoint_zxid: None,
            lag_seconds: None,
            applied_zxid: None,
            last_error: None,
            stopped: None,
            unavailable: None,
        }
    }
}

/// The lease holder (with its last error and the standbys) and the
/// checkpoint, both kept in `client`'s ensemble: a mirror's target, a
/// member pair's destination.
async fn read_lead(
    s: &mut RouteTargetStatus,
    client: &Client,
    leases: &str,
    checkpoint: &str,
    who: &str,
    problems: &mut Vec<String>,
) {
    match timed(contenders(client, leases)).await {
        Ok(mut found) if !found.is_empty() => {
            let leader = found.remove(0);
            s.leader = Some(leader.instance);
            s.last_error = leader.last_error;
            s.standby = found.into_iter().map(|l| l.instance).collect();
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("{who}: {e}")),
    }
    match timed(get_json::<Checkpoint>(client, checkpoint)).await {
        Ok(Some(c)) => {
            s.checkpoint_zxid = Some(Zxid(c.source_zxid));
            s.lag_seconds = Some(((now_ms() - c.heartbeat_ts_ms) as f64 / 1000.0).max(0.0));
        }
        Ok(None) => {}
        Err(e) => problems.push(format!("{who}: {e}")),
    }
}

/// What the members of `route` say of its role, and the route oriented
/// from its current primary (the configuration's while none answers).
async fn route_role(
    route: &crate::config::Route,
    meta: &str,
    sessions: &Sessions,
) -> (RouteRole, crate::config::Route) {
    use crate::role::{self, store, Reading};
    let readings = store::read_all(route, meta, sessions).await;
    let decision = role::decide(route, &readings, "");
    let current = decision.as_ref().map(|d| d.current.clone());
    let primary = current.as_ref().map(|c| c.primary.clone());
    let members = route
        .members()
        .map(|m| {
            let reading = &readings[&m.ensemble];
            MemberRole {
                ensemble: m.ensemble.clone(),
                role: if primary.as_deref() == Some(m.ensemble.as_str()) {
                    "primary"
                } else {
                    "mirror"
                },
                epoch: reading.record().map(|r| r.epoch),
                unavailable: match reading {
                    Reading::Unreachable(why) => Some(why.clone()),
                    _ => None,
                },
            }
        })
        .collect();
    let mut divergent_nodes = 0;
    if let Some(Some(Ok(client))) = primary.as_ref().map(|p| sessions.get(p)) {
        if let Ok(Ok(records)) =
            tokio::time::timeout(READ_TIMEOUT, role::divergent::list(client, meta, route.name())).await
        {
            divergent_nodes = records.len();
        }
    }
    let oriented = primary
        .as_ref()
        .filter(|_| decision.as_ref().is_some_and(|d| d.split.is_none()))
        .and_then(|p| route.oriented(p, meta))
        .unwrap_or_else(|| route.clone());
    let role = RouteRole {
        route: route.name().to_string(),
        epoch: current.as_ref().map(|c| c.epoch),
        primary,
        reason: current.as_ref().map(|c| c.reason.as_str()),
        since_ms: current.as_ref().map(|c| c.since_ms),
        split: decision.and_then(|d| d.split).map(|(a, b)| format!("{a} and {b}")),
        members,
        divergent_nodes,
    };
    (role, oriented)
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, zookeeper_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(READ_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
    }
}

/// A human table of `status`.
pub fn render_text(status: &Status) -> String {
    let dash = || "-".to_string();
    let mut out = format!(
        "{:<20} {:<14} {:<20} {:<20} {:>10} {:<30}\n",
        "ROUTE", "TARGET", "LEADER", "CHECKPOINT", "LAG", "LAST ERROR"
    );
    for r in &status.routes {
        let lag = r.lag_seconds.map(|l| format!("{l:.1}s")).unwrap_or_else(dash);
        let error = r
            .unavailable
            .as_ref()
            .map(|u| format!("unavailable: {u}"))
            .or_else(|| {
                r.stopped
                    .as_ref()
                    .map(|s| format!("STOPPED ({}) at {}", s.reason, s.path))
            })
            .or_else(|| r.last_error.clone())
            .unwrap_or_else(dash);
        out.push_str(&format!(
            "{:<20} {:<14} {:<20} {:<20} {:>10} {}\n",
            r.route,
            r.target,
            r.leader.clone().unwrap_or_else(|| "(none)".into()),
            r.checkpoint_zxid.map(|z| z.to_string()).unwrap_or_else(dash),
            lag,
            error
        ));
        if !r.standby.is_empty() {
            out.push_str(&format!("{:<20} {:<14} standby: {}\n", "", "", r.standby.join(", ")));
        }
    }
    out.push_str(&format!("\n{:<20} {:>6} {:<14} MEMBERS\n", "ROUTE", "EPOCH", "PRIMARY"));
    for r in &status.roles {
        let members: Vec<String> = r
            .members
            .iter()
            .map(|m| match (&m.unavailable, m.epoch) {
                (Some(why), _) => format!("{} {} (unreachable: {why})", m.ensemble, m.role),
                (None, Some(e)) if Some(e) != r.epoch => format!("{} {} (epoch {e}, behind)", m.ensemble, m.role),
                _ => format!("{} {}", m.ensemble, m.role),
            })
            .collect();
        let mut line = format!(
            "{:<20} {:>6} {:<14} {}",
            r.route,
            r.epoch.map(|e| e.to_string()).unwrap_or_else(dash),
            r.primary.clone().unwrap_or_else(dash),
            members.join(", ")
        );
        if let Some(split) = &r.split {
            line.push_str(&format!("  SPLIT: {split} claim the same epoch"));
        }
        if r.divergent_nodes > 0 {
            line.push_str(&format!("  divergent: {} node(s) archived", r.divergent_nodes));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
