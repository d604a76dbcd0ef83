//! The vendored `zookeeper-client`'s patches (vendor/zookeeper-client/
//! PATCHES.md), against real ZooKeeper.

mod common;

use std::time::Duration;

use common::proxy::{Fault, FaultProxy};
use common::*;
use zookeeper_client::{AddWatchMode, Client, EventType, SessionState};

/// After a reconnect within the session, the client re-sends its
/// persistent recursive watch (`SetWatches2`), so a change made after the
/// reconnect is delivered. Upstream 0.11.2 kept the request's index at 0
/// (`index.max(index)`) and sent `SetWatches`, which has no room for
/// persistent watches: the watch was silently gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_watch_is_resent_after_a_reconnect() {
    let zk = Zk::standalone();
    let writer = zk.client().await;
    mkdirs(&writer, "/w").await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", zk.servers[0].port)).await;
    let client = Client::connector()
        .with_session_timeout(Duration::from_secs(20))
        .connect(&proxy.addr)
        .await
        .unwrap();
    let mut watcher = client.watch("/w", AddWatchMode::PersistentRecursive).await.unwrap();
    create(&writer, "/w/before", b"").await;
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.changed())
        .await
        .unwrap();
    assert_eq!(
        (event.event_type, event.path.as_str()),
        (EventType::NodeCreated, "/w/before")
    );

    // Every connection is reset; the client reconnects on the same session.
    proxy.set(Fault::Reset);
    await_session_state(&mut watcher, SessionState::Disconnected).await;
    proxy.set(Fault::Pass);
    await_session_state(&mut watcher, SessionState::SyncConnected).await;
    // A round trip on the new connection: the re-sent watch is in place
    // once the server answered what the client sent before it.
    client.get_data("/w").await.unwrap();

    create(&writer, "/w/after", b"").await;
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.changed())
        .await
        .expect("the change after the reconnect is delivered: the watch was re-sent");
    assert_eq!(
        (event.event_type, event.path.as_str()),
        (EventType::NodeCreated, "/w/after")
    );
}

/// Waits (15 s at most) until the watcher reports `wanted`, naming the
/// states seen on failure.
async fn await_session_state(watcher: &mut zookeeper_client::PersistentWatcher, wanted: SessionState) {
    let mut states = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let event = watcher.changed().await;
            states.push(event.session_state);
            if event.session_state == wanted {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {wanted:?} event: {states:?}"));
}
