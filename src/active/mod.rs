//! Active-active routes (design §7, issue 20): every member writable, each
//! change carried to every other member, last-writer-wins with tombstones.
//!
//! - [`decide`]: the decision for one path between two members, without
//!   IO — the rules and the argument for why they converge and cannot loop
//!   (also in `docs/architecture.md`).
//! - [`records`]: a member's state at a path (node and origin record).
//! - [`pair`]: the worker of one member pair: its lease and lead loop;
//!   [`work`]: the dirty paths and full passes it runs; [`apply`]: its one
//!   write per path; [`outcome`]: how a path ends; [`checkpointing`]: how
//!   far it got, and what it may do while a member is being filled;
//!   [`pair_metrics`]: its metric handles.
//! - [`stamp`]: each member's deletes stamped where they happen.
//! - [`conflicts`]: the bounded conflict log.

mod apply;
mod checkpointing;
pub(crate) mod conflicts;
pub(crate) mod decide;
mod outcome;
mod pair;
mod pair_metrics;
pub(crate) mod records;
mod stamp;
mod work;

pub use pair::{Pair, PairWiring};
pub use stamp::Stamper;
