//! Active-active routes (design §7) against real ZooKeeper servers: a
//! writer in every member writes and deletes random keys of a shared key
//! set (so many collide), and an independent checker computes each key's
//! final value from the writers' own logs — each write's `Stat.mtime`,
//! member and zxid as the servers returned them — never from zkbridge's
//! records. "Identical" is judged with plain reads of every member.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultyEnsemble};
use common::*;
use zookeeper_client::{Acls, Client, CreateMode, Error};

const CONVERGE: Duration = Duration::from_secs(90);

/// One operation a writer made, as the server answered it.
#[derive(Debug, Clone)]
enum Logged {
    Write {
        key: u64,
        value: String,
        mtime: i64,
        member: String,
        zxid: i64,
    },
    /// A delete that removed a node, between `before` and `after` (the
    /// test's clock, which is the servers' clock: all run on this host).
    /// `slack_ms`: how long after `after` zkbridge may stamp it (it sees
    /// a delete only through the watch; ZooKeeper keeps no time for one).
    Delete {
        key: u64,
        before: i64,
        after: i64,
        slack_ms: i64,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Plan {
    keys: u64,
    /// Percent of operations that delete.
    delete_percent: u64,
    pause: Duration,
}

const PLAN: Plan = Plan {
    keys: 40,
    delete_percent: 12,
    pause: Duration::from_millis(40),
};

/// Writes and deletes random keys under `root` until `until`. Every
/// outcome is known: an error other than a lost race fails the test.
async fn write_randomly(
    member: String,
    client: Client,
    root: String,
    until: Instant,
    seed: u64,
    slack_ms: impl Fn(i64) -> i64,
) -> Vec<Logged> {
    let mut rng = Rng::new(seed);
    let mut log = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        let key = rng.below(PLAN.keys);
        let path = format!("{root}/k{key:02}");
        if rng.below(100) < PLAN.delete_percent {
            let before = now_ms();
            match client.delete(&path, None).await {
                Ok(()) => {
                    let after = now_ms();
                    log.push(Logged::Delete {
                        key,
                        before,
                        after,
                        slack_ms: slack_ms(after),
                    })
                }
                Err(Error::NoNode) => {}
                Err(e) => panic!("{member}: delete {path}: {e}"),
            }
        } else {
            n += 1;
            let value = format!("{member}-{n}");
            let stat = match client.set_data(&path, value.as_bytes(), None).await {
                Ok(stat) => Some(stat),
                Err(Error::NoNode) => {
                    match client
                        .create(
                            &path,
                            value.as_bytes(),
                            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
                        )
                        .await
                    {
                        Ok((stat, _)) => Some(stat),
                        Err(Error::NodeExists) => None,
                        Err(e) => panic!("{member}: create {path}: {e}"),
                    }
                }
                Err(e) => panic!("{member}: set {path}: {e}"),
            };
            if let Some(stat) = stat {
                assert!(stat.mtime > 0, "the server returned no mtime for {path}");
                log.push(Logged::Write {
                    key,
                    value,
                    mtime: stat.mtime,
                    member: member.clone(),
                    zxid: stat.mzxid,
                });
            }
        }
        tokio::time::sleep(PLAN.pause).await;
    }
    log
}

/// A writer in every member until `until`, each with its own seed;
/// `slack_ms(member, after)` is how late a delete made there may be
/// stamped. Resolves to every writer's log.
fn write_everywhere(
    members: &[(&str, Client, String)],
    until: Instant,
    seed: u64,
    slack_ms: impl Fn(&str, i64) -> i64 + Clone + Send + 'static,
) -> impl std::future::Future<Output = Vec<Vec<Logged>>> {
    let writers: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(i, (name, c, root))| {
            let (member, slack_ms) = (name.to_string(), slack_ms.clone());
            tokio::spawn(write_randomly(
                member.clone(),
                c.clone(),
                root.clone(),
                until,
                seed + i as u64,
                move |after| slack_ms(&member, after),
            ))
        })
        .collect();
    async move {
        let mut logs = Vec::new();
        for w in writers {
            logs.push(w.await.unwrap());
        }
        logs
    }
}

/// What the checker expects of one key in every member.
#[derive(Debug, PartialEq)]
enum Expect {
    Value(String),
    Absent,
    /// A delete too close to the greatest write to order them from the
    /// logs: either, as long as every member agrees.
    Either(String),
}

/// The expected final state of every key: the write with the greatest
/// (mtime, member, zxid) — last-writer-wins, ordered as design §7 says —
/// unless a delete came after it. A delete's stamp is the time zkbridge
/// saw it, at least `before` and at most `after + slack_ms`.
fn expectations(logs: &[Vec<Logged>]) -> BTreeMap<u64, Expect> {
    let mut out = BTreeMap::new();
    for key in 0..PLAN.keys {
        let ops: Vec<&Logged> = logs
            .iter()
            .flatten()
            .filter(|l| matches!(l, Logged::Write { key: k, .. } | Logged::Delete { key: k, .. } if *k == key))
            .collect();
        let greatest = ops
            .iter()
            .filter_map(|l| match l {
                Logged::Write {
                    value,
                    mtime,
                    member,
                    zxid,
                    ..
                } => Some((*mtime, member.clone(), *zxid, value.clone())),
                _ => None,
            })
            .max();
        // (earliest, latest) time each delete's stamp may carry.
        let deletes: Vec<(i64, i64)> = ops
            .iter()
            .filter_map(|l| match l {
                Logged::Delete {
                    before,
                    after,
                    slack_ms,
                    ..
                } => Some((*before, after + slack_ms)),
                _ => None,
            })
            .collect();
        let expect = match greatest {
            None => Expect::Absent,
            Some((mtime, _, _, value)) => {
                // Surely after the write, and by more than a stamp may be
                // late (a delete stamped too late loses to a copy carried
                // back first: the documented limit of a delete's time).
                let late = |(before, latest): &(i64, i64)| before - mtime > latest - before;
                if deletes.iter().any(late) {
                    Expect::Absent
                } else if deletes.iter().all(|(_, latest)| *latest < mtime) {
                    Expect::Value(value)
                } else {
                    Expect::Either(value)
                }
            }
        };
        out.insert(key, expect);
    }
    out
}

/// Waits until every member holds the same nodes with the same data under
/// its root (plain reads), and returns that content.
async fn await_identical(members: &[(&str, Client, String)]) -> BTreeMap<String, Vec<u8>> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut contents = Vec::new();
        for (_, client, root) in members {
            let tree = plain_subtree(client, root).await;
            contents.push(
                tree.into_iter()
                    .map(|(rel, n)| (rel, n.data))
                    .collect::<BTreeMap<_, _>>(),
            );
        }
        let first = &contents[0];
        let differ: Vec<String> = contents
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, c)| *c != first)
            .map(|(i, c)| {
                let keys: std::collections::BTreeSet<&String> = first.keys().chain(c.keys()).collect();
                let diff: Vec<String> = keys
                    .into_iter()
                    .filter(|k| first.get(*k) != c.get(*k))
                    .take(5)
                    .map(|k| {
                        let show = |v: Option<&Vec<u8>>| v.map(|d| String::from_utf8_lossy(d).to_string());
                        format!("{k}: {:?} vs {:?}", show(first.get(k)), show(c.get(k)))
                    })
                    .collect();
                format!("{} vs {}: {}", members[0].0, members[i].0, diff.join(", "))
            })
            .collect();
        if differ.is_empty() {
            return contents.swap_remove(0);
        }
        if Instant::now() >= deadline {
            // What zkbridge's records say, to tell why (the verdict is the
            // plain reads' above).
            let mut why = Vec::new();
            let keys: std::collections::BTreeSet<&String> = contents.iter().flat_map(|c| c.keys()).collect();
            for key in keys
                .into_iter()
                .filter(|k| contents.iter().any(|c| c.get(*k) != first.get(*k)))
            {
                for (name, client, root) in members {
                    let node = client.get_data(&format!("{root}/{key}")).await.ok();
                    let record = client
                        .get_data(&format!("/zkbridge/active/registry/records/{key}"))
                        .await
                        .ok();
                    why.push(format!(
                        "{name} {key}: node {:?}, record {:?}",
                        node.map(|(d, s)| (String::from_utf8_lossy(&d).to_string(), s.mzxid, s.mtime)),
                        record.map(|(d, s)| (String::from_utf8_lossy(&d).to_string(), s.mzxid, s.mtime))
                    ));
                }
            }
            panic!(
                "members not identical after {CONVERGE:?}: {}\n{}",
                differ.join("; "),
                why.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks the converged content against the checker's expectations and
/// returns how many keys it could decide exactly.
fn check(content: &BTreeMap<String, Vec<u8>>, logs: &[Vec<Logged>]) -> usize {
    let mut exact = 0;
    for (key, expect) in expectations(logs) {
        let got = content
            .get(&format!("k{key:02}"))
            .map(|d| String::from_utf8(d.clone()).unwrap());
        match &expect {
            Expect::Value(v) => {
                exact += 1;
                assert_eq!(got.as_ref(), Some(v), "k{key:02}: not the last writer's value");
            }
            Expect::Absent => {
                exact += 1;
                assert_eq!(
                    got, None,
                    "k{key:02}: deleted after its last write, yet present (resurrected)"
                );
            }
            Expect::Either(v) => assert!(
                got.is_none() || got.as_ref() == Some(v),
                "k{key:02}: {got:?} is neither absent nor the last write {v:?}"
            ),
        }
    }
    exact
}

fn active_route(name: &str, members: &[&str], extra: &str) -> String {
    let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\nmode = \"active-active\"\nmembers = [{}]\n{extra}\n",
        members.join(", ")
    )
}

fn app_writes(logs: &[Vec<Logged>]) -> usize {
    logs.iter().map(Vec::len).sum()
}

/// Writers in every member for `seconds`, then: every member identical,
/// every key as the checker computes, and the bridge's data writes within
/// (members − 1) × the applications' writes.
async fn writers_converge(n: usize, seconds: u64, seed_default: u64) {
    let names = ["ap-south", "eu-west", "us-east"];
    let servers: Vec<Zk> = (0..n).map(|_| Zk::standalone()).collect();
    let named: Vec<(&str, &Zk)> = names.iter().copied().zip(servers.iter()).collect();
    let roots = ["/services", "/registry", "/mirror/services"];
    let member_list: Vec<String> = (0..n).map(|i| format!("{}:{}", names[i], roots[i])).collect();
    let member_refs: Vec<&str> = member_list.iter().map(String::as_str).collect();
    let bridge = Bridge::start(&format!(
        "{}{}",
        ensembles(&named),
        active_route("registry", &member_refs, "")
    ));
    let mut members = Vec::new();
    for i in 0..n {
        let c = servers[i].client().await;
        mkdirs(&c, roots[i]).await;
        members.push((names[i], c, roots[i].to_string()));
    }
    // Ready: every pair led and through its first pass.
    eventually("every pair ready", CONVERGE, async || {
        bridge.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
    let seed = seed("active-active writers", Some(seed_default));
    let until = Instant::now() + Duration::from_secs(seconds);
    let logs = write_everywhere(&members, until, seed, |_, _| 3_000).await;
    let content = await_identical(&members).await;
    let exact = check(&content, &logs);
    let writes = app_writes(&logs);
    eprintln!(
        "{n} members: {writes} application writes, {exact} of {} keys checked exactly",
        PLAN.keys
    );
    assert!(
        exact >= (PLAN.keys as usize) / 2,
        "too few keys decided exactly ({exact})"
    );
    let carried = bridge.metric("zkbridge_applied_ops_total", &[("route", "registry")]);
    let bound = ((n - 1) * writes + 10) as f64;
    eprintln!("bridge data ops {carried} for {writes} application writes (bound {bound})");
    assert!(
        carried <= bound,
        "ping-pong: {carried} bridge ops for {writes} writes among {n} members"
    );
    assert!(
        bridge.metric(
            "zkbridge_conflicts_total",
            &[("route", "registry"), ("action", "lww_lost")]
        ) > 0.0,
        "writers racing on {} keys for {seconds}s produced no counted conflict",
        PLAN.keys
    );
    // The conflict log lists them.
    let (code, out) = bridge.cli(&["conflicts", "--route", "registry", "--json"]);
    assert_eq!(code, 0, "{out}");
    let stdout = out.split("\n-- stderr --\n").next().unwrap();
    let listed: serde_json::Value = serde_json::from_str(stdout).unwrap();
    assert!(listed.as_array().is_some_and(|a| !a.is_empty()), "{out}");
    // `status` has a row per member pair: led, checkpointed, lag small.
    eventually("every pair checkpointed in status", CONVERGE, async || {
        let (code, out) = bridge.cli(&["status", "--json"]);
        let stdout = out.split("\n-- stderr --\n").next().unwrap().to_string();
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&stdout) else {
            return false;
        };
        let rows: Vec<&serde_json::Value> = status["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["route"] == "registry")
            .collect();
        code == 0
            && rows.len() == n * (n - 1)
            && rows.iter().all(|r| {
                r["target"].as_str().is_some_and(|t| t.contains("->"))
                    && r["leader"] == "test-bridge"
                    && r["lag_seconds"].as_f64().is_some_and(|l| l < 10.0)
            })
    })
    .await;
    assert!(bridge.metric("zkbridge_lag_seconds", &[("route", "registry")]) >= 0.0);
    // `diff` compares every member with every other: identical.
    let (code, out) = bridge.cli(&["diff", "--route", "registry"]);
    assert_eq!(code, 0, "diff after convergence: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_with_racing_writers_converge_on_the_last_writer() {
    writers_converge(2, 30, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_with_racing_writers_converge_on_the_last_writer() {
    writers_converge(3, 40, 30).await;
}

/// One member cut off from the bridge for longer than the session timeout
/// while every member keeps taking writes; a second bridge instance killed
/// and restarted mid-way. After the heal: identical, as the checker says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_member_and_a_killed_instance_still_converge() {
    let names = ["ap-south", "eu-west", "us-east"];
    let servers: Vec<Zk> = (0..3).map(|_| Zk::standalone()).collect();
    // The bridges reach us-east through a proxy that can cut them off; its
    // writer reaches it directly and keeps writing.
    let cut = FaultyEnsemble::start(&servers[2]).await;
    let ens = format!(
        "{}[ensembles.us-east]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n",
        ensembles(&[(names[0], &servers[0]), (names[1], &servers[1])]),
        cut.connect_string()
    );
    let toml = format!(
        "{ens}{}",
        active_route("registry", &["ap-south:/r", "eu-west:/r", "us-east:/r"], "")
    );
    let first = Bridge::start_as("bridge-a", &toml);
    let mut second = Bridge::start_as("bridge-b", &toml);
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let c = servers[i].client().await;
        mkdirs(&c, "/r").await;
        members.push((*name, c, "/r".to_string()));
    }
    eventually("every pair led and ready", CONVERGE, async || {
        first.http_get("/readyz").is_some_and(|(code, _)| code == 200)
            && second.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
    let seed = seed("active-active partition", Some(40));
    let start = Instant::now();
    let until = start + Duration::from_secs(40);
    // us-east is cut off from 8 s to 20 s: its deletes then are found and
    // stamped only after the heal.
    let heal_at_ms = now_ms() + 20_000;
    let writers = write_everywhere(&members, until, seed, move |member, after| {
        match member == "us-east" && after < heal_at_ms + 1_000 {
            true => (heal_at_ms - after).max(0) + 10_000,
            false => 10_000,
        }
    });
    tokio::time::sleep_until((start + Duration::from_secs(8)).into()).await;
    cut.set(Fault::Blackhole);
    tokio::time::sleep_until((start + Duration::from_secs(12)).into()).await;
    second.kill();
    tokio::time::sleep_until((start + Duration::from_secs(20)).into()).await;
    cut.set(Fault::Pass);
    second.restart();
    let logs = writers.await;
    let healed = Instant::now();
    let content = await_identical(&members).await;
    eprintln!("converged {:?} after the writers stopped", healed.elapsed());
    let exact = check(&content, &logs);
    eprintln!(
        "{} application writes, {exact} of {} keys checked exactly",
        app_writes(&logs),
        PLAN.keys
    );
    assert!(exact > 0, "no key decided exactly");
}

/// A delete in one member racing an older write in another: the delete
/// wins everywhere, and the older copy never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_beats_an_older_write_from_a_lagging_member() {
    let east = Zk::standalone();
    let west = Zk::standalone();
    // The bridge reaches west through a proxy: west lags while cut off.
    let cut = FaultyEnsemble::start(&west).await;
    let toml = format!(
        "{}[ensembles.eu-west]\nconnect = \"{}\"\nsession_timeout_ms = 4000\n{}",
        ensembles(&[("us-east", &east)]),
        cut.connect_string(),
        active_route("cfg", &["us-east:/cfg", "eu-west:/cfg"], "verify_interval_s = 2")
    );
    let bridge = Bridge::start(&toml);
    let (e, w) = (east.client().await, west.client().await);
    create(&e, "/cfg", b"").await;
    create(&w, "/cfg", b"").await;
    create(&e, "/cfg/flag", b"v1").await;
    let converged = |want: Option<&'static [u8]>| {
        let (e, w) = (e.clone(), w.clone());
        async move {
            eventually("both members agree on /cfg/flag", CONVERGE, async || {
                get(&e, "/cfg/flag").await.as_deref() == want && get(&w, "/cfg/flag").await.as_deref() == want
            })
            .await
        }
    };
    converged(Some(b"v1")).await;
    // West is cut off and writes an older change... then east deletes.
    cut.set(Fault::Blackhole);
    w.set_data("/cfg/flag", b"west-older", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    e.delete("/cfg/flag", None).await.unwrap();
    // The delete is stamped in east while west is away.
    eventually("east stamps its delete", CONVERGE, async || {
        get(&e, "/zkbridge/active/cfg/records/flag")
            .await
            .is_some_and(|d| String::from_utf8_lossy(&d).contains("\"deleted\":true"))
    })
    .await;
    cut.set(Fault::Pass);
    converged(None).await;
    // It stays gone: two full passes of each pair later, still gone.
    let verify = [("route", "cfg"), ("reason", "verify")];
    let passes = bridge.metric("zkbridge_resyncs_total", &verify);
    eventually("later passes", CONVERGE, async || {
        bridge.metric("zkbridge_resyncs_total", &verify) >= passes + 4.0
    })
    .await;
    assert_eq!(get(&e, "/cfg/flag").await, None, "resurrected in east");
    assert_eq!(get(&w, "/cfg/flag").await, None, "resurrected in west");
    // A later create wins over the earlier delete.
    create(&w, "/cfg/flag", b"west-later").await;
    converged(Some(b"west-later")).await;
}

/// Tombstones go after `tombstone_ttl_s` (a later pass collects them), the
/// deleted node stays gone, and `diff` reports members that differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_collected_after_their_ttl_and_diff_sees_drift() {
    let east = Zk::standalone();
    let west = Zk::standalone();
    let toml = format!(
        "{}{}",
        ensembles(&[("us-east", &east), ("eu-west", &west)]),
        active_route(
            "cfg",
            &["us-east:/cfg", "eu-west:/app/cfg"],
            "tombstone_ttl_s = 1\nverify_interval_s = 2"
        )
    );
    let mut bridge = Bridge::start(&toml);
    let (e, w) = (east.client().await, west.client().await);
    create(&e, "/cfg", b"").await;
    create(&e, "/cfg/a", b"1").await;
    create(&e, "/cfg/a/b", b"2").await;
    eventually("carried to west, root created there", CONVERGE, async || {
        get(&w, "/app/cfg/a/b").await.as_deref() == Some(b"2".as_slice())
    })
    .await;
    e.delete("/cfg/a/b", None).await.unwrap();
    e.delete("/cfg/a", None).await.unwrap();
    eventually("the deletes carried", CONVERGE, async || {
        get(&w, "/app/cfg/a").await.is_none()
    })
    .await;
    let record = |c: Client| async move { c.check_stat("/zkbridge/active/cfg/records/a").await.unwrap().is_some() };
    eventually("tombstones collected in both members", CONVERGE, async || {
        !record(e.clone()).await && !record(w.clone()).await
    })
    .await;
    assert_eq!(get(&e, "/cfg/a").await, None);
    assert_eq!(get(&w, "/app/cfg/a").await, None);
    let (code, out) = bridge.cli(&["diff", "--route", "cfg"]);
    assert_eq!(code, 0, "{out}");
    // With the bridge stopped, a change in one member is drift.
    bridge.stop();
    create(&w, "/app/cfg/only-west", b"x").await;
    let (code, out) = bridge.cli(&["diff", "--route", "cfg", "--json"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"extra\"") && out.contains("/app/cfg/only-west"), "{out}");
    // And a restart carries it.
    bridge.restart();
    eventually("carried after the restart", CONVERGE, async || {
        get(&e, "/cfg/only-west").await.as_deref() == Some(b"x".as_slice())
    })
    .await;
}

/// A member rebuilt empty (its region lost, its ensemble reinstalled) gets
/// everything back — its own changes too — and its empty tree deletes
/// nothing elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rebuilt_empty_is_refilled_and_deletes_nothing() {
    let east = Zk::standalone();
    let mut west = Zk::standalone();
    let toml = format!(
        "{}{}",
        ensembles(&[("us-east", &east), ("eu-west", &west)]),
        active_route("cfg", &["us-east:/cfg", "eu-west:/cfg"], "verify_interval_s = 2")
    );
    let mut bridge = Bridge::start(&toml);
    let e = east.client().await;
    create(&e, "/cfg", b"").await;
    create(&e, "/cfg/from-east", b"e").await;
    {
        let w = west.client().await;
        mkdirs(&w, "/cfg").await;
        create(&w, "/cfg/from-west", b"w").await;
        create(&w, "/cfg/from-west/deeper", b"d").await;
    }
    eventually("both ways", CONVERGE, async || {
        get(&e, "/cfg/from-west/deeper").await.as_deref() == Some(b"d".as_slice())
    })
    .await;
    // Checkpoints in both members, so the rebuild is seen as one.
    eventually("every pair checkpointed", CONVERGE, async || {
        bridge.metric(
            "zkbridge_checkpoint_zxid",
            &[("route", "cfg"), ("target", "us-east->eu-west")],
        ) > 0.0
            && bridge.metric(
                "zkbridge_checkpoint_zxid",
                &[("route", "cfg"), ("target", "eu-west->us-east")],
            ) > 0.0
    })
    .await;
    bridge.stop();
    west.wipe_and_restart();
    bridge.restart();
    let w = west.client().await;
    eventually("west refilled, its own nodes included", CONVERGE, async || {
        get(&w, "/cfg/from-east").await.as_deref() == Some(b"e".as_slice())
            && get(&w, "/cfg/from-west/deeper").await.as_deref() == Some(b"d".as_slice())
    })
    .await;
    assert_eq!(
        get(&e, "/cfg/from-west").await.as_deref(),
        Some(b"w".as_slice()),
        "deleted in east"
    );
    let (code, out) = bridge.cli(&["diff", "--route", "cfg"]);
    assert_eq!(code, 0, "{out}");
}
