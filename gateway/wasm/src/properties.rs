//! Stream properties a plugin reads with `proxy_get_property`.
//!
//! Names and encodings follow Envoy's attributes where Envoy has one
//! (strings as bytes, integers as 8-byte little-endian, booleans as one
//! byte, maps in the header-map encoding), so plugins written for Envoy
//! read the same values here. Portico's own names start with `portico.`.

use std::net::SocketAddr;

/// `proxy_map_type_t` of the request headers: `request.headers` reads it,
/// so it reflects what earlier plugins changed.
pub const REQUEST_HEADERS: i32 = 0;

/// What the data plane knows about one stream (HTTP request or TCP
/// connection), captured once when the stream starts.
#[derive(Debug, Default, Clone)]
pub struct StreamProps {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// HTTP only.
    pub request: Option<RequestProps>,
    /// SNI the client sent, if TLS.
    pub sni: Option<String>,
    pub tls: bool,
    /// Where the stream goes: `portico.route`, `portico.service` and
    /// `portico.namespace` are read from it when asked for.
    pub route: Option<RouteProps>,
    /// Set once the response headers are known.
    pub response_code: Option<u16>,
    /// The endpoints the chosen backend offers (`proxy_get_upstream_hosts`).
    pub candidates: Option<Candidates>,
    /// The Ingress's annotations (HTTP).
    pub annotations: Option<std::sync::Arc<portico_model::routing::Annotations>>,
    /// The endpoint the stream went to, once connected.
    pub upstream: Option<SocketAddr>,
}

/// A backend's endpoints, for the upstream-choice host calls.
#[derive(Clone)]
pub struct Candidates(pub std::sync::Arc<portico_model::lb::Pool>);

impl std::fmt::Debug for Candidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Candidates({})", self.0.key())
    }
}

impl Candidates {
    /// `(address, state)` pairs: state is `ready`, `serving` (terminating
    /// but still serving) or `cooling-down` (failed recently). The
    /// addresses' text is the pool's, made once per snapshot.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &'static str)> + '_ {
        let pool = &self.0;
        let cooling_down = pool.cooling_down_now();
        pool.endpoints()
            .iter()
            .zip(pool.address_texts())
            .enumerate()
            .map(move |(i, (e, text))| {
                let state = if cooling_down(i) {
                    "cooling-down"
                } else if e.spec.state == portico_model::snapshot::EndpointState::Ready {
                    "ready"
                } else {
                    "serving"
                };
                (&**text, state)
            })
    }

    /// [`Candidates::pairs`] in the proxy-wasm map encoding.
    pub fn encoded(&self) -> Vec<u8> {
        // Collected first: the encoder walks the pairs three times, and
        // each walk would read every endpoint's health again.
        let pairs: Vec<(&str, &str)> = self.pairs().collect();
        super::headers::serialize(pairs.iter().map(|(a, s)| (a.as_bytes(), s.as_bytes())))
    }

    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.0.endpoints().iter().any(|e| e.spec.addr == addr)
    }
}

/// What a stream is routed to. Held by reference (no strings are built
/// per request): most plugins never ask.
#[derive(Debug, Clone)]
pub enum RouteProps {
    /// An Ingress route; `canary`: the request goes to its canary's
    /// backend.
    Ingress {
        route: std::sync::Arc<portico_model::routing::Route>,
        canary: bool,
    },
    /// A Service's L4 listener.
    Service(portico_model::snapshot::BackendKey),
}

impl RouteProps {
    /// `namespace/name` of the Ingress (HTTP) or Service (TCP).
    fn name(&self) -> String {
        match self {
            RouteProps::Ingress { route, .. } => route.ingress.clone(),
            RouteProps::Service(b) => format!("{}/{}", b.namespace, b.service),
        }
    }

    /// `namespace/name:port` of the backend used.
    fn service(&self) -> String {
        match self {
            RouteProps::Ingress { route, canary } => match (&route.canary, canary) {
                (Some(c), true) => c.backend.to_string(),
                _ => route.backend.to_string(),
            },
            RouteProps::Service(b) => b.to_string(),
        }
    }

    fn namespace(&self) -> &str {
        match self {
            RouteProps::Ingress { route, .. } => {
                route.ingress.split('/').next().unwrap_or_default()
            }
            RouteProps::Service(b) => &b.namespace,
        }
    }

    /// Whether this is already `route` (same route, same choice).
    pub fn is(&self, route: &std::sync::Arc<portico_model::routing::Route>, canary: bool) -> bool {
        matches!(self, RouteProps::Ingress { route: r, canary: c }
            if std::sync::Arc::ptr_eq(r, route) && *c == canary)
    }
}

#[derive(Debug, Default, Clone)]
pub struct RequestProps {
    /// The request as it arrived (shared, not copied).
    pub uri: http::Uri,
    pub host: String,
    pub method: http::Method,
    pub scheme: &'static str,
    pub protocol: &'static str,
    pub id: String,
}

impl RequestProps {
    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

impl StreamProps {
    /// The value of a dotted property path, if this stream has it.
    pub fn get(
        &self,
        path: &str,
        request_headers: Option<&super::headers::HeaderSlot>,
    ) -> Option<Vec<u8>> {
        let req = self.request.as_ref();
        let s = |v: &str| Some(v.as_bytes().to_vec());
        match path {
            "source.address" => self.source.map(|a| a.to_string().into_bytes()),
            "source.port" => self.source.map(|a| int(a.port().into())),
            "destination.address" => self.destination.map(|a| a.to_string().into_bytes()),
            "destination.port" => self.destination.map(|a| int(a.port().into())),
            "request.path" => req.and_then(|r| s(r.path())),
            "request.url_path" => req.and_then(|r| s(r.uri.path())),
            "request.query" => req.and_then(|r| s(r.uri.query().unwrap_or(""))),
            "request.host" => req.and_then(|r| s(&r.host)),
            "request.method" => req.and_then(|r| s(r.method.as_str())),
            "request.scheme" => req.and_then(|r| s(r.scheme)),
            "request.protocol" => req.and_then(|r| s(r.protocol)),
            "request.id" => req.and_then(|r| s(&r.id)),
            "request.headers" => request_headers.map(|h| h.serialize()),
            "response.code" => self.response_code.map(|c| int(c.into())),
            "connection.requested_server_name" => self.sni.as_deref().and_then(s),
            "connection.tls_version" | "connection.mtls" if !self.tls => None,
            "connection.mtls" => Some(vec![0]),
            "upstream.address" => self.upstream.map(|a| a.to_string().into_bytes()),
            "portico.service.session_affinity" => self.candidates.as_ref().map(|c| {
                let kind = if c.0.affinity().is_some() {
                    "ClientIP"
                } else {
                    "None"
                };
                kind.as_bytes().to_vec()
            }),
            "portico.service.session_affinity_timeout" => self
                .candidates
                .as_ref()
                .and_then(|c| c.0.affinity())
                .map(|a| int(a.timeout.as_secs() as i64)),
            "portico.ingress.annotations" => self.annotations.as_ref().map(|a| {
                a.encoded_with(|m| {
                    super::headers::serialize(m.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
                })
                .to_vec()
            }),
            "portico.route" => self.route.as_ref().map(|r| r.name().into_bytes()),
            "portico.service" => self.route.as_ref().map(|r| r.service().into_bytes()),
            "portico.namespace" => self.route.as_ref().and_then(|r| s(r.namespace())),
            _ => path
                .strip_prefix("portico.ingress.annotations.")
                .and_then(|key| self.annotations.as_ref()?.get(key))
                .map(|v| v.as_bytes().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::serialize_map;

    #[test]
    fn envoy_names_and_encodings() {
        let p = StreamProps {
            source: Some("10.0.0.7:41000".parse().unwrap()),
            destination: Some("127.0.0.1:8080".parse().unwrap()),
            request: Some(RequestProps {
                uri: "/a/b?x=1".parse().unwrap(),
                host: "shop.example.com".into(),
                method: http::Method::POST,
                scheme: "https",
                protocol: "HTTP/1.1",
                id: "abc".into(),
            }),
            sni: Some("shop.example.com".into()),
            tls: true,
            route: Some(RouteProps::Service(portico_model::snapshot::BackendKey {
                namespace: "shop".into(),
                service: "web".into(),
                port: "80".into(),
            })),
            response_code: Some(404),
            candidates: None,
            annotations: Some(std::sync::Arc::new(
                std::collections::BTreeMap::from([(
                    "nginx.ingress.kubernetes.io/affinity".to_string(),
                    "cookie".to_string(),
                )])
                .into(),
            )),
            upstream: Some("10.1.2.3:8080".parse().unwrap()),
        };
        let get = |n: &str| p.get(n, None);
        assert_eq!(get("source.address").unwrap(), b"10.0.0.7:41000");
        assert_eq!(get("source.port").unwrap(), 41000i64.to_le_bytes());
        assert_eq!(get("request.url_path").unwrap(), b"/a/b");
        assert_eq!(get("request.query").unwrap(), b"x=1");
        assert_eq!(get("request.method").unwrap(), b"POST");
        assert_eq!(get("response.code").unwrap(), 404i64.to_le_bytes());
        assert_eq!(
            get("connection.requested_server_name").unwrap(),
            b"shop.example.com"
        );
        assert_eq!(get("portico.namespace").unwrap(), b"shop");
        assert_eq!(get("portico.route").unwrap(), b"shop/web");
        assert_eq!(get("portico.service").unwrap(), b"shop/web:80");
        assert_eq!(get("request.path").unwrap(), b"/a/b?x=1");
        assert_eq!(get("request.headers"), None);
        assert_eq!(get("nope"), None);
        assert_eq!(
            get("portico.ingress.annotations.nginx.ingress.kubernetes.io/affinity").unwrap(),
            b"cookie"
        );
        assert_eq!(get("portico.ingress.annotations.other"), None);
        assert_eq!(get("upstream.address").unwrap(), b"10.1.2.3:8080");
        let h = vec![("a".to_string(), b"1".to_vec())];
        let slot = crate::headers::HeaderSlot::Pairs(h.clone());
        assert_eq!(
            p.get("request.headers", Some(&slot)).unwrap(),
            serialize_map(&h)
        );
    }
}
