//! Mirroring what the source really holds, against real ZooKeeper:
//! ephemerals in each mode, container and TTL nodes, sequence counters
//! across a fail-over, and a node the bridge may not read.

mod common;

use std::time::Duration;

use common::*;
use zookeeper_client::{Acls, Client, CreateMode};

const CONVERGE: Duration = Duration::from_secs(60);

fn config(src: &Zk, dst: &Zk, extra: &str) -> String {
    format!(
        "heartbeat_interval_ms = 200\n{}[[routes]]\nname = \"e\"\nsource = \"src:/e\"\ntargets = [\"dst:/e\"]\n{extra}\n",
        ensembles(&[("src", src), ("dst", dst)])
    )
}

async fn ephemeral(c: &Client, path: &str, data: &[u8]) {
    c.create(path, data, &CreateMode::Ephemeral.with_acls(Acls::anyone_all()))
        .await
        .unwrap();
}

async fn owner(c: &Client, path: &str) -> Option<i64> {
    c.check_stat(path).await.unwrap().map(|s| s.ephemeral_owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemerals_are_skipped_by_default() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/e").await;
    ephemeral(&s, "/e/svc", b"10.0.0.1").await;
    create(&s, "/e/conf", b"1").await;
    let bridge = Bridge::start(&config(&src, &dst, ""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    assert!(get(&t, "/e/conf").await.is_some());
    assert_eq!(get(&t, "/e/svc").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemerals_copied_as_persistent_go_when_the_source_node_goes() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/e").await;
    let registrant = src.client().await;
    ephemeral(&registrant, "/e/svc", b"10.0.0.1").await;
    let bridge = Bridge::start(&config(&src, &dst, "ephemerals = \"persistent\""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    assert_eq!(owner(&t, "/e/svc").await, Some(0), "a persistent copy");
    drop(registrant);
    eventually("the copy goes with its source node", CONVERGE, async || {
        get(&t, "/e/svc").await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_mirrors_vanish_with_their_owner_or_the_bridge_and_come_back() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/e").await;
    let registrant = src.client().await;
    ephemeral(&registrant, "/e/svc", b"10.0.0.1").await;
    let toml = config(&src, &dst, "ephemerals = \"ephemeral\"");
    let mut bridge = Bridge::start(&toml);
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    let first_owner = owner(&t, "/e/svc").await.unwrap();
    assert!(first_owner != 0, "an ephemeral mirror, owned by the bridge's session");

    // The bridge dies: its session, and the mirror with it, go (at once on
    // a clean stop); the next leader creates it again.
    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));
    eventually("the mirror goes with the bridge", CONVERGE, async || {
        get(&t, "/e/svc").await.is_none()
    })
    .await;
    bridge.restart();
    eventually("the next leader re-creates it", CONVERGE, async || {
        owner(&t, "/e/svc").await.is_some_and(|o| o != 0 && o != first_owner)
    })
    .await;
    assert_eq!(bridge.metric("zkbridge_conflicts_total", &[]), 0.0, "not a conflict");

    // The owner in the source dies: the mirror goes too.
    drop(registrant);
    eventually("the mirror goes with its source owner", CONVERGE, async || {
        get(&t, "/e/svc").await.is_none()
    })
    .await;
}

/// ZooKeeper reports container and TTL nodes to clients as persistent
/// (`ephemeralOwner` 0), so no client can copy their type: they arrive as
/// persistent nodes with their data and children. This pins that down, so
/// that a server which starts reporting types shows up here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_and_ttl_nodes_arrive_as_persistent_nodes() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/e").await;
    s.create("/e/box", b"c", &CreateMode::Container.with_acls(Acls::anyone_all()))
        .await
        .unwrap();
    create(&s, "/e/box/item", b"i").await;
    let ttl = CreateMode::Persistent
        .with_acls(Acls::anyone_all())
        .with_ttl(Duration::from_secs(3600));
    s.create("/e/lease", b"t", &ttl).await.unwrap();
    assert_eq!(
        owner(&s, "/e/box").await,
        Some(0),
        "the server hides the container type"
    );
    assert_eq!(owner(&s, "/e/lease").await, Some(0), "the server hides the TTL type");
    let bridge = Bridge::start(&config(&src, &dst, ""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    assert_eq!(get(&t, "/e/box").await.as_deref(), Some(&b"c"[..]));
    assert_eq!(get(&t, "/e/box/item").await.as_deref(), Some(&b"i"[..]));
    assert_eq!(get(&t, "/e/lease").await.as_deref(), Some(&b"t"[..]));
}

fn sequence_of(name: &str) -> i64 {
    name[name.len() - 10..].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_counters_never_go_backwards_after_fail_over() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/e/queue").await;
    let seq = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
    // A queue that has seen traffic: 20 items in, 15 consumed.
    let mut made = Vec::new();
    for _ in 0..20 {
        let (_, n) = s.create("/e/queue/item-", b"job", &seq).await.unwrap();
        made.push(n);
    }
    for n in &made[..15] {
        s.delete(&format!("/e/queue/item-{n}"), None).await.unwrap();
    }
    let mut bridge = Bridge::start(&config(&src, &dst, ""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let (_, source_parent) = s.get_data("/e/queue").await.unwrap();
    let t = dst.client().await;
    eventually("the target counter caught up", CONVERGE, async || {
        t.get_data("/e/queue").await.unwrap().1.cversion >= source_parent.cversion
    })
    .await;
    let mirrored = t.list_children("/e/queue").await.unwrap();
    assert_eq!(mirrored.len(), 5, "names copied verbatim: {mirrored:?}");

    // Region fail-over: clients now write to the target.
    assert_eq!(bridge.stop().and_then(|st| st.code()), Some(0));
    let (_, n) = t.create("/e/queue/item-", b"job", &seq).await.unwrap();
    let name = format!("item-{n}");
    assert!(!mirrored.contains(&name), "{name} already existed");
    let highest = mirrored.iter().map(|m| sequence_of(m)).max().unwrap();
    let source_next = {
        let (_, n) = s.create("/e/queue/item-", b"job", &seq).await.unwrap();
        sequence_of(&format!("item-{n}"))
    };
    assert!(
        sequence_of(&name) > highest,
        "{name} went backwards (highest mirrored {highest})"
    );
    assert!(
        sequence_of(&name) >= source_next - 1,
        "{name} is behind the source's counter ({source_next} next there)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_bridge_may_not_read_is_reported_and_the_rest_goes_on() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let s = src.client().await;
    mkdirs(&s, "/e/open").await;
    let owner_client = Client::connector()
        .with_auth("digest", b"owner:secret")
        .connect(&src.connect_string())
        .await
        .unwrap();
    owner_client
        .create(
            "/e/secret",
            b"s",
            &CreateMode::Persistent.with_acls(Acls::creator_all()),
        )
        .await
        .unwrap();
    owner_client
        .create(
            "/e/secret/child",
            b"c",
            &CreateMode::Persistent.with_acls(Acls::creator_all()),
        )
        .await
        .unwrap();
    create(&s, "/e/after", b"a").await;
    let bridge = Bridge::start(&config(&src, &dst, ""));
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = dst.client().await;
    assert!(get(&t, "/e/open").await.is_some());
    assert!(get(&t, "/e/after").await.is_some());
    assert_eq!(get(&t, "/e/secret").await, None, "not readable, not copied");
    eventually("reported once", CONVERGE, async || {
        bridge.metric("zkbridge_errors_total", &[("kind", "no_auth")]) == 1.0
    })
    .await;
    create(&s, "/e/later", b"l").await;
    await_in_sync(&bridge.config(), CONVERGE).await;
    assert_eq!(bridge.metric("zkbridge_errors_total", &[("kind", "no_auth")]), 1.0);
}

/// `acls = "copy"`: digest-protected source nodes arrive with their ACL, so
/// the target protects them as the source does; a changed ACL follows, with
/// the data at once and on its own through the anti-entropy pass (a source
/// ACL change fires no watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_copy_carries_digest_protected_nodes_and_follows_changes() {
    let src = Zk::standalone();
    let dst = Zk::standalone();
    let alice = |zk: &Zk| {
        let connect = zk.connect_string();
        async move {
            Client::connector()
                .with_auth("digest", b"alice:wonderland")
                .connect(&connect)
                .await
                .unwrap()
        }
    };
    let s = alice(&src).await;
    mkdirs(&s, "/e").await;
    s.create(
        "/e/guarded",
        b"g",
        &CreateMode::Persistent.with_acls(Acls::creator_all()),
    )
    .await
    .unwrap();
    s.create("/e/shared", b"1", &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await
        .unwrap();
    let toml = format!(
        "heartbeat_interval_ms = 200\n\
         [ensembles.src]\nconnect = \"{}\"\nsession_timeout_ms = 4000\ndigest = \"alice:wonderland\"\n\
         [ensembles.dst]\nconnect = \"{}\"\nsession_timeout_ms = 4000\ndigest = \"alice:wonderland\"\n\
         [[routes]]\nname = \"e\"\nsource = \"src:/e\"\ntargets = [\"dst:/e\"]\nacls = \"copy\"\nverify_interval_s = 2\n",
        src.connect_string(),
        dst.connect_string()
    );
    let bridge = Bridge::start(&toml);
    await_in_sync(&bridge.config(), CONVERGE).await;
    let t = alice(&dst).await;
    let acl = |c: &Client, path: &'static str| {
        let c = c.clone();
        async move { c.get_acl(path).await.map(|(acl, _)| acl).ok() }
    };
    assert_eq!(acl(&t, "/e/guarded").await, acl(&s, "/e/guarded").await);
    assert_eq!(acl(&s, "/e/guarded").await.unwrap()[0].scheme(), "digest");
    let anonymous = dst.client().await;
    assert_eq!(
        anonymous.get_data("/e/guarded").await.unwrap_err(),
        zookeeper_client::Error::NoAuth,
        "the mirror is as closed as its source"
    );

    // ACL and data change together: the data's event carries both.
    s.set_acl("/e/shared", &Acls::creator_all(), None).await.unwrap();
    s.set_data("/e/shared", b"2", None).await.unwrap();
    eventually("the new ACL follows the data", CONVERGE, async || {
        acl(&t, "/e/shared").await == acl(&s, "/e/shared").await
    })
    .await;

    // An ACL change alone: found by the next anti-entropy pass.
    let mut opened = acl(&s, "/e/guarded").await.unwrap();
    opened.push(zookeeper_client::Acl::new(
        zookeeper_client::Permission::READ,
        zookeeper_client::AuthId::anyone(),
    ));
    s.set_acl("/e/guarded", &opened, None).await.unwrap();
    eventually("an ACL-only change arrives", CONVERGE, async || {
        acl(&t, "/e/guarded").await == Some(opened.clone())
    })
    .await;
    assert_eq!(anonymous.get_data("/e/guarded").await.unwrap().0, b"g");
    assert!(bridge.metric("zkbridge_applied_ops_total", &[("op", "acl")]) >= 2.0);
}
