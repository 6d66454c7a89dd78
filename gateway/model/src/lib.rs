//! The model: the snapshot the data plane serves and everything it holds
//! (routes, backends and their pools and load-balancing policies,
//! certificates, typed route policy, problems), the object store's keys,
//! the publisher that swaps snapshots, and the control-plane extension
//! points as traits.
//!
//! Must not: do I/O (no sockets, files or Kubernetes API), depend on any
//! other Portico crate, or know about Wasm.

pub mod certs;
pub mod control;
pub mod gateway_status;
pub mod lb;
pub mod policy;
pub mod problems;
pub mod publish;
pub mod route_metrics;
pub mod route_rule;
pub mod routing;
pub mod scope;
pub mod snapshot;
pub mod sni;
pub mod store;
