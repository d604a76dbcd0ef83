//! Local changes in a target, and what the route's `conflict` policy does
//! with them.
//!
//! The leader watches its target path (persistent recursive watch on the
//! lease's session). Its own writes come back as events too; each op it
//! sends registers one expected *echo* for its path before the request
//! leaves, so the echo is recognised whatever the order of reply and event.
//! Any other event is a possible local change: the path is reconciled with
//! the mark "seen changed in the target only". If source and target then
//! differ and the source has no pending change for the path, the target was
//! changed locally, and the policy decides:
//!
//! - `source-wins`: the target is put back (`action="overwritten"`);
//! - `target-wins`: the target keeps its version, recorded under
//!   `<meta>/routes/<r>/<t>/kept/` with the source's mzxid at that moment, and
//!   is not overwritten until the source changes the node again
//!   (`action="kept"`);
//! - `fail`: the route/target stops applying; the path is recorded in
//!   `<meta>/routes/<r>/<t>/stopped` until an operator runs `zkbridge resume`
//!   (`action="stopped"`).
//!
//! Changes made while no bridge ran are found by the anti-entropy pass, which
//! tells them from drift by the target zxid of the last checkpoint commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use zookeeper_client::{Acl, Client, Error};

use crate::checkpoint::{get_json, put_json};
use crate::znodes::StopRecord;

/// A relative path as one znode name: `%` and `/` escaped, `_` prefixed so
/// that the root (`""`) has a name too.
pub fn encode_rel(rel: &str) -> String {
    format!("_{}", rel.replace('%', "%25").replace('/', "%2F"))
}

pub fn decode_rel(name: &str) -> Option<String> {
    let body = name.strip_prefix('_')?;
    Some(body.replace("%2F", "/").replace("%25", "%"))
}

/// The kept-path rule: a target version kept when the source node had mzxid
/// `kept_at` stays kept until the source changes the node again.
pub fn still_kept(kept_at: i64, source_mzxid: i64) -> bool {
    source_mzxid <= kept_at
}

/// Paths kept by `target-wins`, with the source mzxid when kept (`-1`: the
/// source had no such node).
pub async fn load_kept(client: &Client, dir: &str) -> Result<BTreeMap<String, i64>, Error> {
    let children = match client.list_children(dir).await {
        Ok(c) => c,
        Err(Error::NoNode) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut kept = BTreeMap::new();
    for name in children {
        let Some(rel) = decode_rel(&name) else { continue };
        if let Some(zxid) = get_json::<i64>(client, &format!("{dir}/{name}")).await? {
            kept.insert(rel, zxid);
        }
    }
    Ok(kept)
}

pub async fn read_stopped(client: &Client, path: &str) -> Result<Option<StopRecord>, Error> {
    get_json(client, path).await
}

/// The echoes of a worker's own writes, so that their watch events are not
/// taken for local changes. Owned by the worker alone.
#[derive(Default)]
pub struct Echoes {
    /// Absolute target path → own writes whose events have not come back.
    echoes: Mutex<HashMap<String, u32>>,
    /// Whether a target watch is armed: without one no echo will come, so
    /// none is recorded.
    watching: std::sync::atomic::AtomicBool,
}

impl Echoes {
    /// Registers the echo of an op about to be sent.
    pub fn expect_echo(&self, path: String) {
        if self.watching.load(std::sync::atomic::Ordering::Relaxed) {
            *self.echoes.lock().unwrap().entry(path).or_default() += 1;
        }
    }

    /// Starts or stops recording echoes. Starting afresh (a new lead)
    /// forgets old ones; re-arming a watch while already recording keeps
    /// them, so that the events of writes in flight do not look local (an
    /// echo whose event never comes masks at most one later local change of
    /// that path, which the anti-entropy pass finds).
    pub fn set_watching(&self, watching: bool) {
        let was = self.watching.swap(watching, std::sync::atomic::Ordering::Relaxed);
        if was != watching {
            self.echoes.lock().unwrap().clear();
        }
    }

    /// Withdraws an echo whose op failed (no event will come).
    pub fn cancel_echo(&self, path: &str) {
        let mut echoes = self.echoes.lock().unwrap();
        if let Some(n) = echoes.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                echoes.remove(path);
            }
        }
    }

    /// Whether an event on `path` is the echo of an own write (consumed).
    pub fn is_echo(&self, path: &str) -> bool {
        let mut echoes = self.echoes.lock().unwrap();
        match echoes.get_mut(path) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    echoes.remove(path);
                }
                true
            }
            None => false,
        }
    }

    /// Events may have been lost (reconnect, new lease): forget echoes.
    pub fn reset_echoes(&self) {
        self.echoes.lock().unwrap().clear();
    }
}

/// Persists a kept path.
pub async fn persist_kept(client: &Client, dir: &str, rel: &str, source_mzxid: i64, acl: &[Acl]) -> Result<(), Error> {
    put_json(client, &format!("{dir}/{}", encode_rel(rel)), &source_mzxid, acl)
        .await
        .map(drop)
}

/// Forgets a kept path (the source changed it again).
pub async fn unpersist_kept(client: &Client, dir: &str, rel: &str) -> Result<(), Error> {
    match client.delete(&format!("{dir}/{}", encode_rel(rel)), None).await {
        Ok(()) | Err(Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records a stop (creating its parents); `zkbridge resume` deletes it.
pub async fn persist_stop(client: &Client, path: &str, record: &StopRecord, acl: &[Acl]) -> Result<(), Error> {
    put_json(client, path, record, acl).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_round_trip_as_znode_names() {
        for rel in ["", "a", "a/b", "100%/x", "a%2Fb"] {
            let name = encode_rel(rel);
            assert!(!name.contains('/'), "{name}");
            assert_eq!(decode_rel(&name).as_deref(), Some(rel));
        }
    }

    #[test]
    fn echoes_are_consumed_once_each() {
        let c = Echoes::default();
        c.expect_echo("/t/unwatched".into());
        assert!(!c.is_echo("/t/unwatched"), "no watch, no echo recorded");
        c.set_watching(true);
        c.expect_echo("/t/a".into());
        c.expect_echo("/t/a".into());
        assert!(c.is_echo("/t/a"));
        assert!(c.is_echo("/t/a"));
        assert!(!c.is_echo("/t/a"), "a third event is someone else's");
        c.expect_echo("/t/b".into());
        c.cancel_echo("/t/b");
        assert!(!c.is_echo("/t/b"));
    }
}
