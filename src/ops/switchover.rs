//! `zkbridge switchover` (design §6): a planned move of a route's primary.
//!
//! freeze → drain → verify → flip → translate positions → unfreeze. Every
//! failure before the flip restores the old primary exactly (its recorded
//! ACLs back, the `frozen` znode gone) and exits 1; the running bridges do
//! the mirroring throughout, and follow the new epoch once it is written.

use std::process::ExitCode;
use std::time::Duration;

use zookeeper_client::Acl;

use super::roles::{Members, Step};
use crate::config::{AclMode, Resolved, Route};
use crate::role::freeze::{self, Restore};
use crate::role::{self, store};
use crate::znodes::{checkpoint_path, frozen_path, now_ms, Checkpoint, FrozenRecord, RoleReason, RoleRecord};

pub struct Request<'a> {
    pub route: &'a str,
    pub to: &'a str,
    pub timeout: Duration,
}

/// Why a switchover stopped before its flip.
struct Abort(String);

pub async fn switchover(path: &std::path::Path, request: Request<'_>) -> ExitCode {
    let resolved = match super::load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let members = match Members::open(&resolved, request.route, request.to, "switchover").await {
        Ok(m) => m,
        Err(code) => return code,
    };
    if let Some((down, why)) = members.unreachable() {
        eprintln!("zkbridge switchover: aborted before any change: member {down} is unreachable ({why})");
        return ExitCode::from(1);
    }
    let (current, versions) = match members.agreed_role().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zkbridge switchover: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(code) = recover(&resolved, &members, &current).await {
        return code;
    }
    if current.primary == request.to {
        eprintln!(
            "zkbridge switchover: {} is already the primary of {} (epoch {})",
            request.to, request.route, current.epoch
        );
        return ExitCode::from(2);
    }
    if let Err(e) = needs_identity(&resolved, &members.route) {
        eprintln!("zkbridge switchover: {e}");
        return ExitCode::from(2);
    }
    let run = Switchover {
        resolved: &resolved,
        members: &members,
        current,
        versions,
        to: request.to.to_string(),
        timeout: request.timeout,
    };
    run.run().await
}

/// Finishes what an earlier switchover left frozen (it died, or could not
/// restore): before its flip, the old primary is restored (exit 1, as an
/// abort); after it, the unfreeze is completed (exit 0). `None` when nothing
/// is frozen.
async fn recover(resolved: &Resolved, members: &Members, current: &RoleRecord) -> Option<ExitCode> {
    let meta = &resolved.config.bridge.meta_path;
    let route = &members.route;
    let in_flight = resolved.config.bridge.max_in_flight;
    for m in route.members() {
        let client = members.client(&m.ensemble);
        let (record, acls) = match freeze::recorded(client, meta, route.name()).await {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("zkbridge switchover: reading the frozen marker in {}: {e}", m.ensemble);
                return Some(ExitCode::from(2));
            }
        };
        let old_path = &route.member(&record.primary)?.path;
        let old_client = members.client(&record.primary);
        if current.primary == record.to && current.epoch > record.epoch {
            println!(
                "completing the switchover to {} that stopped after its flip (epoch {})",
                record.to, current.epoch
            );
            let to_path = &route.member(&record.to)?.path;
            let done = async {
                freeze::restore(members.client(&record.to), to_path, &acls, Restore::Always, in_flight).await?;
                match mirror_acl(resolved, route, &record.primary) {
                    Some(acl) => freeze::set_all(old_client, old_path, acls.keys(), &acl, in_flight).await?,
                    None => freeze::restore(old_client, old_path, &acls, Restore::IfChanged, in_flight).await?,
                }
                freeze::clear(client, meta, route.name()).await
            };
            return Some(match done.await {
                Ok(()) => {
                    println!("{} writable; {} is a mirror", record.to, record.primary);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("zkbridge switchover: completing the unfreeze: {e}");
                    ExitCode::from(2)
                }
            });
        }
        eprintln!(
            "zkbridge switchover: an earlier switchover to {} stopped before its flip; restoring {}",
            record.to, record.primary
        );
        let restored = async {
            freeze::restore(old_client, old_path, &acls, Restore::IfChanged, in_flight).await?;
            freeze::clear(client, meta, route.name()).await
        };
        return Some(match restored.await {
            Ok(()) => {
                eprintln!(
                    "zkbridge switchover: {} restored as it was; run the switchover again",
                    record.primary
                );
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("zkbridge switchover: cannot restore {}: {e}", record.primary);
                ExitCode::from(2)
            }
        });
    }
    None
}

/// The ACL an old primary's nodes get as a mirror: `standby_acl` where
/// set, else the ensemble's own for `target-default`; `None` for `copy`
/// (the recorded originals, which are the source's).
fn mirror_acl(resolved: &Resolved, route: &Route, member: &str) -> Option<Vec<Acl>> {
    match (route.config.standby_acl(), route.config.acls) {
        (Some(acl), _) => Some(acl),
        (None, AclMode::TargetDefault) => Some(resolved.ensemble(member).acl()),
        (None, AclMode::Copy) => None,
    }
}

/// The default freeze ACL grants zkbridge's own identity (`auth::`): every
/// member then needs one, or the freeze could not be undone.
fn needs_identity(resolved: &Resolved, route: &Route) -> Result<(), String> {
    if route.config.freeze_acl.is_some() {
        return Ok(()); // checked at load
    }
    for m in route.members() {
        let e = resolved.ensemble(&m.ensemble);
        if e.digest.is_none() && e.digest_file.is_none() && e.sasl.is_none() {
            return Err(format!(
                "routes ({}).freeze_acl: the default grants zkbridge's own identity (auth::cdrwa), but ensemble {} has none: set its digest, digest_file or sasl, or set a freeze_acl",
                route.name(),
                m.ensemble
            ));
        }
    }
    Ok(())
}

struct Switchover<'a> {
    resolved: &'a Resolved,
    members: &'a Members,
    current: RoleRecord,
    versions: std::collections::BTreeMap<String, i32>,
    to: String,
    timeout: Duration,
}

impl Switchover<'_> {
    fn meta(&self) -> &str {
        &self.resolved.config.bridge.meta_path
    }

    /// Where the route's znodes live.
    fn key(&self) -> crate::znodes::RouteKey<'_> {
        crate::znodes::RouteKey {
            meta: self.meta(),
            route: self.members.route.name(),
        }
    }

    fn in_flight(&self) -> usize {
        self.resolved.config.bridge.max_in_flight
    }

    async fn run(&self) -> ExitCode {
        let route = &self.members.route;
        println!(
            "switchover of {}: {} -> {} (epoch {} -> {})",
            route.name(),
            self.current.primary,
            self.to,
            self.current.epoch,
            self.current.epoch + 1
        );
        let (originals, window) = match self.freeze_primary().await {
            Ok(frozen) => frozen,
            Err(code) => return code,
        };
        let flipped = match self.drain_verify_flip(&originals).await {
            Ok(flipped) => flipped,
            Err(abort) => return self.abort(abort).await,
        };
        let step = Step::start("translate positions");
        let translated = self.translate(&flipped).await;
        step.done(&translated);
        self.unfreeze(&flipped, &originals, window).await
    }

    /// Makes the primary's mirrored nodes read-only, recording their ACLs
    /// first; returns them and when the write freeze began.
    async fn freeze_primary(&self) -> Result<(freeze::AclRecord, std::time::Instant), ExitCode> {
        let route = &self.members.route;
        let old = &self.current.primary;
        let old_path = &route.member(old).expect("a member").path;
        let step = Step::start("freeze");
        let record = FrozenRecord {
            epoch: self.current.epoch,
            primary: old.clone(),
            to: self.to.clone(),
            by: self.resolved.config.bridge.id.clone(),
            ts_ms: now_ms(),
        };
        let meta_acl = store::acl(&self.resolved.ensemble(old).acl());
        let freeze_acl = route.config.freeze_acl();
        let how = freeze::Freeze {
            meta: self.meta(),
            route: route.name(),
            base: old_path,
            record: &record,
            freeze_acl: &freeze_acl,
            meta_acl: &meta_acl,
            max_in_flight: self.in_flight(),
        };
        let frozen = freeze::freeze(self.members.client(old), &how).await;
        match frozen {
            Ok((originals, window)) => {
                step.done(&format!("{} nodes read-only in {old}", originals.len()));
                Ok((originals, window))
            }
            Err(e)
                if e.error == zookeeper_client::Error::NodeExists
                    && e.path == frozen_path(self.meta(), route.name()) =>
            {
                eprintln!(
                    "zkbridge switchover: {} is already frozen by another switchover (see {})",
                    old,
                    frozen_path(self.meta(), route.name())
                );
                Err(ExitCode::from(2))
            }
            Err(e) => Err(self.abort(Abort(format!("freeze: {e}"))).await),
        }
    }

    /// After the flip: the new primary gets its original ACLs back, the old
    /// one becomes a mirror, and the write-unavailable window is recorded.
    async fn unfreeze(&self, flipped: &Flipped, originals: &freeze::AclRecord, window: std::time::Instant) -> ExitCode {
        let route = &self.members.route;
        let old = &self.current.primary;
        let old_client = self.members.client(old);
        let old_path = &route.member(old).expect("a member").path;
        let step = Step::start("unfreeze");
        let to_path = &route.member(&self.to).expect("a member").path;
        let to_client = self.members.client(&self.to);
        if let Err(e) = freeze::restore(to_client, to_path, originals, Restore::Always, self.in_flight()).await {
            eprintln!("zkbridge switchover: restoring the original ACLs in {}: {e}; run the switchover's unfreeze again with `zkbridge switchover` after fixing it", self.to);
            return ExitCode::from(2);
        }
        let window = window.elapsed();
        let demoted = match mirror_acl(self.resolved, route, old) {
            Some(acl) => freeze::set_all(old_client, old_path, originals.keys(), &acl, self.in_flight()).await,
            None => freeze::restore(old_client, old_path, originals, Restore::IfChanged, self.in_flight()).await,
        };
        if let Err(e) = demoted {
            eprintln!("zkbridge switchover: setting the mirror ACLs in {old}: {e} (the new primary is writable)");
        }
        if let Err(e) = freeze::clear(old_client, self.meta(), route.name()).await {
            eprintln!("zkbridge switchover: removing the frozen marker in {old}: {e}");
        }
        let _ = crate::checkpoint::put_json(
            to_client,
            &crate::znodes::switchover_path(self.meta(), route.name()),
            &crate::znodes::SwitchoverRecord {
                epoch: flipped.record.epoch,
                from: old.clone(),
                to: self.to.clone(),
                window_ms: window.as_millis() as u64,
            },
            &store::acl(&self.resolved.ensemble(&self.to).acl()),
        )
        .await;
        step.done(&format!("{} writable; {old} is a mirror", self.to));
        println!("write-unavailable window: {:.3} s", window.as_secs_f64());
        ExitCode::SUCCESS
    }

    async fn drain_verify_flip(&self, originals: &freeze::AclRecord) -> Result<Flipped, Abort> {
        let route = &self.members.route;
        let old = &self.current.primary;
        let old_client = self.members.client(old);
        let step = Step::start("drain");
        // The freeze's own last write: every application write is before it.
        let frozen = frozen_path(self.meta(), route.name());
        let zxid = old_client
            .set_data(&frozen, &serde_json::to_vec(&self.frozen_record()).expect("JSON"), None)
            .await
            .map_err(|e| Abort(format!("drain: {e}")))?
            .mzxid;
        let reached = crate::wait::until_members_applied(
            old_client,
            self.key(),
            std::slice::from_ref(&self.to),
            zxid,
            self.timeout,
        )
        .await
        .map_err(|e| Abort(format!("drain: {e}")))?;
        if !reached {
            return Err(Abort(format!(
                "drain: {} did not apply {zxid:#x} within {} (is a bridge running for it?)",
                self.to,
                humantime::format_duration(self.timeout)
            )));
        }
        step.done(&format!("{} applied {zxid:#x}", self.to));

        let step = Step::start("verify");
        let differences = self
            .verify(originals)
            .await
            .map_err(|e| Abort(format!("verify: {e}")))?;
        if !differences.is_empty() {
            let shown: Vec<&str> = differences.iter().take(5).map(String::as_str).collect();
            return Err(Abort(format!(
                "verify: {} differs from {old} in {} node(s), first: {}",
                self.to,
                differences.len(),
                shown.join(", ")
            )));
        }
        step.done("identical");

        let step = Step::start("flip");
        let record = role::flipped(
            &self.current,
            &self.to,
            &self.resolved.config.bridge.id,
            RoleReason::Switchover,
        );
        let to_client = self.members.client(&self.to);
        let version = self.versions[&self.to];
        let to_zxid = store::replace(to_client, self.meta(), route.name(), &record, version)
            .await
            .map_err(|e| Abort(format!("flip: writing the new epoch in {}: {e}", self.to)))?;
        for m in route.members().filter(|m| m.ensemble != self.to) {
            let client = self.members.client(&m.ensemble);
            if let Err(e) = store::replace(client, self.meta(), route.name(), &record, self.versions[&m.ensemble]).await
            {
                // The new primary has the epoch: the running bridges bring
                // this member up once the route is unfrozen.
                eprintln!(
                    "zkbridge switchover: flip: {}: {e} (the running bridges bring it up)",
                    m.ensemble
                );
            }
        }
        step.done(&format!("epoch {} with {} as primary", record.epoch, self.to));
        Ok(Flipped {
            record,
            to_zxid,
            freeze_zxid: zxid,
        })
    }

    fn frozen_record(&self) -> FrozenRecord {
        FrozenRecord {
            epoch: self.current.epoch,
            primary: self.current.primary.clone(),
            to: self.to.clone(),
            by: self.resolved.config.bridge.id.clone(),
            ts_ms: now_ms(),
        }
    }

    /// The chosen member against the frozen primary, with plain reads: data
    /// (the mirror's plan must be empty) and, where the route copies them,
    /// ACLs against those recorded at the freeze.
    async fn verify(&self, originals: &freeze::AclRecord) -> Result<Vec<String>, zookeeper_client::Error> {
        let route = self
            .members
            .route
            .oriented(&self.current.primary, self.meta())
            .expect("a member");
        let target = route.member(&self.to).expect("a member").clone();
        let keep = |rel: &str| !route.filter.excluded(rel);
        let source = crate::tree::scan(
            self.members.client(&route.source.ensemble),
            &route.source.path,
            self.in_flight(),
            keep,
        )
        .await?;
        let to_client = self.members.client(&self.to);
        let mirror = crate::tree::scan(to_client, &target.path, self.in_flight(), keep).await?;
        let mut out: Vec<String> = crate::plan::plan(&route, &source, &mirror)
            .iter()
            .map(|op| crate::path::join(&target.path, op.rel()))
            .collect();
        if route.config.acls == AclMode::Copy {
            let rels: Vec<String> = source
                .iter()
                .filter(|(rel, n)| crate::plan::is_mirrored(&route, rel, n))
                .map(|(rel, _)| rel.clone())
                .collect();
            let acls = crate::tree::read_acls(to_client, &target.path, &rels, self.in_flight()).await?;
            for (rel, acl) in rels.iter().zip(acls) {
                let got: Option<Vec<String>> = acl.map(|a| a.iter().map(crate::config::format_acl).collect());
                if got.as_ref() != originals.get(rel) {
                    out.push(format!("{} (ACL)", crate::path::join(&target.path, rel)));
                }
            }
        }
        Ok(out)
    }

    /// Gives every member that had applied the freeze's position a
    /// checkpoint in the new primary's zxid space, so that it resumes
    /// without a full scan; the others compare in full against it.
    async fn translate(&self, flipped: &Flipped) -> String {
        let route = &self.members.route;
        let old = &self.current.primary;
        let to_client = self.members.client(&self.to);
        let to_acl = self.resolved.ensemble(&self.to).acl();
        let new_id = match crate::checkpoint::ensemble_id(to_client, self.meta(), &to_acl).await {
            Ok(id) => id,
            Err(e) => {
                return format!(
                    "none (cannot read {}'s ensemble id: {e}); every mirror compares in full",
                    self.to
                )
            }
        };
        let mut kept = Vec::new();
        let mut full = Vec::new();
        for m in route.members().filter(|m| m.ensemble != self.to) {
            let in_step = m.ensemble == *old || {
                let progress = crate::wait::applied_position(self.members.client(old), self.key(), &m.ensemble).await;
                progress.ok().flatten().is_some_and(|z| z >= flipped.freeze_zxid)
            };
            if !in_step {
                full.push(m.ensemble.clone());
                continue;
            }
            let checkpoint = Checkpoint {
                version: 1,
                source_ensemble_id: new_id.clone(),
                source_zxid: flipped.to_zxid,
                heartbeat_ts_ms: now_ms(),
                bridge: self.resolved.config.bridge.id.clone(),
                updated_ms: now_ms(),
            };
            let client = self.members.client(&m.ensemble);
            let acl = self.resolved.ensemble(&m.ensemble).acl();
            let path = checkpoint_path(self.meta(), route.name(), &m.ensemble);
            match crate::checkpoint::put_json(client, &path, &checkpoint, &acl).await {
                Ok(_) => kept.push(m.ensemble.clone()),
                Err(_) => full.push(m.ensemble.clone()),
            }
        }
        let mut out = format!("resume from {:#x}: {}", flipped.to_zxid, list(&kept));
        if !full.is_empty() {
            out.push_str(&format!("; full compare: {}", full.join(", ")));
        }
        out
    }

    /// Puts the old primary back as it was: recorded ACLs, no marker.
    async fn abort(&self, abort: Abort) -> ExitCode {
        let route = &self.members.route;
        let old = &self.current.primary;
        let client = self.members.client(old);
        let base = &route.member(old).expect("a member").path;
        eprintln!("zkbridge switchover: aborted: {}", abort.0);
        let restored = match freeze::recorded(client, self.meta(), route.name()).await {
            Ok(Some((_, acls))) => freeze::restore(client, base, &acls, Restore::IfChanged, self.in_flight())
                .await
                .map_err(|e| e.to_string()),
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        let cleared = match restored {
            Ok(()) => freeze::clear(client, self.meta(), route.name())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match cleared {
            Ok(()) => {
                eprintln!(
                    "zkbridge switchover: {old} restored as it was (primary at epoch {})",
                    self.current.epoch
                );
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("zkbridge switchover: cannot restore {old}: {e}; it is still frozen — run the same switchover again, or restore it by hand from {}", frozen_path(self.meta(), route.name()));
                ExitCode::from(2)
            }
        }
    }
}

struct Flipped {
    record: RoleRecord,
    /// The new epoch's zxid in the new primary: every mirror in step holds
    /// its subtree up to here.
    to_zxid: i64,
    freeze_zxid: i64,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
