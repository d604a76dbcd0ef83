//! The one-shot commands of the command line (design §3): each reads the
//! configuration and the znodes, talks to the ensembles, prints, and returns
//! the exit code the contract gives it.

use std::process::ExitCode;
use std::time::Duration;

use crate::config;

pub mod admin;
pub mod conflicts;
pub mod diff;
pub mod divergent;
pub mod explain;
pub mod failover;
pub(crate) mod roles;
pub mod status;
pub mod switchover;
pub mod sync;
pub mod wait;

pub fn load(path: &std::path::Path) -> Result<config::Resolved, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("zkbridge: invalid configuration {}: {e}", path.display());
        ExitCode::from(2)
    })
}

/// Why `route` is not a mirror route `command` can work on, in words.
pub(crate) fn not_a_mirror(resolved: &config::Resolved, route: &str, command: &str) -> String {
    match resolved.active_route(route) {
        Some(_) => format!(
            "--route {route}: an active-active route (every member writable) has no primary or mirrors; `zkbridge {command}` works on mirror routes (for active-active: status, diff, conflicts)"
        ),
        None => format!("--route {route}: no such route in the configuration"),
    }
}

/// A session on one ensemble of the configuration, or exit 2 naming it.
pub(crate) async fn session(
    resolved: &config::Resolved,
    ensemble: &str,
    command: &str,
) -> Result<zookeeper_client::Client, ExitCode> {
    let Some(settings) = resolved.config.ensembles.get(ensemble) else {
        eprintln!("zkbridge {command}: ensemble {ensemble}: not in the configuration");
        return Err(ExitCode::from(2));
    };
    connect_within(settings).await.map_err(|e| {
        eprintln!("zkbridge {command}: ensemble {ensemble}: {e}");
        ExitCode::from(2)
    })
}

/// A session on an ensemble within its session timeout (at least the
/// status read timeout), or why not.
pub(crate) async fn connect_within(settings: &config::EnsembleConfig) -> Result<zookeeper_client::Client, String> {
    let timeout = Duration::from_millis(settings.session_timeout_ms).max(crate::status::READ_TIMEOUT);
    match tokio::time::timeout(timeout, crate::zk::connect(settings)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no session within {}s", timeout.as_secs())),
    }
}

/// A route and one of its targets, as a command names them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteTarget<'a> {
    pub route: &'a str,
    pub target: &'a str,
}

/// Loads the config, checks that `route` has a member on `target`, asks
/// for `--yes` on a terminal, and opens a session on the target ensemble.
pub(crate) async fn target_session(
    path: &std::path::Path,
    command: &str,
    RouteTarget { route, target }: RouteTarget<'_>,
    yes: bool,
    what: &str,
) -> Result<(config::Resolved, zookeeper_client::Client), ExitCode> {
    use std::io::IsTerminal;
    let resolved = load(path)?;
    // Any member: after a switchover the configured source is a mirror too,
    // with a checkpoint and stops of its own.
    if !resolved
        .route(route)
        .is_some_and(|r| r.members().any(|m| m.ensemble == target))
    {
        match resolved.active_route(route) {
            Some(_) => eprintln!("zkbridge {command}: {}", not_a_mirror(&resolved, route, command)),
            None => eprintln!("zkbridge {command}: route {route} has no member on ensemble {target}"),
        }
        return Err(ExitCode::from(2));
    }
    if !yes && std::io::stdin().is_terminal() {
        eprintln!("zkbridge {command}: {what}. Add --yes to confirm.");
        return Err(ExitCode::from(2));
    }
    let client = session(&resolved, target, command).await?;
    Ok((resolved, client))
}
