//! `zkbridge divergent`: the divergent tails archived when old primaries
//! were demoted (design §6), read from every member that answers.

use std::process::ExitCode;

use serde::Serialize;

use super::roles::Members;
use crate::role::divergent;

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    epoch: u64,
    path: String,
    op: &'static str,
    data_b64: Option<String>,
    mzxid: i64,
    mtime_ms: i64,
}

pub async fn divergent(path: &std::path::Path, route: &str, epoch: Option<u64>, json: bool) -> ExitCode {
    let resolved = match super::load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let members = match Members::open(&resolved, route, "", "divergent").await {
        Ok(m) => m,
        Err(code) => return code,
    };
    let meta = &resolved.config.bridge.meta_path;
    let mut entries = std::collections::BTreeSet::new();
    for (member, client) in &members.clients {
        let Ok(client) = client else {
            eprintln!("zkbridge divergent: {member} is unreachable: its archive (if any) is not listed");
            continue;
        };
        match divergent::list(client, meta, route).await {
            Ok(records) => {
                for (n, r) in records.into_iter().filter(|(n, _)| epoch.is_none_or(|e| e == *n)) {
                    entries.insert(Entry {
                        epoch: n,
                        path: r.path,
                        op: match r.op {
                            crate::znodes::DivergentOp::Create => "create",
                            crate::znodes::DivergentOp::Set => "set",
                            crate::znodes::DivergentOp::Delete => "delete",
                        },
                        data_b64: r.data_b64,
                        mzxid: r.mzxid,
                        mtime_ms: r.mtime_ms,
                    });
                }
            }
            Err(e) => {
                eprintln!("zkbridge divergent: {member}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let entries: Vec<Entry> = entries.into_iter().collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("JSON of plain records")
        );
    } else if entries.is_empty() {
        println!("no divergent tail archived for {route}");
    } else {
        println!("{:<6} {:<7} {:<18} path", "epoch", "op", "mzxid");
        for e in &entries {
            println!(
                "{:<6} {:<7} {:<18} {}",
                e.epoch,
                e.op,
                format!("{:#x}", e.mzxid),
                e.path
            );
        }
    }
    ExitCode::SUCCESS
}
