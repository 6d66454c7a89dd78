//! What this node announces right now, for `/config` and `/explain`:
//! written by the announcers as things change, read by the admin
//! listener.

use std::net::IpAddr;
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Status {
    /// `off`, `l2` or `bgp`.
    pub mode: String,
    /// Whether the addresses are announced now (the node is ready).
    pub ready: bool,
    pub addresses: Vec<AddressStatus>,
    /// BGP sessions (empty in L2 mode).
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AddressStatus {
    pub address: IpAddr,
    /// How: `ARP on eth0 (MAC ..)`, `NDP on eth0 (MAC ..)`, `BGP to ..`.
    pub how: String,
    /// Whether this node answers for it now: always in BGP mode and with
    /// static L2 ownership; with Leases, while it holds the address's.
    pub owned: bool,
    /// `l2` or `bgp`.
    pub mode: &'static str,
    /// L2 with Leases: the edge node that holds the address's Lease now
    /// (this one or another), as last read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    pub established: bool,
    /// Routes advertised on the session now.
    pub advertised: usize,
    /// Why the session last went down, if it did.
    pub last_error: Option<String>,
}

static STATUS: Mutex<Status> = Mutex::new(Status {
    mode: String::new(),
    ready: false,
    addresses: Vec::new(),
    peers: Vec::new(),
});

/// A copy of the current status (`mode` is `off` when nothing announces).
pub fn status() -> Status {
    let mut s = STATUS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if s.mode.is_empty() {
        s.mode = "off".into();
    }
    s
}

pub(crate) fn update(f: impl FnOnce(&mut Status)) {
    f(&mut STATUS.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The holders of the address Leases, as the elector last read them.
pub fn set_holders(holders: &std::collections::BTreeMap<IpAddr, String>) {
    update(|s| {
        for a in s.addresses.iter_mut().filter(|a| a.mode == "l2") {
            a.holder = holders.get(&a.address).cloned();
        }
    });
}

/// Updates the session with `peer`, if it is listed.
pub(crate) fn update_peer(peer: IpAddr, f: impl FnOnce(&mut PeerStatus)) {
    update(|s| {
        if let Some(p) = s.peers.iter_mut().find(|p| p.address == peer) {
            f(p);
        }
    });
}
