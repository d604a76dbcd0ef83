//! Capture: turns a route's source watch into dirty paths for every target.
//!
//! The persistent recursive watch is armed *before* any scan, so a change is
//! either seen by the scan or reported by the watch. Events are only hints
//! ("look at this path again"); the workers read the current state. Whenever
//! the event stream may have a gap — a reconnect (ZOOKEEPER-4698), a new
//! session — every target is asked for a full resync, which closes it.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn, Instrument};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

use crate::config::Route;
use crate::metrics::Metrics;
use crate::queue::{ResyncReason, TargetQueue};
use crate::tree::relative;
use crate::zk::Ensemble;

pub struct Capture {
    pub route: Arc<Route>,
    pub source: Ensemble,
    pub queues: Vec<Arc<TargetQueue>>,
    pub metrics: Arc<Metrics>,
}

impl Capture {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let span = tracing::info_span!("capture", route = %self.route.name(), source = %self.route.source);
        async move {
            let kinds = ["created", "changed", "deleted"]
                .map(|k| self.metrics.source_events.with_label_values(&[self.route.name(), k]));
            let mut generation = 0;
            let mut reason = ResyncReason::Startup;
            loop {
                let session = tokio::select! {
                    s = self.source.session_after(generation) => s,
                    _ = shutdown.changed() => break,
                };
                generation = session.generation;
                let mut watcher = match session
                    .client
                    .watch(&self.route.source.path, AddWatchMode::PersistentRecursive)
                    .await
                {
                    Ok(w) => w,
                    Err(e) => {
                        warn!(error = %e, "cannot arm the source watch; retrying on a new session");
                        // Arming only fails when the session is unusable;
                        // wait for the next generation.
                        generation = generation.saturating_sub(1);
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {},
                            _ = shutdown.changed() => break,
                        }
                        continue;
                    }
                };
                info!(session = %session.client.session_id(), "source watch armed");
                self.resync_all(reason);
                let mut disconnected = false;
                loop {
                    let event = tokio::select! {
                        e = watcher.changed() => e,
                        _ = shutdown.changed() => return,
                    };
                    match event.event_type {
                        EventType::Session => match event.session_state {
                            SessionState::Disconnected => disconnected = true,
                            SessionState::SyncConnected | SessionState::ConnectedReadOnly if disconnected => {
                                // Events may have been lost while away.
                                disconnected = false;
                                info!("source reconnected; rescanning to cover events lost in the gap");
                                self.resync_all(ResyncReason::Reconnect);
                            }
                            s if s.is_terminated() => {
                                warn!(state = ?s, "source session ended; re-arming on a new session");
                                reason = ResyncReason::SessionExpired;
                                break;
                            }
                            _ => {}
                        },
                        EventType::NodeChildrenChanged => {}
                        kind => {
                            let Some(rel) = relative(&self.route.source.path, &event.path) else {
                                continue;
                            };
                            let idx = match kind {
                                EventType::NodeCreated => 0,
                                EventType::NodeDataChanged => 1,
                                _ => 2,
                            };
                            kinds[idx].inc();
                            if self.route.filter.excluded(rel) {
                                continue;
                            }
                            if rel.is_empty() && kind == EventType::NodeCreated {
                                // A re-created root: what it holds now may
                                // differ from the target in any way.
                                self.resync_all(ResyncReason::SourceRoot);
                                continue;
                            }
                            for q in &self.queues {
                                q.mark(rel, false);
                            }
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn resync_all(&self, reason: ResyncReason) {
        for q in &self.queues {
            q.request_resync(reason);
        }
    }
}
