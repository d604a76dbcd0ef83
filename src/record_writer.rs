//! zkbridge's own periodic records in one ensemble — route heartbeats and
//! progress — written together, a `multi` at a time.
//!
//! Each route writes its heartbeat every interval and each route/target
//! its progress after every checkpoint: at 100 routes of two targets and a
//! 200 ms interval, 1,500 transactions a second into the source, more than
//! a busy application's own writes. Every one is a request the server
//! orders, logs and syncs, and the routes' reads of changed nodes wait
//! behind them on the shared session. Written as they come, while the
//! previous batch is in flight, they become a few `multi`s a second
//! whatever the route count (group commit: no timer, so a lone record
//! waits for nothing but the batch ahead of it).
//!
//! Each record still gets its own reply zxid — all ops of one `multi`
//! share the transaction's — which is what a heartbeat's barrier needs. A
//! record is written on the very session (the `Client`) its caller passes:
//! a heartbeat's barrier is only sound on the session whose watch it
//! drains, so records of different sessions never share a `multi`.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{Acl, Client, Error, MultiWriteError, MultiWriteResult};

use crate::checkpoint::put_bytes;

/// Records in one `multi` at most: a batch stays far below the server's
/// 1 MiB request limit (`jute.maxbuffer`), which would drop the connection.
const MAX_RECORDS: usize = 1_000;
const MAX_BYTES: usize = 512 * 1024;

/// Hands records to the ensemble's writer task. Cheap to clone; the task
/// ends when the last handle is dropped.
#[derive(Clone)]
pub struct RecordWriter {
    requests: mpsc::UnboundedSender<Record>,
}

/// One record to write, and who waits for its zxid.
struct Record {
    client: Client,
    path: String,
    data: Vec<u8>,
    done: oneshot::Sender<Result<i64, Error>>,
}

impl RecordWriter {
    /// Starts the writer of an ensemble whose new records get `acl`.
    pub fn start(acl: Vec<Acl>) -> RecordWriter {
        let (requests, pending) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(pending, acl));
        RecordWriter { requests }
    }

    /// Writes `value` as JSON to `path` on `client`'s session, creating the
    /// node and its parents when missing; returns the write's zxid.
    pub async fn put_json(&self, client: &Client, path: &str, value: &impl serde::Serialize) -> Result<i64, Error> {
        let (done, reply) = oneshot::channel();
        let record = Record {
            client: client.clone(),
            path: path.to_string(),
            data: serde_json::to_vec(value).expect("JSON of plain structs"),
            done,
        };
        if self.requests.send(record).is_err() {
            return Err(Error::ClientClosed);
        }
        reply.await.unwrap_or(Err(Error::ClientClosed))
    }
}

/// The writer task: takes every record waiting (up to the bounds), writes
/// each session's in one `multi`, answers, and goes again.
async fn write_batches(mut pending: mpsc::UnboundedReceiver<Record>, acl: Vec<Acl>) {
    let mut carried: Option<Record> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match pending.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut bytes = first.path.len() + first.data.len();
        let mut batch = vec![first];
        while batch.len() < MAX_RECORDS {
            let Ok(next) = pending.try_recv() else { break };
            bytes += next.path.len() + next.data.len();
            if bytes > MAX_BYTES {
                carried = Some(next);
                break;
            }
            batch.push(next);
        }
        let mut by_session: BTreeMap<i64, Vec<Record>> = BTreeMap::new();
        for record in batch {
            by_session.entry(record.client.session_id().0).or_default().push(record);
        }
        for records in by_session.into_values() {
            write_together(records, &acl).await;
        }
    }
}

/// Writes records of one session in one `multi`; when one of them fails,
/// each on its own.
async fn write_together(records: Vec<Record>, acl: &[Acl]) {
    let client = records[0].client.clone();
    let mut multi = client.new_multi_writer();
    for r in &records {
        if multi.add_set_data(&r.path, &r.data, None).is_err() {
            // A path the client refuses: that record's own write reports
            // it, and the others are written.
            return write_each(records, acl).await;
        }
    }
    match multi.commit().await {
        Ok(results) => {
            for (r, result) in records.into_iter().zip(results) {
                let zxid = match result {
                    MultiWriteResult::SetData { stat } => Ok(stat.mzxid),
                    _ => Err(Error::UnexpectedError("a set in a multi answered as another op".into())),
                };
                let _ = r.done.send(zxid);
            }
        }
        // A node missing (a route's first record), or one the server
        // refuses (its ACL changed by hand, say): each record on its own,
        // so only that one fails and every other route's goes on.
        Err(MultiWriteError::OperationFailed { .. }) => write_each(records, acl).await,
        // The request itself failed (connection, session): for all alike.
        Err(MultiWriteError::RequestFailed { source }) => {
            for r in records {
                let _ = r.done.send(Err(source.clone()));
            }
        }
    }
}

/// Each record on its own (pipelined on the session), creating what is
/// missing.
async fn write_each(records: Vec<Record>, acl: &[Acl]) {
    let writes = records.into_iter().map(|r| async move {
        let zxid = put_bytes(&r.client, &r.path, &r.data, acl).await;
        let _ = r.done.send(zxid);
    });
    futures::future::join_all(writes).await;
}
