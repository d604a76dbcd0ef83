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
        Err(e) => {
            panic!("promtool cannot run ({e}): scripts/install-deps.sh installs it (Debian package `prometheus`)")
        }
    }
}

#[test]
fn every_yaml_and_json_file_in_deploy_parses() {
    let mut checked = 0;
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            match path.extension().and_then(|e| e.to_str()) {
                Some("yml" | "yaml") => {
                    for doc in serde_yaml::Deserializer::from_str(&text) {
                        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                        assert!(!value.is_null(), "{}: empty document", path.display());
                    }
                    checked += 1;
                }
                Some("json") => {
                    serde_json::from_str::<serde_json::Value>(&text)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    checked += 1;
                }
                _ => {}
            }
        }
    }
    assert!(checked >= 3, "only {checked} files checked");
}

#[test]
fn the_kubernetes_deployment_runs_two_replicas_with_probes() {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/zkbridge.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["ConfigMap", "Secret", "Deployment", "Service", "ServiceMonitor"] {
        assert!(kinds.contains(&kind), "no {kind}: {kinds:?}");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // The bundled TOML is a valid zkbridge configuration.
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let toml = config_map["data"]["zkbridge.toml"].as_str().unwrap();
    let toml = toml.replace("digest_file = \"/etc/zkbridge/secrets/us-east.digest\"\n", "");
    let toml = toml.replace("digest_file = \"/etc/zkbridge/secrets/eu-west.digest\"\n", "");
    zkbridge::config::load_str(&toml).unwrap_or_else(|e| panic!("ConfigMap TOML: {e}"));
}

#[test]
fn the_dockerfile_uses_the_makefile_build_and_a_non_root_user() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    assert!(
        dockerfile.contains("RUN make build"),
        "the image is built by `make build`"
    );
    assert!(
        makefile.contains("build:\n\tcargo build --release"),
        "`make build` is the release build"
    );
    assert!(dockerfile.contains("USER 10001"), "the image runs as non-root");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/zkbridge.service")).unwrap();
    for needed in [
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "LimitNOFILE=",
        "User=zkbridge",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze cannot run: scripts/install-deps.sh installs it (Debian package `systemd`)");
    assert!(out.status.success());
    // Point the unit at the binary just built; the user need not exist here.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zkbridge.service");
    let bin = env!("CARGO_BIN_EXE_zkbridge");
    std::fs::write(&path, unit.replace("/usr/local/bin/zkbridge", bin)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about the environment (no such user, no running systemd)
    // are not the unit's fault; anything about the unit's own lines is.
    let unit_errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("zkbridge.service:") || l.contains("Unknown key") || l.contains("Invalid"))
        .collect();
    assert!(unit_errors.is_empty(), "systemd-analyze verify:\n{stderr}");
}

/// The image is really built from `deploy/Dockerfile` with Debian's
/// buildah (vfs storage, chroot isolation: no daemon, no privileges beyond
/// root in this sandbox), and the built image's `zkbridge --version` runs.
/// The Dockerfile's base images come from a registry (docker.io): where
/// this machine cannot pull them, the test says so and what the registry
/// answered, and builds nothing — it never claims a build it did not make.
#[test]
fn the_container_image_builds_and_runs_zkbridge_version() {
    use std::process::Command;
    let storage = std::env::temp_dir().join(format!("zkbridge-buildah-{}", std::process::id()));
    let buildah = |args: &[&str]| {
        let out = Command::new("buildah")
            .arg("--storage-driver=vfs")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(args)
            .env("BUILDAH_ISOLATION", "chroot")
            .output()
            .unwrap_or_else(|e| panic!("buildah is required (scripts/install-deps.sh installs it): {e}"));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let bases: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(bases.len(), 2, "a build stage and a runtime stage: {bases:?}");
    for base in &bases {
        let (pulled, out) = buildah(&["pull", "--quiet", &format!("docker.io/library/{base}")]);
        if !pulled {
            let reason = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no answer");
            eprintln!(
                "SKIPPED: the image is not built on this machine: base image {base} cannot be pulled from docker.io ({reason})"
            );
            let _ = std::fs::remove_dir_all(&storage);
            return;
        }
    }
    let (built, out) = buildah(&[
        "build",
        "--isolation",
        "chroot",
        "-f",
        "deploy/Dockerfile",
        "-t",
        "localhost/zkbridge:test",
        root().to_str().unwrap(),
    ]);
    assert!(built, "buildah build failed:\n{out}");
    let (made, container) = buildah(&["from", "localhost/zkbridge:test"]);
    assert!(made, "{container}");
    let container = container.trim().lines().last().unwrap().to_string();
    let (ran, version) = buildah(&[
        "run",
        "--isolation",
        "chroot",
        &container,
        "--",
        "zkbridge",
        "--version",
    ]);
    let _ = buildah(&["rm", &container]);
    let _ = std::fs::remove_dir_all(&storage);
    assert!(ran, "zkbridge --version in the image: {version}");
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "the image's zkbridge is this version: {version}"
    );
}
