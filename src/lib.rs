//! zkbridge mirrors ZooKeeper subtrees from a source ensemble into target
//! ensembles in other regions.
//!
//! Data flows one way: `capture` turns a persistent recursive watch into
//! dirty paths, `queue` coalesces and bounds them per target, and `worker`
//! reconciles each path to the source's current state with the decisions of
//! `plan`, writing to the target. See `docs/architecture.md`.
//!
//! The public face is small: the configuration, the running bridge, the
//! command-line operations, the `wait` barrier and `role_watch` (which
//! member is primary) for applications, and what
//! the examples, tests and benchmark need to talk to ZooKeeper the way
//! zkbridge does (`zk::connect`, `tree::scan`, `path`, `zxid`,
//! `record_writer`).

pub mod bridge;
pub mod config;
pub mod diff;
pub mod ops;
pub mod path;
pub mod record_writer;
pub mod role_watch;
pub mod shutdown;
pub mod supervise;
pub mod tree;
pub mod wait;
pub mod zk;
pub mod zxid;

pub(crate) mod active;
pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod capture;
pub(crate) mod checkpoint;
pub(crate) mod conflict;
pub(crate) mod explain;
pub(crate) mod http;
pub(crate) mod lease;
pub(crate) mod metrics;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod queue;
pub(crate) mod role;
pub(crate) mod status;
pub(crate) mod verify;
pub(crate) mod worker;
pub(crate) mod znodes;
