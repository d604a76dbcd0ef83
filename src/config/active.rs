//! Active-active routes (design §7): every member writable. Checked here,
//! apart from mirror routes, because almost every mirror rule (one source,
//! roles, the breaker's targets) has no meaning for them and theirs (at
//! least two members, last-writer-wins, tombstones) none for mirrors.

use super::validate::parse_endpoint;
use super::*;

/// An active-active route with its members parsed and filters compiled.
#[derive(Debug, Clone)]
pub struct ActiveRoute {
    pub config: RouteConfig,
    /// Every writable member, as configured (at most one per ensemble).
    pub members: Vec<Endpoint>,
    /// Globs relative to each member's path: a relative path means the
    /// same node in every member.
    pub filter: PathFilter,
}

impl ActiveRoute {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn member(&self, ensemble: &str) -> Option<&Endpoint> {
        self.members.iter().find(|m| m.ensemble == ensemble)
    }

    /// Every ordered pair (from, to) of members: each carries its own
    /// changes, so `n` members run `n × (n − 1)` pair workers.
    pub fn pairs(&self) -> impl Iterator<Item = (&Endpoint, &Endpoint)> {
        self.members
            .iter()
            .flat_map(move |a| self.members.iter().filter(move |b| *b != a).map(move |b| (a, b)))
    }
}

/// The label a member pair carries where a mirror names its target
/// (metrics, status): `from->to`.
pub fn pair_label(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

/// Everything an earlier route may write into, for the overlap checks.
pub(super) struct Written<'a> {
    pub route: &'a str,
    pub what: &'static str,
    pub endpoint: &'a Endpoint,
}

/// Route `i` in active-active mode, checked on its own and against the
/// subtrees earlier routes read or write (`earlier`).
pub(super) fn resolve(
    config: &Config,
    key: &str,
    rc: &RouteConfig,
    earlier: &[Written],
) -> Result<ActiveRoute, ConfigError> {
    if !rc.source.is_empty() || !rc.targets.is_empty() {
        let which = if rc.source.is_empty() { "targets" } else { "source" };
        return Err(ConfigError::invalid(
            format!("{key}.{which}"),
            "cannot be used with mode = \"active-active\": every member is a source and a target; list them all in `members`",
        ));
    }
    if rc.members.len() < 2 {
        return Err(ConfigError::invalid(
            format!("{key}.members"),
            format!(
                "an active-active route needs at least 2 members (has {})",
                rc.members.len()
            ),
        ));
    }
    let meta = &config.bridge.meta_path;
    let mut members: Vec<Endpoint> = Vec::new();
    for (j, m) in rc.members.iter().enumerate() {
        let mkey = format!("{key}.members[{j}]");
        let member = parse_endpoint(m, &mkey, &config.ensembles)?;
        if members.iter().any(|o| o.ensemble == member.ensemble) {
            return Err(ConfigError::invalid(
                mkey,
                format!("route already has a member in ensemble {:?} (at most one per ensemble: origin records are kept per ensemble)", member.ensemble),
            ));
        }
        if is_within(&member.path, meta) || is_within(meta, &member.path) {
            return Err(ConfigError::invalid(
                mkey,
                format!("{member} overlaps meta_path {meta} (zkbridge's own znodes)"),
            ));
        }
        let chrooted = config.ensembles[&member.ensemble].connect.contains('/');
        if !chrooted && (is_within(&member.path, "/zookeeper") || member.path == "/") {
            return Err(ConfigError::invalid(
                mkey,
                format!("{member} holds /zookeeper, ZooKeeper's own reserved subtree, which must not be replicated"),
            ));
        }
        for other in earlier {
            let e = other.endpoint;
            if e.ensemble == member.ensemble && (is_within(&member.path, &e.path) || is_within(&e.path, &member.path)) {
                return Err(ConfigError::invalid(
                    mkey,
                    format!(
                        "{member} overlaps route {:?}'s {} {e}: zkbridge never lets two routes write one subtree",
                        other.route, other.what
                    ),
                ));
            }
        }
        members.push(member);
    }
    refuse_mirror_keys(key, rc)?;
    Ok(ActiveRoute {
        config: rc.clone(),
        members,
        filter: PathFilter::new(&rc.include, &rc.exclude, key)?,
    })
}

/// The keys whose mirror meaning an active-active route cannot honour:
/// refused, never silently ignored.
fn refuse_mirror_keys(key: &str, rc: &RouteConfig) -> Result<(), ConfigError> {
    let refuse = |k: &str, reason: &str| Err(ConfigError::invalid(format!("{key}.{k}"), reason.to_string()));
    if rc.conflict() != ConflictPolicy::LastWriterWins {
        return refuse(
            "conflict",
            "active-active routes resolve concurrent writes by \"last-writer-wins\", the only policy for them",
        );
    }
    if rc.tombstone_ttl_s == 0 {
        return refuse(
            "tombstone_ttl_s",
            "must be at least 1: without tombstones a lagging member brings deleted nodes back",
        );
    }
    match rc.ephemerals {
        EphemeralMode::Skip => {}
        EphemeralMode::Ephemeral => {
            return refuse(
                "ephemerals",
                "\"ephemeral\" (projected ephemerals) is not available for active-active routes in this version; use \"skip\"",
            )
        }
        EphemeralMode::Persistent => {
            return refuse(
                "ephemerals",
                "\"persistent\" cannot be used with active-active: a copy that outlives its session would be carried back as a write; use \"skip\"",
            )
        }
    }
    if rc.deletes == DeleteMode::Keep {
        return refuse(
            "deletes",
            "\"keep\" cannot be used with active-active: a delete kept out of one member would be undone in the member where it was made",
        );
    }
    if rc.freeze_acl.is_some() || rc.standby_acl.is_some() {
        let k = if rc.freeze_acl.is_some() {
            "freeze_acl"
        } else {
            "standby_acl"
        };
        return refuse(
            k,
            "roles (switchover, standbys) do not apply to active-active routes: every member is writable",
        );
    }
    if rc.failover != FailoverMode::Manual || !rc.witnesses.is_empty() {
        let k = if rc.witnesses.is_empty() {
            "failover"
        } else {
            "witnesses"
        };
        return refuse(
            k,
            "fail-over does not apply to active-active routes: every member is writable",
        );
    }
    Ok(())
}
