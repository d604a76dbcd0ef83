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

mod active;
mod route;
mod schema;
mod validate;

pub use active::{pair_label, ActiveRoute};
pub use route::{Endpoint, PathFilter, Route};
pub use schema::*;
pub use validate::{read_digest_file, read_secret_file};

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
    /// Mirror routes (source → targets).
    pub routes: Vec<Arc<Route>>,
    /// Active-active routes (design §7).
    pub active: Vec<Arc<ActiveRoute>>,
}

impl Resolved {
    pub fn ensemble(&self, name: &str) -> &EnsembleConfig {
        &self.config.ensembles[name]
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name() == name)
    }

    pub fn active_route(&self, name: &str) -> Option<&Arc<ActiveRoute>> {
        self.active.iter().find(|r| r.name() == name)
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
    validate::validate(config)
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
        assert_eq!(route.config.conflict(), ConflictPolicy::SourceWins);
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
    fn an_active_active_route_lists_its_members_and_defaults_to_last_writer_wins() {
        let r = load_str(&route(
            r#"name = "registry"
mode = "active-active"
members = ["a:/services", "b:/mirror/services"]"#,
        ))
        .unwrap();
        assert!(r.routes.is_empty(), "not a mirror route");
        let active = r.active_route("registry").expect("resolved");
        assert_eq!(active.config.conflict(), ConflictPolicy::LastWriterWins);
        assert_eq!(active.config.tombstone_ttl_s, 86_400);
        let pairs: Vec<String> = active
            .pairs()
            .map(|(a, b)| pair_label(&a.ensemble, &b.ensemble))
            .collect();
        assert_eq!(pairs, ["a->b", "b->a"]);
    }

    #[test]
    fn active_active_rejections_name_the_key_and_reason() {
        let aa = |extra: &str| route(&format!("name = \"aa\"\nmode = \"active-active\"\n{extra}"));
        let cases = [
            (
                aa(r#"members = ["a:/s"]"#),
                "routes[0] (aa).members: an active-active route needs at least 2 members (has 1)",
            ),
            (
                aa(r#"members = ["a:/s", "a:/t"]"#),
                "routes[0] (aa).members[1]: route already has a member in ensemble \"a\"",
            ),
            (
                aa("source = \"a:/s\"\nmembers = [\"a:/s\", \"b:/s\"]"),
                "routes[0] (aa).source: cannot be used with mode = \"active-active\"",
            ),
            (
                aa("members = [\"a:/s\", \"b:/s\"]\nconflict = \"source-wins\""),
                "routes[0] (aa).conflict: active-active routes resolve concurrent writes by \"last-writer-wins\"",
            ),
            (
                aa("members = [\"a:/s\", \"b:/s\"]\ntombstone_ttl_s = 0"),
                "routes[0] (aa).tombstone_ttl_s: must be at least 1",
            ),
            (
                aa("members = [\"a:/s\", \"b:/s\"]\nephemerals = \"persistent\""),
                "routes[0] (aa).ephemerals",
            ),
            (
                aa("members = [\"a:/s\", \"b:/s\"]\ndeletes = \"keep\""),
                "routes[0] (aa).deletes",
            ),
            (
                aa(r#"members = ["a:/zkbridge/s", "b:/s"]"#),
                "routes[0] (aa).members[0]: a:/zkbridge/s overlaps meta_path",
            ),
            (
                aa(r#"members = ["zz:/s", "b:/s"]"#),
                "routes[0] (aa).members[0]: unknown ensemble \"zz\"",
            ),
            (
                route("name = \"m\"\nsource = \"a:/s\"\ntargets = [\"b:/s\"]\nconflict = \"last-writer-wins\""),
                "routes[0] (m).conflict: \"last-writer-wins\" is for mode = \"active-active\"",
            ),
            (
                route("name = \"m\"\nsource = \"a:/s\"\ntargets = [\"b:/s\"]\nmembers = [\"a:/s\"]"),
                "routes[0] (m).members: is for mode = \"active-active\"",
            ),
            (
                route("name = \"m\"\ntargets = [\"b:/s\"]"),
                "routes[0] (m).source: is required",
            ),
            (
                format!(
                    "{}\n[[routes]]\nname = \"m\"\nsource = \"a:/other\"\ntargets = [\"b:/s/in\"]",
                    aa(r#"members = ["a:/s", "b:/s"]"#)
                ),
                "routes[1] (m): overlaps active-active route \"aa\"'s members",
            ),
            (
                format!(
                    "{}\n[[routes]]\nname = \"aa\"\nmode = \"active-active\"\nmembers = [\"a:/t\", \"b:/t\"]",
                    aa(r#"members = ["a:/s", "b:/s"]"#)
                ),
                "routes[1] (aa).name: duplicate route name",
            ),
            (
                format!(
                    "{}\n[[routes]]\nname = \"ab\"\nmode = \"active-active\"\nmembers = [\"a:/s/x\", \"b:/t\"]",
                    aa(r#"members = ["a:/s", "b:/s"]"#)
                ),
                "routes[1] (ab).members[0]: a:/s/x overlaps route \"aa\"'s member a:/s",
            ),
        ];
        for (toml, want) in cases {
            let got = err(&toml);
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
        ("bridge", "region"),
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
        ("routes", "freeze_acl"),
        ("routes", "standby_acl"),
        ("routes", "failover"),
        ("routes", "failover_after_s"),
        ("routes", "witnesses"),
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
