//! Active-active routes (design §7, issue 20): every member writable, each
//! change carried to every other member, last-writer-wins with tombstones.
//!
//! - [`decide`]: the decision for one path between two members, without
//!   IO — the rules and the argument for why they converge and cannot loop
//!   (also in `docs/architecture.md`).
//! - [`records`]: a member's state at a path (node and origin record).
//! - [`pair`]: the worker of one member pair, with its lease, watch, full
//!   passes and checkpoint; [`apply`]: its one write per path;
//!   [`outcome`]: how a path ends, which the pair's loop acts on.
//! - [`stamp`]: each member's deletes stamped where they happen.
//! - [`conflicts`]: the bounded conflict log.

mod apply;
pub(crate) mod conflicts;
pub(crate) mod decide;
mod outcome;
mod pair;
pub(crate) mod records;
mod stamp;

pub use pair::{Pair, PairWiring};
pub use stamp::Stamper;
