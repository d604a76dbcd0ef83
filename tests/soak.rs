//! The nemesis soak: a workload on the source (creates, updates, deletes,
//! sequential creates, ephemerals, ACL changes under a route that copies
//! them) while a nemesis drawn from a seed breaks
//! the rig — partitions, an isolated bridge region, lossy links, bridges
//! killed with SIGKILL or frozen with SIGSTOP — for `SOAK_SECONDS` (20 in the
//! test suite; `make soak SECONDS=N`). At quiet points (the workload holds
//! still) and at the end an independent checker (plain reads) compares the
//! target with the source, ACLs included where the route copies them.
//! Figures go to stdout and `target/soak/results.json`.
//!
//! Checked: nothing lost (every node of the source is in the target with its
//! data), nothing resurrected (no node the source deleted survives in the
//! target), ephemerals projected as the route says (skipped), the sequence
//! counter carried, and no write by a fenced instance: while an instance is
//! cut off or frozen and the other leads, its applied-ops counter must not
//! move until it leads again.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rig::Rig;
use common::*;
use zookeeper_client::{Acl, Acls, AuthId, Client, CreateMode, Permission};

const CONVERGE: Duration = Duration::from_secs(120);

/// What the workload did, for the history checks.
#[derive(Default)]
struct History {
    /// Paths deleted and not created again since (must not be in the
    /// target once converged).
    deleted: BTreeMap<String, ()>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_soak() {
    let Some(rig) = Rig::new(&["src", "dst", "a", "b"]) else {
        return;
    };
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = seed(&format!("nemesis soak ({seconds} s)"), None);
    let src = rig.zk("src", 1);
    let dst = rig.zk("dst", 1);
    let s = src.client().await;
    let t = dst.client().await;
    mkdirs(&s, "/r/seq").await;
    // ACL changes fire no watch: they reach the target through the
    // anti-entropy pass of a route that copies ACLs.
    mkdirs(&s, "/acl").await;
    for i in 0..20 {
        create(&s, &format!("/acl/x{i}"), b"a").await;
    }
    let toml = format!(
        "heartbeat_interval_ms = 200\n[ensembles.src]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n\
         [ensembles.dst]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n\
         [[routes]]\nname = \"r\"\nsource = \"src:/r\"\ntargets = [\"dst:/r\"]\nverify_interval_s = 10\n\
         [[routes]]\nname = \"acl\"\nsource = \"src:/acl\"\ntargets = [\"dst:/acl\"]\nacls = \"copy\"\nverify_interval_s = 3\n",
        src.connect_string(),
        dst.connect_string()
    );
    let mut bridges = [
        Bridge::start_in(Some(&rig.region("a").ns), "a", &toml),
        Bridge::start_in(Some(&rig.region("b").ns), "b", &toml),
    ];
    eventually("one instance leads", CONVERGE, async || {
        leads(&bridges[0]) + leads(&bridges[1]) == 1.0
    })
    .await;

    // The workload, in the source region.
    let stop = Arc::new(AtomicBool::new(false));
    // Set at a quiet point: the workload holds still while the checker
    // compares.
    let paused = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let history = Arc::new(Mutex::new(History::default()));
    let workload = {
        let (s, stop, ops, history) = (s.clone(), stop.clone(), ops.clone(), history.clone());
        let paused = paused.clone();
        let mut rng = Rng::new(seed ^ 0x9e37_79b9);
        tokio::spawn(async move {
            let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
            let sequential = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
            let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
            // Two ACLs a node alternates between; both leave zkbridge the
            // rights it needs (read, write, admin).
            let narrow = [Acl::new(
                Permission::READ | Permission::WRITE | Permission::ADMIN,
                AuthId::anyone(),
            )];
            let wide = [Acl::new(Permission::ALL, AuthId::anyone())];
            while !stop.load(Ordering::Relaxed) {
                if paused.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let key = format!("/r/k{}", rng.below(300));
                let op = rng.below(11);
                let result = match op {
                    10 => {
                        let acl: &[Acl] = if rng.below(2) == 0 { &narrow } else { &wide };
                        s.set_acl(&format!("/acl/x{}", rng.below(20)), acl, None)
                            .await
                            .map(|_| ())
                    }
                    0..=2 => s.create(&key, b"c", &persistent).await.map(|_| ()),
                    3..=5 => s
                        .set_data(&key, format!("v{}", rng.next()).as_bytes(), None)
                        .await
                        .map(|_| ()),
                    6 | 7 => s.delete(&key, None).await,
                    8 => s.create("/r/seq/n-", b"", &sequential).await.map(|_| ()),
                    9 => s
                        .create(&format!("/r/e{}", rng.below(20)), b"e", &ephemeral)
                        .await
                        .map(|_| ()),
                    _ => unreachable!("op < 11"),
                };
                match result {
                    Ok(()) => {
                        let mut h = history.lock().unwrap();
                        match op {
                            6 | 7 => {
                                h.deleted.insert(key, ());
                            }
                            0..=2 => {
                                h.deleted.remove(&key);
                            }
                            _ => {}
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(zookeeper_client::Error::NodeExists | zookeeper_client::Error::NoNode) => {
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    // A server of the source's ensemble went (the nemesis):
                    // the client moves to another; the write is retried by
                    // the next one. An expired session is the end.
                    Err(e @ (zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed)) => {
                        panic!("workload: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };

    // The nemesis.
    let mut rng = Rng::new(seed);
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut fenced_writes = 0u64;
    let mut converge_s: Vec<f64> = Vec::new();
    let mut quiet_points = 0;
    let compare = Compare {
        acls: false,
        skip_ephemerals: true,
    };
    let with_acls = Compare {
        acls: true,
        skip_ephemerals: true,
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let victim = rng.below(2) as usize;
        let other = 1 - victim;
        let victim_region = ["a", "b"][victim];
        let hold = Duration::from_millis(1000 + rng.below(7000));
        let kind = match rng.below(6) {
            0 => "partition_src_dst",
            1 => "isolate_bridge_region",
            2 => "lossy_src_dst",
            3 => "kill_bridge",
            4 => "stop_bridge",
            _ => "partition_bridge_from_target",
        };
        *faults.entry(kind).or_default() += 1;
        eprintln!(
            "nemesis at {:.1}s: {kind} ({victim_region}) for {hold:?}",
            started.elapsed().as_secs_f64()
        );
        let was_leading = leads(&bridges[victim]) == 1.0;
        match kind {
            "partition_src_dst" => rig.partition("src", "dst"),
            "isolate_bridge_region" => rig.isolate(victim_region),
            "lossy_src_dst" => rig.drop_between("src", "dst", 30),
            "kill_bridge" => bridges[victim].kill(),
            "stop_bridge" => bridges[victim].signal(libc::SIGSTOP),
            _ => rig.partition(victim_region, "dst"),
        }
        // Fencing: once the other instance leads while the victim is cut
        // off or frozen, the victim's applied count is fixed until it leads
        // again.
        let cut_off = matches!(
            kind,
            "isolate_bridge_region" | "stop_bridge" | "partition_bridge_from_target"
        );
        let deadline = Instant::now() + hold;
        let mut fixed_at: Option<f64> = None;
        while Instant::now() < deadline {
            if cut_off
                && kind != "stop_bridge"
                && was_leading
                && fixed_at.is_none()
                && bridges[other].http_get("/metrics").is_some()
                && leads(&bridges[other]) == 1.0
            {
                fixed_at = Some(applied(&bridges[victim]));
            }
            tokio::time::sleep(Duration::from_millis(200)).await; // the fault's duration
        }
        rig.heal();
        match kind {
            "kill_bridge" => bridges[victim].restart(),
            "stop_bridge" => bridges[victim].signal(libc::SIGCONT),
            _ => {}
        }
        if let Some(at) = fixed_at {
            // Back in the network: until it leads again, nothing it does
            // may commit.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until && leads(&bridges[victim]) == 0.0 {
                if applied(&bridges[victim]) > at {
                    fenced_writes += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A quiet point now and then: the workload holds still and the
        // checker compares the whole target with the source.
        if rng.below(3) == 0 {
            paused.store(true, Ordering::Relaxed);
            let t0 = Instant::now();
            await_mirror(&s, "/r", &t, "/r", compare, CONVERGE).await;
            await_mirror(&s, "/acl", &t, "/acl", with_acls, CONVERGE).await;
            converge_s.push(t0.elapsed().as_secs_f64());
            quiet_points += 1;
            paused.store(false, Ordering::Relaxed);
        }
    }

    // The end: every fault lifted, the workload stopped, the mirror exact.
    rig.heal();
    stop.store(true, Ordering::Relaxed);
    workload.await.unwrap();
    let last_fault = Instant::now();
    await_mirror(&s, "/r", &t, "/r", compare, CONVERGE).await;
    await_mirror(&s, "/acl", &t, "/acl", with_acls, CONVERGE).await;
    converge_s.push(last_fault.elapsed().as_secs_f64());
    let lost = lost_nodes(&s, &t).await;
    let resurrected = {
        let deleted: Vec<String> = history.lock().unwrap().deleted.keys().cloned().collect();
        let mut n = 0;
        for path in deleted {
            if get(&s, &path).await.is_none() && get(&t, &path).await.is_some() {
                n += 1;
            }
        }
        n
    };
    let (_, sseq) = s.get_data("/r/seq").await.unwrap();
    let (_, tseq) = t.get_data("/r/seq").await.unwrap();
    let mirrored: f64 = bridges
        .iter()
        .map(|b| b.metric("zkbridge_applied_ops_total", &[]))
        .sum();
    let peak_rss_mib: Vec<f64> = bridges
        .iter()
        .filter_map(|b| b.pid())
        .map(|p| process_cost(p).0 as f64 / (1 << 20) as f64)
        .collect();
    converge_s.sort_by(f64::total_cmp);
    let results = serde_json::json!({
        "seed": seed,
        "seconds": seconds,
        "ops": ops.load(Ordering::Relaxed),
        "ops_mirrored": mirrored,
        "faults": faults,
        "lost": lost,
        "resurrected": resurrected,
        "fenced_writes": fenced_writes,
        "quiet_points": quiet_points,
        "converge_s": {
            "p50": converge_s[converge_s.len() / 2],
            "max": converge_s.last().copied().unwrap_or(0.0),
        },
        "peak_rss_mib": peak_rss_mib,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    println!(
        "nemesis soak results:\n{}",
        serde_json::to_string_pretty(&results).unwrap()
    );
    assert_eq!(lost, 0, "nodes lost");
    assert_eq!(resurrected, 0, "deleted nodes resurrected");
    assert_eq!(fenced_writes, 0, "writes by a fenced instance");
    assert!(tseq.cversion >= sseq.cversion, "sequence counter carried");
}

/// Whether the instance leads route `r` (the fencing checks follow it; the
/// ACL route's leader may be the other instance).
fn leads(bridge: &Bridge) -> f64 {
    bridge.metric("zkbridge_leader", &[("route", "r")])
}

/// Ops the instance committed for route `r`.
fn applied(bridge: &Bridge) -> f64 {
    bridge.metric("zkbridge_applied_ops_total", &[("route", "r")])
}

/// Source nodes (persistent) missing in the target.
async fn lost_nodes(s: &Client, t: &Client) -> u64 {
    let mut lost = 0;
    let mut stack = vec!["/r".to_string()];
    while let Some(path) = stack.pop() {
        let Ok((_, stat)) = s.get_data(&path).await else {
            continue;
        };
        if stat.ephemeral_owner != 0 {
            continue;
        }
        if get(t, &path).await.is_none() {
            lost += 1;
        }
        if let Ok(children) = s.list_children(&path).await {
            stack.extend(children.into_iter().map(|c| format!("{path}/{c}")));
        }
    }
    lost
}
