//! Reading whole subtrees quickly: the initial sync, every resync and `diff`
//! start here.
//!
//! A scan is a walk whose frontier is read with batched `multi`
//! reads (get data + get children for up to `READ_BATCH` nodes each), many in
//! flight at once. One request per node would cap a scan at the round-trip
//! rate (~1,300 nodes/s here); batching and pipelining reach the server's rate.
//!
//! The frontier is taken from its newest end (deepest first): a node is
//! still read after its parent, yet the frontier holds about a batch's
//! children per level of depth rather than the widest level of the tree —
//! breadth-first, a million-node tree kept some 900,000 names waiting.

use std::collections::BTreeMap;

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;
use zookeeper_client::{Acl, Client, Error, MultiReadResult, Stat};

use crate::path::join;

/// Nodes read per `multi` read request (two ops each).
const READ_BATCH: usize = 100;

/// `ephemeral_owner` marking a node that could not be read (no permission):
/// a value no session id, container or TTL encoding takes.
const UNREADABLE: i64 = -2;

/// One node as read: data, stat and child names.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub data: Vec<u8>,
    pub stat: Stat,
    pub children: Vec<String>,
}

impl NodeState {
    /// A node known to exist (listed by its parent) but not read.
    pub fn unread() -> Self {
        let stat = Stat {
            czxid: -1,
            mzxid: -1,
            pzxid: -1,
            ctime: 0,
            mtime: 0,
            version: -1,
            cversion: -1,
            aversion: -1,
            ephemeral_owner: -1,
            data_length: 0,
            num_children: 0,
        };
        NodeState {
            data: Vec::new(),
            stat,
            children: Vec::new(),
        }
    }

    /// A node the session may not read (NoAuth): its data, type and
    /// children are unknown, so nothing about its target twin may be decided.
    pub fn unreadable() -> Self {
        let mut node = NodeState::unread();
        node.stat.ephemeral_owner = UNREADABLE;
        node
    }

    /// Listed by its parent but not read: the scan did not descend there
    /// (excluded), so only its existence is known.
    pub fn is_listed_only(&self) -> bool {
        self.stat.ephemeral_owner == -1
    }

    pub fn is_unreadable(&self) -> bool {
        self.stat.ephemeral_owner == UNREADABLE
    }

    pub fn is_ephemeral(&self) -> bool {
        owned_by_a_session(self.stat.ephemeral_owner)
    }
}

/// Whether an `ephemeralOwner` is a real session id. Container nodes
/// (0x8000…) and TTL nodes (0xFF…) are encoded there too, and -1 marks an
/// entry recorded without being read (see `scan_from`).
pub fn owned_by_a_session(owner: i64) -> bool {
    owner != 0 && owner != -1 && owner != UNREADABLE && owner != i64::MIN && (owner as u64) >> 56 != 0xff
}

/// A subtree, keyed by path relative to its root (`""` is the root itself,
/// `"a/b"` a descendant). Ordered so that parents come before children.
pub type Tree = BTreeMap<String, NodeState>;

/// Reads the subtree at `base`, descending only into nodes for which
/// `descend(relative)` holds (the node itself is still read). A missing root
/// gives an empty tree; nodes deleted while the scan runs are left out (the
/// caller's watch reports them).
pub async fn scan(
    client: &Client,
    base: &str,
    max_in_flight: usize,
    descend: impl Fn(&str) -> bool,
) -> Result<Tree, Error> {
    scan_from(client, base, vec![String::new()], max_in_flight, descend).await
}

/// Hands each node of the subtree at `base` to `sink` as soon as it is
/// read, a parent before its children, and keeps none of it: a copy that
/// writes while it reads holds only what its writer has not taken yet,
/// whatever the tree's size. Nodes listed by their parent but not descended
/// into (`descend` says no) come as [`NodeState::is_listed_only`].
///
/// `backlog` bounds how far the scan runs ahead of its consumer: a read
/// takes one permit per node, a node the sink hands on (it returns `true`)
/// keeps its permit until the consumer adds it back, and the others give
/// theirs back at once. Without it, a scan faster than the writes (any
/// remote target) would hold every payload of the tree in the queue. A
/// closed semaphore lifts the bound (the consumer has stopped). It must
/// hold more than `(max_in_flight + 1) × READ_BATCH` permits.
pub async fn scan_streaming(
    client: &Client,
    base: &str,
    max_in_flight: usize,
    backlog: &Semaphore,
    descend: impl Fn(&str) -> bool,
    sink: impl FnMut(String, NodeState) -> bool,
) -> Result<(), Error> {
    let gate = Gate {
        backlog: Some(backlog),
        pause: None,
    };
    scan_inner(client, base, vec![String::new()], max_in_flight, gate, descend, sink).await
}

/// The most nodes a streaming scan may read ahead of its consumer with
/// `max_in_flight` reads: `ahead` beyond what its reads in flight hold.
pub fn backlog_permits(max_in_flight: usize, ahead: usize) -> usize {
    (max_in_flight + 1) * READ_BATCH + ahead
}

/// What holds a scan back: a consumer's backlog, a pace, or nothing.
#[derive(Clone, Copy, Default)]
struct Gate<'a> {
    backlog: Option<&'a Semaphore>,
    pause: Option<std::time::Duration>,
}

/// Like [`scan_from`], at no more than `nodes_per_s` nodes per second: one
/// multi-read at a time, spaced out. For background passes that must not
/// compete with the ensemble's clients. Payloads are replaced by a 128-bit
/// digest as they arrive — enough to tell equal from different, and a pass
/// over two trees then holds neither tree's data.
pub async fn scan_paced(
    client: &Client,
    base: &str,
    roots: Vec<String>,
    nodes_per_s: u32,
    descend: impl Fn(&str) -> bool,
) -> Result<Tree, Error> {
    let mut tree = Tree::new();
    scan_inner(client, base, roots, 1, paced(nodes_per_s), descend, |rel, node| {
        let mut node = digested(node);
        // Already queued for reading; a pass compares nodes, not lists.
        node.children = Vec::new();
        keep(&mut tree, rel, node)
    })
    .await?;
    Ok(tree)
}

/// The nodes at `rels` with their child lists, payloads as digests, paced
/// like [`scan_paced`]: one level of a tree, for a pass that picks where to
/// split it. Nodes that do not exist are left out.
pub async fn read_level_paced(
    client: &Client,
    base: &str,
    rels: Vec<String>,
    nodes_per_s: u32,
) -> Result<Vec<(String, NodeState)>, Error> {
    let mut level = Vec::with_capacity(rels.len());
    scan_inner(
        client,
        base,
        rels,
        1,
        paced(nodes_per_s),
        |_| false,
        |rel, node| {
            if !node.is_listed_only() {
                level.push((rel, digested(node)));
            }
            false
        },
    )
    .await?;
    Ok(level)
}

/// The node with its payload replaced by the payload's digest (a node only
/// listed has no payload to digest).
fn digested(mut node: NodeState) -> NodeState {
    if !node.is_listed_only() {
        node.data = digest(&node.data).to_vec();
    }
    node
}

fn paced(nodes_per_s: u32) -> Gate<'static> {
    Gate {
        backlog: None,
        pause: Some(std::time::Duration::from_secs_f64(
            READ_BATCH as f64 / nodes_per_s.max(1) as f64,
        )),
    }
}

/// Records a scanned node in `tree`. A node only listed (not descended
/// into) never replaces one that was read. Never holds a backlog permit.
fn keep(tree: &mut Tree, rel: String, node: NodeState) -> bool {
    if node.is_listed_only() {
        tree.entry(rel).or_insert(node);
    } else {
        tree.insert(rel, node);
    }
    false
}

/// A 128-bit digest of a payload (two SipHash passes with different keys):
/// for comparing payloads without keeping them.
pub fn digest(data: &[u8]) -> [u8; 16] {
    use std::hash::{Hash, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i as u8, data).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Like [`scan`], starting from several relative roots at once.
pub async fn scan_from(
    client: &Client,
    base: &str,
    roots: Vec<String>,
    max_in_flight: usize,
    descend: impl Fn(&str) -> bool,
) -> Result<Tree, Error> {
    let mut tree = Tree::new();
    scan_inner(
        client,
        base,
        roots,
        max_in_flight,
        Gate::default(),
        descend,
        |rel, node| keep(&mut tree, rel, node),
    )
    .await?;
    Ok(tree)
}

async fn scan_inner(
    client: &Client,
    base: &str,
    roots: Vec<String>,
    max_in_flight: usize,
    gate: Gate<'_>,
    descend: impl Fn(&str) -> bool,
    mut sink: impl FnMut(String, NodeState) -> bool,
) -> Result<(), Error> {
    let mut frontier: Vec<String> = roots;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < max_in_flight.max(1) && !frontier.is_empty() {
            let take = frontier.len().min(READ_BATCH);
            if let Some(backlog) = gate.backlog {
                // Closed: the consumer is gone, nothing to hold back for.
                if let Ok(permits) = backlog.acquire_many(take as u32).await {
                    permits.forget();
                }
            }
            let chunk: Vec<String> = frontier.split_off(frontier.len() - take);
            let mut reader = client.new_multi_reader();
            for rel in &chunk {
                let path = join(base, rel);
                reader.add_get_data(&path)?;
                reader.add_get_children(&path)?;
            }
            let commit = reader.commit();
            in_flight.push(async move { (chunk, commit.await) });
        }
        let Some((chunk, results)) = in_flight.next().await else {
            break;
        };
        if let Some(pause) = gate.pause {
            tokio::time::sleep(pause).await;
        }
        let mut results = results?.into_iter();
        let mut handed_on = 0;
        let read = chunk.len();
        for rel in chunk {
            let (data, children) = (results.next(), results.next());
            match (data, children) {
                (Some(MultiReadResult::Data { data, stat }), Some(MultiReadResult::Children { mut children })) => {
                    children.sort_unstable();
                    for child in &children {
                        let child_rel = crate::path::child(&rel, child);
                        if descend(&child_rel) {
                            frontier.push(child_rel);
                        } else {
                            // Still report that the child exists so callers can
                            // tell "excluded" from "absent".
                            sink(child_rel, NodeState::unread());
                        }
                    }
                    handed_on += usize::from(sink(rel, NodeState { data, stat, children }));
                }
                (Some(MultiReadResult::Error { err: Error::NoNode }), _)
                | (_, Some(MultiReadResult::Error { err: Error::NoNode })) => {}
                (Some(MultiReadResult::Error { err: Error::NoAuth }), _)
                | (_, Some(MultiReadResult::Error { err: Error::NoAuth })) => {
                    // Recorded, not descended into: the caller reports it
                    // and leaves its target twin (and subtree) alone.
                    sink(rel, NodeState::unreadable());
                }
                (Some(MultiReadResult::Error { err }), _) | (_, Some(MultiReadResult::Error { err })) => {
                    return Err(err)
                }
                other => {
                    return Err(Error::UnexpectedError(format!(
                        "unexpected multi-read results {other:?}"
                    )))
                }
            }
        }
        if let Some(backlog) = gate.backlog {
            backlog.add_permits(read - handed_on);
        }
    }
    Ok(())
}

/// Reads data and stat of several nodes in pipelined `multi` reads; `None`
/// for nodes that do not exist.
pub async fn read_nodes(
    client: &Client,
    base: &str,
    rels: &[String],
    max_in_flight: usize,
) -> Result<Vec<Option<(Vec<u8>, Stat)>>, Error> {
    let mut out = Vec::with_capacity(rels.len());
    let mut chunks = rels.chunks(READ_BATCH * 2);
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < max_in_flight.max(1) {
            let Some(chunk) = chunks.next() else { break };
            let mut reader = client.new_multi_reader();
            for rel in chunk {
                reader.add_get_data(&join(base, rel))?;
            }
            in_flight.push_back(reader.commit());
        }
        let Some(results) = in_flight.next().await else { break };
        for result in results? {
            out.push(match result {
                MultiReadResult::Data { data, stat } => Some((data, stat)),
                MultiReadResult::Error { err: Error::NoNode } => None,
                MultiReadResult::Error { err: Error::NoAuth } => {
                    let n = NodeState::unreadable();
                    Some((n.data, n.stat))
                }
                MultiReadResult::Error { err } => return Err(err),
                other => {
                    return Err(Error::UnexpectedError(format!(
                        "unexpected multi-read result {other:?}"
                    )))
                }
            });
        }
    }
    Ok(out)
}

/// Reads the ACLs of several nodes, pipelined (ZooKeeper has no multi-read
/// for ACLs); `None` for nodes that do not exist or whose ACL this session
/// may not read.
pub async fn read_acls(
    client: &Client,
    base: &str,
    rels: &[String],
    max_in_flight: usize,
) -> Result<Vec<Option<Vec<Acl>>>, Error> {
    let mut out = Vec::with_capacity(rels.len());
    let mut pending = rels.iter();
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < max_in_flight.max(1) * READ_BATCH {
            let Some(rel) = pending.next() else { break };
            in_flight.push_back(client.get_acl(&join(base, rel)));
        }
        let Some(result) = in_flight.next().await else { break };
        out.push(match result {
            Ok((acl, _)) => Some(acl),
            Err(Error::NoNode | Error::NoAuth) => None,
            Err(e) => return Err(e),
        });
    }
    Ok(out)
}

/// A node for unit tests: `data`, zxids `(czxid, mzxid, pzxid)`, ephemeral
/// owner `owner` (0: persistent).
#[cfg(test)]
pub(crate) fn test_node(data: &str, (czxid, mzxid, pzxid): (i64, i64, i64), owner: i64) -> NodeState {
    NodeState {
        data: data.as_bytes().to_vec(),
        stat: Stat {
            czxid,
            mzxid,
            pzxid,
            ctime: 0,
            mtime: 0,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: owner,
            data_length: data.len() as i32,
            num_children: 0,
        },
        children: vec![],
    }
}
