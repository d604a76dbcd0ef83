//! `zkbridge wait`.

use std::process::ExitCode;
use std::time::Duration;

use super::{load, session};

pub async fn wait(path: &std::path::Path, route: &str, zxid: i64, timeout: Duration) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(r) = resolved.routes.iter().find(|r| r.name() == route) else {
        eprintln!("zkbridge wait: --route {route}: no such route in the configuration");
        return ExitCode::from(2);
    };
    let source = match session(&resolved, &r.source.ensemble, "wait").await {
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
