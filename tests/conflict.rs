//! Conflict policies against real ZooKeeper: a separate client changes the
//! target behind the bridge's back, and the route's policy decides.

mod common;

use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);

fn config(src: &Zk, dst: &Zk, extra: &str) -> String {
    format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"c\"\nsource = \"src:/c\"\ntargets = [\"dst:/c\"]\n{extra}\n",
        ensembles(&[("src", src), ("dst", dst)])
    )
}

fn conflicts(bridge: &Bridge, action: &str) -> f64 {
    bridge.metric("zkbridge_conflicts_total", &[("route", "c"), ("action", action)])
}

async fn setup() -> (Zk, Zk, Bridge) {
    setup_with("").await
}

async fn setup_with(extra: &str) -> (Zk, Zk, Bridge) {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/c").await;
    for n in ["a", "b", "d"] {
        create(&s, &format!("/c/{n}"), b"source").await;
    }
    let bridge = Bridge::start(&config(&src, &dst, extra));
    await_in_sync(&bridge.config(), CONVERGE).await;
    (src, dst, bridge)
}

/// A later source change that has reached the target: proof the bridge has
/// processed everything before it.
async fn barrier(s: &zookeeper_client::Client, t: &zookeeper_client::Client, i: u32) {
    let path = format!("/c/barrier{i}");
    create(s, &path, b"x").await;
    eventually("the barrier node reaches the target", CONVERGE, async || {
        get(t, &path).await.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_wins_puts_local_changes_back_and_counts_them() {
    let (src, dst, bridge) = setup().await;
    let t = dst.client().await;
    t.set_data("/c/a", b"local", None).await.unwrap();
    create(&t, "/c/local-only", b"local").await;
    t.delete("/c/d", None).await.unwrap();
    eventually("three local changes overwritten", CONVERGE, async || {
        conflicts(&bridge, "overwritten") == 3.0
    })
    .await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(get(&t, "/c/a").await.as_deref(), Some(&b"source"[..]));
    assert_eq!(get(&t, "/c/local-only").await, None);
    assert_eq!(get(&t, "/c/d").await.as_deref(), Some(&b"source"[..]));
    // The bridge's own writes are not conflicts.
    let s = src.client().await;
    s.set_data("/c/b", b"source 2", None).await.unwrap();
    barrier(&s, &t, 1).await;
    assert_eq!(conflicts(&bridge, "overwritten"), 3.0);
}

/// With anti-entropy off, the target watch alone finds local changes (and
/// no work is done until it is armed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_anti_entropy_the_target_watch_finds_local_changes() {
    let (src, dst, bridge) = setup_with("verify_interval_s = 0").await;
    let t = dst.client().await;
    t.set_data("/c/a", b"local", None).await.unwrap();
    eventually("the local change overwritten", CONVERGE, async || {
        conflicts(&bridge, "overwritten") == 1.0
    })
    .await;
    assert_eq!(get(&t, "/c/a").await.as_deref(), Some(&b"source"[..]));
    let s = src.client().await;
    s.set_data("/c/b", b"source 2", None).await.unwrap();
    barrier(&s, &t, 1).await;
    assert_eq!(get(&t, "/c/b").await.as_deref(), Some(&b"source 2"[..]));
    assert_eq!(conflicts(&bridge, "overwritten"), 1.0, "own writes are no conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_wins_keeps_local_changes_until_the_source_changes_them() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/c").await;
    for n in ["a", "b"] {
        create(&s, &format!("/c/{n}"), b"source").await;
    }
    let mut bridge = Bridge::start(&config(&src, &dst, "conflict = \"target-wins\""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    t.set_data("/c/a", b"local", None).await.unwrap();
    create(&t, "/c/local-only", b"local").await;
    eventually("two local changes kept", CONVERGE, async || {
        conflicts(&bridge, "kept") == 2.0
    })
    .await;
    barrier(&s, &t, 1).await;
    assert_eq!(get(&t, "/c/a").await.as_deref(), Some(&b"local"[..]));
    assert_eq!(get(&t, "/c/local-only").await.as_deref(), Some(&b"local"[..]));
    let (code, out) = bridge.cli(&["diff"]);
    assert_eq!(code, 0, "kept nodes are not drift: {out}");
    assert!(out.contains("diverged (kept by policy)"), "{out}");

    // Kept across a restart (a full resync would otherwise overwrite).
    bridge.stop();
    bridge.restart();
    barrier(&s, &t, 2).await;
    assert_eq!(get(&t, "/c/a").await.as_deref(), Some(&b"local"[..]));

    // The source changes the node again: the keep ends.
    s.set_data("/c/a", b"source 2", None).await.unwrap();
    eventually("the source's new version wins", CONVERGE, async || {
        get(&t, "/c/a").await.as_deref() == Some(&b"source 2"[..])
    })
    .await;
    assert_eq!(get(&t, "/c/local-only").await.as_deref(), Some(&b"local"[..]));
}

/// Nodes created and changed again at once, many in flight: the bridge's
/// own earlier writes are never taken for local changes. (A create written
/// without a read that finds the node there, made by an earlier unit, once
/// counted as a conflict: `target-wins` then kept the older value and
/// `fail` stopped the route.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_racing_each_other_are_no_conflict() {
    for policy in ["target-wins", "fail"] {
        let src = Zk::standalone();
        let dst = Zk::standalone();
        let s = src.client().await;
        mkdirs(&s, "/c").await;
        let bridge = Bridge::start(&config(&src, &dst, &format!("conflict = \"{policy}\"")));
        await_in_sync(&bridge.config(), CONVERGE).await;
        let writes = (0..300).map(|i| {
            let s = s.clone();
            async move {
                let path = format!("/c/n{i}");
                create(&s, &path, b"first").await;
                for v in 0..5 {
                    s.set_data(&path, format!("v{v}").as_bytes(), None).await.unwrap();
                }
            }
        });
        futures::future::join_all(writes).await;
        await_in_sync(&bridge.config(), CONVERGE).await;
        for action in ["kept", "stopped", "overwritten"] {
            assert_eq!(conflicts(&bridge, action), 0.0, "{policy}: no conflict is {action}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_stops_the_route_until_an_operator_resumes_it() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/c").await;
    create(&s, "/c/a", b"source").await;
    let bridge = Bridge::start(&config(&src, &dst, "conflict = \"fail\""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    t.set_data("/c/a", b"local", None).await.unwrap();
    eventually("readyz names the stopped route and path", CONVERGE, async || {
        bridge
            .http_get("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("c/dst") && body.contains("/c/a"))
    })
    .await;
    assert_eq!(conflicts(&bridge, "stopped"), 1.0);
    let (code, out) = bridge.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let stdout = out.split("\n-- stderr --\n").next().unwrap();
    let status: serde_json::Value = serde_json::from_str(stdout).unwrap();
    assert_eq!(status["routes"][0]["stopped"]["path"], "/c/a");

    // Stopped: a source change is seen but not applied.
    let applied_before = bridge.metric("zkbridge_applied_ops_total", &[("route", "c")]);
    create(&s, "/c/while-stopped", b"1").await;
    let (_, created) = s.get_data("/c/while-stopped").await.unwrap();
    eventually("the change is pending", CONVERGE, async || {
        bridge.metric("zkbridge_pending_paths", &[("route", "c")]) >= 1.0
    })
    .await;
    // A barrier: two heartbeats after the change, the bridge has had every
    // chance to apply it (a running route applies within one).
    let mut beats = 0;
    let mut last = created.mzxid;
    eventually("two heartbeats after the change", CONVERGE, async || {
        let (_, hb) = s.get_data("/zkbridge/heartbeats/c").await.unwrap();
        if hb.mzxid > last {
            last = hb.mzxid;
            beats += 1;
        }
        beats >= 2
    })
    .await;
    assert_eq!(get(&t, "/c/while-stopped").await, None);
    assert_eq!(
        bridge.metric("zkbridge_applied_ops_total", &[("route", "c")]),
        applied_before,
        "nothing applied while stopped"
    );
    assert_eq!(get(&t, "/c/a").await.as_deref(), Some(&b"local"[..]));

    // The operator resolves the node and resumes.
    t.set_data("/c/a", b"source", None).await.unwrap();
    let (code, out) = bridge.cli(&["resume", "--route", "c", "--target", "dst", "--yes"]);
    assert_eq!(code, 0, "{out}");
    eventually("ready again", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(get(&t, "/c/while-stopped").await.as_deref(), Some(&b"1"[..]));
}

/// A local change made while no bridge runs is found after the restart by
/// the anti-entropy pass (the watch could not see it), and handled by the
/// route's policy.
async fn changed_while_stopped(policy: &str) -> (Zk, Zk, Bridge) {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/c").await;
    create(&s, "/c/a", b"source").await;
    create(&s, "/c/b", b"source").await;
    let (mut bridge, t) = synced_then_stopped(&src, &dst, &format!("conflict = \"{policy}\"")).await;
    t.set_data("/c/a", b"local", None).await.unwrap();
    bridge.restart();
    (src, dst, bridge)
}

/// A bridge on `src`'s tree, in sync and checkpointed, then stopped: the
/// target is changed behind it before the restart. Returns a target client.
async fn synced_then_stopped(src: &Zk, dst: &Zk, extra: &str) -> (Bridge, zookeeper_client::Client) {
    let mut bridge = Bridge::start(&config(src, dst, extra));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    eventually("a checkpoint", CONVERGE, async || {
        get(&t, "/zkbridge/routes/c/dst/checkpoint").await.is_some()
    })
    .await;
    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));
    (bridge, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_stopped_source_wins_is_repaired_by_the_anti_entropy_pass() {
    let (_src, dst, bridge) = changed_while_stopped("source-wins").await;
    let t = dst.client().await;
    eventually("the local change is overwritten", CONVERGE, async || {
        get(&t, "/c/a").await.as_deref() == Some(&b"source"[..])
    })
    .await;
    assert_eq!(conflicts(&bridge, "overwritten"), 1.0);
    assert_eq!(bridge.metric("zkbridge_drift_nodes", &[("route", "c")]), 1.0);
    await_in_sync(&bridge.config(), CONVERGE).await;
}

/// A tree wide enough that the pass reads it in parts (a level of 300
/// nodes): local changes made while stopped, in the top, in two different
/// parts and beside the frontier, are all found and repaired, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_in_parts_finds_changes_in_every_part() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/c/w").await;
    let mut nodes = Vec::new();
    for i in 0..300 {
        nodes.push((format!("/c/w/{i}"), b"source".to_vec()));
        nodes.push((format!("/c/w/{i}/leaf"), b"source".to_vec()));
    }
    create_many(&s, &nodes).await;
    let (mut bridge, t) = synced_then_stopped(&src, &dst, "conflict = \"source-wins\"").await;
    t.set_data("/c", b"local", None).await.unwrap();
    t.set_data("/c/w/250/leaf", b"local", None).await.unwrap();
    t.delete("/c/w/17/leaf", None).await.unwrap();
    t.delete("/c/w/17", None).await.unwrap();
    create(&t, "/c/w/local", b"local").await;
    bridge.restart();
    eventually("every local change is put back", CONVERGE, async || {
        get(&t, "/c/w/17/leaf").await.is_some() && get(&t, "/c/w/local").await.is_none()
    })
    .await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(get(&t, "/c/w/250/leaf").await.as_deref(), Some(&b"source"[..]));
    assert_eq!(get(&t, "/c").await.as_deref(), Some(&b""[..]));
    // Five nodes changed locally, each found once: the pass calls four of
    // them local and the leaf under the deleted node drift (its parent's
    // child list is gone, so the pass cannot tell); the worker, repairing
    // it, sees the checkpointed node missing and counts a conflict too.
    assert_eq!(bridge.metric("zkbridge_drift_nodes", &[("route", "c")]), 5.0);
    assert_eq!(conflicts(&bridge, "overwritten"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_stopped_target_wins_is_kept() {
    let (src, dst, bridge) = changed_while_stopped("target-wins").await;
    eventually("the local change is kept", CONVERGE, async || {
        conflicts(&bridge, "kept") == 1.0
    })
    .await;
    let (s, t) = (src.client().await, dst.client().await);
    barrier(&s, &t, 1).await;
    assert_eq!(get(&t, "/c/a").await.as_deref(), Some(&b"local"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_stopped_fail_stops_the_route() {
    let (_src, _dst, bridge) = changed_while_stopped("fail").await;
    eventually("stopped on /c/a", CONVERGE, async || {
        bridge
            .http_get("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("/c/a"))
    })
    .await;
    assert_eq!(conflicts(&bridge, "stopped"), 1.0);
}

fn blocked(bridge: &Bridge) -> f64 {
    bridge.metric("zkbridge_deletes_blocked_total", &[("route", "c")])
}

/// 100 leaves under /c/n: enough for fractions to mean something.
async fn hundred_nodes(extra: &str) -> (Zk, Zk, Bridge) {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/c/n").await;
    let nodes: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("/c/n/{i}"), b"x".to_vec())).collect();
    create_many(&s, &nodes).await;
    let bridge = Bridge::start(&config(&src, &dst, extra));
    await_in_sync(&bridge.config(), CONVERGE).await;
    (src, dst, bridge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_breaker_lets_ordinary_deletes_through_and_holds_a_mass_delete() {
    let (src, dst, bridge) = hundred_nodes("").await;
    let (s, t) = (src.client().await, dst.client().await);
    for i in 0..10 {
        s.delete(&format!("/c/n/{i}"), None).await.unwrap();
    }
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(blocked(&bridge), 0.0, "10% is ordinary");

    // The source loses 80 of the remaining 90 at once.
    for i in 10..90 {
        s.delete(&format!("/c/n/{i}"), None).await.unwrap();
    }
    create(&s, "/c/still-copied", b"1").await;
    eventually("the breaker holds the deletes", CONVERGE, async || {
        blocked(&bridge) > 0.0
    })
    .await;
    eventually("other writes go on", CONVERGE, async || {
        get(&t, "/c/still-copied").await.is_some()
    })
    .await;
    let (code, body) = bridge.http_get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("circuit breaker"), "{body}");
    assert!(get(&t, "/c/n/89").await.is_some(), "held, not deleted");
    let (code, out) = bridge.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("delete_breaker"), "{out}");

    // The operator checks the source and releases them.
    let (code, out) = bridge.cli(&["resume", "--route", "c", "--target", "dst", "--yes"]);
    assert_eq!(code, 0, "{out}");
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(get(&t, "/c/n/89").await, None);
    eventually("ready again", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_source_root_is_held_until_it_comes_back() {
    let (src, dst, bridge) = hundred_nodes("").await;
    let (s, t) = (src.client().await, dst.client().await);
    delete_tree(&s, "/c").await;
    eventually("the breaker holds the root's deletes", CONVERGE, async || {
        blocked(&bridge) > 0.0
    })
    .await;
    // Child deletes streamed in first; at most max_delete_fraction (0.5) of
    // them went through before the breaker held the rest and the root.
    let left = t.count_descendants_number("/c").await.unwrap();
    assert!(left >= 50, "the target keeps at least half: {left} left");
    eventually("not ready", CONVERGE, async || {
        bridge
            .http_get("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("circuit breaker"))
    })
    .await;
    // The source comes back (say, a restore): the condition clears itself.
    mkdirs(&s, "/c/n").await;
    let nodes: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("/c/n/{i}"), b"x".to_vec())).collect();
    create_many(&s, &nodes).await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    eventually("ready again without an operator", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
}

/// Sets random nodes of `/c/n0..n{count}` about 200 times a second until
/// `stop` is set; returns how many it wrote.
fn busy_writer(
    s: zookeeper_client::Client,
    count: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut writes = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let path = format!("/c/n{}", state % count);
            s.set_data(&path, format!("v{writes}").as_bytes(), None).await.unwrap();
            writes += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writes
    })
}

fn passes(bridge: &Bridge) -> usize {
    bridge.log().matches("anti-entropy pass").count()
}

/// Own writes are never local changes: with the source busy during the
/// initial copy, during the anti-entropy passes that follow, and across a
/// SIGKILL fail-over between instances, and no client writing the target,
/// no pass reports a local change or drift (once, the pass read the source
/// before the target, and every change applied in between looked local).
/// A real local change is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_never_local_changes_on_a_busy_source_and_across_a_fail_over() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/c").await;
    const NODES: u64 = 2000;
    let nodes: Vec<(String, Vec<u8>)> = (0..NODES).map(|i| (format!("/c/n{i}"), b"init".to_vec())).collect();
    create_many(&s, &nodes).await;
    // Passes every second, slow enough (two scans of ~1.5 s) for many
    // changes to land while one runs.
    let toml = config(&src, &dst, "verify_interval_s = 1").replace(
        "heartbeat_interval_ms = 200\n",
        "heartbeat_interval_ms = 200\nverify_reads_per_s = 1500\n",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = busy_writer(src.client().await, NODES, stop.clone());
    let mut first = Bridge::start_as("first", &toml);
    eventually("three passes after a busy initial copy", CONVERGE, async || {
        passes(&first) >= 3
    })
    .await;
    let second = Bridge::start_as("second", &toml);
    eventually("the second instance stands by", CONVERGE, async || {
        second.http_get("/readyz").is_some() && first.leading() == 1.0
    })
    .await;
    let first_log = first.log();
    first.kill();
    eventually("the second instance takes over", CONVERGE, async || {
        second.leading() == 1.0
    })
    .await;
    eventually("three passes after the fail-over", CONVERGE, async || {
        passes(&second) >= 3
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 500, "the source was busy: {writes} writes");
    let t = dst.client().await;
    await_mirror(&s, "/c", &t, "/c", Compare::default(), CONVERGE).await;
    for (who, log) in [("first", first_log), ("second", second.log())] {
        assert!(
            !log.contains("anti-entropy pass found differences"),
            "{who}: a pass reported differences nobody made:\n{}",
            log.lines()
                .filter(|l| l.contains("anti-entropy"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(second.metric("zkbridge_drift_nodes", &[("route", "c")]), 0.0);
    assert_eq!(conflicts(&second, "overwritten"), 0.0);

    // A real local change is found and put back.
    t.set_data("/c/n7", b"local", None).await.unwrap();
    eventually("the local change is overwritten", CONVERGE, async || {
        get(&t, "/c/n7").await != Some(b"local".to_vec())
    })
    .await;
    assert_eq!(conflicts(&second, "overwritten"), 1.0);
    await_mirror(&s, "/c", &t, "/c", Compare::default(), CONVERGE).await;
}
