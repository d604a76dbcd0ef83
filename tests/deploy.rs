//! The deploy artefacts stay true to the code: the dashboard imports
//! (valid JSON, templated datasource), the alert rules pass `promtool`, and
//! both only use metrics zkbridge exports.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `zkbridge_*` metric name registered in `src/metrics.rs`.
fn exported_metrics() -> BTreeSet<String> {
    let source = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    source
        .split('"')
        .filter(|s| s.starts_with("zkbridge_") && !s.contains(' '))
        .map(str::to_string)
        .collect()
}

/// `zkbridge_*` names used in a text (PromQL), histogram suffixes stripped.
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("zkbridge_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        used.insert(base.to_string());
    }
    used
}

fn assert_all_exported(what: &str, used: &BTreeSet<String>) {
    let exported = exported_metrics();
    let unknown: Vec<_> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        unknown.is_empty(),
        "{what} uses metrics zkbridge does not export: {unknown:?}"
    );
}

#[test]
fn grafana_dashboard_imports_and_uses_real_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/zkbridge.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "the datasource is a template variable"
    );
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let mut exprs = String::new();
    for p in panels {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} pins a datasource",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let used = used_metrics(&exprs);
    for needed in [
        "zkbridge_lag_seconds",
        "zkbridge_applied_ops_total",
        "zkbridge_pending_paths",
        "zkbridge_conflicts_total",
        "zkbridge_errors_total",
        "zkbridge_session_state",
    ] {
        assert!(used.contains(needed), "dashboard lacks {needed}");
    }
    assert_all_exported("the dashboard", &used);
}

#[test]
fn alert_rules_pass_promtool_and_use_real_metrics() {
    let path = root().join("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let used = used_metrics(&text);
    assert_all_exported("alerts.yml", &used);
    for needed in [
        "zkbridge_lag_seconds",
        "zkbridge_conflicts_total",
        "zkbridge_leader",
        "zkbridge_session_expirations_total",
        "zkbridge_errors_total",
    ] {
        assert!(used.contains(needed), "no alert on {needed}");
    }
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "SKIPPED promtool check: promtool is not installed (Debian package `prometheus`; \
             scripts/install-deps.sh installs it when it can)"
        ),
    }
}
