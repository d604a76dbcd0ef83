//! The delete circuit breaker against real ZooKeeper: it trips on a tree
//! that collapses and never on one that turns over (design §1, "Delete
//! safety"). Mirrors are judged with plain reads.

mod common;

use std::time::Duration;

use common::*;
use zookeeper_client::{Acls, Client, CreateMode};

const CONVERGE: Duration = Duration::from_secs(60);

fn route(name: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nsource = \"src:/{name}\"\ntargets = [\"dst:/{name}\"]\n{extra}\n")
}

fn blocked(bridge: &Bridge, route: &str) -> f64 {
    bridge.metric("zkbridge_deletes_blocked_total", &[("route", route)])
}

/// `/NAME` with 100 leaves under `/NAME/n`.
async fn hundred(s: &Client, name: &str) {
    mkdirs(s, &format!("/{name}/n")).await;
    let nodes: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("/{name}/n/{i}"), b"x".to_vec())).collect();
    create_many(s, &nodes).await;
}

/// Deletes leaves `/NAME/n/FROM..TO`, one request each.
async fn delete_leaves(s: &Client, name: &str, range: std::ops::Range<usize>) {
    for i in range {
        s.delete(&format!("/{name}/n/{i}"), None).await.unwrap();
    }
}

fn ready(bridge: &Bridge) -> bool {
    bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
}

/// A work queue: about 100 items kept while producers and consumers turn
/// it over 20 times. The old breaker counted every delete against the
/// mirrored count and stopped such a mirror within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_turning_over_never_trips_the_breaker() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/q/items").await;
    let sequential = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
    let mut queue = std::collections::VecDeque::new();
    for _ in 0..100 {
        let (_, seq) = s.create("/q/items/item-", b"work", &sequential).await.unwrap();
        queue.push_back(format!("/q/items/item-{seq}"));
    }
    let bridge = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("q", "")
    ));
    let t = dst.client().await;
    await_mirror(&s, "/q", &t, "/q", Compare::default(), CONVERGE).await;
    eventually("ready", CONVERGE, async || ready(&bridge)).await;

    let started = std::time::Instant::now();
    let mut not_ready = Vec::new();
    for i in 0..2000 {
        // A producer adds an item, a consumer takes the oldest.
        let (_, seq) = s.create("/q/items/item-", b"work", &sequential).await.unwrap();
        queue.push_back(format!("/q/items/item-{seq}"));
        let oldest = queue.pop_front().unwrap();
        s.delete(&oldest, None).await.unwrap();
        if i % 50 == 0 {
            if let Some((503, body)) = bridge.http_get("/readyz") {
                not_ready.push(body);
            }
        }
    }
    let turnover_s = started.elapsed().as_secs_f64();
    assert!(turnover_s < 60.0, "20 turnovers took {turnover_s:.1}s");
    await_mirror(&s, "/q", &t, "/q", Compare::default(), CONVERGE).await;
    assert!(
        not_ready.is_empty(),
        "/readyz turned 503 during the churn: {not_ready:?}"
    );
    assert!(ready(&bridge));
    assert_eq!(blocked(&bridge, "q"), 0.0, "nothing was held");
}

/// Creates, updates and subtree deletes at random over a deep tree, net
/// shrink under the fraction: converges with the defaults, nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_churn_over_a_deep_tree_converges_with_defaults() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    // 156 nodes: depth 3, fan-out 5.
    let mut nodes = vec!["/d".to_string()];
    let mut i = 0;
    while nodes.len() < 156 {
        nodes.push(format!("{}/{}", nodes[i / 5], nodes.len()));
        i += 1;
    }
    create_many(
        &s,
        &nodes.iter().map(|p| (p.clone(), b"v".to_vec())).collect::<Vec<_>>(),
    )
    .await;
    let bridge = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("d", "")
    ));
    let t = dst.client().await;
    await_mirror(&s, "/d", &t, "/d", Compare::default(), CONVERGE).await;

    let mut rng = Rng::new(seed("random churn", Some(0x5eed)));
    let mut live: std::collections::BTreeSet<String> = nodes.into_iter().collect();
    let mut next = 1000;
    for _ in 0..600 {
        let all: Vec<&String> = live.iter().collect();
        let pick = all[rng.below(all.len() as u64) as usize].clone();
        match rng.below(10) {
            0..=3 if pick.matches('/').count() < 6 => {
                let path = format!("{pick}/c{next}");
                next += 1;
                create(&s, &path, b"new").await;
                live.insert(path);
            }
            4..=6 => {
                s.set_data(&pick, format!("set{next}").as_bytes(), None).await.unwrap();
                next += 1;
            }
            _ if pick != "/d" && live.len() > 110 => {
                let subtree: Vec<String> = live
                    .iter()
                    .filter(|p| *p == &pick || p.starts_with(&format!("{pick}/")))
                    .cloned()
                    .collect();
                if subtree.len() <= 10 {
                    delete_tree(&s, &pick).await;
                    for p in subtree {
                        live.remove(&p);
                    }
                }
            }
            _ => {}
        }
    }
    await_mirror(&s, "/d", &t, "/d", Compare::default(), CONVERGE).await;
    assert_eq!(blocked(&bridge, "d"), 0.0, "nothing was held");
    assert!(ready(&bridge));
}

/// A 60 % collapse within the window trips; a 40 % one does not; with
/// `max_delete_fraction = 1.0` a 90 % one does not, and a vanished root
/// still does, deleted leaf by leaf and deleted in one `multi` (whose
/// children's events arrive before the root's: the whole subtree is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collapse_trips_the_breaker_and_a_shrink_does_not() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    for name in ["forty", "sixty", "off", "leafwise", "atonce"] {
        hundred(&s, name).await;
    }
    let off = "max_delete_fraction = 1.0";
    let bridge = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}{}{}{}{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("forty", ""),
        route("sixty", ""),
        route("off", off),
        route("leafwise", off),
        route("atonce", off)
    ));
    let t = dst.client().await;
    for name in ["forty", "sixty", "off", "leafwise", "atonce"] {
        let root = format!("/{name}");
        await_mirror(&s, &root, &t, &root, Compare::default(), CONVERGE).await;
    }

    delete_leaves(&s, "forty", 0..40).await;
    delete_leaves(&s, "sixty", 0..60).await;
    delete_leaves(&s, "off", 0..90).await;
    delete_tree(&s, "/leafwise").await;
    let mut all = s.new_multi_writer();
    for i in 0..100 {
        all.add_delete(&format!("/atonce/n/{i}"), None).unwrap();
    }
    all.add_delete("/atonce/n", None).unwrap();
    all.add_delete("/atonce", None).unwrap();
    all.commit().await.unwrap();

    await_mirror(&s, "/forty", &t, "/forty", Compare::default(), CONVERGE).await;
    await_mirror(&s, "/off", &t, "/off", Compare::default(), CONVERGE).await;
    for name in ["sixty", "leafwise", "atonce"] {
        eventually(&format!("{name}: deletes held"), CONVERGE, async || {
            blocked(&bridge, name) > 0.0
        })
        .await;
    }
    // A barrier: a later change in each held route arrives, so every
    // delete before it has been judged.
    create(&s, "/sixty/later", b"l").await;
    eventually("other writes go on", CONVERGE, async || {
        get(&t, "/sixty/later").await.is_some()
    })
    .await;
    assert_eq!(blocked(&bridge, "forty"), 0.0, "a 40 % shrink is no collapse");
    assert_eq!(blocked(&bridge, "off"), 0.0, "1.0 turns the fraction rule off");

    // Sixty: deletes go while they keep half of the peak of 102 (the root,
    // /n and the leaves); the rest are held. (/sixty/later offsets one more
    // delete when its unit is judged before the last deletes'.)
    let left = t.count_descendants_number("/sixty").await.unwrap() - 1;
    assert!(
        (49..=50).contains(&left),
        "half of the peak of 102 kept, the root aside: {left}"
    );
    let (code, out) = {
        let out = std::process::Command::new(bin())
            .args(["status", "--json", "-c"])
            .arg(&bridge.config_path)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sixty = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "sixty")
        .unwrap();
    let numbers = &sixty["stopped"]["breaker"];
    assert_eq!(numbers["peak"], 102, "{sixty}");
    assert_eq!(numbers["line"], 51, "{sixty}");
    assert!(numbers["would_leave"].as_u64().unwrap() < 51, "{sixty}");
    let reason = sixty["stopped"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("peak of 102") && reason.contains("line of 51"),
        "{reason}"
    );
    let (code, body) = bridge.http_get("/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("sixty/dst") && body.contains("circuit breaker"), "{body}");

    // Leaf by leaf, the leaves went (each while the root still existed);
    // the root's own delete is held.
    assert!(get(&t, "/leafwise").await.is_some(), "the vanished root is kept");
    // In one multi, no delete goes: the subtree is kept whole.
    assert_eq!(t.count_descendants_number("/atonce").await.unwrap(), 101);
    for name in ["leafwise", "atonce"] {
        let stopped = status["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == name)
            .map(|r| r["stopped"]["reason"].to_string())
            .unwrap_or_default();
        assert!(stopped.contains("source root vanished"), "{name}: {stopped}");
    }
}

/// A restart after a large cleanup made while the bridge was down is judged
/// like a live one: 60 % deleted while stopped is held, 40 % is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_a_collapse_while_stopped_is_held() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    hundred(&s, "forty").await;
    hundred(&s, "sixty").await;
    let mut bridge = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("forty", ""),
        route("sixty", "")
    ));
    let t = dst.client().await;
    for name in ["forty", "sixty"] {
        let root = format!("/{name}");
        await_mirror(&s, &root, &t, &root, Compare::default(), CONVERGE).await;
        eventually("a checkpoint", CONVERGE, async || {
            get(&t, &format!("/zkbridge/routes/{name}/dst/checkpoint"))
                .await
                .is_some()
        })
        .await;
    }
    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));
    delete_leaves(&s, "forty", 0..40).await;
    delete_leaves(&s, "sixty", 0..60).await;
    bridge.restart();
    await_mirror(&s, "/forty", &t, "/forty", Compare::default(), CONVERGE).await;
    eventually("sixty: deletes held", CONVERGE, async || {
        blocked(&bridge, "sixty") > 0.0
    })
    .await;
    assert_eq!(blocked(&bridge, "forty"), 0.0);
    let left = t.count_descendants_number("/sixty").await.unwrap();
    assert!(left >= 50, "the target keeps half of what it mirrored: {left}");
    assert!(
        bridge.log().contains("resumed from checkpoint"),
        "judged on a resume, not a full copy"
    );

    // The operator releases them.
    let out = std::process::Command::new(bin())
        .args(["resume", "--route", "sixty", "--target", "dst", "--yes", "-c"])
        .arg(&bridge.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    await_mirror(&s, "/sixty", &t, "/sixty", Compare::default(), CONVERGE).await;
    eventually("ready again", CONVERGE, async || ready(&bridge)).await;
}

/// An operator who checked the source and wants the vanished root's
/// subtree gone releases it with `zkbridge resume`: the held deletes go,
/// root included, although the root is still missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_root_released_by_the_operator_is_deleted() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    hundred(&s, "gone").await;
    let bridge = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}{}",
        ensembles(&[("src", &src), ("dst", &dst)]),
        route("gone", "")
    ));
    let t = dst.client().await;
    await_mirror(&s, "/gone", &t, "/gone", Compare::default(), CONVERGE).await;
    let mut all = s.new_multi_writer();
    for i in 0..100 {
        all.add_delete(&format!("/gone/n/{i}"), None).unwrap();
    }
    all.add_delete("/gone/n", None).unwrap();
    all.add_delete("/gone", None).unwrap();
    all.commit().await.unwrap();
    eventually("held", CONVERGE, async || blocked(&bridge, "gone") > 0.0).await;
    assert!(get(&t, "/gone").await.is_some());
    let out = std::process::Command::new(bin())
        .args(["resume", "--route", "gone", "--target", "dst", "--yes", "-c"])
        .arg(&bridge.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the released subtree is deleted, root included", CONVERGE, async || {
        get(&t, "/gone").await.is_none()
    })
    .await;
    eventually("ready again", CONVERGE, async || ready(&bridge)).await;
}
