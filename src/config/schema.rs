//! The schema of the TOML file (design §1): every key, its default, and the
//! types that keep secrets out of every printout.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub bridge: BridgeConfig,
    #[serde(default)]
    pub ensembles: BTreeMap<String, EnsembleConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub id: String,
    pub listen: String,
    pub meta_path: String,
    pub heartbeat_interval_ms: u64,
    /// Dirty paths a target may accumulate before its worker stops tracking
    /// them one by one and falls back to a full resync scan (bounded memory).
    pub max_pending_paths: usize,
    /// Upper bound on ops in one `multi` write.
    pub batch_max_ops: usize,
    /// Upper bound on payload bytes in one `multi` write; well under the
    /// server's `jute.maxbuffer` (1 MiB) so a batch is never dropped whole.
    pub batch_max_bytes: usize,
    /// `multi` requests a worker keeps in flight while copying.
    pub max_in_flight: usize,
    /// Hand surplus leases to other instances so route/targets spread out.
    pub balance: bool,
    /// `/readyz` turns 503 when a route/target this instance leads lags
    /// more than this many seconds.
    pub ready_max_lag_s: u64,
    /// Read rate of an anti-entropy pass, per route/target, in nodes per
    /// second (each side), so verification never crowds out clients.
    pub verify_reads_per_s: u32,
    /// The ensemble this instance runs beside (design §6; needed by
    /// automated fail-over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            id: default_bridge_id(),
            listen: "127.0.0.1:9717".into(),
            meta_path: "/zkbridge".into(),
            heartbeat_interval_ms: 1000,
            max_pending_paths: 100_000,
            batch_max_ops: 200,
            batch_max_bytes: 512 * 1024,
            max_in_flight: 16,
            balance: true,
            ready_max_lag_s: 60,
            verify_reads_per_s: 10_000,
            region: None,
        }
    }
}

fn default_bridge_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "zkbridge".into())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// `host:port,host:port[/chroot]`
    pub connect: String,
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// `user:secret` for ZooKeeper digest auth.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub digest: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// SASL DIGEST-MD5 login, for servers that require SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslConfig>,
    /// ACL of every node zkbridge creates in this ensemble — mirrored nodes
    /// of `acls = "target-default"` routes and its own znodes — as ZooKeeper
    /// `scheme:id:perms` entries. Open by default, as ZooKeeper's own CLI;
    /// `["auth::cdrwa", "world:anyone:r"]` lets only zkbridge's identity write.
    #[serde(default = "default_acl")]
    pub acl: Vec<String>,
    /// The largest request this ensemble's servers accept: their
    /// `jute.maxbuffer` (ZooKeeper's default is 1 MiB − 1). A server drops
    /// the connection on a larger one, so a node too large for it is held
    /// back, reported and kept pending instead of being sent.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_max_request_bytes() -> usize {
    0xfffff
}

fn default_session_timeout_ms() -> u64 {
    10_000
}

fn default_acl() -> Vec<String> {
    vec!["world:anyone:cdrwa".into()]
}

impl EnsembleConfig {
    /// The parsed `acl` (validated at load, so this cannot fail afterwards).
    pub fn acl(&self) -> Vec<zookeeper_client::Acl> {
        self.acl
            .iter()
            .map(|entry| parse_acl(entry).expect("acl validated at load"))
            .collect()
    }
}

/// Parses one `scheme:id:perms` ACL entry; `perms` is a subset of `cdrwa`.
/// The id may itself hold colons (`digest:user:hash`), so the scheme ends at
/// the first colon and the permissions start after the last.
pub fn parse_acl(entry: &str) -> Result<zookeeper_client::Acl, String> {
    use zookeeper_client::{Acl, AuthId, Permission};
    let (scheme, rest) = entry
        .split_once(':')
        .ok_or_else(|| format!("{entry:?} is not scheme:id:perms"))?;
    let (id, perms) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{entry:?} is not scheme:id:perms"))?;
    if !["world", "auth", "digest", "ip", "x509", "sasl", "super"].contains(&scheme) {
        return Err(format!("{entry:?}: unknown scheme {scheme:?}"));
    }
    let mut permission = Permission::NONE;
    for c in perms.chars() {
        permission = permission
            | match c {
                'c' => Permission::CREATE,
                'd' => Permission::DELETE,
                'r' => Permission::READ,
                'w' => Permission::WRITE,
                'a' => Permission::ADMIN,
                other => return Err(format!("{entry:?}: permission {other:?} is not one of c, d, r, w, a")),
            };
    }
    if permission == Permission::NONE {
        return Err(format!("{entry:?} grants no permission"));
    }
    // The ids ZooKeeper would refuse (InvalidACL) at every create.
    match scheme {
        "world" if id != "anyone" => return Err(format!("{entry:?}: the world scheme's only id is \"anyone\"")),
        "auth" if !id.is_empty() => return Err(format!("{entry:?}: the auth scheme takes no id (auth::perms)")),
        "digest" if !id.contains(':') => {
            return Err(format!("{entry:?}: a digest id is user:base64(sha1(user:password))"))
        }
        "ip" | "x509" | "sasl" | "super" | "digest" if id.is_empty() => return Err(format!("{entry:?}: needs an id")),
        _ => {}
    }
    Ok(Acl::new(permission, AuthId::new(scheme, id)))
}

/// Prints an ACL the way it is configured (`scheme:id:perms`).
pub fn format_acl(acl: &zookeeper_client::Acl) -> String {
    use zookeeper_client::Permission;
    let perms: String = [
        ('c', Permission::CREATE),
        ('d', Permission::DELETE),
        ('r', Permission::READ),
        ('w', Permission::WRITE),
        ('a', Permission::ADMIN),
    ]
    .iter()
    .filter(|(_, p)| acl.permission().has(*p))
    .map(|(c, _)| *c)
    .collect();
    format!("{}:{}:{perms}", acl.scheme(), acl.id())
}

/// SASL DIGEST-MD5 credentials (the server's `Server` JAAS section).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redact_all")]
    pub password: Option<Secret>,
    /// File holding the password; refused if group or others can read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

fn redact_all<S: serde::Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// A password or digest secret. It cannot be printed — `Debug` and
/// `Display` show `<redacted>` — so no log line, error or panic message
/// built from the configuration carries it; `expose` is for the one place
/// that hands it to ZooKeeper.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn redact<S: serde::Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => match v.expose().split_once(':') {
            Some((user, _)) => s.serialize_str(&format!("{user}:<redacted>")),
            None => s.serialize_str("<redacted>"),
        },
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the servers' certificates chain to.
    pub ca: String,
    /// PEM client certificate, for servers that require mutual TLS.
    pub cert: Option<String>,
    /// PEM private key of `cert`; refused if group or others can read it.
    pub key: Option<String>,
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    SourceWins,
    TargetWins,
    Fail,
    /// Active-active routes only (design §7): the change with the greatest
    /// (origin mtime, origin member) wins in every member.
    LastWriterWins,
}

/// Whether a route mirrors one source into targets or keeps every member
/// writable (design §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteMode {
    #[default]
    Mirror,
    ActiveActive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EphemeralMode {
    Skip,
    Persistent,
    Ephemeral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteMode {
    Propagate,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclMode {
    TargetDefault,
    Copy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default)]
    pub mode: RouteMode,
    /// Mirror routes: where changes are made.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Active-active routes: every writable member (design §7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Active-active routes: how long a delete's tombstone is kept.
    #[serde(default = "default_tombstone_ttl_s")]
    pub tombstone_ttl_s: u64,
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Unset: `source-wins` for a mirror, `last-writer-wins` for an
    /// active-active route (see [`RouteConfig::conflict`]).
    #[serde(default, rename = "conflict", skip_serializing_if = "Option::is_none")]
    pub conflict_policy: Option<ConflictPolicy>,
    #[serde(default = "default_max_delete_fraction")]
    pub max_delete_fraction: f64,
    #[serde(default = "default_delete_window_s")]
    pub delete_window_s: u64,
    #[serde(default)]
    pub allow_root_delete: bool,
    #[serde(default = "default_verify_interval_s")]
    pub verify_interval_s: u64,
    #[serde(default = "default_ephemerals")]
    pub ephemerals: EphemeralMode,
    #[serde(default = "default_deletes")]
    pub deletes: DeleteMode,
    #[serde(default = "default_acls")]
    pub acls: AclMode,
    /// What a switchover's freeze sets on the primary's nodes (design §6).
    /// Unset: read for everyone and all rights for zkbridge's own identity,
    /// which `switchover` then requires on every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_acl: Option<Vec<String>>,
    /// The ACL of mirrored nodes in mirrors, so that a client in a standby
    /// region cannot write by mistake. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_acl: Option<Vec<String>>,
    #[serde(default)]
    pub failover: FailoverMode,
    #[serde(default = "default_failover_after_s")]
    pub failover_after_s: u64,
    /// Members that hold only `meta_path` and vote (automated fail-over).
    #[serde(default)]
    pub witnesses: Vec<String>,
}

/// Who moves a route's primary when it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverMode {
    /// An operator, with `zkbridge failover`.
    #[default]
    Manual,
    /// The members' majority (design §6, automated fail-over).
    Auto,
}

/// The freeze ACL when a route sets none.
pub const DEFAULT_FREEZE_ACL: [&str; 2] = ["world:anyone:r", "auth::cdrwa"];

fn default_failover_after_s() -> u64 {
    30
}

impl RouteConfig {
    /// The route's conflict policy, its mode's default when unset.
    pub fn conflict(&self) -> ConflictPolicy {
        self.conflict_policy.unwrap_or(match self.mode {
            RouteMode::Mirror => ConflictPolicy::SourceWins,
            RouteMode::ActiveActive => ConflictPolicy::LastWriterWins,
        })
    }

    /// The parsed freeze ACL (validated at load).
    pub fn freeze_acl(&self) -> Vec<zookeeper_client::Acl> {
        match &self.freeze_acl {
            Some(entries) => entries
                .iter()
                .map(|e| parse_acl(e).expect("validated at load"))
                .collect(),
            None => DEFAULT_FREEZE_ACL
                .iter()
                .map(|e| parse_acl(e).expect("a valid default"))
                .collect(),
        }
    }

    /// The parsed standby ACL, if the route sets one (validated at load).
    pub fn standby_acl(&self) -> Option<Vec<zookeeper_client::Acl>> {
        self.standby_acl.as_ref().map(|entries| {
            entries
                .iter()
                .map(|e| parse_acl(e).expect("validated at load"))
                .collect()
        })
    }
}

fn default_include() -> Vec<String> {
    vec!["**".into()]
}
fn default_tombstone_ttl_s() -> u64 {
    86_400
}
fn default_max_delete_fraction() -> f64 {
    0.5
}
fn default_delete_window_s() -> u64 {
    60
}
fn default_verify_interval_s() -> u64 {
    3600
}
fn default_ephemerals() -> EphemeralMode {
    EphemeralMode::Skip
}
fn default_deletes() -> DeleteMode {
    DeleteMode::Propagate
}
fn default_acls() -> AclMode {
    AclMode::TargetDefault
}
