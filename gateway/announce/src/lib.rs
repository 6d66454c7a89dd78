//! Makes LoadBalancer addresses reachable on bare metal.
//!
//! A LoadBalancer address on bare metal is on no interface: routers and
//! clients on the segment find it by ARP (IPv4) or NDP (IPv6). The edge
//! node that owns an address (L2 mode):
//!
//! - accepts packets for it (a `local` route on `lo`, so the kernel
//!   delivers them to Portico's listeners, which bind with `IP_FREEBIND`);
//! - answers ARP requests for it with its interface's MAC, from a raw
//!   socket: the kernel is told not to (strict ARP, `arp_ignore=1`, as
//!   MetalLB asks of IPVS users), so a node whose Portico is gone, killed
//!   or not, stops answering; for IPv6, answers neighbor solicitations
//!   (`ndp`), which the kernel never does for a `local` route;
//! - sends gratuitous ARP (unsolicited neighbor advertisements for IPv6)
//!   when it takes the address and every `garp_interval_seconds`, so
//!   neighbours' caches follow it;
//! - on SIGTERM gives the address up (stops answering, removes the route)
//!   before its listeners close.
//!
//! Which node owns which address is decided outside this crate (today: the
//! node's config lists them); BGP mode is not built yet.
//!
//! This crate must not read the snapshot or the Kubernetes API: it is told
//! which addresses to announce.

pub mod arp;
pub mod config;
pub mod l2;
pub mod ndp;
pub mod route;

pub use config::{AnnounceConfig, AnnounceMode};
