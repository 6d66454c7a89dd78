//! TLS routing by server name: which backend a connection goes to by the
//! SNI of its ClientHello (Gateway API TLSRoute on a `TLS` listener). In
//! `Passthrough` mode the TLS itself is left to the backend; in
//! `Terminate` mode the listener's certificates end it and the backend
//! gets the plain stream.
//!
//! Precedence is the Gateway API's: an exact name before any wildcard, a
//! wildcard with more labels before one with fewer, and among equals the
//! route added first (translation adds the oldest route first).

use std::sync::Arc;

use serde::Serialize;

use crate::certs::CertStore;
use crate::snapshot::BackendKey;

/// One hostname of a route on a TLS listener.
#[derive(Debug, Clone, Serialize)]
pub struct SniRoute {
    /// Lowercase; an exact name or `*.suffix`, where `*` stands for one
    /// or more labels.
    pub hostname: String,
    /// `None`: the route's backend does not resolve, so its connections
    /// are refused (closed without a TLS alert), as the spec asks.
    pub backend: Option<BackendKey>,
    /// Several backends by weight (`backend` is then the first valid).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<crate::route_rule::WeightedBackend>,
    /// The route, `namespace/name`, for logs and `explain`.
    pub route: String,
    /// `Terminate` mode: the TLS of the listener this hostname came
    /// through (listeners sharing a port each keep their own).
    #[serde(skip)]
    pub certs: Option<Arc<Termination>>,
}

/// A `Terminate` listener's certificates, and the rustls server
/// configuration over them, built once per snapshot rather than per
/// connection.
#[derive(Debug)]
pub struct Termination {
    pub certs: Arc<CertStore>,
    pub config: Arc<rustls::ServerConfig>,
}

impl Termination {
    pub fn new(certs: CertStore) -> Result<Self, String> {
        let certs = Arc::new(certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ListenerCerts(certs.clone())));
        Ok(Termination {
            certs,
            config: Arc::new(config),
        })
    }
}

/// The certificate for a handshake: the listener's for the SNI, else the
/// one it has for any name; none (the handshake fails) otherwise.
#[derive(Debug)]
struct ListenerCerts(Arc<CertStore>);

impl rustls::server::ResolvesServerCert for ListenerCerts {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0
            .find(hello.server_name().unwrap_or(""))
            .map(|c| c.key.clone())
    }
}

/// A TLS listener's routes, most specific first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SniRoutes {
    routes: Vec<SniRoute>,
    /// The first `Terminate` listener's TLS on this port, if any (for
    /// display: each route carries its own listener's in
    /// `SniRoute::certs`, and a route without is passed through, so both
    /// modes share a port).
    #[serde(skip)]
    pub terminate: Option<Arc<Termination>>,
}

impl SniRoutes {
    /// Adds a route's hostname after every route at least as specific.
    /// Returns false, leaving the table as it was, when an earlier route
    /// already has this exact hostname (it keeps it).
    pub fn insert(&mut self, route: SniRoute) -> bool {
        let mut route = route;
        route.hostname.make_ascii_lowercase();
        if self.routes.iter().any(|r| r.hostname == route.hostname) {
            return false;
        }
        let rank = specificity(&route.hostname);
        let at = self
            .routes
            .iter()
            .position(|r| specificity(&r.hostname) < rank)
            .unwrap_or(self.routes.len());
        self.routes.insert(at, route);
        true
    }

    /// The route a ClientHello naming `sni` takes; a connection without
    /// SNI takes none (every TLSRoute has hostnames).
    pub fn find(&self, sni: Option<&str>) -> Option<&SniRoute> {
        let sni = sni?.trim_end_matches('.');
        self.routes.iter().find(|r| matches(&r.hostname, sni))
    }

    /// The route that holds `hostname` exactly.
    pub fn holder(&self, hostname: &str) -> Option<&SniRoute> {
        self.routes
            .iter()
            .find(|r| r.hostname.eq_ignore_ascii_case(hostname))
    }

    pub fn routes(&self) -> &[SniRoute] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Exact names rank above every wildcard; wildcards by their number of
/// labels after `*`.
fn specificity(hostname: &str) -> (bool, usize) {
    match hostname.strip_prefix("*.") {
        Some(suffix) => (false, suffix.split('.').count()),
        None => (true, hostname.split('.').count()),
    }
}

/// Whether `name` is `pattern`: equal ignoring case, or for `*.suffix`,
/// one or more labels then `.suffix`.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && !name.starts_with('.')
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hostname: &str, service: &str) -> SniRoute {
        SniRoute {
            hostname: hostname.into(),
            backend: Some(BackendKey {
                namespace: "ns".into(),
                service: service.into(),
                port: "443".into(),
            }),
            split: Vec::new(),
            route: format!("ns/{service}"),
            certs: None,
        }
    }

    fn to(table: &SniRoutes, sni: &str) -> Option<String> {
        table
            .find(Some(sni))
            .map(|r| r.backend.as_ref().unwrap().service.clone())
    }

    #[test]
    fn exact_names_win_over_wildcards_and_longer_wildcards_over_shorter() {
        let mut t = SniRoutes::default();
        // Added least specific first: the order added must not matter.
        assert!(t.insert(route("*.com", "com")));
        assert!(t.insert(route("*.example.com", "wild")));
        assert!(t.insert(route("ABC.example.com", "abc")));
        assert_eq!(to(&t, "abc.example.com").as_deref(), Some("abc"));
        assert_eq!(to(&t, "Abc.Example.Com.").as_deref(), Some("abc"));
        assert_eq!(to(&t, "other.example.com").as_deref(), Some("wild"));
        // `*` covers several labels, as the Gateway API says.
        assert_eq!(to(&t, "a.b.example.com").as_deref(), Some("wild"));
        assert_eq!(to(&t, "non.matching.com").as_deref(), Some("com"));
        assert_eq!(to(&t, "example.org"), None);
        // The wildcard needs at least one label of its own.
        assert_eq!(to(&t, "com"), None);
        assert_eq!(to(&t, ".com"), None);
        let order: Vec<&str> = t.routes().iter().map(|r| r.hostname.as_str()).collect();
        assert_eq!(order, ["abc.example.com", "*.example.com", "*.com"]);
    }

    #[test]
    fn the_first_route_keeps_a_hostname_and_no_sni_matches_nothing() {
        let mut t = SniRoutes::default();
        assert!(t.insert(route("a.example.com", "old")));
        assert!(!t.insert(route("A.example.com", "new")));
        assert_eq!(to(&t, "a.example.com").as_deref(), Some("old"));
        assert_eq!(t.holder("a.example.com").unwrap().route, "ns/old");
        assert!(t.find(None).is_none());
        // Equal specificity keeps the order added.
        assert!(t.insert(route("*.x.example.com", "first")));
        assert!(t.insert(route("*.y.example.com", "second")));
        let order: Vec<&str> = t.routes().iter().map(|r| r.route.as_str()).collect();
        assert_eq!(order, ["ns/old", "ns/first", "ns/second"]);
    }
}
