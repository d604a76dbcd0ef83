//! zkbridge's own znodes (design §2): ensemble identity, heartbeats in the
//! source, checkpoints in the target, progress back in the source.
//!
//! A checkpoint says "every source change up to zxid C is applied in this
//! target". It is only ever written *after* the data it covers is committed,
//! so after a crash at any instant the target holds at least what the
//! checkpoint claims; a restart re-reconciles everything after C, which is
//! idempotent. See docs/architecture.md ("Checkpoints").

use serde::{Deserialize, Serialize};
use zookeeper_client::{Acl, Acls, Client, CreateMode, CreateOptions, Error, Stat};

/// Create options for a persistent node with the ensemble's ACL.
pub fn persistent(acl: &[Acl]) -> CreateOptions<'_> {
    CreateMode::Persistent.with_acls(Acls::new(acl))
}

/// The ensemble's identity, created once (a UUID) and read ever after. A
/// rebuilt ensemble gets a new one, which invalidates checkpoints against it.
pub async fn ensemble_id(client: &Client, meta: &str, acl: &[Acl]) -> Result<String, Error> {
    let options = persistent(acl);
    let path = crate::znodes::ensemble_id_path(meta);
    loop {
        match client.get_data(&path).await {
            Ok((data, _)) => return Ok(String::from_utf8_lossy(&data).into_owned()),
            Err(Error::NoNode) => {}
            Err(e) => return Err(e),
        }
        ensure_path(client, meta, acl).await?;
        let id = uuid::Uuid::new_v4().to_string();
        match client.create(&path, id.as_bytes(), &options).await {
            Ok(_) => return Ok(id),
            // Another instance won the race: read theirs.
            Err(Error::NodeExists) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes JSON to `path`, creating it (and its parents) when missing.
/// Returns the zxid of the write.
pub async fn put_json(client: &Client, path: &str, value: &impl Serialize, acl: &[Acl]) -> Result<i64, Error> {
    let data = serde_json::to_vec(value).expect("JSON of plain structs");
    put_bytes(client, path, &data, acl).await
}

/// [`put_json`] of bytes already encoded.
pub async fn put_bytes(client: &Client, path: &str, data: &[u8], acl: &[Acl]) -> Result<i64, Error> {
    match client.set_data(path, data, None).await {
        Ok(stat) => Ok(stat.mzxid),
        Err(Error::NoNode) => match create_with_parents(client, path, data, acl).await {
            Ok(stat) if !stat.is_invalid() => Ok(stat.mzxid),
            Ok(_) | Err(Error::NodeExists) => Ok(client.set_data(path, data, None).await?.mzxid),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Creates persistent `path` with `data`, and its missing parents. Unlike
/// [`put_json`], an existing node is an error (`NodeExists`): for markers
/// and records whose existence means something.
pub async fn create_with_parents(client: &Client, path: &str, data: &[u8], acl: &[Acl]) -> Result<Stat, Error> {
    let options = persistent(acl);
    match client.create(path, data, &options).await {
        Err(Error::NoNode) => {
            if let Some(parent) = crate::path::parent_absolute(path) {
                ensure_path(client, parent, acl).await?;
            }
            client.create(path, data, &options).await.map(|(stat, _)| stat)
        }
        created => created.map(|(stat, _)| stat),
    }
}

/// Makes persistent `path` and its missing parents, all empty; one that
/// exists already is fine.
pub async fn ensure_path(client: &Client, path: &str, acl: &[Acl]) -> Result<(), Error> {
    match client.mkdir(path, &persistent(acl)).await {
        Ok(()) | Err(Error::NodeExists) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a JSON znode; `None` when it does not exist or does not parse
/// (a damaged checkpoint means a full resync, never a guess).
pub async fn get_json<T: for<'de> Deserialize<'de>>(client: &Client, path: &str) -> Result<Option<T>, Error> {
    match client.get_data(path).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
        Err(Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}
