//! Capture: turns a route's source watch into dirty paths for every target.
//!
//! The persistent recursive watch is armed *before* any scan, so a change is
//! either seen by the scan or reported by the watch. Events are only hints
//! ("look at this path again"); the workers read the current state. Whenever
//! the event stream may have a gap — a reconnect (ZOOKEEPER-4698), a new
//! session — every target is asked for a full resync, which closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus::IntCounter;
use tracing::{info, warn, Instrument};
use zookeeper_client::EventType;

use crate::config::Route;
use crate::metrics::Metrics;
use crate::path::relative;
use crate::queue::{ResyncReason, TargetQueue};
use crate::shutdown::Shutdown;
use crate::zk::{watch_subtree, Ensemble};
use crate::znodes::{heartbeat_path, now_ms, Heartbeat};

#[derive(Clone)]
pub struct Capture {
    pub route: Arc<Route>,
    pub source: Ensemble,
    pub queues: Vec<Arc<TargetQueue>>,
    pub metrics: Arc<Metrics>,
    pub bridge_id: String,
    pub meta_path: String,
    pub heartbeat: HeartbeatSchedule,
}

/// When a route writes its heartbeats: every `interval`, at its own `phase`
/// within it. Routes on one source share a session and its servers; beating
/// in step, a hundred routes would send their heartbeats, then their
/// checkpoints and progress, in one burst each interval, and every
/// application change arriving then would queue behind it. Phases spread
/// evenly over the interval turn the bursts into a steady trickle.
#[derive(Clone, Copy, Debug)]
pub struct HeartbeatSchedule {
    pub interval: Duration,
    /// Offset from `epoch`, in `[0, interval)`.
    pub phase: Duration,
    /// Shared by the routes of one process, so that phases stay apart when
    /// captures restart at different moments.
    pub epoch: Instant,
}

impl HeartbeatSchedule {
    /// Route `index` of `count`, spread evenly over the interval.
    pub fn spread(interval: Duration, index: usize, count: usize, epoch: Instant) -> HeartbeatSchedule {
        let phase = interval.mul_f64(index as f64 / count.max(1) as f64);
        HeartbeatSchedule { interval, phase, epoch }
    }

    /// The same place in the spread on another interval: a route's other
    /// periodic reads (its runner's role reads) keep apart like its beats.
    pub fn scaled_to(&self, interval: Duration) -> HeartbeatSchedule {
        let fraction = if self.interval.is_zero() {
            0.0
        } else {
            self.phase.as_secs_f64() / self.interval.as_secs_f64()
        };
        HeartbeatSchedule {
            interval,
            phase: interval.mul_f64(fraction),
            epoch: self.epoch,
        }
    }

    /// The first beat at or after `now` on this route's phase.
    pub fn next_after(&self, now: Instant) -> Instant {
        let interval = self.interval.as_nanos().max(1);
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        let phase = self.phase.as_nanos() % interval;
        let into = since % interval;
        let wait = (phase + interval - into) % interval;
        now + Duration::from_nanos(wait as u64)
    }

    fn ticker(&self) -> tokio::time::Interval {
        let first = self.next_after(Instant::now());
        let mut ticker = tokio::time::interval_at(first.into(), self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    }
}

enum Flow {
    Continue,
    SessionEnded,
    /// The same session is back after a lost connection.
    Reconnected,
}

impl Capture {
    pub async fn run(self, mut shutdown: Shutdown) {
        let span = tracing::info_span!("capture", route = %self.route.name(), source = %self.route.source);
        async move {
            let kinds = ["created", "changed", "deleted"]
                .map(|k| self.metrics.source_events.with_label_values(&[self.route.name(), k]));
            let mut generation = 0;
            let mut reason = ResyncReason::Startup;
            loop {
                let session = tokio::select! {
                    s = self.source.session_after(generation) => s,
                    _ = shutdown.requested() => break,
                };
                generation = session.generation;
                let mut watcher = match watch_subtree(&session.client, &self.route.source.path).await {
                    Ok(w) => w,
                    Err(e) => {
                        warn!(error = %e, "cannot arm the source watch; retrying");
                        // On this session if it recovers, else on the next.
                        generation = generation.saturating_sub(1);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                            _ = shutdown.requested() => break,
                        }
                        continue;
                    }
                };
                info!(session = %session.client.session_id(), "source watch armed");
                self.resync_all(reason);
                let mut session_events = crate::zk::SessionTracker::default();
                let mut heartbeat = self.heartbeat.ticker();
                loop {
                    let flow = tokio::select! {
                        e = watcher.changed() => self.handle(e, &kinds, &mut session_events),
                        _ = heartbeat.tick() => {
                            self.heartbeat(&session.client, &mut watcher, &kinds, &mut session_events).await
                        }
                        _ = shutdown.requested() => return,
                    };
                    match flow {
                        Flow::Continue => {}
                        Flow::SessionEnded => {
                            reason = ResyncReason::SessionExpired;
                            break;
                        }
                        Flow::Reconnected => {
                            // The same session is back, but its watch may
                            // not be (see `watch_subtree`): arm it again at
                            // the top of the loop, on this session, and
                            // rescan the gap. No heartbeat runs in between,
                            // so no barrier can pass over the gap.
                            info!("source reconnected; re-arming the watch and rescanning the gap");
                            reason = ResyncReason::Reconnect;
                            generation = generation.saturating_sub(1);
                            break;
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Writes the route's heartbeat in the source and, once the reply (zxid
    /// H) is back, hands every target a barrier at H. The client's session
    /// task pushes a watch event into the watcher's channel before it
    /// completes any reply that follows it on the wire, and the server sends
    /// a session's events and replies in zxid order; so after the reply,
    /// draining the channel handles every event of a transaction ≤ H before
    /// the barrier is placed. The heartbeat may share its `multi` with other
    /// routes' records (`Ensemble::put_record`), but never leaves the
    /// watch's own session, on which all of this holds.
    async fn heartbeat(
        &self,
        client: &zookeeper_client::Client,
        watcher: &mut zookeeper_client::PersistentWatcher,
        kinds: &[IntCounter; 3],
        session_events: &mut crate::zk::SessionTracker,
    ) -> Flow {
        let ts_ms = now_ms();
        let beat = Heartbeat {
            bridge: self.bridge_id.clone(),
            ts_ms,
        };
        let path = heartbeat_path(&self.meta_path, self.route.name());
        match self.source.put_record(client, &path, &beat).await {
            Ok(zxid) => {
                while let Some(event) = watcher.changed().now_or_never() {
                    match self.handle(event, kinds, session_events) {
                        Flow::Continue => {}
                        // No barrier: events before this heartbeat may be
                        // lost (a gap), or the watcher is finished; the
                        // caller re-arms and rescans first.
                        flow => return flow,
                    }
                }
                for q in &self.queues {
                    q.barrier(zxid, ts_ms);
                }
            }
            Err(e) => warn!(error = %e, "cannot write heartbeat to the source; checkpoints wait"),
        }
        Flow::Continue
    }

    fn handle(
        &self,
        event: zookeeper_client::WatchedEvent,
        kinds: &[IntCounter; 3],
        session_events: &mut crate::zk::SessionTracker,
    ) -> Flow {
        match event.event_type {
            EventType::Session => match session_events.on(event.session_state) {
                // Events may have been lost while away.
                crate::zk::SessionChange::Back => return Flow::Reconnected,
                crate::zk::SessionChange::Ended => {
                    warn!(state = ?event.session_state, "source session ended; re-arming on a new session");
                    return Flow::SessionEnded;
                }
                crate::zk::SessionChange::Lost | crate::zk::SessionChange::Nothing => {}
            },
            EventType::NodeChildrenChanged => {}
            kind => {
                let Some(rel) = relative(&self.route.source.path, &event.path) else {
                    return Flow::Continue;
                };
                let idx = match kind {
                    EventType::NodeCreated => 0,
                    EventType::NodeDataChanged => 1,
                    _ => 2,
                };
                kinds[idx].inc();
                if self.route.filter.excluded(rel) {
                    return Flow::Continue;
                }
                if rel.is_empty() && kind == EventType::NodeCreated {
                    // A re-created root: what it holds now may differ from
                    // the target in any way.
                    self.resync_all(ResyncReason::SourceRoot);
                    return Flow::Continue;
                }
                for q in &self.queues {
                    match kind {
                        EventType::NodeDataChanged => q.mark_data(rel),
                        _ => q.mark(rel),
                    }
                }
            }
        }
        Flow::Continue
    }

    fn resync_all(&self, reason: ResyncReason) {
        for q in &self.queues {
            q.request_resync(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_beat_evenly_spread_and_keep_their_phase() {
        let epoch = Instant::now();
        let second = Duration::from_secs(1);
        let phases: Vec<Duration> = (0..4)
            .map(|i| HeartbeatSchedule::spread(second, i, 4, epoch).phase)
            .collect();
        assert_eq!(phases, [0, 250, 500, 750].map(Duration::from_millis));
        let third = HeartbeatSchedule::spread(second, 2, 4, epoch);
        // A capture restarting at any moment beats on the same phase.
        for at in [0, 1, 499, 500, 501, 1_700, 12_345] {
            let now = epoch + Duration::from_millis(at);
            let next = third.next_after(now);
            assert!(next >= now && next - now < second, "{at}");
            assert_eq!((next - epoch).as_millis() % 1000, 500, "{at}");
        }
        assert_eq!(
            third.next_after(epoch + Duration::from_millis(500)),
            epoch + Duration::from_millis(500)
        );
        // Its role reads, every 1 s against beats every 200 ms, keep the
        // same place in the spread.
        let fast = HeartbeatSchedule::spread(Duration::from_millis(200), 2, 4, epoch);
        assert_eq!(fast.scaled_to(second).phase, Duration::from_millis(500));
    }
}
