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
//! - announces only while the node is ready (`/readyz`): not before the
//!   first configuration sync, and not once it drains;
//! - on SIGTERM gives the address up (stops answering, removes the route)
//!   before its listeners close.
//!
//! BGP mode (`bgp`): every node advertises each address as a /32 to its
//! routers (ECMP), from a speaker in this process, withdrawing first on
//! SIGTERM.
//!
//! Which node owns which address in L2 mode is decided outside this crate
//! (`ownership`): statically (the node's config lists them), or by Leases
//! in Kubernetes mode (the elector in `portico-sources`).
//!
//! This crate must not read the snapshot or the Kubernetes API: it is told
//! which addresses to announce.

use std::collections::BTreeSet;
use std::net::IpAddr;

pub mod arp;
pub mod bgp;
pub mod config;
pub mod l2;
pub mod ndp;
pub mod ownership;
pub mod route;
pub mod status;

pub use config::{AnnounceConfig, AnnounceMode};
pub use ownership::Ownership;

/// A running announcement, given up with `release` (idempotent) before
/// the listeners close.
pub trait Announcer: Send {
    fn release(&mut self);
}

impl Announcer for l2::L2Announcer {
    fn release(&mut self) {
        l2::L2Announcer::release(self)
    }
}

impl Announcer for bgp::BgpAnnouncer {
    fn release(&mut self) {
        bgp::BgpAnnouncer::release(self)
    }
}

/// Whether the node should be announced now (`/readyz`): asked by the
/// announcers a few times a second.
pub type Serving = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// The addresses each mode announces: the L2 announcer's (with who owns
/// which) and the BGP speaker's. Each address is a candidate of one, by
/// `AnnounceConfig::mode_of`.
#[derive(Clone, Default)]
pub struct Ownerships {
    pub l2: Ownership,
    pub bgp: Ownership,
}

impl Ownerships {
    /// Splits `addresses` between the modes as `cfg` says.
    pub fn set_candidates(&self, cfg: &AnnounceConfig, addresses: &BTreeSet<IpAddr>) {
        let of = |mode| -> BTreeSet<IpAddr> {
            addresses
                .iter()
                .copied()
                .filter(|a| cfg.mode_of(*a) == mode)
                .collect()
        };
        self.l2.set_candidates(of(AnnounceMode::L2));
        self.bgp.set_candidates(of(AnnounceMode::Bgp));
    }
}

/// Starts the announcers `cfg` needs (none when nothing is announced),
/// while `serving` says so.
pub fn start(
    cfg: &AnnounceConfig,
    serving: Serving,
    ownerships: &Ownerships,
) -> Result<Vec<Box<dyn Announcer>>, String> {
    let mut out: Vec<Box<dyn Announcer>> = Vec::new();
    let mut modes = Vec::new();
    if cfg.uses(AnnounceMode::L2) {
        out.push(Box::new(l2::L2Announcer::start(
            cfg,
            serving.clone(),
            ownerships.l2.clone(),
        )?));
        modes.push("l2");
    }
    if cfg.uses(AnnounceMode::Bgp) {
        out.push(Box::new(bgp::BgpAnnouncer::start(
            cfg,
            serving,
            ownerships.bgp.clone(),
        )?));
        modes.push("bgp");
    }
    if !modes.is_empty() {
        status::update(|s| s.mode = modes.join("+"));
    }
    Ok(out)
}

/// Logs and counts a change of `serving` as seen by one announcer.
pub(crate) fn note_serving(now: bool, what: &str) {
    metrics::gauge!("portico_announce_ready").set(if now { 1.0 } else { 0.0 });
    status::update(|s| s.ready = now);
    if now {
        tracing::info!(announcer = what, "ready: announcing the addresses");
    } else {
        tracing::warn!(
            announcer = what,
            "not ready (/readyz fails): the addresses are not announced"
        );
    }
}
