//! zkbridge mirrors ZooKeeper subtrees from a source ensemble into target
//! ensembles in other regions.
//!
//! Data flows one way: [`capture`] turns a persistent recursive watch into
//! dirty paths, [`queue`] coalesces and bounds them per target, and
//! [`apply`] reconciles each path to the source's current state with the
//! decisions of [`plan`]. See `docs/architecture.md`.

pub mod backoff;
pub mod breaker;
pub mod bridge;
pub mod capture;
pub mod checkpoint;
pub mod config;
pub mod conflict;
pub mod diff;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod path;
pub mod plan;
pub mod progress;
pub mod queue;
pub mod status;
pub mod supervise;
pub mod tree;
pub mod verify;
pub mod wait;
pub mod worker;
pub mod zk;
pub mod zxid;
