//! An old primary's divergent tail (design §6): what it accepted after the
//! last position the new primary had applied from it. When it comes back
//! with a lower epoch, every such node — created, changed or deleted — is
//! archived under `divergent/<epoch>` in the new primary's `meta_path`
//! before the old primary is reconciled to the new one, so that nothing an
//! application wrote is dropped without a record.

use base64::Engine;
use zookeeper_client::{Client, Error};

use crate::checkpoint::{create_with_parents, get_json};
use crate::config::Route;
use crate::path::{join, parent};
use crate::tree::Tree;
use crate::znodes::{
    checkpoint_path, divergent_dir, ensemble_id_path, role_path, Checkpoint, DivergentOp, DivergentRecord,
};

/// Each archive znode stays well under `jute.maxbuffer`.
const CHUNK_BYTES: usize = 512 * 1024;

/// The divergent tail of `old` (a member that was primary at `old_epoch`)
/// against `new` (the current primary), given:
/// - `applied`: the source zxid of `old` up to which `new` had applied it
///   (its checkpoint), `-1` when unknown — then everything `old` holds is
///   kept;
/// - `promoted`: `new`'s zxid at its promotion; nodes it holds from before
///   it, and `old` no longer does, were deleted in `old` after `applied`.
pub fn tail(
    route: &Route,
    old: &Tree,
    old_base: &str,
    new: &Tree,
    applied: i64,
    promoted: i64,
) -> Vec<DivergentRecord> {
    let mut records = Vec::new();
    for (rel, node) in old {
        if !crate::plan::is_mirrored(route, rel, node) || node.stat.mzxid <= applied {
            continue;
        }
        let op = if node.stat.czxid > applied {
            DivergentOp::Create
        } else {
            DivergentOp::Set
        };
        records.push(DivergentRecord {
            path: join(old_base, rel),
            op,
            data_b64: Some(base64::engine::general_purpose::STANDARD.encode(&node.data)),
            mzxid: node.stat.mzxid,
            mtime_ms: node.stat.mtime,
        });
    }
    for (rel, node) in new {
        if old.contains_key(rel) || !route.filter.managed(rel) || node.stat.czxid > promoted {
            continue;
        }
        // Deleted in the old primary: when exactly is not kept by ZooKeeper;
        // the parent's last child change is the closest zxid there is.
        let parent_pzxid = parent(rel).and_then(|p| old.get(p)).map(|p| p.stat.pzxid).unwrap_or(-1);
        if parent_pzxid != -1 && parent_pzxid <= applied {
            continue;
        }
        records.push(DivergentRecord {
            path: join(old_base, rel),
            op: DivergentOp::Delete,
            data_b64: None,
            mzxid: parent_pzxid,
            mtime_ms: 0,
        });
    }
    records
}

/// A route member with a session on it.
#[derive(Clone, Copy)]
pub struct Member<'a> {
    pub name: &'a str,
    pub client: &'a Client,
    /// The ACL of zkbridge's own znodes there.
    pub acl: &'a [zookeeper_client::Acl],
}

/// Archives the divergent tail of member `old` against the current primary
/// `new` and returns how many nodes it holds. The caller retries while the
/// new primary is unreachable: the old primary is not demoted before.
pub async fn archive(
    route: &Route,
    meta: &str,
    old: Member<'_>,
    new: Member<'_>,
    old_epoch: u64,
    max_in_flight: usize,
) -> Result<usize, Error> {
    let (
        Member {
            name: old,
            client: old_client,
            ..
        },
        Member {
            name: new,
            client: new_client,
            acl: new_acl,
        },
    ) = (old, new);
    let (old_ep, new_ep) = (
        route.member(old).expect("a member"),
        route.member(new).expect("a member"),
    );
    let old_id: Option<String> = match old_client.get_data(&ensemble_id_path(meta)).await {
        Ok((data, _)) => String::from_utf8(data).ok(),
        Err(Error::NoNode) => None,
        Err(e) => return Err(e),
    };
    let checkpoint: Option<Checkpoint> = get_json(new_client, &checkpoint_path(meta, route.name(), new)).await?;
    let applied = match (checkpoint, old_id) {
        (Some(c), Some(id)) if c.source_ensemble_id == id => c.source_zxid,
        _ => -1,
    };
    let promoted = new_client
        .check_stat(&role_path(meta, route.name()))
        .await?
        .map(|s| s.mzxid)
        .unwrap_or(i64::MAX);
    let excluded = |rel: &str| !route.filter.excluded(rel);
    let old_tree = crate::tree::scan(old_client, &old_ep.path, max_in_flight, excluded).await?;
    let new_tree = crate::tree::scan(new_client, &new_ep.path, max_in_flight, excluded).await?;
    let records = tail(route, &old_tree, &old_ep.path, &new_tree, applied, promoted);
    let dir = divergent_dir(meta, route.name(), old_epoch);
    let acl = crate::role::store::acl(new_acl);
    for (n, part) in crate::role::chunks_by_json(&records, CHUNK_BYTES).iter().enumerate() {
        let data = serde_json::to_vec(part).expect("JSON of plain records");
        // Another instance may have archived the same tail first.
        match create_with_parents(new_client, &format!("{dir}/{old}-{n:06}"), &data, &acl).await {
            Ok(_) | Err(Error::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records.len())
}

/// Every archived record under `meta_path` of `client`, with its epoch.
pub async fn list(client: &Client, meta: &str, route: &str) -> Result<Vec<(u64, DivergentRecord)>, Error> {
    let root = format!("{meta}/routes/{route}/divergent");
    let epochs = match client.list_children(&root).await {
        Ok(e) => e,
        Err(Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for epoch in epochs {
        let Ok(n) = epoch.parse::<u64>() else { continue };
        let dir = format!("{root}/{epoch}");
        let mut parts = client.list_children(&dir).await?;
        parts.sort();
        for part in parts {
            let records: Option<Vec<DivergentRecord>> = get_json(client, &format!("{dir}/{part}")).await?;
            out.extend(records.unwrap_or_default().into_iter().map(|r| (n, r)));
        }
    }
    out.sort_by(|a, b| (a.0, &a.1.path).cmp(&(b.0, &b.1.path)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::test_node;

    fn route() -> Route {
        (*crate::config::test_route("")).clone()
    }

    #[test]
    fn the_tail_is_what_the_old_primary_changed_after_the_applied_position() {
        // Applied up to 10 from the old primary; the new one promoted at 50.
        let old: Tree = [
            ("", test_node("", (1, 1, 12), 0)),
            ("kept", test_node("same", (2, 5, 2), 0)),
            ("changed", test_node("late", (3, 11, 3), 0)),
            ("created", test_node("new", (12, 12, 12), 0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let new: Tree = [
            ("", test_node("", (40, 40, 60), 0)),
            ("kept", test_node("same", (41, 41, 41), 0)),
            ("changed", test_node("early", (42, 42, 42), 0)),
            ("deleted-late", test_node("x", (43, 43, 43), 0)),
            ("written-after-promotion", test_node("y", (55, 55, 55), 0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let tail = tail(&route(), &old, "/s", &new, 10, 50);
        let got: Vec<(&str, DivergentOp)> = tail.iter().map(|r| (r.path.as_str(), r.op)).collect();
        assert_eq!(
            got,
            [
                ("/s/changed", DivergentOp::Set),
                ("/s/created", DivergentOp::Create),
                ("/s/deleted-late", DivergentOp::Delete)
            ]
        );
        assert_eq!(tail[0].data_b64.as_deref(), Some("bGF0ZQ=="), "the old primary's data");
    }

    #[test]
    fn without_a_known_position_everything_is_kept() {
        let old: Tree = [("", test_node("", (1, 1, 1), 0)), ("a", test_node("a", (2, 2, 2), 0))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(tail(&route(), &old, "/s", &Tree::new(), -1, 0).len(), 2);
    }
}
