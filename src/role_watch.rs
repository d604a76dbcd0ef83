//! For applications: which member of a route is its primary now, and a
//! watch that follows it across switchovers and fail-overs (design §6).
//!
//! The role znode (`<meta_path>/routes/<route>/role`) is readable by anyone.
//! Read it in any member: after a flip every reachable member carries the
//! new epoch, the new primary first. An application that writes may fence
//! its writes on [`Primary::version`] (a `multi` with a `check` of the role
//! znode at that version): a write meant for an old epoch then fails.

use serde::Deserialize;
use zookeeper_client::{Client, Error, EventType};

/// What a member's role znode says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub epoch: u64,
    /// The primary member's ensemble name (as in zkbridge's configuration).
    pub ensemble: String,
    /// The role znode's version, to fence writes on.
    pub version: i32,
}

#[derive(Deserialize)]
struct Record {
    epoch: u64,
    primary: String,
}

pub fn role_path(meta_path: &str, route: &str) -> String {
    crate::znodes::role_path(meta_path, route)
}

/// The route's primary as the member behind `client` says, `None` before
/// any bridge created the role znode.
pub async fn current(client: &Client, meta_path: &str, route: &str) -> Result<Option<Primary>, Error> {
    match client.get_data(&role_path(meta_path, route)).await {
        Ok((data, stat)) => Ok(parse(&data, stat.version)),
        Err(Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse(data: &[u8], version: i32) -> Option<Primary> {
    let r: Record = serde_json::from_slice(data).ok()?;
    Some(Primary {
        epoch: r.epoch,
        ensemble: r.primary,
        version,
    })
}

/// Calls `on_change` with the route's primary now, and again after every
/// change of the role znode, until `on_change` returns `false` or the
/// session ends (`Err(SessionExpired)`: open a new session and call again).
pub async fn follow(
    client: &Client,
    meta_path: &str,
    route: &str,
    mut on_change: impl FnMut(Option<Primary>) -> bool,
) -> Result<(), Error> {
    let path = role_path(meta_path, route);
    let mut last = None;
    loop {
        let (primary, watcher) = match client.get_and_watch_data(&path).await {
            Ok((data, stat, watcher)) => (parse(&data, stat.version), watcher),
            Err(Error::NoNode) => match client.check_and_watch_stat(&path).await? {
                (None, watcher) => (None, watcher),
                // Created between the two reads: read it again.
                (Some(_), _) => continue,
            },
            Err(e) => return Err(e),
        };
        if primary != last {
            if !on_change(primary.clone()) {
                return Ok(());
            }
            last = primary;
        }
        let event = watcher.changed().await;
        if event.event_type == EventType::Session && event.session_state.is_terminated() {
            return Err(Error::SessionExpired);
        }
    }
}
