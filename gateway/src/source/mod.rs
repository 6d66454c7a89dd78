//! Sources collect typed Kubernetes objects into the store.

pub mod kube;
pub mod manifests;
pub mod pipeline;
pub mod watch;
