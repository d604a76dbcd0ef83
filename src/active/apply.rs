//! One path of one member pair: read both members, decide, write.
//!
//! Every write into the destination is one `multi`, fenced by the pair's
//! lease, holding the data op, the origin record (design §7) and, when the
//! write overwrites a change that lost, its conflict-log entry. Every op is
//! checked against the version read, so a concurrent local write or
//! another pair's write into the same member makes the whole `multi` fail
//! and the path is read and decided again: nothing is decided on a state
//! that is gone.

use std::future::Future;
use std::pin::Pin;

use zookeeper_client::{Acls, CheckWriteError, Client, CreateMode, Error};

use super::decide::{decide, refine, Stamp, Step, Version};
use super::outcome::{Applied, PathError};
use super::pair::Pair;
use super::records::{self, Side};
use crate::checkpoint::persistent;
use crate::lease::Lease;
use crate::path::{join, parent};
use crate::znodes::{now_ms, ConflictChange, ConflictRecord, OriginRecord};

/// Room a write keeps beside the data for the paths, the origin record
/// and a conflict-log entry.
const RECORD_ROOM: usize = 8 * 1024;

/// The tries an attempt makes before the path is put back for later.
const TRIES: usize = 6;

/// What one write did, for the metrics.
pub struct Wrote {
    pub op: &'static str,
    pub lost: bool,
}

impl Pair {
    /// Reads both members at `rel` and applies the decision, again while
    /// something changes under it.
    pub(super) fn reconcile<'a>(
        &'a self,
        lease: &'a Lease,
        from: &'a Client,
        rel: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Applied, PathError>> + Send + 'a>> {
        Box::pin(async move {
            for _ in 0..TRIES {
                let x = self.read_from(from, rel).await?;
                let y = self.read_to(lease.client(), rel).await?;
                match self.apply(lease, from, rel, &x, &y).await? {
                    Applied::Again => continue,
                    done => return Ok(done),
                }
            }
            Ok(Applied::Again)
        })
    }

    async fn read_from(&self, client: &Client, rel: &str) -> Result<Side, PathError> {
        records::read(client, &self.from.path, &self.from_records, rel)
            .await
            .map_err(|e| self.error_of(&self.from.ensemble, e))
    }

    async fn read_to(&self, client: &Client, rel: &str) -> Result<Side, PathError> {
        records::read(client, &self.to.path, &self.to_records, rel)
            .await
            .map_err(|e| self.error_of(&self.to.ensemble, e))
    }

    /// The step for `rel` from the states read (`x` in the source member,
    /// `y` in the destination), and the change it overwrites that lost
    /// (with whether that change was a delete). No IO.
    pub(super) fn step_for(&self, rel: &str, x: &Side, y: &Side) -> (Step, Option<(Stamp, bool)>) {
        if x.is_ephemeral() || y.is_ephemeral() || !self.route.filter.managed(rel) {
            return (Step::Nothing, None);
        }
        let vy = y.version(&self.to.ensemble);
        let written = x.record_node.as_ref().map(|s| s.mzxid);
        let vx = refine(&self.from.ensemble, x.version(&self.from.ensemble), written, &vy);
        let decision = decide(&self.from.ensemble, &self.to.ensemble, &vx, x.prior().as_ref(), &vy);
        let lost = decision.lost.map(|stamp| (stamp, matches!(vy, Version::Deleted(_))));
        let first = self.filling_now();
        let step = match decision.step {
            // Only a pass into a member that lost its data (no checkpoint
            // of this pair there yet) gives a member its own changes back.
            Step::BackToOrigin(s) if first.refill => match x.node {
                Some(_) => Step::Carry(s),
                None => Step::Tombstone(s),
            },
            // The source's absences are deletes only once the pair into it
            // has filled it (its checkpoint is there): a member rebuilt
            // empty deletes nothing elsewhere.
            Step::StampDeleteInX if !first.infer_deletes && x.record.is_none() => Step::Nothing,
            // A tombstone past its time is not spread again where it was
            // collected.
            Step::Tombstone(s) if now_ms() - s.mtime_ms > self.tombstone_ttl_ms() => Step::Nothing,
            step => step,
        };
        (step, lost)
    }

    pub(super) fn tombstone_ttl_ms(&self) -> i64 {
        (self.route.config.tombstone_ttl_s as i64).saturating_mul(1000)
    }

    /// Decides `rel` from the states read and makes the one write the
    /// decision calls for.
    pub(super) async fn apply(
        &self,
        lease: &Lease,
        from: &Client,
        rel: &str,
        x: &Side,
        y: &Side,
    ) -> Result<Applied, PathError> {
        let (step, lost) = self.step_for(rel, x, y);
        let wrote = match step {
            Step::Nothing | Step::BackToOrigin(_) => return Ok(Applied::Done),
            Step::StampDeleteInX => return self.stamp_delete(from, rel, x).await,
            Step::Carry(stamp) => {
                let (data, _) = x.node.as_ref().expect("a carried version is present");
                // Data, record and a conflict entry go in one request.
                if data.len() + RECORD_ROOM > self.to_zk.max_request_bytes {
                    return Err(PathError::TooLarge {
                        member: self.to.ensemble.clone(),
                        bytes: data.len(),
                        max: self.to_zk.max_request_bytes,
                    });
                }
                if y.node.is_none() && !rel.is_empty() && !self.parent_in_to(lease, from, rel).await? {
                    return Ok(Applied::Again);
                }
                let acl = self.acl_for(from, rel).await?;
                let mut writer = lease.writer();
                let op = match &y.node {
                    Some((_, stat)) => {
                        writer.add_set_data(&join(&self.to.path, rel), data, Some(stat.version))?;
                        "set"
                    }
                    None => {
                        writer.add_create(&join(&self.to.path, rel), data, &persistent(&acl))?;
                        "create"
                    }
                };
                self.add_record(&mut writer, rel, y, &records::carried(&stamp, false))?;
                self.add_conflict(&mut writer, rel, lost.as_ref(), &stamp, false)?;
                self.commit(lease, writer, rel, op, lost.is_some()).await?
            }
            Step::Delete(stamp) => {
                let (_, stat) = y.node.as_ref().expect("a deleted-over version is present");
                if stat.num_children > 0 {
                    return Ok(Applied::Defer);
                }
                let mut writer = lease.writer();
                writer.add_delete(&join(&self.to.path, rel), Some(stat.version))?;
                self.add_record(&mut writer, rel, y, &records::carried(&stamp, true))?;
                self.add_conflict(&mut writer, rel, lost.as_ref(), &stamp, true)?;
                self.commit(lease, writer, rel, "delete", lost.is_some()).await?
            }
            Step::Tombstone(stamp) => {
                let mut writer = lease.writer();
                self.add_record(&mut writer, rel, y, &records::carried(&stamp, true))?;
                self.commit(lease, writer, rel, "tombstone", false).await?
            }
        };
        match wrote {
            Some(wrote) => {
                self.count(&wrote);
                Ok(Applied::Done)
            }
            None => Ok(Applied::Again),
        }
    }

    /// The ACL a node created in the destination gets: the source's with
    /// `acls = "copy"`, else the destination ensemble's.
    async fn acl_for(&self, from: &Client, rel: &str) -> Result<Vec<zookeeper_client::Acl>, PathError> {
        if self.route.config.acls != crate::config::AclMode::Copy {
            return Ok(self.to_zk.acl.to_vec());
        }
        match from.get_acl(&join(&self.from.path, rel)).await {
            Ok((acl, _)) => Ok(acl),
            Err(e) => Err(self.error_of(&self.from.ensemble, e)),
        }
    }

    /// Makes sure the destination has `rel`'s parent before a create: the
    /// parent is carried like any path; when the destination keeps it
    /// deleted (its tombstone is newer than the source's copy) it is made
    /// again as the destination's own new node — a later create under a
    /// deleted parent brings the parent back, everywhere. Returns whether
    /// the parent is there now.
    async fn parent_in_to(&self, lease: &Lease, from: &Client, rel: &str) -> Result<bool, PathError> {
        let Some(up) = parent(rel) else {
            return Ok(true);
        };
        let exists = || async {
            match lease.client().check_stat(&join(&self.to.path, up)).await {
                Ok(stat) => Ok(stat.is_some()),
                Err(e) => Err(self.error_of(&self.to.ensemble, e)),
            }
        };
        if exists().await? {
            return Ok(true);
        }
        let decided = self.reconcile(lease, from, up).await?;
        if exists().await? {
            return Ok(true);
        }
        // Still moving (a race, a delete waiting): decide the child later.
        if !matches!(decided, Applied::Done) {
            return Ok(false);
        }
        if !up.is_empty() && !Box::pin(self.parent_in_to(lease, from, up)).await? {
            return Ok(false);
        }
        let data = match from.get_data(&join(&self.from.path, up)).await {
            Ok((data, _)) => data,
            Err(Error::NoNode) => Vec::new(),
            Err(e) => return Err(self.error_of(&self.from.ensemble, e)),
        };
        let mut writer = lease.writer();
        writer.add_create(&join(&self.to.path, up), &data, &persistent(&self.to_zk.acl))?;
        match writer.commit().await {
            Ok(_) => {
                self.count(&Wrote {
                    op: "create",
                    lost: false,
                });
                Ok(true)
            }
            Err(e) => match self.write_error(e) {
                Ok(()) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Records `record` for `rel` in the destination, checked against the
    /// record znode's version as read.
    fn add_record(
        &self,
        writer: &mut zookeeper_client::CheckWriter<'_>,
        rel: &str,
        y: &Side,
        record: &OriginRecord,
    ) -> Result<(), Error> {
        let path = join(&self.to_records, rel);
        let data = records::encode(record);
        match &y.record_node {
            Some(stat) => writer.add_set_data(&path, &data, Some(stat.version)),
            None => writer.add_create(&path, &data, &persistent(&self.to_zk.acl)),
        }
    }

    /// Adds the conflict-log entry of a change that lost, when there is one.
    fn add_conflict(
        &self,
        writer: &mut zookeeper_client::CheckWriter<'_>,
        rel: &str,
        lost: Option<&(Stamp, bool)>,
        won: &Stamp,
        won_deleted: bool,
    ) -> Result<(), Error> {
        let Some((lost, lost_deleted)) = lost else {
            return Ok(());
        };
        let change = |s: &Stamp, deleted: bool| ConflictChange {
            origin: s.origin.clone(),
            mtime_ms: s.mtime_ms,
            zxid: s.zxid,
            deleted,
        };
        let record = ConflictRecord {
            path: rel.to_string(),
            member: self.to.ensemble.clone(),
            lost: change(lost, *lost_deleted),
            won: change(won, won_deleted),
            ts_ms: now_ms(),
        };
        let data = serde_json::to_vec(&record).expect("JSON of a plain struct");
        let options = CreateMode::PersistentSequential.with_acls(Acls::new(&self.to_zk.acl));
        writer.add_create(&format!("{}/c-", self.conflicts_dir), &data, &options)
    }

    /// Commits one write. `Some` when it committed; `None` when something
    /// changed under it (the caller reads again).
    async fn commit(
        &self,
        lease: &Lease,
        writer: zookeeper_client::CheckWriter<'_>,
        rel: &str,
        op: &'static str,
        lost: bool,
    ) -> Result<Option<Wrote>, PathError> {
        match writer.commit().await {
            Ok(_) => Ok(Some(Wrote { op, lost })),
            // The record's parent is missing: its anchors are made (empty,
            // holding no record) and the write is tried again.
            Err(CheckWriteError::OperationFailed {
                index,
                source: Error::NoNode,
            }) if index == 1 || (index == 0 && op == "tombstone") => {
                records::ensure_anchor(lease.client(), &self.to_records, rel, &self.to_zk.acl)
                    .await
                    .map_err(|e| self.error_of(&self.to.ensemble, e))?;
                Ok(None)
            }
            // The conflict log's directory is gone (removed by hand): made
            // again, and the write tried again.
            Err(CheckWriteError::OperationFailed {
                index: 2,
                source: Error::NoNode,
            }) if lost => crate::checkpoint::ensure_path(lease.client(), &self.conflicts_dir, &self.to_zk.acl)
                .await
                .map(|()| None)
                .map_err(|e| self.error_of(&self.to.ensemble, e)),
            Err(e) => self.write_error(e).map(|()| None),
        }
    }

    /// `Ok` for a write that lost a race (read again), else the error.
    fn write_error(&self, e: CheckWriteError) -> Result<(), PathError> {
        match e {
            CheckWriteError::CheckFailed { .. } => Err(PathError::LeaseLost),
            CheckWriteError::OperationFailed {
                source: Error::BadVersion | Error::NodeExists | Error::NoNode | Error::NotEmpty,
                ..
            } => Ok(()),
            CheckWriteError::OperationFailed { source, .. } | CheckWriteError::RequestFailed { source } => {
                Err(self.error_of(&self.to.ensemble, source))
            }
        }
    }

    /// Stamps a delete made in the source member: its tombstone, whose own
    /// server time is the delete's time. Checked against the record read,
    /// so of the pairs from this member that see the delete, one stamps it.
    async fn stamp_delete(&self, from: &Client, rel: &str, x: &Side) -> Result<Applied, PathError> {
        let member = records::Member {
            name: &self.from.ensemble,
            records: &self.from_records,
            acl: &self.from_zk.acl,
        };
        match records::stamp_delete(from, &member, rel, x).await {
            Ok(()) => Ok(Applied::Again),
            Err(e) => Err(self.error_of(&self.from.ensemble, e)),
        }
    }

    fn count(&self, wrote: &Wrote) {
        if wrote.op != "tombstone" {
            self.metrics.applied(wrote.op);
        }
        if wrote.lost {
            self.metrics.lww_lost.inc();
        }
    }
}
