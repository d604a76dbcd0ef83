//! `zkbridge conflicts`: the changes that lost under last-writer-wins on
//! an active-active route (design §7), read from every member's conflict
//! log, newest last.

use std::process::ExitCode;

use crate::active::conflicts::{self, Entry};

pub async fn conflicts(path: &std::path::Path, route: &str, json: bool) -> ExitCode {
    let resolved = match super::load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(active) = resolved.active_route(route) else {
        let why = match resolved.route(route) {
            Some(_) => "is a mirror route; conflicts are logged for active-active routes (mirror conflicts: `zkbridge status`, zkbridge_conflicts_total)",
            None => "no such route in the configuration",
        };
        eprintln!("zkbridge conflicts: --route {route}: {why}");
        return ExitCode::from(2);
    };
    let meta = &resolved.config.bridge.meta_path;
    let mut entries: Vec<Entry> = Vec::new();
    let mut unreachable = 0;
    for member in &active.members {
        let client = match super::session(&resolved, &member.ensemble, "conflicts").await {
            Ok(c) => c,
            Err(_) => {
                unreachable += 1;
                continue;
            }
        };
        match conflicts::list(&client, meta, route).await {
            Ok(list) => entries.extend(list),
            Err(e) => {
                eprintln!("zkbridge conflicts: {}: {e}", member.ensemble);
                unreachable += 1;
            }
        }
    }
    if unreachable == active.members.len() {
        return ExitCode::from(2);
    }
    entries.sort_by_key(|e| (e.record.ts_ms, e.record.member.clone(), e.sequence));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("JSON of plain records")
        );
        return ExitCode::SUCCESS;
    }
    if entries.is_empty() {
        println!("no conflict logged for {route}");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<24} {:<12} {:<30} {:<30} PATH",
        "WHEN (UTC ms)", "MEMBER", "LOST (origin@mtime)", "WON (origin@mtime)"
    );
    let change = |c: &crate::znodes::ConflictChange| {
        format!("{}{}@{}", if c.deleted { "delete " } else { "" }, c.origin, c.mtime_ms)
    };
    for e in &entries {
        println!(
            "{:<24} {:<12} {:<30} {:<30} {}",
            e.record.ts_ms,
            e.record.member,
            change(&e.record.lost),
            change(&e.record.won),
            e.record.path
        );
    }
    println!(
        "{} conflict(s); each member keeps its last {}",
        entries.len(),
        conflicts::KEPT
    );
    ExitCode::SUCCESS
}
