//! The watch on the target path: the echo of an own write, or a change made
//! by someone else (a conflict for the route's policy).

use super::*;

/// Whether the target watch may still be polled.
pub(super) enum WatchFlow {
    Going,
    Ended,
    /// The target connection is back: the watch must be re-armed (see
    /// `zk::watch_subtree`).
    Reconnected,
}

impl Worker {
    /// Handles the target events that queued up while a unit was applied.
    /// `Ended` once the target session ended (the watcher must not be
    /// polled again, and the lease is gone with the session).
    pub(super) fn drain_target_events(
        &self,
        watcher: &mut PersistentWatcher,
        session_events: &mut crate::zk::SessionTracker,
    ) -> WatchFlow {
        use futures::FutureExt;
        while let Some(event) = watcher.changed().now_or_never() {
            match self.on_target_event(event, session_events) {
                WatchFlow::Going => {}
                flow => return flow,
            }
        }
        WatchFlow::Going
    }

    /// An event in the target: the echo of an own write, or a possible local
    /// change to look at.
    pub(super) fn on_target_event(
        &self,
        event: zookeeper_client::WatchedEvent,
        session_events: &mut crate::zk::SessionTracker,
    ) -> WatchFlow {
        match event.event_type {
            EventType::Session => match session_events.on(event.session_state) {
                crate::zk::SessionChange::Ended => return WatchFlow::Ended,
                // Events (and echoes) may be lost across the gap; the
                // anti-entropy pass catches what the watch missed.
                crate::zk::SessionChange::Lost => self.echoes.reset_echoes(),
                crate::zk::SessionChange::Back => return WatchFlow::Reconnected,
                crate::zk::SessionChange::Nothing => {}
            },
            EventType::NodeChildrenChanged => {}
            _ => {
                if self.echoes.is_echo(&event.path) {
                    return WatchFlow::Going;
                }
                let Some(rel) = path::relative(&self.target.path, &event.path) else {
                    return WatchFlow::Going;
                };
                if self.route.filter.managed(rel) || rel.is_empty() {
                    debug!(path = %event.path, kind = ?event.event_type, "target changed by someone else");
                    self.queue.mark_target(rel);
                }
            }
        }
        WatchFlow::Going
    }
}
