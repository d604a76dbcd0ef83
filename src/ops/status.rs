//! `zkbridge status` and `zkbridge status --watch`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::load;
use crate::config::Resolved;
use crate::status::Sessions;

/// How the status is shown.
#[derive(Debug, Clone, Copy)]
pub struct Show {
    pub json: bool,
    /// Refresh at this interval until interrupted (`--watch`).
    pub watch: Option<Duration>,
}

pub async fn status(path: &std::path::Path, show: Show) -> ExitCode {
    if show.watch.is_some_and(|i| i < Duration::from_millis(100)) {
        eprintln!("zkbridge status: --interval must be at least 100ms");
        return ExitCode::from(2);
    }
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut sessions = Sessions::new();
    let Some(interval) = show.watch else {
        connect_missing(&resolved, &mut sessions).await;
        let status = crate::status::collect(&resolved, &sessions).await;
        print!("{}", render(&status, show.json));
        return ExitCode::SUCCESS;
    };
    // Redrawn in place on a terminal, like `watch`; one block (or one JSON
    // document per line) after another when piped. Ctrl-C ends it at any
    // point, also while an unreachable ensemble holds a refresh up.
    let terminal = std::io::stdout().is_terminal();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let refresh = async {
            connect_missing(&resolved, &mut sessions).await;
            crate::status::collect(&resolved, &sessions).await
        };
        let status = tokio::select! {
            status = refresh => status,
            _ = &mut stop => return ExitCode::SUCCESS,
        };
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let body = render(&status, show.json);
        let frame = match (terminal, show.json) {
            (true, false) => format!(
                "\x1b[H\x1b[2J{at}  every {}  (Ctrl-C to stop)\n\n{body}",
                humantime::format_duration(interval)
            ),
            (false, false) => format!("{at}\n{body}\n"),
            (_, true) => format!("{}\n", serde_json::to_string(&status).expect("JSON")),
        };
        // Whoever reads it has gone (`| head`, a closed pager): done.
        let mut out = std::io::stdout().lock();
        if out.write_all(frame.as_bytes()).and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = &mut stop => return ExitCode::SUCCESS,
        }
    }
}

fn render(status: &crate::status::Status, json: bool) -> String {
    match json {
        true => format!("{}\n", serde_json::to_string_pretty(status).expect("JSON")),
        false => crate::status::render_text(status),
    }
}

/// A session on every ensemble that has none that works (not yet made,
/// failed, or ended), all at once, each within its session timeout.
async fn connect_missing(resolved: &Resolved, sessions: &mut Sessions) {
    let missing: BTreeMap<_, _> = resolved
        .config
        .ensembles
        .iter()
        .filter(|(name, _)| {
            !sessions
                .get(*name)
                .is_some_and(|s| s.as_ref().is_ok_and(|c| !c.state().is_terminated()))
        })
        .collect();
    let connecting = missing
        .into_iter()
        .map(|(name, ensemble)| async move { (name.clone(), super::connect_within(ensemble).await) });
    sessions.extend(futures::future::join_all(connecting).await);
}
