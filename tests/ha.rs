//! Several instances against real ZooKeeper: one leader per route/target,
//! fail-over on SIGKILL, fencing of a frozen leader, drain on SIGTERM,
//! leases spread across instances.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use zookeeper_client::{Acls, Client, CreateMode};

const CONVERGE: Duration = Duration::from_secs(60);

fn config(src: &Zk, dst: &Zk, session_timeout_ms: u64, routes: usize) -> String {
    let mut toml = String::from("heartbeat_interval_ms = 200\n");
    for (name, zk) in [("src", src), ("dst", dst)] {
        toml.push_str(&format!(
            "[ensembles.{name}]\nconnect = \"{}\"\nsession_timeout_ms = {session_timeout_ms}\n",
            zk.connect_string()
        ));
    }
    for i in 0..routes {
        toml.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nsource = \"src:/h{i}\"\ntargets = [\"dst:/h{i}\"]\n"
        ));
    }
    toml
}

/// Writes to /h0 until stopped: updates of 50 nodes, round robin.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    async fn start(s: &Client) -> Writer {
        for i in 0..50 {
            create(s, &format!("/h0/n{i}"), b"0").await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag) = (s.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                s.set_data(&format!("/h0/n{}", n % 50), n.to_string().as_bytes(), None)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        });
        Writer { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Samples both instances' `zkbridge_leader` and checks there is never more
/// than one leader of the single route/target.
async fn assert_at_most_one_leader(a: &Bridge, b: &Bridge, samples: usize) {
    for _ in 0..samples {
        let (x, y) = (a.leading(), b.leading());
        assert!(x + y <= 1.0, "two leaders at once: a={x} b={y}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn checkpoint_bridge(t: &Client, route: &str) -> Option<String> {
    let data = get(t, &format!("/zkbridge/routes/{route}/dst/checkpoint")).await?;
    let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
    v["bridge"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_failover_after_sigkill() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/h0").await;
    let toml = config(&src, &dst, 4000, 1);
    let mut a = Bridge::start_as("a", &toml);
    eventually("a leads", CONVERGE, async || a.leading() == 1.0).await;
    let b = Bridge::start_as("b", &toml);
    eventually("b is up", CONVERGE, async || b.metrics().is_some()).await;
    let writer = Writer::start(&s).await;
    assert_at_most_one_leader(&a, &b, 40).await;
    assert_eq!(b.leading(), 0.0, "b stands by while a leads");
    let status = run_status(&b);
    assert_eq!(status["routes"][0]["leader"], "a");
    assert_eq!(status["routes"][0]["standby"][0], "b");

    a.kill();
    // The lease goes with a's session: within the session timeout (4 s)
    // plus the time to notice.
    eventually("b takes over", Duration::from_secs(20), async || b.leading() == 1.0).await;
    // a is gone: ask the znodes, not a's (dead) metrics.
    let status = run_status(&b);
    assert_eq!(status["routes"][0]["leader"], "b", "{status}");
    assert_eq!(status["routes"][0]["standby"], serde_json::json!([]), "{status}");
    writer.finish().await;
    await_in_sync(&b.config(), CONVERGE).await;
    let t = dst.client().await;
    eventually("b's checkpoint", CONVERGE, async || {
        checkpoint_bridge(&t, "r0").await.as_deref() == Some("b")
    })
    .await;
    assert!(
        b.metric("zkbridge_resume_nodes_scanned_total", &[]) > 0.0,
        "b resumed from a's checkpoint"
    );
}

/// `zkbridge status --json` for an instance's config.
fn run_status(b: &Bridge) -> serde_json::Value {
    let out = std::process::Command::new(bin())
        .args(["status", "--json", "-c"])
        .arg(&b.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_cannot_commit_after_takeover() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/h0").await;
    let toml = config(&src, &dst, 4000, 1);
    let a = Bridge::start_as("a", &toml);
    eventually("a leads", CONVERGE, async || a.leading() == 1.0).await;
    let b = Bridge::start_as("b", &toml);
    eventually("b is up", CONVERGE, async || b.metrics().is_some()).await;
    let writer = Writer::start(&s).await;
    // Let a apply a while, then freeze it mid-stream: its source socket
    // keeps receiving events it will only read once thawed.
    eventually("a applies the stream", CONVERGE, async || {
        a.metric("zkbridge_applied_ops_total", &[]) > 100.0
    })
    .await;
    a.signal(libc::SIGSTOP);
    eventually("b takes over from the frozen a", Duration::from_secs(30), async || {
        b.leading() == 1.0
    })
    .await;
    // What a had committed when frozen is now fixed: its session is gone.
    let t = dst.client().await;
    eventually("b commits a checkpoint", CONVERGE, async || {
        checkpoint_bridge(&t, "r0").await.as_deref() == Some("b")
    })
    .await;

    a.signal(libc::SIGCONT);
    // a wakes up believing it leads, with events in its buffers; every
    // write it tries is refused, and it falls back to standby.
    let a_applied = |a: &Bridge| a.metric("zkbridge_applied_ops_total", &[]);
    eventually("a answers again", CONVERGE, async || a.metrics().is_some()).await;
    let at_thaw = a_applied(&a);
    eventually("a stands by", CONVERGE, async || a.leading() == 0.0).await;
    writer.finish().await;
    await_in_sync(&b.config(), CONVERGE).await;
    assert_eq!(
        a_applied(&a),
        at_thaw,
        "the fenced instance committed nothing after it was thawed"
    );
    assert_eq!(b.leading(), 1.0);
    assert_eq!(checkpoint_bridge(&t, "r0").await.as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_lease_over_without_waiting_for_the_session_timeout() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/h0").await;
    // A session timeout far above the hand-over we expect.
    let toml = config(&src, &dst, 30_000, 1);
    let mut a = Bridge::start_as("a", &toml);
    eventually("a leads", CONVERGE, async || a.leading() == 1.0).await;
    let b = Bridge::start_as("b", &toml);
    eventually("b is up", CONVERGE, async || b.metrics().is_some()).await;
    create(&s, "/h0/before", b"1").await;
    await_in_sync(&a.config(), CONVERGE).await;

    let stopped = std::time::Instant::now();
    assert_eq!(a.stop().and_then(|st| st.code()), Some(0));
    eventually("b takes over", Duration::from_secs(15), async || b.leading() == 1.0).await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "hand-over took {took:?}: it waited for the 30 s session timeout"
    );
    create(&s, "/h0/after", b"2").await;
    await_in_sync(&b.config(), CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_spread_evenly_over_two_instances() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    for i in 0..6 {
        s.create(
            &format!("/h{i}"),
            b"",
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await
        .unwrap();
    }
    let toml = config(&src, &dst, 4000, 6);
    let a = Bridge::start_as("a", &toml);
    eventually("a leads all six", CONVERGE, async || a.leading() == 6.0).await;
    let b = Bridge::start_as("b", &toml);
    eventually("three each", CONVERGE, async || {
        a.leading() == 3.0 && b.leading() == 3.0
    })
    .await;
    for i in 0..6 {
        create(&s, &format!("/h{i}/x"), b"1").await;
    }
    await_in_sync(&a.config(), CONVERGE).await;
    assert_eq!((a.leading(), b.leading()), (3.0, 3.0), "stable after the hand-over");
}

/// A lease lost in the middle of a long initial copy ends the lead at once:
/// the worker stands by (and competes again) without finishing the copy
/// first. Its writes were fenced either way; what matters is that it stops
/// and says so, instead of learning it after the scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_during_a_resync_ends_the_lead_at_once() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/h0").await;
    let nodes: Vec<(String, Vec<u8>)> = (0..20_000).map(|i| (format!("/h0/n{i}"), vec![b'x'; 100])).collect();
    create_many(&s, &nodes).await;
    // The target 20 ms away: the copy takes seconds.
    let proxy = common::proxy::FaultyEnsemble::start(&dst).await;
    proxy.set(common::proxy::Fault::Delay(Duration::from_millis(20)));
    let toml = format!(
        "heartbeat_interval_ms = 200\n[ensembles.src]\nconnect = \"{}\"\n[ensembles.dst]\nconnect = \"{}\"\n\
         [[routes]]\nname = \"r0\"\nsource = \"src:/h0\"\ntargets = [\"dst:/h0\"]\n",
        src.connect_string(),
        proxy.connect_string()
    );
    let bridge = Bridge::start(&toml);
    eventually("the copy is under way", CONVERGE, async || {
        bridge.metric("zkbridge_applied_ops_total", &[]) > 100.0
    })
    .await;
    // Someone (an operator, a session hiccup) takes the lease node away.
    let t = dst.client().await;
    let leases = "/zkbridge/routes/r0/dst/leases";
    for child in t.list_children(leases).await.unwrap() {
        t.delete(&format!("{leases}/{child}"), None).await.unwrap();
    }
    eventually("the lead ends", CONVERGE, async || bridge.log().contains("lease lost")).await;
    let log = bridge.log();
    let lost_at = log.find("lease lost").unwrap();
    assert!(
        log.find("initial sync done").is_none_or(|done| done > lost_at),
        "the copy was not finished first"
    );
    // It competes again, leads, and completes.
    proxy.set(common::proxy::Fault::Pass);
    await_mirror(&s, "/h0", &t, "/h0", Compare::default(), Duration::from_secs(120)).await;
}
