//! Hostile trees, against real ZooKeeper: a node larger than the target
//! accepts, a parent whose child list is larger than `jute.maxbuffer`
//! (50,000 children), a chain 200 deep, binary data with NULs, unicode and
//! spaces in names. What the target cannot hold is reported with its path
//! and counted; everything else arrives.

mod common;

use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_trees_arrive_and_what_the_target_refuses_is_reported() {
    // The source accepts nodes up to 4 MiB; the target keeps the default
    // 1 MiB, as regions configured apart do.
    let src = Zk::start_secured(
        1,
        &ServerOptions {
            max_buffer: Some(4 << 20),
            ..Default::default()
        },
    );
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/app").await;

    // 50,000 children whose names add up to more than 1 MiB when listed.
    mkdirs(&s, "/app/wide").await;
    let wide: Vec<(String, Vec<u8>)> = (0..50_000)
        .map(|i| (format!("/app/wide/member-{i:06}-with-a-longer-name"), vec![]))
        .collect();
    create_many(&s, &wide).await;
    // A chain 200 deep.
    let mut deep = String::from("/app/deep");
    let mut chain = Vec::new();
    for i in 0..200 {
        chain.push((deep.clone(), format!("{i}").into_bytes()));
        deep.push_str("/d");
    }
    create_many(&s, &chain).await;
    // Binary data with NULs, names with unicode and spaces.
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 0]).collect();
    create(&s, "/app/bin\u{e9}ry node", &binary).await;
    create(&s, "/app/\u{65e5}\u{672c}", b"\0\0").await;
    // A node the target cannot hold (over its 1 MiB), among ordinary ones.
    create(&s, "/app/big", &vec![7u8; (1 << 20) + 4096]).await;
    create(&s, "/app/after-big", b"fine").await;

    let toml = format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"app\"\nsource = \"src:/app\"\ntargets = [\"dst:/app\"]\n",
        ensembles(&[("src", &src), ("dst", &dst)])
    );
    let bridge = Bridge::start(&toml);
    let t = dst.client().await;
    eventually("everything the target can hold arrives", CONVERGE, async || {
        let Ok(differences) = zkbridge::diff::diff(&bridge.config(), None).await else {
            return false;
        };
        let drift: Vec<_> = differences.iter().filter(|d| d.is_drift()).collect();
        drift.len() == 1 && drift[0].source_path == "/app/big"
    })
    .await;
    eventually("the refused node is counted", CONVERGE, async || {
        bridge.metric("zkbridge_errors_total", &[("kind", "too_large")]) >= 1.0
    })
    .await;
    assert_eq!(
        bridge.metric("zkbridge_errors_total", &[("kind", "connection_loss")]),
        0.0,
        "never sent: a request over jute.maxbuffer makes the server drop the connection"
    );
    assert!(bridge.log().contains("/app/big"), "the log names the refused path");
    let (_, status) = bridge.http_get("/status").unwrap();
    assert!(status.contains("/app/big"), "status names it: {status}");
    assert_eq!(get(&t, "/app/after-big").await.as_deref(), Some(&b"fine"[..]));
    assert_eq!(get(&t, "/app/bin\u{e9}ry node").await, Some(binary));
    assert_eq!(get(&t, &chain[199].0).await, Some(b"199".to_vec()));
    assert_eq!(t.get_children("/app/wide").await.unwrap().0.len(), 50_000);

    // The route goes on after it.
    create(&s, "/app/later", b"l").await;
    eventually("later changes arrive", CONVERGE, async || {
        get(&t, "/app/later").await.is_some()
    })
    .await;
}

/// Names whose last ten bytes start inside a multi-byte character once
/// crashed the bridge (a byte slice in the sequential-name check) at every
/// start: in the initial copy, on a live create, as children of a parent
/// whose sequence counter is aligned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multibyte_names_are_mirrored_in_the_initial_copy_and_live() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/app/caf\u{e9}-queue").await;
    let names = [
        "caf\u{e9}-sequence",
        "\u{d6}l-pipeline",
        "\u{fc}n\u{ef}c\u{f6}d\u{e9}",
        "e\u{301}-combining-x",
        "\u{2764}\u{fe0f}-heart-\u{2764}",
        "\u{fc}0000000007",
        "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{540d}\u{524d}",
    ];
    for name in names {
        create(&s, &format!("/app/{name}"), name.as_bytes()).await;
        create(&s, &format!("/app/caf\u{e9}-queue/{name}"), b"q").await;
    }
    let toml = format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"app\"\nsource = \"src:/app\"\ntargets = [\"dst:/app\"]\n",
        ensembles(&[("src", &src), ("dst", &dst)])
    );
    let bridge = Bridge::start(&toml);
    let t = dst.client().await;
    await_mirror(&s, "/app", &t, "/app", Compare::default(), CONVERGE).await;

    for name in names {
        create(&s, &format!("/app/live-{name}"), b"live").await;
        create(&s, &format!("/app/caf\u{e9}-queue/live-{name}"), b"live").await;
    }
    await_mirror(&s, "/app", &t, "/app", Compare::default(), CONVERGE).await;
    assert!(
        bridge.http_get("/healthz").is_some_and(|(code, _)| code == 200),
        "the bridge is still running"
    );
    assert!(!bridge.log().contains("panic"), "no panic in the log");
}
