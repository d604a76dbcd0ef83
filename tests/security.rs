//! Security against real ZooKeeper servers configured to require it: TLS
//! (and mutual TLS) on a Netty secure port, SASL DIGEST-MD5 and digest
//! authentication enforced by the server, the ensemble ACL on mirrored
//! nodes, and secrets kept out of every output.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::pki::Pki;
use common::*;
use zookeeper_client::{Client, Error};

const CONVERGE: Duration = Duration::from_secs(60);

fn route() -> &'static str {
    "[[routes]]\nname = \"r\"\nsource = \"src:/app\"\ntargets = [\"dst:/app\"]\n"
}

fn plain(name: &str, zk: &Zk) -> String {
    format!(
        "[ensembles.{name}]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n",
        zk.connect_string()
    )
}

/// Runs `zkbridge ARGS -c FILE` on a config written to a temp file.
fn zkbridge(args: &[&str], toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zkbridge.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(bin()).args(args).arg("-c").arg(&path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn secret_file(dir: &tempfile::TempDir, name: &str, text: &str, mode: u32) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_into_a_mutual_tls_ensemble_and_refuses_what_does_not_match() {
    let pki = Pki::new("zkbridge");
    let stranger = Pki::new("stranger");
    let src = Zk::standalone();
    let dst = Zk::start_secured(
        1,
        &ServerOptions {
            tls: Some(pki.server(true)),
            ..Default::default()
        },
    );
    let tls_ensemble = |ca: &std::path::Path, identity: bool| {
        let mut t = format!(
            "[ensembles.dst]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n[ensembles.dst.tls]\nca = \"{}\"\n",
            dst.secure_connect_string(),
            ca.display()
        );
        if identity {
            t.push_str(&format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                pki.client_cert.display(),
                pki.client_key.display()
            ));
        }
        t
    };
    let good = format!(
        "heartbeat_interval_ms = 200\n{}{}{}",
        plain("src", &src),
        tls_ensemble(&pki.ca, true),
        route()
    );
    let s = src.client().await;
    mkdirs(&s, "/app").await;
    create_many(
        &s,
        &tree(200)
            .into_iter()
            .map(|(p, d)| (format!("/app{p}"), d))
            .collect::<Vec<_>>(),
    )
    .await;
    let _bridge = Bridge::start(&good);
    // Judged through the server's plaintext port, as any reader would.
    let t = dst.client().await;
    await_mirror(&s, "/app", &t, "/app", Compare::default(), CONVERGE).await;
    create(&s, "/app/after", b"over tls").await;
    await_mirror(&s, "/app", &t, "/app", Compare::default(), CONVERGE).await;

    // A server certificate from a CA we do not trust.
    let (code, _, err) = zkbridge(
        &["diff"],
        &format!("{}{}{}", plain("src", &src), tls_ensemble(&stranger.ca, true), route()),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TLS: handshake") && err.contains("UnknownIssuer"), "{err}");
    // Mutual TLS required, no client certificate offered.
    let (code, _, err) = zkbridge(
        &["diff"],
        &format!("{}{}{}", plain("src", &src), tls_ensemble(&pki.ca, false), route()),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("TLS: handshake") && err.contains("wants a client certificate"),
        "{err}"
    );
    // A plaintext client on the TLS port gets no session.
    let plaintext = Client::connector()
        .with_session_timeout(Duration::from_secs(2))
        .connect(&dst.secure_connect_string())
        .await;
    assert!(plaintext.is_err(), "the TLS port served a plaintext client");
    // TLS settings against a plaintext port: named, not a time-out.
    let (code, _, err) = zkbridge(
        &["diff"],
        &format!(
            "{}[ensembles.dst]\nconnect = \"{}\"\n[ensembles.dst.tls]\nca = \"{}\"\n{}",
            plain("src", &src),
            dst.connect_string(),
            pki.ca.display(),
            route()
        ),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TLS: handshake"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_digest_md5_is_required_and_a_wrong_password_is_reported() {
    let src = Zk::standalone();
    let dst = Zk::start_secured(
        1,
        &ServerOptions {
            sasl_users: vec![("bridge".into(), "s3cret-sasl".into())],
            require_auth: Some("sasl".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let sasl = |password_file: &str| {
        format!(
            "[ensembles.dst]\nconnect = \"{}\"\nsession_timeout_ms = 4000\nsasl = {{ username = \"bridge\", password_file = \"{password_file}\" }}\n",
            dst.connect_string()
        )
    };
    let good = secret_file(&dir, "good", "s3cret-sasl\n", 0o600);
    let s = src.client().await;
    mkdirs(&s, "/app/a").await;
    let bridge = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}{}{}",
        plain("src", &src),
        sasl(&good),
        route()
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;

    // The server really requires it: an anonymous session may do nothing.
    let anonymous = Client::connector()
        .with_session_timeout(Duration::from_secs(2))
        .connect(&dst.connect_string())
        .await;
    assert!(
        matches!(&anonymous, Err(Error::AuthFailed)),
        "an anonymous session was let in: {:?}",
        anonymous.map(|c| c.session_id())
    );

    let wrong = secret_file(&dir, "wrong", "not-it\n", 0o600);
    let (code, _, err) = zkbridge(&["diff"], &format!("{}{}{}", plain("src", &src), sasl(&wrong), route()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ensemble dst"), "{err}");
    assert!(!err.contains("not-it") && !err.contains("s3cret-sasl"), "{err}");

    // A running bridge with the wrong password: counted and shown, and its
    // other route, to another region, goes on.
    drop(bridge);
    let other = Zk::standalone();
    mkdirs(&s, "/other").await;
    let bad = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}{}{}{}[[routes]]\nname = \"q\"\nsource = \"src:/other\"\ntargets = [\"other:/other\"]\n",
        plain("src", &src),
        plain("other", &other),
        sasl(&wrong),
        route()
    ));
    eventually("the auth failure is counted", CONVERGE, async || {
        bad.metric(
            "zkbridge_session_failures_total",
            &[("ensemble", "dst"), ("reason", "auth")],
        ) >= 1.0
    })
    .await;
    create(&s, "/other/x", b"x").await;
    let o = other.client().await;
    eventually("the other route goes on", CONVERGE, async || {
        get(&o, "/other/x").await.is_some()
    })
    .await;
    let (code, body) = bad.http_get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(!bad.log().contains("not-it"));

    let readable = secret_file(&dir, "readable", "s3cret-sasl\n", 0o644);
    let (code, out, err) = zkbridge(
        &["check-config"],
        &format!("{}{}{}", plain("src", &src), sasl(&readable), route()),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("ensembles.dst.sasl.password_file") && err.contains("chmod 600"),
        "{err}"
    );
}

/// A server that requires digest auth; zkbridge's nodes carry the ensemble
/// ACL, so another authenticated client may read the mirror but not write
/// it; the secret appears in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_and_the_ensemble_acl_keep_mirrors_read_only_to_others() {
    let src = Zk::standalone();
    let dst = Zk::start_secured(
        1,
        &ServerOptions {
            require_auth: Some("digest".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let digest = secret_file(&dir, "digest", "bridge:topsecret-digest\n", 0o600);
    let toml = format!(
        "heartbeat_interval_ms = 200\n{}[ensembles.dst]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n\
         digest_file = \"{digest}\"\nacl = [\"auth::cdrwa\", \"world:anyone:r\"]\n{}",
        plain("src", &src),
        dst.connect_string(),
        route()
    );
    let s = src.client().await;
    mkdirs(&s, "/app/config").await;
    create(&s, "/app/config/flag", b"on").await;
    let bridge = Bridge::start(&toml);
    await_in_sync(&bridge.config(), CONVERGE).await;

    let other = Client::connector()
        .with_auth("digest", b"someone:else")
        .connect(&dst.connect_string())
        .await
        .unwrap();
    assert_eq!(other.get_data("/app/config/flag").await.unwrap().0, b"on");
    assert_eq!(
        other.set_data("/app/config/flag", b"off", None).await,
        Err(Error::NoAuth)
    );
    assert_eq!(other.delete("/app/config/flag", None).await, Err(Error::NoAuth));
    let (acl, _) = other.get_acl("/app/config/flag").await.unwrap();
    assert_eq!(acl.len(), 2);
    assert_eq!(acl[0].scheme(), "digest", "auth:: names zkbridge's identity");

    // The bridge still writes its nodes.
    s.set_data("/app/config/flag", b"changed", None).await.unwrap();
    await_in_sync(&bridge.config(), CONVERGE).await;

    // No output carries the secret.
    let inline = toml.replace(
        &format!("digest_file = \"{digest}\""),
        "digest = \"bridge:topsecret-digest\"",
    );
    let (code, shown, _) = zkbridge(&["check-config"], &format!("[bridge]\n{inline}"));
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("bridge:<redacted>"), "{shown}");
    let status = bridge.http_get("/status").unwrap().1;
    let metrics = bridge.http_get("/metrics").unwrap().1;
    for (what, text) in [
        ("check-config", shown),
        ("/status", status),
        ("/metrics", metrics),
        ("log", bridge.log()),
    ] {
        assert!(!text.contains("topsecret-digest"), "{what} shows the secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_listen_on_loopback_and_change_nothing() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let bridge = Bridge::start(&format!("{}{}{}", plain("src", &src), plain("dst", &dst), route()));
    eventually("serving", CONVERGE, async || bridge.http_get("/healthz").is_some()).await;
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        for method in ["POST", "PUT", "DELETE"] {
            let (code, _) = http_request(&bridge.listen, method, path).unwrap();
            assert_eq!(code, 405, "{method} {path}");
        }
    }
    let defaults =
        zkbridge::config::load_str(&format!("{}{}{}", plain("src", &src), plain("dst", &dst), route())).unwrap();
    let listen: std::net::SocketAddr = defaults.config.bridge.listen.parse().unwrap();
    assert!(listen.ip().is_loopback(), "default listen address {listen}");
}
