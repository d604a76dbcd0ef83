//! Faults between regions, against real ZooKeeper: partitions longer than
//! the session timeout on either side, flapping links, leader loss and lost
//! quorum in 3-node ensembles, and a long partition under a fast-changing
//! source. Every scenario ends with a clean `zkbridge diff`: nothing lost.
//!
//! The partitions are made by a fault-injecting proxy between zkbridge and
//! the ensemble (tests/common/proxy.rs); how long a fault lasts is the
//! scenario itself, not a wait for something to happen.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proxy::{Fault, FaultyEnsemble};
use common::*;
use zookeeper_client::{Acls, Client, CreateMode};

const CONVERGE: Duration = Duration::from_secs(90);

/// `bridge_extra` goes in `[bridge]`; the route keeps the default delete
/// circuit breaker, which the churn below stays under.
fn config(src: &str, dst: &str, bridge_extra: &str) -> String {
    format!(
        "heartbeat_interval_ms = 200\n{bridge_extra}\
         [ensembles.src]\nconnect = \"{src}\"\nsession_timeout_ms = 4000\n\
         [ensembles.dst]\nconnect = \"{dst}\"\nsession_timeout_ms = 4000\n\
         [[routes]]\nname = \"app\"\nsource = \"src:/app\"\ntargets = [\"dst:/app\"]\n"
    )
}

async fn seed(c: &Client, n: usize) {
    mkdirs(c, "/app").await;
    let nodes: Vec<(String, Vec<u8>)> = (0..n).map(|i| (format!("/app/n{i}"), b"0".to_vec())).collect();
    create_many(c, &nodes).await;
}

/// Changes the source (sets, creates, deletes) about every `pace` until
/// stopped; returns how many changes were made.
fn churn(c: Client, seeded: usize, pace: Duration) -> (Arc<AtomicBool>, tokio::task::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut i = 0usize;
        while !flag.load(Ordering::Relaxed) {
            let data = format!("v{i}");
            let _ = c
                .set_data(&format!("/app/n{}", i % seeded), data.as_bytes(), None)
                .await;
            if i % 10 == 0 {
                // The writer's own connection may be hit too (a killed
                // leader): a failed change is simply not made.
                let _ = c
                    .create(
                        &format!("/app/new{i}"),
                        data.as_bytes(),
                        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
                    )
                    .await;
            }
            if i % 100 == 50 {
                let _ = c.delete(&format!("/app/new{}", i - 50), None).await;
            }
            i += 1;
            tokio::time::sleep(pace).await;
        }
        i
    });
    (stop, task)
}

async fn stop_churn((stop, task): (Arc<AtomicBool>, tokio::task::JoinHandle<usize>)) -> usize {
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap()
}

/// The fault lasts this long: twice the 4 s session timeout, so the
/// server expires the bridge's session while it is cut off.
const LONGER_THAN_SESSION: Duration = Duration::from_secs(9);

/// Cuts the bridge off from one side (`"src"` or `"dst"`) for longer than
/// its session while the source keeps changing; then checks that nothing
/// was lost and that mirroring goes on on the new session.
async fn partition_past_the_session(side: &str) {
    let (src, dst) = (Zk::standalone(), Zk::standalone());
    let s = src.client().await;
    seed(&s, 300).await;
    let proxy = FaultyEnsemble::start(if side == "src" { &src } else { &dst }).await;
    let (to_src, to_dst) = match side {
        "src" => (proxy.connect_string(), dst.connect_string()),
        _ => (src.connect_string(), proxy.connect_string()),
    };
    let bridge = Bridge::start(&config(&to_src, &to_dst, ""));
    await_in_sync(&bridge.config(), CONVERGE).await;

    let writer = churn(s.clone(), 300, Duration::from_millis(5));
    proxy.set(Fault::Blackhole);
    tokio::time::sleep(LONGER_THAN_SESSION).await;
    proxy.set(Fault::Pass);
    let changes = stop_churn(writer).await;
    assert!(changes > 100, "the source kept changing ({changes})");
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert!(
        bridge.metric("zkbridge_session_expirations_total", &[("ensemble", side)]) >= 1.0,
        "the partition outlasted the session"
    );
    create(&s, "/app/after", b"a").await;
    await_in_sync(&bridge.config(), CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_partitioned_past_its_session_timeout_loses_nothing() {
    partition_past_the_session("dst").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_partitioned_past_its_session_timeout_loses_nothing() {
    partition_past_the_session("src").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_links_for_a_minute_lose_nothing() {
    let (src, dst) = (Zk::standalone(), Zk::standalone());
    let s = src.client().await;
    seed(&s, 200).await;
    let to_src = FaultyEnsemble::start(&src).await;
    let to_dst = FaultyEnsemble::start(&dst).await;
    let bridge = Bridge::start(&config(&to_src.connect_string(), &to_dst.connect_string(), ""));
    await_in_sync(&bridge.config(), CONVERGE).await;

    let writer = churn(s.clone(), 200, Duration::from_millis(10));
    // A minute of links that reset, drop and slow down every few seconds.
    let faults = [
        Fault::Reset,
        Fault::Pass,
        Fault::Blackhole,
        Fault::Pass,
        Fault::Delay(Duration::from_millis(150)),
        Fault::Reset,
    ];
    for step in 0..20 {
        let fault = faults[step % faults.len()];
        if step % 2 == 0 {
            to_dst.set(fault);
        } else {
            to_src.set(fault);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        to_src.set(Fault::Pass);
        to_dst.set(Fault::Pass);
    }
    stop_churn(writer).await;
    await_in_sync(&bridge.config(), CONVERGE).await;
}

fn leader(zk: &Zk) -> usize {
    zk.servers
        .iter()
        .position(|s| s.mode().as_deref() == Some("leader"))
        .expect("the ensemble has a leader")
}

async fn await_quorum(zk: &Zk) {
    eventually("a leader is elected", CONVERGE, async || {
        zk.servers.iter().any(|s| s.mode().as_deref() == Some("leader"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_in_both_ensembles_and_a_target_without_quorum_lose_nothing() {
    let mut src = Zk::start(3);
    let mut dst = Zk::start(3);
    let s = src.client().await;
    seed(&s, 300).await;
    let bridge = Bridge::start(&config(&src.connect_string(), &dst.connect_string(), ""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let writer = churn(s.clone(), 300, Duration::from_millis(5));

    // Kill the source's leader while changes stream, then the target's.
    let l = leader(&src);
    src.servers[l].kill();
    await_quorum(&src).await;
    let l2 = leader(&dst);
    dst.servers[l2].kill();
    await_quorum(&dst).await;
    src.servers[l].restart();
    dst.servers[l2].restart();

    // Then the target loses its quorum for longer than a session.
    let down: Vec<usize> = (0..3).filter(|i| *i != leader(&dst)).take(2).collect();
    for i in &down {
        dst.servers[*i].kill();
    }
    tokio::time::sleep(LONGER_THAN_SESSION).await;
    for i in &down {
        dst.servers[*i].restart();
    }
    await_quorum(&dst).await;
    let changes = stop_churn(writer).await;
    assert!(changes > 100);
    await_in_sync(&bridge.config(), CONVERGE).await;
}

/// A target cut off while the source changes fast: the bridge stops
/// tracking paths one by one past `max_pending_paths` (a full resync,
/// counted, replaces them), so memory stays bounded however long the
/// partition lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_work_stays_bounded_while_a_target_is_cut_off() {
    let (src, dst) = (Zk::standalone(), Zk::standalone());
    let s = src.client().await;
    seed(&s, 100).await;
    let proxy = FaultyEnsemble::start(&dst).await;
    let bridge = Bridge::start(&config(
        &src.connect_string(),
        &proxy.connect_string(),
        "max_pending_paths = 1000\n",
    ));
    await_in_sync(&bridge.config(), CONVERGE).await;
    proxy.set(Fault::Blackhole);
    // 20,000 new paths of 1 KiB while the target is unreachable.
    let nodes: Vec<(String, Vec<u8>)> = (0..20_000)
        .map(|i| (format!("/app/burst{i}"), vec![b'x'; 1024]))
        .collect();
    create_many(&s, &nodes).await;
    eventually("the queue gives up on single paths", CONVERGE, async || {
        bridge.metric("zkbridge_pending_paths", &[]) <= 1000.0 && bridge.log().contains("pending paths overflowed")
    })
    .await;
    let (peak_rss, _) = process_cost(bridge.pid().unwrap());
    proxy.set(Fault::Pass);
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert!(bridge.metric("zkbridge_resyncs_total", &[("reason", "overflow")]) >= 1.0);
    assert!(
        peak_rss < 128 << 20,
        "peak RSS {} MiB while 20 MiB of changes waited",
        peak_rss >> 20
    );
}

/// A lost connection that comes back within the session: the source watch
/// and the target watch keep reporting changes afterwards (the client
/// crate does not re-register persistent watches on reconnect; zkbridge
/// re-arms them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_a_reconnect_of_the_same_session() {
    let (src, dst) = (Zk::standalone(), Zk::standalone());
    let s = src.client().await;
    seed(&s, 10).await;
    let to_src = FaultyEnsemble::start(&src).await;
    let to_dst = FaultyEnsemble::start(&dst).await;
    let bridge = Bridge::start(&config(&to_src.connect_string(), &to_dst.connect_string(), ""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    for (name, proxy) in [("src", &to_src), ("dst", &to_dst)] {
        proxy.set(Fault::Reset);
        eventually("the bridge notices", CONVERGE, async || {
            bridge.metric("zkbridge_session_state", &[("ensemble", name)]) == 0.0
        })
        .await;
        proxy.set(Fault::Pass);
        eventually("the bridge reconnects", CONVERGE, async || {
            bridge.metric("zkbridge_session_state", &[("ensemble", name)]) == 1.0
        })
        .await;
    }
    assert_eq!(
        bridge.metric("zkbridge_session_expirations_total", &[]),
        0.0,
        "same sessions"
    );
    // Changes after the reconnect still arrive, by the source watch…
    s.set_data("/app/n1", b"after the reconnect", None).await.unwrap();
    create(&s, "/app/later", b"l").await;
    let t = dst.client().await;
    eventually("source changes still flow", CONVERGE, async || {
        get(&t, "/app/n1").await.as_deref() == Some(&b"after the reconnect"[..])
            && get(&t, "/app/later").await.is_some()
    })
    .await;
    // …and a local change in the target is still noticed by the target watch.
    t.set_data("/app/n2", b"local", None).await.unwrap();
    eventually("the local change is overwritten", CONVERGE, async || {
        get(&t, "/app/n2").await.as_deref() == Some(&b"0"[..])
    })
    .await;
    assert!(bridge.metric("zkbridge_conflicts_total", &[("action", "overwritten")]) >= 1.0);
}
