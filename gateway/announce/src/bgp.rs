//! BGP mode: every edge node advertises each address it serves as a /32
//! to the configured routers, which spread traffic over the nodes with
//! ECMP. The speaker runs inside Portico (messages encoded and decoded by
//! zettabgp), one session per peer on its own thread, so what the routers
//! see follows this process: a node that gives up on SIGTERM withdraws
//! first, and a node that dies drops its sessions, whose routes the
//! routers remove (at once on the TCP reset, at the latest when the hold
//! timer expires).
//!
//! Only what an edge node needs: it originates routes and ignores what
//! it is sent (it never installs routes), IPv4 unicast, active opens.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zettabgp::prelude::*;

use crate::config::BgpPeerConfig;
use crate::route;

/// How often a session wakes to check whether it should stop.
const POLL: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect delays after a failed or lost session: doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The largest BGP message (RFC 4271 §4.1).
const MAX_MESSAGE: usize = 4096;

/// NOTIFICATION codes (RFC 4271 §4.5, RFC 4486).
const OPEN_ERROR: u8 = 2;
const BAD_PEER_AS: u8 = 2;
const HOLD_TIMER_EXPIRED: u8 = 4;
const CEASE: u8 = 6;
const ADMINISTRATIVE_SHUTDOWN: u8 = 2;

/// What a session advertises, shared by every peer.
#[derive(Debug, Clone)]
struct Advertised {
    local_asn: u32,
    router_id: Option<Ipv4Addr>,
    hold_time: u16,
    /// /32s, advertised on sessions over IPv4.
    prefixes: Vec<Ipv4Addr>,
    /// /128s (MP-BGP, RFC 4760), advertised on sessions over IPv6.
    prefixes_v6: Vec<Ipv6Addr>,
    communities: Vec<u32>,
    local_preference: Option<u32>,
}

/// Sessions with every configured peer until released.
pub struct BgpAnnouncer(route::Running);

impl BgpAnnouncer {
    /// Accepts the candidates of `ownership` locally (a `local` route, as
    /// in L2 mode) and opens a session to each peer, advertising them as
    /// they come and go. Needs CAP_NET_ADMIN.
    pub fn start(
        announce: &crate::AnnounceConfig,
        serving: crate::Serving,
        ownership: crate::Ownership,
    ) -> Result<BgpAnnouncer, String> {
        let cfg = &announce.bgp;
        let advertised = Advertised {
            local_asn: cfg.local_asn,
            router_id: cfg.router_id,
            hold_time: cfg.hold_time_seconds,
            prefixes: Vec::new(),
            prefixes_v6: Vec::new(),
            communities: cfg
                .communities
                .iter()
                .map(|c| crate::config::parse_community(c))
                .collect::<Result<_, _>>()?,
            local_preference: cfg.local_preference,
        };
        let mut routes = route::LocalRoutes::default();
        if let Some(e) = routes.follow(&ownership).into_iter().next() {
            return Err(e);
        }
        let mut running = route::Running::new("bgp");
        let initial: Vec<IpAddr> = routes.addresses().to_vec();
        running.threads.push(
            route::follow(routes, ownership.clone(), running.stop.clone(), "bgp")
                .map_err(|e| format!("announce: cannot start the route thread: {e}"))?,
        );
        crate::status::update(|s| {
            s.peers = cfg
                .peers
                .iter()
                .map(|p| crate::status::PeerStatus {
                    address: p.address,
                    asn: p.asn,
                    established: false,
                    advertised: 0,
                    last_error: None,
                })
                .collect();
        });
        note_addresses(&ownership.candidates(), &cfg.peers);
        for peer in &cfg.peers {
            let (peer, advertised) = (peer.clone(), advertised.clone());
            let (stop, serving) = (running.stop.clone(), serving.clone());
            let (owner, config) = (ownership.clone(), announce.clone());
            let thread = std::thread::Builder::new()
                .name(format!("bgp-{}", peer.address))
                .spawn(move || {
                    let source = Source {
                        ownership: &owner,
                        config: &config,
                        serving: &*serving,
                    };
                    run_peer(&peer, &advertised, &stop, &source)
                })
                .map_err(|e| format!("announce: cannot start a BGP session thread: {e}"))?;
            running.threads.push(thread);
        }
        tracing::info!(addresses = ?initial, peers = cfg.peers.len(), local_asn = cfg.local_asn,
            "announcing addresses by BGP");
        Ok(BgpAnnouncer(running))
    }

    /// Withdraws the routes and closes every session (a Cease
    /// notification), then removes the local routes. Idempotent.
    pub fn release(&mut self) {
        let had = !self.0.threads.is_empty();
        self.0.release();
        if had {
            crate::status::update(|s| {
                s.ready = false;
                s.addresses.retain(|a| a.mode != "bgp");
            });
            tracing::info!("withdrew the announced addresses");
        }
    }
}

impl Drop for BgpAnnouncer {
    fn drop(&mut self) {
        self.release();
    }
}

/// Where a session learns what to advertise and when.
struct Source<'a> {
    ownership: &'a crate::Ownership,
    /// The peers, and each address's communities and local preference.
    config: &'a crate::AnnounceConfig,
    serving: &'a (dyn Fn() -> bool + Send + Sync),
}

/// `/config`'s list of the announced addresses and the peers each goes to.
fn note_addresses(addresses: &BTreeSet<IpAddr>, peers: &[BgpPeerConfig]) {
    crate::status::update(|s| {
        s.addresses.retain(|a| a.mode != "bgp");
        s.addresses.extend(addresses.iter().map(|ip| {
            let to: Vec<String> = peers
                .iter()
                .filter(|p| p.address.is_ipv4() == ip.is_ipv4())
                .map(|p| format!("{} (AS {})", p.address, p.asn))
                .collect();
            crate::status::AddressStatus {
                address: *ip,
                how: format!("BGP to {}", to.join(", ")),
                owned: true,
                mode: "bgp",
                holder: None,
            }
        }));
        s.addresses.sort_by_key(|a| a.address);
    });
}

/// Connects, holds the session while it lasts, and reconnects with a
/// growing delay, until told to stop.
fn run_peer(peer: &BgpPeerConfig, adv: &Advertised, stop: &AtomicBool, source: &Source<'_>) {
    let label = peer.address.to_string();
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        match session(peer, adv, stop, source) {
            Ok(()) => return,
            Err(e) => {
                crate::status::update_peer(peer.address, |p| {
                    p.established = false;
                    p.advertised = 0;
                    p.last_error = Some(e.clone());
                });
                metrics::gauge!("portico_bgp_session_established", "peer" => label.clone())
                    .set(0.0);
                metrics::gauge!("portico_bgp_prefixes_advertised", "peer" => label.clone())
                    .set(0.0);
                tracing::warn!(peer = %peer.address, error = %e, retry_in_ms = backoff.as_millis() as u64, "BGP session down");
            }
        }
        // A session that lasted resets the delay: only a peer that keeps
        // refusing waits longer.
        if started.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn connect(peer: &BgpPeerConfig) -> Result<TcpStream, String> {
    use socket2::{Domain, Socket, Type};
    let to = SocketAddr::new(peer.address, peer.port);
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    if let Some(source) = peer.source_address {
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .map_err(|e| format!("bind to the source address {source}: {e}"))?;
    }
    if let Some(password) = &peer.password {
        set_md5_password(&socket, to.ip(), password)?;
    }
    if let Some(ttl) = peer.ebgp_multihop {
        let set = match to {
            SocketAddr::V4(_) => socket.set_ttl_v4(u32::from(ttl)),
            SocketAddr::V6(_) => socket.set_unicast_hops_v6(u32::from(ttl)),
        };
        set.map_err(|e| format!("set the TTL to {ttl}: {e}"))?;
    }
    socket
        .connect_timeout(&to.into(), CONNECT_TIMEOUT)
        .map_err(|e| format!("connect to {to}: {e}"))?;
    let stream: TcpStream = socket.into();
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(POLL))
        .map_err(|e| format!("socket: {e}"))?;
    Ok(stream)
}

/// `struct tcp_md5sig` of linux/tcp.h (the libc crate has the option but
/// not the struct).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; 80],
}

/// TCP-MD5 signatures (RFC 2385) on every segment to and from `peer`,
/// keyed with `password`, as routers that require a BGP password expect.
fn set_md5_password(socket: &socket2::Socket, peer: IpAddr, password: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let key = password.as_bytes();
    if key.is_empty() || key.len() > 80 {
        return Err("the password must be 1 to 80 bytes".into());
    }
    let addr = socket2::SockAddr::from(SocketAddr::new(peer, 0));
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    // SAFETY: `addr` holds `addr.len()` initialized bytes, which fit in a
    // sockaddr_storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.as_ptr() as *const u8,
            &mut sig.addr as *mut libc::sockaddr_storage as *mut u8,
            addr.len() as usize,
        );
    }
    sig.key_len = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: a valid descriptor, and a pointer to a struct of the size
    // passed, which the kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!(
            "set the TCP-MD5 password: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// One session from connect to its end: `Ok` when told to stop (routes
/// withdrawn, Cease sent), `Err` with the reason otherwise.
fn session(
    peer: &BgpPeerConfig,
    adv: &Advertised,
    stop: &AtomicBool,
    source: &Source<'_>,
) -> Result<(), String> {
    let mut s = connect(peer)?;
    let local = s.local_addr().map_err(|e| format!("socket: {e}"))?.ip();
    let router_id = match (adv.router_id, local) {
        (Some(id), _) => id,
        (None, IpAddr::V4(v4)) => v4,
        (None, IpAddr::V6(_)) => {
            return Err("announce.bgp.router_id is needed for a session over IPv6".into())
        }
    };
    // The session's family is what it carries: IPv4 unicast over IPv4,
    // IPv6 unicast (in MP_REACH_NLRI) over IPv6. The transport mode stays
    // IPv4 so that zettabgp keeps the main NLRI fields IPv4 (RFC 4760).
    let family = if local.is_ipv4() {
        BgpCapability::SafiIPv4u
    } else {
        BgpCapability::SafiIPv6u
    };
    let mut params = BgpSessionParams::new(
        adv.local_asn,
        adv.hold_time,
        BgpTransportMode::IPv4,
        router_id,
        vec![family, BgpCapability::CapASN32(adv.local_asn)],
    );
    let mut wire = Wire::default();
    let open = params.open_message();
    wire.send(&mut s, &params, BgpMessageType::Open, &open)?;
    // Their OPEN (RFC 4271 §6.2: check the AS, agree on the hold time).
    let body = wire.expect(&mut s, &params, BgpMessageType::Open, stop)?;
    let mut theirs = BgpOpenMessage::new();
    theirs
        .decode_from(&params, &body)
        .map_err(|e| format!("their OPEN: {e}"))?;
    let their_asn = theirs
        .caps
        .iter()
        .find_map(|c| match c {
            BgpCapability::CapASN32(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(theirs.as_num);
    if their_asn != peer.asn {
        let _ = wire.notify(&mut s, &params, OPEN_ERROR, BAD_PEER_AS);
        return Err(format!(
            "the peer says it is AS {their_asn}, configured as AS {}",
            peer.asn
        ));
    }
    params.match_caps(&theirs.caps);
    let hold = Duration::from_secs(u64::from(adv.hold_time.min(theirs.hold_time)));
    wire.keepalive(&mut s, &params)?;
    wire.expect(&mut s, &params, BgpMessageType::Keepalive, stop)?;

    let label = peer.address.to_string();
    metrics::gauge!("portico_bgp_session_established", "peer" => label.clone()).set(1.0);
    crate::status::update_peer(peer.address, |p| p.established = true);
    tracing::info!(peer = %peer.address, peer_asn = peer.asn, hold_seconds = hold.as_secs(),
        "BGP session established");

    // Routes are advertised while the node is ready, withdrawn while not
    // (the session stays up); addresses that come and go are advertised
    // and withdrawn as they do.
    let mut was_up: Option<bool> = None;
    let mut current: BTreeSet<IpAddr> = BTreeSet::new();
    let mut generation = None;
    let (mut heard, mut said) = (Instant::now(), Instant::now());
    loop {
        let up = (source.serving)() && !stop.load(Ordering::SeqCst);
        let g = source.ownership.generation();
        if was_up != Some(up) || generation != Some(g) {
            generation = Some(g);
            let candidates = source.ownership.candidates();
            note_addresses(&candidates, &source.config.bgp.peers);
            let want: BTreeSet<IpAddr> = if up {
                candidates
                    .into_iter()
                    .filter(|a| a.is_ipv4() == local.is_ipv4())
                    .collect()
            } else {
                BTreeSet::new()
            };
            let gone: Vec<IpAddr> = current.difference(&want).copied().collect();
            let new: Vec<IpAddr> = want.difference(&current).copied().collect();
            for chunk in gone.chunks(per_update(local)) {
                let update = withdrawal(&adv.with(chunk), local);
                wire.send(&mut s, &params, BgpMessageType::Update, &update)?;
            }
            // One UPDATE per set of path attributes (pools may differ).
            let mut by_attributes: BTreeMap<crate::config::BgpAttributes, Vec<IpAddr>> =
                BTreeMap::new();
            for ip in &new {
                by_attributes
                    .entry(source.config.bgp_attributes(*ip))
                    .or_default()
                    .push(*ip);
            }
            for (attributes, addresses) in by_attributes {
                for chunk in addresses.chunks(per_update(local)) {
                    let mut group = adv.with(chunk);
                    group.communities = attributes.communities.clone();
                    group.local_preference = attributes.local_preference;
                    let update = announcement(&group, peer.asn != adv.local_asn, local);
                    wire.send(&mut s, &params, BgpMessageType::Update, &update)?;
                }
            }
            current = want;
            let count = current.len();
            if was_up != Some(up) {
                metrics::gauge!("portico_announce_ready").set(if up { 1.0 } else { 0.0 });
                crate::status::update(|s| s.ready = up);
                if up {
                    tracing::info!(peer = %peer.address, prefixes = count, "BGP routes advertised");
                } else if !stop.load(Ordering::SeqCst) {
                    tracing::warn!(peer = %peer.address, "not ready (/readyz fails): no BGP routes advertised until it is");
                }
            } else if !gone.is_empty() || !new.is_empty() {
                tracing::info!(peer = %peer.address, advertised = ?new, withdrawn = ?gone, "BGP routes changed");
            }
            was_up = Some(up);
            crate::status::update_peer(peer.address, |p| p.advertised = count);
            metrics::gauge!("portico_bgp_prefixes_advertised", "peer" => label.clone())
                .set(count as f64);
        }
        if stop.load(Ordering::SeqCst) {
            // Withdrawn just above (advertised is false by now).
            let sent = wire.notify(&mut s, &params, CEASE, ADMINISTRATIVE_SHUTDOWN);
            let _ = s.shutdown(std::net::Shutdown::Write);
            metrics::gauge!("portico_bgp_session_established", "peer" => label.clone()).set(0.0);
            metrics::gauge!("portico_bgp_prefixes_advertised", "peer" => label).set(0.0);
            crate::status::update_peer(peer.address, |p| {
                p.established = false;
                p.advertised = 0;
            });
            if let Err(e) = sent {
                tracing::warn!(peer = %peer.address, error = %e, "could not withdraw; the peer drops the routes with the session");
            } else {
                tracing::info!(peer = %peer.address, "BGP routes withdrawn; session closed");
            }
            return Ok(());
        }
        if !hold.is_zero() && heard.elapsed() > hold {
            let _ = wire.notify(&mut s, &params, HOLD_TIMER_EXPIRED, 0);
            return Err(format!("nothing heard for the hold time ({hold:?})"));
        }
        if !hold.is_zero() && said.elapsed() >= hold / 3 {
            wire.keepalive(&mut s, &params)?;
            said = Instant::now();
        }
        match wire.receive(&mut s, &params)? {
            None => {}
            Some((BgpMessageType::Notification, body)) => {
                let mut n = BgpNotificationMessage::new();
                let why = match n.decode_from(&params, &body) {
                    Ok(()) => n.error_text(),
                    Err(e) => format!("an unreadable notification ({e})"),
                };
                return Err(format!("the peer closed the session: {why}"));
            }
            // Keepalives and the routes it sends (ignored: an edge node
            // installs none) both show the peer is alive.
            Some((BgpMessageType::Open, _)) => {
                return Err("the peer sent a second OPEN".into());
            }
            Some(_) => heard = Instant::now(),
        }
    }
}

/// How many prefixes one UPDATE carries: a BGP message is at most 4096
/// bytes (RFC 4271 §4), a /32 takes 5 of them and a /128 17, and the path
/// attributes (communities included) need room too.
fn per_update(local: IpAddr) -> usize {
    if local.is_ipv4() {
        400
    } else {
        150
    }
}

impl Advertised {
    /// These attributes with these addresses.
    fn with(&self, addresses: &[IpAddr]) -> Advertised {
        let mut a = self.clone();
        a.prefixes.clear();
        a.prefixes_v6.clear();
        for ip in addresses {
            match ip {
                IpAddr::V4(v4) => a.prefixes.push(*v4),
                IpAddr::V6(v6) => a.prefixes_v6.push(*v6),
            }
        }
        a
    }
}

/// The UPDATE advertising every address of the session's family: ORIGIN
/// IGP, the AS path (our AS to an external peer, empty to an internal
/// one), ourselves as the next hop (NEXT_HOP for IPv4, in MP_REACH_NLRI
/// for IPv6), communities, and LOCAL_PREF to internal peers.
fn announcement(adv: &Advertised, external: bool, local: IpAddr) -> BgpUpdateMessage {
    let mut u = BgpUpdateMessage::new();
    u.attrs
        .push(BgpAttrItem::Origin(BgpOrigin::new(BgpAttrOrigin::Igp)));
    let mut path = BgpASpath::new();
    if external {
        // zettabgp 0.6 encodes `Seq` with AS_SET's segment type (1) and
        // `Set` with AS_SEQUENCE's (2), although it decodes both right: a
        // one-AS `Set` is what goes out as the AS_SEQUENCE routers expect.
        // `the_as_path_is_a_sequence_on_the_wire` catches a fixed zettabgp.
        path.value.push(BgpASitem::Set(BgpASset {
            value: [BgpAS::new(adv.local_asn)].into(),
        }));
    }
    u.attrs.push(BgpAttrItem::ASPath(path));
    match local {
        IpAddr::V4(_) => {
            u.updates = BgpAddrs::IPV4U(
                adv.prefixes
                    .iter()
                    .map(|p| BgpAddrV4::new(*p, 32))
                    .collect(),
            );
            u.attrs.push(BgpAttrItem::NextHop(BgpNextHop::new(local)));
        }
        IpAddr::V6(v6) => u.attrs.push(BgpAttrItem::MPUpdates(BgpMPUpdates {
            nexthop: BgpAddr::V6(v6),
            addrs: BgpAddrs::IPV6U(
                adv.prefixes_v6
                    .iter()
                    .map(|p| BgpAddrV6::new(*p, 128))
                    .collect(),
            ),
        })),
    }
    if !external {
        u.attrs.push(BgpAttrItem::LocalPref(BgpLocalpref::new(
            adv.local_preference.unwrap_or(100),
        )));
    }
    if !adv.communities.is_empty() {
        u.attrs
            .push(BgpAttrItem::CommunityList(BgpCommunityList::from_vec(
                adv.communities
                    .iter()
                    .map(|c| BgpCommunity::new(*c))
                    .collect(),
            )));
    }
    u
}

/// The UPDATE withdrawing what `announcement` advertised.
fn withdrawal(adv: &Advertised, local: IpAddr) -> BgpUpdateMessage {
    let mut u = BgpUpdateMessage::new();
    match local {
        IpAddr::V4(_) => {
            u.withdraws = BgpAddrs::IPV4U(
                adv.prefixes
                    .iter()
                    .map(|p| BgpAddrV4::new(*p, 32))
                    .collect(),
            )
        }
        IpAddr::V6(_) => u.attrs.push(BgpAttrItem::MPWithdraws(BgpMPWithdraws::new(
            BgpAddrs::IPV6U(
                adv.prefixes_v6
                    .iter()
                    .map(|p| BgpAddrV6::new(*p, 128))
                    .collect(),
            ),
        ))),
    }
    u
}

/// Message framing on the session's stream: bytes read so far, and the
/// encoder's scratch buffer.
#[derive(Default)]
struct Wire {
    read: Vec<u8>,
}

impl Wire {
    fn send(
        &mut self,
        s: &mut TcpStream,
        params: &BgpSessionParams,
        kind: BgpMessageType,
        message: &impl BgpMessage,
    ) -> Result<(), String> {
        let mut buf = [0u8; MAX_MESSAGE];
        let len = message
            .encode_to(params, &mut buf[19..])
            .map_err(|e| format!("encoding a {kind:?} message: {e}"))?;
        let what = format!("{kind:?}");
        let total = params
            .prepare_message_buf(&mut buf, kind, len)
            .map_err(|e| format!("encoding a {what} message: {e}"))?;
        s.write_all(&buf[..total])
            .map_err(|e| format!("sending a {what} message: {e}"))
    }

    fn keepalive(&mut self, s: &mut TcpStream, params: &BgpSessionParams) -> Result<(), String> {
        self.send(
            s,
            params,
            BgpMessageType::Keepalive,
            &BgpKeepaliveMessage {},
        )
    }

    fn notify(
        &mut self,
        s: &mut TcpStream,
        params: &BgpSessionParams,
        code: u8,
        subcode: u8,
    ) -> Result<(), String> {
        let mut n = BgpNotificationMessage::new();
        n.error_code = code;
        n.error_subcode = subcode;
        self.send(s, params, BgpMessageType::Notification, &n)
    }

    /// The next whole message, or None if none arrived within `POLL`.
    fn receive(
        &mut self,
        s: &mut TcpStream,
        params: &BgpSessionParams,
    ) -> Result<Option<(BgpMessageType, Vec<u8>)>, String> {
        loop {
            if self.read.len() >= 19 {
                let (kind, len) = params
                    .decode_message_head(&self.read)
                    .map_err(|e| format!("a message from the peer: {e}"))?;
                if len + 19 > MAX_MESSAGE {
                    return Err(format!("a message of {} bytes from the peer", len + 19));
                }
                if self.read.len() >= 19 + len {
                    let body = self.read[19..19 + len].to_vec();
                    self.read.drain(..19 + len);
                    return Ok(Some((kind, body)));
                }
            }
            let mut chunk = [0u8; MAX_MESSAGE];
            match s.read(&mut chunk) {
                Ok(0) => return Err("the peer closed the connection".into()),
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(format!("reading from the peer: {e}")),
            }
        }
    }

    /// Waits (at most `CONNECT_TIMEOUT`) for a message of `kind`; a
    /// notification instead is the peer's refusal.
    fn expect(
        &mut self,
        s: &mut TcpStream,
        params: &BgpSessionParams,
        kind: BgpMessageType,
        stop: &AtomicBool,
    ) -> Result<Vec<u8>, String> {
        let until = Instant::now() + CONNECT_TIMEOUT;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            match self.receive(s, params)? {
                None => {}
                Some((k, body)) if k == kind => return Ok(body),
                Some((BgpMessageType::Notification, body)) => {
                    let mut n = BgpNotificationMessage::new();
                    let _ = n.decode_from(params, &body);
                    return Err(format!("the peer refused the session: {}", n.error_text()));
                }
                Some((k, _)) => return Err(format!("expected {kind:?}, the peer sent {k:?}")),
            }
        }
        Err(format!(
            "no {kind:?} from the peer within {CONNECT_TIMEOUT:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv() -> Advertised {
        Advertised {
            local_asn: 64512,
            router_id: None,
            hold_time: 9,
            prefixes: vec!["192.0.2.10".parse().unwrap(), "192.0.2.11".parse().unwrap()],
            prefixes_v6: vec!["2001:db8::10".parse().unwrap()],
            communities: vec![(64512 << 16) | 100],
            local_preference: Some(200),
        }
    }

    fn params() -> BgpSessionParams {
        BgpSessionParams::new(
            64512,
            9,
            BgpTransportMode::IPv4,
            "10.0.0.1".parse().unwrap(),
            vec![BgpCapability::SafiIPv4u, BgpCapability::CapASN32(64512)],
        )
    }

    /// Encodes and decodes back, as the peer would read it.
    fn round_trip(u: &BgpUpdateMessage) -> BgpUpdateMessage {
        let mut buf = [0u8; MAX_MESSAGE];
        let len = u.encode_to(&params(), &mut buf).unwrap();
        let mut back = BgpUpdateMessage::new();
        back.decode_from(&params(), &buf[..len]).unwrap();
        back
    }

    fn prefixes(a: &BgpAddrs) -> Vec<String> {
        match a {
            BgpAddrs::IPV4U(v) => v
                .iter()
                .map(|p| format!("{}/{}", p.addr, p.prefixlen))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_external_peer_gets_our_as_and_no_local_preference() {
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        let u = round_trip(&announcement(&adv(), true, local));
        assert_eq!(prefixes(&u.updates), ["192.0.2.10/32", "192.0.2.11/32"]);
        let path = u.get_attr_aspath().unwrap();
        assert_eq!(format!("{path:?}").matches("64512").count(), 1, "{path:?}");
        assert_eq!(u.get_attr_nexthop().unwrap().value, local);
        assert!(!u
            .attrs
            .iter()
            .any(|a| matches!(a, BgpAttrItem::LocalPref(_))));
        let communities = u.get_attr_communitylist().unwrap();
        assert_eq!(
            communities
                .value
                .iter()
                .map(|c| c.value)
                .collect::<Vec<_>>(),
            [(64512 << 16) | 100]
        );
    }

    #[test]
    fn the_as_path_is_a_sequence_on_the_wire() {
        let u = announcement(&adv(), true, "10.0.0.1".parse().unwrap());
        let mut buf = [0u8; MAX_MESSAGE];
        let len = u.encode_to(&params(), &mut buf).unwrap();
        let wire = &buf[..len];
        // Withdrawn routes length (0), then the attributes' length, then
        // each attribute: flags, type code, length (2 bytes if extended).
        assert_eq!(&wire[..2], [0, 0]);
        let attrs_len = usize::from(u16::from_be_bytes([wire[2], wire[3]]));
        let mut at = 4;
        let mut as_path = None;
        while at < 4 + attrs_len {
            let (flags, code) = (wire[at], wire[at + 1]);
            let (value_at, value_len) = if flags & 0x10 != 0 {
                (
                    at + 4,
                    usize::from(u16::from_be_bytes([wire[at + 2], wire[at + 3]])),
                )
            } else {
                (at + 3, usize::from(wire[at + 2]))
            };
            if code == 2 {
                as_path = Some(&wire[value_at..value_at + value_len]);
            }
            at = value_at + value_len;
        }
        // One segment: AS_SEQUENCE (2), one AS, 64512 in four bytes.
        assert_eq!(as_path, Some(&[2, 1, 0, 0, 0xfc, 0x00][..]));
    }

    #[test]
    fn ipv6_addresses_go_in_mp_reach_with_our_ipv6_next_hop() {
        let local: IpAddr = "fd00::1".parse().unwrap();
        let u = round_trip(&announcement(&adv(), true, local));
        let empty = match &u.updates {
            BgpAddrs::None => true,
            BgpAddrs::IPV4U(v) => v.is_empty(),
            _ => false,
        };
        assert!(empty, "no IPv4 NLRI: {:?}", u.updates);
        assert!(u.get_attr_nexthop().is_none(), "no NEXT_HOP attribute");
        let mp = u.get_mpupdates().unwrap();
        assert_eq!(
            format!("{:?}", mp.nexthop),
            format!("{:?}", BgpAddr::V6("fd00::1".parse().unwrap()))
        );
        match &mp.addrs {
            BgpAddrs::IPV6U(v) => {
                let got: Vec<String> = v
                    .iter()
                    .map(|p| format!("{}/{}", p.addr, p.prefixlen))
                    .collect();
                assert_eq!(got, ["2001:db8::10/128"]);
            }
            other => panic!("{other:?}"),
        }
        let w = round_trip(&withdrawal(&adv(), local));
        match &w.get_mpwithdraws().unwrap().addrs {
            BgpAddrs::IPV6U(v) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_internal_peer_gets_an_empty_path_and_local_preference() {
        let u = round_trip(&announcement(&adv(), false, "10.0.0.1".parse().unwrap()));
        assert_eq!(u.get_attr_aspath().unwrap().value.len(), 0);
        let pref = u.attrs.iter().find_map(|a| match a {
            BgpAttrItem::LocalPref(p) => Some(p.value),
            _ => None,
        });
        assert_eq!(pref, Some(200));
    }

    /// A full UPDATE (`per_update` prefixes, 32 communities) still fits
    /// in one BGP message, for both families, announced and withdrawn.
    #[test]
    fn a_full_update_fits_in_one_message() {
        for local in ["10.0.0.1", "fd00::1"] {
            let local: IpAddr = local.parse().unwrap();
            let n = per_update(local);
            let addresses: Vec<IpAddr> = (0..n)
                .map(|i| {
                    let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
                    if local.is_ipv4() {
                        IpAddr::from([10, 1, hi, lo])
                    } else {
                        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, u16::from(hi), u16::from(lo)])
                    }
                })
                .collect();
            let mut a = adv().with(&addresses);
            a.communities = (0..32).map(|i| (64512 << 16) | i).collect();
            let u = round_trip(&announcement(&a, true, local));
            let carried = match (&u.updates, u.get_mpupdates()) {
                (BgpAddrs::IPV4U(v), _) if !v.is_empty() => v.len(),
                (_, Some(mp)) => match &mp.addrs {
                    BgpAddrs::IPV6U(v) => v.len(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
            assert_eq!(carried, n);
            round_trip(&withdrawal(&a, local));
        }
    }

    #[test]
    fn a_withdrawal_names_every_prefix_and_carries_no_attributes() {
        let u = round_trip(&withdrawal(&adv(), "10.0.0.1".parse().unwrap()));
        assert_eq!(prefixes(&u.withdraws), ["192.0.2.10/32", "192.0.2.11/32"]);
        assert!(u.attrs.is_empty());
    }
}
