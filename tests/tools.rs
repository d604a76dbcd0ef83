//! Operator tools against real ZooKeeper: the `wait` barrier across two
//! target regions, and `reset` forcing a full resync.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);

fn config(src: &Zk, eu: &Zk, ap: &Zk) -> String {
    format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"r\"\nsource = \"src:/w\"\ntargets = [\"eu:/w\", \"ap:/mirror/w\"]\n",
        ensembles(&[("src", src), ("eu", eu), ("ap", ap)])
    )
}

fn zkbridge(args: &[&str], bridge: &Bridge) -> Output {
    Command::new(bin())
        .args(args)
        .arg("-c")
        .arg(&bridge.config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_once_every_region_has_the_write_and_times_out_otherwise() {
    let src = Zk::standalone();
    let eu = Zk::standalone();
    let mut ap = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/w").await;
    let bridge = Bridge::start(&config(&src, &eu, &ap));
    await_in_sync(&bridge.config(), CONVERGE).await;

    // The application's view: write, take the zxid, wait, then read in
    // every region.
    let (stat, _) = s
        .create(
            "/w/flag",
            b"on",
            &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
    let zxid = format!("{:#x}", stat.czxid);
    let out = zkbridge(&["wait", "--route", "r", "--zxid", &zxid, "--timeout", "60s"], &bridge);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let (e, a) = (eu.client().await, ap.client().await);
    assert_eq!(get(&e, "/w/flag").await.as_deref(), Some(&b"on"[..]));
    assert_eq!(get(&a, "/mirror/w/flag").await.as_deref(), Some(&b"on"[..]));

    // One region down: the barrier is not reached, and says which region.
    ap.kill();
    s.set_data("/w/flag", b"off", None).await.unwrap();
    let (_, stat) = s.get_data("/w/flag").await.unwrap();
    let zxid = stat.mzxid.to_string();
    let out = zkbridge(&["wait", "--route", "r", "--zxid", &zxid, "--timeout", "3s"], &bridge);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ap") && !stderr.contains("eu"), "{stderr}");
    ap.restart();
    let out = zkbridge(&["wait", "--route", "r", "--zxid", &zxid, "--timeout", "60s"], &bridge);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let a = ap.client().await;
    assert_eq!(get(&a, "/mirror/w/flag").await.as_deref(), Some(&b"off"[..]));

    let out = zkbridge(&["wait", "--route", "nope", "--zxid", "1"], &bridge);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_deletes_the_checkpoint_and_the_next_start_copies_everything() {
    let src = Zk::standalone();
    let eu = Zk::standalone();
    let ap = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/w/a/b").await;
    let mut bridge = Bridge::start(&config(&src, &eu, &ap));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let e = eu.client().await;
    let checkpoint = "/zkbridge/routes/r/eu/checkpoint";
    eventually("a checkpoint in eu", CONVERGE, async || {
        get(&e, checkpoint).await.is_some()
    })
    .await;
    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));

    let out = zkbridge(&["reset", "--route", "r", "--target", "eu", "--yes"], &bridge);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&e, checkpoint).await, None);
    let a = ap.client().await;
    assert!(
        get(&a, "/zkbridge/routes/r/ap/checkpoint").await.is_some(),
        "other targets untouched"
    );
    let out = zkbridge(&["reset", "--route", "r", "--target", "nope", "--yes"], &bridge);
    assert_eq!(out.status.code(), Some(2));

    // A stray node in eu: only a full resync (not a resume) removes it.
    create(&e, "/w/stray", b"x").await;
    bridge.restart();
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(get(&e, "/w/stray").await, None);
    assert_eq!(
        bridge.metric("zkbridge_resume_nodes_scanned_total", &[("target", "eu")]),
        0.0,
        "eu was copied in full"
    );
    assert!(bridge.metric("zkbridge_resume_nodes_scanned_total", &[("target", "ap")]) > 0.0);
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("zkbridge {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("commit "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_copies_once_and_run_resumes_from_its_checkpoint_without_rewrites() {
    let src = Zk::standalone();
    let eu = Zk::standalone();
    let ap = Zk::standalone();
    let s = src.client().await;
    let nodes: Vec<(String, Vec<u8>)> = std::iter::once(("/w".to_string(), b"root".to_vec()))
        .chain((0..300).map(|i| (format!("/w/n{i}"), format!("{i}").into_bytes())))
        .collect();
    create_many(&s, &nodes).await;
    // A bridge process only to hold the config; stopped at once.
    let mut holder = Bridge::start(&config(&src, &eu, &ap));
    holder.stop();

    // Dry run: says what it would do, writes nothing.
    let out = zkbridge(&["sync", "--dry-run"], &holder);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("would create") && stdout.contains("nothing written"),
        "{stdout}"
    );
    let e = eu.client().await;
    assert_eq!(get(&e, "/w").await, None, "dry run wrote nothing");

    let out = zkbridge(&["sync"], &holder);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("sync done") && stdout.contains("r/eu: synced"),
        "{stdout}"
    );
    await_in_sync(&holder.config(), CONVERGE).await;

    // `run` resumes from the checkpoint sync wrote: nothing to rewrite.
    holder.restart();
    eventually("resumed", CONVERGE, async || {
        holder.metric("zkbridge_resume_nodes_scanned_total", &[]) >= 2.0 * 301.0
    })
    .await;
    assert_eq!(holder.metric("zkbridge_resume_target_writes_total", &[]), 0.0);
    assert_eq!(
        holder.metric("zkbridge_resyncs_total", &[("reason", "checkpoint_mismatch")]),
        0.0
    );
}

/// One-shot commands keep stderr for what went wrong: the client crate's
/// session lines (INFO) appear only with `-v`, and `RUST_LOG` still rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_are_quiet_unless_asked() {
    let src = Zk::standalone();
    let eu = Zk::standalone();
    let ap = Zk::standalone();
    let bridge = Bridge::start(&config(&src, &eu, &ap));
    let quiet = zkbridge(&["status"], &bridge);
    assert!(quiet.status.success());
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("INFO"), "status logged at info by default:\n{stderr}");
    assert!(
        String::from_utf8_lossy(&quiet.stdout).contains("ROUTE"),
        "the table is printed"
    );
    let verbose = zkbridge(&["status", "-v"], &bridge);
    assert!(verbose.status.success());
    assert!(
        String::from_utf8_lossy(&verbose.stderr).contains("INFO"),
        "-v shows info lines"
    );
    let rust_log = Command::new(bin())
        .args(["status", "-c"])
        .arg(&bridge.config_path)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&rust_log.stderr).contains("DEBUG"));
    // `run` itself logs what it does.
    eventually("the running bridge logs at info", CONVERGE, async || {
        bridge.log().contains("zkbridge running")
    })
    .await;
}
