//! Checkpoints against real ZooKeeper: resume cost follows the change,
//! kill -9 at any instant loses nothing, a rebuilt source forces a resync.

mod common;

use std::time::Duration;

use common::proxy::{Fault, FaultyEnsemble};
use common::*;

const CONVERGE: Duration = Duration::from_secs(120);

fn config(src: &Zk, dst: &Zk) -> String {
    format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"r\"\nsource = \"src:/t\"\ntargets = [\"dst:/t\"]\n",
        ensembles(&[("src", src), ("dst", dst)])
    )
}

/// The same with a short session timeout, so that the lease of a killed
/// instance goes quickly.
fn config_short_sessions(src: &Zk, dst: &Zk) -> String {
    config(src, dst).replace("session_timeout_ms = 4000", "session_timeout_ms = 1500")
}

/// Waits until the bridge's checkpoint covers every source write so far.
async fn await_checkpoint_covers(bridge: &Bridge, s: &zookeeper_client::Client) {
    let (_, stat) = s.get_data("/t").await.unwrap();
    let (_, top) = s.get_children("/t").await.unwrap();
    let last = stat.mzxid.max(top.pzxid);
    eventually("checkpoint covers the last source write", CONVERGE, async || {
        bridge.metric("zkbridge_checkpoint_zxid", &[("route", "r"), ("target", "dst")]) >= last as f64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cost_follows_the_change_not_the_tree() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    let nodes = tree(20_000);
    create_many(&s, &nodes).await;
    let mut bridge = Bridge::start(&config(&src, &dst));
    await_in_sync(&bridge.config(), CONVERGE).await;
    // A last write, so the checkpoint must move past all of the copy.
    s.set_data("/t", b"copied", None).await.unwrap();
    await_checkpoint_covers(&bridge, &s).await;
    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));

    // While stopped: 200 updates, 100 creates, 100 deleted nodes (whole
    // subtrees of 11 nodes and single leaves).
    let leaves: Vec<&String> = nodes
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.matches('/').count() == 5)
        .collect();
    for p in leaves.iter().take(200) {
        s.set_data(p, b"changed while stopped", None).await.unwrap();
    }
    for i in 0..100 {
        create(&s, &format!("/t/1/new{i}"), b"new").await;
    }
    let mut deleted = 0;
    for sub in [
        "/t/2/21/211",
        "/t/3/31/311",
        "/t/4/41/411",
        "/t/5/51/511",
        "/t/6/61/611",
    ] {
        let before = s.count_descendants_number(sub).await.unwrap() + 1;
        delete_tree(&s, sub).await;
        deleted += before;
    }
    for p in leaves.iter().rev().take(100 - deleted) {
        s.delete(p, None).await.unwrap();
    }

    bridge.restart();
    await_in_sync(&bridge.config(), CONVERGE).await;
    eventually("resume counters exported", CONVERGE, async || {
        bridge.metric("zkbridge_resume_nodes_scanned_total", &[("route", "r")]) > 0.0
    })
    .await;
    let scanned = bridge.metric("zkbridge_resume_nodes_scanned_total", &[("route", "r")]);
    let reads = bridge.metric("zkbridge_resume_target_reads_total", &[("route", "r")]);
    let writes = bridge.metric("zkbridge_resume_target_writes_total", &[("route", "r")]);
    eprintln!("resume: scanned {scanned} source nodes, {reads} target reads, {writes} target writes");
    assert!(scanned >= 19_900.0, "the source is scanned once: {scanned}");
    assert!(
        writes <= 400.0 + 10.0,
        "target writes {writes} should follow the 400 changes"
    );
    assert!(
        reads <= 2_000.0,
        "target reads {reads} should be of the order of the change, not ~20,000"
    );
    assert_eq!(
        bridge.metric("zkbridge_resyncs_total", &[("reason", "checkpoint_mismatch")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_source_forces_a_full_resync() {
    let mut src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    create_many(&s, &tree(300)).await;
    // The rebuilt source is much smaller: the operator of this route allows
    // mass deletes (otherwise the delete breaker holds them, as it should).
    let mut bridge = Bridge::start(&format!("{}max_delete_fraction = 1.0\n", config(&src, &dst)));
    await_in_sync(&bridge.config(), CONVERGE).await;
    await_checkpoint_covers(&bridge, &s).await;
    bridge.stop();
    drop(s);

    // Same addresses, new ensemble, different (smaller) content: its zxids
    // restart low, so a checkpoint from the old one would hide everything.
    src.wipe_and_restart();
    let s = src.client().await;
    create_many(&s, &tree(50)).await;
    bridge.restart();
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert!(bridge.metric("zkbridge_resyncs_total", &[("reason", "checkpoint_mismatch")]) >= 1.0);
    let t = dst.client().await;
    assert_eq!(t.count_descendants_number("/t").await.unwrap(), 49);
}

/// xorshift64*: deterministic per seed, so a failure can be replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let mut rng = Rng::new(seed("crash test", None));
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    create_many(&s, &tree(5_000)).await;
    let mut bridge = Bridge::start(&config_short_sessions(&src, &dst));
    let mut live: Vec<String> = Vec::new();
    for round in 0..12 {
        // Kill during the initial sync (round 0) and during a stream of
        // creates, updates and deletes (later rounds).
        let ops = 20 + rng.below(80);
        for _ in 0..ops {
            match rng.below(3) {
                0 => {
                    let p = format!("/t/{}/k{}", 1 + rng.below(9), rng.next());
                    create(&s, &p, format!("{round}").as_bytes()).await;
                    live.push(p);
                }
                1 => {
                    let p = format!("/t/{}", 1 + rng.below(4_000));
                    match s.set_data(&p, format!("round {round}").as_bytes(), None).await {
                        Ok(_) | Err(zookeeper_client::Error::NoNode) => {}
                        Err(e) => panic!("set {p}: {e}"),
                    }
                }
                _ if !live.is_empty() => {
                    let p = live.swap_remove(rng.below(live.len() as u64) as usize);
                    delete_tree(&s, &p).await;
                }
                _ => delete_tree(&s, &format!("/t/{}/{}", 1 + rng.below(9), rng.below(100))).await,
            }
        }
        // The kill lands at a random instant relative to the bridge's work,
        // once the new process leads (the killed one's lease must expire).
        eventually("the restarted bridge leads", CONVERGE, async || bridge.leading() == 1.0).await;
        tokio::time::sleep(Duration::from_millis(rng.below(1_500))).await;
        bridge.kill();
        bridge.restart();
    }
    await_in_sync(&bridge.config(), CONVERGE).await;
}

/// The source is cut off past the session timeout while it changes; the
/// new session resumes from the checkpoint and writes only what changed.
/// The changes are made during the outage: a change racing the re-armed
/// watch is written by both the watch and the rescan (idempotent, but it
/// would make the count depend on timing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_session_expiry_in_steady_state_resumes_from_the_checkpoint() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    let nodes = tree(5_000);
    create_many(&s, &nodes).await;
    let proxy = FaultyEnsemble::start(&src).await;
    let config = format!(
        "heartbeat_interval_ms = 200\n\
         [ensembles.src]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n\
         [ensembles.dst]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n\
         [[routes]]\nname = \"r\"\nsource = \"src:/t\"\ntargets = [\"dst:/t\"]\n",
        proxy.connect_string(),
        dst.connect_string()
    );
    let bridge = Bridge::start(&config);
    await_in_sync(&bridge.config(), CONVERGE).await;
    s.set_data("/t", b"copied", None).await.unwrap();
    await_checkpoint_covers(&bridge, &s).await;
    let writes_before = bridge.metric("zkbridge_applied_ops_total", &[]);

    // Away longer than the session timeout (4 s): the session expires.
    proxy.set(Fault::Blackhole);
    eventually("the source session expires", CONVERGE, async || {
        bridge.metric("zkbridge_session_expirations_total", &[("ensemble", "src")]) >= 1.0
    })
    .await;
    for i in 0..20 {
        s.set_data(&nodes[1000 + i].0, b"during the outage", None)
            .await
            .unwrap();
    }
    proxy.set(Fault::Pass);
    await_in_sync(&bridge.config(), CONVERGE).await;
    eventually("the rescan after expiry is counted", CONVERGE, async || {
        bridge.metric("zkbridge_resyncs_total", &[("reason", "session_expired")]) >= 1.0
    })
    .await;
    let reads = bridge.metric("zkbridge_resume_target_reads_total", &[]);
    let writes = bridge.metric("zkbridge_applied_ops_total", &[]) - writes_before;
    eprintln!("after expiry: {reads} target reads, {writes} target writes");
    assert!(writes <= 20.0 + 5.0, "only the changed nodes are written: {writes}");
    assert!(
        reads <= 500.0,
        "target reads follow the change, not the 5,000 nodes: {reads}"
    );

    // The watch of the new session carries on.
    s.set_data(&nodes[2000].0, b"after the outage", None).await.unwrap();
    await_in_sync(&bridge.config(), CONVERGE).await;
}

/// The argument behind checkpoints, tested on the crate and server we
/// ship with: a watch event for a write that completed before our own
/// write was sent is already in the watcher when our write's reply arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_are_delivered_before_a_later_reply() {
    use futures::FutureExt;
    let src = Zk::standalone();
    let writer = src.client().await;
    let watching = src.client().await;
    mkdirs(&writer, "/t").await;
    create(&watching, "/beat", b"").await;
    let mut watcher = watching
        .watch("/t", zookeeper_client::AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    for i in 0..500 {
        let path = format!("/t/n{i}");
        let (stat, _) = writer
            .create(
                &path,
                b"x",
                &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .await
            .unwrap();
        let beat = watching.set_data("/beat", b"", None).await.unwrap();
        assert!(beat.mzxid > stat.czxid);
        let event = watcher.changed().now_or_never().unwrap_or_else(|| {
            panic!(
                "event for {path} (zxid {}) not delivered before the reply of zxid {}",
                stat.czxid, beat.mzxid
            )
        });
        assert_eq!(event.path, path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_znodes_while_running_and_while_stopped() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    create_many(&s, &tree(100)).await;
    let mut bridge = Bridge::start(&config(&src, &dst));
    await_in_sync(&bridge.config(), CONVERGE).await;
    await_checkpoint_covers(&bridge, &s).await;
    let config_path = bridge.config_path.clone();
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["status", "-c"]).arg(&config_path);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let running: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let r = &running["routes"][0];
    assert_eq!(r["route"], "r");
    assert_eq!(r["target"], "dst");
    assert_eq!(r["leader"], "test-bridge");
    let zxid = bridge.metric("zkbridge_checkpoint_zxid", &[("route", "r")]) as i64;
    // Design §2: zxids are decimal integers in JSON, so scripts compare
    // them numerically.
    let checkpoint = r["checkpoint_zxid"]
        .as_i64()
        .expect("checkpoint_zxid is a JSON integer");
    assert!(checkpoint >= zxid, "{checkpoint} vs {zxid}");
    assert!(
        r["applied_zxid"].as_i64().is_some(),
        "applied_zxid is a JSON integer: {r}"
    );
    assert!(r["lag_seconds"].as_f64().unwrap() < 30.0);
    assert!(r["last_error"].is_null());
    let (code, body) = bridge.http_get("/status").unwrap();
    assert_eq!(code, 200);
    let endpoint: serde_json::Value = serde_json::from_str(&body).unwrap();
    let e = &endpoint["routes"][0];
    for key in [
        "route",
        "source",
        "target",
        "target_path",
        "leader",
        "standby",
        "last_error",
    ] {
        assert_eq!(e[key], r[key], "/status and `zkbridge status --json` differ on {key}");
    }
    for key in ["checkpoint_zxid", "applied_zxid"] {
        assert!(e[key].as_i64().is_some(), "/status gives {key} as a JSON integer: {e}");
    }

    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));
    let stopped: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let r = &stopped["routes"][0];
    assert!(r["leader"].is_null(), "nobody leads once stopped: {r}");
    let final_zxid = r["checkpoint_zxid"]
        .as_i64()
        .expect("checkpoint_zxid is a JSON integer");
    assert!(r["applied_zxid"].as_i64().is_some(), "{r}");
    // Human output is hex.
    let final_hex = format!("{final_zxid:#x}");
    let text = status(false);
    assert!(text.contains("(none)") && text.contains(&final_hex), "{text}");
}

/// zkbridge's periodic records (heartbeats, progress) waiting together go
/// to the server as one transaction, each still answered with its zxid;
/// missing nodes and parents are created; records of another session are
/// written on that session; a record the server refuses fails alone. (A current-thread runtime: every record below
/// is queued before the writer task runs, so the batching is certain.)
#[tokio::test]
async fn records_waiting_together_are_one_transaction() {
    use zkbridge::record_writer::RecordWriter;
    use zookeeper_client::Acls;

    let zk = Zk::standalone();
    let (one, other) = (zk.client().await, zk.client().await);
    let writer = RecordWriter::start(Acls::anyone_all().to_vec());
    let paths: Vec<String> = (0..50).map(|i| format!("/zkbridge/routes/r{i}/heartbeat")).collect();
    let put_all = |n: u64| {
        let writer = writer.clone();
        let (one, paths) = (one.clone(), paths.clone());
        async move {
            let value = serde_json::json!({ "n": n });
            let puts = paths.iter().map(|p| writer.put_json(&one, p, &value));
            futures::future::join_all(puts).await
        }
    };
    // Every node missing: each created on its own, parents too.
    for zxid in put_all(1).await {
        assert!(zxid.unwrap() > 0);
    }
    let progress = serde_json::json!({ "n": 2 });
    let (zxids, elsewhere) = tokio::join!(
        put_all(2),
        writer.put_json(&other, "/zkbridge/routes/r0/progress", &progress)
    );
    let zxids: Vec<i64> = zxids.into_iter().map(Result::unwrap).collect();
    let distinct: std::collections::BTreeSet<i64> = zxids.iter().copied().collect();
    assert_eq!(distinct.len(), 1, "one multi for the 50 records: {distinct:?}");
    let elsewhere = elsewhere.unwrap();
    assert!(
        !distinct.contains(&elsewhere),
        "another session's record has its own transaction"
    );
    for (path, zxid) in paths.iter().zip(&zxids) {
        let (data, stat) = one.get_data(path).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&data).unwrap()["n"],
            2,
            "{path}"
        );
        assert_eq!(stat.mzxid, *zxid, "{path}: the zxid answered is the write's");
    }
    let (data, stat) = other.get_data("/zkbridge/routes/r0/progress").await.unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&data).unwrap()["n"], 2);
    assert_eq!(stat.mzxid, elsewhere);

    // One record the server refuses (its node made read-only by hand) fails
    // alone: the others in its batch are written.
    one.set_acl(&paths[7], &Acls::anyone_read(), None).await.unwrap();
    let results = put_all(3).await;
    for (i, (path, result)) in paths.iter().zip(results).enumerate() {
        let (data, _) = one.get_data(path).await.unwrap();
        let n = serde_json::from_slice::<serde_json::Value>(&data).unwrap()["n"].clone();
        if i == 7 {
            assert_eq!(result, Err(zookeeper_client::Error::NoAuth), "{path}");
            assert_eq!(n, 2, "{path}: the refused record left the node as it was");
        } else {
            assert!(result.is_ok(), "{path}: {result:?}");
            assert_eq!(n, 3, "{path}");
        }
    }
}
