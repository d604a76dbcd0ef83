//! What `switchover`, `failover` and `divergent` share: a session on every
//! member of a route, the role they agree on, and step timing.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use zookeeper_client::Client;

use crate::config::{Resolved, Route};
use crate::role::{self, store, Reading};
use crate::znodes::RoleRecord;

/// Sessions on the members of one route.
pub(crate) struct Members {
    pub route: Arc<Route>,
    pub clients: store::Clients,
    meta: String,
}

impl Members {
    /// Opens a session on every member of `route` (each within its session
    /// timeout; one that does not answer is recorded as unreachable). With
    /// `to`, checks that it names a member, and one the route has once.
    pub async fn open(resolved: &Resolved, route: &str, to: &str, command: &str) -> Result<Members, ExitCode> {
        let Some(r) = resolved.route(route) else {
            eprintln!("zkbridge {command}: {}", super::not_a_mirror(resolved, route, command));
            return Err(ExitCode::from(2));
        };
        if !to.is_empty() {
            let named = r.members().filter(|m| m.ensemble == to).count();
            if named == 0 {
                let names: Vec<&str> = r.members().map(|m| m.ensemble.as_str()).collect();
                eprintln!(
                    "zkbridge {command}: --to {to}: not a member of route {route} ({})",
                    names.join(", ")
                );
                return Err(ExitCode::from(2));
            }
            if r.members().filter(|m| m.ensemble == r.source.ensemble).count() > 1
                || r.targets.iter().any(|t| t.ensemble == r.source.ensemble)
            {
                eprintln!(
                    "zkbridge {command}: route {route} has two members in ensemble {}: roles are kept per ensemble",
                    r.source.ensemble
                );
                return Err(ExitCode::from(2));
            }
        }
        let opens = r.members().map(|m| async move {
            let client = super::connect_within(resolved.ensemble(&m.ensemble)).await;
            (m.ensemble.clone(), client)
        });
        let clients: BTreeMap<_, _> = futures::future::join_all(opens).await.into_iter().collect();
        Ok(Members {
            route: r.clone(),
            clients,
            meta: resolved.config.bridge.meta_path.clone(),
        })
    }

    /// The first member without a session, with why.
    pub fn unreachable(&self) -> Option<(String, String)> {
        self.clients
            .iter()
            .find_map(|(m, c)| c.as_ref().err().map(|e| (m.clone(), e.clone())))
    }

    /// A member's session; only for members known reachable.
    pub fn client(&self, member: &str) -> &Client {
        self.clients[member].as_ref().expect("a reachable member")
    }

    pub fn reachable(&self, member: &str) -> bool {
        self.clients.get(member).is_some_and(|c| c.is_ok())
    }

    /// The role every reachable member agrees on, with each one's role
    /// znode version (for the flip's compare-and-set).
    pub async fn agreed_role(&self) -> Result<(RoleRecord, BTreeMap<String, i32>), String> {
        let readings = store::read_all(&self.route, &self.meta, &self.clients).await;
        let decision = role::decide(&self.route, &readings, "")
            .ok_or_else(|| format!("route {}: no member answers", self.route.name()))?;
        if let Some((a, b)) = decision.split {
            return Err(format!(
                "route {}: {a} and {b} both claim to be primary at epoch {}; settle it first",
                self.route.name(),
                decision.current.epoch
            ));
        }
        let mut versions = BTreeMap::new();
        for (member, reading) in &readings {
            match reading {
                Reading::Record { record, version } if record.epoch == decision.current.epoch => {
                    versions.insert(member.clone(), *version);
                }
                Reading::Unreachable(_) => {}
                _ => {
                    return Err(format!(
                        "route {}: member {member} is not at epoch {} yet (is `zkbridge run` running for the route?)",
                        self.route.name(),
                        decision.current.epoch
                    ))
                }
            }
        }
        Ok((decision.current, versions))
    }
}

/// One step of a role change, printed with its duration when done.
pub(crate) struct Step {
    name: &'static str,
    started: Instant,
}

impl Step {
    pub fn start(name: &'static str) -> Step {
        Step {
            name,
            started: Instant::now(),
        }
    }

    pub fn done(self, what: &str) {
        println!(
            "{:<20} {:>8.3} s  {what}",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}
