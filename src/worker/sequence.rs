//! Sequence counters: a target parent's `cversion` kept up with its
//! source's, so a client failing over never gets a sequential name that
//! exists or goes backwards.

use super::*;

impl Worker {
    /// Brings the sequence counter (`cversion`) of each target parent in
    /// `parents` up to its source's, so that a client failing over to the
    /// target region never gets a sequential name that exists or goes
    /// backwards. Each create or delete of a child bumps the counter by one:
    /// throw-away children are created and deleted in one fenced `multi`.
    pub(super) async fn align_sequence_counters(
        &self,
        lease: &Lease,
        src: &Client,
        parents: Vec<String>,
    ) -> Result<(), Interrupted> {
        if parents.is_empty() {
            return Ok(());
        }
        let base = self.target.path.as_str();
        let sources = tree::read_nodes(src, &self.route.source.path, &parents, self.limits.max_in_flight)
            .await
            .map_err(|source| Interrupted {
                side: Side::Source,
                source,
            })?;
        let targets = tree::read_nodes(lease.client(), base, &parents, self.limits.max_in_flight)
            .await
            .map_err(|source| Interrupted {
                side: Side::Target,
                source,
            })?;
        for ((rel, s), t) in parents.iter().zip(sources).zip(targets) {
            let (Some((_, s)), Some((_, t))) = (s, t) else { continue };
            if s.ephemeral_owner == -2 || t.cversion >= s.cversion {
                continue;
            }
            let pairs = (s.cversion - t.cversion + 1) / 2;
            let parent_path = join(base, rel);
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            let names: Vec<String> = (0..pairs)
                .map(|i| format!("{parent_path}/.zkbridge-seq-{nonce}-{i}"))
                .collect();
            let mut writer = lease.writer();
            let fail = |source| Interrupted {
                side: Side::Target,
                source,
            };
            for name in &names {
                writer
                    .add_create(name, b"", &persistent(&self.target_zk.acl))
                    .map_err(fail)?;
            }
            for name in &names {
                writer.add_delete(name, None).map_err(fail)?;
            }
            for name in &names {
                self.echoes.expect_echo(name.clone());
                self.echoes.expect_echo(name.clone());
            }
            match writer.commit().await.map_err(fenced_error) {
                Ok(_) => debug!(path = %parent_path, from = t.cversion, to = s.cversion, "sequence counter aligned"),
                Err(e) => {
                    for name in &names {
                        self.echoes.cancel_echo(name);
                        self.echoes.cancel_echo(name);
                    }
                    if is_transient(&e) && !is_node_level(&e) {
                        return Err(fail(e));
                    }
                    warn!(path = %parent_path, error = %e, "cannot align the sequence counter; the next change retries");
                }
            }
        }
        Ok(())
    }
}
