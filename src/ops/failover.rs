//! `zkbridge failover` (design §6): promotes a member while the primary is
//! unreachable. The member is promoted at the state it has; the possible
//! loss is what the old primary accepted after the member's last
//! checkpoint, which the output names. The old primary is not written here:
//! when it comes back, a running bridge archives its divergent tail and
//! only then demotes it (see `bridge::route_runner`).

use std::process::ExitCode;

use super::roles::{Members, Step};
use crate::config::AclMode;
use crate::role::{self, freeze, store};
use crate::znodes::{checkpoint_path, Checkpoint, RoleReason};

pub async fn failover(path: &std::path::Path, route: &str, to: &str, yes: bool) -> ExitCode {
    if !yes {
        eprintln!("zkbridge failover: promoting {to} without its primary may lose what the primary accepted after the last checkpoint. Add --yes to confirm.");
        return ExitCode::from(2);
    }
    let resolved = match super::load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let members = match Members::open(&resolved, route, to, "failover").await {
        Ok(m) => m,
        Err(code) => return code,
    };
    if !members.reachable(to) {
        eprintln!("zkbridge failover: {to} is unreachable: it cannot be promoted");
        return ExitCode::from(2);
    }
    let (current, versions) = match members.agreed_role().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zkbridge failover: {e}");
            return ExitCode::from(2);
        }
    };
    if current.primary == to {
        eprintln!(
            "zkbridge failover: {to} is already the primary of {route} (epoch {})",
            current.epoch
        );
        return ExitCode::from(2);
    }
    let meta = &resolved.config.bridge.meta_path;
    let old = current.primary.clone();
    println!(
        "failover of {route}: {old} -> {to} (epoch {} -> {})",
        current.epoch,
        current.epoch + 1
    );
    let to_client = members.client(to);
    let checkpoint: Option<Checkpoint> = crate::checkpoint::get_json(to_client, &checkpoint_path(meta, route, to))
        .await
        .ok()
        .flatten();

    let step = Step::start("flip");
    let record = role::flipped(&current, to, &resolved.config.bridge.id, RoleReason::Failover);
    let written = match write_epoch(&members, meta, route, to, &old, &record, &versions).await {
        Ok(written) => written,
        Err(e) => {
            eprintln!("zkbridge failover: {e}");
            return ExitCode::from(2);
        }
    };
    step.done(&format!("epoch {} written in {}", record.epoch, written.join(", ")));

    let step = Step::start("unfreeze");
    let unfrozen = unfreeze(&resolved, &members, to).await;
    match unfrozen {
        Ok(what) => step.done(&what),
        Err(e) => {
            eprintln!("zkbridge failover: {to} is primary, but its standby ACLs could not all be replaced: {e}");
            return ExitCode::from(2);
        }
    }
    print_possible_loss(checkpoint.as_ref(), &old, to);
    ExitCode::SUCCESS
}

/// Writes the new epoch in the promoted member (it must succeed) and in
/// every other reachable member but the old primary (the running bridges
/// bring up those that fail); returns where it was written.
async fn write_epoch(
    members: &Members,
    meta: &str,
    route: &str,
    to: &str,
    old: &str,
    record: &crate::znodes::RoleRecord,
    versions: &std::collections::BTreeMap<String, i32>,
) -> Result<Vec<String>, String> {
    let Some(version) = versions.get(to) else {
        return Err(format!("{to} has no role znode at epoch {}", record.epoch - 1));
    };
    store::replace(members.client(to), meta, route, record, *version)
        .await
        .map_err(|e| format!("writing epoch {} in {to}: {e}", record.epoch))?;
    let mut written = vec![to.to_string()];
    for m in members.route.members() {
        let name = &m.ensemble;
        if name == to || name == old || !members.reachable(name) {
            continue;
        }
        if let Some(v) = versions.get(name) {
            match store::replace(members.client(name), meta, route, record, *v).await {
                Ok(_) => written.push(name.clone()),
                Err(e) => eprintln!("zkbridge failover: {name}: {e} (the running bridges bring it up)"),
            }
        }
    }
    Ok(written)
}

/// Makes a protected standby's nodes writable again. They get what the
/// primary gave them back; the primary's own ACLs are known only to a
/// switchover's record (which lives in the lost primary), so a
/// target-default route gets the ensemble's ACL, as its mirrors had before
/// protection.
async fn unfreeze(resolved: &crate::config::Resolved, members: &Members, to: &str) -> Result<String, String> {
    let route = &members.route;
    if route.config.standby_acl.is_none() || route.config.acls != AclMode::TargetDefault {
        return Ok("nothing to unfreeze".to_string());
    }
    let to_client = members.client(to);
    let to_path = &route.member(to).expect("a member").path;
    let in_flight = resolved.config.bridge.max_in_flight;
    let tree = crate::tree::scan(to_client, to_path, in_flight, |rel| !route.filter.excluded(rel))
        .await
        .map_err(|e| e.to_string())?;
    let rels: Vec<String> = tree
        .iter()
        .filter(|(rel, n)| crate::plan::is_mirrored(route, rel, n))
        .map(|(rel, _)| rel.clone())
        .collect();
    let acl = resolved.ensemble(to).acl();
    freeze::set_all(to_client, to_path, rels.iter(), &acl, in_flight)
        .await
        .map(|()| format!("{} nodes writable", rels.len()))
        .map_err(|e| e.to_string())
}

/// Names what the promoted member may lack: what the old primary accepted
/// after the member's last checkpoint.
fn print_possible_loss(checkpoint: Option<&Checkpoint>, old: &str, to: &str) {
    match checkpoint {
        Some(c) => println!(
            "possible loss after zxid {:#x} ({}): changes made in {old} after that may be missing in {to}",
            c.source_zxid,
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.heartbeat_ts_ms.max(0) as u64)
            )
        ),
        None => println!("possible loss after zxid 0x0 (no checkpoint in {to}): {to} may hold none of {old}'s changes"),
    }
}
