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

use crate::config::{Resolved, Route};
use crate::znodes::{progress_path, Progress, RouteKey};

/// Why waiting could not even start.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("--route {0}: no such route in the configuration")]
    UnknownRoute(String),
    #[error("--route {0}: an active-active route has no single source whose zxids every member applies; `wait` works on mirror routes (for active-active: `zkbridge status`, lag per member pair)")]
    ActiveActive(String),
    #[error("source ensemble {ensemble}: {source}")]
    Source {
        ensemble: String,
        #[source]
        source: Error,
    },
}

/// The route and the members a wait covers: every member but the primary
/// its role znode (read through `source`) names — the configured targets
/// before any switchover or fail-over.
async fn mirrors<'a>(
    config: &'a Resolved,
    source: &Client,
    route: &str,
) -> Result<(&'a Route, Vec<String>), WaitError> {
    let route = config.route(route).ok_or_else(|| match config.active_route(route) {
        Some(_) => WaitError::ActiveActive(route.to_string()),
        None => WaitError::UnknownRoute(route.to_string()),
    })?;
    let meta = &config.config.bridge.meta_path;
    let primary = crate::role_watch::current(source, meta, route.name())
        .await
        .map_err(source_error(route))?
        .map(|p| p.ensemble)
        .unwrap_or_else(|| route.source.ensemble.clone());
    let members = route
        .members()
        .filter(|m| m.ensemble != primary)
        .map(|m| m.ensemble.clone())
        .collect();
    Ok((route, members))
}

fn source_error(route: &Route) -> impl Fn(Error) -> WaitError + '_ {
    move |source| WaitError::Source {
        ensemble: route.source.ensemble.clone(),
        source,
    }
}

/// Targets of `route` that have not applied `zxid` yet, in config order.
pub async fn pending_targets(
    config: &Resolved,
    source: &Client,
    route: &str,
    zxid: i64,
) -> Result<Vec<String>, WaitError> {
    let (route, members) = mirrors(config, source, route).await?;
    pending_among(source, key(config, route), &members, zxid)
        .await
        .map_err(source_error(route))
}

/// Those of `members` whose progress (in the primary, behind `source`) is
/// below `zxid`.
async fn pending_among(
    source: &Client,
    key: RouteKey<'_>,
    members: &[String],
    zxid: i64,
) -> Result<Vec<String>, Error> {
    let mut pending = Vec::new();
    for m in members {
        if applied_position(source, key, m).await?.is_none_or(|z| z < zxid) {
            pending.push(m.clone());
        }
    }
    Ok(pending)
}

/// How far `member` has applied `route`, as its leader last reported to
/// the source (`source`: a session on the route's current primary).
pub(crate) async fn applied_position(source: &Client, key: RouteKey<'_>, member: &str) -> Result<Option<i64>, Error> {
    match source.get_data(&progress_path(key.meta, key.route, member)).await {
        Ok((data, _)) => Ok(serde_json::from_slice::<Progress>(&data).ok().map(|p| p.source_zxid)),
        Err(Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Blocks until every target of `route` has applied source zxid `zxid`
/// (`Ok(true)`), or `timeout` passes (`Ok(false)`). `source` must be a
/// session on the route's current primary.
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
    let Ok(found) = tokio::time::timeout_at(deadline, mirrors(config, source, route)).await else {
        return Ok(false);
    };
    let (route, members) = found?;
    until_members_applied(source, key(config, route), &members, zxid, deadline - Instant::now())
        .await
        .map_err(source_error(route))
}

/// Blocks until every one of `members` has applied source zxid `zxid`
/// (`Ok(true)`) or `timeout` passes (`Ok(false)`); `source` is a session on
/// the route's current primary.
pub(crate) async fn until_members_applied(
    source: &Client,
    key: RouteKey<'_>,
    members: &[String],
    zxid: i64,
    timeout: Duration,
) -> Result<bool, Error> {
    let deadline = Instant::now() + timeout;
    let wait = async {
        loop {
            let behind = pending_among(source, key, members, zxid).await?;
            let Some(first) = behind.first() else { return Ok(true) };
            // Watch the first member still behind; when its progress
            // changes, look at all of them again.
            let (_, watcher) = source
                .check_and_watch_stat(&progress_path(key.meta, key.route, first))
                .await?;
            // The progress may have moved between the read and the watch.
            if pending_among(source, key, members, zxid).await?.first() != Some(first) {
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

/// Where `route`'s znodes live under this configuration's `meta_path`.
fn key<'a>(config: &'a Resolved, route: &'a Route) -> RouteKey<'a> {
    RouteKey {
        meta: &config.config.bridge.meta_path,
        route: route.name(),
    }
}
