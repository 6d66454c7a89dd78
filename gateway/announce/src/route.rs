//! The route that makes the kernel deliver packets for an announced
//! address to the local listeners: `local ADDR dev lo table local`, as
//! `ip route add local ADDR/32 dev lo table local` would add it, sent over
//! rtnetlink with netlink-packet-route's message types.
//!
//! Without it the kernel forwards (or drops) packets for an address that
//! is on no interface, even though the listener is bound to it
//! (`IP_FREEBIND`). The route does not make the kernel answer ARP on the
//! edge interface once strict ARP is set there (see `l2`).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The kernel's `local` table, where the routes of local addresses live.
const RT_TABLE_LOCAL: u8 = 255;

fn loopback_index() -> io::Result<u32> {
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

fn route_message(ip: IpAddr) -> io::Result<RouteMessage> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
    msg.header.table = RT_TABLE_LOCAL;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = RouteScope::Host;
    msg.header.kind = RouteType::Local;
    msg.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(ip)),
        RouteAttribute::Oif(loopback_index()?),
    ];
    Ok(msg)
}

/// Sends one request and waits for its acknowledgement.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut answer = Vec::with_capacity(4096);
    socket.recv(&mut answer, 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer)
        .map_err(|e| io::Error::other(format!("unreadable netlink answer: {e}")))?;
    match reply.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        _ => Ok(()),
    }
}

/// Packets for `ip` are delivered to local listeners from now on.
pub fn accept_locally(ip: IpAddr) -> io::Result<()> {
    request(
        RouteNetlinkMessage::NewRoute(route_message(ip)?),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Undoes [`accept_locally`]; a route already gone is not an error.
pub fn stop_accepting(ip: IpAddr) -> io::Result<()> {
    match request(RouteNetlinkMessage::DelRoute(route_message(ip)?), 0) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The addresses this node accepts locally while it announces them; the
/// routes go when released (or dropped).
#[derive(Default)]
pub struct LocalRoutes(Vec<IpAddr>);

impl LocalRoutes {
    /// Adds one; the error says what to grant.
    pub fn add(&mut self, ip: IpAddr) -> Result<(), String> {
        accept_locally(ip).map_err(|e| {
            format!("announce: cannot add the local route for {ip}: {e} (needs CAP_NET_ADMIN)")
        })?;
        self.0.push(ip);
        Ok(())
    }

    pub fn addresses(&self) -> &[IpAddr] {
        &self.0
    }

    /// Removes one; a failure is logged (the route may linger until the
    /// address is taken again or the node restarts).
    pub fn remove(&mut self, ip: IpAddr) {
        self.0.retain(|a| *a != ip);
        if let Err(e) = stop_accepting(ip) {
            tracing::warn!(address = %ip, error = %e, "cannot remove the local route");
        }
    }

    /// Makes the routes the candidates of `ownership`: adds the missing
    /// ones (an error for each that cannot be added), removes the others.
    pub fn follow(&mut self, ownership: &crate::Ownership) -> Vec<String> {
        let want = ownership.candidates();
        let gone: Vec<IpAddr> = self
            .0
            .iter()
            .copied()
            .filter(|a| !want.contains(a))
            .collect();
        for ip in gone {
            self.remove(ip);
        }
        let mut errors = Vec::new();
        for ip in want {
            if !self.0.contains(&ip) {
                if let Err(e) = self.add(ip) {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Removes them all; whether there were any.
    pub fn release(&mut self) -> bool {
        let had = !self.0.is_empty();
        for ip in self.0.drain(..) {
            if let Err(e) = stop_accepting(ip) {
                tracing::warn!(address = %ip, error = %e, "cannot remove the local route");
            }
        }
        had
    }
}

impl Drop for LocalRoutes {
    fn drop(&mut self) {
        self.release();
    }
}

/// Keeps `routes` equal to the candidates of `ownership` until `stop`,
/// then removes them all: the local routes of whatever is announced now.
pub fn follow(
    mut routes: LocalRoutes,
    ownership: crate::Ownership,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mode: &'static str,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("{mode}-routes"))
        .spawn(move || {
            // The first pass runs whatever the generation: a change made
            // since the caller's own pass is not missed.
            let mut generation = None;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let g = ownership.generation();
                if generation != Some(g) {
                    generation = Some(g);
                    for e in routes.follow(&ownership) {
                        tracing::warn!("{e}");
                    }
                    metrics::gauge!("portico_announced_addresses", "mode" => mode)
                        .set(routes.addresses().len() as f64);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            routes.release();
            metrics::gauge!("portico_announced_addresses", "mode" => mode).set(0.0);
        })
}

/// What an announcer runs: threads that stop when told, and the local
/// routes of the addresses they announce.
pub struct Running {
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
    pub routes: LocalRoutes,
    /// The `mode` label of `portico_announced_addresses`.
    pub mode: &'static str,
}

impl Running {
    pub fn new(mode: &'static str) -> Running {
        Running {
            stop: Default::default(),
            threads: Vec::new(),
            routes: LocalRoutes::default(),
            mode,
        }
    }

    /// Stops the threads (each gives up its part first: stops answering,
    /// withdraws), then removes the routes. Whether anything was held.
    pub fn release(&mut self) -> bool {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Each thread sees the flag within its poll (200 ms) and gives up
        // its part; one blocked in a connect to a router that is down
        // (up to 5 s) must not hold back the drain: it is left to finish
        // on its own, with nothing left to withdraw.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        if !self.routes.release() {
            return false;
        }
        metrics::gauge!("portico_announced_addresses", "mode" => self.mode).set(0.0);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_is_local_host_scope_in_the_local_table_on_lo() {
        let msg = route_message("192.0.2.10".parse().unwrap()).unwrap();
        assert_eq!(msg.header.table, RT_TABLE_LOCAL);
        assert_eq!(msg.header.kind, RouteType::Local);
        assert_eq!(msg.header.scope, RouteScope::Host);
        assert_eq!(msg.header.destination_prefix_length, 32);
        assert!(msg
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                "192.0.2.10".parse().unwrap()
            ))));
    }
}
