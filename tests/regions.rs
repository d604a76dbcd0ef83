//! Regions that fail as regions do, on the rig (tests/common/rig.rs):
//! each region a network namespace with its own ensemble and, where the
//! scenario wants, its own zkbridge. Mirrors are judged with plain reads
//! through each region's own forwarders. Skipped, saying why, where network
//! namespaces cannot be made (not root).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rig::Rig;
use common::*;
use zookeeper_client::{Acls, Client, CreateMode};

const CONVERGE: Duration = Duration::from_secs(90);
/// Session timeout of every ensemble in these scenarios: faults last longer.
const SESSION_MS: u64 = 4000;

fn ensembles_with_timeout(list: &[(&str, &Zk)]) -> String {
    list.iter()
        .map(|(name, zk)| {
            format!(
                "[ensembles.{name}]\nconnect = \"{}\"\nsession_timeout_ms = {SESSION_MS}\n",
                zk.connect_string()
            )
        })
        .collect()
}

fn route(source: &str, target: &str) -> String {
    format!("[[routes]]\nname = \"r\"\nsource = \"{source}:/r\"\ntargets = [\"{target}:/r\"]\n")
}

/// A stream of creates, sequential creates, updates and deletes under `/r`
/// until stopped; the final tree is what the mirror must equal.
struct Workload {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    async fn start(s: Client, seed: u64) -> Workload {
        mkdirs(&s, "/r/seq").await;
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let (stopping, counting) = (stop.clone(), ops.clone());
        let task = tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            let mut next = || rng.next();
            let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
            let sequential = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
            while !stopping.load(Ordering::Relaxed) {
                let key = format!("/r/k{}", next() % 200);
                let result = match next() % 4 {
                    0 => s.create(&key, b"c", &persistent).await.map(|_| ()),
                    1 => s
                        .set_data(&key, format!("v{}", next()).as_bytes(), None)
                        .await
                        .map(|_| ()),
                    2 => s.delete(&key, None).await,
                    _ => s.create("/r/seq/n-", b"", &sequential).await.map(|_| ()),
                };
                match result {
                    Ok(()) | Err(zookeeper_client::Error::NodeExists | zookeeper_client::Error::NoNode) => {
                        counting.fetch_add(1, Ordering::Relaxed);
                    }
                    // A server of the source's ensemble went (the nemesis):
                    // the client moves to another; the write is retried by
                    // the next one. An expired session is the end.
                    Err(e @ (zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed)) => {
                        panic!("workload: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Workload { stop, ops, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.ops.load(Ordering::Relaxed)
    }
}

/// Two regions, `east` (the source) and `west` (the target), standalone
/// ensembles, a route east:/r → west:/r and one bridge in `bridge_in`.
/// Fields drop in order: the bridge and servers before the rig.
struct EastWest {
    bridge: Bridge,
    s: Client,
    t: Client,
    _east: Zk,
    _west: Zk,
    rig: Rig,
}

async fn east_west(bridge_in: &str) -> Option<EastWest> {
    let rig = Rig::new(&["east", "west"])?;
    let east = rig.zk("east", 1);
    let west = rig.zk("west", 1);
    let s = east.client().await;
    let t = west.client().await;
    let toml = format!(
        "heartbeat_interval_ms = 200\n{}{}",
        ensembles_with_timeout(&[("east", &east), ("west", &west)]),
        route("east", "west")
    );
    let bridge = Bridge::start_in(Some(&rig.region(bridge_in).ns), &format!("{bridge_in}-1"), &toml);
    Some(EastWest {
        bridge,
        s,
        t,
        _east: east,
        _west: west,
        rig,
    })
}

/// The source region goes dark for longer than the session timeout while
/// its applications keep changing it; the target region's bridge catches
/// up once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_region_isolated_past_the_session_timeout() {
    let Some(ew) = east_west("west").await else { return };
    let (bridge, s, t, rig) = (&ew.bridge, &ew.s, &ew.t, &ew.rig);
    let load = Workload::start(s.clone(), 1).await;
    await_mirror_while_busy(bridge).await;
    rig.isolate("east");
    // Changes go on inside the isolated region; the bridge's source session
    // expires.
    eventually("the source session expires", CONVERGE, async || {
        bridge.metric("zkbridge_session_expirations_total", &[("ensemble", "east")]) >= 1.0
    })
    .await;
    rig.heal();
    let ops = load.finish().await;
    assert!(ops > 100, "the workload ran: {ops} ops");
    await_mirror(s, "/r", t, "/r", Compare::default(), CONVERGE).await;
    assert_sequence_counter_carried(s, t).await;
}

/// The target region goes dark past the session timeout; the source's
/// bridge holds the changes and delivers them when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_region_isolated_past_the_session_timeout() {
    let Some(ew) = east_west("east").await else { return };
    let (bridge, s, t, rig) = (&ew.bridge, &ew.s, &ew.t, &ew.rig);
    let load = Workload::start(s.clone(), 2).await;
    await_mirror_while_busy(bridge).await;
    rig.isolate("west");
    eventually("the target session expires", CONVERGE, async || {
        bridge.metric("zkbridge_session_expirations_total", &[("ensemble", "west")]) >= 1.0
    })
    .await;
    eventually("not ready while the target is away", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 503)
    })
    .await;
    rig.heal();
    load.finish().await;
    await_mirror(s, "/r", t, "/r", Compare::default(), CONVERGE).await;
    eventually("ready again", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
}

/// Packets from the bridge's region reach the source, but nothing comes
/// back (a one-way partition), then a link that flaps for 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_partition_and_a_flapping_link() {
    let Some(ew) = east_west("west").await else { return };
    let (bridge, s, t, rig) = (&ew.bridge, &ew.s, &ew.t, &ew.rig);
    let load = Workload::start(s.clone(), 3).await;
    await_mirror_while_busy(bridge).await;

    rig.partition_one_way("east", "west");
    eventually("the source session is lost", CONVERGE, async || {
        bridge.metric("zkbridge_session_state", &[("ensemble", "east")]) == 0.0
    })
    .await;
    rig.heal();

    let mut rng = Rng::new(seed("flapping link", Some(7)));
    let started = Instant::now();
    let mut flaps = 0;
    while started.elapsed() < Duration::from_secs(30) {
        rig.partition("east", "west");
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1800))).await;
        rig.heal();
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1800))).await;
        flaps += 1;
    }
    assert!(flaps >= 8, "{flaps} flaps");
    load.finish().await;
    await_mirror(s, "/r", t, "/r", Compare::default(), CONVERGE).await;
    assert_sequence_counter_carried(s, t).await;
}

/// 3-node ensembles: the source's leader killed while changes stream, then
/// the target's, then the target loses its quorum for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_ensembles_lose_leaders_and_the_target_its_quorum() {
    let Some(rig) = Rig::new(&["east", "west"]) else { return };
    let mut east = rig.zk("east", 3);
    let mut west = rig.zk("west", 3);
    let s = east.client().await;
    let t = west.client().await;
    let toml = format!(
        "heartbeat_interval_ms = 200\n{}{}",
        ensembles_with_timeout(&[("east", &east), ("west", &west)]),
        route("east", "west")
    );
    let bridge = Bridge::start_in(Some(&rig.region("west").ns), "west-1", &toml);
    let load = Workload::start(s.clone(), 4).await;
    await_mirror_while_busy(&bridge).await;
    for (name, zk) in [("east", &mut east), ("west", &mut west)] {
        let leader = zk
            .servers
            .iter()
            .position(|s| s.mode().as_deref() == Some("leader"))
            .unwrap_or_else(|| panic!("{name} has a leader"));
        let applied = bridge.metric("zkbridge_applied_ops_total", &[]);
        zk.servers[leader].kill();
        eventually(&format!("{name}: a new leader"), CONVERGE, async || {
            zk.servers.iter().any(|s| s.mode().as_deref() == Some("leader"))
        })
        .await;
        eventually("the bridge applies again", CONVERGE, async || {
            bridge.metric("zkbridge_applied_ops_total", &[]) > applied + 20.0
        })
        .await;
        zk.servers[leader].restart();
    }
    // The target loses its quorum (two of three down) for a minute while
    // the source keeps changing.
    for i in 0..2 {
        west.servers[i].kill();
    }
    tokio::time::sleep(Duration::from_secs(60)).await; // the outage itself, not a wait for a condition
    for i in 0..2 {
        west.servers[i].restart();
    }
    load.finish().await;
    // The checker's own session to the target expired with the quorum.
    drop(t);
    let t = west.client().await;
    await_mirror(&s, "/r", &t, "/r", Compare::default(), CONVERGE).await;
}

/// Two instances in different regions compete for the route/target; the
/// leader's region is isolated: the other takes over, and the isolated one
/// commits nothing after it lost the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_region_isolated_the_other_instance_takes_over_and_the_old_one_is_fenced() {
    let Some(rig) = Rig::new(&["src", "dst", "a", "b"]) else {
        return;
    };
    let src = rig.zk("src", 1);
    let dst = rig.zk("dst", 1);
    let s = src.client().await;
    let t = dst.client().await;
    let toml = format!(
        "heartbeat_interval_ms = 200\n{}{}",
        ensembles_with_timeout(&[("src", &src), ("dst", &dst)]),
        route("src", "dst")
    );
    let a = Bridge::start_in(Some(&rig.region("a").ns), "a", &toml);
    eventually("a leads", CONVERGE, async || a.leading() == 1.0).await;
    let b = Bridge::start_in(Some(&rig.region("b").ns), "b", &toml);
    eventually("b stands by", CONVERGE, async || b.metrics().is_some()).await;
    let load = Workload::start(s.clone(), 5).await;
    eventually("a applies", CONVERGE, async || {
        a.metric("zkbridge_applied_ops_total", &[]) > 50.0
    })
    .await;
    rig.isolate("a");
    eventually("b takes over", CONVERGE, async || b.leading() == 1.0).await;
    // From here a holds no lease: whatever it does, nothing of it commits.
    let a_applied = a.metric("zkbridge_applied_ops_total", &[]);
    eventually("b commits a checkpoint", CONVERGE, async || {
        let Ok((data, _)) = t.get_data("/zkbridge/routes/r/dst/checkpoint").await else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(&data).is_ok_and(|c| c["bridge"] == "b")
    })
    .await;
    rig.heal();
    load.finish().await;
    await_mirror(&s, "/r", &t, "/r", Compare::default(), CONVERGE).await;
    eventually("a stands by behind b", CONVERGE, async || a.leading() == 0.0).await;
    assert_eq!(
        a.metric("zkbridge_applied_ops_total", &[]),
        a_applied,
        "the fenced instance committed nothing after it lost the lease"
    );
    assert_eq!(b.leading(), 1.0);
}

/// Waits until the bridge has finished its initial sync and applies the
/// stream (the workload runs on).
async fn await_mirror_while_busy(bridge: &Bridge) {
    eventually("initial sync done and applying", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
            && bridge.metric("zkbridge_applied_ops_total", &[]) > 20.0
    })
    .await;
}

/// The target parent's sequence counter is at least the source's, so a
/// client failing over never gets a sequential name that exists.
async fn assert_sequence_counter_carried(s: &Client, t: &Client) {
    let (_, source) = s.get_data("/r/seq").await.unwrap();
    let (_, target) = t.get_data("/r/seq").await.unwrap();
    assert!(
        target.cversion >= source.cversion,
        "sequence counter: target {} < source {}",
        target.cversion,
        source.cversion
    );
}

/// 40 ms ± 5 ms between the regions (the delay proxy on the inter-region
/// path): every change arrives, and the lag a watching client in the target
/// region sees is reported (measured, not asserted: `make bench` owns
/// speed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_milliseconds_between_regions_lag_reported() {
    let Some(rig) = Rig::new(&["east", "west"]) else { return };
    let east = rig.zk("east", 1);
    let west = rig.zk("west", 1);
    let s = east.client().await;
    let t = west.client().await;
    mkdirs(&s, "/r").await;
    for i in 0..50 {
        create(&s, &format!("/r/n{i}"), b"0").await;
    }
    let latency = common::rig::Latency {
        base: Duration::from_millis(40),
        jitter: Duration::from_millis(5),
    };
    // The bridge runs in the target region and reads the source across the
    // delayed link.
    let (east_via_link, _link) = rig.delayed("west", &east, latency);
    let toml = format!(
        "heartbeat_interval_ms = 200\n[ensembles.east]\nconnect = \"{east_via_link}\"\nsession_timeout_ms = {SESSION_MS}\n{}{}",
        ensembles_with_timeout(&[("west", &west)]),
        route("east", "west")
    );
    let bridge = Bridge::start_in(Some(&rig.region("west").ns), "west-1", &toml);
    await_mirror(&s, "/r", &t, "/r", Compare::default(), CONVERGE).await;
    eventually("ready", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
    // A watching client in the target region: each value's arrival minus
    // its write (both clocks this process's).
    let mut watcher = t
        .watch("/r", zookeeper_client::AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    let mut written = std::collections::HashMap::new();
    let mut lags = Vec::new();
    for i in 1..=300u32 {
        let path = format!("/r/n{}", i % 50);
        let value = format!("v{i}");
        written.insert(value.clone(), Instant::now());
        s.set_data(&path, value.as_bytes(), None).await.unwrap();
        while let Ok(event) = tokio::time::timeout(Duration::from_millis(1), watcher.changed()).await {
            if let Ok((data, _)) = t.get_data(&event.path).await {
                if let Some(at) = written.remove(&String::from_utf8_lossy(&data).to_string()) {
                    lags.push(at.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    await_mirror(&s, "/r", &t, "/r", Compare::default(), CONVERGE).await;
    lags.sort_by(f64::total_cmp);
    assert!(
        lags.len() > 100,
        "the watching client saw the changes arrive: {}",
        lags.len()
    );
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
    println!(
        "lag through 40 ms ± 5 ms (source one way away): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} changes",
        at(0.5),
        at(0.99),
        lags[lags.len() - 1],
        lags.len()
    );
}
