//! `zkbridge wait`.

use std::process::ExitCode;
use std::time::Duration;

use super::{load, session};

pub async fn wait(path: &std::path::Path, route: &str, zxid: i64, timeout: Duration) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // The zxid is one of the current primary's: its progress znodes say.
    let members = match super::roles::Members::open(&resolved, route, "", "wait").await {
        Ok(m) => m,
        Err(code) => return code,
    };
    let meta = &resolved.config.bridge.meta_path;
    let primary = match crate::role::current(&members.route, meta, &members.clients).await {
        Ok((_, role)) => role.primary,
        Err(e) => {
            eprintln!("zkbridge wait: {e}");
            return ExitCode::from(2);
        }
    };
    let source = match session(&resolved, &primary, "wait").await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::wait::until_applied(&resolved, &source, route, zxid, timeout).await {
        Ok(true) => {
            println!("every target of {route} applied {zxid:#x}");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            let behind = crate::wait::pending_targets(&resolved, &source, route, zxid)
                .await
                .unwrap_or_default();
            eprintln!(
                "zkbridge wait: timed out after {}: {zxid:#x} not yet applied in {}",
                humantime::format_duration(timeout),
                behind.join(", ")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("zkbridge wait: {e}");
            ExitCode::from(2)
        }
    }
}
