//! Roles (design §6) against real ZooKeeper: a switchover under a live
//! workload, switchovers that abort and leave the primary exactly as it
//! was, a fail-over with the primary's server stopped, and the returning
//! old primary's divergent tail archived before it is overwritten.
//! "In sync" is judged with plain reads of every member.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use zookeeper_client::{Client, Error};

const CONVERGE: Duration = Duration::from_secs(60);
const MEMBERS: [&str; 3] = ["a", "b", "c"];

/// Three standalone ensembles; zkbridge authenticates with a digest on each
/// (the default freeze ACL grants its own identity).
fn config(zks: &[&Zk; 3], extra: &str) -> String {
    let mut toml = String::new();
    for (name, zk) in MEMBERS.iter().zip(zks) {
        toml.push_str(&format!(
            "[ensembles.{name}]\nconnect = \"{}\"\nsession_timeout_ms = 4000\ndigest = \"zkbridge:secret\"\n",
            zk.connect_string()
        ));
    }
    toml.push_str(&format!(
        "[[routes]]\nname = \"cfg\"\nsource = \"a:/cfg\"\ntargets = [\"b:/cfg\", \"c:/cfg\"]\n{extra}\n"
    ));
    toml
}

async fn seed(c: &Client, n: usize) {
    mkdirs(c, "/cfg/n").await;
    let nodes: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("/cfg/n/{i}"), format!("v{i}").into_bytes()))
        .collect();
    create_many(c, &nodes).await;
}

/// Every member mirrors `primary` (plain reads, ACLs compared too).
async fn await_members_mirror(clients: &BTreeMap<&str, Client>, primary: &str) {
    await_members(clients, primary, true).await
}

/// Like [`await_members_mirror`], data only (a route with its own ACLs in
/// the primary and target-default or protected mirrors).
async fn await_members_mirror_data(clients: &BTreeMap<&str, Client>, primary: &str) {
    await_members(clients, primary, false).await
}

async fn await_members(clients: &BTreeMap<&str, Client>, primary: &str, acls: bool) {
    for m in MEMBERS.iter().filter(|m| **m != primary) {
        let compare = Compare {
            acls,
            skip_ephemerals: true,
        };
        await_mirror(&clients[primary], "/cfg", &clients[m], "/cfg", compare, CONVERGE).await;
    }
}

/// What a member's role znode says: (epoch, primary).
async fn role(c: &Client) -> Option<(u64, String)> {
    let (data, _) = c.get_data("/zkbridge/routes/cfg/role").await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
    Some((v["epoch"].as_u64()?, v["primary"].as_str()?.to_string()))
}

async fn acl_of(c: &Client, path: &str) -> String {
    format!("{:?}", c.get_acl(path).await.unwrap().0)
}

/// Every node's ACL under `/cfg` of one member, by path.
async fn acls(c: &Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec!["/cfg".to_string()];
    while let Some(path) = stack.pop() {
        out.insert(path.clone(), acl_of(c, &path).await);
        for child in c.list_children(&path).await.unwrap() {
            stack.push(format!("{path}/{child}"));
        }
    }
    out
}

struct Cluster {
    zks: Vec<Zk>,
    clients: BTreeMap<&'static str, Client>,
}

async fn cluster() -> Cluster {
    let zks: Vec<Zk> = (0..3).map(|_| Zk::standalone()).collect();
    let mut clients = BTreeMap::new();
    for (name, zk) in MEMBERS.iter().zip(&zks) {
        clients.insert(*name, zk.client().await);
    }
    Cluster { zks, clients }
}

impl Cluster {
    fn config(&self, extra: &str) -> String {
        config(&[&self.zks[0], &self.zks[1], &self.zks[2]], extra)
    }

    async fn await_roles(&self, epoch: u64, primary: &str) {
        for m in MEMBERS {
            eventually(
                &format!("{m} says epoch {epoch}, primary {primary}"),
                CONVERGE,
                async || role(&self.clients[m]).await == Some((epoch, primary.to_string())),
            )
            .await;
        }
    }
}

/// Writers that create numbered nodes in whichever member is primary: on
/// `NoAuth` (frozen) they look the primary up in the role znode and retry,
/// as an application following the role would.
struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(clients: &BTreeMap<&'static str, Client>, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..n)
            .map(|w| {
                let (clients, stop, acknowledged) = (clients.clone(), stop.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    let mut primary = "a".to_string();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let path = format!("/cfg/w/{w}-{i}");
                        let options =
                            zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
                        match clients[primary.as_str()].create(&path, b"x", &options).await {
                            Ok(_) | Err(Error::NodeExists) => {
                                acknowledged.lock().unwrap().push(path);
                                i += 1;
                            }
                            Err(Error::NoAuth) => {
                                if let Some((_, p)) = role(&clients["b"]).await {
                                    primary = p;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => panic!("writer {w}: {path}: {e}"),
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acknowledged,
            tasks,
        }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.acknowledged).unwrap().into_inner().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_writes_loses_nothing_and_the_third_member_keeps_its_place() {
    let cluster = cluster().await;
    let a = &cluster.clients["a"];
    seed(a, 300).await;
    mkdirs(a, "/cfg/w").await;
    let bridge = Bridge::start(&cluster.config(""));
    await_members_mirror(&cluster.clients, "a").await;
    cluster.await_roles(0, "a").await;
    let original_acls = acls(a).await;

    // A lock queue's sequence counter (Curator-style names).
    mkdirs(a, "/cfg/q").await;
    let seq = zookeeper_client::CreateMode::PersistentSequential.with_acls(zookeeper_client::Acls::anyone_all());
    let mut last_sequence = 0;
    for _ in 0..5 {
        last_sequence = a.create("/cfg/q/lock-", b"", &seq).await.unwrap().1.into_i64();
    }
    // An application follows the primary through the library function.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let follower = {
        let (client, seen) = (cluster.clients["c"].clone(), seen.clone());
        tokio::spawn(async move {
            zkbridge::role_watch::follow(&client, "/zkbridge", "cfg", |p| {
                seen.lock().unwrap().push(p.map(|p| (p.epoch, p.ensemble)));
                true
            })
            .await
        })
    };
    let writers = Writers::start(&cluster.clients, 2);
    eventually("the writers write", CONVERGE, async || {
        writers.acknowledged.lock().unwrap().len() > 20
    })
    .await;
    let (code, out) = bridge.cli(&["switchover", "--route", "cfg", "--to", "b", "--yes"]);
    assert_eq!(code, 0, "{out}");
    for step in ["freeze", "drain", "verify", "flip", "translate positions", "unfreeze"] {
        assert!(out.contains(step), "step {step} is reported: {out}");
    }
    let window: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("write-unavailable window: "))
        .and_then(|w| w.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("the window is reported: {out}"));
    assert!(window > 0.0, "{out}");
    cluster.await_roles(1, "b").await;

    // The writers found the new primary and carry on there.
    let before = writers.acknowledged.lock().unwrap().len();
    eventually("the writers continue in b", CONVERGE, async || {
        writers.acknowledged.lock().unwrap().len() > before + 20
    })
    .await;
    let written = writers.stop().await;
    await_members_mirror(&cluster.clients, "b").await;
    for path in &written {
        for m in MEMBERS {
            assert!(
                get(&cluster.clients[m], path).await.is_some(),
                "{path} acknowledged, missing in {m}"
            );
        }
    }
    // The new primary carries the ACLs the old one had before the freeze.
    let b_acls = acls(&cluster.clients["b"]).await;
    for (path, acl) in &original_acls {
        assert_eq!(b_acls.get(path), Some(acl), "{path}");
    }
    // The old primary is a mirror and writable again (by zkbridge's rule,
    // target-default: the ensemble's open ACL).
    assert_eq!(
        acl_of(a, "/cfg/n/0").await,
        acl_of(&cluster.clients["b"], "/cfg/n/0").await
    );
    // c was in step: it resumed from a translated checkpoint (its first
    // resume: it was copied in full at the start), reading and writing in
    // proportion to what changed since — the writers' nodes — not the 300
    // seeded ones.
    let c_metric = |name: &str| bridge.metric(name, &[("route", "cfg"), ("target", "c")]);
    assert_eq!(
        bridge.metric(
            "zkbridge_resyncs_total",
            &[("target", "c"), ("reason", "checkpoint_mismatch")]
        ),
        0.0
    );
    assert!(c_metric("zkbridge_resume_nodes_scanned_total") > 0.0, "c resumed");
    // What changed since the flip (b takes writes from then on; counted with
    // plain reads: writer nodes created in b after the role znode's flip);
    // reads also list the writers' directory, whose children changed. The
    // 300 seeded nodes are neither read nor written.
    let b = &cluster.clients["b"];
    let flip = b.check_stat("/zkbridge/routes/cfg/role").await.unwrap().unwrap().mzxid;
    let mut after_flip = 0;
    for child in b.list_children("/cfg/w").await.unwrap() {
        let stat = b.check_stat(&format!("/cfg/w/{child}")).await.unwrap().unwrap();
        after_flip += (stat.czxid > flip) as usize;
    }
    let reads = c_metric("zkbridge_resume_target_reads_total");
    let writes = c_metric("zkbridge_resume_target_writes_total");
    assert!(
        reads <= written.len() as f64 + 50.0,
        "{reads} reads for {} writer nodes",
        written.len()
    );
    assert!(
        writes <= after_flip as f64 + 20.0,
        "{writes} writes for {after_flip} nodes created in b after the flip"
    );
    eventually("the flip is counted and its window observed", CONVERGE, async || {
        bridge.metric("zkbridge_failovers_total", &[("route", "cfg"), ("kind", "switchover")]) == 1.0
            && bridge.metric("zkbridge_switchover_write_freeze_seconds_count", &[("route", "cfg")]) == 1.0
    })
    .await;
    assert_eq!(bridge.metric("zkbridge_route_epoch", &[("route", "cfg")]), 1.0);
    assert_eq!(
        bridge.metric("zkbridge_route_primary", &[("route", "cfg"), ("ensemble", "b")]),
        1.0
    );

    // The queue keeps increasing in the new primary.
    let next = b.create("/cfg/q/lock-", b"", &seq).await.unwrap().1.into_i64();
    assert!(next > last_sequence, "sequence {next} after {last_sequence}");
    eventually("the follower saw the flip", CONVERGE, async || {
        seen.lock().unwrap().contains(&Some((1, "b".to_string())))
    })
    .await;
    follower.abort();

    // Fail-back: a switchover back once a has caught up.
    let (code, out) = bridge.cli(&["switchover", "--route", "cfg", "--to", "a", "--yes"]);
    assert_eq!(code, 0, "{out}");
    cluster.await_roles(2, "a").await;
    create(a, "/cfg/after-fail-back", b"1").await;
    await_members_mirror(&cluster.clients, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_switchover_leaves_the_primary_exactly_as_it_was() {
    let mut cluster = cluster().await;
    let a = cluster.clients["a"].clone();
    seed(&a, 50).await;
    // One node with an ACL of its own, to be restored exactly.
    let digest = zookeeper_client::Acl::new(
        zookeeper_client::Permission::ALL,
        zookeeper_client::AuthId::new("digest", "app:abcdefghijklmnopqrstuvwxyz0="),
    );
    let read_admin = zookeeper_client::Permission::READ | zookeeper_client::Permission::ADMIN;
    let mixed = [
        digest.clone(),
        zookeeper_client::Acl::new(read_admin, zookeeper_client::AuthId::new("world", "anyone")),
    ];
    a.create(
        "/cfg/own-acl",
        b"x",
        &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::new(&mixed)),
    )
    .await
    .unwrap();
    let bridge = Bridge::start(&cluster.config("conflict = \"target-wins\""));
    await_members_mirror_data(&cluster.clients, "a").await;
    cluster.await_roles(0, "a").await;
    let before = acls(&a).await;
    let frozen = "/zkbridge/routes/cfg/frozen";

    // Drain timeout: nothing can apply within a millisecond.
    let (code, out) = bridge.cli(&["switchover", "--route", "cfg", "--to", "b", "--timeout", "1ms", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("aborted: drain"), "{out}");
    assert_eq!(acls(&a).await, before, "ACLs restored exactly");
    assert!(a.check_stat(frozen).await.unwrap().is_none(), "no longer frozen");
    assert_eq!(role(&a).await, Some((0, "a".into())));
    create(&a, "/cfg/writable-again", b"1").await;

    // Verify mismatch: b keeps a local change (target-wins).
    await_members_mirror_data(&cluster.clients, "a").await;
    cluster.clients["b"].set_data("/cfg/n/7", b"local", None).await.unwrap();
    eventually("b's local change is kept", CONVERGE, async || {
        bridge.metric("zkbridge_conflicts_total", &[("target", "b"), ("action", "kept")]) >= 1.0
    })
    .await;
    let before = acls(&a).await;
    let (code, out) = bridge.cli(&["switchover", "--route", "cfg", "--to", "b", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("aborted: verify") && out.contains("/cfg/n/7"), "{out}");
    assert_eq!(acls(&a).await, before);
    assert!(a.check_stat(frozen).await.unwrap().is_none());
    assert_eq!(
        role(&cluster.clients["b"]).await,
        Some((0, "a".into())),
        "no member flipped"
    );

    // A node zkbridge may not administer: the freeze stops there and
    // everything it froze is put back.
    let locked = [
        digest,
        zookeeper_client::Acl::new(
            zookeeper_client::Permission::READ,
            zookeeper_client::AuthId::new("world", "anyone"),
        ),
    ];
    a.create(
        "/cfg/n/zz-locked",
        b"x",
        &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::new(&locked)),
    )
    .await
    .unwrap();
    let before = acls(&a).await;
    let (code, out) = bridge.cli(&["switchover", "--route", "cfg", "--to", "b", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("aborted: freeze: /cfg/n/zz-locked"), "{out}");
    assert_eq!(acls(&a).await, before);
    assert!(a.check_stat(frozen).await.unwrap().is_none());
    a.delete("/cfg/n/zz-locked", None).await.unwrap();
    let before = acls(&a).await;

    // A member down at the start: nothing is touched.
    cluster.zks[2].kill();
    let (code, out) = bridge.cli(&["switchover", "--route", "cfg", "--to", "b", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("member c is unreachable"), "{out}");
    assert_eq!(acls(&a).await, before);
    assert!(a.check_stat(frozen).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_over_archives_the_old_primarys_divergent_tail_before_overwriting_it() {
    let mut cluster = cluster().await;
    let a = cluster.clients["a"].clone();
    seed(&a, 20).await;
    let mut bridge = Bridge::start(&cluster.config(""));
    await_members_mirror(&cluster.clients, "a").await;
    cluster.await_roles(0, "a").await;
    // A checkpoint past the seed in b, then no more mirroring: what a
    // accepts now is its divergent tail.
    let seeded = a.check_stat("/cfg/n/19").await.unwrap().unwrap().mzxid;
    eventually("b's checkpoint covers the seed", CONVERGE, async || {
        bridge.metric("zkbridge_checkpoint_zxid", &[("target", "b")]) >= seeded as f64
    })
    .await;
    bridge.stop();
    a.set_data("/cfg/n/1", b"late", None).await.unwrap();
    create(&a, "/cfg/late", b"new").await;
    a.delete("/cfg/n/2", None).await.unwrap();
    cluster.zks[0].kill();

    let (code, out) = bridge.cli(&["failover", "--route", "cfg", "--to", "b", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("possible loss after zxid 0x"), "{out}");
    for m in ["b", "c"] {
        assert_eq!(role(&cluster.clients[m]).await, Some((1, "b".into())), "{m}");
    }
    // Writes go on in the new primary, and reach c.
    let b = cluster.clients["b"].clone();
    bridge.restart();
    create(&b, "/cfg/after", b"1").await;
    let compare = Compare {
        acls: true,
        skip_ephemerals: true,
    };
    await_mirror(&b, "/cfg", &cluster.clients["c"], "/cfg", compare, CONVERGE).await;

    // The old primary comes back with its tail: archived, then reconciled.
    cluster.zks[0].restart();
    let a = cluster.zks[0].client().await;
    eventually("a is demoted", CONVERGE, async || {
        role(&a).await == Some((1, "b".into()))
    })
    .await;
    await_mirror(&b, "/cfg", &a, "/cfg", compare, CONVERGE).await;
    let (code, out) = bridge.cli(&["divergent", "--route", "cfg", "--json"]);
    assert_eq!(code, 0, "{out}");
    let json = out.split("\n-- stderr --").next().unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    let got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/cfg/late".to_string(), "create".to_string()),
            ("/cfg/n/1".to_string(), "set".to_string()),
            ("/cfg/n/2".to_string(), "delete".to_string()),
        ],
        "{out}"
    );
    let late = records.iter().find(|r| r["op"] == "set").unwrap();
    assert_eq!(late["data_b64"], "bGF0ZQ==", "the old primary's data is kept");
    assert!(records.iter().all(|r| r["epoch"] == 0));
    assert_eq!(
        bridge.metric("zkbridge_divergent_nodes_total", &[("route", "cfg"), ("ensemble", "a")]),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_paused_across_a_flip_commits_nothing_after_it_resumes() {
    let cluster = cluster().await;
    let a = cluster.clients["a"].clone();
    seed(&a, 20).await;
    // Sessions outlive the pause: only the epoch fence can stop it.
    let toml = cluster
        .config("")
        .replace("session_timeout_ms = 4000", "session_timeout_ms = 30000");
    let bridge = Bridge::start(&toml);
    await_members_mirror(&cluster.clients, "a").await;
    cluster.await_roles(0, "a").await;
    let pid = bridge.pid().unwrap();

    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    // Written in the old primary while its bridge is paused, then the
    // route fails over to b.
    create(&a, "/cfg/after-pause", b"stale").await;
    let (code, out) = bridge.cli(&["failover", "--route", "cfg", "--to", "b", "--yes"]);
    assert_eq!(code, 0, "{out}");
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };

    // The resumed instance follows epoch 1: a is demoted (its write archived)
    // and every member mirrors b; the old epoch's capture of the stale write
    // never reached b or c.
    cluster.await_roles(1, "b").await;
    await_members_mirror(&cluster.clients, "b").await;
    for m in ["a", "b", "c"] {
        assert_eq!(get(&cluster.clients[m], "/cfg/after-pause").await, None, "{m}");
    }
    let (code, out) = bridge.cli(&["divergent", "--route", "cfg", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("/cfg/after-pause"),
        "the stale write is archived, not lost: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_standby_refuses_application_writes_until_it_is_promoted() {
    let cluster = cluster().await;
    let a = cluster.clients["a"].clone();
    seed(&a, 20).await;
    let bridge = Bridge::start(&cluster.config("standby_acl = [\"world:anyone:r\", \"auth::cdrwa\"]"));
    await_members_mirror_data(&cluster.clients, "a").await;
    cluster.await_roles(0, "a").await;
    let (b, c) = (&cluster.clients["b"], &cluster.clients["c"]);
    // An application in a standby region cannot write by mistake.
    for mirror in [b, c] {
        assert_eq!(
            mirror.set_data("/cfg/n/0", b"oops", None).await.unwrap_err(),
            Error::NoAuth
        );
    }
    a.set_data("/cfg/n/0", b"from-a", None).await.unwrap();

    let (code, out) = bridge.cli(&["switchover", "--route", "cfg", "--to", "b", "--yes"]);
    assert_eq!(code, 0, "{out}");
    cluster.await_roles(1, "b").await;
    // The promoted member has the primary's ACLs back; the old one is
    // protected now.
    b.set_data("/cfg/n/0", b"from-b", None).await.unwrap();
    assert_eq!(a.set_data("/cfg/n/1", b"oops", None).await.unwrap_err(), Error::NoAuth);
    eventually("a mirrors b", CONVERGE, async || {
        get(&a, "/cfg/n/0").await.as_deref() == Some(&b"from-b"[..])
    })
    .await;
    await_members_mirror_data(&cluster.clients, "b").await;
    // The configured source is a mirror now: the per-member commands take it.
    let (code, out) = bridge.cli(&["resume", "--route", "cfg", "--target", "a", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cfg/a is not stopped"), "{out}");
}
