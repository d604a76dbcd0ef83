//! Test harness: real Apache ZooKeeper servers (Debian's `zookeeper`
//! package) on loopback ports chosen at run time, and the real `zkbridge`
//! binary. Everything started here is killed on drop — also when a test
//! panics — and, through PR_SET_PDEATHSIG, when the test process dies.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod pki;
pub mod proxy;
pub mod rig;

use zookeeper_client::{Acls, Client, CreateMode};

/// Jars every server version runs with: a logging backend and Netty's codec
/// (for TLS), from Debian bookworm.
const COMMON_JARS: &str = "/usr/share/java/slf4j-simple.jar:/usr/share/java/netty-codec.jar";

/// Where `scripts/install-deps.sh` puts ZooKeeper 3.9's two jars (Debian
/// trixie's `libzookeeper-java`), unless `ZK39_HOME` says otherwise.
const ZK39_HOME: &str = "/opt/zkbridge/zookeeper-3.9";

/// A ZooKeeper server version the tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZkVersion {
    /// Debian bookworm's `zookeeper` package (3.8.0).
    V38,
    /// Debian trixie's `libzookeeper-java` (3.9.x) on bookworm's
    /// dependency jars.
    V39,
}

impl ZkVersion {
    /// The version the suite runs on: `ZK_SERVER_VERSION` (`3.8`, the
    /// default, or `3.9`). Anything else is a mistake, not a fallback.
    pub fn from_env() -> ZkVersion {
        match std::env::var("ZK_SERVER_VERSION").as_deref() {
            Err(_) | Ok("") | Ok("3.8") => ZkVersion::V38,
            Ok("3.9") => ZkVersion::V39,
            Ok(other) => panic!("ZK_SERVER_VERSION={other:?}: expected 3.8 or 3.9"),
        }
    }

    /// The other version, for mixed-version tests.
    pub fn other(self) -> ZkVersion {
        match self {
            ZkVersion::V38 => ZkVersion::V39,
            ZkVersion::V39 => ZkVersion::V38,
        }
    }

    /// What `srvr` answers with, `Zookeeper version: 3.9.3-…`.
    pub fn prefix(self) -> &'static str {
        match self {
            ZkVersion::V38 => "3.8.",
            ZkVersion::V39 => "3.9.",
        }
    }

    /// The server's classpath. 3.9's jute jar goes first: the 3.9 jar's
    /// manifest names bookworm's 3.8 jute jar, which the JVM would search
    /// right after it.
    fn classpath(self) -> String {
        match self {
            ZkVersion::V38 => format!("/usr/share/java/zookeeper.jar:{COMMON_JARS}"),
            ZkVersion::V39 => {
                let home = std::env::var("ZK39_HOME").unwrap_or_else(|_| ZK39_HOME.to_string());
                let jar = |prefix: &str| {
                    std::fs::read_dir(&home)
                        .ok()
                        .and_then(|dir| {
                            dir.filter_map(|e| e.ok())
                                .map(|e| e.path())
                                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".jar")))
                        })
                        .unwrap_or_else(|| panic!("ZooKeeper 3.9 is not installed in {home} ({prefix}*.jar missing): run scripts/install-deps.sh"))
                };
                format!(
                    "{}:{}:{COMMON_JARS}",
                    jar("zookeeper-jute-3.9").display(),
                    jar("zookeeper-3.9").display()
                )
            }
        }
    }
}

/// Settings of test servers beyond the defaults: security, limits.
#[derive(Default, Clone)]
pub struct ServerOptions {
    /// A TLS secure client port (Netty) with these PEM files.
    pub tls: Option<ServerTls>,
    /// SASL DIGEST-MD5 users (`user`, `password`) the server accepts.
    pub sasl_users: Vec<(String, String)>,
    /// `enforce.auth.schemes`: sessions must authenticate with one of
    /// these (`sasl`, `digest`) before any request.
    pub require_auth: Option<String>,
    /// `jute.maxbuffer` of the server (bytes), when not the default 1 MiB.
    pub max_buffer: Option<usize>,
    /// The server version; `None`: [`ZkVersion::from_env`].
    pub version: Option<ZkVersion>,
    /// Run inside this network namespace, on this address (a region of
    /// the rig); `None`: this host's loopback.
    pub netns: Option<(String, String)>,
}

#[derive(Clone)]
pub struct ServerTls {
    /// PEM with the server's private key and certificate.
    pub keystore: PathBuf,
    /// PEM with the CA that client certificates must chain to.
    pub truststore: PathBuf,
    /// `ssl.clientAuth`: `need` for mutual TLS, `none` otherwise.
    pub client_auth: &'static str,
}

/// Set by the benchmark: servers tuned for throughput rather than start-up.
pub static BENCHMARK_SERVERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A port for a server the test starts later, so nothing may hold it then.
///
/// A port the kernel hands out for `:0` lies in the ephemeral range, where the very next
/// outgoing connection (a client, a quorum peer) may take it before ZooKeeper binds it —
/// CI saw an election port lost that way. So ports come from below the ephemeral range,
/// each handed out once per process, starting at an offset of the process id so that two
/// test binaries rarely probe the same ports, and each checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = 10_000u32;
    let span = ephemeral_low.saturating_sub(low).max(1_000);
    let offset = std::process::id().wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below the ephemeral range");
        let port = (low + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Sends a four-letter command and returns the reply.
pub fn four_letter(port: u16, cmd: &str) -> Option<String> {
    four_letter_at(None, "127.0.0.1", port, cmd)
}

/// [`four_letter`] to a server on `host` inside network namespace `netns`.
pub fn four_letter_at(netns: Option<&str>, host: &str, port: u16, cmd: &str) -> Option<String> {
    let addr = format!("{host}:{port}").parse().ok()?;
    let mut s = rig::connect_in(netns, addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// One ZooKeeper server process (standalone or a member of an ensemble).
pub struct ZkServer {
    pub port: u16,
    /// The TLS client port, when the server has one.
    pub secure_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    version: ZkVersion,
    /// The address it listens on, and the namespace it runs in.
    pub host: String,
    pub netns: Option<String>,
}

impl ZkServer {
    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "java"]);
                c
            }
            None => Command::new("java"),
        };
        if BENCHMARK_SERVERS.load(std::sync::atomic::Ordering::Relaxed) {
            // Throughput over start-up time: the full JIT, and heap for a
            // million-node tree (the cost curves).
            cmd.args(["-Xmx2g", "-XX:+UseParallelGC"]);
            if let Ok(extra) = std::env::var("ZK_JVM_EXTRA") {
                cmd.args(extra.split_whitespace());
            }
        } else {
            cmd.args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]);
        }
        if let Ok(max) = std::fs::read_to_string(self.dir.join("jute.maxbuffer")) {
            cmd.arg(format!("-Djute.maxbuffer={}", max.trim()));
        }
        let jaas = self.dir.join("jaas.conf");
        if jaas.exists() {
            cmd.arg(format!("-Djava.security.auth.login.config={}", jaas.display()));
        }
        cmd.args(["-cp", &self.version.classpath()])
            .arg("-Dzookeeper.extendedTypesEnabled=true")
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("start java (is the zookeeper package installed?)"));
    }

    pub fn is_serving(&self) -> bool {
        self.four_letter("srvr").is_some_and(|r| r.contains("Mode:"))
    }

    pub fn four_letter(&self, cmd: &str) -> Option<String> {
        four_letter_at(self.netns.as_deref(), &self.host, self.port, cmd)
    }

    pub fn mode(&self) -> Option<String> {
        self.four_letter("srvr")?
            .lines()
            .find_map(|l| l.strip_prefix("Mode: ").map(|m| m.trim().to_string()))
    }

    fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.is_serving() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().filter(|l| !l.trim_start().starts_with("at ")).collect();
                panic!(
                    "ZooKeeper on port {} did not start; its log ends:\n{}",
                    self.port,
                    tail[tail.len().saturating_sub(30)..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGKILL: ZooKeeper's log is durable, so this is a
    /// crash from the client's point of view).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone server or an ensemble, with its data in a temporary dir.
pub struct Zk {
    pub servers: Vec<ZkServer>,
    _dir: tempfile::TempDir,
    /// Loopback forwarders into a region's namespace, made on first use.
    forwards: std::sync::Mutex<Vec<rig::Forward>>,
}

impl Zk {
    /// A standalone server, serving when this returns.
    pub fn standalone() -> Zk {
        Zk::start(1)
    }

    /// A standalone server of a given version.
    pub fn standalone_version(version: ZkVersion) -> Zk {
        Zk::start_secured(
            1,
            &ServerOptions {
                version: Some(version),
                ..Default::default()
            },
        )
    }

    /// `n` servers: standalone for 1, an ensemble otherwise; returns when
    /// every member serves.
    pub fn start(n: usize) -> Zk {
        Zk::start_secured(n, &ServerOptions::default())
    }

    /// `n` servers with TLS and authentication as `security` says.
    pub fn start_secured(n: usize, security: &ServerOptions) -> Zk {
        let dir = tempfile::Builder::new().prefix("zkbridge-test-zk").tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        let mut servers = Vec::new();
        let host = security
            .netns
            .as_ref()
            .map(|(_, ip)| ip.clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        for (i, (client, quorum, election)) in ports.iter().enumerate() {
            let sdir = dir.path().join(format!("s{}", i + 1));
            std::fs::create_dir_all(sdir.join("data")).unwrap();
            let mut cfg = format!(
                "tickTime=500\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={client}\nclientPortAddress={host}\n\
                 admin.enableServer=false\n4lw.commands.whitelist=srvr,ruok,mntr,cons\nmaxSessionTimeout=60000\n\
                 minSessionTimeout=1000\n",
                sdir.join("data").display()
            );
            if n > 1 {
                std::fs::write(sdir.join("data/myid"), format!("{}\n", i + 1)).unwrap();
                for (j, (_, q, e)) in ports.iter().enumerate() {
                    cfg.push_str(&format!("server.{}={host}:{q}:{e}\n", j + 1));
                }
            }
            let _ = quorum;
            let _ = election;
            let secure_port = security.tls.as_ref().map(|tls| {
                let port = free_port();
                cfg.push_str(&format!(
                    "secureClientPort={port}\nsecureClientPortAddress=127.0.0.1\n\
                     serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                     ssl.keyStore.location={}\nssl.keyStore.type=PEM\n\
                     ssl.trustStore.location={}\nssl.trustStore.type=PEM\nssl.clientAuth={}\n",
                    tls.keystore.display(),
                    tls.truststore.display(),
                    tls.client_auth
                ));
                port
            });
            if !security.sasl_users.is_empty() {
                cfg.push_str("authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider\n");
                let users: String = security
                    .sasl_users
                    .iter()
                    .map(|(u, p)| format!(" user_{u}=\"{p}\""))
                    .collect();
                std::fs::write(
                    sdir.join("jaas.conf"),
                    format!("Server {{\n org.apache.zookeeper.server.auth.DigestLoginModule required{users};\n}};\n"),
                )
                .unwrap();
            }
            if let Some(max) = security.max_buffer {
                std::fs::write(sdir.join("jute.maxbuffer"), max.to_string()).unwrap();
            }
            if let Some(schemes) = &security.require_auth {
                cfg.push_str(&format!("enforce.auth.enabled=true\nenforce.auth.schemes={schemes}\n"));
            }
            std::fs::write(sdir.join("zoo.cfg"), cfg).unwrap();
            let mut server = ZkServer {
                port: *client,
                secure_port,
                dir: sdir,
                child: None,
                version: security.version.unwrap_or_else(ZkVersion::from_env),
                host: host.clone(),
                netns: security.netns.as_ref().map(|(ns, _)| ns.clone()),
            };
            server.spawn();
            servers.push(server);
        }
        for s in &servers {
            s.wait_serving();
            // The version asked for, not whatever the classpath found.
            let srvr = s.four_letter("srvr").unwrap_or_default();
            assert!(
                srvr.contains(&format!("Zookeeper version: {}", s.version.prefix())),
                "expected ZooKeeper {:?}, the server says: {srvr}",
                s.version
            );
        }
        Zk {
            servers,
            _dir: dir,
            forwards: Default::default(),
        }
    }

    /// The TLS client ports, as a connect string.
    pub fn secure_connect_string(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.secure_port.expect("server has a TLS port")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The servers' addresses, as zkbridge is configured with them (inside
    /// the rig: the region's addresses, reachable from other regions).
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("{}:{}", s.host, s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where this test process connects: the servers themselves, or for a
    /// region of the rig loopback forwarders into its namespace (so the
    /// test's own reads never cross the faults between regions).
    fn client_connect_string(&self) -> String {
        let Some(ns) = self.servers.first().and_then(|s| s.netns.clone()) else {
            return self.connect_string();
        };
        let mut forwards = self.forwards.lock().unwrap();
        if forwards.is_empty() {
            for s in &self.servers {
                forwards.push(rig::forward_into(
                    &ns,
                    format!("{}:{}", s.host, s.port).parse().unwrap(),
                ));
            }
        }
        forwards.iter().map(|f| f.addr.clone()).collect::<Vec<_>>().join(",")
    }

    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connector()
                .with_session_timeout(Duration::from_secs(10))
                .connect(&self.client_connect_string())
                .await
            {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("test client: connect failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot connect to {}: {e}", self.connect_string()),
            }
        }
    }

    pub fn kill(&mut self) {
        self.servers.iter_mut().for_each(ZkServer::kill);
    }

    /// Kills every server, deletes its data and starts it empty: a rebuilt
    /// ensemble on the same addresses.
    pub fn wipe_and_restart(&mut self) {
        self.kill();
        for s in &self.servers {
            let data = s.dir.join("data");
            let myid = std::fs::read(data.join("myid")).ok();
            std::fs::remove_dir_all(&data).unwrap();
            std::fs::create_dir_all(&data).unwrap();
            if let Some(id) = myid {
                std::fs::write(data.join("myid"), id).unwrap();
            }
        }
        self.restart();
    }

    /// Restarts every server (keeping data) and waits until they serve.
    pub fn restart(&mut self) {
        for s in self.servers.iter_mut() {
            s.restart();
        }
        for s in &self.servers {
            s.wait_serving();
        }
    }
}

/// Creates `path` and missing ancestors (empty data).
pub async fn mkdirs(c: &Client, path: &str) {
    let mut cur = String::new();
    for seg in path.trim_start_matches('/').split('/') {
        cur.push('/');
        cur.push_str(seg);
        match c
            .create(&cur, b"", &CreateMode::Persistent.with_acls(Acls::anyone_all()))
            .await
        {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => panic!("create {cur}: {e}"),
        }
    }
}

pub async fn create(c: &Client, path: &str, data: &[u8]) {
    c.create(path, data, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
}

/// Creates many nodes quickly, in order, with `multi` batches of at most
/// ~400 KB (parents must precede children in `nodes`).
pub async fn create_many(c: &Client, nodes: &[(String, Vec<u8>)]) {
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let mut i = 0;
    while i < nodes.len() {
        let mut w = c.new_multi_writer();
        let mut bytes = 0;
        let mut n = 0;
        while i < nodes.len() && n < 200 && (n == 0 || bytes + nodes[i].1.len() < 400_000) {
            if nodes[i].1.len() > 400_000 {
                if n > 0 {
                    break;
                }
                create(c, &nodes[i].0, &nodes[i].1).await;
                i += 1;
                n = usize::MAX;
                break;
            }
            w.add_create(&nodes[i].0, &nodes[i].1, &opts).unwrap();
            bytes += nodes[i].1.len();
            n += 1;
            i += 1;
        }
        if n != usize::MAX {
            w.commit().await.expect("multi create");
        }
    }
}

/// A tree of `n` nodes under `/t`, fan-out 10, 100 bytes each; parents
/// first (shared by the checkpoint tests and the benchmark).
pub fn tree(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut nodes = vec![("/t".to_string(), vec![b'r'; 100])];
    let mut i = 0;
    while nodes.len() < n {
        let parent = nodes[i / 10].0.clone();
        nodes.push((
            format!("{parent}/{}", nodes.len()),
            vec![b'a' + (nodes.len() % 26) as u8; 100],
        ));
        i += 1;
    }
    nodes
}

pub async fn get(c: &Client, path: &str) -> Option<Vec<u8>> {
    match c.get_data(path).await {
        Ok((d, _)) => Some(d),
        Err(zookeeper_client::Error::NoNode) => None,
        Err(e) => panic!("get {path}: {e}"),
    }
}

pub async fn delete_tree(c: &Client, path: &str) {
    let children = match c.list_children(path).await {
        Ok(ch) => ch,
        Err(zookeeper_client::Error::NoNode) => return,
        Err(e) => panic!("list {path}: {e}"),
    };
    for ch in children {
        Box::pin(delete_tree(c, &format!("{path}/{ch}"))).await;
    }
    match c.delete(path, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
        Err(e) => panic!("delete {path}: {e}"),
    }
}

/// A running `zkbridge run` process with its own config file and log.
pub struct Bridge {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub listen: String,
    pub config_path: PathBuf,
    /// The network namespace it runs in (a region of the rig).
    pub netns: Option<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zkbridge")
}

impl Bridge {
    /// Starts the bridge with `toml` (a `[bridge]` table with `listen` and
    /// fast settings is prepended).
    pub fn start(toml: &str) -> Bridge {
        Bridge::start_as("test-bridge", toml)
    }

    /// Starts an instance with its own `bridge.id` (several instances).
    pub fn start_as(id: &str, toml: &str) -> Bridge {
        Bridge::start_in(None, id, toml)
    }

    /// A bridge inside network namespace `netns` (a region of the rig).
    pub fn start_in(netns: Option<&str>, id: &str, toml: &str) -> Bridge {
        let dir = tempfile::Builder::new()
            .prefix("zkbridge-test-bridge")
            .tempdir()
            .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let config_path = dir.path().join("zkbridge.toml");
        std::fs::write(
            &config_path,
            format!("[bridge]\nid = \"{id}\"\nlisten = \"{listen}\"\n{toml}"),
        )
        .unwrap();
        let mut bridge = Bridge {
            child: None,
            dir,
            listen,
            config_path,
            netns: netns.map(str::to_string),
        };
        bridge.spawn();
        bridge
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                if BENCHMARK_SERVERS.load(std::sync::atomic::Ordering::Relaxed) {
                    "info"
                } else {
                    "info,zkbridge=debug"
                },
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("bridge.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn config(&self) -> zkbridge::config::Resolved {
        zkbridge::config::load(&self.config_path).unwrap()
    }

    /// SIGTERM, then wait for exit; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends a signal (SIGSTOP/SIGCONT to freeze and thaw the process).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How many route/targets this instance leads (0 while unreachable).
    pub fn leading(&self) -> f64 {
        self.metric("zkbridge_leader", &[])
    }

    /// GET on the bridge's HTTP listener: (status code, body), or `None`
    /// while it is not listening.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_request_in(self.netns.as_deref(), &self.listen, "GET", path)
    }

    /// Parsed `/metrics`.
    pub fn metrics(&self) -> Option<prometheus_parse::Scrape> {
        let (code, body) = self.http_get("/metrics")?;
        assert_eq!(code, 200);
        Some(prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap())
    }

    /// Runs a one-shot command against this bridge's config file: exit code
    /// and output (stdout, then stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(bin())
            .args(args)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}\n-- stderr --\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Sum of a metric's samples whose labels include all of `labels`; 0
    /// when there is none (a counter never incremented has no sample). A
    /// bridge that does not answer is a failure, never a 0: waits up to 10 s
    /// for `/metrics`, then panics.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let scrape = loop {
            if let Some(scrape) = self.metrics() {
                break scrape;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge does not answer /metrics on {} (asked for {name})",
                self.listen
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- bridge log ----\n{}", self.log());
            if let Some((_, status)) = self.http_get("/status") {
                eprintln!("---- bridge /status ----\n{status}");
            }
            if let Some((_, metrics)) = self.http_get("/metrics") {
                let interesting = [
                    "zkbridge_source_events_total",
                    "zkbridge_resyncs_total",
                    "zkbridge_pending_paths",
                    "zkbridge_leader",
                    "zkbridge_session_state",
                    "zkbridge_applied_ops_total",
                ];
                for line in metrics.lines().filter(|l| interesting.iter().any(|m| l.starts_with(m))) {
                    eprintln!("{line}");
                }
            }
        }
        self.kill();
    }
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path)
}

pub fn http_request(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    http_request_in(None, addr, method, path)
}

/// [`http_request`] from inside network namespace `netns`.
pub fn http_request_in(netns: Option<&str>, addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = rig::connect_in(netns, addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    // axum answers small bodies with Content-Length; chunked only if large.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every target of every route in `config` mirrors its source,
/// judged with plain reads (see [`RouteRule`]), never with zkbridge's own
/// `plan` or `diff`. Connects with the ensembles' digest or SASL
/// credentials; for a TLS ensemble a test compares with its own clients
/// ([`await_mirror`]).
pub async fn await_in_sync(config: &zkbridge::config::Resolved, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for route in &config.routes {
        let rule = RouteRule::of(route);
        let src = plain_client(config, &route.source.ensemble).await;
        for target in &route.targets {
            let dst = plain_client(config, &target.ensemble).await;
            loop {
                let Some(difference) = rule.difference(&src, &route.source.path, &dst, &target.path).await else {
                    break;
                };
                assert!(
                    Instant::now() < deadline,
                    "route {} not in sync into {} after {timeout:?}: {difference}",
                    route.name(),
                    target.ensemble
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A client of a configured ensemble, with its digest or SASL credentials.
async fn plain_client(config: &zkbridge::config::Resolved, ensemble: &str) -> Client {
    let e = config.ensemble(ensemble);
    assert!(
        e.tls.is_none(),
        "ensemble {ensemble} uses TLS: compare with the test's own clients (await_mirror)"
    );
    let sasl = e.sasl.as_ref().map(|sasl| {
        let password = match (&sasl.password, &sasl.password_file) {
            (Some(p), _) => p.expose().to_string(),
            (None, Some(file)) => std::fs::read_to_string(file).unwrap().trim().to_string(),
            (None, None) => panic!("ensemble {ensemble}: SASL without a password"),
        };
        (sasl.username.clone(), password)
    });
    let digest = match (&e.digest, &e.digest_file) {
        (Some(secret), _) => Some(secret.expose().to_string()),
        (None, Some(file)) => Some(std::fs::read_to_string(file).unwrap().trim().to_string()),
        (None, None) => None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut connector = Client::connector().with_session_timeout(Duration::from_secs(10));
        if let Some(digest) = &digest {
            connector = connector.with_auth("digest", digest.as_bytes());
        }
        if let Some((user, password)) = &sasl {
            connector = connector.with_sasl(zookeeper_client::SaslOptions::digest_md5(
                user.clone(),
                password.clone(),
            ));
        }
        match connector.connect(&e.connect).await {
            Ok(c) => return c,
            Err(err) if Instant::now() < deadline => {
                eprintln!("test client: connect to {ensemble} failed ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot connect to {ensemble}: {err}"),
        }
    }
}

/// What a route promises, as the documentation states it, rebuilt here
/// from the route's settings — globs, ephemerals, deletes, ACLs — without
/// zkbridge's code: a node is mirrored when it matches an include glob and
/// neither it nor an ancestor matches an exclude glob; an ancestor of a
/// mirrored node exists in the target; with `deletes = "propagate"` nothing
/// else that the route manages is in the target.
pub struct RouteRule {
    include: globset::GlobSet,
    exclude: globset::GlobSet,
    ephemerals: zkbridge::config::EphemeralMode,
    keep_deletes: bool,
    acls: bool,
}

impl RouteRule {
    pub fn of(route: &zkbridge::config::Route) -> RouteRule {
        let set = |globs: &[String]| {
            let mut set = globset::GlobSetBuilder::new();
            for g in globs {
                set.add(globset::GlobBuilder::new(g).literal_separator(true).build().unwrap());
            }
            set.build().unwrap()
        };
        RouteRule {
            include: set(&route.config.include),
            exclude: set(&route.config.exclude),
            ephemerals: route.config.ephemerals,
            keep_deletes: route.config.deletes == zkbridge::config::DeleteMode::Keep,
            acls: route.config.acls == zkbridge::config::AclMode::Copy,
        }
    }

    fn excluded(&self, rel: &str) -> bool {
        let mut prefix = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.exclude.is_match(&prefix) {
                return true;
            }
        }
        false
    }

    fn managed(&self, rel: &str) -> bool {
        rel.is_empty() || (self.include.is_match(rel) && !self.excluded(rel))
    }

    /// The first way the target under `dst_root` fails the route's promise
    /// for the source under `src_root`, or `None`.
    pub async fn difference(&self, src: &Client, src_root: &str, dst: &Client, dst_root: &str) -> Option<String> {
        use zkbridge::config::EphemeralMode;
        let source = read_subtree(src, src_root, false).await;
        let mut target = read_subtree(dst, dst_root, false).await;
        drop_unreadable(&source, &mut target);
        let mut mirrored = std::collections::BTreeSet::new();
        for (rel, node) in &source {
            if !node.readable || !self.managed(rel) || (node.ephemeral && self.ephemerals == EphemeralMode::Skip) {
                continue;
            }
            mirrored.insert(rel.as_str());
            let Some(twin) = target.get(rel) else {
                return Some(format!("{rel:?} missing in the target"));
            };
            if twin.data != node.data {
                return Some(format!("{rel:?} has other data in the target"));
            }
            if self.acls && twin.acl != node.acl {
                return Some(format!(
                    "{rel:?} has another ACL in the target: {} vs {}",
                    twin.acl, node.acl
                ));
            }
            let ephemeral_wanted = node.ephemeral && self.ephemerals == EphemeralMode::Ephemeral;
            if !rel.is_empty() && twin.ephemeral != ephemeral_wanted {
                return Some(format!("{rel:?} is ephemeral in only one of the two"));
            }
        }
        // Scaffolding: the ancestors of mirrored nodes.
        let mut scaffold = std::collections::BTreeSet::new();
        for rel in &mirrored {
            let mut up = *rel;
            while let Some((parent, _)) = up.rsplit_once('/') {
                scaffold.insert(parent);
                up = parent;
            }
            if !rel.is_empty() {
                scaffold.insert("");
            }
        }
        if let Some(rel) = scaffold.iter().find(|rel| !target.contains_key(**rel)) {
            return Some(format!("{rel:?} (an ancestor of mirrored nodes) missing in the target"));
        }
        if self.keep_deletes {
            return None;
        }
        target
            .keys()
            .find(|rel| self.managed(rel) && !mirrored.contains(rel.as_str()) && !scaffold.contains(rel.as_str()))
            .map(|rel| format!("{rel:?} is in the target only"))
    }
}

/// The `[ensembles.*]` table for named servers.
pub fn ensembles(list: &[(&str, &Zk)]) -> String {
    list.iter()
        .map(|(name, zk)| {
            format!(
                "[ensembles.{name}]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n",
                zk.connect_string()
            )
        })
        .collect()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Peak RSS (bytes) and CPU seconds of a process, from /proc.
pub fn process_cost(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hwm_kb * 1024, ticks / hz.max(1.0))
}

/// What [`mirror_difference`] compares beyond existence and data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compare {
    /// The route copies ACLs (`acls = "copy"`).
    pub acls: bool,
    /// The route skips ephemerals (`ephemerals = "skip"`, the default):
    /// source ephemerals must be absent from the target.
    pub skip_ephemerals: bool,
}

/// The first difference between two subtrees found with plain reads (never
/// zkbridge's own `plan` or `diff`), or `None` when the target mirrors the
/// source: the same relative paths, the same data, and with
/// [`Compare::acls`] the same ACLs. zkbridge's own znodes (`/zkbridge`) and
/// `/zookeeper` are not part of any mirror.
pub async fn mirror_difference(
    src: &Client,
    src_root: &str,
    dst: &Client,
    dst_root: &str,
    compare: Compare,
) -> Option<String> {
    let mut source = read_subtree(src, src_root, compare.skip_ephemerals).await;
    let mut target = read_subtree(dst, dst_root, false).await;
    drop_unreadable(&source, &mut target);
    source.retain(|_, node| node.readable);
    for (rel, node) in &source {
        match target.get(rel) {
            None => return Some(format!("{rel:?} missing in the target")),
            Some(t) if t.data != node.data => return Some(format!("{rel:?} has other data in the target")),
            Some(t) if compare.acls && t.acl != node.acl => {
                return Some(format!(
                    "{rel:?} has another ACL in the target: {} vs {}",
                    t.acl, node.acl
                ))
            }
            _ => {}
        }
    }
    target
        .keys()
        .find(|rel| !source.contains_key(*rel))
        .map(|rel| format!("{rel:?} is in the target only"))
}

/// Waits until [`mirror_difference`] finds nothing.
pub async fn await_mirror(
    src: &Client,
    src_root: &str,
    dst: &Client,
    dst_root: &str,
    compare: Compare,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let Some(difference) = mirror_difference(src, src_root, dst, dst_root, compare).await else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "not a mirror after {timeout:?}: {difference}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leaves out of `target` what lies at or under a source node these
/// credentials may not read: zkbridge skips it, and its target copy (if
/// any) stays as it is.
fn drop_unreadable(
    source: &std::collections::BTreeMap<String, PlainNode>,
    target: &mut std::collections::BTreeMap<String, PlainNode>,
) {
    let unreadable: Vec<&String> = source.iter().filter(|(_, n)| !n.readable).map(|(rel, _)| rel).collect();
    target.retain(|rel, _| {
        !unreadable
            .iter()
            .any(|u| rel == *u || u.is_empty() || rel.starts_with(&format!("{u}/")))
    });
}

/// A node as plain reads see it.
pub struct PlainNode {
    pub data: Vec<u8>,
    /// The ACL, as text.
    pub acl: String,
    pub ephemeral: bool,
    /// `false` when these credentials may not read it (NoAuth): zkbridge
    /// skips such a node and leaves its target copy as it is.
    pub readable: bool,
}

/// Every node under `root` with plain reads (see `read_subtree`),
/// ephemerals included.
pub async fn plain_subtree(c: &Client, root: &str) -> std::collections::BTreeMap<String, PlainNode> {
    read_subtree(c, root, false).await
}

/// Relative path → node, for every node under `root`, read with plain
/// `getData`, `getACL` and `getChildren` calls (many in flight, level by
/// level). Nodes deleted during the walk are left out; so is zkbridge's own
/// `/zkbridge` and ZooKeeper's `/zookeeper`, which are part of no mirror.
async fn read_subtree(c: &Client, root: &str, skip_ephemerals: bool) -> std::collections::BTreeMap<String, PlainNode> {
    use futures::stream::StreamExt;
    let mut out = std::collections::BTreeMap::new();
    let mut level = vec![String::new()];
    while !level.is_empty() {
        let read = futures::stream::iter(level.drain(..).map(|rel| async move {
            let path = zkbridge::path::join(root, &rel);
            if path == "/zookeeper" || path == "/zkbridge" || path.starts_with("/zkbridge/") {
                return None;
            }
            let (data, acl, children) = futures::join!(c.get_data(&path), c.get_acl(&path), c.list_children(&path));
            let gone = |e: &zookeeper_client::Error| *e == zookeeper_client::Error::NoNode;
            let (data, stat) = match data {
                Ok(found) => found,
                Err(e) if gone(&e) => return None,
                // Not readable with these credentials: known to exist, no more.
                Err(zookeeper_client::Error::NoAuth) => {
                    let node = PlainNode {
                        data: Vec::new(),
                        acl: String::new(),
                        ephemeral: false,
                        readable: false,
                    };
                    return Some((rel, node, Vec::new()));
                }
                Err(e) => panic!("get {path}: {e}"),
            };
            let acl = match acl {
                Ok((acl, _)) => format!("{acl:?}"),
                Err(e) if gone(&e) => return None,
                Err(e) => panic!("get ACL {path}: {e}"),
            };
            let children = match children {
                Ok(children) => children,
                Err(e) if gone(&e) => return None,
                Err(e) => panic!("list {path}: {e}"),
            };
            let ephemeral = stat.ephemeral_owner != 0;
            let node = PlainNode {
                data,
                acl,
                ephemeral,
                readable: true,
            };
            Some((rel, node, children))
        }))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
        for (rel, node, children) in read.into_iter().flatten() {
            level.extend(children.iter().map(|child| zkbridge::path::child(&rel, child)));
            if !(skip_ephemerals && node.ephemeral) {
                out.insert(rel, node);
            }
        }
    }
    out
}

/// The DOM of `url` as headless Chromium renders it, scripts run (up to
/// 5 s of virtual time); with `screenshot`, a PNG of the page kept there.
/// Chromium is required: `scripts/install-deps.sh` installs it.
pub fn browser_dom(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let out = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--virtual-time-budget=5000",
                "--window-size=1280,480",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("chromium cannot run ({e}): scripts/install-deps.sh installs it"));
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    if let Some(path) = screenshot {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        run(&[format!("--screenshot={}", path.display())]);
    }
    run(&["--dump-dom".to_string()])
}

/// The tests' randomness: xorshift*, replayable from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed of a randomized test: `TEST_SEED` to replay one, else `default`
/// (or the clock when `None`); printed either way.
pub fn seed(what: &str, default: Option<u64>) -> u64 {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .or(default)
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{what} seed {seed} (TEST_SEED={seed} replays it)");
    seed
}
