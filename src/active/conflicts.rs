//! The conflict log of an active-active route (design §7): in each member,
//! the changes that lost there under last-writer-wins, as sequential nodes
//! under `znodes::conflicts_dir`, oldest collected beyond [`KEPT`].

use zookeeper_client::{Client, Error};

use crate::znodes::{conflicts_dir, ConflictRecord};

/// Entries kept per member: enough to see a pattern, bounded so that a
/// hot key written everywhere at once cannot fill an ensemble.
pub const KEPT: usize = 1000;

/// One entry, with the sequence number that orders it within its member.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub sequence: u64,
    #[serde(flatten)]
    pub record: ConflictRecord,
}

/// The entries one member keeps, oldest first. Entries that do not parse
/// are skipped (the log informs; it decides nothing).
pub async fn list(client: &Client, meta: &str, route: &str) -> Result<Vec<Entry>, Error> {
    let dir = conflicts_dir(meta, route);
    let mut names = match client.list_children(&dir).await {
        Ok(names) => names,
        Err(Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    names.sort_unstable();
    let mut entries = Vec::new();
    for name in names {
        let Some(sequence) = sequence_of(&name) else { continue };
        match client.get_data(&crate::path::child(&dir, &name)).await {
            Ok((data, _)) => {
                if let Ok(record) = serde_json::from_slice(&data) {
                    entries.push(Entry { sequence, record });
                }
            }
            Err(Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(entries)
}

/// Deletes the oldest entries beyond [`KEPT`] in one member.
pub async fn trim(client: &Client, meta: &str, route: &str) -> Result<usize, Error> {
    let dir = conflicts_dir(meta, route);
    let mut names = match client.list_children(&dir).await {
        Ok(names) => names,
        Err(Error::NoNode) => return Ok(0),
        Err(e) => return Err(e),
    };
    if names.len() <= KEPT {
        return Ok(0);
    }
    names.sort_unstable();
    let surplus = names.len() - KEPT;
    for name in &names[..surplus] {
        match client.delete(&crate::path::child(&dir, name), None).await {
            Ok(()) | Err(Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(surplus)
}

/// The sequence number ZooKeeper appended to `c-`.
fn sequence_of(name: &str) -> Option<u64> {
    name.strip_prefix("c-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_are_ordered_by_the_sequence_zookeeper_gave_them() {
        assert_eq!(super::sequence_of("c-0000000012"), Some(12));
        assert_eq!(super::sequence_of("other"), None);
    }
}
