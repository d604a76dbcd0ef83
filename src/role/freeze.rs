//! A switchover's freeze (design §6): the primary's subtree is made
//! read-only for applications by setting the route's freeze ACL on every
//! node, after the exact original ACL of every node is recorded in
//! ZooKeeper beneath the `frozen` znode, so that it can be restored exactly
//! — on the old primary when the switchover aborts, on the new primary when
//! it completes.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use zookeeper_client::{Acl, Client, Error};

use crate::checkpoint::persistent;
use crate::config::{format_acl, parse_acl};
use crate::path::join;
use crate::znodes::{frozen_path, FrozenRecord};

/// `setACL` has no `multi`: one request per node, so many are kept in
/// flight; the server commits them in groups.
fn acl_requests(max_in_flight: usize) -> usize {
    (max_in_flight.max(1) * 64).min(2048)
}

/// How `restore` treats a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Read it first and leave it alone when it already has its ACL (an
    /// abort: a freeze that failed part-way did not reach every node, and
    /// some may be nodes zkbridge may not administer).
    IfChanged,
    /// Set it (the unfreeze of a new primary, whose nodes zkbridge made).
    Always,
}

/// Each record chunk stays well under `jute.maxbuffer`.
const CHUNK_BYTES: usize = 512 * 1024;

/// Original ACLs by path relative to the route root.
pub type AclRecord = BTreeMap<String, Vec<String>>;

/// A failed step of a freeze or restore, with the znode it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct NodeError {
    pub path: String,
    #[source]
    pub error: Error,
}

fn at(path: impl Into<String>) -> impl FnOnce(Error) -> NodeError {
    let path = path.into();
    move |error| NodeError { path, error }
}

/// What a freeze needs to know.
#[derive(Clone, Copy)]
pub struct Freeze<'a> {
    pub meta: &'a str,
    pub route: &'a str,
    /// The primary's path: every node beneath it is frozen.
    pub base: &'a str,
    /// The `frozen` znode's content (who is switching over to whom).
    pub record: &'a FrozenRecord,
    /// What every node gets while frozen (the route's `freeze_acl`).
    pub freeze_acl: &'a [Acl],
    /// The ACL of zkbridge's own znodes in the primary.
    pub meta_acl: &'a [Acl],
    pub max_in_flight: usize,
}

/// Freezes the subtree at `base`: records every node's ACL beneath the
/// `frozen` znode (created with `record`; `NodeExists` means another
/// switchover holds the route), then sets `freeze_acl` everywhere. Nodes
/// created while the freeze runs are found by another pass; once every
/// parent is frozen, none can be added. Returns the recorded ACLs and when
/// the first node was frozen (writes are refused from then on).
pub async fn freeze(client: &Client, freeze: &Freeze<'_>) -> Result<(AclRecord, std::time::Instant), NodeError> {
    let Freeze {
        meta,
        route,
        base,
        record,
        freeze_acl,
        meta_acl,
        max_in_flight,
    } = *freeze;
    let frozen = frozen_path(meta, route);
    let data = serde_json::to_vec(record).expect("JSON of a plain struct");
    crate::checkpoint::create_with_parents(client, &frozen, &data, meta_acl)
        .await
        .map_err(at(&frozen))?;
    let mut recorded = AclRecord::new();
    let mut chunk = 0;
    let mut first_frozen = None;
    loop {
        let tree = crate::tree::scan(client, base, max_in_flight, |_| true)
            .await
            .map_err(at(base))?;
        let new: Vec<String> = tree
            .keys()
            .filter(|rel| !recorded.contains_key(*rel))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok((recorded, first_frozen.unwrap_or_else(std::time::Instant::now)));
        }
        // Read, record, then freeze each node at the ACL version read: one
        // whose ACL an application changed in between is read again, so
        // the record always holds what the freeze replaced.
        let mut pending = new;
        while !pending.is_empty() {
            let read = read_with_versions(client, base, &pending, max_in_flight).await?;
            let found: AclRecord = read.iter().map(|(rel, (acl, _))| (rel.clone(), acl.clone())).collect();
            for part in chunks(&found) {
                let data = serde_json::to_vec(&part).expect("JSON of plain maps");
                let path = format!("{frozen}/acls-{chunk:06}");
                client
                    .create(&path, &data, &persistent(meta_acl))
                    .await
                    .map_err(at(&path))?;
                chunk += 1;
            }
            first_frozen.get_or_insert_with(std::time::Instant::now);
            pending = freeze_at_versions(client, base, &read, freeze_acl, max_in_flight).await?;
            recorded.extend(found);
        }
    }
}

/// Each node's ACL (as text) and ACL version; nodes gone are left out.
async fn read_with_versions(
    client: &Client,
    base: &str,
    rels: &[String],
    max_in_flight: usize,
) -> Result<BTreeMap<String, (Vec<String>, i32)>, NodeError> {
    stream::iter(rels)
        .map(|rel| async move {
            let path = join(base, rel);
            match client.get_acl(&path).await {
                Ok((acl, stat)) => Ok(Some((
                    rel.clone(),
                    (acl.iter().map(format_acl).collect(), stat.aversion),
                ))),
                Err(Error::NoNode) => Ok(None),
                Err(e) => Err(at(path)(e)),
            }
        })
        .buffer_unordered(acl_requests(max_in_flight))
        .try_filter_map(|found| async move { Ok(found) })
        .try_collect()
        .await
}

/// Sets `acl` on every node of `read` at the ACL version read; returns the
/// nodes whose ACL changed since (to be read again).
async fn freeze_at_versions(
    client: &Client,
    base: &str,
    read: &BTreeMap<String, (Vec<String>, i32)>,
    acl: &[Acl],
    max_in_flight: usize,
) -> Result<Vec<String>, NodeError> {
    stream::iter(read)
        .map(|(rel, (_, aversion))| async move {
            let path = join(base, rel);
            match client.set_acl(&path, acl, Some(*aversion)).await {
                Ok(_) | Err(Error::NoNode) => Ok(None),
                Err(Error::BadVersion) => Ok(Some(rel.clone())),
                Err(e) => Err(at(path)(e)),
            }
        })
        .buffer_unordered(acl_requests(max_in_flight))
        .try_filter_map(|changed| async move { Ok(changed) })
        .try_collect()
        .await
}

/// The ACLs recorded at the freeze, or `None` when nothing is frozen.
pub async fn recorded(client: &Client, meta: &str, route: &str) -> Result<Option<(FrozenRecord, AclRecord)>, Error> {
    let frozen = frozen_path(meta, route);
    let record: FrozenRecord = match crate::checkpoint::get_json(client, &frozen).await? {
        Some(r) => r,
        None => return Ok(None),
    };
    let mut children = client.list_children(&frozen).await?;
    children.sort();
    let mut acls = AclRecord::new();
    for child in children {
        if let Some(part) = crate::checkpoint::get_json::<AclRecord>(client, &format!("{frozen}/{child}")).await? {
            acls.extend(part);
        }
    }
    Ok(Some((record, acls)))
}

/// Puts the recorded ACLs back on the nodes under `base`. A node that
/// already has its ACL is left alone (a freeze that failed part-way did
/// not reach it, and it may be one zkbridge may not administer); nodes gone
/// since are skipped.
pub async fn restore(
    client: &Client,
    base: &str,
    acls: &AclRecord,
    mode: Restore,
    max_in_flight: usize,
) -> Result<(), NodeError> {
    stream::iter(acls.iter().map(Ok))
        .try_for_each_concurrent(acl_requests(max_in_flight), |(rel, entries)| async move {
            let path = join(base, rel);
            if mode == Restore::IfChanged {
                match client.get_acl(&path).await {
                    Ok((now, _)) if now.iter().map(format_acl).collect::<Vec<_>>() == *entries => return Ok(()),
                    Ok(_) => {}
                    Err(Error::NoNode) => return Ok(()),
                    Err(e) => return Err(at(path)(e)),
                }
            }
            let acl: Vec<Acl> = entries
                .iter()
                .map(|e| parse_acl(e).expect("written by format_acl"))
                .collect();
            match client.set_acl(&path, &acl, None).await {
                Ok(_) | Err(Error::NoNode) => Ok(()),
                Err(e) => Err(at(path)(e)),
            }
        })
        .await
}

/// Sets `acl` on every node of `rels` under `base`.
pub async fn set_all<'a>(
    client: &Client,
    base: &str,
    rels: impl Iterator<Item = &'a String>,
    acl: &[Acl],
    max_in_flight: usize,
) -> Result<(), NodeError> {
    stream::iter(rels.map(Ok))
        .try_for_each_concurrent(acl_requests(max_in_flight), |rel| async move {
            let path = join(base, rel);
            match client.set_acl(&path, acl, None).await {
                Ok(_) | Err(Error::NoNode) => Ok(()),
                Err(e) => Err(at(path)(e)),
            }
        })
        .await
}

/// Removes the `frozen` znode and its records: the route is no longer
/// frozen.
pub async fn clear(client: &Client, meta: &str, route: &str) -> Result<(), NodeError> {
    let frozen = frozen_path(meta, route);
    let children = match client.list_children(&frozen).await {
        Ok(c) => c,
        Err(Error::NoNode) => return Ok(()),
        Err(e) => return Err(at(&frozen)(e)),
    };
    stream::iter(children)
        .map(|c| {
            let path = format!("{frozen}/{c}");
            async move {
                match client.delete(&path, None).await {
                    Ok(()) | Err(Error::NoNode) => Ok(()),
                    Err(e) => Err(at(path)(e)),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    match client.delete(&frozen, None).await {
        Ok(()) | Err(Error::NoNode) => Ok(()),
        Err(e) => Err(at(&frozen)(e)),
    }
}

/// Splits `acls` into parts whose JSON stays under [`CHUNK_BYTES`].
fn chunks(acls: &AclRecord) -> Vec<AclRecord> {
    crate::role::chunks_by_json(acls, CHUNK_BYTES)
        .into_iter()
        .map(|part| {
            part.into_iter()
                .map(|(rel, entries)| (rel.clone(), entries.clone()))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_chunked_under_the_limit_and_lose_nothing() {
        let acls: AclRecord = (0..40_000)
            .map(|i| (format!("node/{i:06}"), vec!["world:anyone:cdrwa".to_string()]))
            .collect();
        let parts = chunks(&acls);
        assert!(parts.len() > 1);
        for p in &parts {
            assert!(serde_json::to_vec(p).unwrap().len() < CHUNK_BYTES);
        }
        let joined: AclRecord = parts.into_iter().flatten().collect();
        assert_eq!(joined, acls);
    }
}
