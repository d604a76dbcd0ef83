//! The cross-region barrier: wait until every target of a route has applied
//! a given source zxid.
//!
//! An application writes in the source, takes the zxid from the reply's
//! stat, and calls [`until_applied`]: once it returns `true`, every region
//! holds that write (and everything before it). It reads the progress
//! znodes the leaders write back to the source after each checkpoint, and
//! waits on watches, not by polling.

use std::time::Duration;

use tokio::time::Instant;
use zookeeper_client::{Client, Error, EventType};

use crate::config::Resolved;
use crate::znodes::{progress_path, Progress};

/// Why waiting could not even start.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("--route {0}: no such route in the configuration")]
    UnknownRoute(String),
    #[error("source ensemble {ensemble}: {source}")]
    Source {
        ensemble: String,
        #[source]
        source: Error,
    },
}

/// Targets of `route` that have not applied `zxid` yet, in config order.
pub async fn pending_targets(
    config: &Resolved,
    source: &Client,
    route: &str,
    zxid: i64,
) -> Result<Vec<String>, WaitError> {
    let route = config
        .routes
        .iter()
        .find(|r| r.name() == route)
        .ok_or_else(|| WaitError::UnknownRoute(route.to_string()))?;
    let meta = &config.config.bridge.meta_path;
    // After a switchover or fail-over the mirrors are every member but the
    // primary the role znode names (the configured targets before any).
    let primary = crate::role_watch::current(source, meta, route.name())
        .await
        .map_err(|e| WaitError::Source {
            ensemble: route.source.ensemble.clone(),
            source: e,
        })?
        .map(|p| p.ensemble)
        .unwrap_or_else(|| route.source.ensemble.clone());
    let mut pending = Vec::new();
    for target in route.members().filter(|m| m.ensemble != primary) {
        let progress = applied(source, &progress_path(meta, route.name(), &target.ensemble))
            .await
            .map_err(|e| WaitError::Source {
                ensemble: route.source.ensemble.clone(),
                source: e,
            })?;
        if progress.is_none_or(|p| p.source_zxid < zxid) {
            pending.push(target.ensemble.clone());
        }
    }
    Ok(pending)
}

async fn applied(source: &Client, path: &str) -> Result<Option<Progress>, Error> {
    match source.get_data(path).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
        Err(Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Blocks until every target of `route` has applied source zxid `zxid`
/// (`Ok(true)`), or `timeout` passes (`Ok(false)`). `source` must be a
/// session on the route's source ensemble.
pub async fn until_applied(
    config: &Resolved,
    source: &Client,
    route: &str,
    zxid: i64,
    timeout: Duration,
) -> Result<bool, WaitError> {
    let deadline = Instant::now() + timeout;
    // Reads and watches count against the deadline too (a partitioned
    // source must not hold the caller past it).
    match tokio::time::timeout_at(deadline, wait_until(config, source, route, zxid, deadline)).await {
        Ok(result) => result,
        Err(_) => Ok(false),
    }
}

async fn wait_until(
    config: &Resolved,
    source: &Client,
    route: &str,
    zxid: i64,
    deadline: Instant,
) -> Result<bool, WaitError> {
    let meta = config.config.bridge.meta_path.clone();
    let source_name = config
        .routes
        .iter()
        .find(|r| r.name() == route)
        .map(|r| r.source.ensemble.clone())
        .ok_or_else(|| WaitError::UnknownRoute(route.to_string()))?;
    let fail = |source| WaitError::Source {
        ensemble: source_name.clone(),
        source,
    };
    loop {
        let pending = pending_targets(config, source, route, zxid).await?;
        let Some(first) = pending.first() else {
            return Ok(true);
        };
        // Watch the first target still behind; when its progress changes,
        // look at all of them again.
        let path = progress_path(&meta, route, first);
        let watch = source.check_and_watch_stat(&path).await.map_err(fail)?;
        // The progress may have moved between the read and the watch.
        if pending_targets(config, source, route, zxid).await?.first() != Some(first) {
            continue;
        }
        let (_, watcher) = watch;
        tokio::select! {
            event = watcher.changed() => {
                if event.event_type == EventType::Session && event.session_state.is_terminated() {
                    return Err(fail(Error::SessionExpired));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(false),
        }
    }
}

/// How far `member` has applied `route`, as its leader last reported to
/// the source (`source`: a session on the route's current primary).
pub(crate) async fn applied_position(source: &Client, (meta, route): (&str, &str), member: &str) -> Option<i64> {
    applied(source, &progress_path(meta, route, member))
        .await
        .ok()
        .flatten()
        .map(|p| p.source_zxid)
}

/// Blocks until every one of `members` has applied source zxid `zxid`
/// (`Ok(true)`) or `timeout` passes (`Ok(false)`); `source` is a session on
/// the route's current primary.
pub(crate) async fn until_members_applied(
    source: &Client,
    (meta, route): (&str, &str),
    members: &[String],
    zxid: i64,
    timeout: Duration,
) -> Result<bool, Error> {
    let deadline = Instant::now() + timeout;
    let pending = || async {
        let mut pending = Vec::new();
        for m in members {
            let progress = applied(source, &progress_path(meta, route, m)).await?;
            if progress.is_none_or(|p| p.source_zxid < zxid) {
                pending.push(m.clone());
            }
        }
        Ok::<_, Error>(pending)
    };
    let wait = async {
        loop {
            let behind = pending().await?;
            let Some(first) = behind.first() else { return Ok(true) };
            let (_, watcher) = source.check_and_watch_stat(&progress_path(meta, route, first)).await?;
            if pending().await?.first() != Some(first) {
                continue;
            }
            let event = watcher.changed().await;
            if event.event_type == EventType::Session && event.session_state.is_terminated() {
                return Err(Error::SessionExpired);
            }
        }
    };
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(result) => result,
        Err(_) => Ok(false),
    }
}

/// Parses a zxid given as decimal or `0x…` hex.
pub fn parse_zxid(s: &str) -> Result<i64, String> {
    s.parse::<crate::zxid::Zxid>().map(|z| z.0)
}
