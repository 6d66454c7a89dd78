//! Portico: a WebAssembly-extensible L4/L7 edge gateway for Kubernetes.
//!
//! Data flows one way: sources (`source`) fill the object store (`store`),
//! translation (`translate`, pure) turns it into a `snapshot`, `publish`
//! swaps the snapshot in, and the data plane (`proxy`, `l4`) reads it.

pub mod admin;
pub mod config;
pub mod demo;
pub mod dns;
pub mod explain;
pub mod l4;
pub mod lb;
pub mod plugins;
pub mod problems;
pub mod proxy;
pub mod publish;
pub mod routing;
pub mod run;
pub mod shutdown;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod translate;
