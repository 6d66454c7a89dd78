//! Sources: they collect typed Kubernetes objects into the object store,
//! and nothing else decides what those objects mean.
//!
//! - `manifests`: a folder of YAML/JSON manifests, watched (`watch`);
//! - `kube`: the Kubernetes API (kube-runtime watchers), plus what is
//!   written back (status, Events) by the elected leader;
//! - `dns`: the addresses of ExternalName Services' names, an input to
//!   translation like the store;
//! - `pipeline`: store → translate → publish for the manifests source,
//!   with endpoint-only changes refreshed without a full translation.
//!
//! Must not: route or proxy traffic, or call plugins except through the
//! control traits of `portico_model::control`.

pub mod config;
pub mod dns;
pub mod kube;
pub mod manifests;
pub mod pipeline;
pub mod watch;
