//! Roles (design §6): which member of a route is its primary, as of which
//! epoch. The record lives in a role znode in every member ensemble; every
//! instance follows the highest epoch it can read, and every write a worker
//! makes into a member is fenced on that member's role znode, so that a
//! worker acting for an old epoch cannot commit after a flip.
//!
//! The decisions are pure ([`decide`]); reading and writing the znodes is
//! in [`store`], a switchover's freeze in [`freeze`], an old primary's
//! divergent tail in [`divergent`]. A running bridge follows the role in
//! `bridge::route_runner`; the commands that flip it are in `ops`.

use std::collections::BTreeMap;

use crate::config::Route;
use crate::znodes::{now_ms, RoleReason, RoleRecord};

pub mod divergent;
pub mod freeze;
pub mod store;

/// What one member's role znode says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    Record {
        record: RoleRecord,
        version: i32,
    },
    /// The member answers and has no role znode yet.
    Missing,
    Unreachable(String),
}

impl Reading {
    pub fn record(&self) -> Option<&RoleRecord> {
        match self {
            Reading::Record { record, .. } => Some(record),
            _ => None,
        }
    }
}

/// What the route runs under, and what the members that disagree need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The highest epoch's record (or the initial one).
    pub current: RoleRecord,
    /// Two members claim the highest epoch with different primaries: no
    /// orientation is safe, so nothing is mirrored until an operator
    /// settles it (`/readyz` says which).
    pub split: Option<(String, String)>,
    /// Members that answer without a role znode: given `current`.
    pub create: Vec<String>,
    /// Members with a lower epoch, with what they say: brought up to
    /// `current` (a returning old primary's divergent tail archived first).
    pub behind: Vec<(String, RoleRecord, i32)>,
}

/// The initial record: the config's source is primary at epoch 0.
pub fn initial(route: &Route, by: &str) -> RoleRecord {
    RoleRecord {
        version: 1,
        epoch: 0,
        primary: route.source.ensemble.clone(),
        since_ms: now_ms(),
        by: by.to_string(),
        reason: RoleReason::Initial,
    }
}

/// Decides the route's role from what its members say. `None` while no
/// member answers: nothing can be known, so nothing is done.
pub fn decide(route: &Route, readings: &BTreeMap<String, Reading>, by: &str) -> Option<Decision> {
    if readings.values().all(|r| matches!(r, Reading::Unreachable(_))) {
        return None;
    }
    let highest = readings.values().filter_map(Reading::record).map(|r| r.epoch).max();
    let current = match highest {
        Some(epoch) => {
            let mut claims: Vec<&RoleRecord> = readings
                .values()
                .filter_map(Reading::record)
                .filter(|r| r.epoch == epoch)
                .collect();
            claims.sort_by(|a, b| a.primary.cmp(&b.primary));
            let (first, last) = (claims[0], claims[claims.len() - 1]);
            if first.primary != last.primary {
                return Some(Decision {
                    current: first.clone(),
                    split: Some((first.primary.clone(), last.primary.clone())),
                    create: Vec::new(),
                    behind: Vec::new(),
                });
            }
            first.clone()
        }
        None => initial(route, by),
    };
    let create = readings
        .iter()
        .filter(|(_, r)| matches!(r, Reading::Missing))
        .map(|(m, _)| m.clone())
        .collect();
    let behind = readings
        .iter()
        .filter_map(|(m, r)| match r {
            Reading::Record { record, version } if record.epoch < current.epoch => {
                Some((m.clone(), record.clone(), *version))
            }
            _ => None,
        })
        .collect();
    Some(Decision {
        current,
        split: None,
        create,
        behind,
    })
}

/// `route` as it runs now: oriented from the primary its members agree on,
/// with that record. Falls back to the configuration's orientation while
/// no member has a role znode. `Err` says why no orientation is safe.
pub async fn current(route: &Route, meta: &str, clients: &store::Clients) -> Result<(Route, RoleRecord), String> {
    let readings = store::read_all(route, meta, clients).await;
    let Some(d) = decide(route, &readings, "") else {
        return Err(format!("route {}: no member answers", route.name()));
    };
    if let Some((a, b)) = d.split {
        return Err(format!(
            "route {}: {a} and {b} both claim to be primary at epoch {}",
            route.name(),
            d.current.epoch
        ));
    }
    let oriented = route
        .oriented(&d.current.primary, meta)
        .ok_or_else(|| format!("route {}: primary {} is not a member", route.name(), d.current.primary))?;
    Ok((oriented, d.current))
}

/// Splits `items` into runs whose JSON stays under `limit` bytes, so that
/// each run fits one znode (an item larger than that goes alone).
pub(crate) fn chunks_by_json<T: serde::Serialize>(items: impl IntoIterator<Item = T>, limit: usize) -> Vec<Vec<T>> {
    let mut parts: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for item in items {
        let entry = serde_json::to_vec(&item).expect("JSON of plain records").len() + 1;
        if parts.is_empty() || (size + entry > limit && !parts.last().is_some_and(Vec::is_empty)) {
            parts.push(Vec::new());
            size = 2;
        }
        size += entry;
        parts.last_mut().expect("pushed above").push(item);
    }
    parts
}

/// The record a flip writes: the next epoch, with `to` as primary.
pub fn flipped(current: &RoleRecord, to: &str, by: &str, reason: RoleReason) -> RoleRecord {
    RoleRecord {
        version: 1,
        epoch: current.epoch + 1,
        primary: to.to_string(),
        since_ms: now_ms(),
        by: by.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        let toml = "[ensembles.a]\nconnect = \"h:1\"\n[ensembles.b]\nconnect = \"h:2\"\n[ensembles.c]\nconnect = \"h:3\"\n[[routes]]\nname = \"r\"\nsource = \"a:/x\"\ntargets = [\"b:/x\", \"c:/y\"]\n";
        (*crate::config::load_str(toml).unwrap().routes[0]).clone()
    }

    #[test]
    fn a_route_oriented_to_another_primary_mirrors_into_every_other_member() {
        let r = route().oriented("c", "/zkbridge").unwrap();
        assert_eq!(r.source.to_string(), "c:/y");
        let targets: Vec<String> = r.targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["a:/x", "b:/x"]);
        assert!(route().oriented("z", "/zkbridge").is_none());
    }

    #[test]
    fn two_members_in_one_ensemble_both_stay_in_the_route() {
        let toml =
            "[ensembles.a]\nconnect = \"h:1\"\n[[routes]]\nname = \"r\"\nsource = \"a:/x\"\ntargets = [\"a:/y\"]\n";
        let route = (*crate::config::load_str(toml).unwrap().routes[0]).clone();
        let r = route.oriented("a", "/zkbridge").unwrap();
        assert_eq!(r.source.to_string(), "a:/x");
        assert_eq!(r.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(), ["a:/y"]);
    }

    fn record(epoch: u64, primary: &str) -> Reading {
        Reading::Record {
            record: RoleRecord {
                version: 1,
                epoch,
                primary: primary.into(),
                since_ms: 0,
                by: "t".into(),
                reason: RoleReason::Switchover,
            },
            version: epoch as i32,
        }
    }

    fn readings(list: &[(&str, Reading)]) -> BTreeMap<String, Reading> {
        list.iter().map(|(m, r)| (m.to_string(), r.clone())).collect()
    }

    #[test]
    fn a_new_route_starts_at_epoch_zero_with_the_configured_source() {
        let d = decide(
            &route(),
            &readings(&[
                ("a", Reading::Missing),
                ("b", Reading::Missing),
                ("c", Reading::Unreachable("down".into())),
            ]),
            "me",
        )
        .unwrap();
        assert_eq!((d.current.epoch, d.current.primary.as_str()), (0, "a"));
        assert_eq!(d.current.reason, RoleReason::Initial);
        assert_eq!(d.create, ["a", "b"]);
        assert!(d.behind.is_empty() && d.split.is_none());
    }

    #[test]
    fn the_highest_epoch_wins_and_lower_members_are_brought_up() {
        let d = decide(
            &route(),
            &readings(&[("a", record(0, "a")), ("b", record(1, "b")), ("c", Reading::Missing)]),
            "me",
        )
        .unwrap();
        assert_eq!((d.current.epoch, d.current.primary.as_str()), (1, "b"));
        assert_eq!(d.create, ["c"], "a missing member gets the current record");
        assert_eq!(d.behind.len(), 1);
        assert_eq!(d.behind[0].0, "a");
        assert_eq!(
            d.behind[0].1.primary, "a",
            "a returning old primary: its tail is archived first"
        );
    }

    #[test]
    fn two_primaries_at_one_epoch_stop_the_route() {
        let d = decide(
            &route(),
            &readings(&[("a", record(2, "a")), ("b", record(2, "b")), ("c", record(1, "a"))]),
            "me",
        )
        .unwrap();
        assert_eq!(d.split, Some(("a".into(), "b".into())));
        assert!(d.behind.is_empty(), "nothing is brought up to a split");
    }

    #[test]
    fn nothing_is_decided_while_no_member_answers() {
        let none = readings(&[
            ("a", Reading::Unreachable("x".into())),
            ("b", Reading::Unreachable("y".into())),
        ]);
        assert_eq!(decide(&route(), &none, "me"), None);
    }
}
