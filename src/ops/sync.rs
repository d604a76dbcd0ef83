//! `zkbridge sync`: one copy of the routes, then exit.

use std::process::ExitCode;
use std::time::Duration;

use super::load;
use crate::config;
use crate::diff::DifferenceKind;

pub async fn sync(path: &std::path::Path, route: Option<&str>, dry_run: bool) -> ExitCode {
    let mut resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(name) = route {
        resolved.routes.retain(|r| r.name() == name);
        if resolved.routes.is_empty() {
            eprintln!("zkbridge sync: --route {name}: no such route in the configuration");
            return ExitCode::from(2);
        }
    }
    if dry_run {
        return sync_dry_run(&resolved, route).await;
    }
    let started = std::time::Instant::now();
    let started_ms = crate::znodes::now_ms();
    let (stop, shutdown) = crate::shutdown::channel();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let (bridge, tasks) = crate::bridge::start(&resolved, metrics, &shutdown);
    let mut progress = crate::progress::SyncProgress::new(&bridge);
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress.tick(&bridge, started);
        let all_synced = bridge.all_synced();
        // Done once every target is copied, nothing is pending, and a
        // checkpoint taken after the start covers it (so `run` resumes
        // from here instead of copying again).
        let checkpointed = bridge.mirrors().all(|w| {
            w.status
                .borrow()
                .checkpoint
                .as_ref()
                .is_some_and(|c| c.heartbeat_ts_ms >= started_ms)
        });
        if all_synced && checkpointed && bridge.mirrors().all(|w| w.queue.is_idle()) {
            break ExitCode::SUCCESS;
        }
        let parked: Vec<_> = bridge.mirrors().filter(|w| w.queue.parked_count() > 0).collect();
        if all_synced && !parked.is_empty() && bridge.mirrors().all(|w| w.queue.is_idle() || w.queue.only_parked()) {
            progress.finish();
            for w in parked {
                eprintln!(
                    "zkbridge sync: {}/{}: {} node(s) refused by the target: {}",
                    w.route,
                    w.target,
                    w.queue.parked_count(),
                    w.status.borrow().last_error.clone().unwrap_or_default()
                );
            }
            break ExitCode::from(1);
        }
    };
    progress.finish();
    stop.fire();
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks)).await;
    bridge.close().await;
    print!("{}", progress.summary(&bridge, started));
    outcome
}

/// `sync --dry-run`: what a copy would change, from the same plan; writes
/// nothing.
async fn sync_dry_run(resolved: &config::Resolved, route: Option<&str>) -> ExitCode {
    match crate::diff::diff(resolved, route).await {
        Ok(differences) => {
            let mut counts = std::collections::BTreeMap::<&str, usize>::new();
            for d in &differences {
                let action = match d.kind {
                    DifferenceKind::Missing => "create",
                    DifferenceKind::Different => "update",
                    DifferenceKind::Extra => "delete",
                    DifferenceKind::Kept => "keep (kept by policy)",
                };
                *counts.entry(action).or_default() += 1;
                println!("would {action:<6} {} ({}/{})", d.target_path, d.route, d.target);
            }
            let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} to {k}")).collect();
            println!(
                "dry run: {}; nothing written",
                if summary.is_empty() {
                    "nothing to change".to_string()
                } else {
                    summary.join(", ")
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zkbridge sync --dry-run: {e:#}");
            ExitCode::from(2)
        }
    }
}
