//! Mixed server versions: a 3.8 source mirrored into a 3.9 target and the
//! reverse, in one bridge (the suite's own version is ZK_SERVER_VERSION;
//! this test always runs both).

mod common;

use std::time::Duration;

use common::*;

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_38_source_mirrors_into_a_39_target_and_back() {
    let old_src = Zk::standalone_version(ZkVersion::V38);
    let new_dst = Zk::standalone_version(ZkVersion::V39);
    let new_src = Zk::standalone_version(ZkVersion::V39);
    let old_dst = Zk::standalone_version(ZkVersion::V38);
    let mut clients = Vec::new();
    for zk in [&old_src, &new_src] {
        let s = zk.client().await;
        create_many(&s, &tree(300)).await;
        clients.push(s);
    }
    let bridge = Bridge::start(&format!(
        "heartbeat_interval_ms = 200\n{}\
         [[routes]]\nname = \"up\"\nsource = \"old_src:/t\"\ntargets = [\"new_dst:/t\"]\n\
         [[routes]]\nname = \"down\"\nsource = \"new_src:/t\"\ntargets = [\"old_dst:/t\"]\n",
        ensembles(&[
            ("old_src", &old_src),
            ("new_dst", &new_dst),
            ("new_src", &new_src),
            ("old_dst", &old_dst)
        ])
    ));
    let pairs = [
        (&clients[0], new_dst.client().await),
        (&clients[1], old_dst.client().await),
    ];
    for (s, t) in &pairs {
        await_mirror(s, "/t", t, "/t", Compare::default(), CONVERGE).await;
    }
    // Live changes: creates, sequential creates, updates, deletes.
    for (s, _) in &pairs {
        create(s, "/t/live", b"1").await;
        s.create(
            "/t/live/seq-",
            b"",
            &zookeeper_client::CreateMode::PersistentSequential.with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
        s.set_data("/t/1", b"changed", None).await.unwrap();
        delete_tree(s, "/t/2").await;
    }
    for (s, t) in &pairs {
        await_mirror(s, "/t", t, "/t", Compare::default(), CONVERGE).await;
        let (_, s_stat) = s.get_data("/t/live").await.unwrap();
        let (_, t_stat) = t.get_data("/t/live").await.unwrap();
        assert!(
            t_stat.cversion >= s_stat.cversion,
            "sequence counter carried across versions"
        );
    }
    assert!(bridge.http_get("/healthz").is_some());
}
