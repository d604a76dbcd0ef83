//! Every rule a configuration must pass before anything connects, each
//! error naming the key and the reason.

use super::*;

pub(super) fn parse_endpoint(
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

pub(super) fn validate(config: Config) -> Result<Resolved, ConfigError> {
    validate_bridge(&config.bridge)?;
    for (name, ensemble) in &config.ensembles {
        validate_ensemble(name, ensemble)?;
    }
    validate_region(&config)?;
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let mut active: Vec<Arc<ActiveRoute>> = Vec::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let key = route_key(i, rc);
        if active.iter().any(|r| r.name() == rc.name) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("duplicate route name {:?}", rc.name),
            ));
        }
        match rc.mode {
            RouteMode::Mirror => routes.push(Arc::new(resolve_mirror(&config, i, rc, &routes, &active)?)),
            RouteMode::ActiveActive => active.push(Arc::new(resolve_active(&config, &key, rc, &routes, &active)?)),
        }
    }
    Ok(Resolved { config, routes, active })
}

/// A mirror route (source → targets), checked against the routes before it.
fn resolve_mirror(
    config: &Config,
    i: usize,
    rc: &RouteConfig,
    routes: &[Arc<Route>],
    active: &[Arc<ActiveRoute>],
) -> Result<Route, ConfigError> {
    let key = route_key(i, rc);
    if !rc.members.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.members"),
            "is for mode = \"active-active\"; a mirror route has a source and targets",
        ));
    }
    if rc.conflict() == ConflictPolicy::LastWriterWins {
        return Err(ConfigError::invalid(
            format!("{key}.conflict"),
            "\"last-writer-wins\" is for mode = \"active-active\"; a mirror's source always wins, or use target-wins or fail",
        ));
    }
    let route = resolve_route(config, i, rc, routes)?;
    let overlaps = |a: &ActiveRoute| {
        route.members().any(|e| {
            a.members
                .iter()
                .any(|m| m.ensemble == e.ensemble && (is_within(&m.path, &e.path) || is_within(&e.path, &m.path)))
        })
    };
    if let Some(a) = active.iter().find(|a| overlaps(a)) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "overlaps active-active route {:?}'s members: zkbridge never lets two routes write one subtree",
                a.name()
            ),
        ));
    }
    Ok(route)
}

/// An active-active route, checked against every subtree the routes
/// before it read or write.
fn resolve_active(
    config: &Config,
    key: &str,
    rc: &RouteConfig,
    routes: &[Arc<Route>],
    active: &[Arc<ActiveRoute>],
) -> Result<ActiveRoute, ConfigError> {
    check_route_name(key, &rc.name)?;
    if routes.iter().any(|r| r.name() == rc.name) {
        return Err(ConfigError::invalid(
            format!("{key}.name"),
            format!("duplicate route name {:?}", rc.name),
        ));
    }
    let mirror_members = routes.iter().flat_map(|r| r.members().map(move |e| (r.name(), e)));
    let active_members = active.iter().flat_map(|r| r.members.iter().map(move |e| (r.name(), e)));
    let earlier: Vec<active::Written> = mirror_members
        .chain(active_members)
        .map(|(route, endpoint)| active::Written {
            route,
            what: "member",
            endpoint,
        })
        .collect();
    active::resolve(config, key, rc, &earlier)
}

fn route_key(i: usize, rc: &RouteConfig) -> String {
    if rc.name.is_empty() {
        format!("routes[{i}]")
    } else {
        format!("routes[{i}] ({})", rc.name)
    }
}

fn check_route_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(ConfigError::invalid(
            format!("{key}.name"),
            format!("{name:?} must match [a-z0-9_-]+"),
        ));
    }
    Ok(())
}

fn validate_region(config: &Config) -> Result<(), ConfigError> {
    match &config.bridge.region {
        Some(region) if !config.ensembles.contains_key(region) => Err(ConfigError::invalid(
            "bridge.region",
            format!("unknown ensemble {region:?}"),
        )),
        _ => Ok(()),
    }
}

fn validate_bridge(bridge: &BridgeConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

fn validate_ensemble(name: &str, ensemble: &EnsembleConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Route `i`, checked on its own and against the routes before it, with its
/// endpoints parsed and filters compiled.
fn resolve_route(config: &Config, i: usize, rc: &RouteConfig, routes: &[Arc<Route>]) -> Result<Route, ConfigError> {
    let bridge = &config.bridge;
    let key = route_key(i, rc);
    check_route_name(&key, &rc.name)?;
    if routes.iter().any(|r| r.name() == rc.name) {
        return Err(ConfigError::invalid(
            format!("{key}.name"),
            format!("duplicate route name {:?}", rc.name),
        ));
    }
    if rc.source.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.source"),
            "is required (or set mode = \"active-active\" and list the route's `members`)",
        ));
    }
    let source = parse_endpoint(&rc.source, &format!("{key}.source"), &config.ensembles)?;
    let targets = resolve_targets(config, &key, rc, &source, routes)?;
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
    check_mirrored_subtrees(&key, rc, &source, &targets, routes)?;
    validate_roles(config, &key, rc, &source, &targets)?;
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
    Ok(Route {
        config: rc.clone(),
        source,
        targets,
        filter,
    })
}

/// The role keys of design §6: ACLs that parse, and that zkbridge can undo.
fn validate_roles(
    config: &Config,
    key: &str,
    rc: &RouteConfig,
    source: &Endpoint,
    targets: &[Endpoint],
) -> Result<(), ConfigError> {
    for (name, entries) in [("freeze_acl", &rc.freeze_acl), ("standby_acl", &rc.standby_acl)] {
        let Some(entries) = entries else { continue };
        if entries.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "must not be empty (leave it out for the default)",
            ));
        }
        for (j, entry) in entries.iter().enumerate() {
            parse_acl(entry).map_err(|r| ConfigError::invalid(format!("{key}.{name}[{j}]"), r))?;
        }
        // `auth::` grants the identity of the session that sets it: without
        // one, zkbridge would lock itself out of the nodes it must restore.
        if entries.iter().any(|e| e.starts_with("auth:")) {
            let members = std::iter::once(source).chain(targets);
            for member in members {
                let e = &config.ensembles[&member.ensemble];
                if e.digest.is_none() && e.digest_file.is_none() && e.sasl.is_none() {
                    return Err(ConfigError::invalid(
                        format!("{key}.{name}"),
                        format!(
                            "uses auth:: (zkbridge's own identity), but ensemble {} has none: set its digest, digest_file or sasl, or name the identity explicitly",
                            member.ensemble
                        ),
                    ));
                }
            }
        }
    }
    if rc.standby_acl.is_some() && rc.acls == AclMode::Copy {
        return Err(ConfigError::invalid(
            format!("{key}.standby_acl"),
            "cannot be used with acls = \"copy\": there the source's ACLs decide a mirror's ACLs",
        ));
    }
    if rc.failover == FailoverMode::Auto {
        return Err(ConfigError::invalid(
            format!("{key}.failover"),
            "\"auto\" (automated fail-over) is not available in this version; use \"manual\" and `zkbridge failover`",
        ));
    }
    if !rc.witnesses.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.witnesses"),
            "witnesses vote in automated fail-over (failover = \"auto\"), which is not available in this version",
        ));
    }
    Ok(())
}

/// The route's targets: parsed, not overlapping its own source, one per
/// ensemble, not overlapping another route's target.
fn resolve_targets(
    config: &Config,
    key: &str,
    rc: &RouteConfig,
    source: &Endpoint,
    routes: &[Arc<Route>],
) -> Result<Vec<Endpoint>, ConfigError> {
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
        for other in routes {
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
    Ok(targets)
}

/// The bridge must never write into a subtree it mirrors: no target of this
/// route overlaps any route's source, and its source overlaps no earlier
/// route's target.
fn check_mirrored_subtrees(
    key: &str,
    rc: &RouteConfig,
    source: &Endpoint,
    targets: &[Endpoint],
    routes: &[Arc<Route>],
) -> Result<(), ConfigError> {
    let sources = routes
        .iter()
        .map(|r| (r.name().to_string(), &r.source))
        .chain(std::iter::once((rc.name.clone(), source)));
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
    for other in routes {
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
    Ok(())
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
