//! The operator's TOML file, resolved and validated before anything connects.
//!
//! Validation happens entirely at load time so that a bad route is refused with
//! the route and the reason, rather than discovered at 3 a.m. as a mirror
//! writing into its own source. The schema is fixed by `shared/design.md` §1;
//! unknown keys are errors so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use globset::{GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::path::{self, is_within};

/// A configuration problem, always naming where it is and why it is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

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
pub struct Secret(String);

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
    pub source: String,
    pub targets: Vec<String>,
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_conflict")]
    pub conflict: ConflictPolicy,
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
}

fn default_include() -> Vec<String> {
    vec!["**".into()]
}
fn default_conflict() -> ConflictPolicy {
    ConflictPolicy::SourceWins
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

/// `ENSEMBLE:/path`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ensemble: String,
    pub path: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ensemble, self.path)
    }
}

/// A route with its endpoints parsed and its filters compiled, shared by the
/// capture task and every target worker of the route.
#[derive(Debug, Clone)]
pub struct Route {
    pub config: RouteConfig,
    pub source: Endpoint,
    pub targets: Vec<Endpoint>,
    pub filter: PathFilter,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Include/exclude globs, evaluated on paths relative to the route's source
/// path (`""` is the route root, `"a/b"` a descendant).
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: GlobSet,
    exclude: GlobSet,
    /// `meta_path` relative to the source, when the source contains it:
    /// zkbridge's own znodes are never mirrored.
    meta: Option<String>,
}

impl PathFilter {
    pub fn new(include: &[String], exclude: &[String], key: &str) -> Result<Self, ConfigError> {
        let build = |globs: &[String], which: &str| -> Result<GlobSet, ConfigError> {
            let mut set = GlobSetBuilder::new();
            for (i, glob) in globs.iter().enumerate() {
                let glob = globset::GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| {
                        ConfigError::invalid(format!("{key}.{which}[{i}]"), format!("invalid glob {glob:?}: {e}"))
                    })?;
                set.add(glob);
            }
            set.build()
                .map_err(|e| ConfigError::invalid(format!("{key}.{which}"), e.to_string()))
        };
        Ok(PathFilter {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
            meta: None,
        })
    }

    /// Whether the route manages the node at `relative`: it matches an
    /// include glob and neither it nor an ancestor matches an exclude glob
    /// (excluding `tmp` excludes what lives under it). The route root is
    /// always managed: it is the anchor every other node hangs from.
    pub fn managed(&self, relative: &str) -> bool {
        relative.is_empty() || (self.include.is_match(relative) && !self.excluded(relative))
    }

    /// Whether `relative` or one of its ancestors is excluded; scans do not
    /// descend into such nodes.
    pub fn excluded(&self, relative: &str) -> bool {
        if relative.is_empty() {
            return false;
        }
        if let Some(meta) = &self.meta {
            if is_within(relative, meta) {
                return true;
            }
        }
        if self.exclude.is_empty() {
            return false;
        }
        path::self_and_ancestors(relative)
            .filter(|prefix| !prefix.is_empty())
            .any(|prefix| self.exclude.is_match(prefix))
    }
}

/// A one-route configuration for unit tests (`a:/s` → `b:/t`), with
/// `extra` route keys.
#[cfg(test)]
pub(crate) fn test_route(extra: &str) -> Arc<Route> {
    let toml = format!(
        "[ensembles.a]\nconnect = \"h:1\"\n[ensembles.b]\nconnect = \"h:2\"\n[[routes]]\nname = \"r\"\nsource = \"a:/s\"\ntargets = [\"b:/t\"]\n{extra}"
    );
    load_str(&toml).unwrap().routes[0].clone()
}

/// The loaded configuration, ready for the bridge.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub routes: Vec<Arc<Route>>,
}

impl Resolved {
    pub fn ensemble(&self, name: &str) -> &EnsembleConfig {
        &self.config.ensembles[name]
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name() == name)
    }
}

/// Loads `path`, applies `ZKBRIDGE_…` environment overrides and validates.
pub fn load(path: &Path) -> Result<Resolved, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Parse(format!("{}: no such file", path.display())));
    }
    load_figment(Figment::from(Toml::file(path)))
}

/// Loads a configuration given as TOML text (tests, tools).
pub fn load_str(toml: &str) -> Result<Resolved, ConfigError> {
    load_figment(Figment::from(Toml::string(toml)))
}

fn load_figment(figment: Figment) -> Result<Resolved, ConfigError> {
    // Ensemble names in env keys are matched case-insensitively with `_` and
    // `-` alike, so `ZKBRIDGE_ENSEMBLES__EU_WEST__CONNECT` reaches `eu-west`.
    let names: Arc<Vec<String>> = Arc::new(
        figment
            .extract_inner::<BTreeMap<String, figment::value::Value>>("ensembles")
            .map(|m| m.into_keys().collect())
            .unwrap_or_default(),
    );
    let env = Env::prefixed("ZKBRIDGE_").split("__").map(move |key| {
        let key = key.as_str().to_lowercase();
        let mut parts: Vec<String> = key.split('.').map(str::to_string).collect();
        if parts.len() >= 2 && parts[0] == "ensembles" {
            let wanted = parts[1].replace('_', "-").to_lowercase();
            if let Some(name) = names.iter().find(|n| n.replace('_', "-").to_lowercase() == wanted) {
                parts[1] = name.clone();
            }
        }
        parts.join(".").into()
    });
    let config: Config = figment
        .merge(env)
        .extract()
        .map_err(|e| ConfigError::Parse(describe_figment(e)))?;
    validate(config)
}

fn describe_figment(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let kind = e.kind.to_string();
            match (&e.metadata, key.is_empty()) {
                (Some(md), false) => format!("{key}: {kind} (in {})", md.name),
                (Some(md), true) => format!("{kind} (in {})", md.name),
                (None, false) => format!("{key}: {kind}"),
                (None, true) => kind,
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn parse_endpoint(
    value: &str,
    key: &str,
    ensembles: &BTreeMap<String, EnsembleConfig>,
) -> Result<Endpoint, ConfigError> {
    let (ensemble, path) = value
        .split_once(':')
        .ok_or_else(|| ConfigError::invalid(key, format!("{value:?} is not ENSEMBLE:/path")))?;
    if !ensembles.contains_key(ensemble) {
        return Err(ConfigError::invalid(
            key,
            format!("unknown ensemble {ensemble:?} (not under [ensembles])"),
        ));
    }
    path::validate(path).map_err(|reason| ConfigError::invalid(key, format!("invalid ZooKeeper path: {reason}")))?;
    Ok(Endpoint {
        ensemble: ensemble.into(),
        path: path.into(),
    })
}

fn validate(config: Config) -> Result<Resolved, ConfigError> {
    let bridge = &config.bridge;
    path::validate(&bridge.meta_path).map_err(|r| ConfigError::invalid("bridge.meta_path", r))?;
    if bridge.meta_path == "/" {
        return Err(ConfigError::invalid("bridge.meta_path", "must not be the root"));
    }
    if bridge.id.is_empty() {
        return Err(ConfigError::invalid("bridge.id", "must not be empty"));
    }
    if bridge.id.contains('/') || bridge.id.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            "bridge.id",
            "must not contain '/' or control characters (it names znodes)",
        ));
    }
    bridge
        .listen
        .parse::<std::net::SocketAddr>()
        .map_err(|e| ConfigError::invalid("bridge.listen", format!("{:?} is not HOST:PORT: {e}", bridge.listen)))?;
    if bridge.heartbeat_interval_ms == 0 {
        return Err(ConfigError::invalid("bridge.heartbeat_interval_ms", "must be positive"));
    }
    if bridge.verify_reads_per_s == 0 {
        return Err(ConfigError::invalid(
            "bridge.verify_reads_per_s",
            "must be positive (turn passes off per route with verify_interval_s = 0)",
        ));
    }
    if bridge.batch_max_ops == 0 || bridge.max_in_flight == 0 || bridge.max_pending_paths == 0 {
        return Err(ConfigError::invalid(
            "bridge",
            "batch_max_ops, max_in_flight and max_pending_paths must be positive",
        ));
    }
    if !(1024..=1_000_000).contains(&bridge.batch_max_bytes) {
        return Err(ConfigError::invalid(
            "bridge.batch_max_bytes",
            "must be between 1024 and 1000000 (a multi over jute.maxbuffer is dropped by the server)",
        ));
    }
    for (name, ensemble) in &config.ensembles {
        let key = format!("ensembles.{name}");
        if ensemble.connect.trim().is_empty() {
            return Err(ConfigError::invalid(format!("{key}.connect"), "must not be empty"));
        }
        if let Some((_, chroot)) = ensemble.connect.split_once('/') {
            path::validate(&format!("/{chroot}"))
                .map_err(|r| ConfigError::invalid(format!("{key}.connect"), format!("invalid chroot: {r}")))?;
        }
        if ensemble.session_timeout_ms < 1000 {
            return Err(ConfigError::invalid(
                format!("{key}.session_timeout_ms"),
                "must be at least 1000",
            ));
        }
        if ensemble.digest.is_some() && ensemble.digest_file.is_some() {
            return Err(ConfigError::invalid(key, "set digest or digest_file, not both"));
        }
        if let Some(tls) = &ensemble.tls {
            readable_file(&tls.ca, &format!("{key}.tls.ca"))?;
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(k)) => {
                    readable_file(cert, &format!("{key}.tls.cert"))?;
                    private_file(k, &format!("{key}.tls.key"))?;
                }
                (None, None) => {}
                _ => {
                    return Err(ConfigError::invalid(
                        format!("{key}.tls"),
                        "set both cert and key (mutual TLS) or neither",
                    ))
                }
            }
        }
        if let Some(sasl) = &ensemble.sasl {
            if sasl.username.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.sasl.username"),
                    "must not be empty",
                ));
            }
            if sasl.password.is_some() == sasl.password_file.is_some() {
                return Err(ConfigError::invalid(
                    format!("{key}.sasl"),
                    "set exactly one of password and password_file",
                ));
            }
        }
        if ensemble.max_request_bytes < 64 * 1024 {
            return Err(ConfigError::invalid(
                format!("{key}.max_request_bytes"),
                "must be at least 65536 (set it to the servers' jute.maxbuffer)",
            ));
        }
        if ensemble.acl.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.acl"),
                "must not be empty (ZooKeeper refuses a node without ACL)",
            ));
        }
        for (i, entry) in ensemble.acl.iter().enumerate() {
            parse_acl(entry).map_err(|r| ConfigError::invalid(format!("{key}.acl[{i}]"), r))?;
        }
        if let Some(digest) = &ensemble.digest {
            if !digest.expose().contains(':') {
                return Err(ConfigError::invalid(format!("{key}.digest"), "must be user:secret"));
            }
        }
        if let Some(file) = &ensemble.digest_file {
            read_digest_file(file, &format!("{key}.digest_file"))?;
        }
        if let Some(file) = ensemble.sasl.as_ref().and_then(|s| s.password_file.as_ref()) {
            private_file(file, &format!("{key}.sasl.password_file"))?;
        }
    }

    let mut routes: Vec<Arc<Route>> = Vec::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let key = if rc.name.is_empty() {
            format!("routes[{i}]")
        } else {
            format!("routes[{i}] ({})", rc.name)
        };
        if rc.name.is_empty()
            || !rc
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("{:?} must match [a-z0-9_-]+", rc.name),
            ));
        }
        if routes.iter().any(|r| r.name() == rc.name) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("duplicate route name {:?}", rc.name),
            ));
        }
        let source = parse_endpoint(&rc.source, &format!("{key}.source"), &config.ensembles)?;
        if rc.targets.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.targets"),
                "needs at least one target",
            ));
        }
        let mut targets: Vec<Endpoint> = Vec::new();
        for (j, t) in rc.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{j}]");
            let target = parse_endpoint(t, &tkey, &config.ensembles)?;
            if target.ensemble == source.ensemble {
                if target.path == source.path {
                    return Err(ConfigError::invalid(tkey, "target is the route's own source"));
                }
                if is_within(&target.path, &source.path) {
                    return Err(ConfigError::invalid(
                        tkey,
                        format!("target is inside the route's source {source}"),
                    ));
                }
                if is_within(&source.path, &target.path) {
                    return Err(ConfigError::invalid(
                        tkey,
                        format!("target contains the route's source {source}"),
                    ));
                }
            }
            if targets.iter().any(|other| other.ensemble == target.ensemble) {
                return Err(ConfigError::invalid(
                    tkey,
                    format!("route already has a target in ensemble {:?} (one target per ensemble: checkpoints are kept per target ensemble)", target.ensemble),
                ));
            }
            for other in &routes {
                for ot in &other.targets {
                    if ot.ensemble == target.ensemble
                        && (is_within(&target.path, &ot.path) || is_within(&ot.path, &target.path))
                    {
                        return Err(ConfigError::invalid(
                            tkey,
                            format!("target {target} overlaps route {:?}'s target {ot}", other.name()),
                        ));
                    }
                }
            }
            targets.push(target);
        }
        for (what, ep) in std::iter::once(("source", &source)).chain(targets.iter().map(|t| ("target", t))) {
            if is_within(&ep.path, &bridge.meta_path) {
                return Err(ConfigError::invalid(
                    format!("{key}.{what}"),
                    format!("{ep} is inside meta_path {} (zkbridge's own znodes)", bridge.meta_path),
                ));
            }
        }
        for (j, target) in targets.iter().enumerate() {
            if is_within(&bridge.meta_path, &target.path) {
                return Err(ConfigError::invalid(
                    format!("{key}.targets[{j}]"),
                    format!(
                        "{target} contains meta_path {}; deletes there would remove zkbridge's own znodes",
                        bridge.meta_path
                    ),
                ));
            }
        }
        // The bridge must never write into a subtree it mirrors: a target
        // overlapping any route's source would feed its own writes back in.
        let sources = routes
            .iter()
            .map(|r| (r.name().to_string(), &r.source))
            .chain(std::iter::once((rc.name.clone(), &source)));
        for (other, src) in sources {
            for (j, target) in targets.iter().enumerate() {
                let overlaps = is_within(&target.path, &src.path) || is_within(&src.path, &target.path);
                if target.ensemble == src.ensemble && overlaps && other != rc.name {
                    return Err(ConfigError::invalid(
                        format!("{key}.targets[{j}]"),
                        format!("target {target} overlaps route {other:?}'s source {src}: zkbridge never writes into a subtree it mirrors"),
                    ));
                }
            }
        }
        for other in &routes {
            for ot in &other.targets {
                if ot.ensemble == source.ensemble
                    && (is_within(&source.path, &ot.path) || is_within(&ot.path, &source.path))
                {
                    return Err(ConfigError::invalid(
                        format!("{key}.source"),
                        format!("source {source} overlaps route {:?}'s target {ot}: zkbridge never writes into a subtree it mirrors", other.name()),
                    ));
                }
            }
        }
        if !(rc.max_delete_fraction > 0.0 && rc.max_delete_fraction <= 1.0) {
            return Err(ConfigError::invalid(
                format!("{key}.max_delete_fraction"),
                "must be in (0, 1]",
            ));
        }
        for (what, ep) in std::iter::once(("source", &source)).chain(targets.iter().map(|t| ("targets", t))) {
            let chrooted = config.ensembles[&ep.ensemble].connect.contains('/');
            if !chrooted && (is_within(&ep.path, "/zookeeper") || ep.path == "/") {
                return Err(ConfigError::invalid(
                    format!("{key}.{what}"),
                    format!("{ep} holds /zookeeper, ZooKeeper's own reserved subtree (quotas, config), which must not be mirrored"),
                ));
            }
        }
        let mut filter = PathFilter::new(&rc.include, &rc.exclude, &key)?;
        if is_within(&bridge.meta_path, &source.path) {
            filter.meta = path::relative(&source.path, &bridge.meta_path).map(str::to_string);
        }
        routes.push(Arc::new(Route {
            config: rc.clone(),
            source,
            targets,
            filter,
        }));
    }
    Ok(Resolved { config, routes })
}

fn readable_file(path: &str, key: &str) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::invalid(key, format!("{path}: {e}")))
}

/// Checks that a secret (key, password) file exists and that only its
/// owner may read it: a world-readable secret is refused, not used.
fn private_file(path: &str, key: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::invalid(key, format!("{path}: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::invalid(
            key,
            format!("{path} is readable by group or others; chmod 600 it"),
        ));
    }
    readable_file(path, key)
}

/// Reads a secret from a file that only its owner may read.
pub fn read_secret_file(path: &str, key: &str) -> Result<Secret, ConfigError> {
    private_file(path, key)?;
    let secret = std::fs::read_to_string(path).map_err(|e| ConfigError::invalid(key, format!("{path}: {e}")))?;
    Ok(Secret(secret.trim().to_string()))
}

/// Reads a digest secret from a file that only its owner may read.
pub fn read_digest_file(path: &str, key: &str) -> Result<Secret, ConfigError> {
    let secret = read_secret_file(path, key)?;
    if !secret.expose().contains(':') {
        return Err(ConfigError::invalid(key, format!("{path} must hold user:secret")));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [ensembles.a]
        connect = "127.0.0.1:2181"
        [ensembles.b]
        connect = "127.0.0.1:2182"
    "#;

    fn route(extra: &str) -> String {
        format!("{BASE}\n[[routes]]\n{extra}")
    }

    fn err(toml: &str) -> String {
        load_str(toml).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn accepts_a_minimal_route_with_defaults() {
        let r = load_str(&route(
            r#"name = "r1"
source = "a:/config"
targets = ["b:/config"]"#,
        ))
        .unwrap();
        let route = &r.routes[0];
        assert_eq!(
            route.source,
            Endpoint {
                ensemble: "a".into(),
                path: "/config".into()
            }
        );
        assert_eq!(route.config.conflict, ConflictPolicy::SourceWins);
        assert_eq!(r.config.bridge.meta_path, "/zkbridge");
    }

    #[test]
    fn filters_are_relative_and_respect_separators() {
        let f = PathFilter::new(&["**".into()], &["locks/**".into(), "tmp".into()], "r").unwrap();
        assert!(f.managed(""));
        assert!(f.managed("a/b"));
        assert!(!f.managed("tmp"));
        assert!(!f.managed("tmp/inner"));
        assert!(f.managed("tmp2"));
        assert!(!f.managed("locks/x/y"));
        let only = PathFilter::new(&["app/*".into()], &[], "r").unwrap();
        assert!(only.managed("app/x"));
        assert!(!only.managed("app/x/y"));
    }

    #[test]
    fn rejections_name_the_route_and_reason() {
        let cases = [
            (
                r#"name = "r1"
source = "a:/c"
targets = ["a:/c"]"#,
                "routes[0] (r1).targets[0]: target is the route's own source",
            ),
            (
                r#"name = "r1"
source = "a:/c"
targets = ["a:/c/m"]"#,
                "inside the route's source",
            ),
            (
                r#"name = "r1"
source = "a:/c/d"
targets = ["a:/c"]"#,
                "contains the route's source",
            ),
            (
                r#"name = "r1"
source = "zz:/c"
targets = ["b:/c"]"#,
                "routes[0] (r1).source: unknown ensemble \"zz\"",
            ),
            (
                r#"name = "r1"
source = "a:c"
targets = ["b:/c"]"#,
                "invalid ZooKeeper path",
            ),
            (
                r#"name = "r1"
source = "a:/c/"
targets = ["b:/c"]"#,
                "ends with '/'",
            ),
            (
                r#"name = "r1"
source = "a:/zkbridge/x"
targets = ["b:/c"]"#,
                "inside meta_path",
            ),
            (
                r#"name = "R!"
source = "a:/c"
targets = ["b:/c"]"#,
                "must match [a-z0-9_-]+",
            ),
        ];
        for (body, want) in cases {
            let got = err(&route(body));
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }

    #[test]
    fn rejects_duplicates_and_nested_targets_across_routes() {
        let two = format!(
            "{BASE}\n[[routes]]\nname = \"r1\"\nsource = \"a:/x\"\ntargets = [\"b:/m\"]\n[[routes]]\nname = \"r1\"\nsource = \"a:/y\"\ntargets = [\"b:/n\"]"
        );
        assert!(err(&two).contains("duplicate route name"));
        let nested = format!(
            "{BASE}\n[[routes]]\nname = \"r1\"\nsource = \"a:/x\"\ntargets = [\"b:/m\"]\n[[routes]]\nname = \"r2\"\nsource = \"a:/y\"\ntargets = [\"b:/m/n\"]"
        );
        let e = err(&nested);
        assert!(
            e.contains("routes[1] (r2).targets[0]") && e.contains("overlaps route \"r1\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{BASE}\n[bridge]\nlisten_addr = \"x\""));
        assert!(e.contains("listen_addr"), "{e}");
        let e = err(&route(
            "name = \"r\"\nsource = \"a:/c\"\ntargets = [\"b:/c\"]\nconflcit = \"fail\"",
        ));
        assert!(e.contains("conflcit"), "{e}");
    }

    #[test]
    fn digest_is_redacted_when_printed() {
        let r = load_str(&format!(
            "{BASE}\n[ensembles.c]\nconnect = \"h:1\"\ndigest = \"alice:s3cret\""
        ))
        .unwrap();
        let shown = toml_string(&r.config);
        assert!(!shown.contains("s3cret"));
        assert!(shown.contains("alice:<redacted>"));
    }

    /// Whatever formats the configuration — check-config, a log line, an
    /// error, a panic message with `{:?}` — shows no secret.
    #[test]
    fn secrets_never_format() {
        let r = load_str(&format!(
            "{BASE}\n[ensembles.c]\nconnect = \"h:1\"\ndigest = \"alice:s3cret\"\n\
             [ensembles.d]\nconnect = \"h:2\"\nsasl = {{ username = \"bob\", password = \"hunter2\" }}"
        ))
        .unwrap();
        for shown in [toml_string(&r.config), format!("{r:?}"), format!("{:#?}", r.config)] {
            assert!(!shown.contains("s3cret") && !shown.contains("hunter2"), "{shown}");
        }
        assert_eq!(r.ensemble("c").digest.as_ref().unwrap().expose(), "alice:s3cret");
    }

    #[test]
    fn acl_entries_parse_and_name_the_bad_one() {
        let ok = load_str(&format!(
            "{BASE}\n[ensembles.c]\nconnect = \"h:1\"\nacl = [\"auth::cdrwa\", \"world:anyone:r\", \"digest:u:abc=:rw\"]"
        ))
        .unwrap();
        let acl = ok.ensemble("c").acl();
        assert_eq!(
            acl.iter().map(format_acl).collect::<Vec<_>>(),
            ["auth::cdrwa", "world:anyone:r", "digest:u:abc=:rw"]
        );
        for (bad, why) in [
            ("world:anyone:rx", "permission 'x'"),
            ("nope:x:r", "unknown scheme"),
            ("world", "not scheme:id:perms"),
        ] {
            let e = load_str(&format!(
                "{BASE}\n[ensembles.c]\nconnect = \"h:1\"\nacl = [\"world:anyone:r\", \"{bad}\"]"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("ensembles.c.acl[1]: ") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_reserved_zookeeper_subtree_is_never_mirrored() {
        for (source, target) in [
            ("a:/zookeeper", "b:/x"),
            ("a:/x", "b:/zookeeper/quota"),
            ("a:/", "b:/x"),
        ] {
            let e = err(&route(&format!(
                "name = \"r\"\nsource = \"{source}\"\ntargets = [\"{target}\"]"
            )));
            assert!(e.contains("/zookeeper"), "{e}");
        }
    }

    fn toml_string(c: &Config) -> String {
        serde_json::to_string(c).unwrap()
    }
}

/// Property: whatever value lands on whatever key, loading never panics,
/// and a refusal names the key it is about.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::load_str;

    /// Every key of the schema, as `(table, key)`; `table` is where it goes.
    const KEYS: &[(&str, &str)] = &[
        ("bridge", "id"),
        ("bridge", "listen"),
        ("bridge", "meta_path"),
        ("bridge", "heartbeat_interval_ms"),
        ("bridge", "max_pending_paths"),
        ("bridge", "batch_max_ops"),
        ("bridge", "batch_max_bytes"),
        ("bridge", "max_in_flight"),
        ("bridge", "balance"),
        ("bridge", "ready_max_lag_s"),
        ("bridge", "verify_reads_per_s"),
        ("ensembles.a", "connect"),
        ("ensembles.a", "session_timeout_ms"),
        ("ensembles.a", "digest"),
        ("ensembles.a", "acl"),
        ("routes", "name"),
        ("routes", "source"),
        ("routes", "targets"),
        ("routes", "include"),
        ("routes", "exclude"),
        ("routes", "conflict"),
        ("routes", "max_delete_fraction"),
        ("routes", "delete_window_s"),
        ("routes", "allow_root_delete"),
        ("routes", "verify_interval_s"),
        ("routes", "ephemerals"),
        ("routes", "deletes"),
        ("routes", "acls"),
    ];

    fn value() -> impl Strategy<Value = String> {
        let text = prop_oneof![
            Just(String::new()),
            Just("/".to_string()),
            Just("a:/x/../y".to_string()),
            Just("a:/x/".to_string()),
            Just("b:/zookeeper".to_string()),
            Just("b:/with space/\u{e9}t\u{e9}".to_string()),
            Just("[".to_string()),
            Just("world:anyone:q".to_string()),
            Just("127.0.0.1:99999".to_string()),
            "[a-z:/\\.\\* \u{e9}\u{65e5}-]{0,12}",
        ];
        prop_oneof![
            text.clone().prop_map(|t| format!("{t:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            (-2.0f64..3.0).prop_map(|f| format!("{f:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            proptest::collection::vec(text, 0..3).prop_map(|v| format!("{v:?}")),
        ]
    }

    fn config_with(table: &str, key: &str, value: &str) -> String {
        let mut bridge = String::from("[bridge]\n");
        let mut ensemble = String::from("[ensembles.a]\nconnect = \"h:1\"\n");
        let mut route = vec![
            ("name", "\"r\"".to_string()),
            ("source", "\"a:/app\"".to_string()),
            ("targets", "[\"b:/app\"]".to_string()),
        ];
        match table {
            "bridge" => bridge.push_str(&format!("{key} = {value}\n")),
            "ensembles.a" if key == "connect" => ensemble = format!("[ensembles.a]\nconnect = {value}\n"),
            "ensembles.a" => ensemble.push_str(&format!("{key} = {value}\n")),
            _ => match route.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value.to_string(),
                None => route.push((key, value.to_string())),
            },
        }
        let route: String = route.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        format!("{bridge}{ensemble}[ensembles.b]\nconnect = \"h:2\"\n[[routes]]\n{route}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn loading_never_panics_and_names_the_key((table, key) in proptest::sample::select(KEYS), value in value()) {
            let toml = config_with(table, key, &value);
            if let Err(e) = load_str(&toml) {
                let message = e.to_string();
                prop_assert!(
                    message.contains(key),
                    "setting {table}.{key} = {value} was refused without naming it: {message}"
                );
            }
        }
    }
}
