//! The lead loop: while the lease is held, units of dirty paths, resyncs,
//! checkpoints and the target watch run side by side; the loop ends when the
//! lease is lost, handed back, or the bridge shuts down.

use super::*;
use crate::backoff::Backoff;

/// Reconcile units a leader keeps in flight at once.
const UNITS_IN_FLIGHT: usize = 128;

/// A reconcile unit (`Some(id)`) or a resync (`None`) and how it ended:
/// on failure, the error, the resync to redo, or the paths to put back.
type UnitOutcome = (
    Option<u64>,
    Result<(), (Interrupted, Option<ResyncReason>, Vec<(String, Dirty)>)>,
);

type WatchArming<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<PersistentWatcher, Error>> + Send + 'a>>;

type UnitFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = UnitOutcome> + Send + 'a>>;

/// Why a worker stopped leading.
pub(super) enum LeadEnd {
    Shutdown,
    LeaseLost,
    /// Handed back to spread work over instances.
    Surplus,
}

impl Worker {
    /// Mirrors while `lease` is held. A unit of work in progress when
    /// shutdown comes finishes (its writes are idempotent either way).
    pub(super) async fn lead(&self, lease: &Lease, shutdown: &mut watch::Receiver<bool>) -> LeadEnd {
        let since = Instant::now();
        let lost = lease.lost();
        tokio::pin!(lost);
        let mut balance_check = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.start_leading(lease).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "cannot read the route's conflict state; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {},
                        _ = shutdown.changed() => return LeadEnd::Shutdown,
                        _ = &mut lost => return LeadEnd::LeaseLost,
                    }
                }
            }
        }
        backoff.reset();
        let mut target_watch: Option<PersistentWatcher> = None;
        // Anti-entropy passes run beside the worker for as long as it leads.
        let _verifier = self.spawn_verifier();
        let mut running: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        let mut checkpointing: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> = None;
        let mut arming: Option<WatchArming<'_>> = None;
        // No new work before this instant: the last attempt was interrupted.
        let mut paused_until: Option<Instant> = None;
        // No new attempt to arm the target watch before this instant.
        let mut arm_after: Option<Instant> = None;
        let mut arm_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if *shutdown.borrow() {
                return LeadEnd::Shutdown;
            }
            let watch_due = self.route.config.verify_interval_s == 0 || self.status.get().initial_sync_done;
            // The one place the target watch is armed: on taking the lead,
            // after a reconnect (see `zk::watch_subtree`), and — with
            // anti-entropy on — only once the initial sync is done: every
            // event of a bulk copy would come back to it, halving the write
            // rate, and the pass that follows at once covers the window.
            // Armed alongside the units: a round trip to a distant target
            // is not spent holding up the changes that arrived during the
            // initial sync. Echoes are expected from now on: a unit's write
            // that commits after the watch does fires an event that must not
            // look local.
            let arm_due = arm_after.is_none_or(|t| Instant::now() >= t);
            if target_watch.is_none() && arming.is_none() && watch_due && arm_due {
                self.echoes.set_watching(true);
                arming = Some(Box::pin(crate::zk::watch_subtree(lease.client(), &self.target.path)));
            }
            // With anti-entropy off, nothing else would find local changes:
            // no work (and no checkpoint) without the watch.
            let unwatched = self.route.config.verify_interval_s == 0 && target_watch.is_none();
            let flow = match target_watch.as_mut() {
                Some(w) => self.drain_target_events(w),
                None => WatchFlow::Going,
            };
            match flow {
                WatchFlow::Going => {}
                WatchFlow::Ended => return LeadEnd::LeaseLost,
                // Armed again at the top of the loop (see `zk::watch_subtree`).
                WatchFlow::Reconnected => target_watch = None,
            }
            let stop = self.status.get().stopped.clone();
            if let Some(stop) = stop {
                tokio::select! {
                    resumed = self.await_resume(lease, &stop) => if resumed {
                        info!(path = %stop.path, "stop cleared by an operator: applying again");
                        self.status.update(|s| s.stopped = None);
                        self.queue.request_resync(ResyncReason::Startup);
                    },
                    _ = shutdown.changed() => {},
                    _ = &mut lost => return LeadEnd::LeaseLost,
                }
                continue;
            }
            if balance_check.elapsed() >= Duration::from_secs(1) {
                balance_check = Instant::now();
                let surplus = self
                    .counted
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|c| c.should_release(since));
                if surplus {
                    // Only when someone is waiting to take it.
                    let dir = leases_dir(&self.identity.meta_path, self.route.name(), &self.target.ensemble);
                    let read = crate::lease::contenders(lease.client(), &dir);
                    let waiting = tokio::time::timeout(Duration::from_secs(2), read)
                        .await
                        .is_ok_and(|c| c.is_ok_and(|c| c.len() > 1));
                    if waiting {
                        return LeadEnd::Surplus;
                    }
                    if let Some(c) = self.counted.lock().unwrap().as_ref() {
                        c.keep();
                    }
                }
            }
            // A checkpoint on its own costs a round trip to the target: it
            // goes alongside the units rather than holding them up.
            if checkpointing.is_none() && !unwatched {
                if let Some(checkpoint) = self.checkpoint_for(self.queue.reached_barrier()) {
                    checkpointing = Some(Box::pin(self.write_checkpoint(lease, checkpoint)));
                }
            }
            self.review_breaker(lease).await;
            // Start units while there is room. Each costs about one round
            // trip to the target; several in flight hide the distance to a
            // remote region. The queue keeps a path out of a new unit while
            // an older one holds it, and hands out a resync only when no
            // unit is in flight.
            let mut resync = None;
            let paused = paused_until.is_some_and(|t| Instant::now() < t);
            while running.len() < UNITS_IN_FLIGHT && !paused && !unwatched {
                match self.queue.take(self.limits.batch_max_ops * 4) {
                    Some(Work::Paths(unit, paths)) => running.push(Box::pin(async move {
                        let result = self.reconcile(lease, unit, paths).await;
                        (Some(unit), result.map_err(|(e, p)| (e, None, p)))
                    }) as UnitFuture<'_>),
                    Some(Work::Resync(reason)) => {
                        resync = Some(reason);
                        break;
                    }
                    None => break,
                }
            }
            let finished = match resync {
                Some(reason) => {
                    // A standalone checkpoint from before the resync must not
                    // land after it (the source may have been rebuilt).
                    checkpointing = None;
                    // A lost lease ends the lead at once, also mid-resync:
                    // its writes are fenced either way, but a standby should
                    // not wait for a long scan to learn it leads alone.
                    let resynced = tokio::select! {
                        r = self.resync(lease, reason) => r,
                        _ = &mut lost => return LeadEnd::LeaseLost,
                    };
                    Some((None, resynced.map_err(|e| (e, Some(reason), Vec::new()))))
                }
                None => {
                    // A due parked path is taken with new work: not while
                    // paused or full, or waking for it would spin.
                    let parked = self
                        .queue
                        .next_parked_due()
                        .filter(|_| !paused && running.len() < UNITS_IN_FLIGHT);
                    let rearm = arm_after.filter(|_| target_watch.is_none() && arming.is_none());
                    tokio::select! {
                        Some(done) = running.next(), if !running.is_empty() => Some(done),
                        _ = async { checkpointing.as_mut().expect("guarded").await }, if checkpointing.is_some() => {
                            checkpointing = None;
                            None
                        }
                        _ = self.queue.notified() => None,
                        armed = async { arming.as_mut().expect("guarded").await }, if arming.is_some() => {
                            arming = None;
                            match armed {
                                Ok(w) => {
                                    target_watch = Some(w);
                                    arm_backoff.reset();
                                }
                                Err(e) => {
                                    let retry_in = arm_backoff.next_delay();
                                    let retry_in_ms = retry_in.as_millis() as u64;
                                    // Without anti-entropy, no work is done meanwhile.
                                    if self.route.config.verify_interval_s == 0 {
                                        warn!(error = %e, retry_in_ms, "cannot watch the target; retrying");
                                    } else {
                                        debug!(error = %e, retry_in_ms, "cannot arm the target watch yet; retrying");
                                    }
                                    arm_after = Some(Instant::now() + retry_in);
                                }
                            }
                            None
                        }
                        event = async {
                            match target_watch.as_mut() {
                                Some(w) => w.changed().await,
                                None => std::future::pending().await,
                            }
                        } => match self.on_target_event(event) {
                            WatchFlow::Going => None,
                            WatchFlow::Ended => return LeadEnd::LeaseLost,
                            WatchFlow::Reconnected => {
                                target_watch = None;
                                None
                            }
                        },
                        _ = sleep_until(parked) => None,
                        _ = sleep_until(paused_until.filter(|_| paused)) => None,
                        _ = sleep_until(rearm) => None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => None,
                        _ = shutdown.changed() => None,
                        _ = &mut lost => return LeadEnd::LeaseLost,
                    }
                }
            };
            let Some((unit, result)) = finished else {
                continue;
            };
            self.queue.settle(unit);
            match result {
                Ok(()) => {
                    backoff.reset();
                    // An error stays shown while a path it held back waits.
                    if self.queue.next_parked_due().is_none() {
                        self.status.set_error(None);
                    }
                }
                Err((e, reason, paths)) => {
                    if e.lease_lost() {
                        if e.source == Error::RuntimeInconsistent {
                            self.metrics.fencing_rejections.inc();
                        }
                        return LeadEnd::LeaseLost;
                    }
                    match reason {
                        Some(reason) => self.queue.request_resync(reason),
                        None => self.queue.requeue(paths),
                    }
                    // One incident (a lost connection, say) fails every unit
                    // in flight: it pauses new work once, while the others
                    // come back and are put back too.
                    if paused_until.is_none_or(|t| Instant::now() >= t) {
                        let retry_in = backoff.next_delay();
                        warn!(error = %e, retry_in_ms = retry_in.as_millis() as u64, "mirroring interrupted; will retry");
                        self.metrics.error(error_kind(&e.source));
                        self.status.set_error(Some(e.to_string()));
                        paused_until = Some(Instant::now() + retry_in);
                    } else {
                        debug!(error = %e, "unit failed in the same interruption; put back");
                    }
                }
            }
            let error = self.status.get().last_error.clone();
            lease.publish_error(error).await;
        }
    }

    /// Starts the anti-entropy passes of this lead (when the route has
    /// them); they stop when the returned handle is dropped. A panic in a
    /// pass stays in the pass: counted, and the passes start again after a
    /// backoff (see `supervise`).
    fn spawn_verifier(&self) -> Option<AbortOnDrop> {
        if self.route.config.verify_interval_s == 0 {
            return None;
        }
        let verifier = crate::verify::Verifier {
            route: self.route.clone(),
            target: self.target.clone(),
            source_zk: self.source_zk.clone(),
            target_zk: self.target_zk.clone(),
            queue: self.queue.clone(),
            status: Arc::new(self.status.view()),
            drift: self.metrics.drift.clone(),
            reads_per_s: self.limits.verify_reads_per_s,
            interval: Duration::from_secs(self.route.config.verify_interval_s),
        };
        let panics = self.metrics.metrics.errors.with_label_values(&[
            self.metrics.labels[0].as_str(),
            self.metrics.labels[1].as_str(),
            "panic",
        ]);
        let passes = async move {
            let (_running, stopped) = watch::channel(false);
            crate::supervise::supervise(
                move || verifier.clone().run(),
                move |message, retry_in| {
                    panics.inc();
                    warn!(
                        panic = message,
                        ?retry_in,
                        "anti-entropy pass failed; passes start again"
                    );
                },
                stopped,
            )
            .await
        };
        Some(AbortOnDrop(tokio::spawn(passes.instrument(tracing::Span::current()))))
    }

    /// What a new leader reads before applying: paths kept by policy and a
    /// stop left by the previous leader; and the watch on the target path
    /// that reveals local changes from now on.
    pub(super) async fn start_leading(&self, lease: &Lease) -> Result<(), Error> {
        let tgt = lease.client();
        let (meta, route, target) = (&self.identity.meta_path, self.route.name(), &self.target.ensemble);
        self.echoes.set_watching(false);
        // A watch armed by an earlier lead belongs to an older session.
        *self.stop_watch.lock().unwrap() = None;
        let kept = conflict::load_kept(tgt, &crate::znodes::kept_dir(meta, route, target)).await?;
        if !kept.is_empty() {
            info!(paths = kept.len(), "target versions kept by policy (target-wins)");
        }
        self.status.update(|s| s.kept = kept);
        let stop = conflict::read_stopped(tgt, &crate::znodes::stopped_path(meta, route, target)).await?;
        if let Some(stop) = &stop {
            warn!(path = %stop.path, reason = %stop.reason, "route/target is stopped; `zkbridge resume` clears it");
        }
        self.status.update(|s| s.stopped = stop);
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
