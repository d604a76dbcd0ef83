//! What an operator scrapes, against real ZooKeeper: exact op counters,
//! pending paths and lag, `/readyz` through initial sync and a lost target.

mod common;

use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);

fn config(src: &Zk, dst: &Zk) -> String {
    format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"m\"\nsource = \"src:/m\"\ntargets = [\"dst:/m\"]\n",
        ensembles(&[("src", src), ("dst", dst)])
    )
}

fn applied(bridge: &Bridge, op: &str) -> f64 {
    bridge.metric(
        "zkbridge_applied_ops_total",
        &[("route", "m"), ("target", "dst"), ("op", op)],
    )
}

fn readyz(bridge: &Bridge) -> Option<(u16, String)> {
    bridge.http_get("/readyz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_show_exactly_the_applied_changes() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/m").await;
    for i in 0..20 {
        create(&s, &format!("/m/old{i}"), b"old").await;
    }
    let bridge = Bridge::start(&config(&src, &dst));
    eventually("ready after the initial sync", CONVERGE, async || {
        readyz(&bridge).is_some_and(|(code, _)| code == 200)
    })
    .await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    let (creates, sets, deletes) = (
        applied(&bridge, "create"),
        applied(&bridge, "set"),
        applied(&bridge, "delete"),
    );
    assert_eq!(creates, 21.0, "initial sync: root and 20 children");

    // 10 creates, 10 updates and 10 deletes, each on its own node, so none
    // can coalesce with another.
    for i in 0..10 {
        create(&s, &format!("/m/new{i}"), b"new").await;
        s.set_data(&format!("/m/old{i}"), b"updated", None).await.unwrap();
        s.delete(&format!("/m/old{}", 10 + i), None).await.unwrap();
    }
    await_in_sync(&bridge.config(), CONVERGE).await;
    eventually("counters settle", CONVERGE, async || {
        applied(&bridge, "create") - creates == 10.0
            && applied(&bridge, "set") - sets == 10.0
            && applied(&bridge, "delete") - deletes == 10.0
    })
    .await;
    assert!(bridge.metric("zkbridge_apply_batches_total", &[("route", "m")]) >= 1.0);
    assert_eq!(
        bridge.metric("zkbridge_source_events_total", &[("route", "m"), ("kind", "created")]),
        10.0
    );
    eventually("nothing pending", CONVERGE, async || {
        bridge.metric("zkbridge_pending_paths", &[("route", "m")]) == 0.0
    })
    .await;
    assert_eq!(bridge.metric("zkbridge_mirrored_nodes", &[("route", "m")]), 21.0);
    // Idle: the checkpoint advances every heartbeat, so lag stays small.
    eventually("lag small once idle", CONVERGE, async || {
        let lag = bridge.metric("zkbridge_lag_seconds", &[("route", "m")]);
        lag > 0.0 && lag < 5.0
    })
    .await;
    let scrape = bridge.metrics().unwrap();
    let latency_count = scrape
        .samples
        .iter()
        .find(|s| s.metric == "zkbridge_replication_latency_seconds_count")
        .map(|s| match s.value {
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        });
    assert!(
        latency_count.is_some_and(|c| c >= 51.0),
        "every committed op is timed: {latency_count:?}"
    );
    assert_eq!(bridge.metric("zkbridge_build_info", &[]), 1.0);
    assert_eq!(bridge.metric("zkbridge_session_state", &[("ensemble", "dst")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_initial_sync_and_target_loss() {
    let src = Zk::standalone();
    let mut dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/m").await;
    // Started with the target down: it cannot be ready.
    dst.kill();
    let bridge = Bridge::start(&config(&src, &dst));
    eventually("503 naming the unreachable target", CONVERGE, async || {
        readyz(&bridge).is_some_and(|(code, body)| code == 503 && body.contains("m/dst"))
    })
    .await;
    dst.restart();
    eventually("200 after the initial sync", CONVERGE, async || {
        readyz(&bridge).is_some_and(|(code, _)| code == 200)
    })
    .await;
    await_in_sync(&bridge.config(), CONVERGE).await;

    // Away longer than the session timeout (4 s).
    dst.kill();
    eventually("the target session expires", CONVERGE, async || {
        bridge.metric("zkbridge_session_expirations_total", &[("ensemble", "dst")]) >= 1.0
    })
    .await;
    eventually("503 while the target is away", CONVERGE, async || {
        readyz(&bridge).is_some_and(|(code, body)| code == 503 && body.contains("unreachable"))
    })
    .await;
    create(&s, "/m/while-away", b"1").await;
    dst.restart();
    eventually("200 again once the target is back", CONVERGE, async || {
        readyz(&bridge).is_some_and(|(code, _)| code == 200)
    })
    .await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(bridge.http_get("/healthz").map(|(c, _)| c), Some(200));
}

/// The row of the status page's rendered DOM for a route/target.
fn page_row(dom: &str, route: &str, target: &str) -> String {
    let marker = format!("data-route=\"{route}\" data-target=\"{target}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for {route}/{target} in:\n{dom}"));
    let start = dom[..at].rfind("<tr").unwrap();
    let end = at + dom[at..].find("</tr>").unwrap();
    dom[start..end].to_string()
}

/// The built-in status page, rendered by a real browser: each route's row
/// with its lag and lag history, and red once a conflict stops a route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_routes_and_turns_red_when_a_conflict_stops_one() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/m").await;
    mkdirs(&s, "/c").await;
    create(&s, "/c/a", b"source").await;
    let toml = format!(
        "{}[[routes]]\nname = \"c\"\nsource = \"src:/c\"\ntargets = [\"dst:/c\"]\nconflict = \"fail\"\n",
        config(&src, &dst)
    );
    let bridge = Bridge::start(&toml);
    await_in_sync(&bridge.config(), CONVERGE).await;
    let url = format!("http://{}/", bridge.listen);
    let artefacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    eventually("both routes are shown with a lag", CONVERGE, async || {
        let dom = browser_dom(&url, None);
        ["m", "c"].iter().all(|r| {
            let row = page_row(&dom, r, "dst");
            row.contains("class=\"ok\"") && row.contains(" s</td>") && row.contains("lag-history")
        })
    })
    .await;
    let dom = browser_dom(&url, Some(&artefacts.join("running.png")));
    assert!(
        dom.contains("<svg class=\"lag-history\""),
        "the lag history is drawn inline"
    );
    assert!(
        !dom.contains("src=\"http") && !dom.contains("href=\"http"),
        "no external asset"
    );

    // A local change in the target stops route c (conflict = "fail").
    let t = dst.client().await;
    t.set_data("/c/a", b"local", None).await.unwrap();
    eventually("the stopped route's row turns red", CONVERGE, async || {
        let row = page_row(&browser_dom(&url, None), "c", "dst");
        row.contains("class=\"stopped\"") && row.contains("STOPPED (conflict) at /c/a")
    })
    .await;
    let dom = browser_dom(&url, Some(&artefacts.join("stopped.png")));
    assert!(
        page_row(&dom, "m", "dst").contains("class=\"ok\""),
        "the other route is unaffected"
    );
    assert!(
        artefacts.join("stopped.png").metadata().unwrap().len() > 1000,
        "a screenshot is kept"
    );
    eprintln!("screenshots in {}", artefacts.display());
}
