//! A pair's work on paths: the dirty paths its watch marked, and the full
//! pass that compares both members (at every lead, every
//! `verify_interval_s`). Both run levels of paths through the same
//! reconcile (`apply`) and put each outcome where it belongs.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::time::Instant;
use tracing::warn;
use zookeeper_client::Client;

use super::decide::Step;
use super::outcome::{Applied, PathError};
use super::pair::{Mark, Pair};
use super::records::{self, Side};
use crate::lease::Lease;
use crate::path::join;
use crate::znodes::now_ms;

/// How long a path refused by a member (no permission, say) waits.
const PARK_FOR: Duration = Duration::from_secs(30);
/// How long a delete waits for the destination's children to go first.
const DEFER_FOR: Duration = Duration::from_millis(200);
/// Tries a path still moving gets before it is parked: 10 s of waiting.
const DEFERS: u32 = 50;

impl Pair {
    /// Reconciles the dirty paths that are due, parents before children,
    /// many at once within a level.
    pub(super) async fn work(
        &self,
        lease: &Lease,
        from: &Client,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<(), PathError> {
        let now = Instant::now();
        let due: Vec<(String, Mark)> = dirty
            .iter()
            .filter(|(_, m)| m.not_before.is_none_or(|t| t <= now))
            .map(|(rel, m)| (rel.clone(), m.clone()))
            .collect();
        for (rel, _) in &due {
            dirty.remove(rel);
        }
        self.run_levels(lease, from, due, dirty).await
    }

    /// Reconciles `due`, parents before children, and then the deletes that
    /// waited for children, deepest first.
    async fn run_levels(
        &self,
        lease: &Lease,
        from: &Client,
        due: Vec<(String, Mark)>,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<(), PathError> {
        let mut deferred = Vec::new();
        for level in by_depth(due) {
            for (rel, mark, result) in self.reconcile_all(lease, from, level).await {
                match result {
                    Ok(Applied::Defer) => deferred.push((rel, mark)),
                    result => self.settle(rel, mark, result, dirty)?,
                }
            }
        }
        // Deletes that waited for their children, deepest first: the sweep
        // above has just deleted those.
        for level in by_depth(deferred).into_iter().rev() {
            for (rel, mark, result) in self.reconcile_all(lease, from, level).await {
                self.settle(rel, mark, result, dirty)?;
            }
        }
        Ok(())
    }

    /// Reconciles the paths of one level, many at once.
    async fn reconcile_all(
        &self,
        lease: &Lease,
        from: &Client,
        level: Vec<(String, Mark)>,
    ) -> Vec<(String, Mark, Result<Applied, PathError>)> {
        stream::iter(level)
            .map(|(rel, mark)| async move {
                let r = self.reconcile(lease, from, &rel).await;
                (rel, mark, r)
            })
            .buffer_unordered(self.limits.max_in_flight.max(1))
            .collect()
            .await
    }

    /// Puts a path's outcome where it belongs: done, back in the dirty set
    /// for later, or the error that ends the lead. A delete that keeps
    /// waiting for children the destination keeps (its own, or ephemerals)
    /// is parked after [`DEFERS`] tries, so that it holds back neither the
    /// checkpoint nor the loop.
    fn settle(
        &self,
        rel: String,
        mark: Mark,
        result: Result<Applied, PathError>,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<(), PathError> {
        let later = |after: Duration, parked: bool, defers: u32| Mark {
            not_before: Some(Instant::now() + after),
            parked,
            defers,
        };
        let put = match result {
            Ok(Applied::Done) => None,
            Ok(Applied::Defer) | Ok(Applied::Again) if mark.defers + 1 >= DEFERS => {
                warn!(route = self.route.name(), path = %join(&self.to.path, &rel), "path still moving (a delete waiting for children the destination keeps, or racing writes); retrying in 30s");
                self.status.update(|s| {
                    s.last_error = Some(format!("{rel}: waits for the destination's children or keeps racing"))
                });
                Some(later(PARK_FOR, true, 0))
            }
            Ok(Applied::Defer) | Ok(Applied::Again) => Some(later(DEFER_FOR, false, mark.defers + 1)),
            Err(e @ (PathError::Refused { .. } | PathError::TooLarge { .. })) => {
                warn!(route = self.route.name(), path = %join(&self.to.path, &rel), error = %e, "path refused; retrying in 30s");
                self.metrics.error(e.kind());
                self.status.update(|s| s.last_error = Some(format!("{rel}: {e}")));
                Some(later(PARK_FOR, true, 0))
            }
            Err(e) => {
                self.metrics.error(e.kind());
                return Err(e);
            }
        };
        if let Some(put) = put {
            // A newer event for the path wins over the retry time.
            dirty.entry(rel).or_insert(put);
        }
        Ok(())
    }

    /// The full pass: both members' subtrees and records are scanned, and
    /// every path either holds is decided; tombstones older than
    /// `tombstone_ttl_s` are collected in the destination.
    pub(super) async fn pass(
        &self,
        lease: &Lease,
        from: &Client,
        dirty: &mut BTreeMap<String, Mark>,
    ) -> Result<(), PathError> {
        let to = lease.client();
        let inflight = self.limits.max_in_flight.max(1);
        let descend = |rel: &str| !self.route.filter.excluded(rel);
        let scan = |client: &Client, base: String, member: String| {
            let client = client.clone();
            async move {
                crate::tree::scan(&client, &base, inflight, descend)
                    .await
                    .map_err(|e| self.error_of(&member, e))
            }
        };
        let (fe, te) = (self.from.ensemble.clone(), self.to.ensemble.clone());
        let (xd, xr, yd, yr) = futures::try_join!(
            scan(from, self.from.path.clone(), fe.clone()),
            scan(from, self.from_records.clone(), fe),
            scan(to, self.to.path.clone(), te.clone()),
            scan(to, self.to_records.clone(), te),
        )?;
        let mut rels: Vec<String> = xd
            .keys()
            .chain(xr.keys())
            .chain(yd.keys())
            .chain(yr.keys())
            .cloned()
            .collect();
        rels.sort_unstable();
        rels.dedup();
        let (xd, xr, yd, yr) = (&xd, &xr, &yd, &yr);
        // The scans are hints: the four were read at different moments, and
        // only what they show as different is read again, path by path, and
        // decided from those reads.
        let differ: Vec<(String, Mark)> = rels
            .into_iter()
            .filter(|rel| {
                let unreadable = [xd.get(rel), yd.get(rel)].iter().flatten().any(|n| n.is_unreadable());
                let (x, y) = (Side::from_scans(xd, xr, rel), Side::from_scans(yd, yr, rel));
                !unreadable && !matches!(self.step_for(rel, &x, &y).0, Step::Nothing | Step::BackToOrigin(_))
            })
            .map(|rel| (rel, Mark::default()))
            .collect();
        self.run_levels(lease, from, differ, dirty).await?;
        self.collect_tombstones(lease, yd, yr).await
    }

    /// Deletes the destination's tombstones older than `tombstone_ttl_s`
    /// (deepest first: a record znode with records below it stays).
    async fn collect_tombstones(
        &self,
        lease: &Lease,
        data: &crate::tree::Tree,
        recs: &crate::tree::Tree,
    ) -> Result<(), PathError> {
        let ttl_ms = (self.route.config.tombstone_ttl_s as i64).saturating_mul(1000);
        let now = now_ms();
        for (rel, _) in recs.iter().rev() {
            let Some(version) = records::collectable(recs, data, rel, now, ttl_ms) else {
                continue;
            };
            let mut writer = lease.writer();
            writer.add_delete(&join(&self.to_records, rel), Some(version))?;
            match writer.commit().await {
                Ok(_) => {}
                Err(zookeeper_client::CheckWriteError::CheckFailed { .. }) => return Err(PathError::LeaseLost),
                // Changed or gone since the scan: the next pass decides.
                Err(_) => {}
            }
        }
        Ok(())
    }
}

/// Paths grouped by depth, shallowest first: a parent is written before
/// its children, and the paths of one level go out together.
fn by_depth<T>(paths: Vec<(String, T)>) -> Vec<Vec<(String, T)>> {
    let mut levels: BTreeMap<usize, Vec<(String, T)>> = BTreeMap::new();
    for (rel, t) in paths {
        let depth = if rel.is_empty() {
            0
        } else {
            rel.matches('/').count() + 1
        };
        levels.entry(depth).or_default().push((rel, t));
    }
    levels.into_values().collect()
}
