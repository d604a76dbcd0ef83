//! The lead loop: while the lease is held, units of dirty paths, resyncs,
//! checkpoints and the target watch run side by side; the loop ends when the
//! lease is lost, handed back, or the bridge shuts down.
//!
//! It is a small state machine. [`Lead`] holds what one lead has in
//! progress; [`Lead::next_event`] is its only `select!` and says what
//! happened as an [`Event`]; [`Lead::on_event`] is the one place that reacts.
//! A resync is one more piece of work in progress, so a lost lease, a
//! shutdown or a target event is seen while it runs.

use std::future::Future;
use std::pin::Pin;

use super::*;
use crate::backoff::Backoff;

/// Reconcile units a leader keeps in flight at once.
const UNITS_IN_FLIGHT: usize = 128;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A finished piece of work: a reconcile unit (`Some(id)`) or the resync
/// (`None`), and on failure the error and what is left to redo.
type Finished = (Option<u64>, Result<(), (Interrupted, Redo)>);

/// What a failed piece of work leaves to do.
enum Redo {
    Resync(ResyncReason),
    Paths(Vec<(String, Dirty)>),
}

/// What woke the lead loop.
enum Event {
    Finished(Finished),
    /// The standalone checkpoint write ended (it reports its own failures).
    Checkpointed,
    /// The attempt to arm the target watch ended.
    Armed(Result<PersistentWatcher, Error>),
    /// An event of the target watch.
    Target(zookeeper_client::WatchedEvent),
    /// New work, a due timer or a shutdown request: the loop looks again.
    Wake,
    LeaseLost,
}

/// Why a worker stopped leading.
pub(super) enum LeadEnd {
    Shutdown,
    LeaseLost,
    /// Handed back to spread work over instances.
    Surplus,
}

/// What one lead has in progress; owned by the lead loop alone.
struct Lead<'a> {
    worker: &'a Worker,
    lease: &'a Lease,
    /// When this lead began (a surplus lease is kept a while first).
    since: Instant,
    /// Units and the resync in progress.
    running: FuturesUnordered<BoxFuture<'a, Finished>>,
    /// A resync is among `running`: nothing else starts until it ends, as
    /// its scan replaces every dirty path, held delete and barrier.
    resyncing: bool,
    /// A checkpoint written on its own (none rode along with the units).
    checkpointing: Option<BoxFuture<'a, ()>>,
    arming: Option<BoxFuture<'a, Result<PersistentWatcher, Error>>>,
    target_watch: Option<PersistentWatcher>,
    /// The target watch's session, across its events.
    session_events: crate::zk::SessionTracker,
    /// No new work before this instant: the last attempt was interrupted.
    paused_until: Option<Instant>,
    /// No new attempt to arm the target watch before this instant.
    arm_after: Option<Instant>,
    arm_backoff: Backoff,
    /// Spaces attempts after interruptions.
    backoff: Backoff,
    balance_check: Instant,
}

impl Worker {
    /// Mirrors while `lease` is held. Work in progress when the lease is
    /// lost or shutdown comes is dropped: every write is idempotent and
    /// fenced, and the checkpoint covers only what committed.
    pub(super) async fn lead(&self, lease: &Lease, shutdown: &mut Shutdown) -> LeadEnd {
        let lost = lease.lost();
        tokio::pin!(lost);
        if let Some(end) = self.read_lead_state(lease, shutdown, &mut lost).await {
            return end;
        }
        // Anti-entropy passes run beside the worker for as long as it leads.
        let _verifier = self.spawn_verifier();
        let mut lead = Lead::new(self, lease);
        loop {
            if shutdown.is_requested() {
                return LeadEnd::Shutdown;
            }
            lead.arm_target_watch();
            if let Some(end) = lead.drain_target_events() {
                return end;
            }
            // A reconnect seen while draining: armed again at once.
            lead.arm_target_watch();
            // While a resync runs, only events are handled (see `resyncing`).
            if !lead.resyncing {
                let stop = self.status.get().stopped.clone();
                if let Some(stop) = stop {
                    tokio::select! {
                        resumed = self.await_resume(lease, &stop) => if resumed {
                            info!(path = %stop.path, "stop cleared by an operator: applying again");
                            self.status.update(|s| s.stopped = None);
                            self.queue.request_resync(ResyncReason::Startup);
                        },
                        _ = shutdown.requested() => {},
                        _ = &mut lost => return LeadEnd::LeaseLost,
                    }
                    continue;
                }
                if lead.is_surplus().await {
                    return LeadEnd::Surplus;
                }
                lead.start_checkpoint();
                self.review_breaker(lease).await;
                lead.start_work();
            }
            let event = lead.next_event(shutdown, &mut lost).await;
            if let Some(end) = lead.on_event(event).await {
                return end;
            }
        }
    }

    /// Reads what a new leader needs before applying (see
    /// `start_leading`), retrying until it can; `Some` when the lead ends
    /// first.
    async fn read_lead_state(
        &self,
        lease: &Lease,
        shutdown: &mut Shutdown,
        lost: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<LeadEnd> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let Err(e) = self.start_leading(lease).await else {
                return None;
            };
            warn!(error = %e, "cannot read the route's conflict state; retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {},
                _ = shutdown.requested() => return Some(LeadEnd::Shutdown),
                _ = &mut *lost => return Some(LeadEnd::LeaseLost),
            }
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
            // Stopped by aborting this task (see `AbortOnDrop`), never by a trigger.
            let (_running, stopped) = crate::shutdown::channel();
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

impl<'a> Lead<'a> {
    fn new(worker: &'a Worker, lease: &'a Lease) -> Self {
        Lead {
            worker,
            lease,
            since: Instant::now(),
            running: FuturesUnordered::new(),
            resyncing: false,
            checkpointing: None,
            arming: None,
            target_watch: None,
            session_events: Default::default(),
            paused_until: None,
            arm_after: None,
            arm_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            balance_check: Instant::now(),
        }
    }

    fn is_paused(&self) -> bool {
        self.paused_until.is_some_and(|t| Instant::now() < t)
    }

    /// With anti-entropy off, nothing else would find local changes: no
    /// work (and no checkpoint) without the target watch.
    fn unwatched(&self) -> bool {
        self.worker.route.config.verify_interval_s == 0 && self.target_watch.is_none()
    }

    /// The one place the target watch is armed: on taking the lead, after a
    /// reconnect (see `zk::watch_subtree`), and — with anti-entropy on —
    /// only once the initial sync is done: every event of a bulk copy would
    /// come back to it, halving the write rate, and the pass that follows
    /// at once covers the window. Armed alongside the units: a round trip
    /// to a distant target is not spent holding up the changes that arrived
    /// during the initial sync. Echoes are expected from now on: a unit's
    /// write that commits after the watch does fires an event that must not
    /// look local.
    fn arm_target_watch(&mut self) {
        let w = self.worker;
        let due = w.route.config.verify_interval_s == 0 || w.status.get().initial_sync_done;
        let backed_off = self.arm_after.is_some_and(|t| Instant::now() < t);
        if self.target_watch.is_none() && self.arming.is_none() && due && !backed_off {
            w.echoes.set_watching(true);
            self.arming = Some(Box::pin(crate::zk::watch_subtree(self.lease.client(), &w.target.path)));
        }
    }

    /// Handles the target events that are already there; `Some` when the
    /// watch says the session ended.
    fn drain_target_events(&mut self) -> Option<LeadEnd> {
        let flow = match self.target_watch.as_mut() {
            Some(w) => self.worker.drain_target_events(w, &mut self.session_events),
            None => WatchFlow::Going,
        };
        self.on_watch_flow(flow)
    }

    fn on_watch_flow(&mut self, flow: WatchFlow) -> Option<LeadEnd> {
        match flow {
            WatchFlow::Going => None,
            WatchFlow::Ended => Some(LeadEnd::LeaseLost),
            // Armed again at the top of the loop (see `zk::watch_subtree`).
            WatchFlow::Reconnected => {
                self.target_watch = None;
                None
            }
        }
    }

    /// Whether to hand the lease back: this instance leads more than its
    /// share (checked once a second), and someone is waiting to take it.
    async fn is_surplus(&mut self) -> bool {
        if self.balance_check.elapsed() < Duration::from_secs(1) {
            return false;
        }
        self.balance_check = Instant::now();
        let w = self.worker;
        let surplus = w
            .counted
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|c| c.should_release(self.since));
        if !surplus {
            return false;
        }
        let dir = leases_dir(&w.identity.meta_path, w.route.name(), &w.target.ensemble);
        let read = crate::lease::contenders(self.lease.client(), &dir);
        let waiting = tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .is_ok_and(|c| c.is_ok_and(|c| c.len() > 1));
        if !waiting {
            if let Some(c) = w.counted.lock().unwrap().as_ref() {
                c.keep();
            }
        }
        waiting
    }

    /// A checkpoint on its own costs a round trip to the target: it goes
    /// alongside the units rather than holding them up.
    fn start_checkpoint(&mut self) {
        if self.checkpointing.is_some() || self.unwatched() {
            return;
        }
        let w = self.worker;
        if let Some(checkpoint) = w.checkpoint_for(w.queue.reached_barrier()) {
            self.checkpointing = Some(Box::pin(w.write_checkpoint(self.lease, checkpoint)));
        }
    }

    /// Starts units while there is room. Each costs about one round trip to
    /// the target; several in flight hide the distance to a remote region.
    /// The queue keeps a path out of a new unit while an older one holds
    /// it, and hands out a resync only when no unit is in flight.
    fn start_work(&mut self) {
        if self.is_paused() || self.unwatched() {
            return;
        }
        let (w, lease) = (self.worker, self.lease);
        while self.running.len() < UNITS_IN_FLIGHT {
            match w.queue.take(w.limits.batch_max_ops * 4) {
                Some(Work::Paths(unit, paths)) => self.running.push(Box::pin(async move {
                    let result = w.reconcile(lease, unit, paths).await;
                    (Some(unit), result.map_err(|(e, p)| (e, Redo::Paths(p))))
                })),
                Some(Work::Resync(reason)) => {
                    // A standalone checkpoint from before the resync must
                    // not land after it (the source may have been rebuilt).
                    self.checkpointing = None;
                    self.resyncing = true;
                    self.running.push(Box::pin(async move {
                        let result = w.resync(lease, reason).await;
                        (None, result.map_err(|e| (e, Redo::Resync(reason))))
                    }));
                    return;
                }
                None => return,
            }
        }
    }

    /// The lead loop's one wait: for work to end, the watch, the lease, a
    /// timer, new work or shutdown.
    async fn next_event(&mut self, shutdown: &mut Shutdown, lost: &mut (impl Future<Output = ()> + Unpin)) -> Event {
        let queue = &self.worker.queue;
        let paused = self.is_paused();
        let room = !paused && !self.resyncing && !self.unwatched() && self.running.len() < UNITS_IN_FLIGHT;
        // A due parked path is taken with new work: not while paused or
        // full, or waking for it would spin.
        let parked = queue.next_parked_due().filter(|_| room);
        let rearm = self
            .arm_after
            .filter(|_| self.target_watch.is_none() && self.arming.is_none());
        let paused_until = self.paused_until.filter(|_| paused);
        tokio::select! {
            Some(done) = self.running.next(), if !self.running.is_empty() => Event::Finished(done),
            _ = async { self.checkpointing.as_mut().expect("guarded").await }, if self.checkpointing.is_some() => {
                Event::Checkpointed
            }
            armed = async { self.arming.as_mut().expect("guarded").await }, if self.arming.is_some() => {
                Event::Armed(armed)
            }
            event = async {
                match self.target_watch.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => Event::Target(event),
            _ = queue.notified() => Event::Wake,
            _ = sleep_until(parked) => Event::Wake,
            _ = sleep_until(paused_until) => Event::Wake,
            _ = sleep_until(rearm) => Event::Wake,
            _ = tokio::time::sleep(Duration::from_secs(1)) => Event::Wake,
            _ = shutdown.requested() => Event::Wake,
            _ = &mut *lost => Event::LeaseLost,
        }
    }

    /// The one place the lead reacts to what happened; `Some` ends it.
    async fn on_event(&mut self, event: Event) -> Option<LeadEnd> {
        match event {
            Event::LeaseLost => Some(LeadEnd::LeaseLost),
            Event::Wake => None,
            Event::Checkpointed => {
                self.checkpointing = None;
                None
            }
            Event::Armed(armed) => {
                self.arming = None;
                self.on_armed(armed);
                None
            }
            Event::Target(event) => {
                let flow = self.worker.on_target_event(event, &mut self.session_events);
                self.on_watch_flow(flow)
            }
            Event::Finished((unit, result)) => self.on_finished(unit, result).await,
        }
    }

    fn on_armed(&mut self, armed: Result<PersistentWatcher, Error>) {
        match armed {
            Ok(w) => {
                self.target_watch = Some(w);
                self.session_events = Default::default();
                self.arm_backoff.reset();
            }
            Err(e) => {
                let retry_in = self.arm_backoff.next_delay();
                let retry_in_ms = retry_in.as_millis() as u64;
                // Without anti-entropy, no work is done meanwhile.
                if self.worker.route.config.verify_interval_s == 0 {
                    warn!(error = %e, retry_in_ms, "cannot watch the target; retrying");
                } else {
                    debug!(error = %e, retry_in_ms, "cannot arm the target watch yet; retrying");
                }
                self.arm_after = Some(Instant::now() + retry_in);
            }
        }
    }

    async fn on_finished(&mut self, unit: Option<u64>, result: Result<(), (Interrupted, Redo)>) -> Option<LeadEnd> {
        let w = self.worker;
        w.queue.settle(unit);
        if unit.is_none() {
            self.resyncing = false;
        }
        match result {
            Ok(()) => {
                self.backoff.reset();
                // An error stays shown while a path it held back waits.
                if w.queue.next_parked_due().is_none() {
                    w.status.set_error(None);
                }
            }
            Err((e, redo)) => {
                if e.lease_lost() {
                    if e.source == Error::RuntimeInconsistent {
                        w.metrics.fencing_rejections.inc();
                    }
                    return Some(LeadEnd::LeaseLost);
                }
                match redo {
                    Redo::Resync(reason) => w.queue.request_resync(reason),
                    Redo::Paths(paths) => w.queue.requeue(paths),
                }
                // One incident (a lost connection, say) fails every unit in
                // flight: it pauses new work once, while the others come
                // back and are put back too.
                if self.is_paused() {
                    debug!(error = %e, "unit failed in the same interruption; put back");
                } else {
                    let retry_in = self.backoff.next_delay();
                    warn!(error = %e, retry_in_ms = retry_in.as_millis() as u64, "mirroring interrupted; will retry");
                    w.metrics.error(error_kind(&e.source));
                    w.status.set_error(Some(e.to_string()));
                    self.paused_until = Some(Instant::now() + retry_in);
                }
            }
        }
        let error = w.status.get().last_error.clone();
        self.lease.publish_error(error).await;
        None
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
