//! One member's state at a path, as the decision core sees it: the node and
//! zkbridge's origin record for it (design §7; layout in
//! `znodes::origin_records_root`).
//!
//! The record lives outside the member's subtree, under `meta_path`, so an
//! application listing its nodes never sees it, and is written in the same
//! `multi` as the data, so both carry one zxid: that equality is how a
//! record is known to still speak for its node.

use zookeeper_client::{Error, MultiReadResult, Stat};

use super::decide::{self, Node, Origin, Stamp, Version};
use crate::path::join;
use crate::tree::{NodeState, Tree};
use crate::znodes::OriginRecord;

/// What one member holds at a relative path.
#[derive(Debug, Clone, Default)]
pub struct Side {
    /// The node: data and stat.
    pub node: Option<(Vec<u8>, Stat)>,
    /// The record's znode, when it exists (with or without a record):
    /// every write of the record is checked against its version.
    pub record_node: Option<Stat>,
    /// The origin record, when the record znode holds one.
    pub record: Option<OriginRecord>,
}

impl Side {
    /// Whether the node is owned by a session: active-active routes skip
    /// ephemerals (`ephemerals = "skip"`), in every member.
    pub fn is_ephemeral(&self) -> bool {
        self.node
            .as_ref()
            .is_some_and(|(_, s)| crate::tree::owned_by_a_session(s.ephemeral_owner))
    }

    /// The record as the decision core reads it: a tombstone written where
    /// the delete happened takes its stamp from its own znode's stat.
    pub fn origin(&self) -> Option<Origin> {
        let (record, stat) = (self.record.as_ref()?, self.record_node.as_ref()?);
        Some(Origin {
            stamp: Stamp {
                mtime_ms: record.mtime_ms.unwrap_or(stat.mtime),
                origin: record.origin.clone(),
                zxid: record.zxid.unwrap_or(stat.mzxid),
            },
            tombstone: record.deleted,
            written_zxid: stat.mzxid,
        })
    }

    fn node_times(&self) -> Option<Node> {
        self.node.as_ref().map(|(_, s)| Node {
            mzxid: s.mzxid,
            mtime_ms: s.mtime,
        })
    }

    /// This member's version of the path.
    pub fn version(&self, member: &str) -> Version {
        decide::version(member, self.node_times().as_ref(), self.origin().as_ref())
    }

    /// The record's stamp when it no longer speaks for the node (the member
    /// changed the node since): the last change zkbridge carried here.
    pub fn prior(&self) -> Option<Stamp> {
        let origin = self.origin()?;
        match self.node_times() {
            Some(n) if origin.tombstone || origin.written_zxid != n.mzxid => Some(origin.stamp),
            _ => None,
        }
    }

    /// The side at `rel` from a scan of the member's subtree and one of its
    /// records.
    pub fn from_scans(data: &Tree, records: &Tree, rel: &str) -> Side {
        let node = data
            .get(rel)
            .filter(|n| n.stat.mzxid >= 0 && !n.is_unreadable())
            .map(|n| (n.data.clone(), n.stat));
        let (record_node, record) = match records.get(rel).filter(|n| n.stat.mzxid >= 0) {
            Some(n) => (Some(n.stat), decode(&n.data)),
            None => (None, None),
        };
        Side {
            node,
            record_node,
            record,
        }
    }
}

/// The record in a record znode's data; empty data holds none. A record
/// zkbridge cannot parse (written by hand, or by a newer version) counts
/// as none: the node is then taken as the member's own change.
pub fn decode(data: &[u8]) -> Option<OriginRecord> {
    if data.is_empty() {
        return None;
    }
    serde_json::from_slice(data).ok()
}

pub fn encode(record: &OriginRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("JSON of a plain struct")
}

/// The record that carries `stamp` (a change carried from its origin).
pub fn carried(stamp: &Stamp, deleted: bool) -> OriginRecord {
    OriginRecord {
        origin: stamp.origin.clone(),
        mtime_ms: Some(stamp.mtime_ms),
        zxid: Some(stamp.zxid),
        deleted,
    }
}

/// Reads the node at `rel` under `base` and its record under `records` in
/// one request.
pub async fn read(client: &zookeeper_client::Client, base: &str, records: &str, rel: &str) -> Result<Side, Error> {
    let mut reader = client.new_multi_reader();
    reader.add_get_data(&join(base, rel))?;
    reader.add_get_data(&join(records, rel))?;
    let mut results = reader.commit().await?.into_iter();
    let mut next = || match results.next() {
        Some(MultiReadResult::Data { data, stat }) => Ok(Some((data, stat))),
        Some(MultiReadResult::Error { err: Error::NoNode }) => Ok(None),
        Some(MultiReadResult::Error { err }) => Err(err),
        other => Err(Error::UnexpectedError(format!(
            "unexpected multi-read result {other:?}"
        ))),
    };
    let node = next()?;
    let record_znode = next()?;
    Ok(Side {
        node,
        record_node: record_znode.as_ref().map(|(_, s)| *s),
        record: record_znode.and_then(|(data, _)| decode(&data)),
    })
}

/// Where one member keeps its records, for writes there.
pub struct Member<'a> {
    pub name: &'a str,
    pub records: &'a str,
    pub acl: &'a [zookeeper_client::Acl],
}

/// What a member's watch saw of a path before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Nothing: only the records can tell.
    Nothing,
    /// A delete of a node that predates the record (or has none).
    Deleted,
    /// A delete of a node created at this zxid: a tombstone written before
    /// it is an older delete's.
    DeletedCreatedAt(i64),
}

/// Whether `side` is a delete in its member that has no stamp yet: the
/// node is gone and the record (if any) is no tombstone, or is the
/// tombstone of an older delete; a node gone without a record only counts
/// when a watch saw the delete.
pub fn unstamped_delete(side: &Side, seen: Seen) -> bool {
    if side.node.is_some() {
        return false;
    }
    match (&side.record, seen) {
        (Some(r), Seen::DeletedCreatedAt(czxid)) if r.deleted => side.record_node.is_some_and(|s| s.mzxid < czxid),
        (Some(r), _) => !r.deleted,
        (None, seen) => seen != Seen::Nothing,
    }
}

/// Stamps a delete made in `member`: writes its tombstone, whose own
/// server time is the delete's time (ZooKeeper keeps none). Checked
/// against the record read (`side`), so of everyone who sees the delete —
/// the stampers of every instance, the pairs from the member — one writes
/// it; a lost race is `Ok` (read again to see the winner's).
pub async fn stamp_delete(
    client: &zookeeper_client::Client,
    member: &Member<'_>,
    rel: &str,
    side: &Side,
) -> Result<(), Error> {
    use crate::checkpoint::persistent;
    let path = join(member.records, rel);
    let record = OriginRecord {
        origin: member.name.to_string(),
        mtime_ms: None,
        zxid: None,
        deleted: true,
    };
    let data = encode(&record);
    let written = match &side.record_node {
        Some(stat) => client.set_data(&path, &data, Some(stat.version)).await.map(drop),
        None => client.create(&path, &data, &persistent(member.acl)).await.map(drop),
    };
    match written {
        Ok(()) | Err(Error::BadVersion | Error::NodeExists) => Ok(()),
        Err(Error::NoNode) => {
            // The record's anchors are missing: made (empty), then the
            // caller reads and stamps again.
            ensure_anchor(client, member.records, rel, member.acl).await
        }
        Err(e) => Err(e),
    }
}

/// Makes the record znodes above `rel`'s (empty: they hold no record),
/// after a write of its record found them missing.
pub async fn ensure_anchor(
    client: &zookeeper_client::Client,
    records: &str,
    rel: &str,
    acl: &[zookeeper_client::Acl],
) -> Result<(), Error> {
    match crate::path::parent(rel) {
        Some(up) => crate::checkpoint::ensure_path(client, &join(records, up), acl).await,
        None => Ok(()),
    }
}

/// A scanned record znode still anchoring nothing: a tombstone older than
/// `ttl_ms` whose node is gone, with no records below it. Collected.
pub fn collectable(records: &Tree, data: &Tree, rel: &str, now_ms: i64, ttl_ms: i64) -> Option<i32> {
    let node: &NodeState = records.get(rel)?;
    let record = decode(&node.data)?;
    let time = record.mtime_ms.unwrap_or(node.stat.mtime);
    let gone = !data.contains_key(rel);
    (record.deleted && gone && node.stat.num_children == 0 && !rel.is_empty() && now_ms - time > ttl_ms)
        .then_some(node.stat.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mzxid: i64, mtime: i64) -> Stat {
        Stat {
            czxid: mzxid,
            mzxid,
            pzxid: mzxid,
            ctime: mtime,
            mtime,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: 0,
            data_length: 0,
            num_children: 0,
        }
    }

    #[test]
    fn a_tombstone_stamped_where_the_delete_happened_takes_its_own_time() {
        let side = Side {
            node: None,
            record_node: Some(stat(40, 1_234)),
            record: Some(OriginRecord {
                origin: "east".into(),
                mtime_ms: None,
                zxid: None,
                deleted: true,
            }),
        };
        assert_eq!(
            side.version("east"),
            Version::Deleted(Stamp {
                mtime_ms: 1_234,
                origin: "east".into(),
                zxid: 40
            })
        );
        let round_trip = decode(&encode(side.record.as_ref().unwrap()));
        assert_eq!(round_trip, side.record);
        assert_eq!(
            encode(side.record.as_ref().unwrap()),
            br#"{"origin":"east","deleted":true}"#
        );
    }

    #[test]
    fn a_node_gone_without_a_record_is_a_delete_only_when_the_watch_saw_it() {
        let side = Side::default();
        assert_eq!(side.version("east"), Version::Absent);
        assert!(unstamped_delete(&side, Seen::Deleted));
        assert!(
            !unstamped_delete(&side, Seen::Nothing),
            "never there, as far as anyone knows"
        );
        let stamped = Side {
            record_node: Some(stat(4, 5)),
            record: Some(carried(
                &Stamp {
                    mtime_ms: 5,
                    origin: "east".into(),
                    zxid: 4,
                },
                true,
            )),
            ..Side::default()
        };
        assert!(!unstamped_delete(&stamped, Seen::Deleted), "already a tombstone");
        assert!(
            unstamped_delete(&stamped, Seen::DeletedCreatedAt(9)),
            "created again over the tombstone, then deleted: a new delete"
        );
        assert!(
            !unstamped_delete(&stamped, Seen::DeletedCreatedAt(3)),
            "the tombstone came after the node: it is this delete's (carried)"
        );
    }

    #[test]
    fn a_record_speaks_for_its_node_while_they_share_a_zxid() {
        let stamp = Stamp {
            mtime_ms: 10,
            origin: "west".into(),
            zxid: 3,
        };
        let mut side = Side {
            node: Some((b"v".to_vec(), stat(50, 20))),
            record_node: Some(stat(50, 20)),
            record: Some(carried(&stamp, false)),
        };
        assert_eq!(side.version("east"), Version::Present(stamp.clone()));
        assert_eq!(side.prior(), None);
        side.node = Some((b"w".to_vec(), stat(60, 30)));
        assert_eq!(
            side.version("east"),
            Version::Present(Stamp {
                mtime_ms: 30,
                origin: "east".into(),
                zxid: 60
            })
        );
        assert_eq!(side.prior(), Some(stamp));
        assert_eq!(decode(b"not json"), None, "an unreadable record counts as none");
    }
}
