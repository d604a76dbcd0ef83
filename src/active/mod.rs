//! Active-active routes (design §7, issue 20): every member writable, each
//! change carried to every other member, last-writer-wins with tombstones.
//!
//! What is here is the decision core, without IO ([`decide`]), written and
//! tested first because everything else rests on it: the worker that reads
//! a path and its origin record in two members and applies the decision is
//! not built yet, and the configuration does not accept `mode =
//! "active-active"` until it is. The argument for why these rules converge
//! and cannot loop is in `docs/architecture.md`.

// Only the tests call it until the active-active worker exists.
#![allow(dead_code)]

pub(crate) mod decide;
