//! `make bench`: zkbridge against the physical limit and against the tool
//! users would pick instead, with real ZooKeeper servers started here.
//!
//! Every figure is taken in this run, side by side: the raw write limit of
//! the target, the copy limit (a minimal streaming copier on the same
//! servers), the initial sync as a ratio of both and of zk-shell's `cp`,
//! steady-state lag measured by a separate watching client beside the floor
//! a minimal mirror reaches on the same servers, the same through 40 ms each
//! way, the resume after a 1% change against a bare source scan, cost curves
//! (time, RSS, CPU) by tree size, 1/10/100 routes, the throughput ceiling
//! against the source's own, and a switchover's write-unavailable window at
//! 10 k and 100 k nodes. Prints a table and writes
//! `target/bench/results.json` and SVG charts beside it.
//!
//! A steady-state window (the bridge's and each floor's) follows 5 s of the
//! same load, whose p99 is reported apart as the start, and a full garbage
//! collection in the servers (`jcmd`, from the JDK), so that neither side
//! is measured on servers still settling from the copy (see `Steady::start`).
//!
//! Options: `--quick` (small and short: keeps the bench working in CI, says
//! nothing about speed), `--nodes N`, `--runs N`, `--rate OPS`, `--seconds S`,
//! `--peer-nodes N`, `--max-nodes N` (largest cost-curve point, 1000000 for
//! the 1 M one), `--sweep-runs N` (runs of the sweeps: routes, scale,
//! ceiling, switchover; default 1), `--route-counts 1,10,100`, `--ensemble`
//! (3-node source and target), `--only PHASES`. Environment:
//! `ZK_JVM_EXTRA` (more JVM options for the bench's servers),
//! `BENCH_TIMELINE=1` (every lag measurement's p99 second by second).

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

/// Phases that sweep many points in one run (see `Args::sweep_runs`).
const SWEEPS: [&str; 4] = ["switchover", "routes", "scale", "ceiling"];

struct Args {
    quick: bool,
    nodes: usize,
    runs: usize,
    rate: u32,
    seconds: u64,
    ensemble: bool,
    peer_nodes: usize,
    /// The largest tree of the cost curves (`--max-nodes`; 1,000,000 adds
    /// the million-node point, which the default run leaves out).
    max_nodes: usize,
    /// Runs of the sweeps (`--sweep-runs`, default 1): routes, scale,
    /// ceiling and switchover each measure many points already, and three
    /// runs of them would take `make bench` well past its 20 minutes.
    sweep_runs: usize,
    /// Route counts of the many-routes phase (`--route-counts 1,10,100`).
    route_counts: Vec<usize>,
    /// Phases to run (`--only raw,sync,wan,peer,switchover,routes,scale,ceiling`; `sync` includes resume and
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
            seconds: value("--seconds").unwrap_or(if quick { 5 } else { 50 }),
            ensemble: argv.iter().any(|a| a == "--ensemble"),
            // zk-shell copies a few hundred nodes per second: a smaller tree
            // keeps the bench within its time budget; the figure is a rate.
            peer_nodes: value("--peer-nodes").unwrap_or(if quick { 300 } else { 5_000 }) as usize,
            max_nodes: value("--max-nodes").unwrap_or(100_000) as usize,
            sweep_runs: value("--sweep-runs").unwrap_or(1) as usize,
            route_counts: argv
                .iter()
                .position(|a| a == "--route-counts")
                .and_then(|i| argv.get(i + 1))
                .map(|v| v.split(',').filter_map(|k| k.parse().ok()).collect())
                .unwrap_or_else(|| ROUTE_COUNTS.to_vec()),
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

    /// Whether `phase` runs in run number `run` (from 1).
    fn runs_phase_in(&self, phase: &str, run: usize) -> bool {
        let sweep = SWEEPS.contains(&phase);
        self.runs_phase(phase) && (!sweep || run <= self.sweep_runs)
    }

    /// Tree sizes of the cost curves.
    fn scale_sizes(&self) -> Vec<usize> {
        match self.quick {
            true => vec![1_000, 5_000],
            false => [10_000, 100_000, 1_000_000]
                .into_iter()
                .filter(|n| *n <= self.max_nodes)
                .collect(),
        }
    }

    /// Route sizes the switchover window is measured at (the 10 k
    /// and 100 k, each no larger than `--nodes`).
    fn switchover_sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = SWITCHOVER_NODES.iter().map(|n| (*n).min(self.nodes)).collect();
        sizes.dedup();
        sizes
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
/// (multi-reads, 16 in flight) feeding pipelined multi
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
    // The limit holds nothing back: a closed backlog is unbounded.
    let unbounded = tokio::sync::Semaphore::new(0);
    unbounded.close();
    zkbridge::tree::scan_streaming(
        src,
        "/t",
        16,
        &unbounded,
        |_| true,
        |rel, node| {
            let path = zkbridge::path::join(&to, &rel);
            tx.send((path, node.data)).is_ok()
        },
    )
    .await
    .expect("scan the source");
    drop(tx);
    let copied = writer.await.expect("the writer");
    (started.elapsed(), copied)
}

fn bridge_config(src: &str, dst: &str) -> String {
    route_config(src, dst, "bench", "/t")
}

/// One route `name` mirroring `path` from `src` into `dst`.
fn route_config(src: &str, dst: &str, name: &str, path: &str) -> String {
    format!(
        "heartbeat_interval_ms = 200\n[ensembles.src]\nconnect = \"{src}\"\nsession_timeout_ms = 10000\n\
         [ensembles.dst]\nconnect = \"{dst}\"\nsession_timeout_ms = 10000\n\
         [[routes]]\nname = \"{name}\"\nsource = \"src:{path}\"\ntargets = [\"dst:{path}\"]\n\
         max_delete_fraction = 1.0\n"
    )
}

/// Polled every 20 ms. The initial sync is not timed by this poll (its
/// steps would cost a 1.5 s sync up to 1 %, and polling faster takes CPU
/// from the copy): see [`logged_at`].
async fn await_ready(bridge: &Bridge) {
    loop {
        if bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first log line carrying `message` (the bridge's tracing output),
/// without its colours.
fn logged_line(log: &str, message: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains(message))?;
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            }
            c => plain.push(c),
        }
    }
    Some(plain)
}

/// When the bridge logged `message`: its own timestamp (RFC 3339, the
/// system clock), so that a moment inside the bridge is timed to the
/// microsecond, not to the next poll of its endpoints.
fn logged_at(log: &str, message: &str) -> Option<std::time::SystemTime> {
    let line = logged_line(log, message)?;
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// A numeric field of the first log line carrying `message`.
fn logged_field(log: &str, message: &str, field: &str) -> Option<f64> {
    let plain = logged_line(log, message)?;
    let value = plain.split(&format!("{field}=")).nth(1)?;
    value
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .parse()
        .ok()
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

/// What a load generator writes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Workload {
    /// Sets on random existing nodes.
    Sets,
    /// Of every ten writes six sets, two creates of new nodes and two
    /// deletes of nodes created earlier (a set when none is left).
    Mix,
}

/// An open-loop load: `rate` writes a second of one workload.
#[derive(Clone, Copy, Debug)]
struct Load {
    rate: u32,
    workload: Workload,
}

impl Load {
    fn sets(rate: u32) -> Load {
        Load {
            rate,
            workload: Workload::Sets,
        }
    }
}

/// What the load generator achieved.
struct Offered {
    writes: u64,
    rate: f64,
    /// Write latency as the source's clients see it (send to reply), ms.
    write_p99_ms: f64,
}

/// Writes `load` into the source for `seconds`, open loop (a write is sent
/// when due, whether or not earlier ones have replied), under `root`,
/// changing `leaves`. Every write's value is `w<seq>`; `on_reply(seq)`
/// runs when its reply is back.
async fn offer(
    src: &Client,
    root: &str,
    leaves: &[String],
    load: Load,
    seconds: u64,
    on_reply: impl Fn(u64) + Clone,
) -> Offered {
    let interval = Duration::from_secs_f64(1.0 / load.rate as f64);
    let started = Instant::now();
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut writes = FuturesUnordered::new();
    let created: Arc<Mutex<std::collections::VecDeque<String>>> = Arc::default();
    let mut latencies = Vec::new();
    let mut sent = 0u64;
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    // Names of created nodes are unique across loads: a node an earlier
    // load created may still be there.
    static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = LOADS.fetch_add(1, Ordering::Relaxed);
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = started + interval * sent as u32;
        if Instant::now() < due {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {},
                Some(took) = writes.next(), if !writes.is_empty() => {
                    latencies.push(took);
                    continue;
                }
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let seq = sent;
        sent += 1;
        let slot = seq % 10;
        let op = match load.workload {
            Workload::Mix if (6..8).contains(&slot) => Op::Create(format!("{root}/m{run}-{seq}")),
            Workload::Mix if slot >= 8 => match created.lock().unwrap().pop_front() {
                Some(path) => Op::Delete(path),
                None => Op::Set(leaves[(rng % leaves.len() as u64) as usize].clone()),
            },
            _ => Op::Set(leaves[(rng % leaves.len() as u64) as usize].clone()),
        };
        let (src, on_reply, created, opts) = (src.clone(), on_reply.clone(), created.clone(), opts.clone());
        writes.push(async move {
            let sent_at = Instant::now();
            let value = format!("w{seq}");
            match op {
                Op::Set(path) => {
                    src.set_data(&path, value.as_bytes(), None).await.unwrap();
                }
                Op::Create(path) => {
                    src.create(&path, value.as_bytes(), &opts).await.unwrap();
                    created.lock().unwrap().push_back(path);
                }
                Op::Delete(path) => src.delete(&path, None).await.unwrap(),
            }
            on_reply(seq);
            sent_at.elapsed().as_secs_f64() * 1000.0
        });
    }
    while let Some(took) = writes.next().await {
        latencies.push(took);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Offered {
        writes: sent,
        rate: sent as f64 / started.elapsed().as_secs_f64(),
        write_p99_ms: quantile(&latencies, 0.99),
    }
}

enum Op {
    Set(String),
    Create(String),
    Delete(String),
}

/// The `p` quantile of sorted values (NaN when empty).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The bridge's `zkbridge_replication_latency_seconds` for one target,
/// summed over its routes: cumulative counts per bucket bound (seconds).
struct Histogram(Vec<(f64, f64)>);

fn replication_latency(bridge: &Bridge, target: &str) -> Histogram {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let samples = bridge.metrics().map(|scrape| scrape.samples).unwrap_or_default();
    for sample in samples
        .iter()
        .filter(|s| s.metric == "zkbridge_replication_latency_seconds" && s.labels.get("target") == Some(target))
    {
        let prometheus_parse::Value::Histogram(counts) = &sample.value else {
            continue;
        };
        for c in counts {
            match buckets.iter_mut().find(|(bound, _)| *bound == c.less_than) {
                Some((_, count)) => *count += c.count,
                None => buckets.push((c.less_than, c.count)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    Histogram(buckets)
}

impl Histogram {
    fn since(&self, before: &Histogram) -> Histogram {
        let earlier = |bound: f64| before.0.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, c)| *c);
        Histogram(self.0.iter().map(|(b, c)| (*b, c - earlier(*b))).collect())
    }

    /// The bound of the bucket the quantile falls in (an upper estimate).
    fn quantile_ms(&self, p: f64) -> f64 {
        let total = self.0.last().map_or(0.0, |(_, c)| *c);
        if total == 0.0 {
            return f64::NAN;
        }
        self.0
            .iter()
            .find(|(_, c)| *c >= p * total)
            .map_or(f64::NAN, |(b, _)| b * 1000.0)
    }
}

/// Steady-state lag: offers `load` to the source under `watch_root` for
/// `seconds`; a separate client watching the target reads each changed or
/// created node and matches its value to the source write's reply time.
async fn measure_lag(src: &Client, dst: &Client, watch_root: &str, leaves: &[String], load: Load, seconds: u64) -> Lag {
    let replies: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    // (reply time of the source write, its lag)
    let latencies: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut watcher = dst.watch(watch_root, AddWatchMode::PersistentRecursive).await.unwrap();
    // Under `/` the watch also sees zkbridge's own znodes (checkpoints,
    // leases): reading each back would load the target, and this client,
    // with work the floor's runs do not have.
    let own = format!("{}/", zkbridge::config::BridgeConfig::default().meta_path);
    let reader = {
        let (dst, replies, latencies, done) = (dst.clone(), replies.clone(), latencies.clone(), done.clone());
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            loop {
                // Checked on every turn: under a watch that never goes
                // quiet (zkbridge's own znodes under `/`), the idle timer
                // below would never fire.
                if done.load(Ordering::Relaxed) && pending.is_empty() {
                    break;
                }
                tokio::select! {
                    event = watcher.changed() => {
                        if !matches!(event.event_type, EventType::NodeDataChanged | EventType::NodeCreated)
                            || event.path.starts_with(&own)
                        {
                            continue;
                        }
                        let dst = dst.clone();
                        pending.push(async move { dst.get_data(&event.path).await.ok().map(|(d, _)| (d, Instant::now())) });
                    }
                    Some(read) = pending.next(), if !pending.is_empty() => {
                        let Some((data, seen)) = read else { continue };
                        let Some(seq) = std::str::from_utf8(&data).ok().and_then(|s| s.strip_prefix("w")).and_then(|s| s.parse::<u64>().ok()) else { continue };
                        if let Some(at) = replies.lock().unwrap().get(&seq) {
                            latencies.lock().unwrap().push((*at, seen.duration_since(*at).as_secs_f64()));
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
    let root = watch_root.trim_end_matches('/');
    let on_reply = {
        let replies = replies.clone();
        move |seq| {
            replies.lock().unwrap().insert(seq, Instant::now());
        }
    };
    let load_started = Instant::now();
    let offered = offer(src, root, leaves, load, seconds, on_reply).await;
    // Let the last changes arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    // The reader stops on its own once events dry up; never wait long.
    let mut reader = reader;
    if tokio::time::timeout(Duration::from_secs(2), &mut reader).await.is_err() {
        reader.abort();
        eprintln!("    (watching client still busy after 2 s; using what it measured)");
    }
    let samples = latencies.lock().unwrap().clone();
    let sorted = |keep: &dyn Fn(Instant) -> bool| {
        let mut l: Vec<f64> = samples
            .iter()
            .filter(|(at, _)| keep(*at))
            .map(|(_, lag)| *lag)
            .collect();
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        l
    };
    let l = sorted(&|_| true);
    // Where in the load a tail sits (`BENCH_TIMELINE=1`): the first
    // seconds after a start, or a pause anywhere.
    if std::env::var_os("BENCH_TIMELINE").is_some() {
        for second in 0..seconds {
            let from = load_started + Duration::from_secs(second);
            let to = from + Duration::from_secs(1);
            let w = sorted(&|at| at >= from && at < to);
            eprintln!(
                "    second {second}: {} changes, lag p99 {:.1} ms, max {:.1} ms",
                w.len(),
                quantile(&w, 0.99) * 1000.0,
                w.last().copied().unwrap_or(0.0) * 1000.0
            );
        }
    }
    let settled_from = load_started + settling(seconds);
    let settled = sorted(&|at| at >= settled_from);
    Lag {
        samples_ms: l.iter().map(|s| s * 1000.0).collect(),
        p50_ms: quantile(&l, 0.5) * 1000.0,
        p99_ms: quantile(&l, 0.99) * 1000.0,
        max_ms: l.last().copied().unwrap_or(f64::NAN) * 1000.0,
        settled_p99_ms: quantile(&settled, 0.99) * 1000.0,
        writes: offered.writes,
        observed: l.len() as u64,
        rate: offered.rate,
    }
}

/// Seconds of load before a measured lag window, not counted in it (one
/// in a quick run).
fn start_load_s(args: &Args) -> u64 {
    if args.quick {
        1
    } else {
        5
    }
}

/// A steady-state window's setting: `load` written into `src`, each change
/// read back by a watcher on `dst`, between the servers of `servers`. The
/// bridge's window and its floor's are measured in the same one.
struct Steady<'a> {
    servers: [&'a Zk; 2],
    src: &'a Client,
    dst: &'a Client,
    leaves: &'a [String],
    load: Load,
}

impl Steady<'_> {
    /// Brings the servers and whatever mirrors between them to where a
    /// pair running for a while is, before a window is measured, and
    /// records what the start cost (`{prefix}lag_start_p99_ms`, each run):
    /// - [`start_load_s`] seconds of the same load. The first seconds of a
    ///   load are a start, not a steady state: slow for the floor as much
    ///   as for the bridge (the servers and the watcher meet the load for
    ///   the first time; for the bridge, right after its sync, its first
    ///   anti-entropy pass begins too, though starting that pass later did
    ///   not change them). Their p99 is reported on its own;
    /// - a full collection in every server JVM. Right after a copy the
    ///   target's young generation still holds the copied tree, and copying
    ///   it between survivor spaces paused the server 35–60 ms every ~8 s
    ///   until it was tenured (15 ms after). A long-running ensemble's tree
    ///   is long tenured; and whichever of the bridge or its floor was
    ///   measured first paid for it alone.
    async fn start(&self, args: &Args, m: &mut Series, prefix: &str) {
        let start = self.measure(start_load_s(args)).await;
        m.add(format!("{prefix}lag_start_p99_ms"), start.p99_ms);
        collect_garbage(&self.servers);
    }

    /// The window itself: `seconds` of the load.
    async fn measure(&self, seconds: u64) -> Lag {
        measure_lag(self.src, self.dst, "/t", self.leaves, self.load, seconds).await
    }
}

/// A full garbage collection in every server of `ensembles`, done when
/// this returns (`jcmd <pid> GC.run`; the JDK's tool, which
/// `scripts/install-deps.sh --bench` installs).
fn collect_garbage(ensembles: &[&Zk]) {
    for pid in ensembles
        .iter()
        .flat_map(|zk| zk.servers.iter().filter_map(|s| s.pid()))
    {
        let out = std::process::Command::new("jcmd")
            .args([&pid.to_string(), "GC.run"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run jcmd ({e}): `scripts/install-deps.sh --bench` installs the JDK"));
        assert!(
            out.status.success(),
            "jcmd {pid} GC.run failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// How long after the load starts its lag counts as settled: fresh
/// servers' JIT and the bridge's first seconds after a sync make the first
/// ~10 s slower (see docs/performance.md); a third of a short run.
fn settling(seconds: u64) -> Duration {
    Duration::from_secs(10.min(seconds / 3))
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
    /// p99 of the writes after `settling`: the steady state proper.
    settled_p99_ms: f64,
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
    /// How long a phase took (`phase_{name}_s` in `results.json`): what
    /// to trim when `make bench` outgrows its 20 minutes.
    fn phase_took(&mut self, name: &str, started: Instant) {
        let took = started.elapsed().as_secs_f64();
        eprintln!("  ({name}: {took:.0} s)");
        self.add(format!("phase_{name}_s"), took);
    }
    /// A lag measurement's figures under `{prefix}lag_…`: p50, p99, the
    /// settled p99 and max.
    fn add_lag(&mut self, prefix: &str, lag: &Lag) {
        self.add(format!("{prefix}lag_p50_ms"), lag.p50_ms);
        self.add(format!("{prefix}lag_p99_ms"), lag.p99_ms);
        self.add(format!("{prefix}lag_settled_p99_ms"), lag.settled_p99_ms);
        self.add(format!("{prefix}lag_max_ms"), lag.max_ms);
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
        if args.runs_phase_in("raw", run) {
            let started = Instant::now();
            raw_writes(&nodes, &args, &mut m).await;
            m.phase_took("raw", started);
        }
        if args.runs_phase_in("sync", run) {
            let started = Instant::now();
            clean &= sync_resume_lag(&nodes, &args, &mut m).await;
            m.phase_took("sync", started);
        }
        if args.runs_phase_in("wan", run) {
            let started = Instant::now();
            clean &= wan_lag(&nodes, &args, &mut m).await;
            m.phase_took("wan", started);
        }
        if args.runs_phase_in("peer", run) {
            let started = Instant::now();
            peer(&args, &mut m).await;
            m.phase_took("peer", started);
        }
        if args.runs_phase_in("switchover", run) {
            let started = Instant::now();
            for n in args.switchover_sizes() {
                clean &= switchover(n, &args, &mut m).await;
            }
            m.phase_took("switchover", started);
        }
        if args.runs_phase_in("routes", run) {
            let started = Instant::now();
            clean &= many_routes(&args, &mut m).await;
            m.phase_took("routes", started);
        }
        if args.runs_phase_in("scale", run) {
            let started = Instant::now();
            clean &= cost_curves(&args, &mut m).await;
            m.phase_took("scale", started);
        }
        if args.runs_phase_in("ceiling", run) {
            let started = Instant::now();
            clean &= throughput_ceiling(&args, &mut m).await;
            m.phase_took("ceiling", started);
        }
    }

    let raw = m.med("raw_nodes_per_s");
    let peer = m.get("peer_nodes_per_s");
    let ratio = |key: &str, reference: f64| m.med(key) / reference;
    let start_s = start_load_s(&args);
    let mut table = String::new();
    // A row belongs to the phase that measures it: phases not run (`--only`)
    // print no row rather than a row of n/a.
    let mut row = |phase: &str, name: &str, value: String, note: String| {
        if args.runs_phase(phase) {
            table.push_str(&format!("| {name} | {value} | {note} |\n"));
        }
    };
    // Every run's figure, in run order: a tail shows in the slow runs, not
    // in the median.
    let each = |key: &str, digits: usize| {
        let runs: Vec<String> = m.get(key).iter().map(|v| format!("{v:.digits$}")).collect();
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
        let unit = match unit {
            "" => String::new(),
            unit => format!(" {unit}"),
        };
        format!(
            "{:.*}{unit} ({:.*}–{:.*})",
            digits,
            s["median"].as_f64().unwrap(),
            digits,
            s["min"].as_f64().unwrap(),
            digits,
            s["max"].as_f64().unwrap()
        )
    };
    // p50 / p99 / max of the lag figures under `{prefix}lag_…`.
    let lag_ranges = |prefix: &str| {
        let r = |q: &str| range(&format!("{prefix}lag_{q}_ms"), "ms", 1);
        format!("{} / {} / {}", r("p50"), r("p99"), r("max"))
    };
    row(
        "raw",
        "raw target writes (limit)",
        range("raw_nodes_per_s", "nodes/s", 0),
        format!(
            "pipelined multi creates, 200/batch, 16 in flight; the server used {:.2} s CPU",
            m.med("raw_server_cpu_s")
        ),
    );
    row(
        "sync",
        "copy limit, same servers: before / after the sync",
        format!(
            "{} / {}",
            range("copy_limit_before_nodes_per_s", "nodes/s", 0),
            range("copy_limit_after_nodes_per_s", "nodes/s", 0)
        ),
        "zkbridge's scan feeding pipelined multi creates, nothing else; after a throwaway warm-up copy, then bracketing the sync"
            .to_string(),
    );
    row(
        "sync",
        "initial sync",
        range("sync_nodes_per_s", "nodes/s", 0),
        format!(
            "process start → ready: {} × the copy limit (mean of the two around it; each run: {}); the copy alone (the worker's own timing) {} nodes/s, {} ×{}",
            range("sync_vs_copy_limit", "", 2),
            each("sync_vs_copy_limit", 2),
            range("sync_copy_nodes_per_s", "", 0),
            range("sync_copy_vs_copy_limit", "", 2),
            match raw.is_nan() {
                true => String::new(),
                false => format!(", {:.2} × raw writes", ratio("sync_nodes_per_s", raw)),
            }
        ),
    );
    row(
        "peer",
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
        "sync",
        "steady-state lag p50 / p99 / max",
        lag_ranges(""),
        format!(
            "{:.0} writes/s offered, {:.0}% seen individually (rest coalesced); p99 of each run: {} ms; settled (after the first {} s): {} ms; before the window, the first {start_s} s after the sync: {} ms",
            m.med("lag_rate"),
            100.0 * m.med("lag_observed_fraction"),
            each("lag_p99_ms", 1),
            settling(args.seconds).as_secs(),
            each("lag_settled_p99_ms", 1),
            each("lag_start_p99_ms", 1)
        ),
    );
    row(
        "sync",
        "steady-state floor: a minimal mirror, p50 / p99 / max",
        lag_ranges("floor_"),
        format!(
            "the same load and watcher; watch → read → blind write, nothing else, on the same servers after the bridge stopped; p99 of each run: {} ms; settled: {} ms; its first {start_s} s: {} ms",
            each("floor_lag_p99_ms", 1),
            each("floor_lag_settled_p99_ms", 1),
            each("floor_lag_start_p99_ms", 1)
        ),
    );
    row(
        "sync",
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
        "wan",
        "with 40 ms each way: lag p50 / p99 / max",
        lag_ranges("wan_"),
        format!(
            "{:.0} writes/s; initial sync through the delay {:.0} nodes/s; p99 of each run: {} ms; settled: {} ms; the first {start_s} s after the sync: {} ms",
            m.med("wan_lag_rate"),
            m.med("wan_sync_nodes_per_s"),
            each("wan_lag_p99_ms", 1),
            each("wan_lag_settled_p99_ms", 1),
            each("wan_lag_start_p99_ms", 1)
        ),
    );
    row(
        "wan",
        "40 ms floor: a minimal mirror, p50 / p99 / max",
        lag_ranges("wan_floor_"),
        format!(
            "the loopback floor's mirror writing through the same proxy after the bridge stopped; p99 of each run: {} ms; settled: {} ms; its first {start_s} s: {} ms",
            each("wan_floor_lag_p99_ms", 1),
            each("wan_floor_lag_settled_p99_ms", 1),
            each("wan_floor_lag_start_p99_ms", 1)
        ),
    );
    row(
        "sync",
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
        "sync",
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
    for n in args.switchover_sizes() {
        row(
            "switchover",
            &format!("switchover: write-unavailable window, {n} nodes"),
            range(&format!("switchover{n}_window_s"), "s", 2),
            "freeze → unfreeze, loopback, 2 members (goal ≤ 2 s for 10,000)".to_string(),
        );
    }
    for &k in &args.route_counts {
        row(
            "routes",
            &format!("{k} route(s), 2 targets each"),
            format!(
                "warm servers: lag p50 / p99 {} / {}; settled p99 {}; inside the bridge ≤ {} / ≤ {}; the floor {} / {}, settled {}; fresh servers (JIT compiling): p50 / p99 {} / {}, settled p99 {}",
                range(&format!("routes{k}_lag_p50_ms"), "ms", 1),
                range(&format!("routes{k}_lag_p99_ms"), "ms", 1),
                range(&format!("routes{k}_lag_settled_p99_ms"), "ms", 1),
                range(&format!("routes{k}_inside_p50_ms"), "ms", 0),
                range(&format!("routes{k}_inside_p99_ms"), "ms", 0),
                range(&format!("routes{k}_floor_lag_p50_ms"), "ms", 1),
                range(&format!("routes{k}_floor_lag_p99_ms"), "ms", 1),
                range(&format!("routes{k}_floor_lag_settled_p99_ms"), "ms", 1),
                range(&format!("routes{k}_cold_lag_p50_ms"), "ms", 1),
                range(&format!("routes{k}_cold_lag_p99_ms"), "ms", 1),
                range(&format!("routes{k}_cold_lag_settled_p99_ms"), "ms", 1)
            ),
            format!(
                "{:.0} writes/s in all; the bridge's own transactions in the source {:.0}/s; transactions in a target {:.0}/s; bridge sessions per ensemble (server `cons`) {:.0}; server watches (`mntr` zk_watch_count) {:.0} on the source, {:.0} on a target; peak RSS {:.1} MiB",
                m.med(&format!("routes{k}_rate")),
                m.med(&format!("routes{k}_source_own_tx_per_s")),
                m.med(&format!("routes{k}_target_tx_per_s")),
                m.med(&format!("routes{k}_sessions")),
                m.med(&format!("routes{k}_source_watches")),
                m.med(&format!("routes{k}_target_watches")),
                m.med(&format!("routes{k}_rss_mib"))
            ),
        );
    }
    row(
        "routes",
        "many routes' floor on fresh servers: a minimal mirror of the 1-route tree",
        format!(
            "lag p99 {}; settled p99 {}",
            range("routes_cold_floor_lag_p99_ms", "ms", 1),
            range("routes_cold_floor_lag_settled_p99_ms", "ms", 1)
        ),
        "the same hot nodes, load and watcher, into one target on a pair of fresh servers before the bridge starts (the floor in each route row: into both targets on the bridge's servers after it stopped)"
            .to_string(),
    );
    for n in args.scale_sizes() {
        let k = |f: &str| format!("scale{n}_{f}");
        row(
            "scale",
            &format!("cost curve: {n} nodes"),
            format!(
                "sync {}, resume {}",
                range(&k("sync_s"), "s", 2),
                range(&k("resume_s"), "s", 2)
            ),
            format!(
                "sync peak RSS {:.1} MiB (budget 64 + 1 × {:.1} MiB mirrored), CPU {:.2} s; resume: {:.2} target ops per changed node, {:.2} × a bare scan ({:.2} s)",
                m.med(&k("sync_rss_mib")),
                m.med(&k("mirrored_mib")),
                m.med(&k("sync_cpu_s")),
                m.med(&k("resume_target_ops")) / m.med(&k("resume_changed")),
                m.med(&k("resume_s")) / m.med(&k("scan_s")),
                m.med(&k("scan_s"))
            ),
        );
    }
    for w in ["sets", "mix"] {
        let at = |side: &str, what: &str| {
            CEILING_RATES
                .iter()
                .filter_map(|r| {
                    let v = m.get(&format!("ceiling_{w}_{side}_{what}_at_{r}"));
                    (!v.is_empty()).then(|| format!("{r}: {:.0}", median(v)))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(
            "ceiling",
            &format!("throughput ceiling ({w})"),
            format!(
                "kept up to {} writes/s offered, the source alone {}; highest rate carried {} writes/s, the source alone {}",
                range(&format!("ceiling_{w}_bridge_kept"), "", 0),
                range(&format!("ceiling_{w}_source_kept"), "", 0),
                range(&format!("ceiling_{w}_bridge_carried"), "", 0),
                range(&format!("ceiling_{w}_source_carried"), "", 0)
            ),
            format!(
                "kept up: lag p99 ≤ 1 s and ≥ 95% of the offered rate accepted; carried: the highest rate the source accepted with lag (or its own write) p99 ≤ 1 s; by offered rate, accepted writes/s {} and lag p99 ms {}; the source alone, accepted {} and write p99 ms {}",
                at("bridge", "rate"),
                at("bridge", "p99_ms"),
                at("source", "rate"),
                at("source", "write_p99_ms")
            ),
        );
    }
    row(
        "sync",
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
        "sweep_runs": args.sweep_runs,
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
    charts(&dir, &m, &args);
    if !clean {
        std::process::exit(1);
    }
}

/// The SVG charts of this run, next to `results.json`: the lag CDFs
/// (steady state on loopback and through 40 ms each way; per route count),
/// lag against the number of routes, the cost curves (time, memory) and
/// the throughput ceiling. A chart without data is skipped.
fn charts(dir: &std::path::Path, m: &Series, args: &Args) {
    let line = |name: &str, points: Vec<(f64, f64)>| (name.to_string(), points);
    let over = |xs: &[f64], key: &dyn Fn(f64) -> String| -> Vec<(f64, f64)> {
        xs.iter()
            .map(|x| (*x, m.med(&key(*x))))
            .filter(|p| p.1.is_finite())
            .collect()
    };
    let routes: Vec<f64> = args.route_counts.iter().map(|k| *k as f64).collect();
    let sizes: Vec<f64> = args.scale_sizes().iter().map(|n| *n as f64).collect();
    let rates: Vec<f64> = CEILING_RATES.iter().map(|r| *r as f64).collect();
    let per_routes: Vec<String> = args.route_counts.iter().map(|k| format!("{k} route(s)")).collect();
    let cdf = |name: &str, title: &str, series: Vec<(String, Vec<f64>)>| {
        (!series.is_empty()).then(|| {
            let path = dir.join(name);
            (charts::lag_cdf(&path, title, &series), path)
        })
    };
    let xy = |name: &str, title: &str, x: &str, y: &str, lines: Vec<charts::Line>| {
        lines.iter().any(|l| !l.1.is_empty()).then(|| {
            let lines: Vec<charts::Line> = lines.into_iter().filter(|l| !l.1.is_empty()).collect();
            let path = dir.join(name);
            (charts::log_log(&path, title, x, y, &lines), path)
        })
    };
    let drawn = [
        cdf(
            "lag-cdf.svg",
            "steady-state replication lag (every run)",
            m.cdfs(&[
                "loopback",
                "loopback, minimal mirror",
                "40 ms each way",
                "40 ms each way, minimal mirror",
            ]),
        ),
        cdf(
            "routes-lag-cdf.svg",
            "replication lag by route count (every run)",
            m.cdfs(&per_routes.iter().map(String::as_str).collect::<Vec<_>>()),
        ),
        xy(
            "routes-lag.svg",
            "lag against the number of routes (2 targets each)",
            "routes (log scale)",
            "lag (ms, log scale)",
            vec![
                line("p50", over(&routes, &|k| format!("routes{k}_lag_p50_ms"))),
                line("p99", over(&routes, &|k| format!("routes{k}_lag_p99_ms"))),
                line(
                    "p99, settled",
                    over(&routes, &|k| format!("routes{k}_lag_settled_p99_ms")),
                ),
                line(
                    "p99, minimal mirror",
                    over(&routes, &|k| format!("routes{k}_floor_lag_p99_ms")),
                ),
            ],
        ),
        xy(
            "cost-time.svg",
            "initial sync and resume against the tree size",
            "nodes (log scale)",
            "seconds (log scale)",
            vec![
                line("initial sync", over(&sizes, &|n| format!("scale{n}_sync_s"))),
                line(
                    "resume after 1% change",
                    over(&sizes, &|n| format!("scale{n}_resume_s")),
                ),
                line("bare source scan", over(&sizes, &|n| format!("scale{n}_scan_s"))),
                line(
                    "bridge CPU, initial sync",
                    over(&sizes, &|n| format!("scale{n}_sync_cpu_s")),
                ),
            ],
        ),
        xy(
            "cost-memory.svg",
            "bridge peak RSS against the tree size",
            "nodes (log scale)",
            "MiB (log scale)",
            vec![
                line(
                    "peak RSS, initial sync",
                    over(&sizes, &|n| format!("scale{n}_sync_rss_mib")),
                ),
                line(
                    "peak RSS, resume",
                    over(&sizes, &|n| format!("scale{n}_resume_rss_mib")),
                ),
                line(
                    "budget: 64 MiB + 1 × mirrored bytes",
                    over(&sizes, &|n| format!("scale{n}_mirrored_mib"))
                        .into_iter()
                        .map(|(n, mib)| (n, 64.0 + mib))
                        .collect(),
                ),
            ],
        ),
        xy(
            "ceiling.svg",
            "throughput ceiling: lag p99 against the offered write rate",
            "offered writes/s (log scale)",
            "p99 (ms, log scale)",
            vec![
                line(
                    "sets: bridge lag",
                    over(&rates, &|r| format!("ceiling_sets_bridge_p99_ms_at_{r}")),
                ),
                line(
                    "mix: bridge lag",
                    over(&rates, &|r| format!("ceiling_mix_bridge_p99_ms_at_{r}")),
                ),
                line(
                    "sets: source write latency",
                    over(&rates, &|r| format!("ceiling_sets_source_write_p99_ms_at_{r}")),
                ),
                line(
                    "mix: source write latency",
                    over(&rates, &|r| format!("ceiling_mix_source_write_p99_ms_at_{r}")),
                ),
            ],
        ),
    ];
    for (result, path) in drawn.into_iter().flatten() {
        match result {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("{}: {e}", path.display()),
        }
    }
}

/// Route counts the many-routes phase compares by default.
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

/// The last transaction id of an ensemble (`srvr`'s `Zxid`, its counter
/// part): two readings give the transactions committed in between.
fn server_zxid(zk: &Zk) -> f64 {
    let srvr = four_letter(zk.servers[0].port, "srvr").unwrap_or_default();
    srvr.lines()
        .find_map(|l| l.strip_prefix("Zxid: 0x"))
        .and_then(|v| i64::from_str_radix(v.trim(), 16).ok())
        .map_or(f64::NAN, |z| (z & 0xffff_ffff) as f64)
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
    for &k in &args.route_counts {
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
        let leaves: Vec<String> = nodes
            .iter()
            .filter(|(p, _)| p.matches('/').count() == 2)
            .map(|(p, _)| p.clone())
            .collect();
        let load = Load::sets(args.rate.min(1_000));
        let seconds = args.seconds.min(20);
        if k == args.route_counts[0] {
            // The floor on servers as fresh as the bridge's (their JIT
            // cold): a pair of its own holding the same tree; again on the
            // bridge's servers once it stopped (warm).
            let (cold_src, cold_dst) = (args.zk(), args.zk());
            let (cs, cd) = (cold_src.client().await, cold_dst.client().await);
            pipelined_create(&cs, &nodes).await;
            pipelined_create(&cd, &nodes).await;
            let floor = minimal_mirror(&cs, &cd, "/").await;
            let lag = measure_lag(&cs, &cold_dst.client().await, "/", &leaves, load, seconds).await;
            floor.abort();
            drop((cs, cd, cold_src, cold_dst));
            m.add_lag("routes_cold_floor_", &lag);
        }
        let ens = |name: &str, zk: &Zk| {
            format!(
                "[ensembles.{name}]\nconnect = \"{}\"\nsession_timeout_ms = 10000\n",
                zk.connect_string()
            )
        };
        let config = format!(
            "heartbeat_interval_ms = 200\n{}{}{}{routes}",
            ens("src", &src),
            ens("a", &a),
            ens("b", &b)
        );
        // First on fresh servers: their JIT compiles under the load, which
        // takes the servers' every cycle for several seconds (with the
        // servers limited to C1 the first run is like any other). Then the
        // same bridge restarted on the now warm servers, as a production
        // ensemble is: the headline figures, beside the warm floor.
        let mut cold = Bridge::start(&config);
        await_ready(&cold).await;
        let lag = measure_lag(&s, &a.client().await, "/", &leaves, load, seconds).await;
        m.add_lag(&format!("routes{k}_cold_"), &lag);
        clean &= assert_clean(&cold).await;
        cold.stop();
        let bridge = Bridge::start(&config);
        await_ready(&bridge).await;
        let d = a.client().await;
        let before = replication_latency(&bridge, "a");
        let (src_zxid, a_zxid, started) = (server_zxid(&src), server_zxid(&a), Instant::now());
        let lag = measure_lag(&s, &d, "/", &leaves, load, seconds).await;
        m.add_lag(&format!("routes{k}_"), &lag);
        // The bridge's own transactions (heartbeats, progress; checkpoints,
        // leases) beside the load's, per second.
        let elapsed = started.elapsed().as_secs_f64();
        m.add(
            format!("routes{k}_source_own_tx_per_s"),
            (server_zxid(&src) - src_zxid - lag.writes as f64) / elapsed,
        );
        m.add(
            format!("routes{k}_target_tx_per_s"),
            (server_zxid(&a) - a_zxid) / elapsed,
        );
        // What the bridge itself measures (source event seen → target
        // commit), so a tail is placed inside the bridge or around it.
        let inside = replication_latency(&bridge, "a").since(&before);
        m.add(format!("routes{k}_inside_p50_ms"), inside.quantile_ms(0.5));
        m.add(format!("routes{k}_inside_p99_ms"), inside.quantile_ms(0.99));
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
        drop(bridge);
        // The floor on the same hot nodes, at every route count: a minimal
        // mirror into both targets, on the bridge's servers once it stopped.
        let (ta, tb) = (a.client().await, b.client().await);
        let floors = [minimal_mirror(&s, &ta, "/").await, minimal_mirror(&s, &tb, "/").await];
        let lag = measure_lag(&s, &d, "/", &leaves, load, seconds).await;
        for floor in floors {
            floor.abort();
        }
        m.add_lag(&format!("routes{k}_floor_"), &lag);
    }
    clean
}

/// Offered write rates of the throughput ceiling, doubling.
const CEILING_RATES: [u32; 6] = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000];
/// Lag p99 past which the bridge no longer keeps up (the 1 s).
const CEILING_P99_MS: f64 = 1_000.0;

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Sets => "sets",
            Workload::Mix => "mix",
        }
    }
}

/// The throughput ceiling (4): the offered rate doubles until the lag p99
/// passes 1 s or the source no longer accepts it; then, with the bridge
/// stopped, the same generator against the source alone finds the
/// source's own limit (every write replied within 1 s at p99, at least 95%
/// of the rate offered). Sets on random nodes, and a mix with creates and
/// deletes.
async fn throughput_ceiling(args: &Args, m: &mut Series) -> bool {
    let nodes = tree(10_000.min(args.nodes));
    let leaves = leaves_of(&nodes);
    let (src, dst, s) = seeded_pair(args, &nodes).await;
    let seconds = if args.quick { 2 } else { args.seconds.min(10) };
    let rates: Vec<u32> = CEILING_RATES.into_iter().take(if args.quick { 2 } else { 6 }).collect();
    let mut bridge = Bridge::start(&bridge_config(&src.connect_string(), &dst.connect_string()));
    await_ready(&bridge).await;
    let d = dst.client().await;
    for workload in [Workload::Sets, Workload::Mix] {
        let w = workload.name();
        let (mut kept, mut carried) = (0.0, 0.0f64);
        for &rate in &rates {
            eprintln!("  ceiling, {w}: {rate} writes/s through the bridge");
            let lag = measure_lag(&s, &d, "/t", &leaves, Load { rate, workload }, seconds).await;
            m.add(format!("ceiling_{w}_bridge_p99_ms_at_{rate}"), lag.p99_ms);
            m.add(format!("ceiling_{w}_bridge_rate_at_{rate}"), lag.rate);
            // The highest rate the source took that the bridge kept up
            // with: on one machine the source slows once the bridge and the
            // target server share its cores, so this, not the offered
            // rate, is what the bridge carried.
            if lag.p99_ms <= CEILING_P99_MS {
                carried = carried.max(lag.rate);
            }
            let accepted = lag.rate >= 0.95 * rate as f64;
            if !(accepted && lag.p99_ms <= CEILING_P99_MS) {
                break;
            }
            kept = rate as f64;
        }
        m.add(format!("ceiling_{w}_bridge_kept"), kept);
        m.add(format!("ceiling_{w}_bridge_carried"), carried);
    }
    let clean = assert_clean(&bridge).await;
    bridge.stop();
    for workload in [Workload::Sets, Workload::Mix] {
        let w = workload.name();
        let (mut kept, mut carried) = (0.0, 0.0f64);
        for &rate in &rates {
            eprintln!("  ceiling, {w}: {rate} writes/s into the source alone");
            let offered = offer(&s, "/t", &leaves, Load { rate, workload }, seconds, |_| {}).await;
            m.add(
                format!("ceiling_{w}_source_write_p99_ms_at_{rate}"),
                offered.write_p99_ms,
            );
            m.add(format!("ceiling_{w}_source_rate_at_{rate}"), offered.rate);
            if offered.write_p99_ms <= CEILING_P99_MS {
                carried = carried.max(offered.rate);
            }
            if !(offered.rate >= 0.95 * rate as f64 && offered.write_p99_ms <= CEILING_P99_MS) {
                break;
            }
            kept = rate as f64;
        }
        m.add(format!("ceiling_{w}_source_kept"), kept);
        m.add(format!("ceiling_{w}_source_carried"), carried);
    }
    drop(bridge);
    drop((s, d, src, dst));
    clean
}

/// The route sizes a switchover is measured at (issue 21: 10 k and 100 k).
const SWITCHOVER_NODES: [usize; 2] = [10_000, 100_000];

/// A planned switchover (design §6) of a route of `size` nodes between two
/// loopback ensembles with a bridge running: the window it reports (freeze
/// to unfreeze), and whether the old primary then mirrors the new one.
async fn switchover(size: usize, args: &Args, m: &mut Series) -> bool {
    eprintln!("  switchover ({size} nodes)");
    let nodes = tree(size);
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
    m.add(format!("switchover{size}_window_s"), window);
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

/// Servers with the source tree copied by a bridge, and what the copy and a
/// resume after it cost (recorded under keys starting with `prefix`).
struct Synced {
    src: Zk,
    dst: Zk,
    s: Client,
    bridge: Bridge,
    clean: bool,
}

/// The copy limit, bracketing (1): on the same servers as the initial
/// sync, once before it and once after it (with the bridge stopped), so
/// that a server warming up as the run goes on favours neither side. A
/// throwaway copy first takes the servers' cold start out of both.
#[derive(Clone, Copy, PartialEq)]
enum CopyLimit {
    Bracket,
    Skip,
}

/// Initial sync (2) and resume after a 1% change (6) of `nodes`, with
/// their costs, keyed by `prefix` (empty for the main figures).
async fn sync_and_resume(
    nodes: &[(String, Vec<u8>)],
    args: &Args,
    m: &mut Series,
    prefix: &str,
    limit: CopyLimit,
) -> Synced {
    let key = |k: &str| format!("{prefix}{k}");
    let mut clean = true;
    eprintln!("  initial sync of {} nodes", nodes.len());
    let (src, dst, s) = seeded_pair(args, nodes).await;
    let copy = |to: &'static str| {
        let (s, dst) = (s.clone(), &dst);
        async move {
            let d = dst.client().await;
            let (took, copied) = copy_limit(&s, &d, to).await;
            assert_eq!(copied, nodes.len());
            copied as f64 / took.as_secs_f64()
        }
    };
    if limit == CopyLimit::Bracket {
        eprintln!("  copy limit: warm-up, then before the sync");
        copy("/copy-warmup").await;
        m.add("copy_limit_before_nodes_per_s", copy("/copy-before").await);
        // The bridge's start-up requests (role znodes, lease, checkpoint)
        // meet the fresh servers' cold code first: on this box 35–40 ms of
        // its ~75 ms to the lease. A throwaway bridge on a one-node route
        // takes that out, as the throwaway copy does for the limit.
        s.create("/warm-up", b"", &CreateMode::Persistent.with_acls(Acls::anyone_all()))
            .await
            .unwrap();
        let mut warm_up = Bridge::start(&route_config(
            &src.connect_string(),
            &dst.connect_string(),
            "warm-up",
            "/warm-up",
        ));
        await_ready(&warm_up).await;
        warm_up.stop();
    }
    // CPU the servers spend on the copy: on one machine they share its
    // cores with zkbridge (see docs/performance.md).
    let servers_cpu = || (servers_cpu_s(&src), servers_cpu_s(&dst));
    let before = servers_cpu();
    let started = std::time::SystemTime::now();
    let mut bridge = Bridge::start(&bridge_config(&src.connect_string(), &dst.connect_string()));
    await_ready(&bridge).await;
    // Process start → ready: the bridge turns ready as it logs that its
    // initial sync is done.
    let took = logged_at(&bridge.log(), "initial sync done")
        .expect("the bridge logs when its initial sync is done")
        .duration_since(started)
        .expect("the sync ends after the process starts");
    let after = servers_cpu();
    m.add(key("sync_source_server_cpu_s"), after.0 - before.0);
    m.add(key("sync_target_server_cpu_s"), after.1 - before.1);
    m.add(key("sync_s"), took.as_secs_f64());
    m.add(key("sync_nodes_per_s"), nodes.len() as f64 / took.as_secs_f64());
    // The copy alone, as the worker logged it (lease held → copy done): the
    // rest of `took` is process start, sessions, lease and role znodes.
    if let Some(ms) = logged_field(&bridge.log(), "initial sync done", "elapsed_ms") {
        m.add(key("sync_copy_nodes_per_s"), nodes.len() as f64 / (ms / 1000.0));
    }
    let (rss, cpu) = process_cost(bridge.pid().unwrap());
    m.add(key("sync_rss_mib"), rss as f64 / 1048576.0);
    m.add(key("sync_cpu_s"), cpu);
    clean &= assert_clean(&bridge).await;

    // Bare source scan, for scale.
    let scan_started = Instant::now();
    let scanned = zkbridge::tree::scan(&s, "/t", 16, |_| true).await.unwrap();
    m.add(key("scan_s"), scan_started.elapsed().as_secs_f64());
    assert_eq!(scanned.len(), nodes.len());
    drop(scanned);

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
    if limit == CopyLimit::Bracket {
        eprintln!("  copy limit, after the sync");
        m.add("copy_limit_after_nodes_per_s", copy("/copy-after").await);
        let (before, after) = (
            m.get("copy_limit_before_nodes_per_s"),
            m.get("copy_limit_after_nodes_per_s"),
        );
        if let (Some(b), Some(a)) = (before.last(), after.last()) {
            let limit = (a + b) / 2.0;
            if let Some(s) = m.get("sync_nodes_per_s").last() {
                m.add("sync_vs_copy_limit", s / limit);
            }
            if let Some(s) = m.get("sync_copy_nodes_per_s").last() {
                m.add("sync_copy_vs_copy_limit", s / limit);
            }
        }
    }
    let changed = nodes.len() / 100;
    let changes = FuturesUnordered::new();
    for (path, _) in nodes.iter().skip(1).step_by(100).take(changed) {
        changes.push(s.set_data(path, b"changed while stopped", None));
    }
    for r in changes.collect::<Vec<_>>().await {
        r.unwrap();
    }
    let started = Instant::now();
    bridge.restart();
    await_ready(&bridge).await;
    m.add(key("resume_s"), started.elapsed().as_secs_f64());
    clean &= assert_clean(&bridge).await;
    let writes = bridge.metric("zkbridge_resume_target_writes_total", &[]);
    let reads = bridge.metric("zkbridge_resume_target_reads_total", &[]);
    m.add(key("resume_target_ops"), writes + reads);
    m.add(key("resume_changed"), changed as f64);
    Synced {
        src,
        dst,
        s,
        bridge,
        clean,
    }
}

/// The steady-state floor beside (4): the least a mirror can do per
/// change on these servers — a recursive watch on the source, and for each
/// data change one read of the source and one blind write into the target,
/// pipelined, nothing else (no coalescing, checkpoints or fencing).
/// Measured by the same load and target watcher as the bridge, it tells
/// the machine's and the servers' share of the lag tail from zkbridge's.
async fn minimal_mirror(src: &Client, dst: &Client, root: &str) -> tokio::task::JoinHandle<()> {
    let mut watcher = src.watch(root, AddWatchMode::PersistentRecursive).await.unwrap();
    let (src, dst) = (src.clone(), dst.clone());
    tokio::spawn(async move {
        let mut copies = FuturesUnordered::new();
        loop {
            tokio::select! {
                event = watcher.changed() => {
                    if event.event_type != EventType::NodeDataChanged {
                        continue;
                    }
                    let (src, dst) = (src.clone(), dst.clone());
                    copies.push(async move {
                        if let Ok((data, _)) = src.get_data(&event.path).await {
                            let _ = dst.set_data(&event.path, &data, None).await;
                        }
                    });
                }
                Some(()) = copies.next(), if !copies.is_empty() => {}
            }
        }
    })
}

/// Initial sync (2), then resume (6), then steady-state lag (4), on one
/// pair of servers. Returns whether every phase ended `diff`-clean.
async fn sync_resume_lag(nodes: &[(String, Vec<u8>)], args: &Args, m: &mut Series) -> bool {
    let Synced {
        src,
        dst,
        s,
        mut bridge,
        mut clean,
    } = sync_and_resume(nodes, args, m, "", CopyLimit::Bracket).await;
    eprintln!("  steady-state lag");
    let d = dst.client().await;
    let leaves = leaves_of(nodes);
    let steady = Steady {
        servers: [&src, &dst],
        src: &s,
        dst: &d,
        leaves: &leaves,
        load: Load::sets(args.rate),
    };
    steady.start(args, m, "").await;
    let before = bridge_requests(&dst, &d).await;
    let lag = steady.measure(args.seconds).await;
    if let (Some(before), Some(after)) = (before, bridge_requests(&dst, &d).await) {
        m.add(
            "lag_target_requests_per_write",
            (after - before) as f64 / lag.writes.max(1) as f64,
        );
    }
    clean &= assert_clean(&bridge).await;
    m.add_lag("", &lag);
    m.add("lag_rate", lag.rate);
    m.samples("loopback", &lag.samples_ms);
    m.add("lag_observed_fraction", lag.observed as f64 / lag.writes.max(1) as f64);
    let (rss, cpu) = process_cost(bridge.pid().unwrap());
    m.add("lag_rss_mib", rss as f64 / 1048576.0);
    m.add("lag_cpu_s", cpu);
    bridge.stop();
    eprintln!("  steady-state floor: a minimal mirror");
    let floor = minimal_mirror(&s, &dst.client().await, "/t").await;
    steady.start(args, m, "floor_").await;
    let lag = steady.measure(args.seconds).await;
    floor.abort();
    m.add_lag("floor_", &lag);
    m.samples("loopback, minimal mirror", &lag.samples_ms);
    drop(bridge);
    drop((s, d, src, dst));
    clean
}

/// Cost curves (2): initial sync and resume after a 1% change at each tree
/// size, each on fresh servers: time, the bridge's peak RSS and CPU, target
/// ops per changed node, and a bare scan for scale.
async fn cost_curves(args: &Args, m: &mut Series) -> bool {
    let mut clean = true;
    for n in args.scale_sizes() {
        let nodes = tree(n);
        let bytes: usize = nodes.iter().map(|(p, d)| p.len() + d.len()).sum();
        m.add(format!("scale{n}_mirrored_mib"), bytes as f64 / 1048576.0);
        let synced = sync_and_resume(&nodes, args, m, &format!("scale{n}_"), CopyLimit::Skip).await;
        drop(nodes);
        let Synced {
            src,
            dst,
            s,
            mut bridge,
            clean: ok,
        } = synced;
        clean &= ok;
        let (rss, cpu) = process_cost(bridge.pid().unwrap());
        m.add(format!("scale{n}_resume_rss_mib"), rss as f64 / 1048576.0);
        m.add(format!("scale{n}_resume_cpu_s"), cpu);
        bridge.stop();
        drop(bridge);
        drop((s, src, dst));
    }
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
    // Half a minute of load is 60,000 samples, plenty for a p99; the
    // phase runs three times with its floor, and the bench must stay
    // within its 20 minutes.
    let seconds = args.seconds.min(30);
    let started = Instant::now();
    let bridge = Bridge::start(&bridge_config(&src.connect_string(), &proxy.connect_string()));
    await_ready(&bridge).await;
    m.add(
        "wan_sync_nodes_per_s",
        nodes.len() as f64 / started.elapsed().as_secs_f64(),
    );
    let d = dst.client().await;
    let leaves = leaves_of(nodes);
    let steady = Steady {
        servers: [&src, &dst],
        src: &s,
        dst: &d,
        leaves: &leaves,
        load: Load::sets(args.rate),
    };
    steady.start(args, m, "wan_").await;
    let before = bridge_requests(&dst, &d).await;
    let lag = steady.measure(seconds).await;
    if let (Some(before), Some(after)) = (before, bridge_requests(&dst, &d).await) {
        m.add(
            "wan_target_requests_per_write",
            (after - before) as f64 / lag.writes.max(1) as f64,
        );
    }
    clean &= assert_clean(&bridge).await;
    m.add_lag("wan_", &lag);
    m.add("wan_lag_rate", lag.rate);
    m.samples("40 ms each way", &lag.samples_ms);
    drop(bridge);
    // The same minimal mirror as on loopback, writing through the same
    // proxy: what one trip costs here, proxy and all.
    eprintln!("  40 ms floor: a minimal mirror");
    let far = Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&proxy.connect_string())
        .await
        .expect("a session through the delay proxy");
    let floor = minimal_mirror(&s, &far, "/t").await;
    steady.start(args, m, "wan_floor_").await;
    let lag = steady.measure(seconds).await;
    floor.abort();
    m.add_lag("wan_floor_", &lag);
    m.samples("40 ms each way, minimal mirror", &lag.samples_ms);
    drop((s, d, far, src, dst));
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
