//! Leases: one active worker per (route, target) across every instance, and
//! fencing of its writes.
//!
//! Instances compete with the crate's lock recipe: an ephemeral sequential
//! node under `<meta>/routes/<route>/<target>/leases/` in the *target*
//! ensemble; the lowest sequence holds the lease and each other contender
//! watches only its predecessor. The lease lives exactly as long as the
//! session that created it, and every write of the holder is a `multi` that
//! first checks the lease node still exists. A worker whose session died —
//! paused, partitioned, expired — can therefore not commit anything after
//! another instance took over: ZooKeeper refuses the whole batch.
//!
//! Work is spread by [`Balancer`]: each instance registers an ephemeral node
//! under `<meta>/instances/` in every target ensemble; an instance that
//! leads more than its fair share hands surplus leases back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};
use zookeeper_client::{
    Acls, CheckWriter, Client, CreateMode, Error, EventType, LockOptions, LockPrefix, OwnedLockClient,
};

use crate::checkpoint::persistent;
use crate::shutdown::Shutdown;
use crate::zk::Ensemble;
use crate::znodes::{instances_dir, LeaseRecord};

/// Name part of every lease node (after the recipe's unique prefix).
const LEASE_NAME: &str = "lease-";

/// A held lease: the session that owns it and the node that proves it.
pub struct Lease {
    lock: OwnedLockClient,
    published_error: std::sync::Mutex<Option<String>>,
    record: LeaseRecord,
    /// `None` for the pairs of an active-active route, which have no roles.
    fence: Option<RoleFence>,
}

/// The target's role znode as the worker found it before taking the lease:
/// every write also checks that it is unchanged, so that nothing commits
/// after a flip (design §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFence {
    pub path: String,
    pub version: i32,
}

impl Lease {
    /// Competes for the lease until this instance holds it. Survives
    /// connection loss and session expiry (it starts over on the next
    /// session); cancelling the future leaves no node behind.
    pub async fn acquire(target: &Ensemble, dir: &str, record: &LeaseRecord, fence: Option<RoleFence>) -> Lease {
        let data = serde_json::to_vec(record).expect("JSON of a plain struct");
        // After an expired session, wait for a newer one.
        let mut after = 0;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let session = target.session_after(after).await;
            let options = LockOptions::new(Acls::new(&target.acl))
                .with_ancestor_options(persistent(&target.acl))
                .expect("a persistent mode is a valid ancestor option");
            let prefix = LockPrefix::new_curator(dir, LEASE_NAME).expect("lease dir is a validated path");
            let locked = session
                .client
                .lock(prefix, &data, options)
                .await
                .map(|lock| lock.into_owned());
            match locked {
                Ok(lock) => {
                    return Lease {
                        lock,
                        published_error: Default::default(),
                        record: record.clone(),
                        fence,
                    }
                }
                Err(e) => {
                    // Contention ends quietly; anything else (an ACL the
                    // server refuses, no permission) would keep this
                    // instance from ever leading, so it is said out loud.
                    if matches!(e, Error::ConnectionLoss | Error::SessionExpired | Error::ClientClosed) {
                        debug!(error = %e, "lease contention interrupted; competing again");
                    } else {
                        warn!(error = %e, dir, "cannot compete for the lease; retrying");
                    }
                    if matches!(e, Error::SessionExpired | Error::ClientClosed) {
                        after = session.generation;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The target session that owns the lease: the only one the worker may
    /// write with.
    pub fn client(&self) -> &Client {
        self.lock.client()
    }

    pub fn path(&self) -> &str {
        self.lock.lock_path()
    }

    /// A `multi` whose first op checks that the lease node still exists,
    /// and whose second, when the lease has a fence, checks the role znode
    /// (see [`RoleFence`]).
    pub fn writer(&self) -> CheckWriter<'_> {
        let mut writer = self.lock.new_check_writer();
        if let Some(fence) = &self.fence {
            writer
                .add_check_version(&fence.path, fence.version)
                .expect("the role path is a valid path");
        }
        writer
    }

    /// Resolves once the lease is gone: its node was deleted or its session
    /// ended. (A connection loss alone does not end it.)
    pub async fn lost(&self) {
        loop {
            match self.client().check_and_watch_stat(self.path()).await {
                Ok((None, _)) => return,
                Ok((Some(_), watcher)) => {
                    let event = watcher.changed().await;
                    if event.event_type == EventType::NodeDeleted || event.session_state.is_terminated() {
                        return;
                    }
                }
                Err(Error::SessionExpired | Error::ClientClosed) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Publishes this worker's last error in the lease node, where
    /// `zkbridge status` reads it. Only writes when it changed.
    pub async fn publish_error(&self, error: Option<String>) {
        if *self.published_error.lock().unwrap() == error {
            return;
        }
        let record = LeaseRecord {
            last_error: error.clone(),
            ..self.record.clone()
        };
        let data = serde_json::to_vec(&record).expect("JSON of a plain struct");
        // The fencing check is on existence (version -1), so rewriting the
        // node's data does not disturb it.
        if self.client().set_data(self.path(), &data, None).await.is_ok() {
            *self.published_error.lock().unwrap() = error;
        }
    }

    /// Gives the lease up at once (drain, rebalancing), so a standby takes
    /// over without waiting for the session timeout.
    pub async fn release(self) {
        let path = self.path().to_string();
        match self.client().delete(&path, None).await {
            Ok(()) | Err(Error::NoNode) => info!(lease = %path, "lease released"),
            Err(e) => warn!(lease = %path, error = %e, "cannot delete lease node; it goes with the session"),
        }
        // Dropping the lock client deletes once more in the background: a
        // no-op after success, a retry after a connection loss.
        drop(self.lock);
    }
}

/// The lease nodes under `dir`, holder first.
pub async fn contenders(client: &Client, dir: &str) -> Result<Vec<LeaseRecord>, Error> {
    let mut children = match client.list_children(dir).await {
        Ok(c) => c,
        Err(Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // Curator-style names end in a ten-digit sequence.
    children.retain(|c| c.contains(LEASE_NAME));
    children.sort_by(|a, b| a[a.len().saturating_sub(10)..].cmp(&b[b.len().saturating_sub(10)..]));
    let mut records = Vec::new();
    for child in children {
        match client.get_data(&format!("{dir}/{child}")).await {
            Ok((data, _)) => {
                if let Ok(r) = serde_json::from_slice(&data) {
                    records.push(r)
                }
            }
            Err(Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// Decides when this instance leads more route/targets than its share and
/// must hand some back. Shared by all workers of the instance.
pub struct Balancer {
    enabled: bool,
    pairs: usize,
    held: AtomicUsize,
    /// Live instances seen in each target ensemble's registry.
    live_instances: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    /// Instances seen stable since, so a restart wave does not cause churn.
    stable_since: std::sync::Mutex<Instant>,
}

/// A lease counted in its instance's [`Balancer`] while this lives. Dropped
/// with the worker that holds it — also when a panic unwinds that worker,
/// which would otherwise leave the instance counting a lease it no longer
/// holds and handing back others for it.
pub struct CountedLease {
    balancer: Arc<Balancer>,
    /// False once a release is claimed (the balancer no longer counts it).
    counted: std::sync::atomic::AtomicBool,
}

impl CountedLease {
    /// Whether this lease (held since `since`) is surplus: this instance
    /// leads more than its share. A `true` claims the release; take it back
    /// with [`CountedLease::keep`] when the lease is kept after all.
    pub fn should_release(&self, since: Instant) -> bool {
        let claimed = self.counted.load(Ordering::SeqCst) && self.balancer.claim_release(since);
        if claimed {
            self.counted.store(false, Ordering::SeqCst);
        }
        claimed
    }

    /// Takes back a claimed release that did not happen.
    pub fn keep(&self) {
        if !self.counted.swap(true, Ordering::SeqCst) {
            self.balancer.held.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for CountedLease {
    fn drop(&mut self) {
        if self.counted.load(Ordering::SeqCst) {
            self.balancer.held.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// How long the instance count must be unchanged, and a lease held, before
/// surplus leases are handed back.
pub const BALANCE_DELAY: Duration = Duration::from_secs(3);

impl Balancer {
    pub fn new(enabled: bool, pairs: usize) -> Arc<Self> {
        Arc::new(Balancer {
            enabled,
            pairs,
            held: AtomicUsize::new(0),
            live_instances: Default::default(),
            stable_since: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// Counts a lease taken, for as long as the returned guard lives.
    pub fn count(self: &Arc<Self>) -> CountedLease {
        self.held.fetch_add(1, Ordering::SeqCst);
        CountedLease {
            balancer: self.clone(),
            counted: std::sync::atomic::AtomicBool::new(true),
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    pub fn fair_share(&self) -> usize {
        let live = self
            .live_instances
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        self.pairs.div_ceil(live)
    }

    /// Whether a leader since `since` should hand its lease back. Claims
    /// the release atomically (uncounts it), so that only the surplus goes.
    fn claim_release(&self, since: Instant) -> bool {
        if !self.enabled || since.elapsed() < BALANCE_DELAY {
            return false;
        }
        if self.stable_since.lock().unwrap().elapsed() < BALANCE_DELAY {
            return false;
        }
        let fair = self.fair_share();
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held > fair).then(|| held - 1)
            })
            .is_ok()
    }

    fn set_live(&self, ensemble: &str, n: usize) {
        let previous = self.live_instances.lock().unwrap().insert(ensemble.to_string(), n);
        if previous != Some(n) {
            *self.stable_since.lock().unwrap() = Instant::now();
        }
    }

    /// Registers this instance in `ensemble` (ephemeral, re-created on every
    /// new session) and keeps the count of live instances current.
    pub async fn register(
        self: Arc<Self>,
        ensemble: Ensemble,
        meta: String,
        record: LeaseRecord,
        mut shutdown: Shutdown,
    ) {
        let dir = instances_dir(&meta);
        let node = format!("{dir}/{}-{}", record.instance, record.pid);
        let data = serde_json::to_vec(&record).expect("JSON of a plain struct");
        let ephemeral = CreateMode::Ephemeral.with_acls(Acls::new(&ensemble.acl));
        let mut generation = 0;
        loop {
            let session = tokio::select! {
                s = ensemble.session_after(generation) => s,
                _ = shutdown.requested() => return,
            };
            generation = session.generation;
            let client = session.client;
            let _ = client.mkdir(&dir, &persistent(&ensemble.acl)).await;
            // A node of the same name may be left by a previous process
            // (same id and pid, e.g. pid 1 in a container) whose session has
            // not expired yet: replace it, or this instance would vanish
            // from the registry when that session goes.
            match client.get_data(&node).await {
                Ok((_, stat)) if stat.ephemeral_owner != client.session_id().0 => {
                    let _ = client.delete(&node, None).await;
                }
                _ => {}
            }
            match client.create(&node, &data, &ephemeral).await {
                Ok(_) | Err(Error::NodeExists) => {}
                Err(e) => warn!(error = %e, ensemble = %ensemble.name, "cannot register instance"),
            }
            // Follow the instance list until this session ends.
            loop {
                let (children, watcher) = match client.list_and_watch_children(&dir).await {
                    Ok(r) => r,
                    Err(Error::SessionExpired | Error::ClientClosed) => break,
                    Err(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = shutdown.requested() => return,
                        }
                    }
                };
                self.set_live(&ensemble.name, children.len());
                let event = tokio::select! {
                    e = watcher.changed() => e,
                    _ = shutdown.requested() => return,
                };
                if event.session_state.is_terminated() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_uncounted_when_its_worker_unwinds() {
        let balancer = Balancer::new(true, 4);
        let kept = balancer.count();
        let b = balancer.clone();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = b.count();
            assert_eq!(b.held(), 2);
            panic!("a worker's bug");
        }));
        assert!(unwound.is_err());
        assert_eq!(balancer.held(), 1, "only the lease still held is counted");
        drop(kept);
        assert_eq!(balancer.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_surplus_lease_goes_back_only_once_the_instance_count_is_stable() {
        let balancer = Balancer::new(true, 2);
        let since = Instant::now();
        let _first = balancer.count();
        let second = balancer.count();
        tokio::time::advance(BALANCE_DELAY).await;
        assert!(
            !second.should_release(since),
            "alone, both pairs are this instance's share"
        );
        // A second instance arrives: the fair share drops to one, but the
        // count must hold still for a while first (instances start in waves).
        balancer.set_live("east", 2);
        assert!(!second.should_release(since), "the count just changed");
        tokio::time::advance(BALANCE_DELAY - Duration::from_millis(1)).await;
        assert!(!second.should_release(since), "not stable for long enough yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(second.should_release(since), "two held, a fair share of one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_lead_is_not_handed_back_at_once() {
        let balancer = Balancer::new(true, 1);
        tokio::time::advance(BALANCE_DELAY).await;
        let _first = balancer.count();
        let second = balancer.count();
        let since = Instant::now();
        assert!(!second.should_release(since), "just taken");
        tokio::time::advance(BALANCE_DELAY).await;
        assert!(second.should_release(since));
    }

    #[test]
    fn a_claimed_release_is_uncounted_once_and_can_be_taken_back() {
        let balancer = Balancer::new(true, 1);
        *balancer.stable_since.lock().unwrap() = Instant::now() - BALANCE_DELAY;
        let long_ago = Instant::now() - BALANCE_DELAY;
        let first = balancer.count();
        let second = balancer.count();
        assert!(second.should_release(long_ago), "two held, a fair share of one");
        assert!(!second.should_release(long_ago), "claimed once");
        assert_eq!(balancer.held(), 1);
        second.keep();
        assert_eq!(balancer.held(), 2);
        drop(second);
        assert!(!first.should_release(long_ago), "the one left is this instance's share");
        drop(first);
        assert_eq!(balancer.held(), 0);
    }
}
