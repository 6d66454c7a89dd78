//! Services of type LoadBalancer and NodePort → L4 listeners.
//!
//! LoadBalancer ports listen on the Service's own addresses
//! (`status.loadBalancer.ingress[].ip`, else `spec.loadBalancerIP`), else on
//! the node addresses. `nodePort`s listen on the node addresses when
//! `l4.node_ports` is on. The Services' own addresses are also what
//! bare-metal announcement makes reachable, unless a Service says
//! `portico.io/announce: "false"`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::backend::Backends;
use super::Settings;
use portico_model::problems::Problem;
use portico_model::snapshot::{BackendKey, L4ListenerKey, L4Protocol};
use portico_model::store::Store;

/// The annotation with which a LoadBalancer Service keeps its addresses
/// from being announced (another announcer, or a route already exists).
pub const ANNOUNCE_ANNOTATION: &str = "portico.io/announce";

pub fn add_l4_listeners(
    store: &Store,
    settings: &Settings,
    backends: &mut Backends<'_>,
    l4: &mut BTreeMap<L4ListenerKey, BackendKey>,
    announce: &mut BTreeMap<IpAddr, portico_model::snapshot::AddressOwner>,
    problems: &mut Vec<Problem>,
) {
    for (key, stored) in super::oldest_first(&store.services, |s| &s.metadata) {
        let svc = &stored.object;
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind != "LoadBalancer" && kind != "NodePort" {
            continue;
        }
        let here = Store::locate(&store.services, "Service", key);
        let mut lb_addrs: Vec<IpAddr> = Vec::new();
        if kind == "LoadBalancer" {
            let status_ips = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref());
            for ip in status_ips.chain(spec.load_balancer_ip.as_deref()) {
                match ip.parse::<IpAddr>() {
                    Ok(ip) if !lb_addrs.contains(&ip) => lb_addrs.push(ip),
                    Ok(_) => {}
                    Err(_) => problems.push(Problem::error(
                        &here,
                        format!("load balancer address {ip:?} is not an IP address"),
                    )),
                }
            }
            let opt = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOUNCE_ANNOTATION))
                .map(String::as_str);
            if let Some(other) = opt.filter(|v| !matches!(*v, "true" | "false")) {
                problems.push(Problem::warning(
                    &here,
                    format!(
                        "metadata.annotations[{ANNOUNCE_ANNOTATION}]: {other:?} is not \"true\" \
                         or \"false\"; the addresses are announced"
                    ),
                ));
            }
            // A Node's address is that node's to answer for: it is in the
            // status of a Service with no address of its own (the leader's
            // fallback), never one to announce, nor to listen on here when
            // it is another node's.
            lb_addrs.retain(|ip| {
                settings.node_addresses.contains(ip)
                    || !settings.cluster_node_addresses.contains(ip)
            });
            // While the Nodes are being listed, any could be one.
            if opt != Some("false") && settings.cluster_nodes_known {
                let node_address = |ip: &IpAddr| settings.node_addresses.contains(ip);
                for ip in lb_addrs.iter().filter(|ip| !node_address(ip)) {
                    // The older Service keeps an address two Services claim.
                    announce.entry(*ip).or_insert_with(|| {
                        portico_model::snapshot::AddressOwner::Service(key.clone())
                    });
                }
            }
            if lb_addrs.is_empty() {
                lb_addrs = settings.node_addresses.clone();
            }
        }
        if lb_addrs.is_empty() && settings.node_addresses.is_empty() {
            problems.push(Problem::warning(
                &here,
                format!(
                    "type {kind}: no address to listen on (set node.addresses or --node-address)"
                ),
            ));
            continue;
        }
        for (pi, sp) in spec.ports.iter().flatten().enumerate() {
            let protocol = match sp.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => L4Protocol::Tcp,
                "UDP" => L4Protocol::Udp,
                other => {
                    problems.push(Problem::warning(
                        &here,
                        format!(
                            "spec.ports[{pi}]: protocol {other} is not supported; port skipped"
                        ),
                    ));
                    continue;
                }
            };
            let backend = backends.service_port(key, svc, sp);
            let mut binds: Vec<SocketAddr> = Vec::new();
            if let Ok(port) = u16::try_from(sp.port) {
                binds.extend(lb_addrs.iter().map(|ip| SocketAddr::new(*ip, port)));
            }
            if settings.node_ports {
                if let Some(np) = sp.node_port.and_then(|p| u16::try_from(p).ok()) {
                    binds.extend(
                        settings
                            .node_addresses
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, np)),
                    );
                }
            }
            for addr in binds {
                let lk = L4ListenerKey { protocol, addr };
                match l4.get(&lk) {
                    Some(owner) if *owner != backend => problems.push(Problem::error(
                        &here,
                        format!("spec.ports[{pi}]: {lk} is already used by Service {owner}; port skipped"),
                    )),
                    Some(_) => {}
                    None => {
                        l4.insert(lk, backend.clone());
                    }
                }
            }
        }
    }
}
