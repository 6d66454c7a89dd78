//! Portico: a WebAssembly-extensible L4/L7 edge gateway for Kubernetes.
//!
//! This crate is the top of the workspace: the CLI, the composed
//! configuration (each layer owns its section), the wiring of the layers
//! (`run`), the admin listener, `explain`, the demo and telemetry. Data
//! flows one way through the crates below it: sources
//! (`portico-sources`) fill the object store, translation
//! (`portico-translate`, pure) turns it into a snapshot
//! (`portico-model`), which is published and read by the data plane
//! (`portico-dataplane`); the Wasm plugin host (`portico-wasm`) sits
//! beside the data plane.

pub mod admin;
pub mod config;
pub mod convert;
pub mod demo;
pub mod explain;
pub mod rbac;
pub mod run;
pub mod settings;
pub mod telemetry;
pub mod worker_listeners;
