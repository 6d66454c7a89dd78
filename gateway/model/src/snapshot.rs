//! The snapshot: everything the data plane needs, immutable once built.
//!
//! Translation builds a `Snapshot`; `publish::Publisher` swaps it in
//! atomically. Requests and connections load the current one when they
//! start and keep it to the end, so a swap never changes a request midway.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::certs::CertStore;
use crate::lb::{PolicyKind, Pool};
use crate::problems::Problem;
use crate::routing::RouteTable;

/// The object an announced address is served for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum AddressOwner {
    /// A LoadBalancer Service's own address.
    Service(crate::store::ObjectKey),
    /// A Gateway's `spec.addresses` entry from an announce pool that
    /// allows Gateways.
    Gateway(crate::store::ObjectKey),
}

impl AddressOwner {
    pub fn key(&self) -> &crate::store::ObjectKey {
        match self {
            AddressOwner::Service(k) | AddressOwner::Gateway(k) => k,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AddressOwner::Service(_) => "Service",
            AddressOwner::Gateway(_) => "Gateway",
        }
    }
}

impl fmt::Display for AddressOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.key())
    }
}

/// A Service port as an upstream: `namespace/name:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendKey {
    pub namespace: String,
    pub service: String,
    /// The Service port's name, or its number when it has no name.
    pub port: String,
}

impl BackendKey {
    /// The key a displayed name (`ns/svc:port`) stands for, as plugins
    /// and `[plugins] clusters` write backends.
    pub fn parse(name: &str) -> Option<BackendKey> {
        let (namespace, rest) = name.split_once('/')?;
        let (service, port) = rest.rsplit_once(':')?;
        Some(BackendKey {
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: port.to_string(),
        })
    }

    /// Whether `name` is this key as displayed (`ns/svc:port`), without
    /// building the string (checked on the request path).
    pub fn is_named(&self, name: &str) -> bool {
        name.strip_prefix(self.namespace.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.strip_prefix(self.service.as_str()))
            .and_then(|r| r.strip_prefix(':'))
            == Some(self.port.as_str())
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

/// Lifecycle of an endpoint, from EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// `ready`: takes new traffic.
    Ready,
    /// `serving && terminating`: used only when no endpoint is ready.
    ServingTerminating,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub state: EndpointState,
    /// `targetRef` name (usually the pod), for explain and logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `sessionAffinity: ClientIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClientIpAffinity {
    #[serde(with = "secs")]
    pub timeout: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// What translation says about an upstream; runtime state is added at publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendSpec {
    pub key: BackendKey,
    pub endpoints: Vec<EndpointSpec>,
    pub policy: PolicyKind,
    pub affinity: Option<ClientIpAffinity>,
    /// Plugins the Service asks for (`portico.io/plugins`), in order.
    pub plugins: Vec<String>,
    /// Scoped listener plugins (`applies_to`) whose scope the Service
    /// matches: HTTP ones for routes to it, TCP ones for its L4 listeners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scoped_http: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scoped_tcp: Vec<String>,
    /// L4 connections to the endpoints start with a PROXY protocol header
    /// carrying the client's address (`portico.io/proxy-protocol`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// The PROXY protocol version sent to a Service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

impl ProxyProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v1" => Some(ProxyProtocol::V1),
            "v2" => Some(ProxyProtocol::V2),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Protocol {
    Tcp,
    Udp,
    /// TCP whose connections go to a backend by the SNI of their
    /// ClientHello (TLS passthrough); the routes are in `sni`.
    Tls,
}

impl fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
            L4Protocol::Tls => "tls",
        })
    }
}

/// Identity of an L4 listener: protocol and bind address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct L4ListenerKey {
    pub protocol: L4Protocol,
    pub addr: SocketAddr,
}

impl fmt::Display for L4ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol, self.addr)
    }
}

/// An Ingress the admission left out, and the reason it gave: shown by
/// `check`, `explain` and `/config`, and counted, so an Ingress is never
/// silently not served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct IgnoredIngress {
    /// `namespace/name`.
    pub ingress: String,
    /// Where it came from (file and object), for `check`.
    pub location: String,
    pub reason: String,
    /// The hosts its rules name; `*` for a rule without a host or a
    /// `defaultBackend`.
    pub hosts: Vec<String>,
}

impl IgnoredIngress {
    /// Whether a request for `host` would have reached one of its rules.
    pub fn names_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| {
            h == "*"
                || h.eq_ignore_ascii_case(host)
                || h.strip_prefix("*.").is_some_and(|suffix| {
                    host.len() > suffix.len() + 1
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                        && !host[..host.len() - suffix.len() - 1].contains('.')
                })
        })
    }
}

/// Translation output before runtime state is attached: pure data, easy to
/// compare in tests.
#[derive(Debug, Clone, Default)]
pub struct SnapshotSpec {
    pub routes: RouteTable,
    pub backends: BTreeMap<BackendKey, BackendSpec>,
    /// L4 listener → the backend it forwards to.
    pub l4: BTreeMap<L4ListenerKey, BackendKey>,
    /// TLS passthrough listeners (protocol `Tls`) → their routes by SNI.
    pub sni: BTreeMap<L4ListenerKey, crate::sni::SniRoutes>,
    /// TCP and UDP listeners whose route splits connections between
    /// backends by weight (`l4` then names the first valid one).
    pub l4_split: BTreeMap<L4ListenerKey, Vec<crate::route_rule::WeightedBackend>>,
    pub certs: CertStore,
    /// Every problem, sorted.
    pub problems: Vec<Problem>,
    /// The subset of `problems` found while building each Service's
    /// backends, so an endpoint-only refresh can replace just those.
    pub backend_problems: BTreeMap<crate::store::ObjectKey, Vec<Problem>>,
    /// How many Ingresses the admission took.
    pub admitted_ingresses: usize,
    /// The Ingresses it left out, sorted.
    pub ignored_ingresses: Vec<IgnoredIngress>,
    /// The TLS Secrets the admitted Ingresses name, found or not: what a
    /// source that reads Secrets by name must fetch.
    pub referenced_secrets: std::collections::BTreeSet<crate::store::ObjectKey>,
    /// LoadBalancer Services' own addresses (status, else
    /// `spec.loadBalancerIP`; not the node addresses they fall back to),
    /// unless the Service opts out of announcement, and the addresses
    /// Gateways were given from announce pools (`spec.addresses`): what
    /// bare-metal announcement makes reachable.
    pub load_balancer_addresses: BTreeMap<std::net::IpAddr, AddressOwner>,
    /// What the Gateway API objects' status should say.
    pub gateway_api: crate::gateway_status::GatewayApiStatus,
}

/// The published, immutable view the data plane reads.
pub struct Snapshot {
    pub generation: u64,
    pub routes: RouteTable,
    pub pools: BTreeMap<BackendKey, Arc<Pool>>,
    pub l4: BTreeMap<L4ListenerKey, BackendKey>,
    pub sni: BTreeMap<L4ListenerKey, crate::sni::SniRoutes>,
    pub l4_split: BTreeMap<L4ListenerKey, Vec<crate::route_rule::WeightedBackend>>,
    pub certs: CertStore,
    pub problems: Vec<Problem>,
    pub admitted_ingresses: usize,
    pub ignored_ingresses: Vec<IgnoredIngress>,
    pub load_balancer_addresses: BTreeMap<std::net::IpAddr, AddressOwner>,
    pub gateway_api: crate::gateway_status::GatewayApiStatus,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot {
            generation: 0,
            routes: RouteTable::default(),
            pools: BTreeMap::new(),
            l4: BTreeMap::new(),
            sni: BTreeMap::new(),
            l4_split: BTreeMap::new(),
            certs: CertStore::default(),
            problems: Vec::new(),
            admitted_ingresses: 0,
            load_balancer_addresses: BTreeMap::new(),
            ignored_ingresses: Vec::new(),
            gateway_api: Default::default(),
        }
    }

    pub fn pool(&self, key: &BackendKey) -> Option<&Arc<Pool>> {
        self.pools.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::IgnoredIngress;

    #[test]
    fn an_ignored_ingress_names_its_hosts_wildcards_and_catch_alls() {
        let i = |hosts: &[&str]| IgnoredIngress {
            ingress: "ns/i".into(),
            location: String::new(),
            reason: String::new(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        let exact = i(&["shop.example.com"]);
        assert!(exact.names_host("shop.example.com"));
        assert!(exact.names_host("SHOP.example.com"));
        assert!(!exact.names_host("other.example.com"));
        let wild = i(&["*.example.com"]);
        assert!(wild.names_host("a.example.com"));
        assert!(!wild.names_host("example.com"));
        assert!(!wild.names_host("a.b.example.com"), "one label only");
        assert!(!wild.names_host("aexample.com"));
        assert!(i(&["*"]).names_host("anything.test"));
        assert!(!i(&[]).names_host("anything.test"));
    }

    use super::BackendKey;

    #[test]
    fn is_named_matches_exactly_the_displayed_name() {
        let k = BackendKey {
            namespace: "shop".into(),
            service: "web".into(),
            port: "http".into(),
        };
        assert!(k.is_named(&k.to_string()));
        for other in [
            "shop/web:https",
            "shop/web",
            "shop/we:http",
            "shopx/web:http",
            "",
        ] {
            assert!(!k.is_named(other), "{other}");
        }
    }
}
