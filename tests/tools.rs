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
    let a = ap.client().await;
    let checkpoint = "/zkbridge/routes/r/eu/checkpoint";
    // Both targets checkpoint on their own heartbeat; wait for each.
    eventually("a checkpoint in eu and in ap", CONVERGE, async || {
        get(&e, checkpoint).await.is_some() && get(&a, "/zkbridge/routes/r/ap/checkpoint").await.is_some()
    })
    .await;
    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));

    let out = zkbridge(&["reset", "--route", "r", "--target", "eu", "--yes"], &bridge);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&e, checkpoint).await, None);
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

/// Polls `check` until it says yes or `timeout` passes; its last answer.
async fn eventually_or_last<T>(timeout: Duration, mut check: impl AsyncFnMut() -> (bool, T)) -> (bool, T) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (done, last) = check().await;
        if done || std::time::Instant::now() > deadline {
            return (done, last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `zkbridge explain --route r PATH`'s text (exit 0).
fn explain(bridge: &Bridge, path: &str) -> String {
    let out = zkbridge(&["explain", "--route", "r", path], bridge);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The target line of `zkbridge explain`'s text: the one naming `target`
/// at the start of a line (after its state words).
fn target_line(out: &str, target: &str) -> String {
    out.lines()
        .find(|l| !l.starts_with(' ') && l.contains(&format!(" {target}:")))
        .unwrap_or_else(|| panic!("no line for {target} in:\n{out}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_why_a_path_is_or_is_not_in_sync() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/w/many").await;
    create(&s, "/w/a", b"1").await;
    create(&s, "/w/tmp", b"scratch").await;
    create(&s, "/w/big", &vec![7u8; 100_000]).await;
    for i in 0..20 {
        create(&s, &format!("/w/many/n{i}"), b"x").await;
    }
    let toml = format!(
        "heartbeat_interval_ms = 200\n[ensembles.src]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n\
         [ensembles.dst]\nconnect = \"{}\"\nsession_timeout_ms = 4000\nmax_request_bytes = 65536\n\
         [[routes]]\nname = \"r\"\nsource = \"src:/w\"\ntargets = [\"dst:/m\"]\nexclude = [\"tmp\"]\n",
        src.connect_string(),
        dst.connect_string()
    );
    let mut bridge = Bridge::start(&toml);
    let t = dst.client().await;
    eventually("the copy arrives", CONVERGE, async || {
        get(&t, "/m/many/n19").await.is_some()
    })
    .await;

    // In sync, the path given absolute in the source or relative.
    for path in ["/w/a", "a"] {
        let out = explain(&bridge, path);
        assert!(target_line(&out, "dst").starts_with("in sync dst:/m/a"), "{out}");
        assert!(
            out.contains("source /w/a: 1 bytes, md5 c4ca4238a0b923820dcc509a6f75849b"),
            "{out}"
        );
    }
    // Excluded, naming the glob.
    let out = explain(&bridge, "tmp");
    let line = target_line(&out, "dst");
    assert!(
        line.starts_with("excluded dst:/m/tmp") && line.contains("\"tmp\""),
        "{out}"
    );
    // Too large for the target: set aside, with the reason and the retry.
    eventually("the big node is set aside", CONVERGE, async || {
        target_line(&explain(&bridge, "big"), "dst").starts_with("parked dst:/m/big")
    })
    .await;
    let line = target_line(&explain(&bridge, "big"), "dst");
    assert!(
        line.contains("max_request_bytes") && line.contains("retried in"),
        "{line}"
    );
    // A mass delete: its deletes are held by the breaker.
    for i in 0..20 {
        s.delete(&format!("/w/many/n{i}"), None).await.unwrap();
    }
    eventually("the breaker trips", CONVERGE, async || {
        bridge.metric("zkbridge_deletes_blocked_total", &[]) > 0.0
    })
    .await;
    // Whichever deletes came after the line are held; the others went.
    let left = t.list_children("/m/many").await.unwrap();
    assert!(!left.is_empty() && left.len() < 20, "{left:?}");
    let rel = format!("many/{}", left[0]);
    let held = eventually_or_last(CONVERGE, async || {
        let out = explain(&bridge, &rel);
        (target_line(&out, "dst").starts_with(&format!("held dst:/m/{rel}")), out)
    })
    .await;
    assert!(held.0, "the breaker holds the delete: {}", held.1);
    let gone = (0..20).map(|i| format!("n{i}")).find(|n| !left.contains(n)).unwrap();
    let out = explain(&bridge, &format!("many/{gone}"));
    assert!(
        target_line(&out, "dst").starts_with("in sync"),
        "a delete that went is in sync, breaker or not: {out}"
    );
    // The same, machine-readable.
    let out = zkbridge(&["explain", "--route", "r", "a", "--json"], &bridge);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["targets"][0]["state"], "in_sync", "{json}");
    assert_eq!(json["instance_answered"], true, "{json}");

    // No instance running: what the nodes show, and that the queue is unknown.
    bridge.stop();
    s.set_data("/w/a", b"2", None).await.unwrap();
    let out = explain(&bridge, "a");
    let line = target_line(&out, "dst");
    assert!(line.starts_with("pending dst:/m/a"), "{out}");
    assert!(
        line.contains("the data differs") && line.contains("no running instance answered"),
        "{out}"
    );
    // A path outside the route is an error that says so.
    let out = zkbridge(&["explain", "--route", "r", "/elsewhere"], &bridge);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not under the route's source path"));
}

/// Lines of a running command's stdout until `enough` says so, or the
/// output ends (a command silent for 60 s is killed, so the test fails
/// instead of hanging).
fn read_until(child: &mut std::process::Child, mut enough: impl FnMut(&[String]) -> bool) -> Vec<String> {
    use std::io::BufRead;
    let (watchdog, done) = std::sync::mpsc::channel::<()>();
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        // Dropping the sender (reading finished) disconnects: no kill.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(60)) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let _stop_watchdog = watchdog;
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        lines.push(line.unwrap());
        if enough(&lines) {
            break;
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_refreshes_until_interrupted() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/w").await;
    let toml = format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"r\"\nsource = \"src:/w\"\ntargets = [\"dst:/w\"]\n",
        ensembles(&[("src", &src), ("dst", &dst)])
    );
    let bridge = Bridge::start(&toml);
    await_in_sync(&bridge.config(), CONVERGE).await;
    for json in [false, true] {
        let mut args = vec!["status", "--watch", "--interval", "300ms"];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(bin())
            .args(&args)
            .arg("-c")
            .arg(&bridge.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Not a terminal: one block after another (one JSON document per
        // line with --json), each with the route.
        let lines = read_until(&mut child, |lines| {
            let blocks = match json {
                true => lines.len(),
                false => lines.iter().filter(|l| l.starts_with("ROUTE")).count(),
            };
            blocks >= 3
        });
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "stops cleanly on Ctrl-C");
        if json {
            for line in &lines[..3] {
                let doc: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(doc["routes"][0]["route"], "r", "{line}");
            }
        } else {
            assert!(lines.iter().any(|l| l.starts_with("r ")), "{lines:#?}");
            assert!(!lines.concat().contains('\x1b'), "no terminal control codes when piped");
        }
    }
    let out = zkbridge(&["status", "--watch", "--interval", "10ms"], &bridge);
    assert_eq!(out.status.code(), Some(2), "an interval that would spin is refused");
}
