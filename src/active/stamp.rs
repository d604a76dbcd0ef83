//! Stamping deletes where they happen (design §7, "where a delete's time
//! comes from"), in one member, without any other.
//!
//! A pair from the member stamps a delete too, but it needs its
//! destination (its lease lives there): while the member is cut off from
//! every other, no pair from it runs, and a delete made then would be
//! stamped only after the heal — later than writes it preceded. The
//! stamper needs nothing but the member: every instance runs one per
//! member and route, watching the member's subtree, and the stamp write is
//! checked against the record read, so one of them writes it. It runs no
//! lease: it writes only tombstones of deletes it saw, which any instance
//! would write the same.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};
use zookeeper_client::{Client, EventType};

use super::records::{self, Member};
use crate::config::{ActiveRoute, Endpoint};
use crate::path::relative;
use crate::shutdown::Shutdown;
use crate::zk::{Ensemble, SessionChange, SessionTracker};
use crate::znodes::origin_records_root;

/// Stamps the deletes of one member of one route.
pub struct Stamper {
    pub route: Arc<ActiveRoute>,
    pub member: Endpoint,
    pub zk: Ensemble,
    pub meta: String,
}

impl Stamper {
    pub async fn run(self, mut shutdown: Shutdown) {
        let records = origin_records_root(&self.meta, self.route.name());
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !shutdown.is_requested() {
            let session = tokio::select! {
                s = self.zk.session() => s,
                _ = shutdown.requested() => return,
            };
            let watched = tokio::select! {
                r = self.watch(&session.client, &records) => r,
                _ = shutdown.requested() => return,
            };
            if let Err(e) = watched {
                debug!(route = self.route.name(), member = %self.member, error = %e, "delete stamper restarts");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {},
                _ = shutdown.requested() => return,
            }
        }
    }

    /// Watches the member's subtree and stamps each delete it reports,
    /// until the session ends (one loop over one watcher, kept whole).
    /// Events are lost while disconnected; the deletes of nodes zkbridge
    /// had written are found again by the pairs' passes (their records
    /// remain), the others are lost with the event — the documented limit
    /// of a delete's time.
    async fn watch(&self, client: &Client, records: &str) -> Result<(), zookeeper_client::Error> {
        let mut watcher = crate::zk::watch_subtree(client, &self.member.path).await?;
        // The member's ephemerals: their deletes are sessions ending, not
        // changes (the route skips ephemerals), and are never stamped.
        let mut ephemerals = self.ephemerals(client).await?;
        // Nodes created over an older record (a tombstone), and nodes gone
        // before they could be read, since the watch started.
        let mut reborn: HashMap<String, i64> = HashMap::new();
        let mut unknown: HashSet<String> = HashSet::new();
        let mut tracker = SessionTracker::default();
        let member = Member {
            name: &self.member.ensemble,
            records,
            acl: &self.zk.acl,
        };
        loop {
            let event = watcher.changed().await;
            if event.event_type == EventType::Session {
                match tracker.on(event.session_state) {
                    SessionChange::Ended => return Ok(()),
                    // Re-armed: the old watcher says nothing more of what
                    // changed while away.
                    SessionChange::Back => {
                        watcher = crate::zk::watch_subtree(client, &self.member.path).await?;
                        ephemerals = self.ephemerals(client).await?;
                    }
                    SessionChange::Lost | SessionChange::Nothing => {}
                }
                continue;
            }
            let Some(rel) = relative(&self.member.path, &event.path) else {
                continue;
            };
            if !self.route.filter.managed(rel) {
                continue;
            }
            let seen = match event.event_type {
                EventType::NodeCreated => {
                    let side = records::read(client, &self.member.path, records, rel).await?;
                    match &side.node {
                        Some((_, stat)) if crate::tree::owned_by_a_session(stat.ephemeral_owner) => {
                            ephemerals.insert(rel.to_string());
                        }
                        // Over an older record: its delete is a new one.
                        Some((_, stat)) if side.record_node.is_some_and(|r| r.mzxid < stat.czxid) => {
                            reborn.insert(rel.to_string(), stat.czxid);
                        }
                        Some(_) => {}
                        // Gone already: what it was is unknown, and a
                        // delete of what may be an ephemeral is not stamped.
                        None => {
                            unknown.insert(rel.to_string());
                        }
                    }
                    continue;
                }
                EventType::NodeDeleted if ephemerals.remove(rel) || unknown.remove(rel) => continue,
                EventType::NodeDeleted => match reborn.remove(rel) {
                    Some(czxid) => records::Seen::DeletedCreatedAt(czxid),
                    None => records::Seen::Deleted,
                },
                _ => continue,
            };
            // Read, stamp if still unstamped, read again to see it done.
            let mut seen = seen;
            for _ in 0..4 {
                let side = records::read(client, &self.member.path, records, rel).await?;
                if !records::unstamped_delete(&side, seen) {
                    break;
                }
                if let Err(e) = records::stamp_delete(client, &member, rel, &side).await {
                    warn!(route = self.route.name(), member = %self.member, path = %event.path, error = %e, "cannot stamp a delete; the pairs' next pass finds it");
                    break;
                }
                // Stamped (by this write or a racing one): a tombstone read
                // now is this delete's own.
                seen = records::Seen::Deleted;
            }
        }
    }

    async fn ephemerals(&self, client: &Client) -> Result<HashSet<String>, zookeeper_client::Error> {
        let tree = crate::tree::scan(client, &self.member.path, 4, |rel| !self.route.filter.excluded(rel)).await?;
        Ok(tree
            .into_iter()
            .filter(|(_, n)| n.is_ephemeral())
            .map(|(rel, _)| rel)
            .collect())
    }
}
