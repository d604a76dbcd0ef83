//! Writing to the target: `multi` batches bounded in ops and bytes,
//! pipelined, fenced by the lease; a refused batch retried op by op and each
//! refusal sorted out.

use super::*;

impl Worker {
    /// Commits `ops` in pipelined `multi` batches bounded in ops and bytes,
    /// each fenced by the lease. A batch refused for a node-level reason is
    /// retried op by op, so one bad node cannot hold back the others;
    /// connection-level failures abort the attempt for the caller to retry.
    ///
    /// `checkpoint` (the barrier this work completes) rides in the last
    /// batch, sent once every earlier batch is known to have committed, so
    /// the checkpoint commits atomically with the last writes it covers.
    /// When that cannot be (a refused op, nothing to write), it is left to
    /// `write_checkpoint`. The pipelining loop stays in one function: the
    /// batches in flight, the held-back last batch and the refused ops are
    /// state of the one loop.
    pub(super) async fn write(
        &self,
        lease: &Lease,
        ops: Vec<Op>,
        dirty: &BTreeMap<String, Dirty>,
        since: Instant,
        mut checkpoint: Option<Checkpoint>,
    ) -> Result<(), Interrupted> {
        let base = self.target.path.as_str();
        let acls = self.acl_plan(lease, &ops).await?;
        let (ops, any_oversized) = self.hold_oversized(ops, dirty, since);
        if any_oversized {
            // The checkpoint was chosen on the premise that this unit
            // commits in full; it waits for the parked path instead.
            checkpoint = None;
        }
        let mut batches = batch(ops, base.len(), self.request_limits());
        let mut last = checkpoint.as_ref().and_then(|_| batches.pop());
        let mut refused: Vec<Op> = Vec::new();
        let mut interrupted: Option<Error> = None;
        let mut in_flight = FuturesOrdered::new();
        let mut pending = batches.into_iter();
        let checkpoint_write = checkpoint.as_ref().map(|c| {
            (
                checkpoint_path(&self.identity.meta_path, self.route.name(), &self.target.ensemble),
                serde_json::to_vec(c).expect("JSON of a plain struct"),
            )
        });
        let mut carried = false;
        loop {
            while in_flight.len() < self.limits.max_in_flight {
                let Some(batch) = pending.next() else { break };
                in_flight.push_back(commit(lease, base, batch, None, &self.echoes, &acls));
            }
            if in_flight.is_empty() && interrupted.is_none() && refused.is_empty() {
                if let Some(batch) = last.take() {
                    carried = true;
                    in_flight.push_back(commit(
                        lease,
                        base,
                        batch,
                        checkpoint_write.as_ref(),
                        &self.echoes,
                        &acls,
                    ));
                }
            }
            let Some((batch, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(target_zxid) => {
                    self.note_committed(&batch, dirty, since);
                    if carried && in_flight.is_empty() && pending.len() == 0 {
                        if let Some(c) = checkpoint.clone() {
                            self.checkpoint_committed(c, target_zxid.unwrap_or(-1)).await;
                        }
                    }
                }
                Err(e) if is_transient(&e) && !is_node_level(&e) => {
                    interrupted.get_or_insert(e);
                }
                Err(e) => {
                    debug!(error = %e, ops = batch.len(), "batch refused; retrying op by op");
                    refused.extend(batch);
                }
            }
        }
        if let Some(source) = interrupted {
            return Err(Interrupted {
                side: Side::Target,
                source,
            });
        }
        // The batch that would have carried the checkpoint, when an earlier
        // one was refused.
        refused.extend(last.into_iter().flatten());
        for op in refused {
            self.write_one(lease, op, dirty, since, &acls).await?;
        }
        Ok(())
    }

    /// Writes a copy into an empty target as the scan hands its creates
    /// over: a batch leaves once full — or at once, part-full, when nothing
    /// is in flight and the target would idle — while earlier ones are in
    /// flight. The pipeline drains only when the scan ends: a copy written
    /// in chunks waited for each chunk's last batch, leaving the target idle
    /// for a round trip and its group commit half empty every few thousand
    /// nodes. `done` hears of every op dealt with (committed, parked, or
    /// refused and sorted out), so that the scan may read on; a refused
    /// batch is sorted out op by op at once for the same reason. Returns
    /// how many ops were taken.
    pub(super) async fn write_streamed(
        &self,
        lease: &Lease,
        mut ops: tokio::sync::mpsc::UnboundedReceiver<Op>,
        mut done: impl FnMut(usize),
    ) -> Result<usize, Interrupted> {
        use futures::FutureExt;
        let base = self.target.path.as_str();
        let limits = self.request_limits();
        let none = BTreeMap::new();
        let mut forming: Vec<Op> = Vec::with_capacity(limits.batch_max_ops);
        let mut open = true;
        let mut taken = 0;
        let mut in_flight = FuturesOrdered::new();
        let mut interrupted: Option<Error> = None;
        loop {
            let ready = forming.len() >= limits.batch_max_ops || in_flight.is_empty() || !open;
            if !forming.is_empty() && ready && interrupted.is_none() && in_flight.len() < self.limits.max_in_flight {
                let ops = std::mem::take(&mut forming);
                let count = ops.len();
                let since = Instant::now();
                let (ops, _) = self.hold_oversized(ops, &none, since);
                done(count - ops.len());
                let acls = Arc::new(self.acl_plan(lease, &ops).await?);
                for b in batch(ops, base.len(), limits) {
                    let acls = acls.clone();
                    let sent = commit(lease, base, b, None, &self.echoes, &acls);
                    in_flight.push_back(sent.map(move |(b, result)| (b, result, acls, since)));
                }
                continue;
            }
            let receiving = open && interrupted.is_none() && forming.len() < limits.batch_max_ops;
            tokio::select! {
                biased;
                Some((b, result, acls, since)) = in_flight.next(), if !in_flight.is_empty() => match result {
                    Ok(_) => {
                        self.note_committed(&b, &none, since);
                        done(b.len());
                    }
                    Err(e) if is_transient(&e) && !is_node_level(&e) => {
                        interrupted.get_or_insert(e);
                    }
                    Err(e) => {
                        debug!(error = %e, ops = b.len(), "batch refused; retrying op by op");
                        let count = b.len();
                        for op in b {
                            self.write_one(lease, op, &none, since, &acls).await?;
                        }
                        done(count);
                    }
                },
                op = ops.recv(), if receiving => match op {
                    Some(op) => {
                        taken += 1;
                        forming.push(op);
                        while forming.len() < limits.batch_max_ops {
                            let Ok(op) = ops.try_recv() else { break };
                            taken += 1;
                            forming.push(op);
                        }
                    }
                    None => open = false,
                },
                else => break,
            }
        }
        match interrupted {
            Some(source) => Err(Interrupted {
                side: Side::Target,
                source,
            }),
            None => Ok(taken),
        }
    }

    /// Counts a committed batch and the replication latency of each of its
    /// ops, from when its path was first marked dirty (or `since`).
    fn note_committed(&self, batch: &[Op], dirty: &BTreeMap<String, Dirty>, since: Instant) {
        self.count_committed(batch);
        let now = Instant::now();
        for op in batch {
            let first_seen = dirty.get(op.rel()).map(|d| d.since).unwrap_or(since);
            self.metrics.latency.observe((now - first_seen).as_secs_f64());
        }
    }

    /// The batch bounds for this target: a whole batch must fit its
    /// request limit too.
    fn request_limits(&self) -> Limits {
        let limit = self.target_zk.max_request_bytes;
        Limits {
            batch_max_bytes: self
                .limits
                .batch_max_bytes
                .min(limit.saturating_sub(REQUEST_OVERHEAD * 4)),
            ..self.limits
        }
    }

    /// Takes out the ops too large for the target. A request over the
    /// target's jute.maxbuffer makes the server drop the connection, every
    /// time: such a node would stall the route as a "network" error. It is
    /// held back and kept pending instead. `true` when any was.
    fn hold_oversized(&self, ops: Vec<Op>, dirty: &BTreeMap<String, Dirty>, since: Instant) -> (Vec<Op>, bool) {
        let base = self.target.path.as_str();
        let limit = self.target_zk.max_request_bytes;
        let (ops, oversized): (Vec<Op>, Vec<Op>) = ops
            .into_iter()
            .partition(|op| op.wire_size(base.len()) + REQUEST_OVERHEAD <= limit);
        let any = !oversized.is_empty();
        for op in oversized {
            let rel = op.rel().to_string();
            let path = join(base, &rel);
            let bytes = op.wire_size(base.len());
            warn!(%path, bytes, max_request_bytes = limit, "node too large for the target ensemble (its jute.maxbuffer); it stays pending until it shrinks or the limit is raised");
            self.park_refused(
                rel.clone(),
                dirty_or_unmarked(dirty, &rel, since),
                "too_large",
                format!("{path}: {bytes} bytes is over the target's max_request_bytes ({limit})"),
            );
        }
        (ops, any)
    }

    /// Applies one op alone and sorts out why it failed: races resolve by
    /// reconciling the path again, lasting failures park it.
    pub(super) async fn write_one(
        &self,
        lease: &Lease,
        op: Op,
        dirty: &BTreeMap<String, Dirty>,
        since: Instant,
        acls: &AclPlan,
    ) -> Result<(), Interrupted> {
        let base = self.target.path.as_str();
        let rel = op.rel().to_string();
        let d = dirty_or_unmarked(dirty, &rel, since);
        let kind = op.kind();
        let (batch, result) = commit(lease, base, vec![op], None, &self.echoes, acls).await;
        let op = &batch[0];
        let error = match result {
            Ok(_) => {
                self.note_committed(std::slice::from_ref(op), dirty, since);
                return Ok(());
            }
            Err(e) => e,
        };
        match triage(op, &error) {
            Refusal::AlreadyDone => {}
            Refusal::ParentMissing => {
                // Unless the parent itself waits (too large, no
                // permission): then the child waits with it rather than spin.
                let p = parent(&rel).unwrap_or("").to_string();
                if self.queue.is_parked(&p) {
                    let why = Parking::Refused(format!("waits for its parent {p:?}, which is set aside"));
                    self.queue.park(rel, d.reshaping(), Instant::now() + PARK_FOR, why);
                } else {
                    let d = d.reshaping();
                    let scaffold = Dirty { need: Need::Exist, ..d };
                    self.queue.requeue([(p, scaffold), (rel, d)]);
                }
            }
            Refusal::ReadFirst => self.queue.requeue([(
                rel,
                Dirty {
                    target_read: TargetRead::ReadFirst,
                    ..d.reshaping()
                },
            )]),
            Refusal::ChangedInTarget => self.queue.requeue([(
                rel,
                Dirty {
                    seen: Seen::InTargetOnly,
                    ..d.reshaping()
                },
            )]),
            Refusal::Reconcile => self.queue.requeue([(rel, d.reshaping())]),
            Refusal::Interrupted => {
                return Err(Interrupted {
                    side: Side::Target,
                    source: error,
                })
            }
            Refusal::Lasting => {
                let path = join(base, &rel);
                warn!(%path, op = kind, error = %error, code = error_kind(&error), "target refused a write; will retry in {}s", PARK_FOR.as_secs());
                self.park_refused(rel, d, error_kind(&error), format!("{path}: {kind} refused: {error}"));
            }
        }
        Ok(())
    }
}

/// What becomes of a path whose op the target refused on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The target is already as wanted: a delete of a node that is gone.
    AlreadyDone,
    /// A create without its parent: the parent is made to exist first.
    ParentMissing,
    /// A create found the node there: an earlier unit's create (a node
    /// created and changed again in quick succession) or a local create,
    /// which the target watch reports on its own. Looked at again with
    /// reads, without calling it a conflict.
    ReadFirst,
    /// A set found the node gone, which the checkpoint said was there: it
    /// may have been deleted while no bridge watched, so it is looked at
    /// again as a change in the target.
    ChangedInTarget,
    /// The target moved on under the op (a delete of a node that gained a
    /// child, say): the path is reconciled again.
    Reconcile,
    /// The connection failed: the attempt is retried as a whole.
    Interrupted,
    /// A refusal that will not clear by itself soon (no permission, a
    /// quota): the path is parked and retried in `PARK_FOR`.
    Lasting,
}

/// Sorts out why the target refused `op` alone. Pure: the rule is the
/// same for every op of every unit, and has unit tests of its own.
pub(super) fn triage(op: &Op, error: &Error) -> Refusal {
    match (op, error) {
        (Op::Delete { .. }, Error::NoNode) => Refusal::AlreadyDone,
        (Op::Create { .. }, Error::NoNode) => Refusal::ParentMissing,
        (Op::Create { .. }, Error::NodeExists) => Refusal::ReadFirst,
        (Op::Set { .. }, Error::NoNode) => Refusal::ChangedInTarget,
        (_, Error::NodeExists | Error::NotEmpty) => Refusal::Reconcile,
        (_, e) if is_transient(e) => Refusal::Interrupted,
        _ => Refusal::Lasting,
    }
}

/// Bytes a single-op `multi` adds beyond the op itself: the header, the
/// lease check, the ACL. Generous on purpose.
pub(super) const REQUEST_OVERHEAD: usize = 1024;

/// Errors that concern a node rather than the connection.
pub(super) fn is_node_level(e: &Error) -> bool {
    matches!(
        e,
        Error::NoNode | Error::NodeExists | Error::NotEmpty | Error::BadVersion
    )
}

/// Splits ops into batches of at most `limits.batch_max_ops` ops and
/// `limits.batch_max_bytes` bytes (an op larger than that goes alone).
pub(super) fn batch(ops: Vec<Op>, base_len: usize, limits: Limits) -> Vec<Vec<Op>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.wire_size(base_len);
        if !current.is_empty() && (current.len() >= limits.batch_max_ops || bytes + size > limits.batch_max_bytes) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(op);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Sends one batch as a `multi` whose first op checks the lease, plus an
/// optional extra set-data (the checkpoint). The request is sent when this
/// is called, not when the future is polled, so batches pipeline in order.
///
/// Each op registers the echo its event will produce in the target watch
/// before the request leaves (the event may arrive before the reply); a
/// failed batch withdraws them.
pub(super) fn commit<'a>(
    lease: &'a Lease,
    base: &'a str,
    batch: Vec<Op>,
    extra: Option<&(String, Vec<u8>)>,
    echoes: &'a Echoes,
    acls: &AclPlan,
) -> impl std::future::Future<Output = (Vec<Op>, Result<Option<i64>, Error>)> + 'a {
    let mut writer = lease.writer();
    let added: Result<(), Error> = batch
        .iter()
        .try_for_each(|op| {
            let path = join(base, op.rel());
            match op {
                Op::Create { data, kind, rel } => writer.add_create(&path, data, &create_options(*kind, acls.of(rel))),
                Op::Set { data, .. } => writer.add_set_data(&path, data, None),
                Op::Delete { .. } => writer.add_delete(&path, None),
            }
        })
        .and_then(|()| match extra {
            Some((path, data)) => writer.add_set_data(path, data, None),
            None => Ok(()),
        });
    let carries_extra = extra.is_some();
    let sent = added.map(|()| {
        for op in &batch {
            echoes.expect_echo(join(base, op.rel()));
        }
        writer.commit()
    });
    async move {
        // The extra op's stat carries the transaction's zxid in the target.
        let result = match sent {
            Err(e) => Err(e),
            Ok(fut) => fut.await.map_err(fenced_error).map(|results| match results.last() {
                Some(MultiWriteResult::SetData { stat }) if carries_extra => Some(stat.mzxid),
                _ => None,
            }),
        };
        if result.is_err() {
            for op in &batch {
                echoes.cancel_echo(&join(base, op.rel()));
            }
        }
        (batch, result)
    }
}

/// How a node of `kind` is created in the target.
pub(super) fn create_options(kind: NodeKind, acl: &[Acl]) -> CreateOptions<'_> {
    match kind {
        NodeKind::Persistent => CreateMode::Persistent.with_acls(Acls::new(acl)),
        NodeKind::Ephemeral => CreateMode::Ephemeral.with_acls(Acls::new(acl)),
    }
}

/// Sets (or creates) `path` in a `multi` fenced by the lease.
pub(super) async fn fenced_put(
    lease: &Lease,
    path: &str,
    data: &[u8],
    acl: &[Acl],
    likely_missing: bool,
) -> Result<i64, Error> {
    // Creating: a create followed by a set of the same node in one `multi`,
    // whose set's stat carries the transaction's zxid (a create's stat in a
    // multi is unreliable on servers before 3.8.2), in one round trip.
    let put = |create: bool| {
        let mut writer = lease.writer();
        let create_op = match create {
            true => writer.add_create(path, data, &persistent(acl)),
            false => Ok(()),
        };
        create_op
            .and_then(|()| writer.add_set_data(path, data, None))
            .map(|()| writer)
    };
    let zxid = |results: Vec<MultiWriteResult>| match results.last() {
        Some(MultiWriteResult::SetData { stat }) => stat.mzxid,
        _ => -1,
    };
    match put(likely_missing)?.commit().await.map_err(fenced_error) {
        Ok(results) => Ok(zxid(results)),
        Err(Error::NoNode | Error::NodeExists) => Ok(zxid(put(!likely_missing)?.commit().await.map_err(fenced_error)?)),
        Err(e) => Err(e),
    }
}

/// A failed lease check means the lease is gone, and a failed role check
/// (the first op after it, see `Lease::writer`) that the route's role
/// changed: both are reported as `RuntimeInconsistent`, as the crate's own
/// lock-fenced writes do, and end the lead.
pub(super) fn fenced_error(e: CheckWriteError) -> Error {
    match e {
        CheckWriteError::CheckFailed { .. } | CheckWriteError::OperationFailed { index: 0, .. } => {
            Error::RuntimeInconsistent
        }
        CheckWriteError::RequestFailed { source } | CheckWriteError::OperationFailed { source, .. } => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(batches: &[Vec<Op>]) -> Vec<std::collections::BTreeSet<String>> {
        batches
            .iter()
            .map(|b| b.iter().map(|o| o.rel().to_string()).collect())
            .collect()
    }

    #[test]
    fn refusals_are_sorted_by_op_and_error() {
        let create = Op::Create {
            rel: "a".into(),
            data: Vec::new(),
            kind: NodeKind::Persistent,
        };
        let set = Op::Set {
            rel: "a".into(),
            data: Vec::new(),
        };
        let delete = Op::Delete { rel: "a".into() };
        let cases = [
            (&delete, Error::NoNode, Refusal::AlreadyDone),
            (&create, Error::NoNode, Refusal::ParentMissing),
            (&create, Error::NodeExists, Refusal::ReadFirst),
            (&set, Error::NoNode, Refusal::ChangedInTarget),
            (&delete, Error::NotEmpty, Refusal::Reconcile),
            (&set, Error::NodeExists, Refusal::Reconcile),
            (&set, Error::ConnectionLoss, Refusal::Interrupted),
            (&create, Error::Timeout, Refusal::Interrupted),
            (&create, Error::NoAuth, Refusal::Lasting),
            (&set, Error::QuotaExceeded, Refusal::Lasting),
            (&create, Error::NoChildrenForEphemerals, Refusal::Lasting),
        ];
        for (op, error, expected) in cases {
            assert_eq!(triage(op, &error), expected, "{} refused with {error}", op.kind());
        }
    }

    #[test]
    fn batches_respect_ops_and_bytes() {
        let limits = Limits {
            batch_max_ops: 3,
            batch_max_bytes: 2000,
            max_in_flight: 1,
            verify_reads_per_s: 1,
        };
        let ops: Vec<Op> = (0..7)
            .map(|i| Op::Create {
                rel: format!("n{i}"),
                data: vec![0; 10],
                kind: NodeKind::Persistent,
            })
            .collect();
        let b = batch(ops, 5, limits);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 1]);
        let big: Vec<Op> = (0..3)
            .map(|i| Op::Set {
                rel: format!("b{i}"),
                data: vec![0; 1500],
            })
            .collect();
        let b = batch(big, 5, limits);
        assert_eq!(b.len(), 3, "each 1.5 KB op alone under a 2 KB cap: {:?}", rels(&b));
    }
}
