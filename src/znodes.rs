//! The znodes zkbridge keeps under `meta_path` (design §2): where each one
//! lives and the JSON it holds. Every path builder and record is here, so
//! the layout an operator's scripts depend on is read in one place.

use serde::{Deserialize, Serialize};

/// Where one route's znodes live: under `meta` (the bridge's `meta_path`),
/// for the route named `route`.
#[derive(Debug, Clone, Copy)]
pub struct RouteKey<'a> {
    pub meta: &'a str,
    pub route: &'a str,
}

/// `<meta>/ensemble-id` (every ensemble): a UUID created once.
pub fn ensemble_id_path(meta: &str) -> String {
    format!("{meta}/ensemble-id")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub version: u32,
    pub source_ensemble_id: String,
    pub source_zxid: i64,
    pub heartbeat_ts_ms: i64,
    pub bridge: String,
    pub updated_ms: i64,
}

impl Checkpoint {
    /// Whether this checkpoint moves the known position on. Units commit
    /// out of order: an older checkpoint committed after a newer one must
    /// not move it back. One of another source ensemble (a rebuilt or
    /// re-pointed source restarts zxids low) replaces it whatever its zxid.
    pub fn supersedes(&self, known: Option<&Checkpoint>) -> bool {
        known.is_none_or(|k| k.source_ensemble_id != self.source_ensemble_id || k.source_zxid < self.source_zxid)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub bridge: String,
    pub ts_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub source_zxid: i64,
    pub ts_ms: i64,
}

pub fn checkpoint_path(meta: &str, route: &str, target_ensemble: &str) -> String {
    format!("{meta}/routes/{route}/{target_ensemble}/checkpoint")
}

pub fn heartbeat_path(meta: &str, route: &str) -> String {
    format!("{meta}/heartbeats/{route}")
}

pub fn progress_path(meta: &str, route: &str, target_ensemble: &str) -> String {
    format!("{meta}/progress/{route}/{target_ensemble}")
}

pub fn kept_dir(meta: &str, route: &str, target: &str) -> String {
    format!("{meta}/routes/{route}/{target}/kept")
}

pub fn stopped_path(meta: &str, route: &str, target: &str) -> String {
    format!("{meta}/routes/{route}/{target}/stopped")
}

/// Why a route/target stopped (`conflict = "fail"`, or the delete breaker).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StopRecord {
    /// The target path that stopped it.
    pub path: String,
    pub reason: String,
    pub bridge: String,
    pub ts_ms: i64,
    /// For a trip of the delete breaker's fraction rule: the numbers it was
    /// judged on (peak, current, what the held deletes would leave, line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<crate::breaker::Verdict>,
}

/// Which member of a route is its primary, as of which epoch (design §6).
/// The highest epoch across the route's members wins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoleRecord {
    pub version: u32,
    pub epoch: u64,
    pub primary: String,
    pub since_ms: i64,
    pub by: String,
    pub reason: RoleReason,
}

/// Why the role znode holds what it holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleReason {
    Initial,
    Switchover,
    Failover,
    Auto,
}

impl RoleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleReason::Initial => "initial",
            RoleReason::Switchover => "switchover",
            RoleReason::Failover => "failover",
            RoleReason::Auto => "auto",
        }
    }
}

pub fn role_path(meta: &str, route: &str) -> String {
    format!("{meta}/routes/{route}/role")
}

/// Present while a switchover has the primary frozen; the original ACLs
/// are recorded beneath it.
pub fn frozen_path(meta: &str, route: &str) -> String {
    format!("{meta}/routes/{route}/frozen")
}

/// What the `frozen` znode says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FrozenRecord {
    /// The epoch whose primary is frozen.
    pub epoch: u64,
    pub primary: String,
    pub to: String,
    pub by: String,
    pub ts_ms: i64,
}

/// The last switchover's outcome, in the new primary: the running bridges
/// observe its window in `zkbridge_switchover_write_freeze_seconds`.
pub fn switchover_path(meta: &str, route: &str) -> String {
    format!("{meta}/routes/{route}/switchover")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchoverRecord {
    pub epoch: u64,
    pub from: String,
    pub to: String,
    pub window_ms: u64,
}

pub fn divergent_dir(meta: &str, route: &str, epoch: u64) -> String {
    format!("{meta}/routes/{route}/divergent/{epoch}")
}

/// One node of an old primary's divergent tail, archived at its demotion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DivergentRecord {
    /// Absolute path in the old primary.
    pub path: String,
    pub op: DivergentOp,
    /// The old primary's data (`null` for a delete).
    pub data_b64: Option<String>,
    pub mzxid: i64,
    pub mtime_ms: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DivergentOp {
    Create,
    Set,
    Delete,
}

pub fn leases_dir(meta: &str, route: &str, target_ensemble: &str) -> String {
    format!("{meta}/routes/{route}/{target_ensemble}/leases")
}

pub fn instances_dir(meta: &str) -> String {
    format!("{meta}/instances")
}

/// What a lease node says about the instance holding or waiting for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseRecord {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub started_ms: i64,
    /// The holder's last error on this route/target, for `zkbridge status`.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl LeaseRecord {
    pub fn for_this_process(instance: &str) -> Self {
        LeaseRecord {
            instance: instance.to_string(),
            host: hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            pid: std::process::id(),
            started_ms: now_ms(),
            last_error: None,
        }
    }
}

impl LeaseRecord {
    /// Whether two records come from the same process (its `last_error`
    /// may differ).
    pub fn same_process(&self, other: &LeaseRecord) -> bool {
        self.instance == other.instance
            && self.host == other.host
            && self.pid == other.pid
            && self.started_ms == other.started_ms
    }
}

/// `<meta>/active/<route>/records` (every member of an active-active
/// route): the origin records, one znode per relative path at the same
/// relative path under it (the route root's record is this node itself),
/// so that a member of any size is read with the same level-by-level scan
/// as its data. A record node with no data holds no record (it only
/// anchors records below it).
pub fn origin_records_root(meta: &str, route: &str) -> String {
    format!("{meta}/active/{route}/records")
}

/// `<meta>/active/<route>/conflicts` (every member): the bounded conflict
/// log of the changes that lost in this member, `c-<sequence>` nodes.
pub fn conflicts_dir(meta: &str, route: &str) -> String {
    format!("{meta}/active/{route}/conflicts")
}

/// What zkbridge last wrote at a path in one member of an active-active
/// route (design §7): the change's origin. Written in the same `multi` as
/// the data, so the record's `mzxid` equals the node's until the node is
/// changed locally.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OriginRecord {
    /// The member (ensemble name) where the change was first made.
    pub origin: String,
    /// The change's server time there. Absent in a tombstone written where
    /// the delete happened: its own `mtime` is the delete's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ms: Option<i64>,
    /// The change's zxid there (absent like `mtime_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zxid: Option<i64>,
    /// A tombstone: the change was a delete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// One change that lost under last-writer-wins, as the conflict log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictRecord {
    /// Path relative to the route's members.
    pub path: String,
    /// The member where the losing change was overwritten.
    pub member: String,
    pub lost: ConflictChange,
    pub won: ConflictChange,
    pub ts_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictChange {
    pub origin: String,
    pub mtime_ms: i64,
    pub zxid: i64,
    /// The change was a delete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A checkpoint of `source` at `zxid`, for unit tests.
#[cfg(test)]
pub(crate) fn test_checkpoint(source: &str, zxid: i64) -> Checkpoint {
    Checkpoint {
        version: 1,
        source_ensemble_id: source.into(),
        source_zxid: zxid,
        heartbeat_ts_ms: 0,
        bridge: "b".into(),
        updated_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::test_checkpoint as checkpoint;

    #[test]
    fn the_known_checkpoint_only_moves_forward_within_one_source() {
        let known = checkpoint("a", 100);
        assert!(checkpoint("a", 1).supersedes(None));
        assert!(checkpoint("a", 101).supersedes(Some(&known)));
        assert!(!checkpoint("a", 100).supersedes(Some(&known)), "the same position");
        assert!(!checkpoint("a", 99).supersedes(Some(&known)), "committed late, older");
        assert!(
            checkpoint("b", 5).supersedes(Some(&known)),
            "a rebuilt source starts low"
        );
    }
}
