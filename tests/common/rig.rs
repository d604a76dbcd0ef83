//! Regions you can partition: each region a network namespace of its own,
//! joined to the others through a bridge in a "core" namespace, holding its
//! ZooKeeper servers and, where a scenario wants, its zkbridge instances.
//!
//! Faults are nftables rules inside the regions' namespaces (partitions
//! both ways or one way, an isolated region, a fraction of packets dropped
//! with `numgen`), processes killed or stopped, and latency from the
//! userspace delay proxy placed on the inter-region path (this kernel has
//! no `netem`). Only the rig's own namespaces are touched; the subnet
//! exists only inside them. Everything is torn down on drop (also when a
//! test fails), and namespaces left by an interrupted run are removed by
//! the next.
//!
//! The test process reaches a region through loopback forwarders whose
//! upstream sockets are created inside the region's namespace, so the
//! checker always sees a region's own servers, partitioned or not.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

/// Whether this process may create network namespaces. Tests that need the
/// rig skip, saying why, where it cannot (not root); as root, a missing
/// tool is a failure, not a skip.
pub fn available() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the region rig needs root (network namespaces); run as root or in CI");
        return false;
    }
    for tool in ["ip", "nft"] {
        assert!(
            Command::new(tool).arg("-V").output().is_ok(),
            "{tool} is missing: scripts/install-deps.sh installs it"
        );
    }
    true
}

/// Connects to `addr` from inside network namespace `netns` (`None`: this
/// process's own). The socket keeps its namespace after the thread that
/// made it returns.
pub fn connect_in(netns: Option<&str>, addr: SocketAddr, timeout: Duration) -> std::io::Result<std::net::TcpStream> {
    let Some(ns) = netns else {
        return std::net::TcpStream::connect_timeout(&addr, timeout);
    };
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
        use std::os::fd::AsRawFd;
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect_timeout(&addr, timeout)
    })
    .join()
    .expect("connect thread")
}

/// Binds a listener inside `netns`.
fn listen_in(netns: &str, addr: SocketAddr) -> std::net::TcpListener {
    let ns = netns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns {ns}"
        );
        std::net::TcpListener::bind(addr).unwrap()
    })
    .join()
    .expect("listen thread")
}

/// Forwards a loopback port of this process to `upstream`, connecting from
/// inside `netns`; optionally through a delay (with jitter, order kept).
pub struct Forward {
    pub addr: String,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Latency added to every chunk in one direction: `base ± jitter`, never
/// reordering.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub base: Duration,
    pub jitter: Duration,
}

impl Forward {
    /// A forwarder listening on `listener`, whose upstream connections are
    /// made from `upstream_ns` to `upstream`.
    fn start(
        listener: std::net::TcpListener,
        upstream_ns: Option<String>,
        upstream: SocketAddr,
        latency: Latency,
    ) -> Forward {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move {
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            while let Ok((client, _)) = listener.accept().await {
                let ns = upstream_ns.clone();
                let Ok(Ok(server)) =
                    tokio::task::spawn_blocking(move || connect_in(ns.as_deref(), upstream, Duration::from_secs(2)))
                        .await
                else {
                    continue;
                };
                server.set_nonblocking(true).unwrap();
                let server = tokio::net::TcpStream::from_std(server).unwrap();
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                tokio::spawn(delayed_pipe(cr, sw, latency, seed));
                tokio::spawn(delayed_pipe(sr, cw, latency, seed ^ 0xdead_beef));
            }
        });
        Forward { addr, accept }
    }
}

async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Latency,
    mut seed: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if latency.base.is_zero() && latency.jitter.is_zero() {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = to.shutdown().await;
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut last_due = tokio::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let jitter_ns = latency.jitter.as_nanos() as u64;
        let offset = if jitter_ns == 0 { 0 } else { seed % (2 * jitter_ns + 1) } as i64 - jitter_ns as i64;
        let delay = (latency.base.as_nanos() as i64 + offset).max(0) as u64;
        let due = (tokio::time::Instant::now() + Duration::from_nanos(delay)).max(last_due);
        last_due = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// One region of the rig.
#[derive(Clone, Debug)]
pub struct Region {
    pub name: String,
    /// The region's network namespace.
    pub ns: String,
    /// Its address on the inter-region network.
    pub ip: String,
}

/// A rule that drops traffic, kept per region and rendered into its
/// namespace's nftables ruleset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Drop_ {
    /// Every packet from `peer` (input) and to it (output), or a fraction.
    Peer {
        peer: String,
        inbound: bool,
        outbound: bool,
        percent: u8,
    },
    /// Everything but loopback.
    All,
}

/// The rig: a core namespace with a bridge, and a namespace per region.
pub struct Rig {
    core: String,
    pub regions: Vec<Region>,
    rules: Mutex<Vec<BTreeSet<Drop_>>>,
    _guard: Arc<()>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes namespaces left by rigs of processes that are gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("zkb-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

static RIGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Rig {
    /// Regions named `names`, each reachable from the others; `None` (and
    /// a SKIPPED line) where namespaces cannot be made.
    pub fn new(names: &[&str]) -> Option<Rig> {
        if !available() {
            return None;
        }
        remove_stale();
        let n = RIGS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("zkb-{}-{n}", std::process::id());
        let core = format!("{tag}-core");
        let mut rig = Rig {
            core: core.clone(),
            regions: Vec::new(),
            rules: Mutex::new(Vec::new()),
            _guard: Arc::new(()),
        };
        ip(&["netns", "add", &core]);
        ip(&["-n", &core, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &core, "link", "set", "br0", "up"]);
        ip(&["-n", &core, "link", "set", "lo", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}-{i}");
            let addr = format!("10.77.{n}.{}", 10 + i);
            ip(&["netns", "add", &ns]);
            rig.regions.push(Region {
                name: name.to_string(),
                ns: ns.clone(),
                ip: addr.clone(),
            });
            rig.rules.lock().unwrap().push(BTreeSet::new());
            let (outside, inside) = (format!("r{i}"), "eth0".to_string());
            ip(&[
                "-n", &core, "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &ns,
            ]);
            ip(&["-n", &core, "link", "set", &outside, "master", "br0"]);
            ip(&["-n", &core, "link", "set", &outside, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inside]);
            ip(&["-n", &ns, "link", "set", &inside, "up"]);
        }
        for i in 0..rig.regions.len() {
            rig.render(i);
        }
        Some(rig)
    }

    pub fn region(&self, name: &str) -> &Region {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no region {name}"))
    }

    fn index(&self, name: &str) -> usize {
        self.regions.iter().position(|r| r.name == name).unwrap()
    }

    /// Writes region `i`'s ruleset (all of it, atomically).
    fn render(&self, i: usize) {
        let rules = self.rules.lock().unwrap()[i].clone();
        let mut input = String::new();
        let mut output = String::new();
        for rule in &rules {
            match rule {
                Drop_::All => {
                    input.push_str("    iifname != \"lo\" drop\n");
                    output.push_str("    oifname != \"lo\" drop\n");
                }
                Drop_::Peer {
                    peer,
                    inbound,
                    outbound,
                    percent,
                } => {
                    let fraction = if *percent >= 100 {
                        String::new()
                    } else {
                        format!("numgen random mod 100 < {percent} ")
                    };
                    if *inbound {
                        input.push_str(&format!("    ip saddr {peer} {fraction}drop\n"));
                    }
                    if *outbound {
                        output.push_str(&format!("    ip daddr {peer} {fraction}drop\n"));
                    }
                }
            }
        }
        let ruleset = format!(
            "table inet zkb\ndelete table inet zkb\ntable inet zkb {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{input}  }}\n  chain output {{\n    type filter hook output priority 0; policy accept;\n{output}  }}\n}}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.regions[i].ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn change(&self, region: &str, f: impl FnOnce(&mut BTreeSet<Drop_>)) {
        let i = self.index(region);
        f(&mut self.rules.lock().unwrap()[i]);
        self.render(i);
    }

    /// No packet between `a` and `b`, either way.
    pub fn partition(&self, a: &str, b: &str) {
        self.drop_between(a, b, 100);
    }

    /// `percent` of the packets between `a` and `b` dropped, each way.
    pub fn drop_between(&self, a: &str, b: &str, percent: u8) {
        let (ia, ib) = (self.region(a).ip.clone(), self.region(b).ip.clone());
        self.change(a, |r| {
            r.insert(Drop_::Peer {
                peer: ib,
                inbound: true,
                outbound: true,
                percent,
            });
        });
        self.change(b, |r| {
            r.insert(Drop_::Peer {
                peer: ia,
                inbound: true,
                outbound: true,
                percent,
            });
        });
    }

    /// Packets from `from` never arrive in `to`; the other way works.
    pub fn partition_one_way(&self, from: &str, to: &str) {
        let peer = self.region(from).ip.clone();
        self.change(to, |r| {
            r.insert(Drop_::Peer {
                peer,
                inbound: true,
                outbound: false,
                percent: 100,
            });
        });
    }

    /// `region` reaches nothing outside itself, nor is reached.
    pub fn isolate(&self, region: &str) {
        self.change(region, |r| {
            r.insert(Drop_::All);
        });
    }

    /// Every fault between regions lifted.
    pub fn heal(&self) {
        for i in 0..self.regions.len() {
            self.rules.lock().unwrap()[i].clear();
            self.render(i);
        }
    }

    /// A ZooKeeper ensemble of `n` servers inside `region`.
    pub fn zk(&self, region: &str, n: usize) -> super::Zk {
        let r = self.region(region);
        super::Zk::start_secured(
            n,
            &super::ServerOptions {
                netns: Some((r.ns.clone(), r.ip.clone())),
                ..Default::default()
            },
        )
    }

    /// A connect string that reaches `zk` from inside `from` through the
    /// userspace delay proxy: `latency` each way on every connection.
    pub fn delayed(&self, from: &str, zk: &super::Zk, latency: Latency) -> (String, Vec<Forward>) {
        let r = self.region(from);
        let forwards: Vec<Forward> = zk
            .servers
            .iter()
            .map(|s| {
                let listener = listen_in(&r.ns, format!("{}:0", r.ip).parse().unwrap());
                // Upstream from the proxy's own region, so the packets cross
                // the inter-region network (and its faults).
                Forward::start(
                    listener,
                    Some(r.ns.clone()),
                    format!("{}:{}", s.host, s.port).parse().unwrap(),
                    latency,
                )
            })
            .collect();
        let connect = forwards.iter().map(|f| f.addr.clone()).collect::<Vec<_>>().join(",");
        (connect, forwards)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for r in &self.regions {
            let _ = Command::new("ip").args(["netns", "del", &r.ns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.core]).output();
    }
}

/// A loopback forwarder into `netns` (for the test's own clients).
pub fn forward_into(netns: &str, upstream: SocketAddr) -> Forward {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Forward::start(listener, Some(netns.to_string()), upstream, Latency::default())
}
