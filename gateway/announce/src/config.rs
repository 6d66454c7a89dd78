//! `[announce]`: how this node makes the addresses it owns reachable.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceMode {
    /// Addresses are reachable some other way (configured on the node,
    /// routed to it, or announced by MetalLB/kube-vip).
    #[default]
    Off,
    /// ARP (IPv4) and NDP (IPv6) on the segment.
    L2,
    /// /32 routes to the routers in `[announce.bgp]` (ECMP over the nodes).
    Bgp,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceConfig {
    /// How addresses in no pool are announced.
    pub mode: AnnounceMode,
    /// Address ranges announced another way than `mode` (e.g. one per
    /// `cloud-lb` pool): the first pool containing an address decides.
    pub pools: Vec<PoolConfig>,
    /// Addresses announced besides the LoadBalancer Services' own.
    pub addresses: Vec<IpAddr>,
    /// Announce the LoadBalancer Services' own addresses (status, else
    /// `spec.loadBalancerIP`, e.g. from the `cloud-lb` pools) as they come
    /// and go; a Service with `portico.io/announce: "false"` is left out.
    pub service_addresses: bool,
    /// Interfaces to announce on. Empty: for each address, the interface
    /// with a network of its family that contains it.
    pub interfaces: Vec<String>,
    /// Gratuitous ARP / unsolicited neighbor advertisements for every owned
    /// address this often (and at take-over).
    pub garp_interval_seconds: u64,
    /// L2 mode with the Kubernetes source: the duration of each address's
    /// Lease. A killed owner's addresses move after at most this plus a
    /// third of it; the owner renews every third of it.
    pub lease_duration_seconds: u64,
    /// BGP mode: this node's AS and its routers.
    pub bgp: BgpConfig,
}

/// `[[announce.pools]]`: a range of addresses with its own mode and, in
/// BGP mode, its own communities and local preference.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Networks and single addresses: `192.0.2.0/28`, `2001:db8::/120`,
    /// `198.51.100.7`.
    pub addresses: Vec<String>,
    pub mode: AnnounceMode,
    /// BGP: instead of `announce.bgp.communities`.
    #[serde(default)]
    pub communities: Option<Vec<String>>,
    /// BGP: instead of `announce.bgp.local_preference`.
    #[serde(default)]
    pub local_preference: Option<u32>,
    /// Gateways may ask for addresses of this pool (`spec.addresses`):
    /// such an address is served and announced for its Gateway. Off by
    /// default: whoever may write a Gateway could otherwise take any
    /// address on the segment.
    #[serde(default)]
    pub gateways: bool,
}

impl PoolConfig {
    /// The pool's networks that parse (`validate` reports the others).
    pub fn valid_networks(&self) -> Vec<IpNetwork> {
        self.networks().flatten().collect()
    }

    fn networks(&self) -> impl Iterator<Item = Result<IpNetwork, String>> + '_ {
        self.addresses.iter().map(move |a| {
            a.parse::<IpNetwork>().map_err(|e| {
                format!(
                    "announce.pools[{}].addresses: {a:?} is not an address or network: {e}",
                    self.name
                )
            })
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.networks().flatten().any(|n| n.contains(ip))
    }
}

/// The BGP path attributes an address is advertised with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BgpAttributes {
    pub communities: Vec<u32>,
    pub local_preference: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BgpConfig {
    /// This node's AS number.
    pub local_asn: u32,
    /// Unset: the session's local IPv4 address.
    pub router_id: Option<Ipv4Addr>,
    /// Proposed hold time (the session uses the smaller of both sides');
    /// keepalives every third of it. 0 turns both off; else at least 3.
    pub hold_time_seconds: u16,
    /// Standard communities, `ASN:VALUE`, on every advertised route.
    pub communities: Vec<String>,
    /// LOCAL_PREF sent to internal peers (same AS); default 100.
    pub local_preference: Option<u32>,
    pub peers: Vec<BgpPeerConfig>,
}

impl Default for BgpConfig {
    fn default() -> Self {
        BgpConfig {
            local_asn: 0,
            router_id: None,
            hold_time_seconds: 90,
            communities: Vec::new(),
            local_preference: None,
            peers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpPeerConfig {
    pub address: IpAddr,
    pub asn: u32,
    #[serde(default = "bgp_port")]
    pub port: u16,
    /// The local address sessions come from (and the next hop routers
    /// get); unset: chosen by the kernel's route to the peer.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// TTL of the session's packets, for a peer more than one hop away.
    #[serde(default)]
    pub ebgp_multihop: Option<u8>,
    /// TCP-MD5 signatures (RFC 2385) with this key, as the router's BGP
    /// password; 1 to 80 bytes.
    #[serde(default)]
    pub password: Option<String>,
}

fn bgp_port() -> u16 {
    179
}

/// `ASN:VALUE` (each 0-65535) as the 32-bit community.
pub fn parse_community(text: &str) -> Result<u32, String> {
    let bad = || format!("announce.bgp.communities: {text:?} is not ASN:VALUE (each 0-65535)");
    let (asn, value) = text.split_once(':').ok_or_else(bad)?;
    let asn: u16 = asn.trim().parse().map_err(|_| bad())?;
    let value: u16 = value.trim().parse().map_err(|_| bad())?;
    Ok((u32::from(asn) << 16) | u32::from(value))
}

impl BgpConfig {
    fn validate(&self, out: &mut Vec<String>) {
        if self.local_asn == 0 || self.local_asn == 23456 {
            out.push(format!(
                "announce.bgp.local_asn: {} is not a usable AS number (1-4294967295, not 23456)",
                self.local_asn
            ));
        }
        if self.peers.is_empty() {
            out.push("announce.bgp.peers: mode \"bgp\" needs at least one peer".into());
        }
        if self.hold_time_seconds != 0 && self.hold_time_seconds < 3 {
            out.push("announce.bgp.hold_time_seconds: 0 or at least 3 (RFC 4271)".into());
        }
        for c in &self.communities {
            if let Err(e) = parse_community(c) {
                out.push(e);
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            let at = format!("announce.bgp.peers[{i}] ({})", p.address);
            if p.asn == 0 || p.asn == 23456 {
                out.push(format!("{at}: asn {} is not a usable AS number", p.asn));
            }
            if p.address.is_unspecified() || p.address.is_multicast() {
                out.push(format!("{at}: not a peer address"));
            }
            if p.password
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > 80)
            {
                out.push(format!("{at}: password (TCP-MD5) must be 1 to 80 bytes"));
            }
            if p.ebgp_multihop == Some(0) {
                out.push(format!("{at}: ebgp_multihop must be at least 1"));
            }
            if let Some(src) = p.source_address {
                if src.is_ipv4() != p.address.is_ipv4() {
                    out.push(format!(
                        "{at}: source_address {src} is not of the peer's address family"
                    ));
                }
            }
            if p.address.is_ipv6() && self.router_id.is_none() {
                out.push(format!(
                    "{at}: a session over IPv6 needs announce.bgp.router_id"
                ));
            }
        }
    }
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            mode: AnnounceMode::Off,
            pools: Vec::new(),
            addresses: Vec::new(),
            service_addresses: true,
            interfaces: Vec::new(),
            garp_interval_seconds: 60,
            lease_duration_seconds: 1,
            bgp: BgpConfig::default(),
        }
    }
}

impl AnnounceConfig {
    /// The pool `ip` is in, if any.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.contains(ip))
    }

    /// How `ip` is announced: its pool's mode, else `mode`.
    pub fn mode_of(&self, ip: IpAddr) -> AnnounceMode {
        self.pool_of(ip).map_or(self.mode, |p| p.mode)
    }

    /// Whether any address may be announced in `mode`.
    pub fn uses(&self, mode: AnnounceMode) -> bool {
        self.mode == mode || self.pools.iter().any(|p| p.mode == mode)
    }

    /// Whether anything is announced at all.
    pub fn active(&self) -> bool {
        self.uses(AnnounceMode::L2) || self.uses(AnnounceMode::Bgp)
    }

    /// The communities and local preference `ip` is advertised with: its
    /// pool's where it sets them, else `announce.bgp`'s. Communities were
    /// checked by `validate`; one that does not parse is left out.
    pub fn bgp_attributes(&self, ip: IpAddr) -> BgpAttributes {
        let pool = self.pool_of(ip);
        let communities = pool
            .and_then(|p| p.communities.as_ref())
            .unwrap_or(&self.bgp.communities)
            .iter()
            .filter_map(|c| parse_community(c).ok())
            .collect();
        BgpAttributes {
            communities,
            local_preference: pool
                .and_then(|p| p.local_preference)
                .or(self.bgp.local_preference),
        }
    }

    /// Problems with the section, each naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for p in &self.pools {
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                out.push(format!(
                    "announce.pools: name {:?} is empty or used twice",
                    p.name
                ));
            }
            if p.addresses.is_empty() {
                out.push(format!("announce.pools[{}].addresses: empty", p.name));
            }
            out.extend(p.networks().filter_map(Result::err));
            for c in p.communities.iter().flatten() {
                if let Err(e) = parse_community(c) {
                    out.push(format!("announce.pools[{}]: {e}", p.name));
                }
            }
        }
        if self.uses(AnnounceMode::Bgp) {
            if self.addresses.is_empty() && !self.service_addresses && self.pools.is_empty() {
                out.push(
                    "announce.addresses: mode \"bgp\" with service_addresses = false announces nothing without addresses".into(),
                );
            }
            // Each family goes over sessions of its own family.
            for a in self
                .addresses
                .iter()
                .filter(|a| self.mode_of(**a) == AnnounceMode::Bgp)
            {
                if !self
                    .bgp
                    .peers
                    .iter()
                    .any(|p| p.address.is_ipv4() == a.is_ipv4())
                {
                    let family = if a.is_ipv4() { "IPv4" } else { "IPv6" };
                    out.push(format!(
                        "announce.addresses: {a} is {family}, but no peer in announce.bgp.peers has an {family} address to advertise it to"
                    ));
                }
            }
            self.bgp.validate(&mut out);
        }
        if self.uses(AnnounceMode::L2) {
            if self.lease_duration_seconds == 0 {
                out.push("announce.lease_duration_seconds: at least 1".into());
            }
            if self.addresses.is_empty() && !self.service_addresses && self.pools.is_empty() {
                out.push(
                    "announce.addresses: mode \"l2\" with service_addresses = false announces nothing without addresses".into(),
                );
            }
            for a in self
                .addresses
                .iter()
                .filter(|a| self.mode_of(**a) == AnnounceMode::L2)
            {
                let link_local = match a {
                    IpAddr::V4(v4) => v4.is_link_local(),
                    IpAddr::V6(v6) => v6.is_unicast_link_local(),
                };
                if a.is_loopback() || a.is_unspecified() || a.is_multicast() || link_local {
                    out.push(format!("announce.addresses: {a} cannot be announced"));
                }
            }
            if self.garp_interval_seconds == 0 {
                out.push("announce.garp_interval_seconds: must be at least 1".into());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_decide_mode_and_bgp_attributes() {
        let c: AnnounceConfig = toml_like(
            r#"{"mode": "l2",
                "bgp": {"local_asn": 64512, "communities": ["64512:1"],
                        "peers": [{"address": "10.0.0.254", "asn": 64501}]},
                "pools": [
                  {"name": "public", "addresses": ["192.0.2.0/28"], "mode": "bgp",
                   "communities": ["64512:200"], "local_preference": 200},
                  {"name": "quiet", "addresses": ["198.51.100.7"], "mode": "off", "gateways": true}]}"#,
        );
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        // Closed to Gateways unless a pool says otherwise.
        assert!(!c.pools[0].gateways && c.pools[1].gateways);
        assert_eq!(
            c.pools[1].valid_networks(),
            ["198.51.100.7/32".parse::<IpNetwork>().unwrap()]
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(c.mode_of(ip("192.0.2.5")), AnnounceMode::Bgp);
        assert_eq!(
            c.mode_of(ip("192.0.2.16")),
            AnnounceMode::L2,
            "outside the /28"
        );
        assert_eq!(c.mode_of(ip("198.51.100.7")), AnnounceMode::Off);
        assert!(c.uses(AnnounceMode::Bgp) && c.uses(AnnounceMode::L2));
        assert_eq!(
            c.bgp_attributes(ip("192.0.2.5")),
            BgpAttributes {
                communities: vec![(64512 << 16) | 200],
                local_preference: Some(200)
            }
        );
        assert_eq!(
            c.bgp_attributes(ip("10.1.1.1")).communities,
            vec![(64512 << 16) | 1]
        );

        let bad: AnnounceConfig = toml_like(
            r#"{"mode": "off", "pools": [
                 {"name": "a", "addresses": ["192.0.2.0/33"], "mode": "l2", "communities": ["x"]},
                 {"name": "a", "addresses": [], "mode": "off"}]}"#,
        );
        let problems = bad.validate();
        for want in [
            "192.0.2.0/33",
            "\"x\"",
            "used twice",
            "announce.pools[a].addresses: empty",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{want}: {problems:?}"
            );
        }
    }

    fn toml_like(json: &str) -> AnnounceConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn l2_needs_announceable_addresses() {
        let mut c = AnnounceConfig {
            mode: AnnounceMode::L2,
            ..AnnounceConfig::default()
        };
        // The LoadBalancer Services' own addresses are announced: nothing
        // listed is fine, unless those are turned off too.
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        c.service_addresses = false;
        assert_eq!(c.validate().len(), 1, "{:?}", c.validate());
        c.addresses = vec!["192.0.2.10".parse().unwrap()];
        assert!(c.validate().is_empty());
        c.addresses.push("2001:db8::1".parse().unwrap());
        assert!(c.validate().is_empty(), "IPv6 (NDP): {:?}", c.validate());
        c.addresses.push("127.0.0.1".parse().unwrap());
        c.addresses.push("fe80::1".parse().unwrap());
        let problems = c.validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("fe80::1 cannot")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("127.0.0.1 cannot")),
            "{problems:?}"
        );
        // Off: nothing to check.
        c.mode = AnnounceMode::Off;
        assert!(c.validate().is_empty());
    }
}
