//! End-to-end mirroring against real ZooKeeper servers and the real binary.

mod common;

use std::time::Duration;

use common::*;
use zookeeper_client::{Acls, CreateMode};

const CONVERGE: Duration = Duration::from_secs(60);

fn route(name: &str, source: &str, targets: &[&str], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\nsource = \"{source}\"\ntargets = [{}]\n{extra}\n",
        targets.join(", ")
    )
}

/// A tree of `n` nodes under `base`, fan-out 10, with data of mixed sizes:
/// empty, short text, binary, 10 KB, and a few near the 1 MiB limit.
fn mixed_tree(base: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut nodes: Vec<(String, Vec<u8>)> = vec![(base.to_string(), b"root".to_vec())];
    let mut i = 0;
    while nodes.len() < n {
        let parent = nodes[i / 10].0.clone();
        let k = nodes.len();
        let data = match k % 7 {
            0 => Vec::new(),
            1 => format!("value-{k}").into_bytes(),
            2 => (0..=255u8).cycle().skip(k % 256).take(300).collect(),
            3 => vec![b'x'; 10 * 1024],
            _ if k % 500 == 4 => vec![(k % 251) as u8; 1_000_000],
            _ => format!("{k}").repeat(k % 40).into_bytes(),
        };
        nodes.push((format!("{parent}/n{k}"), data));
        i += 1;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_copies_a_mixed_tree_exactly_and_removes_strays() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    let t = dst.client().await;
    let tree = mixed_tree("/config", 2000);
    create_many(&s, &tree).await;
    // An ephemeral node in the source is skipped (ephemerals = "skip").
    s.create(
        "/config/session-lock",
        b"me",
        &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
    )
    .await
    .unwrap();
    // A stray node already in the target goes; its subtree with it.
    mkdirs(&t, "/config/stale/deeper").await;

    let bridge = Bridge::start(&format!(
        "{}{}",
        ensembles(&[("us-east", &src), ("eu-west", &dst)]),
        route("config", "us-east:/config", &["eu-west:/config"], "")
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;

    for (path, data) in tree
        .iter()
        .step_by(97)
        .chain(tree.iter().filter(|(_, d)| d.len() >= 1_000_000))
    {
        assert_eq!(get(&t, path).await.as_deref(), Some(data.as_slice()), "{path} differs");
    }
    assert_eq!(
        get(&t, "/config/session-lock").await,
        None,
        "ephemeral must not be copied"
    );
    assert_eq!(
        get(&t, "/config/stale").await,
        None,
        "stray target node must be deleted"
    );
    eventually("readyz turns 200", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert_eq!(
        bridge.metric("zkbridge_mirrored_nodes", &[("route", "config"), ("target", "eu-west")]),
        2000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_reach_a_remapped_filtered_target() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    let t = dst.client().await;
    mkdirs(&s, "/app/services/api").await;
    mkdirs(&s, "/app/locks/l1").await;
    create(&s, "/app/tmp", b"scratch").await;

    let mut bridge = Bridge::start(&format!(
        "{}{}",
        ensembles(&[("us-east", &src), ("eu-west", &dst)]),
        route(
            "app",
            "us-east:/app",
            &["eu-west:/mirror/us-east/app"],
            "exclude = [\"locks/**\", \"tmp\"]"
        )
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert!(get(&t, "/mirror/us-east/app/services/api").await.is_some());
    assert_eq!(get(&t, "/mirror/us-east/app/tmp").await, None, "excluded node copied");
    assert_eq!(
        get(&t, "/mirror/us-east/app/locks/l1").await,
        None,
        "excluded subtree copied"
    );

    // Creates, updates, a subtree delete, and changes to excluded paths.
    create(&s, "/app/services/api/v1", b"{\"port\":8080}").await;
    mkdirs(&s, "/app/services/web/a/b/c").await;
    s.set_data("/app/services/api", b"updated", None).await.unwrap();
    create(&s, "/app/locks/l2", b"x").await;
    s.set_data("/app/tmp", b"changed", None).await.unwrap();
    mkdirs(&s, "/app/doomed/x/y").await;
    eventually("doomed subtree mirrored", CONVERGE, async || {
        get(&t, "/mirror/us-east/app/doomed/x/y").await.is_some()
    })
    .await;
    delete_tree(&s, "/app/doomed").await;
    // Rapid successive writes coalesce; the last value must win.
    for i in 0..50 {
        s.set_data("/app/services/api/v1", format!("v{i}").as_bytes(), None)
            .await
            .unwrap();
    }

    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(
        get(&t, "/mirror/us-east/app/services/api").await.as_deref(),
        Some(&b"updated"[..])
    );
    assert_eq!(
        get(&t, "/mirror/us-east/app/services/api/v1").await.as_deref(),
        Some(&b"v49"[..])
    );
    assert!(get(&t, "/mirror/us-east/app/services/web/a/b/c").await.is_some());
    assert_eq!(get(&t, "/mirror/us-east/app/doomed").await, None);
    assert_eq!(get(&t, "/mirror/us-east/app/locks/l2").await, None);
    assert_eq!(get(&t, "/mirror/us-east/app/tmp").await, None);
    let applied = bridge.metric("zkbridge_applied_ops_total", &[("route", "app"), ("target", "eu-west")]);
    assert!(applied > 0.0);
    assert_eq!(
        bridge.stop().map(|s| s.code()),
        Some(Some(0)),
        "clean stop on SIGTERM exits 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_target_catches_up_while_the_other_keeps_receiving() {
    let src = Zk::standalone();
    let a = Zk::standalone();
    let mut b = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/svc").await;
    let bridge = Bridge::start(&format!(
        "{}{}",
        ensembles(&[("src", &src), ("a", &a), ("b", &b)]),
        route("svc", "src:/svc", &["a:/svc", "b:/svc"], "")
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;

    b.kill();
    let ta = a.client().await;
    for i in 0..100 {
        create(&s, &format!("/svc/n{i}"), format!("{i}").as_bytes()).await;
    }
    s.set_data("/svc", b"new-root-data", None).await.unwrap();
    // Target a converges while b is down: all 100 nodes, and the root's
    // data, which was set after them and so may land a batch later.
    eventually(
        "target a receives all 100 nodes and the root's new data while b is down",
        CONVERGE,
        async || {
            ta.list_children("/svc").await.unwrap().len() == 100
                && get(&ta, "/svc").await.as_deref() == Some(&b"new-root-data"[..])
        },
    )
    .await;

    b.restart();
    await_in_sync(&bridge.config(), CONVERGE).await;
    let tb = b.client().await;
    assert_eq!(tb.list_children("/svc").await.unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_connection_loss_and_session_expiry_lose_nothing() {
    let mut src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/data").await;
    create(&s, "/data/before", b"1").await;
    let bridge = Bridge::start(&format!(
        "{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("data", "src:/data", &["dst:/data"], "")
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;
    drop(s);

    // Connection loss: the server restarts quickly, the session survives.
    src.restart();
    let s = src.client().await;
    create(&s, "/data/after-restart", b"2").await;
    s.set_data("/data/before", b"changed-after-restart", None)
        .await
        .unwrap();
    await_in_sync(&bridge.config(), CONVERGE).await;

    // Session expiry: the server stays away longer than the session timeout
    // (4 s); the client gives the session up and the bridge opens a new one.
    drop(s);
    src.kill();
    eventually("the bridge sees its source session expire", CONVERGE, async || {
        bridge.metric("zkbridge_session_expirations_total", &[("ensemble", "src")]) >= 1.0
    })
    .await;
    src.restart();
    let s = src.client().await;
    create(&s, "/data/after-expiry", b"3").await;
    delete_tree(&s, "/data/after-restart").await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    assert_eq!(get(&t, "/data/after-expiry").await.as_deref(), Some(&b"3"[..]));
    assert_eq!(get(&t, "/data/after-restart").await, None);
    assert_eq!(
        get(&t, "/data/before").await.as_deref(),
        Some(&b"changed-after-restart"[..])
    );
    assert!(bridge.metric("zkbridge_resyncs_total", &[("reason", "session_expired")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_recreated_source_root_reaches_the_target() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    let t = dst.client().await;
    mkdirs(&s, "/guarded/a/b").await;
    mkdirs(&s, "/open/a/b").await;
    let bridge = Bridge::start(&format!(
        "{}{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("guarded", "src:/guarded", &["dst:/guarded"], ""),
        route("open", "src:/open", &["dst:/open"], "allow_root_delete = true")
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;

    delete_tree(&s, "/open").await;
    eventually("open root deleted in target", CONVERGE, async || {
        get(&t, "/open").await.is_none()
    })
    .await;

    delete_tree(&s, "/guarded").await;
    eventually("the vanished root's deletes are held", CONVERGE, async || {
        bridge.metric("zkbridge_deletes_blocked_total", &[("route", "guarded")]) >= 1.0
    })
    .await;
    assert!(
        get(&t, "/guarded").await.is_some(),
        "allow_root_delete = false keeps the target root"
    );

    create(&s, "/guarded", b"reborn").await;
    create(&s, "/guarded/new", b"n").await;
    create(&s, "/open", b"reborn-open").await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(get(&t, "/guarded").await.as_deref(), Some(&b"reborn"[..]));
    assert_eq!(get(&t, "/guarded/new").await.as_deref(), Some(&b"n"[..]));
    assert_eq!(get(&t, "/open").await.as_deref(), Some(&b"reborn-open"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_keep_leaves_target_only_nodes_alone() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    let t = dst.client().await;
    mkdirs(&s, "/k/a").await;
    mkdirs(&t, "/k/local-only").await;
    let bridge = Bridge::start(&format!(
        "{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("k", "src:/k", &["dst:/k"], "deletes = \"keep\"")
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;
    delete_tree(&s, "/k/a").await;
    create(&s, "/k/b", b"b").await;
    eventually("b mirrored", CONVERGE, async || get(&t, "/k/b").await.is_some()).await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert!(get(&t, "/k/a").await.is_some(), "deletes = keep must not delete");
    assert!(get(&t, "/k/local-only").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_source_ensemble_mirrors_to_standalone_target() {
    let src = Zk::start(3);
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/q/x").await;
    let bridge = Bridge::start(&format!(
        "{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("q", "src:/q", &["dst:/q"], "")
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;
    for i in 0..20 {
        create(&s, &format!("/q/x/{i}"), b"v").await;
    }
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert!(src.servers.iter().filter_map(|z| z.mode()).any(|m| m == "leader"));
}
