//! L2 mode: ARP for the owned IPv4 addresses and NDP for the owned IPv6
//! ones, on their interfaces.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pnet_datalink::MacAddr;
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};

use crate::ownership::Ownership;
use crate::{arp, ndp, route, AnnounceConfig};

/// How often an incomplete placement is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The spacing of the repeated announcements after a take-over.
const TAKE_OVER_REPEAT: Duration = Duration::from_millis(500);

/// How often a receive loop wakes to check whether it should stop.
const POLL: Duration = Duration::from_millis(100);

/// The addresses one interface announces.
struct Announced {
    interface: NetworkInterface,
    mac: MacAddr,
    addresses: Vec<IpAddr>,
}

impl Announced {
    fn has_ipv4(&self) -> bool {
        self.addresses.iter().any(IpAddr::is_ipv4)
    }

    fn ipv6(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.addresses.iter().filter_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }
}

/// Which interface announces each address: the configured ones (or, with
/// none configured, every non-loopback interface), the one with a network
/// of the address's family containing it first.
fn plan(
    cfg: &AnnounceConfig,
    addresses: &[IpAddr],
    interfaces: &[NetworkInterface],
) -> Result<Vec<Announced>, String> {
    let candidates: Vec<&NetworkInterface> = if cfg.interfaces.is_empty() {
        interfaces.iter().filter(|i| !i.is_loopback()).collect()
    } else {
        cfg.interfaces
            .iter()
            .map(|name| {
                interfaces.iter().find(|i| &i.name == name).ok_or_else(|| {
                    format!("announce.interfaces: no interface named {name:?} on this node")
                })
            })
            .collect::<Result<_, _>>()?
    };
    let mut by_interface: BTreeMap<u32, Announced> = BTreeMap::new();
    for addr in addresses {
        let on_subnet = candidates.iter().find(|i| {
            i.ips
                .iter()
                .any(|n| n.is_ipv4() == addr.is_ipv4() && n.contains(*addr))
        });
        let chosen = match (on_subnet, cfg.interfaces.len()) {
            (Some(i), _) => *i,
            // One interface configured: it announces whatever it is given.
            (None, 1) => candidates[0],
            (None, _) => {
                let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "announce.addresses: no interface has an {family} network containing {addr}; set announce.interfaces"
                ));
            }
        };
        let mac = chosen
            .mac
            .filter(|m| *m != MacAddr::zero())
            .ok_or_else(|| format!("announce: interface {} has no MAC address", chosen.name))?;
        by_interface
            .entry(chosen.index)
            .or_insert_with(|| Announced {
                interface: chosen.clone(),
                mac,
                addresses: Vec::new(),
            })
            .addresses
            .push(*addr);
    }
    Ok(by_interface.into_values().collect())
}

/// The kernel must not answer ARP for the addresses (they are local
/// routes): only this process does, so a node whose Portico is gone
/// stops answering. The same "strict ARP" MetalLB asks of IPVS users.
fn strict_arp(interface: &str) -> Result<(), String> {
    for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        let path = format!("/proc/sys/net/ipv4/conf/{interface}/{key}");
        std::fs::write(&path, value)
            .map_err(|e| format!("announce: cannot set {path} to {value}: {e}"))?;
    }
    Ok(())
}

/// Announcing on every planned interface until released.
/// Announcing on the interfaces the addresses need until released.
pub struct L2Announcer {
    running: route::Running,
    ownership: Ownership,
}

/// How long a stopping node waits for another to take its addresses
/// before it removes their routes (its listeners still accept meanwhile,
/// for clients whose ARP caches still point at it).
const HAND_OVER_LIMIT: Duration = Duration::from_secs(3);

impl L2Announcer {
    /// Announces the candidates of `ownership` (the configured addresses,
    /// and the LoadBalancer Services' own as they come and go): a local
    /// route for each, strict ARP on the interfaces of IPv4 ones, the
    /// solicited-node groups of IPv6 ones, a responder per interface in
    /// use, and gratuitous ARP / unsolicited neighbor advertisements when
    /// an address is taken and every `garp_interval_seconds`, for the
    /// addresses `ownership` says are this node's. Needs CAP_NET_ADMIN and
    /// CAP_NET_RAW; a configured interface or address that cannot be
    /// placed is an error here, a Service's address that cannot be is
    /// logged.
    pub fn start(
        cfg: &AnnounceConfig,
        serving: crate::Serving,
        ownership: Ownership,
    ) -> Result<L2Announcer, String> {
        let own: Vec<IpAddr> = cfg
            .addresses
            .iter()
            .copied()
            .filter(|a| cfg.mode_of(*a) == crate::AnnounceMode::L2)
            .collect();
        plan(cfg, &own, &pnet_datalink::interfaces())?;
        let mut routes = route::LocalRoutes::default();
        if let Some(e) = routes.follow(&ownership).into_iter().next() {
            return Err(e);
        }
        let mut running = route::Running::new("l2");
        running.threads.push(
            route::follow(routes, ownership.clone(), running.stop.clone(), "l2")
                .map_err(|e| format!("announce: cannot start the route thread: {e}"))?,
        );
        let manager = Manager {
            cfg: cfg.clone(),
            serving,
            ownership: ownership.clone(),
            stop: running.stop.clone(),
            responders: BTreeMap::new(),
            strict: Vec::new(),
            groups: None,
            joined: Vec::new(),
            unplaced: Vec::new(),
            incomplete: false,
        };
        running.threads.push(
            std::thread::Builder::new()
                .name("l2-manager".into())
                .spawn(move || manager.run())
                .map_err(|e| format!("announce: cannot start the L2 thread: {e}"))?,
        );
        Ok(L2Announcer { running, ownership })
    }

    /// Stops answering and removes the local routes. Idempotent. With
    /// elected ownership, the Leases are released first and the routes
    /// kept until another node has taken the addresses (at most
    /// `HAND_OVER_LIMIT`), so no new connection finds nobody.
    pub fn release(&mut self) {
        if self.ownership.is_elected() && !self.ownership.giving_up() {
            self.ownership.give_up();
            let started = Instant::now();
            if self.ownership.wait_handed_over(HAND_OVER_LIMIT) {
                // The new owner's first announcement reaches the segment
                // within its responder's poll; the routes stay until then.
                std::thread::sleep(POLL * 5);
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "addresses handed over to other edge nodes"
                );
            } else {
                tracing::warn!(
                    "no other edge node took the addresses within {} s; giving them up anyway",
                    HAND_OVER_LIMIT.as_secs()
                );
            }
        }
        let had = !self.running.threads.is_empty();
        self.running.release();
        if had {
            tracing::info!("gave up the announced addresses");
        }
        crate::status::update(|s| {
            s.ready = false;
            s.addresses.retain(|a| a.mode != "l2");
        });
    }
}

impl Drop for L2Announcer {
    fn drop(&mut self) {
        self.release();
    }
}

/// The addresses one interface's responder answers for, set by the
/// manager; `version` changes with them.
#[derive(Default)]
struct Assigned {
    addresses: RwLock<Vec<IpAddr>>,
    version: AtomicU64,
}

/// Places the candidates on interfaces as they change: starts a
/// responder on an interface when it first gets an address, sets strict
/// ARP there, joins and leaves solicited-node groups.
struct Manager {
    cfg: AnnounceConfig,
    serving: crate::Serving,
    ownership: Ownership,
    stop: Arc<AtomicBool>,
    responders: BTreeMap<u32, Arc<Assigned>>,
    /// Interfaces strict ARP was set on.
    strict: Vec<String>,
    /// Holds the solicited-node group memberships (left when closed).
    groups: Option<UdpSocket>,
    joined: Vec<(Ipv6Addr, u32)>,
    /// Addresses no interface can take, logged once each.
    unplaced: Vec<IpAddr>,
    /// The last placement left an address or a responder out.
    incomplete: bool,
}

impl Manager {
    fn run(mut self) {
        let mut generation = None;
        let mut threads = Vec::new();
        let mut placed_at = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let g = self.ownership.generation();
            // An address no interface could take, or an interface whose
            // responder did not start, is tried again now and then: the
            // interface may come up later (a VLAN, a bond).
            let retry = self.incomplete && placed_at.elapsed() >= RETRY;
            if generation != Some(g) || retry {
                generation = Some(g);
                placed_at = Instant::now();
                threads.extend(self.place());
            }
            std::thread::sleep(POLL / 2);
        }
        for t in threads {
            let _ = t.join();
        }
    }

    /// One placement of the current candidates; the responder threads it
    /// started.
    fn place(&mut self) -> Vec<std::thread::JoinHandle<()>> {
        self.incomplete = false;
        let candidates: Vec<IpAddr> = self.ownership.candidates().into_iter().collect();
        let interfaces = pnet_datalink::interfaces();
        let mut placed: Vec<Announced> = Vec::new();
        for addr in &candidates {
            match plan(&self.cfg, &[*addr], &interfaces) {
                Ok(p) if self.unplaced.contains(addr) => {
                    self.unplaced.retain(|a| a != addr);
                    tracing::info!(address = %addr, interface = %p[0].interface.name, "an interface can take the address now");
                    merge(&mut placed, p);
                }
                Ok(p) => merge(&mut placed, p),
                Err(e) => {
                    self.incomplete = true;
                    if !self.unplaced.contains(addr) {
                        self.unplaced.push(*addr);
                        tracing::warn!(
                            "{e}; {addr} is not announced (tried again every {} s)",
                            RETRY.as_secs()
                        );
                    }
                }
            }
        }
        self.join_groups(&placed);
        let mut started = Vec::new();
        for a in &placed {
            if a.has_ipv4() && !self.strict.contains(&a.interface.name) {
                match strict_arp(&a.interface.name) {
                    Ok(()) => self.strict.push(a.interface.name.clone()),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            if !self.responders.contains_key(&a.interface.index) {
                match self.start_responder(a) {
                    Ok((assigned, thread)) => {
                        self.responders.insert(a.interface.index, assigned);
                        started.push(thread);
                    }
                    Err(e) => {
                        self.incomplete = true;
                        tracing::warn!("{e}");
                        continue;
                    }
                }
            }
        }
        for (index, assigned) in &self.responders {
            let now: Vec<IpAddr> = placed
                .iter()
                .find(|a| a.interface.index == *index)
                .map(|a| a.addresses.clone())
                .unwrap_or_default();
            let mut cur = assigned
                .addresses
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if *cur != now {
                *cur = now;
                assigned.version.fetch_add(1, Ordering::SeqCst);
            }
        }
        crate::status::update(|s| {
            let holders: BTreeMap<IpAddr, Option<String>> = s
                .addresses
                .iter()
                .filter(|a| a.mode == "l2")
                .map(|a| (a.address, a.holder.clone()))
                .collect();
            s.addresses.retain(|a| a.mode != "l2");
            s.addresses.extend(placed.iter().flat_map(|a| {
                a.addresses.iter().map(|ip| {
                    let protocol = if ip.is_ipv4() { "ARP" } else { "NDP" };
                    crate::status::AddressStatus {
                        address: *ip,
                        how: format!("{protocol} on {} (MAC {})", a.interface.name, a.mac),
                        owned: self.ownership.owns(*ip),
                        mode: "l2",
                        holder: holders.get(ip).cloned().flatten(),
                    }
                })
            }));
            s.addresses.sort_by_key(|a| a.address);
        });
        started
    }

    fn start_responder(
        &self,
        a: &Announced,
    ) -> Result<(Arc<Assigned>, std::thread::JoinHandle<()>), String> {
        let config = pnet_datalink::Config {
            read_timeout: Some(POLL),
            ..Default::default()
        };
        let (tx, rx) = match pnet_datalink::channel(&a.interface, config) {
            Ok(Channel::Ethernet(tx, rx)) => (tx, rx),
            Ok(_) => {
                return Err(format!(
                    "announce: {} is not an Ethernet interface",
                    a.interface.name
                ))
            }
            Err(e) => {
                return Err(format!(
                    "announce: cannot open a raw socket on {}: {e} (needs CAP_NET_RAW)",
                    a.interface.name
                ))
            }
        };
        let interval = Duration::from_secs(self.cfg.garp_interval_seconds.max(1));
        tracing::info!(interface = %a.interface.name, mac = %a.mac,
            garp_interval_seconds = interval.as_secs(), "announcing addresses by ARP (IPv4) and NDP (IPv6)");
        let assigned = Arc::new(Assigned::default());
        let responder = Responder {
            interface: a.interface.clone(),
            mac: a.mac,
            assigned: assigned.clone(),
        };
        let (stop, serving, owner) = (
            self.stop.clone(),
            self.serving.clone(),
            self.ownership.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("l2-{}", a.interface.name))
            .spawn(move || serve(responder, tx, rx, interval, &stop, &*serving, &owner))
            .map_err(|e| format!("announce: cannot start the L2 responder thread: {e}"))?;
        Ok((assigned, thread))
    }

    /// Joins the solicited-node multicast groups of the placed IPv6
    /// addresses and leaves the others, so each interface accepts the
    /// solicitations for its addresses (the kernel filters multicast it
    /// has not joined).
    fn join_groups(&mut self, placed: &[Announced]) {
        let mut want: Vec<(Ipv6Addr, u32)> = placed
            .iter()
            .flat_map(|a| {
                a.ipv6()
                    .map(|ip| (ndp::solicited_node(ip), a.interface.index))
            })
            .collect();
        want.sort();
        want.dedup();
        if want.is_empty() && self.joined.is_empty() {
            return;
        }
        if self.groups.is_none() {
            match UdpSocket::bind("[::]:0") {
                Ok(s) => self.groups = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "announce: cannot open a socket to join NDP groups");
                    return;
                }
            }
        }
        let Some(socket) = &self.groups else { return };
        for (g, index) in self.joined.iter().filter(|j| !want.contains(j)) {
            let _ = socket.leave_multicast_v6(g, *index);
        }
        for (g, index) in want.iter().filter(|w| !self.joined.contains(w)) {
            if let Err(e) = socket.join_multicast_v6(g, *index) {
                tracing::warn!(group = %g, error = %e, "announce: cannot join the solicited-node group");
            }
        }
        self.joined = want;
    }
}

/// Adds one address's placement to the others, one entry per interface.
fn merge(placed: &mut Vec<Announced>, p: Vec<Announced>) {
    for a in p {
        match placed
            .iter_mut()
            .find(|b| b.interface.index == a.interface.index)
        {
            Some(b) => b.addresses.extend(a.addresses),
            None => placed.push(a),
        }
    }
}

/// One interface's responder.
struct Responder {
    interface: NetworkInterface,
    mac: MacAddr,
    assigned: Arc<Assigned>,
}

/// The answer to one received frame, if it asks for an owned address, and
/// the counter it goes to.
fn answer(
    mac: MacAddr,
    owned: &[IpAddr],
    frame: &[u8],
) -> Option<(Vec<u8>, &'static str, &'static str)> {
    if let Some(r) = arp::reply_to(frame, mac, |ip| owned.contains(&IpAddr::V4(ip))) {
        return Some((r, "portico_arp_sent_total", "reply"));
    }
    ndp::reply_to(frame, mac, |ip| owned.contains(&IpAddr::V6(ip)))
        .map(|r| (r, "portico_ndp_sent_total", "reply"))
}

fn serve(
    a: Responder,
    mut tx: Box<dyn DataLinkSender>,
    mut rx: Box<dyn DataLinkReceiver>,
    interval: Duration,
    stop: &AtomicBool,
    serving: &(dyn Fn() -> bool + Send + Sync),
    ownership: &Ownership,
) {
    let send = |tx: &mut Box<dyn DataLinkSender>,
                frame: &[u8],
                counter: &'static str,
                what: &'static str| match tx.send_to(frame, None) {
        Some(Ok(())) => metrics::counter!(counter, "kind" => what).increment(1),
        Some(Err(e)) => {
            tracing::warn!(interface = %a.interface.name, error = %e, "cannot send an ARP/NDP packet")
        }
        None => {}
    };
    let announce = |tx: &mut Box<dyn DataLinkSender>, addresses: &[IpAddr]| {
        for ip in addresses {
            match ip {
                IpAddr::V4(v4) => send(
                    tx,
                    &arp::gratuitous(*v4, a.mac),
                    "portico_arp_sent_total",
                    "gratuitous",
                ),
                IpAddr::V6(v6) => send(
                    tx,
                    &ndp::unsolicited(*v6, a.mac),
                    "portico_ndp_sent_total",
                    "unsolicited",
                ),
            }
        }
    };
    // Nothing is answered or announced while the node is not ready; it
    // announces at once when it becomes ready, and an address at once when
    // it takes it over.
    let mut was: Option<bool> = None;
    let mut next_announcement = Instant::now();
    let mut version = None;
    let mut owned: Vec<IpAddr> = Vec::new();
    // After a take-over, two more announcements half a second apart: a
    // neighbour ignores one that comes within its ARP `locktime` (1 s) of
    // the previous owner's last update (keepalived repeats them too).
    let mut burst = 0u8;
    while !stop.load(Ordering::SeqCst) {
        let up = serving() && !ownership.giving_up();
        if was != Some(up) {
            was = Some(up);
            crate::note_serving(up, "l2");
            next_announcement = Instant::now();
        }
        let v = (
            ownership.generation(),
            a.assigned.version.load(Ordering::SeqCst),
        );
        if version != Some(v) {
            version = Some(v);
            let now: Vec<IpAddr> = a
                .assigned
                .addresses
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .filter(|ip| ownership.owns(*ip))
                .collect();
            let taken: Vec<IpAddr> = now
                .iter()
                .copied()
                .filter(|ip| !owned.contains(ip))
                .collect();
            for ip in owned.iter().filter(|ip| !now.contains(ip)) {
                tracing::info!(address = %ip, interface = %a.interface.name, "address given up: no longer answering for it");
            }
            for ip in &taken {
                tracing::info!(address = %ip, interface = %a.interface.name, "address taken: answering for it");
            }
            crate::status::update(|s| {
                for st in s.addresses.iter_mut() {
                    if owned.contains(&st.address) || now.contains(&st.address) {
                        st.owned = now.contains(&st.address);
                    }
                }
            });
            owned = now;
            if up && !taken.is_empty() {
                announce(&mut tx, &taken);
                burst = 2;
                next_announcement = Instant::now() + TAKE_OVER_REPEAT;
            }
        }
        match rx.next() {
            Ok(frame) if up => {
                if let Some((reply, counter, what)) = answer(a.mac, &owned, frame) {
                    send(&mut tx, &reply, counter, what);
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                tracing::warn!(interface = %a.interface.name, error = %e, "ARP/NDP receive failed");
                std::thread::sleep(POLL);
            }
        }
        if up && Instant::now() >= next_announcement {
            announce(&mut tx, &owned);
            next_announcement = Instant::now()
                + if burst > 0 {
                    burst -= 1;
                    TAKE_OVER_REPEAT
                } else {
                    interval
                };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnetwork::IpNetwork;

    fn plan_of(c: &AnnounceConfig, nics: &[NetworkInterface]) -> Result<Vec<Announced>, String> {
        plan(c, &c.addresses, nics)
    }

    fn iface(name: &str, index: u32, net: &str) -> NetworkInterface {
        NetworkInterface {
            name: name.into(),
            description: String::new(),
            index,
            mac: Some(MacAddr(2, 0, 0, 0, 0, index as u8)),
            ips: vec![net.parse::<IpNetwork>().unwrap()],
            flags: 0,
        }
    }

    fn cfg(addresses: &[&str], interfaces: &[&str]) -> AnnounceConfig {
        AnnounceConfig {
            mode: crate::AnnounceMode::L2,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            ..AnnounceConfig::default()
        }
    }

    #[test]
    fn each_address_goes_to_the_interface_of_its_subnet() {
        let nics = [
            iface("eth0", 2, "10.0.0.5/24"),
            iface("eth1", 3, "192.0.2.5/24"),
        ];
        let p = plan_of(
            &cfg(&["192.0.2.10", "10.0.0.100", "192.0.2.11"], &[]),
            &nics,
        )
        .unwrap();
        let got: Vec<(String, Vec<String>)> = p
            .iter()
            .map(|a| {
                (
                    a.interface.name.clone(),
                    a.addresses.iter().map(|i| i.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("eth0".to_string(), vec!["10.0.0.100".to_string()]),
                (
                    "eth1".to_string(),
                    vec!["192.0.2.10".to_string(), "192.0.2.11".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn ipv6_addresses_go_to_the_interface_with_their_ipv6_network() {
        let mut eth1 = iface("eth1", 3, "192.0.2.5/24");
        eth1.ips.push("2001:db8:1::5/64".parse().unwrap());
        let nics = [iface("eth0", 2, "2001:db8:2::5/64"), eth1];
        let p = plan_of(
            &cfg(&["2001:db8:1::100", "192.0.2.10", "2001:db8:2::100"], &[]),
            &nics,
        )
        .unwrap();
        let names: Vec<(&str, usize, bool)> = p
            .iter()
            .map(|a| (a.interface.name.as_str(), a.addresses.len(), a.has_ipv4()))
            .collect();
        assert_eq!(names, [("eth0", 1, false), ("eth1", 2, true)]);
        assert_eq!(
            p[1].ipv6().collect::<Vec<_>>(),
            ["2001:db8:1::100".parse::<std::net::Ipv6Addr>().unwrap()]
        );
        // An IPv4 network never claims an IPv6 address.
        let err = plan_of(&cfg(&["2001:db8:9::1"], &[]), &nics).err().unwrap();
        assert!(err.contains("no interface has an IPv6 network"), "{err}");
    }

    #[test]
    fn an_address_on_no_subnet_needs_a_configured_interface() {
        let nics = [
            iface("eth0", 2, "10.0.0.5/24"),
            iface("eth1", 3, "192.0.2.5/24"),
        ];
        let err = plan_of(&cfg(&["198.51.100.7"], &[]), &nics).err().unwrap();
        assert!(
            err.contains("198.51.100.7") && err.contains("announce.interfaces"),
            "{err}"
        );
        let p = plan_of(&cfg(&["198.51.100.7"], &["eth1"]), &nics).unwrap();
        assert_eq!(p[0].interface.name, "eth1");
        let err = plan_of(&cfg(&["198.51.100.7"], &["eth9"]), &nics)
            .err()
            .unwrap();
        assert!(err.contains("eth9"), "{err}");
    }
}
