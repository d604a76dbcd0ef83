//! The command line as an operator meets it: config errors, exit codes,
//! environment overrides, secrets kept out of output.

mod common;

use std::process::Command;

use common::bin;

const ENSEMBLES: &str =
    "[ensembles.us-east]\nconnect = \"127.0.0.1:1\"\n[ensembles.eu-west]\nconnect = \"127.0.0.1:2\"\n";

fn check(toml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "-c"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn route(name: &str, source: &str, targets: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nsource = \"{source}\"\ntargets = [{targets}]\n")
}

#[test]
fn every_design_rejection_exits_2_naming_route_and_reason() {
    let cases: Vec<(String, &str)> = vec![
        (
            route("r", "us-east:/c", "\"us-east:/c\""),
            "routes[0] (r).targets[0]: target is the route's own source",
        ),
        (
            route("r", "us-east:/c", "\"us-east:/c/sub\""),
            "routes[0] (r).targets[0]: target is inside the route's source",
        ),
        (
            route("r", "us-east:/c/sub", "\"us-east:/c\""),
            "routes[0] (r).targets[0]: target contains the route's source",
        ),
        (
            route("a", "us-east:/x", "\"eu-west:/m\"") + &route("b", "us-east:/y", "\"eu-west:/m/n\""),
            "routes[1] (b).targets[0]: target eu-west:/m/n overlaps route \"a\"'s target",
        ),
        (
            route("r", "us-east:/zkbridge/x", "\"eu-west:/c\""),
            "routes[0] (r).source: us-east:/zkbridge/x is inside meta_path",
        ),
        (
            route("r", "us-east:/c", "\"eu-west:/zkbridge/c\""),
            "routes[0] (r).target: eu-west:/zkbridge/c is inside meta_path",
        ),
        (
            route("r", "nowhere:/c", "\"eu-west:/c\""),
            "routes[0] (r).source: unknown ensemble \"nowhere\"",
        ),
        (
            route("r", "us-east:/c", "\"mars:/c\""),
            "routes[0] (r).targets[0]: unknown ensemble \"mars\"",
        ),
        (
            route("r", "us-east:c", "\"eu-west:/c\""),
            "routes[0] (r).source: invalid ZooKeeper path",
        ),
        (route("r", "us-east:/c//d", "\"eu-west:/c\""), "empty segment"),
        (route("r", "us-east:/c", "\"eu-west:/c/../d\""), "relative segment"),
        (
            route("r", "us-east:/a", "\"eu-west:/a\"") + &route("r", "us-east:/b", "\"eu-west:/b\""),
            "routes[1] (r).name: duplicate route name",
        ),
        (
            route("a", "us-east:/x", "\"eu-west:/m\"") + &route("b", "eu-west:/m", "\"us-east:/z\""),
            "overlaps route \"a\"'s target",
        ),
        (
            route("r", "us-east:/c", "\"eu-west:/c\"") + "conflict = \"maybe\"\n",
            "conflict",
        ),
        (
            format!(
                "[bridge]\nlisten = \"nope\"\n{}",
                route("r", "us-east:/c", "\"eu-west:/c\"")
            ),
            "bridge.listen",
        ),
        (
            route("r", "us-east:/c", "\"eu-west:/c\"") + "colour = \"blue\"\n",
            "colour",
        ),
    ];
    for (body, want) in cases {
        let (code, _, err) = check(&format!("{ENSEMBLES}{body}"), &[]);
        assert_eq!(code, 2, "expected exit 2 for {body:?}, stderr: {err}");
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    }
    let (code, _, err) = check("", &[]);
    assert_eq!(code, 0, "an empty config is valid (no routes): {err}");
    let missing = Command::new(bin())
        .args(["check-config", "-c", "/nonexistent/zkbridge.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));
}

#[test]
fn environment_overrides_reach_ensembles_by_normalised_name() {
    let toml = format!("{ENSEMBLES}{}", route("r", "us-east:/c", "\"eu-west:/c\""));
    let (code, out, err) = check(
        &toml,
        &[
            ("ZKBRIDGE_ENSEMBLES__EU_WEST__CONNECT", "10.0.0.9:2181"),
            ("ZKBRIDGE_BRIDGE__LISTEN", "0.0.0.0:9999"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let resolved: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(
        resolved["ensembles"]["eu-west"]["connect"].as_str(),
        Some("10.0.0.9:2181")
    );
    assert_eq!(resolved["bridge"]["listen"].as_str(), Some("0.0.0.0:9999"));
    let (code, _, err) = check(&toml, &[("ZKBRIDGE_BRIDGE__LISTN", "x")]);
    assert_eq!(code, 2);
    assert!(err.contains("listn"), "{err}");
}

#[test]
fn check_config_never_prints_digest_secrets() {
    let toml = format!(
        "{ENSEMBLES}[ensembles.secure]\nconnect = \"127.0.0.1:3\"\ndigest = \"bridge:hunter2-s3cret\"\n{}",
        route("r", "us-east:/c", "\"secure:/c\"")
    );
    let (code, out, err) = check(&toml, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "secret leaked:\n{out}\n{err}"
    );
    assert!(out.contains("bridge:<redacted>"));
}

#[test]
fn bundled_configs_are_valid() {
    for file in ["config/zkbridge.toml", "config/local.toml"] {
        let out = Command::new(bin()).args(["check-config", "-c", file]).output().unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_listen_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[bridge]\nlisten = \"{addr}\"\n{ENSEMBLES}{}",
            route("r", "us-east:/c", "\"eu-west:/c\"")
        ),
    )
    .unwrap();
    let out = Command::new(bin()).args(["run", "-c"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bridge.listen") && stderr.contains(&addr.to_string()) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Every command of the binary, from its own help.
fn commands() -> Vec<String> {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn man_pages_and_completions_cover_every_command() {
    let commands = commands();
    assert!(
        commands.iter().any(|c| c == "explain") && commands.len() > 10,
        "{commands:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let main = std::fs::read_to_string(dir.path().join("zkbridge.1")).unwrap();
    assert!(main.contains(".TH zkbridge 1"), "{main}");
    for c in &commands {
        let page = std::fs::read_to_string(dir.path().join(format!("zkbridge-{c}.1")))
            .unwrap_or_else(|e| panic!("no page for {c}: {e}"));
        assert!(page.contains(&format!(".TH zkbridge-{c} 1")), "{page}");
    }
    let out = Command::new(bin()).args(["completions", "bash"]).output().unwrap();
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    for c in &commands {
        assert!(script.contains(c.as_str()), "bash completion lacks {c}");
    }
    // The script is valid bash.
    let file = dir.path().join("zkbridge.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}
