//! `make bench`: zkbridge against the physical limit and against the tool
//! users would pick instead, with real ZooKeeper servers started here.
//!
//! Every figure is taken in this run, side by side: the raw write limit of
//! the target (pipelined `multi` creates with the same client crate), the
//! initial sync, zk-shell's `cp`, steady-state lag measured by a separate
//! watching client, the same with 40 ms of injected latency each way, the
//! resume after a 1% change against a bare source scan, a switchover's
//! write-unavailable window on 10,000 nodes, and the process's peak RSS and
//! CPU time. Prints a table and writes
//! `target/bench/results.json`.
//!
//! Options: `--quick` (small and short: keeps the bench working in CI, says
//! nothing about speed), `--nodes N`, `--runs N`, `--rate OPS`, `--seconds S`,
//! `--ensemble` (3-node source and target).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

mod charts;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use zookeeper_client::{Acls, AddWatchMode, Client, CreateMode, EventType};

struct Args {
    quick: bool,
    nodes: usize,
    runs: usize,
    rate: u32,
    seconds: u64,
    ensemble: bool,
    peer_nodes: usize,
    /// Phases to run (`--only raw,sync,wan,peer,switchover,routes`; `sync` includes resume and
    /// steady-state lag, which start from its copy): all by default.
    only: Option<Vec<String>>,
}

impl Args {
    fn parse() -> Args {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let quick = argv.iter().any(|a| a == "--quick");
        let value = |name: &str| {
            argv.iter()
                .position(|a| a == name)
                .and_then(|i| argv.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let nodes = value("--nodes").unwrap_or(if quick { 5_000 } else { 100_000 }) as usize;
        Args {
            quick,
            nodes,
            runs: value("--runs").unwrap_or(if quick { 1 } else { 3 }) as usize,
            rate: value("--rate").unwrap_or(2_000) as u32,
            seconds: value("--seconds").unwrap_or(if quick { 5 } else { 60 }),
            ensemble: argv.iter().any(|a| a == "--ensemble"),
            // zk-shell copies a few hundred nodes per second: a smaller tree
            // keeps the bench within its time budget; the figure is a rate.
            peer_nodes: value("--peer-nodes").unwrap_or(if quick { 300 } else { 5_000 }) as usize,
            only: argv
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| argv.get(i + 1))
                .map(|v| v.split(',').map(str::to_string).collect()),
        }
    }

    fn runs_phase(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|p| p == phase))
    }

    fn zk(&self) -> Zk {
        if self.ensemble {
            Zk::start(3)
        } else {
            Zk::standalone()
        }
    }
}

/// Creates `nodes` (parents first) with pipelined `multi` batches of 200,
/// 16 in flight; a level is finished before the next starts. Returns the
/// time taken.
async fn pipelined_create(c: &Client, nodes: &[(String, Vec<u8>)]) -> Duration {
    let started = Instant::now();
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let mut by_depth: Vec<Vec<&(String, Vec<u8>)>> = Vec::new();
    for n in nodes {
        let depth = n.0.matches('/').count();
        if by_depth.len() < depth {
            by_depth.resize(depth, Vec::new());
        }
        by_depth[depth - 1].push(n);
    }
    for level in by_depth {
        let mut chunks = level.chunks(200);
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < 16 {
                let Some(chunk) = chunks.next() else { break };
                let mut w = c.new_multi_writer();
                for (path, data) in chunk {
                    w.add_create(path, data, &opts).unwrap();
                }
                in_flight.push(w.commit());
            }
            match in_flight.next().await {
                Some(r) => {
                    r.expect("multi create");
                }
                None => break,
            }
        }
    }
    started.elapsed()
}

/// The copy limit: the fastest copy of the source's `/t` this crate can
/// make on these servers, into `to` in the target — zkbridge's own scan
/// (multi-reads, breadth-first, 16 in flight) feeding pipelined multi
/// creates (200 per batch, 16 in flight), and nothing else: no plan, no
/// lease, no checkpoint. One session orders the creates, so a parent is
/// always created before its children.
async fn copy_limit(src: &Client, dst: &Client, to: &str) -> (Duration, usize) {
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let writer = {
        let dst = dst.clone();
        tokio::spawn(async move {
            let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
            // Sent when called (the crate writes the request at once), so
            // batches reach the server in order.
            let commit = |batch: &[(String, Vec<u8>)]| {
                let mut w = dst.new_multi_writer();
                for (path, data) in batch {
                    w.add_create(path, data, &opts).unwrap();
                }
                w.commit()
            };
            let mut in_flight = FuturesUnordered::new();
            let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
            let mut copied = 0usize;
            let mut open = true;
            while open || !batch.is_empty() {
                match rx.recv().await {
                    Some(node) => batch.push(node),
                    None => open = false,
                }
                if batch.len() == 200 || (!open && !batch.is_empty()) {
                    copied += batch.len();
                    in_flight.push(commit(&batch));
                    batch.clear();
                }
                while in_flight.len() >= 16 {
                    let done: Option<Result<_, _>> = in_flight.next().await;
                    done.unwrap().expect("multi create");
                }
            }
            while let Some(done) = in_flight.next().await {
                done.expect("multi create");
            }
            copied
        })
    };
    let to = to.to_string();
    zkbridge::tree::scan_streaming(
        src,
        "/t",
        16,
        |_| true,
        |rel, node| {
            let path = zkbridge::path::join(&to, rel);
            let _ = tx.send((path, std::mem::take(&mut node.data)));
        },
    )
    .await
    .expect("scan the source");
    drop(tx);
    let copied = writer.await.expect("the writer");
    (started.elapsed(), copied)
}

fn bridge_config(src: &str, dst: &str) -> String {
    format!(
        "heartbeat_interval_ms = 200\n[ensembles.src]\nconnect = \"{src}\"\nsession_timeout_ms = 10000\n\
         [ensembles.dst]\nconnect = \"{dst}\"\nsession_timeout_ms = 10000\n\
         [[routes]]\nname = \"bench\"\nsource = \"src:/t\"\ntargets = [\"dst:/t\"]\n\
         max_delete_fraction = 1.0\n"
    )
}

async fn await_ready(bridge: &Bridge) {
    loop {
        if bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the target converges to a clean `diff` (within a minute).
async fn assert_clean(bridge: &Bridge) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = zkbridge::diff::diff(&bridge.config(), None).await.expect("diff");
        if d.iter().all(|d| !d.is_drift()) {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("    not clean after 60 s: {} difference(s)", d.len());
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Requests the target server has received from the bridge's target
/// session so far: that session's `cons` line, found by the owner of the
/// bridge's lease node. Counts every request the bridge sends — writes,
/// reads, pings — as the server saw them.
async fn bridge_requests(dst: &Zk, d: &Client) -> Option<u64> {
    let leases = "/zkbridge/routes/bench/dst/leases";
    let lease = d.list_children(leases).await.ok()?.into_iter().next()?;
    let (_, stat) = d.get_data(&format!("{leases}/{lease}")).await.ok()?;
    let sid = format!("sid=0x{:x}", stat.ephemeral_owner);
    let cons = four_letter(dst.servers[0].port, "cons")?;
    let line = cons.lines().find(|l| l.contains(&sid))?;
    line.split("recved=").nth(1)?.split(',').next()?.parse().ok()
}

/// Steady-state lag: sets data on random source nodes at `rate` for
/// `seconds`; a separate client watching the target reads each changed
/// node and matches its value to the source write's reply time.
async fn measure_lag(src: &Client, dst: &Client, watch_root: &str, leaves: &[String], rate: u32, seconds: u64) -> Lag {
    let replies: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut watcher = dst.watch(watch_root, AddWatchMode::PersistentRecursive).await.unwrap();
    let reader = {
        let (dst, replies, latencies, done) = (dst.clone(), replies.clone(), latencies.clone(), done.clone());
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            loop {
                tokio::select! {
                    event = watcher.changed() => {
                        if event.event_type != EventType::NodeDataChanged {
                            continue;
                        }
                        let dst = dst.clone();
                        pending.push(async move { dst.get_data(&event.path).await.ok().map(|(d, _)| (d, Instant::now())) });
                    }
                    Some(read) = pending.next(), if !pending.is_empty() => {
                        let Some((data, seen)) = read else { continue };
                        let Some(seq) = std::str::from_utf8(&data).ok().and_then(|s| s.strip_prefix("w")).and_then(|s| s.parse::<u64>().ok()) else { continue };
                        if let Some(at) = replies.lock().unwrap().get(&seq) {
                            latencies.lock().unwrap().push(seen.duration_since(*at).as_secs_f64());
                        }
                    }
                    // `done` is read when this wakes, not when the select
                    // starts: a quiet watch must not hold the reader.
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if done.load(Ordering::Relaxed) && pending.is_empty() {
                            break;
                        }
                    }
                }
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut writes = FuturesUnordered::new();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = started + interval * sent as u32;
        if Instant::now() < due {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {},
                Some(()) = writes.next(), if !writes.is_empty() => continue,
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let path = &leaves[(rng % leaves.len() as u64) as usize];
        let seq = sent;
        sent += 1;
        let (src, replies) = (src.clone(), replies.clone());
        let path = path.clone();
        writes.push(async move {
            src.set_data(&path, format!("w{seq}").as_bytes(), None).await.unwrap();
            replies.lock().unwrap().insert(seq, Instant::now());
        });
    }
    while writes.next().await.is_some() {}
    let achieved = sent as f64 / started.elapsed().as_secs_f64();
    // Let the last changes arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    // The reader stops on its own once events dry up; never wait long.
    let mut reader = reader;
    if tokio::time::timeout(Duration::from_secs(2), &mut reader).await.is_err() {
        reader.abort();
        eprintln!("    (watching client still busy after 2 s; using what it measured)");
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Lag {
        samples_ms: l.iter().map(|s| s * 1000.0).collect(),
        p50_ms: q(0.5) * 1000.0,
        p99_ms: q(0.99) * 1000.0,
        max_ms: l.last().copied().unwrap_or(f64::NAN) * 1000.0,
        writes: sent,
        observed: l.len() as u64,
        rate: achieved,
    }
}

/// Every node of a tree but its root: what the lag writers change.
fn leaves_of(nodes: &[(String, Vec<u8>)]) -> Vec<String> {
    nodes.iter().skip(1).map(|(p, _)| p.clone()).collect()
}

#[derive(Clone, Debug)]
struct Lag {
    /// Every latency observed (for the CDF chart).
    samples_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    writes: u64,
    observed: u64,
    rate: f64,
}

/// Median, min and max of a series.
fn stats(v: &[f64]) -> serde_json::Value {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return json!(null);
    }
    json!({"median": s[s.len() / 2], "min": s[0], "max": s[s.len() - 1], "runs": s.len()})
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Series(HashMap<String, Vec<f64>>);

impl Series {
    fn add(&mut self, key: impl Into<String>, v: f64) {
        self.0.entry(key.into()).or_default().push(v);
    }
    fn get(&self, key: &str) -> &[f64] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
    fn med(&self, key: &str) -> f64 {
        median(self.get(key))
    }
    /// Every latency of a lag measurement, for the charts (kept apart from
    /// the figures: a CDF, not a number).
    fn samples(&mut self, series: &str, ms: &[f64]) {
        self.0
            .entry(format!("{CDF}{series}"))
            .or_default()
            .extend_from_slice(ms);
    }
    fn cdfs(&self, series: &[&str]) -> Vec<(String, Vec<f64>)> {
        series
            .iter()
            .filter_map(|name| {
                self.0
                    .get(&format!("{CDF}{name}"))
                    .map(|v| (name.to_string(), v.clone()))
            })
            .collect()
    }
}

/// Key prefix of the lag samples kept for the charts.
const CDF: &str = "cdf:";

async fn zk_shell_rate(args: &Args) -> Result<f64, String> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/zk-shell-venv");
    let exe = venv.join("bin/zk-shell");
    if !exe.exists() {
        eprintln!("installing zk-shell into {} (pip)", venv.display());
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "zk-shell"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !ok || !exe.exists() {
            return Err("zk-shell could not be installed (python3 venv + pip install zk-shell failed)".into());
        }
    }
    let nodes = tree(args.peer_nodes);
    let (src, dst, _s) = seeded_pair(args, &nodes).await;
    let first = src.connect_string().split(',').next().unwrap().to_string();
    let target = dst.connect_string().split(',').next().unwrap().to_string();
    let started = Instant::now();
    let out = std::process::Command::new(&exe)
        .arg("--run-once")
        .arg(format!("cp zk://{first}/t zk://{target}/t true true"))
        .output()
        .map_err(|e| format!("zk-shell: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("zk-shell cp failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let d = dst.client().await;
    let copied = d.count_descendants_number("/t").await.map(|n| n + 1).unwrap_or(0);
    if copied != nodes.len() {
        return Err(format!("zk-shell copied {copied} of {} nodes", nodes.len()));
    }
    Ok(nodes.len() as f64 / took)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs bench targets too:
        // compiling is the check wanted there, not a benchmark run.
        eprintln!("zkbridge bench: run it with `make bench` (cargo bench --bench bench)");
        return;
    }
    let args = Args::parse();
    let bench_started = Instant::now();
    BENCHMARK_SERVERS.store(true, Ordering::Relaxed);
    let nodes = tree(args.nodes);
    let data_bytes: usize = nodes.iter().map(|(p, d)| p.len() + d.len()).sum();
    eprintln!(
        "zkbridge bench: {} nodes, {} run(s), lag at {} ops/s for {} s{}",
        args.nodes,
        args.runs,
        args.rate,
        args.seconds,
        if args.quick {
            " (quick: says nothing about speed)"
        } else {
            ""
        }
    );
    let mut m = Series::default();
    let mut clean = true;
    for run in 1..=args.runs {
        eprintln!("run {run}/{}", args.runs);
        if args.runs_phase("raw") {
            raw_writes(&nodes, &args, &mut m).await;
        }
        if args.runs_phase("sync") {
            clean &= sync_resume_lag(&nodes, &args, &mut m).await;
        }
        if args.runs_phase("wan") {
            clean &= wan_lag(&nodes, &args, &mut m).await;
        }
        if args.runs_phase("peer") {
            peer(&args, &mut m).await;
        }
        if args.runs_phase("switchover") {
            clean &= switchover(&args, &mut m).await;
        }
        if args.runs_phase("routes") {
            clean &= many_routes(&args, &mut m).await;
        }
    }

    let raw = m.med("raw_nodes_per_s");
    let peer = m.get("peer_nodes_per_s");
    let ratio = |key: &str, reference: f64| m.med(key) / reference;
    let mut table = String::new();
    let mut row = |name: &str, value: String, note: String| {
        table.push_str(&format!("| {name} | {value} | {note} |\n"));
    };
    // Every run's figure, in run order: a tail shows in the slow runs, not
    // in the median.
    let each = |key: &str| {
        let runs: Vec<String> = m.get(key).iter().map(|v| format!("{v:.1}")).collect();
        match runs.is_empty() {
            true => "n/a".to_string(),
            false => runs.join(" · "),
        }
    };
    let range = |key: &str, unit: &str, digits: usize| {
        let s = stats(m.get(key));
        if s.is_null() {
            return "n/a".to_string();
        }
        format!(
            "{:.*} {unit} ({:.*}–{:.*})",
            digits,
            s["median"].as_f64().unwrap(),
            digits,
            s["min"].as_f64().unwrap(),
            digits,
            s["max"].as_f64().unwrap()
        )
    };
    row(
        "raw target writes (limit)",
        range("raw_nodes_per_s", "nodes/s", 0),
        format!(
            "pipelined multi creates, 200/batch, 16 in flight; the server used {:.2} s CPU",
            m.med("raw_server_cpu_s")
        ),
    );
    row(
        "copy limit, same servers: cold / warm",
        format!(
            "{} / {}",
            range("copy_limit_cold_nodes_per_s", "nodes/s", 0),
            range("copy_limit_nodes_per_s", "nodes/s", 0)
        ),
        "zkbridge's scan feeding pipelined multi creates, nothing else; cold: before the initial sync, warm: after it"
            .to_string(),
    );
    row(
        "initial sync",
        range("sync_nodes_per_s", "nodes/s", 0),
        format!(
            "{:.2} × the cold copy limit, {:.2} × the warm one, {:.2} × raw writes",
            ratio("sync_nodes_per_s", m.med("copy_limit_cold_nodes_per_s")),
            ratio("sync_nodes_per_s", m.med("copy_limit_nodes_per_s")),
            ratio("sync_nodes_per_s", raw)
        ),
    );
    row(
        "zk-shell cp (peer)",
        match (peer.is_empty(), m.0.contains_key("peer_unavailable")) {
            (false, _) => range("peer_nodes_per_s", "nodes/s", 0),
            (true, true) => "not installed".into(),
            (true, false) => "not run".into(),
        },
        if peer.is_empty() {
            "no figure".into()
        } else {
            format!(
                "zkbridge is {:.0} × zk-shell ({} nodes copied)",
                m.med("sync_nodes_per_s") / median(peer),
                args.peer_nodes
            )
        },
    );
    row(
        "steady-state lag p50 / p99 / max",
        format!(
            "{} / {} / {}",
            range("lag_p50_ms", "ms", 1),
            range("lag_p99_ms", "ms", 1),
            range("lag_max_ms", "ms", 1)
        ),
        format!(
            "{:.0} writes/s offered, {:.0}% seen individually (rest coalesced); p99 of each run: {} ms",
            m.med("lag_rate"),
            100.0 * m.med("lag_observed_fraction"),
            each("lag_p99_ms")
        ),
    );
    row(
        "target requests per source write (steady / 40 ms)",
        format!(
            "{} / {}",
            range("lag_target_requests_per_write", "", 2),
            range("wan_target_requests_per_write", "", 2)
        ),
        "every request the target server received from the bridge's session (its `cons` count): writes, reads, pings"
            .to_string(),
    );
    row(
        "with 40 ms each way: lag p50 / p99 / max",
        format!(
            "{} / {} / {}",
            range("wan_lag_p50_ms", "ms", 1),
            range("wan_lag_p99_ms", "ms", 1),
            range("wan_lag_max_ms", "ms", 1)
        ),
        format!(
            "{:.0} writes/s; initial sync through the delay {:.0} nodes/s; p99 of each run: {} ms",
            m.med("wan_lag_rate"),
            m.med("wan_sync_nodes_per_s"),
            each("wan_lag_p99_ms")
        ),
    );
    row(
        "resume after 1% change",
        range("resume_s", "s", 2),
        format!(
            "{:.0} target ops for {:.0} changed ({:.2} ×); bare source scan {:.2} s ({:.2} ×)",
            m.med("resume_target_ops"),
            m.med("resume_changed"),
            m.med("resume_target_ops") / m.med("resume_changed"),
            m.med("scan_s"),
            m.med("resume_s") / m.med("scan_s")
        ),
    );
    row(
        "cost: initial sync",
        format!(
            "{} peak RSS, {} CPU",
            range("sync_rss_mib", "MiB", 1),
            range("sync_cpu_s", "s", 2)
        ),
        format!(
            "mirrored data ≈ {:.1} MiB; meanwhile the source server used {:.2} s CPU, the target server {:.2} s",
            data_bytes as f64 / 1048576.0,
            m.med("sync_source_server_cpu_s"),
            m.med("sync_target_server_cpu_s")
        ),
    );
    row(
        "switchover: write-unavailable window",
        range("switchover_window_s", "s", 2),
        format!(
            "{} nodes, freeze → unfreeze, loopback, 2 members (goal ≤ 2 s for 10,000)",
            SWITCHOVER_NODES.min(args.nodes)
        ),
    );
    for k in ROUTE_COUNTS {
        row(
            &format!("{k} route(s), 2 targets each"),
            format!(
                "lag p50 / p99 {} / {}",
                range(&format!("routes{k}_lag_p50_ms"), "ms", 1),
                range(&format!("routes{k}_lag_p99_ms"), "ms", 1)
            ),
            format!(
                "{:.0} writes/s in all; bridge sessions per ensemble (server `cons`) {:.0}; server watches (`mntr` zk_watch_count) {:.0} on the source, {:.0} on a target; peak RSS {:.1} MiB",
                m.med(&format!("routes{k}_rate")),
                m.med(&format!("routes{k}_sessions")),
                m.med(&format!("routes{k}_source_watches")),
                m.med(&format!("routes{k}_target_watches")),
                m.med(&format!("routes{k}_rss_mib"))
            ),
        );
    }
    row(
        "cost: steady state",
        format!(
            "{} peak RSS, {} CPU",
            range("lag_rss_mib", "MiB", 1),
            range("lag_cpu_s", "s", 2)
        ),
        "CPU since start, including the initial sync and resume".into(),
    );
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()))
            .unwrap_or_default()
    );
    println!(
        "\nzkbridge bench — {} nodes, {} run(s), {} ZooKeeper {}, {machine}, {:.1} min\n\n| measure | median (min–max) | note |\n|---|---|---|\n{table}\nfinal diff after every phase: {}",
        args.nodes,
        args.runs,
        if args.ensemble { "3-node" } else { "standalone" },
        match ZkVersion::from_env() {
            ZkVersion::V38 => "3.8",
            ZkVersion::V39 => "3.9",
        },
        bench_started.elapsed().as_secs_f64() / 60.0,
        if clean { "clean" } else { "NOT CLEAN" }
    );
    let results = json!({
        "nodes": args.nodes,
        "runs": args.runs,
        "quick": args.quick,
        "rate": args.rate,
        "seconds": args.seconds,
        "ensemble": args.ensemble,
        "machine": machine,
        "diff_clean": clean,
        "figures": m.0.iter().filter(|(k, _)| !k.starts_with(CDF)).map(|(k, v)| (k.to_string(), stats(v))).collect::<serde_json::Map<_, _>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {}", dir.join("results.json").display());
    charts(&dir, &m);
    if !clean {
        std::process::exit(1);
    }
}

/// The SVG charts of this run, next to `results.json`: the lag CDFs
/// (steady state on loopback and through 40 ms each way; per route count)
/// and lag against the number of routes. A chart without data is skipped.
fn charts(dir: &std::path::Path, m: &Series) {
    let steady = m.cdfs(&["loopback", "40 ms each way"]);
    let per_routes: Vec<String> = ROUTE_COUNTS.iter().map(|k| format!("{k} route(s)")).collect();
    let per_routes = m.cdfs(&per_routes.iter().map(String::as_str).collect::<Vec<_>>());
    let points: Vec<(usize, f64, f64)> = ROUTE_COUNTS
        .iter()
        .map(|k| {
            (
                *k,
                m.med(&format!("routes{k}_lag_p50_ms")),
                m.med(&format!("routes{k}_lag_p99_ms")),
            )
        })
        .filter(|p| p.1.is_finite() && p.2.is_finite())
        .collect();
    let mut drawn = Vec::new();
    if !steady.is_empty() {
        let path = dir.join("lag-cdf.svg");
        match charts::lag_cdf(&path, "steady-state replication lag (every run)", &steady) {
            Ok(()) => drawn.push(path),
            Err(e) => eprintln!("lag CDF chart: {e}"),
        }
    }
    if !per_routes.is_empty() {
        let path = dir.join("routes-lag-cdf.svg");
        match charts::lag_cdf(&path, "replication lag by route count (every run)", &per_routes) {
            Ok(()) => drawn.push(path),
            Err(e) => eprintln!("routes lag CDF chart: {e}"),
        }
    }
    if !points.is_empty() {
        let path = dir.join("routes-lag.svg");
        match charts::routes(&path, &points) {
            Ok(()) => drawn.push(path),
            Err(e) => eprintln!("routes chart: {e}"),
        }
    }
    for path in drawn {
        eprintln!("wrote {}", path.display());
    }
}

/// Route counts the many-routes phase compares.
const ROUTE_COUNTS: [usize; 3] = [1, 10, 100];
/// Nodes under each route in that phase.
const ROUTE_NODES: usize = 20;

/// The sessions one ensemble's server counts from the bridge: its `cons`
/// lines minus the bench's own `mine` connections there and the one the
/// `cons` command itself arrives on.
fn server_connections(zk: &Zk, mine: usize) -> f64 {
    let cons = four_letter(zk.servers[0].port, "cons").unwrap_or_default();
    let lines = cons.lines().filter(|l| l.contains("queued=")).count();
    lines.saturating_sub(mine + 1) as f64
}

/// The watches one ensemble's server holds (`mntr`'s `zk_watch_count`).
fn server_watches(zk: &Zk) -> f64 {
    let mntr = four_letter(zk.servers[0].port, "mntr").unwrap_or_default();
    mntr.lines()
        .find_map(|l| l.strip_prefix("zk_watch_count"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// Many routes on the same three ensembles (issue 21, item 3): 1, 10 and
/// 100 routes of two targets each, at one fixed total write rate spread
/// over all routes. What the servers count (sessions, watches), the lag
/// through one target and the bridge's peak RSS, per route count.
async fn many_routes(args: &Args, m: &mut Series) -> bool {
    let mut clean = true;
    for k in ROUTE_COUNTS {
        eprintln!("  {k} route(s)");
        let (src, a, b) = (args.zk(), args.zk(), args.zk());
        let s = src.client().await;
        let mut nodes = Vec::new();
        let mut routes = String::new();
        for i in 0..k {
            let root = format!("/r{i}");
            nodes.push((root.clone(), Vec::new()));
            for j in 0..ROUTE_NODES {
                nodes.push((format!("{root}/n{j}"), b"x".to_vec()));
            }
            routes.push_str(&format!(
                "[[routes]]\nname = \"r{i}\"\nsource = \"src:{root}\"\ntargets = [\"a:{root}\", \"b:{root}\"]\nmax_delete_fraction = 1.0\n"
            ));
        }
        pipelined_create(&s, &nodes).await;
        let ens = |name: &str, zk: &Zk| {
            format!(
                "[ensembles.{name}]\nconnect = \"{}\"\nsession_timeout_ms = 10000\n",
                zk.connect_string()
            )
        };
        let bridge = Bridge::start(&format!(
            "heartbeat_interval_ms = 200\n{}{}{}{routes}",
            ens("src", &src),
            ens("a", &a),
            ens("b", &b)
        ));
        await_ready(&bridge).await;
        let d = a.client().await;
        let leaves: Vec<String> = nodes
            .iter()
            .filter(|(p, _)| p.matches('/').count() == 2)
            .map(|(p, _)| p.clone())
            .collect();
        let lag = measure_lag(&s, &d, "/", &leaves, args.rate.min(1_000), args.seconds.min(20)).await;
        m.add(format!("routes{k}_lag_p50_ms"), lag.p50_ms);
        m.add(format!("routes{k}_lag_p99_ms"), lag.p99_ms);
        m.add(format!("routes{k}_rate"), lag.rate);
        m.samples(&format!("{k} route(s)"), &lag.samples_ms);
        // The bench holds one session on the source and one on `a`.
        m.add(
            format!("routes{k}_sessions"),
            server_connections(&src, 1).max(server_connections(&b, 0)),
        );
        m.add(format!("routes{k}_source_watches"), server_watches(&src));
        m.add(format!("routes{k}_target_watches"), server_watches(&b));
        let rss = bridge.pid().map(|p| process_cost(p).0).unwrap_or(0);
        m.add(format!("routes{k}_rss_mib"), rss as f64 / 1048576.0);
        clean &= assert_clean(&bridge).await;
    }
    clean
}

/// The subtree a switchover is measured on (the 10,000 nodes).
const SWITCHOVER_NODES: usize = 10_000;

/// A planned switchover (design §6) of a 10,000-node route between two
/// loopback ensembles with a bridge running: the window it reports (freeze
/// to unfreeze), and whether the old primary then mirrors the new one.
async fn switchover(args: &Args, m: &mut Series) -> bool {
    eprintln!("  switchover");
    let nodes = tree(SWITCHOVER_NODES.min(args.nodes));
    let (src, dst, s) = seeded_pair(args, &nodes).await;
    let toml = bridge_config(&src.connect_string(), &dst.connect_string()).replace(
        "session_timeout_ms = 10000\n",
        "session_timeout_ms = 10000\ndigest = \"zkbridge:bench\"\n",
    );
    let bridge = Bridge::start(&toml);
    await_ready(&bridge).await;
    let (code, out) = bridge.cli(&["switchover", "--route", "bench", "--to", "dst", "--yes"]);
    let window = out
        .lines()
        .find_map(|l| l.strip_prefix("write-unavailable window: "))
        .and_then(|w| w.trim_end_matches(" s").parse::<f64>().ok());
    let Some(window) = window.filter(|_| code == 0) else {
        eprintln!("switchover failed ({code}): {out}");
        return false;
    };
    m.add("switchover_window_s", window);
    eprintln!(
        "{}",
        out.lines().filter(|l| l.contains(" s ")).collect::<Vec<_>>().join("\n")
    );
    let d = dst.client().await;
    let compare = Compare {
        acls: true,
        skip_ephemerals: true,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let clean = loop {
        match mirror_difference(&d, "/t", &s, "/t", compare).await {
            None => break true,
            Some(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Some(difference) => {
                eprintln!("after the switchover the old primary does not mirror the new one: {difference}");
                break false;
            }
        }
    };
    drop(bridge);
    drop((s, d, src, dst));
    clean
}

/// A source holding `nodes`, an empty target, and a client of the source.
async fn seeded_pair(args: &Args, nodes: &[(String, Vec<u8>)]) -> (Zk, Zk, Client) {
    let (src, dst) = (args.zk(), args.zk());
    let s = src.client().await;
    pipelined_create(&s, nodes).await;
    (src, dst, s)
}

/// CPU seconds the servers of an ensemble have used so far.
fn servers_cpu_s(zk: &Zk) -> f64 {
    zk.servers
        .iter()
        .filter_map(|s| s.pid())
        .map(|p| process_cost(p).1)
        .sum()
}

/// The limit (1): raw pipelined creates into a fresh target.
async fn raw_writes(nodes: &[(String, Vec<u8>)], args: &Args, m: &mut Series) {
    eprintln!("  raw target writes");
    let raw = args.zk();
    let c = raw.client().await;
    let before = servers_cpu_s(&raw);
    let took = pipelined_create(&c, nodes).await;
    m.add("raw_nodes_per_s", nodes.len() as f64 / took.as_secs_f64());
    m.add("raw_server_cpu_s", servers_cpu_s(&raw) - before);
}

/// Initial sync (2), then resume (6), then steady-state lag (4), on one
/// pair of servers. Returns whether every phase ended `diff`-clean.
async fn sync_resume_lag(nodes: &[(String, Vec<u8>)], args: &Args, m: &mut Series) -> bool {
    let mut clean = true;
    eprintln!("  initial sync");
    let (src, dst, s) = seeded_pair(args, nodes).await;
    // CPU the servers spend on the copy: on one machine they share its
    // cores with zkbridge (see docs/performance.md).
    // The copy limit (1) on these servers, cold as the bridge's copy
    // finds them; again, warm, after it (below).
    eprintln!("  copy limit, cold");
    let d = dst.client().await;
    let (took, copied) = copy_limit(&s, &d, "/copy-cold").await;
    assert_eq!(copied, nodes.len());
    m.add("copy_limit_cold_nodes_per_s", copied as f64 / took.as_secs_f64());
    drop(d);
    let servers_cpu = || (servers_cpu_s(&src), servers_cpu_s(&dst));
    let before = servers_cpu();
    let started = Instant::now();
    let mut bridge = Bridge::start(&bridge_config(&src.connect_string(), &dst.connect_string()));
    await_ready(&bridge).await;
    let took = started.elapsed();
    let after = servers_cpu();
    m.add("sync_source_server_cpu_s", after.0 - before.0);
    m.add("sync_target_server_cpu_s", after.1 - before.1);
    clean &= assert_clean(&bridge).await;
    m.add("sync_nodes_per_s", nodes.len() as f64 / took.as_secs_f64());
    let (rss, cpu) = process_cost(bridge.pid().unwrap());
    m.add("sync_rss_mib", rss as f64 / 1048576.0);
    m.add("sync_cpu_s", cpu);

    // Bare source scan, for scale.
    let scan_started = Instant::now();
    let scanned = zkbridge::tree::scan(&s, "/t", 16, |_| true).await.unwrap();
    m.add("scan_s", scan_started.elapsed().as_secs_f64());
    assert_eq!(scanned.len(), nodes.len());

    eprintln!("  resume");
    // Resume after a 1% change.
    let checkpoint_at = {
        let (_, stat) = s.get_data("/t").await.unwrap();
        s.set_data("/t", &stat.mzxid.to_le_bytes(), None).await.unwrap().mzxid
    };
    while (bridge.metric("zkbridge_checkpoint_zxid", &[]) as i64) < checkpoint_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bridge.stop();
    // The copy limit (1), on the same servers, warm, with the bridge stopped.
    eprintln!("  copy limit, warm");
    let d = dst.client().await;
    let (took, copied) = copy_limit(&s, &d, "/copy").await;
    assert_eq!(copied, nodes.len());
    m.add("copy_limit_nodes_per_s", copied as f64 / took.as_secs_f64());
    drop(d);
    let changed = nodes.len() / 100;
    for (path, _) in nodes.iter().skip(1).step_by(100).take(changed) {
        s.set_data(path, b"changed while stopped", None).await.unwrap();
    }
    let started = Instant::now();
    bridge.restart();
    await_ready(&bridge).await;
    m.add("resume_s", started.elapsed().as_secs_f64());
    clean &= assert_clean(&bridge).await;
    let writes = bridge.metric("zkbridge_resume_target_writes_total", &[]);
    let reads = bridge.metric("zkbridge_resume_target_reads_total", &[]);
    m.add("resume_target_ops", writes + reads);
    m.add("resume_changed", changed as f64);

    eprintln!("  steady-state lag");
    let d = dst.client().await;
    let before = bridge_requests(&dst, &d).await;
    let lag = measure_lag(&s, &d, "/t", &leaves_of(nodes), args.rate, args.seconds).await;
    if let (Some(before), Some(after)) = (before, bridge_requests(&dst, &d).await) {
        m.add(
            "lag_target_requests_per_write",
            (after - before) as f64 / lag.writes.max(1) as f64,
        );
    }
    clean &= assert_clean(&bridge).await;
    m.add("lag_p50_ms", lag.p50_ms);
    m.add("lag_p99_ms", lag.p99_ms);
    m.add("lag_max_ms", lag.max_ms);
    m.add("lag_rate", lag.rate);
    m.samples("loopback", &lag.samples_ms);
    m.add("lag_observed_fraction", lag.observed as f64 / lag.writes.max(1) as f64);
    let (rss, cpu) = process_cost(bridge.pid().unwrap());
    m.add("lag_rss_mib", rss as f64 / 1048576.0);
    m.add("lag_cpu_s", cpu);
    bridge.stop();
    drop(bridge);
    drop((s, d, src, dst));
    clean
}

/// Steady-state lag (5) through 40 ms of latency each way to the target.
async fn wan_lag(nodes: &[(String, Vec<u8>)], args: &Args, m: &mut Series) -> bool {
    let mut clean = true;
    eprintln!("  lag with 40 ms each way");
    let (src, dst, s) = seeded_pair(args, nodes).await;
    // Order is kept, so round trips pay twice the delay and pipelined
    // traffic does not.
    let proxy = proxy::FaultyEnsemble::start(&dst).await;
    proxy.set(proxy::Fault::Delay(Duration::from_millis(40)));
    let started = Instant::now();
    let bridge = Bridge::start(&bridge_config(&src.connect_string(), &proxy.connect_string()));
    await_ready(&bridge).await;
    m.add(
        "wan_sync_nodes_per_s",
        nodes.len() as f64 / started.elapsed().as_secs_f64(),
    );
    let d = dst.client().await;
    let before = bridge_requests(&dst, &d).await;
    let lag = measure_lag(&s, &d, "/t", &leaves_of(nodes), args.rate, args.seconds).await;
    if let (Some(before), Some(after)) = (before, bridge_requests(&dst, &d).await) {
        m.add(
            "wan_target_requests_per_write",
            (after - before) as f64 / lag.writes.max(1) as f64,
        );
    }
    clean &= assert_clean(&bridge).await;
    m.add("wan_lag_p50_ms", lag.p50_ms);
    m.add("wan_lag_p99_ms", lag.p99_ms);
    m.add("wan_lag_max_ms", lag.max_ms);
    m.add("wan_lag_rate", lag.rate);
    m.samples("40 ms each way", &lag.samples_ms);
    drop(bridge);
    drop((s, d, src, dst));
    clean
}

/// The peer (3).
async fn peer(args: &Args, m: &mut Series) {
    eprintln!("  zk-shell");
    // 3. The peer.
    match zk_shell_rate(args).await {
        Ok(rate) => m.add("peer_nodes_per_s", rate),
        Err(why) => {
            eprintln!("peer: {why}");
            m.0.entry("peer_unavailable".to_string()).or_default();
        }
    }
}
