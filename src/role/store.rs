//! Reading and writing role znodes.

use std::collections::BTreeMap;
use std::time::Duration;

use zookeeper_client::{Acl, Client, Error};

use super::Reading;
use crate::config::Route;
use crate::znodes::{role_path, RoleRecord};

/// How long one member's read may take before it counts as unreachable.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A session per member ensemble, or why there is none.
pub type Clients = BTreeMap<String, Result<Client, String>>;

/// What one member's role znode says.
pub async fn read(client: &Client, meta: &str, route: &str) -> Reading {
    let read = tokio::time::timeout(READ_TIMEOUT, client.get_data(&role_path(meta, route))).await;
    match read {
        Err(_) => Reading::Unreachable("no answer within 3 s".into()),
        Ok(Err(Error::NoNode)) => Reading::Missing,
        Ok(Err(e)) => Reading::Unreachable(e.to_string()),
        Ok(Ok((data, stat))) => match serde_json::from_slice::<RoleRecord>(&data) {
            Ok(record) => Reading::Record {
                record,
                version: stat.version,
            },
            // A record nobody can read decides nothing; the member is
            // treated as unreachable for roles (and reported) rather than
            // overwritten.
            Err(e) => Reading::Unreachable(format!("role znode is not a role record: {e}")),
        },
    }
}

/// What every member of `route` says, read at once.
pub async fn read_all(route: &Route, meta: &str, clients: &Clients) -> BTreeMap<String, Reading> {
    let reads = route.members().map(|m| async move {
        let reading = match clients.get(&m.ensemble) {
            Some(Ok(client)) => read(client, meta, route.name()).await,
            Some(Err(why)) => Reading::Unreachable(why.clone()),
            None => Reading::Unreachable("no session".into()),
        };
        (m.ensemble.clone(), reading)
    });
    futures::future::join_all(reads).await.into_iter().collect()
}

/// The role znode's ACL: the ensemble's, plus read for everyone, so that
/// applications can find the primary (design §6).
pub fn acl(ensemble_acl: &[Acl]) -> Vec<Acl> {
    let mut acl = ensemble_acl.to_vec();
    let world_reads = acl
        .iter()
        .any(|a| a.scheme() == "world" && a.id() == "anyone" && a.permission().has(zookeeper_client::Permission::READ));
    if !world_reads {
        acl.push(Acl::new(
            zookeeper_client::Permission::READ,
            zookeeper_client::AuthId::new("world", "anyone"),
        ));
    }
    acl
}

/// Creates the role znode (and its parents) with `record`. `NodeExists`
/// means another instance was first: the caller reads it again.
pub async fn create(client: &Client, meta: &str, route: &str, record: &RoleRecord, acl: &[Acl]) -> Result<(), Error> {
    let data = serde_json::to_vec(record).expect("JSON of a plain struct");
    crate::checkpoint::create_with_parents(client, &role_path(meta, route), &data, &self::acl(acl))
        .await
        .map(drop)
}

/// Replaces the role znode at `version` (a flip): refused with `BadVersion`
/// when someone else changed it since it was read.
pub async fn replace(
    client: &Client,
    meta: &str,
    route: &str,
    record: &RoleRecord,
    version: i32,
) -> Result<i64, Error> {
    let data = serde_json::to_vec(record).expect("JSON of a plain struct");
    let stat = client.set_data(&role_path(meta, route), &data, Some(version)).await?;
    Ok(stat.mzxid)
}
