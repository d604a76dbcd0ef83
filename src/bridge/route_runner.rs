//! Runs one route under the role its members agree on (design §6): reads
//! every member's role znode, creates it where it is missing, brings
//! members that missed a flip up to the highest epoch (archiving a
//! returning old primary's divergent tail first), and runs the route's
//! capture and workers oriented from the current primary — stopping and
//! starting them again whenever the epoch moves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::capture::{Capture, HeartbeatSchedule};
use crate::config::{Endpoint, Route};
use crate::metrics::Metrics;
use crate::queue::TargetQueue;
use crate::role::{self, store, Decision};
use crate::shutdown::Shutdown;
use crate::supervise::supervise;
use crate::worker::{Identity, Limits, StatusTx, Wiring, Worker};
use crate::zk::Ensemble;
use crate::znodes::{frozen_path, now_ms, FrozenRecord, RoleRecord};

/// How often the members' role znodes are read again (besides their
/// watches): also how soon a member that comes back is brought up.
const REREAD: Duration = Duration::from_secs(1);

/// How long a switchover's freeze may hold the route's orientation.
const FROZEN_HOLD: Duration = Duration::from_secs(120);

/// One member of the route, with the state that outlives orientations:
/// its queue and the status its worker publishes while it is a mirror.
pub(super) struct Member {
    pub endpoint: Endpoint,
    pub zk: Ensemble,
    pub queue: Arc<TargetQueue>,
    pub status: StatusTx,
}

/// The route's role as this instance sees it, for `/readyz`, `/status` and
/// the role metrics.
#[derive(Debug, Clone, Default)]
pub struct RouteView {
    /// The record the route runs under; `None` until a member answered.
    pub role: Option<RoleRecord>,
    /// Two members claim the same epoch with different primaries.
    pub split: Option<(String, String)>,
    /// A switchover has a member frozen.
    pub frozen: bool,
}

pub(super) struct RouteRunner {
    pub route: Arc<Route>,
    pub members: Vec<Member>,
    pub identity: Identity,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub heartbeat: HeartbeatSchedule,
    pub view: watch::Sender<RouteView>,
}

/// Flips seen by this runner: epochs it counted, a switchover whose window
/// it has yet to observe.
#[derive(Default)]
struct Seen {
    epoch: Option<u64>,
    window_pending: Option<u64>,
}

/// The capture and workers of one orientation.
struct Running {
    role: RoleRecord,
    stop: crate::shutdown::Trigger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        self.stop.fire();
        futures::future::join_all(self.tasks).await;
    }
}

impl RouteRunner {
    pub async fn run(self, mut shutdown: Shutdown) {
        let span = tracing::info_span!("route", route = %self.route.name());
        async move {
            let mut running: Option<Running> = None;
            let mut seen = Seen::default();
            loop {
                let (decision, frozen) = self.settle(&mut seen).await;
                let want = decision.as_ref().filter(|d| d.split.is_none()).map(|d| d.current.clone());
                let same = |r: &Running| want.as_ref().is_some_and(|w| w.epoch == r.role.epoch && w.primary == r.role.primary);
                // A switchover flips, translates the mirrors' positions, then
                // unfreezes: the new orientation starts after it, so that its
                // workers resume from the translated checkpoints. (Its old
                // workers are fenced by the flip meanwhile.) A switchover that
                // died frozen holds it for `FROZEN_HOLD` at most.
                // While no member answers nothing new is known: the running
                // orientation stays (its writes are fenced either way), rather
                // than stopping and resyncing after every network blip.
                let held = (frozen.as_ref().is_some_and(|f| now_ms() - f.ts_ms < FROZEN_HOLD.as_millis() as i64)
                    || decision.is_none())
                    && running.is_some();
                if !held && !running.as_ref().is_some_and(same) {
                    if let Some(r) = running.take() {
                        info!(epoch = r.role.epoch, primary = %r.role.primary, "role changed: stopping this orientation");
                        r.stop().await;
                    }
                    if let Some(role) = want {
                        info!(epoch = role.epoch, primary = %role.primary, "mirroring from the primary");
                        running = Some(self.start(role));
                    }
                }
                // On the route's own phase: a hundred runners reading their
                // roles in step would send the source a burst of reads each
                // second, and every change arriving then would wait behind it.
                let next = self.heartbeat.scaled_to(REREAD).next_after(Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = shutdown.requested() => {}
                }
                if shutdown.is_requested() {
                    break;
                }
            }
            if let Some(r) = running.take() {
                r.stop().await;
            }
        }
        .instrument(span)
        .await
    }

    /// Reads every member's role, repairs what can be repaired, and
    /// publishes the outcome.
    async fn settle(&self, seen: &mut Seen) -> (Option<Decision>, Option<FrozenRecord>) {
        let meta = &self.identity.meta_path;
        let clients = self.clients().await;
        let readings = store::read_all(&self.route, meta, &clients).await;
        let decision = role::decide(&self.route, &readings, &self.identity.bridge_id);
        let frozen_record = self.frozen(&clients).await;
        let frozen = frozen_record.is_some();
        if let Some(d) = &decision {
            if let Some((a, b)) = &d.split {
                warn!(epoch = d.current.epoch, a = %a, b = %b, "two members claim to be primary at the same epoch: nothing is mirrored until an operator settles it");
            } else {
                self.repair(d, &clients, frozen).await;
            }
        }
        let role = decision.as_ref().map(|d| d.current.clone());
        if let Some(role) = &role {
            let name = self.route.name();
            if seen.epoch.is_some_and(|e| role.epoch > e) {
                self.metrics
                    .failovers
                    .with_label_values(&[name, role.reason.as_str()])
                    .inc();
                if role.reason == crate::znodes::RoleReason::Switchover {
                    seen.window_pending = Some(role.epoch);
                }
            }
            seen.epoch = Some(role.epoch);
            if seen.window_pending == Some(role.epoch) && self.observe_window(role, &clients).await {
                seen.window_pending = None;
            }
            self.metrics
                .route_epoch
                .with_label_values(&[name])
                .set(role.epoch as i64);
            for m in &self.members {
                let primary = (m.endpoint.ensemble == role.primary) as i64;
                self.metrics
                    .route_primary
                    .with_label_values(&[name, &m.endpoint.ensemble])
                    .set(primary);
            }
        }
        self.view.send_replace(RouteView {
            role,
            split: decision.as_ref().and_then(|d| d.split.clone()),
            frozen,
        });
        (decision, frozen_record)
    }

    /// Creates missing role znodes and brings members behind up to the
    /// current epoch. While a switchover has the route frozen, it does the
    /// flip itself: members behind are left to it.
    async fn repair(&self, d: &Decision, clients: &store::Clients, frozen: bool) {
        let meta = &self.identity.meta_path;
        let name = self.route.name();
        for member in &d.create {
            let Some(Ok(client)) = clients.get(member) else {
                continue;
            };
            let acl = &self.member(member).zk.acl;
            match store::create(client, meta, name, &d.current, acl).await {
                Ok(()) => {
                    info!(member = %member, epoch = d.current.epoch, primary = %d.current.primary, "role znode created")
                }
                Err(zookeeper_client::Error::NodeExists) => {}
                Err(e) => warn!(member = %member, error = %e, "cannot create the role znode; retrying"),
            }
        }
        if frozen {
            return;
        }
        for (member, old, version) in &d.behind {
            let Some(Ok(client)) = clients.get(member) else {
                continue;
            };
            if old.primary == *member && d.current.primary != *member {
                // A returning old primary: what it accepted after the new
                // primary's last position is kept before it is overwritten.
                let Some(Ok(primary_client)) = clients.get(&d.current.primary) else {
                    warn!(member = %member, "cannot archive the old primary's divergent tail while the primary is unreachable; it is not demoted until it is");
                    continue;
                };
                let old_member = role::divergent::Member {
                    name: member,
                    client,
                    acl: &self.member(member).zk.acl,
                };
                let primary = role::divergent::Member {
                    name: &d.current.primary,
                    client: primary_client,
                    acl: &self.member(&d.current.primary).zk.acl,
                };
                let archived = role::divergent::archive(
                    &self.route,
                    meta,
                    old_member,
                    primary,
                    old.epoch,
                    self.limits.max_in_flight,
                )
                .await;
                match archived {
                    Ok(n) => {
                        self.metrics
                            .divergent_nodes
                            .with_label_values(&[name, member])
                            .inc_by(n as u64);
                        if n > 0 {
                            warn!(member = %member, nodes = n, epoch = old.epoch, "old primary's divergent tail archived; `zkbridge divergent` lists it");
                        }
                    }
                    Err(e) => {
                        warn!(member = %member, error = %e, "cannot archive the old primary's divergent tail yet; it is not demoted until it is");
                        continue;
                    }
                }
            }
            match store::replace(client, meta, name, &d.current, *version).await {
                Ok(_) => {
                    info!(member = %member, from = old.epoch, to = d.current.epoch, primary = %d.current.primary, "member brought up to the current epoch")
                }
                Err(e) => {
                    warn!(member = %member, error = %e, "cannot bring the member up to the current epoch; retrying")
                }
            }
        }
    }

    /// Observes a switchover's write-unavailable window, which the command
    /// leaves in the new primary once it unfroze it (see `ops::switchover`):
    /// `false` while it is not there yet.
    async fn observe_window(&self, role: &RoleRecord, clients: &store::Clients) -> bool {
        let name = self.route.name();
        let Some(Ok(client)) = clients.get(&role.primary) else {
            return false;
        };
        let path = crate::znodes::switchover_path(&self.identity.meta_path, name);
        match crate::checkpoint::get_json::<crate::znodes::SwitchoverRecord>(client, &path).await {
            Ok(Some(record)) if record.epoch == role.epoch => {
                self.metrics
                    .switchover_write_freeze
                    .with_label_values(&[name])
                    .observe(record.window_ms as f64 / 1000.0);
                true
            }
            _ => false,
        }
    }

    /// The marker of a switchover that has a member frozen, if any.
    async fn frozen(&self, clients: &store::Clients) -> Option<FrozenRecord> {
        let path = frozen_path(&self.identity.meta_path, self.route.name());
        for client in clients.values().flatten() {
            let read = tokio::time::timeout(
                store::READ_TIMEOUT,
                crate::checkpoint::get_json::<FrozenRecord>(client, &path),
            );
            if let Ok(Ok(Some(record))) = read.await {
                return Some(record);
            }
        }
        None
    }

    /// The members' current sessions; a member without one within a moment
    /// counts as unreachable this round.
    async fn clients(&self) -> store::Clients {
        let mut clients = BTreeMap::new();
        for m in &self.members {
            let session = tokio::time::timeout(Duration::from_millis(500), m.zk.session()).await;
            clients.insert(
                m.endpoint.ensemble.clone(),
                session.map(|s| s.client).map_err(|_| "no session".to_string()),
            );
        }
        clients
    }

    /// The member at `endpoint` (a route may keep two in one ensemble).
    fn member_at(&self, endpoint: &Endpoint) -> &Member {
        self.members
            .iter()
            .find(|m| m.endpoint == *endpoint)
            .expect("an oriented route's endpoints are members")
    }

    fn member(&self, ensemble: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.endpoint.ensemble == ensemble)
            .expect("members come from the route")
    }

    /// Starts the capture on the primary and a worker for every other member.
    fn start(&self, role: RoleRecord) -> Running {
        let (stop, stopped) = crate::shutdown::channel();
        let mut tasks = Vec::new();
        let route = Arc::new(
            self.route
                .oriented(&role.primary, &self.identity.meta_path)
                .expect("the primary is a member (decided from the members' records)"),
        );
        let source = self.member_at(&route.source).zk.clone();
        // The primary is no mirror: no leader to alert on. (Its queue's
        // pending gauge stays, at 0: the queue outlives orientations.)
        let labels = [route.name(), role.primary.as_str()];
        let _ = self.metrics.leader.remove_label_values(&labels);
        let mut queues = Vec::new();
        for target in &route.targets {
            let member = self.member_at(target);
            self.metrics
                .leader
                .with_label_values(&[route.name(), &target.ensemble])
                .add(0);
            let make_worker = {
                let wiring = Wiring {
                    route: route.clone(),
                    target: target.clone(),
                    source_zk: source.clone(),
                    target_zk: member.zk.clone(),
                    queue: member.queue.clone(),
                    role: role.clone(),
                    status: member.status.clone(),
                    limits: self.limits,
                    identity: self.identity.clone(),
                    metrics: self.metrics.clone(),
                };
                let stopped = stopped.clone();
                move || Worker::new(wiring.clone()).run(stopped.clone())
            };
            let on_panic = {
                let (status, metrics) = (member.status.clone(), self.metrics.clone());
                let labels = [route.name().to_string(), target.ensemble.clone()];
                move |message: &str, retry_in: Duration| {
                    let labels = [labels[0].as_str(), labels[1].as_str()];
                    metrics.errors.with_label_values(&[labels[0], labels[1], "panic"]).inc();
                    metrics.leader.with_label_values(&labels).set(0);
                    status.after_panic(format!("internal error: {message}; restarting in {retry_in:?}"));
                }
            };
            tasks.push(tokio::spawn(supervise(make_worker, on_panic, stopped.clone())));
            queues.push(member.queue.clone());
        }
        let make_capture = {
            let capture = Capture {
                route: route.clone(),
                source,
                queues,
                metrics: self.metrics.clone(),
                bridge_id: self.identity.bridge_id.clone(),
                meta_path: self.identity.meta_path.clone(),
                heartbeat: self.heartbeat,
            };
            let stopped = stopped.clone();
            move || capture.clone().run(stopped.clone())
        };
        let on_panic = {
            let (metrics, route) = (self.metrics.clone(), route.name().to_string());
            move |_: &str, _: Duration| metrics.errors.with_label_values(&[&route, "", "panic"]).inc()
        };
        tasks.push(tokio::spawn(supervise(make_capture, on_panic, stopped)));
        Running { role, stop, tasks }
    }
}
