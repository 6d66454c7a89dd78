//! The L7 proxy: Pingora `ProxyHttp` phases over the current snapshot.
//!
//! `request_filter` routes (or answers 404/431/503 itself), `upstream_peer`
//! picks an endpoint, `fail_to_connect` feeds passive health and retries on
//! another endpoint, `upstream_request_filter` adds forwarding headers,
//! `logging` records metrics and the access log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType, Result};

use super::client_addr;
use crate::config::ProxyConfig;
use crate::shutdown::InFlight;
use portico_model::lb::{Pick, PickRequest, Pool};
use portico_model::route_metrics::{code_class, CODE_CLASSES, LISTENERS};
use portico_model::route_rule::{
    HeaderEdits, RequestFacts, RequestParts, RuleAction, WeightedPick,
};
use portico_model::routing::Route;
use portico_model::snapshot::Snapshot;
use portico_wasm::headers::Lent;
use portico_wasm::host::LocalResponse;
use portico_wasm::http_filter::{self, Paused, StreamChain, Verdict};
use portico_wasm::properties::{RequestProps, RouteProps, StreamProps};
use portico_wasm::reload::RegistryHandle;

#[derive(Clone)]
pub struct HttpProxy {
    pub(super) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(super) plugins: RegistryHandle,
    pub(super) cfg: ProxyConfig,
    pub(super) access_log: bool,
    /// Per-client limits of routes (`rateLimit` policy); outlives snapshots.
    limiter: Arc<super::limits::Limiter>,
    /// Gateway API `RequestMirror` copies and their connection pool.
    mirrors: Arc<super::mirror::Mirrors>,
}

impl HttpProxy {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        plugins: RegistryHandle,
        cfg: ProxyConfig,
        access_log: bool,
    ) -> Self {
        let ms = Duration::from_millis;
        let mirrors = Arc::new(super::mirror::Mirrors::new(super::mirror::MirrorTimeouts {
            connect: ms(cfg.connect_timeout_ms),
            read: ms(cfg.read_timeout_ms),
            write: ms(cfg.write_timeout_ms),
            idle: ms(cfg.upstream_idle_timeout_ms),
        }));
        HttpProxy {
            snapshot,
            plugins,
            cfg,
            access_log,
            limiter: Arc::default(),
            mirrors,
        }
    }
}

/// The SNI a TLS client sent, recorded at the handshake (see
/// `SniRecorder`) so plugins can read `connection.requested_server_name`.
#[derive(Debug)]
pub struct Sni(pub String);

/// Keeps the SNI of each TLS connection in its digest.
pub struct SniRecorder;

#[async_trait]
impl pingora::listeners::TlsAccept for SniRecorder {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        tls.server_name()
            .map(|n| Arc::new(Sni(n.to_string())) as Arc<dyn std::any::Any + Send + Sync>)
    }
}

/// A client that closes its connection (or stops reading) mid-request:
/// not the gateway's error and nothing an operator can act on, yet
/// Pingora logs it at ERROR, many lines a second when a load balancer or
/// a load generator drops connections.
fn client_went_away(e: &Error) -> bool {
    *e.esource() == pingora::ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        )
}

/// The listener-wide request metrics, resolved once (per-route ones live
/// with the route).
pub(super) struct ListenerMetrics {
    pub(super) active: metrics::Gauge,
    pub(super) bytes_received: [metrics::Counter; 2],
    pub(super) bytes_sent: [metrics::Counter; 2],
    /// Requests the fast paths carried: HTTP/1.1, HTTP/2.
    pub(super) fast_path: [metrics::Counter; 2],
}

pub(super) fn listener_metrics() -> &'static ListenerMetrics {
    static M: std::sync::OnceLock<ListenerMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| ListenerMetrics {
        active: metrics::gauge!("portico_http_requests_active"),
        bytes_received: LISTENERS
            .map(|l| metrics::counter!("portico_http_bytes_received_total", "listener" => l)),
        bytes_sent: LISTENERS
            .map(|l| metrics::counter!("portico_http_bytes_sent_total", "listener" => l)),
        fast_path: ["HTTP/1.1", "HTTP/2"]
            .map(|p| metrics::counter!("portico_http_fast_path_requests_total", "protocol" => p)),
    })
}

/// How long a plugin may hold a paused request before it fails.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    in_flight: Option<InFlight>,
    route: Option<Arc<Route>>,
    pool: Option<Arc<Pool>>,
    tried: Vec<SocketAddr>,
    pick: Option<Pick>,
    /// A header value so the upstream request and the response share one
    /// allocation.
    request_id: http::HeaderValue,
    host: String,
    tls: bool,
    /// Set when the gateway answered itself (404, 503...).
    local_reason: Option<&'static str>,
    /// The request's plugin contexts, when any plugin applies.
    plugins: Option<StreamChain>,
    /// A plugin edited the request headers (so it is routed again).
    request_edited: bool,
    /// An answer decided in a phase that cannot write it (a request body
    /// or response plugin): written by `fail_to_proxy`, or replacing the
    /// upstream's body.
    plugin_response: Option<LocalResponse>,
    /// Replacing the upstream's response body: the body still to send.
    replace_body: Option<Bytes>,
    /// `Access-Control-Allow-Origin` to add to the response (route CORS
    /// policy, request from an allowed origin).
    cors_origin: Option<String>,
    /// The request's concurrency slot under a route's `rateLimit`.
    limit_slot: Option<super::limits::Slot>,
    /// The client's address: the peer's, or behind a trusted proxy the
    /// one it forwarded (`proxy::client_addr`). Allowlists, rate limits,
    /// affinity, plugins and logs all use this one.
    client: Option<IpAddr>,
    /// The peer is in `proxy.trusted_proxies`: its forwarding headers are
    /// kept and appended to rather than replaced.
    via_trusted_proxy: bool,
    /// Which of the rule's weighted backendRefs was drawn.
    drawn: Option<usize>,
    /// A Gateway API rule's `timeouts.request`: when the whole exchange
    /// must be over.
    deadline: Option<Instant>,
    /// The rule's mirrors were started (once, whatever the retries).
    mirrored: bool,
    /// Where the request's body goes on to its mirrors.
    mirror: Option<super::mirror::MirrorFeed>,
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Replaces the request's path by its normal form (the query kept as it
/// is), so routing, plugins and the upstream all see the same path.
fn normalize_request_path(
    session: &mut Session,
    rules: super::path::PathRules,
) -> std::result::Result<(), super::path::PathError> {
    let uri = &session.req_header().uri;
    let Some(normal) = super::path::normalize(uri.path(), rules)? else {
        return Ok(());
    };
    let target = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    // Only unreserved characters (and, if asked, slashes) are decoded, so
    // this cannot fail; if it did, refusing is safe, routing the raw path
    // is not.
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(target).map_err(|_| super::path::PathError::NotUri)?,
    );
    let normal = http::Uri::from_parts(parts).map_err(|_| super::path::PathError::NotUri)?;
    metrics::counter!("portico_http_paths_normalized_total").increment(1);
    session.req_header_mut().set_uri(normal);
    Ok(())
}

/// What the upstream request's forwarding headers are made from, besides
/// the request's context.
struct Hop<'a> {
    peer: Option<IpAddr>,
    server_port: Option<u16>,
    /// The route's `upstream-vhost`: the Host the upstream gets.
    vhost: Option<&'a str>,
}

/// Changes to the upstream request's headers: at most seven, held inline
/// so the request path allocates nothing for them.
struct ForwardedEdits {
    set: [Option<(http::HeaderName, http::HeaderValue)>; 7],
    len: usize,
    /// An untrusted peer's `Forwarded` header says nothing true.
    remove_forwarded: bool,
}

impl ForwardedEdits {
    fn push(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        self.set[self.len] = Some((name, value));
        self.len += 1;
    }

    fn take(&mut self) -> impl Iterator<Item = (http::HeaderName, http::HeaderValue)> + '_ {
        self.set.iter_mut().filter_map(Option::take)
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The headers Portico sets on every upstream request: the forwarding
/// chain, the request id, and Host where the upstream needs it. From a
/// trusted proxy the chain is appended to and its `X-Forwarded-Proto`,
/// `-Host` and `-Port` kept; from anyone else all of them are replaced,
/// so a client cannot make a backend believe another address, scheme or
/// host. Values are shared with the client's request where they can be.
fn forwarded_headers(
    headers: &http::HeaderMap,
    ctx: &RequestCtx,
    hop: &Hop<'_>,
) -> Result<ForwardedEdits> {
    use http::header::{HeaderName, HeaderValue, FORWARDED, HOST};
    const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
    const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

    let trusted = ctx.via_trusted_proxy;
    let mut set = ForwardedEdits {
        set: Default::default(),
        len: 0,
        remove_forwarded: !trusted && headers.contains_key(FORWARDED),
    };
    let peer = hop.peer.map(ip_header_value);
    // Formatted once when the client is the peer (no trusted proxy).
    let real_ip = match ctx.client {
        Some(c) if Some(c) == hop.peer => peer.clone(),
        c => c.map(ip_header_value),
    };
    let xff = if trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(p) = &peer {
            chain.push_str(", ");
            chain.push_str(p.to_str().unwrap_or_default());
        }
        HeaderValue::try_from(chain.trim_start_matches(", ").to_string())
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "x-forwarded-for"))?
    } else {
        peer.unwrap_or_else(|| HeaderValue::from_static(""))
    };
    set.push(X_FORWARDED_FOR, xff);
    let keep = |name: &HeaderName| trusted && headers.contains_key(name);
    if !keep(&X_FORWARDED_PROTO) {
        set.push(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
        );
    }
    if !keep(&X_FORWARDED_HOST) {
        // Usually the Host header itself: shared, not copied.
        let forwarded_host = match headers.get(HOST) {
            Some(h) if h.as_bytes() == ctx.host.as_bytes() => h.clone(),
            _ => HeaderValue::from_str(&ctx.host)
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "x-forwarded-host"))?,
        };
        set.push(X_FORWARDED_HOST, forwarded_host);
    }
    // ingress-nginx sends these too; backends migrating from it read them.
    if let (false, Some(port)) = (keep(&X_FORWARDED_PORT), hop.server_port) {
        set.push(X_FORWARDED_PORT, HeaderValue::from(port));
    }
    if let Some(ip) = real_ip {
        set.push(X_REAL_IP, ip);
    }
    set.push(X_REQUEST_ID, ctx.request_id.clone());
    if let Some(vhost) = hop.vhost {
        let v = HeaderValue::from_str(vhost)
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "upstream-vhost"))?;
        set.push(HOST, v);
    } else if headers.get(HOST).is_none() {
        // h2 requests carry the host in :authority; HTTP/1.1 upstreams need Host.
        let v = HeaderValue::from_str(&ctx.host)
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "host"))?;
        set.push(HOST, v);
    }
    Ok(set)
}

fn request_host(req: &RequestHeader) -> Option<String> {
    if let Some(h) = req.uri.authority() {
        return Some(h.as_str().to_string());
    }
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// What Pingora's parser lets through but a request must not carry to a
/// backend: two `Content-Length` lines (equal ones too: a backend that
/// reads the last while another hop reads the first is how requests are
/// smuggled; RFC 9110 §8.6 allows refusing them, as nginx does), and a
/// Host that is not a host (RFC 9112 §3.2: 400 for an invalid Host).
fn framing_or_host_problem(req: &RequestHeader, host: &str) -> Option<&'static str> {
    if req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .nth(1)
        .is_some()
    {
        return Some("more than one Content-Length header");
    }
    if !valid_host(host) {
        return Some("invalid Host header");
    }
    None
}

/// `name`, `name:port`, `[v6]` or `[v6]:port`, in the characters hosts
/// are made of (RFC 3986 §3.2.2 reg-name without percent-escapes).
pub(super) fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// The most header fields a request may carry: Pingora's HTTP/1.1 parser
/// refuses more (400), and HTTP/2 requests get the same limit rather than
/// none (431).
pub(super) const MAX_HEADER_FIELDS: usize = 256;

/// Several `cookie` fields joined into one with `"; "`: HTTP/2 clients
/// split cookies into fields of their own, and RFC 9113 §8.2.3 requires
/// them joined before they go to an HTTP/1.1 connection (where one
/// `Cookie` line is all a server expects, RFC 6265 §5.4). `None` when
/// there are fewer than two.
pub(super) fn joined_cookies(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let mut all = headers.get_all(http::header::COOKIE).iter();
    let first = all.next()?;
    let second = all.next()?;
    let mut joined = Vec::with_capacity(first.len() + second.len() + 2);
    joined.extend_from_slice(first.as_bytes());
    for v in std::iter::once(second).chain(all) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    // Joined valid values are a valid value.
    http::HeaderValue::from_bytes(&joined).ok()
}

/// A random 128-bit id in hex, for `X-Request-Id`. Written out by hand:
/// `format!` costs several times more per request.
fn new_request_id() -> http::HeaderValue {
    let mut hex = [0u8; 32];
    hex_into(fastrand::u128(..), &mut hex);
    http::HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}

pub(super) fn hex_into(mut n: u128, out: &mut [u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// The client address as a header value (`X-Real-IP`, `X-Forwarded-For`).
/// IPv4, nearly every client, is written without `fmt`, which costs more
/// than a microsecond of the request here.
fn ip_header_value(ip: IpAddr) -> http::HeaderValue {
    let mut buf = [0u8; 39];
    http::HeaderValue::from_bytes(super::h1_wire::ip_text(ip, &mut buf))
        .expect("an address is a valid value")
}

/// The most request body read, and for how long, before Portico answers
/// an HTTP/2 request itself (see `settle_h2_request_body`).
const H2_DRAIN_BYTES: usize = 64 << 10;
const H2_DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// On HTTP/2, a stream whose request body is still coming is reset
/// (CANCEL) when the request ends, and the h2 library drops what of our
/// answer is still queued with it: under load, a 404 or a redirect for a
/// gRPC call or a POST could be lost (curl: "Stream error in the HTTP/2
/// framing layer"). A small body is read first, bounded in bytes and
/// time; a larger or slower one is left to the reset.
async fn settle_h2_request_body(session: &mut Session) {
    // A client waiting for `100 Continue` sends nothing more: no wait.
    if !session.is_http2()
        || session.is_body_done()
        || session
            .req_header()
            .headers
            .contains_key(http::header::EXPECT)
    {
        return;
    }
    let drain = async {
        let mut read = 0usize;
        while read <= H2_DRAIN_BYTES {
            match session.read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(H2_DRAIN_TIME, drain).await;
}

async fn respond(session: &mut Session, status: u16, body: String) -> Result<()> {
    settle_h2_request_body(session).await;
    // A client that sent a malformed request may disagree with us about
    // where it ended: nothing more is read from that connection (as nginx
    // does after a 400).
    if status == 400 {
        session.set_keepalive(None);
    }
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("server", "portico")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The peer for one endpoint, speaking the route's backend protocol.
pub(super) fn upstream_peer_for(
    addr: std::net::SocketAddr,
    backend: &portico_model::snapshot::BackendKey,
    protocol: Option<portico_model::policy::BackendProtocol>,
    upstream_host: Option<&str>,
) -> HttpPeer {
    use pingora::protocols::ALPN;
    use portico_model::policy::BackendProtocol as P;
    let protocol = protocol.unwrap_or(P::Http);
    let tls = matches!(protocol, P::Https | P::Grpcs);
    // The SNI sent: the upstream vhost, else the Service's cluster name
    // (what an in-cluster certificate names). The certificate itself is
    // not verified: the endpoint is a pod IP.
    let sni = if tls {
        upstream_host
            .map(|h| h.split(':').next().unwrap_or(h).to_string())
            .unwrap_or_else(|| format!("{}.{}.svc", backend.service, backend.namespace))
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, tls, sni);
    let o = &mut peer.options;
    if tls {
        o.verify_cert = false;
        o.verify_hostname = false;
    }
    o.alpn = match protocol {
        P::Http | P::Https => ALPN::H1,
        // Plaintext with a minimum of HTTP/2: Pingora speaks h2c with
        // prior knowledge.
        P::Grpc | P::Grpcs => ALPN::H2,
    };
    peer
}

fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// What plugins can read about this request (`proxy_get_property`).
fn stream_props(session: &Session, ctx: &RequestCtx, host: &str) -> StreamProps {
    let req = session.req_header();
    let ssl = session.digest().and_then(|d| d.ssl_digest.as_ref());
    StreamProps {
        // The client's address (behind a trusted proxy, the forwarded
        // one) with the peer's port: what affinity and plugins key on.
        source: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| SocketAddr::new(ctx.client.unwrap_or(a.ip()), a.port())),
        destination: session.server_addr().and_then(|a| a.as_inet()).copied(),
        request: Some(RequestProps {
            uri: req.uri.clone(),
            host: host.to_string(),
            method: req.method.clone(),
            scheme: scheme(ctx.tls),
            protocol: match req.version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            id: ctx.request_id.to_str().unwrap_or_default().to_string(),
        }),
        sni: ssl
            .and_then(|d| d.extension.get::<Sni>())
            .map(|s| s.0.clone()),
        tls: ssl.is_some(),
        ..StreamProps::default()
    }
}

/// An endpoint of the backend named `namespace/service:port` (as
/// `/config` shows it), for plugin HTTP calls.
pub fn pick_backend(snap: &Snapshot, name: &str) -> Result<SocketAddr, String> {
    let key = portico_model::snapshot::BackendKey::parse(name).ok_or_else(|| {
        format!(
            "upstream {name:?} is not a backend name (namespace/service:port), a cluster in \
             [plugins.clusters], or outbound|PORT||SERVICE.NAMESPACE.svc.cluster.local"
        )
    })?;
    let pool = snap
        .pool(&key)
        .ok_or_else(|| {
            format!("upstream {name:?}: no such backend (callable are the Services an Ingress or L4 listener uses)")
        })?;
    pool.pick(&PickRequest {
        preferred: None,
        client_ip: None,
        exclude: &[],
    })
    .map(|p| p.addr)
    .ok_or_else(|| format!("upstream {name:?} has no available endpoint"))
}

/// The route's properties for plugins: `canary` says whether the request
/// goes to the canary's backend, whose `pool` then gives the candidates
/// of upstream choice. References only: nothing is formatted unless a
/// plugin asks.
fn set_route_props(
    p: &mut StreamProps,
    route: &Arc<Route>,
    canary: bool,
    pool: Option<&Arc<portico_model::lb::Pool>>,
) {
    if p.route.as_ref().is_some_and(|r| r.is(route, canary)) {
        return;
    }
    p.route = Some(RouteProps::Ingress {
        route: route.clone(),
        canary,
    });
    p.candidates = pool.map(|pool| portico_wasm::properties::Candidates(pool.clone()));
    p.annotations = Some(route.annotations.clone());
}

/// Writes a local response: `resp` with `body`.
async fn write_local(session: &mut Session, mut resp: ResponseHeader, body: Vec<u8>) -> Result<()> {
    settle_h2_request_body(session).await;
    let body = Bytes::from(body);
    resp.insert_header("content-length", body.len().to_string())?;
    let empty = body.is_empty();
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

fn local_header(local: &LocalResponse) -> Result<ResponseHeader> {
    let status = u16::try_from(local.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(500);
    let mut resp = ResponseHeader::build(status, Some(local.headers.len() + 2))?;
    for (k, v) in &local.headers {
        if k.starts_with(':') || k == "content-length" || k == "transfer-encoding" {
            continue;
        }
        resp.append_header(k.clone(), v.as_slice())?;
    }
    if resp.headers.get("server").is_none() {
        resp.insert_header("server", "portico")?;
    }
    Ok(resp)
}

fn plugin_failed(plugin: &str) -> LocalResponse {
    LocalResponse {
        context: 0,
        status: 500,
        details: format!("plugin {plugin} failed"),
        headers: vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
        body: format!("plugin {plugin} failed\n").into_bytes(),
    }
}

fn body_too_large(plugin: &str, status: u32) -> LocalResponse {
    LocalResponse {
        context: 0,
        status,
        details: format!("body too large to buffer for plugin {plugin}"),
        headers: vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
        body: format!(
            "body larger than {} bytes cannot be buffered for plugin {plugin}\n",
            http_filter::MAX_BUFFERED_BODY
        )
        .into_bytes(),
    }
}

/// The CORS headers every allowed response carries.
fn cors_headers(
    resp: &mut ResponseHeader,
    cors: &portico_model::policy::Cors,
    origin: &str,
) -> Result<()> {
    resp.insert_header("access-control-allow-origin", origin)?;
    if cors.allow_credentials {
        resp.insert_header("access-control-allow-credentials", "true")?;
    }
    if let Some(exposed) = cors.exposed() {
        resp.insert_header("access-control-expose-headers", exposed)?;
    }
    if origin != "*" {
        resp.append_header("vary", "Origin")?;
    }
    Ok(())
}

/// A redirect with an empty body.
/// What routing checks a request's conditions against.
fn request_facts<'a>(
    req: &'a RequestHeader,
    local: Option<SocketAddr>,
    tls: bool,
) -> RequestFacts<'a> {
    RequestFacts {
        port: local.map(|a| a.port()),
        tls,
        request: Some(RequestParts {
            method: req.method.as_str(),
            headers: &req.headers,
            query: req.uri.query(),
        }),
    }
}

/// The Host sent upstream when the route changes it: an ingress-nginx
/// `upstream-vhost` policy, or a Gateway API `URLRewrite` hostname.
fn upstream_host(route: &Route) -> Option<&str> {
    route
        .policy
        .as_ref()
        .and_then(|p| p.policy.upstream_host.as_deref())
        .or_else(|| {
            route
                .rule
                .as_ref()
                .and_then(|r| r.rewrite.as_ref())
                .and_then(|r| r.hostname.as_deref())
        })
}

/// A header modifier filter's edits, in the spec's order.
fn edit_request(req: &mut RequestHeader, edits: &HeaderEdits) -> Result<()> {
    for (name, value) in &edits.set {
        req.insert_header(name.clone(), value.as_str())?;
    }
    for (name, value) in &edits.add {
        req.append_header(name.clone(), value.as_str())?;
    }
    for name in &edits.remove {
        req.remove_header(name.as_str());
    }
    Ok(())
}

fn edit_response(resp: &mut ResponseHeader, edits: &HeaderEdits) -> Result<()> {
    for (name, value) in &edits.set {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    for (name, value) in &edits.add {
        resp.append_header(name.clone(), value.as_str())?;
    }
    for name in &edits.remove {
        resp.remove_header(name.as_str());
    }
    Ok(())
}

/// Applies a Gateway API rule's request filters. Returns whether the
/// request was answered here (a redirect).
async fn apply_rule(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    rule: &RuleAction,
    local_port: Option<u16>,
) -> Result<bool> {
    if let Some(r) = &rule.redirect {
        let req = session.req_header();
        let scheme = if ctx.tls { "https" } else { "http" };
        let port = local_port.unwrap_or(if ctx.tls { 443 } else { 80 });
        let host = portico_model::routing::normalize_host(&ctx.host);
        let location = r.location(
            scheme,
            &host,
            port,
            req.uri.path(),
            req.uri.query(),
            &route.path,
        );
        ctx.local_reason = Some("redirect");
        redirect(session, r.status, &location).await?;
        return Ok(true);
    }
    edit_request(session.req_header_mut(), &rule.request_headers)?;
    if let Some(change) = rule.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
        let req = session.req_header();
        let mut new = change.apply(req.uri.path(), &route.path);
        if let Some(q) = req.uri.query() {
            new.push('?');
            new.push_str(q);
        }
        match http::Uri::try_from(new.as_str()) {
            Ok(uri) => session.req_header_mut().set_uri(uri),
            Err(_) => {
                ctx.local_reason = Some("bad-rewrite");
                respond(session, 500, "rewrite produced an invalid path\n".into()).await?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

async fn redirect(session: &mut Session, code: u16, location: &str) -> Result<()> {
    settle_h2_request_body(session).await;
    let mut resp = ResponseHeader::build(code, Some(3))?;
    resp.insert_header("location", location)?;
    resp.insert_header("content-length", "0")?;
    resp.insert_header("server", "portico")?;
    session.write_response_header(Box::new(resp), true).await
}

impl HttpProxy {
    /// The default backend's answer in place of an upstream error the
    /// route's policy lists (ingress-nginx `custom-http-errors`), asked
    /// with the headers ingress-nginx sends its error backends. `None`
    /// keeps the upstream's answer, also when the default backend fails.
    async fn custom_error(
        &self,
        session: &Session,
        status: u16,
        ctx: &RequestCtx,
    ) -> Option<LocalResponse> {
        let route = ctx.route.as_ref()?;
        let policy = &route.policy.as_ref()?.policy;
        if !policy.custom_http_errors.contains(&status) {
            return None;
        }
        let fallback = route.fallback.as_ref()?;
        let snap = self.snapshot.load();
        let addr = snap
            .pool(fallback)?
            .pick(&PickRequest {
                preferred: None,
                client_ip: None,
                exclude: &[],
            })?
            .addr;
        let req = session.req_header();
        let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let (namespace, name) = route.ingress.split_once('/').unwrap_or(("", ""));
        let served = ctx.pool.as_ref().map(|p| p.key().clone());
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), b"GET".to_vec()),
            (":path".into(), uri.as_bytes().to_vec()),
            (":authority".into(), ctx.host.as_bytes().to_vec()),
            ("x-code".into(), status.to_string().into_bytes()),
            ("x-original-uri".into(), uri.as_bytes().to_vec()),
            ("x-namespace".into(), namespace.as_bytes().to_vec()),
            ("x-ingress-name".into(), name.as_bytes().to_vec()),
            ("x-request-id".into(), ctx.request_id.as_bytes().to_vec()),
        ];
        if let Some(format) = req.headers.get(http::header::ACCEPT) {
            headers.push(("x-format".into(), format.as_bytes().to_vec()));
        }
        if let Some(k) = served {
            headers.push(("x-service-name".into(), k.service.into_bytes()));
            headers.push(("x-service-port".into(), k.port.into_bytes()));
        }
        let call = portico_wasm::callout::Callout {
            token: 0,
            context: 0,
            upstream: fallback.to_string(),
            headers,
            body: Vec::new(),
            timeout: Duration::from_millis(self.cfg.read_timeout_ms.min(10_000)),
        };
        match portico_wasm::callout::perform(addr, &call).await {
            Ok(answer) => {
                metrics::counter!("portico_custom_errors_total", "ingress" => route.ingress.clone())
                    .increment(1);
                let code = answer
                    .headers
                    .iter()
                    .find(|(k, _)| k == ":status")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(u32::from(status));
                Some(LocalResponse {
                    context: 0,
                    status: code,
                    details: "custom-http-errors".into(),
                    headers: answer.headers,
                    body: answer.body,
                })
            }
            Err(e) => {
                tracing::warn!(route = %route.ingress, backend = %fallback, error = %e, "default backend did not answer a custom HTTP error; the upstream's answer is sent");
                None
            }
        }
    }

    /// Starts the rule's `RequestMirror` copies of the request as it goes
    /// upstream, on its first attempt only.
    fn start_mirrors(&self, session: &mut Session, upstream: &RequestHeader, ctx: &mut RequestCtx) {
        if ctx.mirrored {
            // A retry: Pingora replays the body from its start, which the
            // copies already have part of. They are dropped, not fed twice.
            if let Some(feed) = ctx.mirror.take() {
                feed.drop_all();
            }
            return;
        }
        ctx.mirrored = true;
        // An upgrade (WebSocket) would hold the copy's connection open
        // for as long as the deadline: not mirrored.
        if upstream.headers.contains_key(http::header::UPGRADE) {
            return;
        }
        let Some(route) = ctx.route.as_ref() else {
            return;
        };
        let Some(rule) = route.rule.as_ref().filter(|r| !r.mirrors.is_empty()) else {
            return;
        };
        let protocol = route
            .policy
            .as_ref()
            .and_then(|p| p.policy.backend_protocol);
        let body = !session.is_body_empty();
        let feed = self.mirrors.start(
            &self.snapshot.load(),
            &rule.mirrors,
            upstream,
            ctx.client,
            protocol,
            body,
        );
        ctx.mirror = (!feed.is_empty()).then_some(feed);
    }

    /// Applies a route's typed policy (from the policy plugin). Returns
    /// whether the request was answered here.
    async fn apply_policy(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        checked: &portico_model::policy::CheckedPolicy,
    ) -> Result<bool> {
        let policy = &checked.policy;
        if !checked.allows(ctx.client) {
            ctx.local_reason = Some("policy-denied");
            respond(
                session,
                403,
                format!("client address not allowed (Ingress {})\n", route.ingress),
            )
            .await?;
            return Ok(true);
        }
        if let (Some(limit), Some(ip)) = (&policy.rate_limit, ctx.client) {
            if !checked.limit_exempt.iter().any(|n| n.contains(&ip)) {
                match self
                    .limiter
                    .admit(&route.ingress, ip, limit, Instant::now())
                {
                    Ok(slot) => ctx.limit_slot = slot,
                    Err(why) => {
                        metrics::counter!("portico_rate_limited_total", "ingress" => route.ingress.clone(), "limit" => why.as_str())
                            .increment(1);
                        ctx.local_reason = Some("policy-rate-limit");
                        // 503, as ingress-nginx answers by default.
                        respond(
                            session,
                            503,
                            format!(
                                "too many requests from this client (Ingress {}, {} limit)\n",
                                route.ingress,
                                why.as_str()
                            ),
                        )
                        .await?;
                        return Ok(true);
                    }
                }
            }
        }
        let path_and_query = session
            .req_header()
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        if policy.ssl_redirect && !ctx.tls {
            ctx.local_reason = Some("policy-redirect");
            let host = ctx
                .host
                .rsplit_once(':')
                .map_or(ctx.host.as_str(), |(h, p)| {
                    if p.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        ctx.host.as_str()
                    }
                });
            redirect(session, 308, &format!("https://{host}{path_and_query}")).await?;
            return Ok(true);
        }
        if let Some(r) = &policy.redirect {
            ctx.local_reason = Some("policy-redirect");
            redirect(session, r.code, &r.url).await?;
            return Ok(true);
        }
        if let Some(root) = &policy.app_root {
            if session.req_header().uri.path() == "/" {
                ctx.local_reason = Some("policy-redirect");
                redirect(session, 302, root).await?;
                return Ok(true);
            }
        }
        if let Some(limit) = policy.body_size_limit {
            let length = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if length.is_some_and(|n| n > limit) {
                ctx.local_reason = Some("policy-body-size");
                respond(
                    session,
                    413,
                    format!("request body larger than {limit} bytes\n"),
                )
                .await?;
                return Ok(true);
            }
        }
        if let Some(cors) = &policy.cors {
            let origin = session
                .req_header()
                .headers
                .get(http::header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .and_then(|o| cors.allow(o));
            if let Some(origin) = origin {
                if session.req_header().method == http::Method::OPTIONS {
                    // A preflight: answered here, as ingress-nginx does.
                    ctx.local_reason = Some("policy-cors");
                    let asked = |name: &str| {
                        session
                            .req_header()
                            .headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                    };
                    let mut resp = ResponseHeader::build(cors.preflight_status, Some(8))?;
                    cors_headers(&mut resp, cors, &origin)?;
                    if let Some(m) = cors.allow_methods_for(asked("access-control-request-method"))
                    {
                        resp.insert_header("access-control-allow-methods", m)?;
                    }
                    if let Some(h) = cors.allow_headers_for(asked("access-control-request-headers"))
                    {
                        resp.insert_header("access-control-allow-headers", h)?;
                    }
                    resp.insert_header("access-control-max-age", cors.max_age_seconds.to_string())?;
                    resp.insert_header("content-length", "0")?;
                    session.write_response_header(Box::new(resp), true).await?;
                    return Ok(true);
                }
                ctx.cors_origin = Some(origin);
            }
        }
        if let Some(target) = &policy.rewrite_target {
            let path = session.req_header().uri.path().to_string();
            let mut new = match route.path_regex.as_ref().and_then(|r| r.0.captures(&path)) {
                // A regex route: the whole path becomes the target, with
                // `$n` filled from the match (nginx's `rewrite`).
                Some(caps) => {
                    let mut out = String::new();
                    caps.expand(target, &mut out);
                    out
                }
                // The matched prefix is replaced; the rest stays.
                None => {
                    let prefix = route.path.trim_end_matches('/');
                    let rest = path.strip_prefix(prefix).unwrap_or("");
                    format!("{}{}", target.trim_end_matches('/'), rest)
                }
            };
            // The query stays in both cases.
            if !new.starts_with('/') {
                new.insert(0, '/');
            }
            if let Some(q) = session.req_header().uri.query() {
                new = format!("{new}?{q}");
            }
            match http::Uri::try_from(new.as_str()) {
                Ok(uri) => session.req_header_mut().set_uri(uri),
                Err(_) => {
                    respond(session, 500, "rewrite produced an invalid path\n".into()).await?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Writes a local response. One a plugin sent (`context` set) goes
    /// through the plugins' response-headers phase first, as Envoy encodes
    /// a local reply through the filter chain, so a filter sees (and may
    /// edit) its own reply. The gateway's own answers (a plugin failed)
    /// do not.
    async fn respond_local(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        local: LocalResponse,
    ) -> Result<()> {
        let mut resp = local_header(&local)?;
        let mut body = local.body;
        if local.context != 0 {
            if let Some(other) = self.run_response_headers(session, ctx, &mut resp).await {
                // A plugin answered again, or failed, while the reply went
                // through the chain: that answer goes out as it is.
                resp = local_header(&other)?;
                body = other.body;
            }
        }
        write_local(session, resp, body).await
    }

    /// The plugins' response-headers phase on `resp`, whether it came
    /// from the upstream or is a plugin's local reply (Envoy runs the
    /// encoder callbacks on local replies too). Their header edits are
    /// applied to `resp`; a plugin that answers or fails gives the
    /// response that replaces it.
    async fn run_response_headers(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHeader,
    ) -> Option<LocalResponse> {
        let chain = ctx.plugins.as_mut()?;
        chain.props_mut().response_code = Some(resp.status.as_u16());
        let end_of_stream = session.req_header().method == http::Method::HEAD;
        // Both headers are lent (neither copied nor moved) to the phase.
        let mut request = Lent::request(session.req_header_mut(), scheme(ctx.tls));
        let mut headers = Lent::response(resp);
        let mut changed = false;
        // A filter that pauses (for an HTTP call) holds the response back
        // until it resumes; then the filters before it run.
        let mut from = None;
        let verdict = loop {
            match chain.on_response_headers(
                request.slot(),
                headers.slot(),
                end_of_stream,
                &mut changed,
                from,
            ) {
                Verdict::Pause(i) => {
                    match chain
                        .resumed(
                            i,
                            Paused::Response,
                            PAUSE_TIMEOUT,
                            headers.slot(),
                            &mut changed,
                        )
                        .await
                    {
                        Verdict::Continue if i > 0 => from = Some(i - 1),
                        other => break other,
                    }
                }
                other => break other,
            }
        };
        // Edits to the request's headers this late change nothing.
        drop(request.finish());
        let edits = headers.finish().filter(|_| changed);
        Some(match verdict {
            Verdict::Continue | Verdict::Pause(_) => match edits {
                None => return None,
                Some(pairs) => match http_filter::apply_response(resp, &pairs) {
                    Ok(()) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "plugin edit to the response headers refused");
                        plugin_failed("response-headers")
                    }
                },
            },
            Verdict::Respond(local) => local,
            Verdict::Fail(p) => plugin_failed(&p),
            Verdict::TooLarge(p) => body_too_large(&p, 502),
        })
    }

    /// Runs `proxy_on_request_headers` from filter `from` on, waiting out
    /// pauses. Returns whether the request was answered (plugin response
    /// or fail-closed failure).
    async fn run_request_headers(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut from: usize,
    ) -> Result<bool> {
        let Some(chain) = ctx.plugins.as_mut() else {
            return Ok(false);
        };
        let end_of_stream = session.is_body_empty();
        let mut changed = false;
        // The request's own header, lent (not copied) to the phase.
        let mut headers = Lent::request(session.req_header_mut(), scheme(ctx.tls));
        let verdict = loop {
            match chain.on_request_headers(headers.slot(), from, end_of_stream, &mut changed) {
                Verdict::Pause(i) => {
                    match chain
                        .resumed(
                            i,
                            Paused::Request,
                            PAUSE_TIMEOUT,
                            headers.slot(),
                            &mut changed,
                        )
                        .await
                    {
                        Verdict::Continue => from = i + 1,
                        other => break other,
                    }
                }
                other => break other,
            }
        };
        let edits = headers.finish();
        ctx.request_edited |= changed;
        if let Some(pairs) = edits.filter(|_| changed) {
            if let Err(e) = http_filter::apply_request(session.req_header_mut(), &pairs) {
                // The reason goes to the log, never into the response.
                tracing::warn!(error = %e, "plugin edit to the request headers refused");
                ctx.local_reason = Some("plugin");
                self.respond_local(session, ctx, plugin_failed("request-headers"))
                    .await?;
                return Ok(true);
            }
        }
        let local = match verdict {
            Verdict::Continue | Verdict::Pause(_) => return Ok(false),
            Verdict::Respond(local) => local,
            Verdict::Fail(p) => plugin_failed(&p),
            Verdict::TooLarge(p) => body_too_large(&p, 413),
        };
        ctx.local_reason = Some("plugin");
        self.respond_local(session, ctx, local).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for HttpProxy {
    type CTX = RequestCtx;

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        let gone = client_went_away(e);
        if gone {
            tracing::debug!(error = %e, "client went away mid-request");
        }
        gone
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            in_flight: None,
            route: None,
            pool: None,
            tried: Vec::new(),
            pick: None,
            request_id: http::HeaderValue::from_static(""),
            host: String::new(),
            tls: false,
            local_reason: None,
            plugins: None,
            request_edited: false,
            plugin_response: None,
            replace_body: None,
            cors_origin: None,
            drawn: None,
            deadline: None,
            mirrored: false,
            mirror: None,
            limit_slot: None,
            client: None,
            via_trusted_proxy: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.in_flight = Some(InFlight::start());
        listener_metrics().active.increment(1.0);
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // Pingora has decided from the request whether the connection
        // stays open (HTTP/1.0 only with `Connection: keep-alive`, HTTP/1.1
        // unless `close`); only how long is ours to set.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.cfg.downstream_keepalive_timeout_ms / 1000));
        }

        let req = session.req_header();
        let peer = client_ip(session);
        let trusted = &self.cfg.trusted_proxies;
        ctx.via_trusted_proxy = peer.is_some_and(|p| client_addr::is_trusted(trusted, p));
        ctx.client = match peer {
            Some(p) if ctx.via_trusted_proxy => Some(client_addr::client_behind(
                trusted,
                p,
                req.headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.as_bytes()),
            )),
            p => p,
        };
        ctx.request_id = req
            .headers
            .get("x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 200 && v.to_str().is_ok())
            .cloned()
            .unwrap_or_else(new_request_id);
        // One value per request: HPACK would add each to its dynamic
        // table (and evict an older entry) only never to use it again.
        // Sensitive values go out as never-indexed literals, on both the
        // client's and an h2 backend's connection.
        ctx.request_id.set_sensitive(true);

        if req.headers.len() > MAX_HEADER_FIELDS {
            ctx.local_reason = Some("headers-too-large");
            respond(
                session,
                431,
                format!("too many request header fields (limit {MAX_HEADER_FIELDS})\n"),
            )
            .await?;
            return Ok(true);
        }
        if header_bytes(req) > self.cfg.max_request_header_bytes {
            ctx.local_reason = Some("headers-too-large");
            respond(
                session,
                431,
                format!(
                    "request header fields too large (limit {} bytes)\n",
                    self.cfg.max_request_header_bytes
                ),
            )
            .await?;
            return Ok(true);
        }
        let Some(mut host) = request_host(req) else {
            ctx.local_reason = Some("no-host");
            respond(session, 400, "missing Host header\n".into()).await?;
            return Ok(true);
        };
        if let Some(why) = framing_or_host_problem(req, &host) {
            ctx.local_reason = Some("bad-request");
            ctx.host = host;
            respond(session, 400, format!("{why}\n")).await?;
            return Ok(true);
        }
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        if let Some(rules) = self.cfg.paths.rules_for(local) {
            if let Err(e) = normalize_request_path(session, rules) {
                ctx.local_reason = Some("bad-path");
                ctx.host = host;
                metrics::counter!("portico_http_paths_refused_total", "reason" => e.as_str())
                    .increment(1);
                respond(session, 400, format!("{}\n", e.as_str())).await?;
                return Ok(true);
            }
        }
        let snap = self.snapshot.load();
        // Listener plugins run first and see the route the request would
        // take (`portico.route`); what they change (host, path) is routed
        // again.
        let registry = self.plugins.load();
        // The route found for the listener plugins, still right if they
        // left the request as it was.
        let mut routed = None;
        if !registry.http.is_empty() {
            let mut props = stream_props(session, ctx, &host);
            let req = session.req_header();
            let path = req.uri.path_and_query();
            let first = snap
                .routes
                .find_request(
                    &host,
                    path.map_or("/", |p| p.as_str()),
                    &request_facts(req, local, ctx.tls),
                )
                .map(|(r, _)| r.clone());
            if let Some(route) = &first {
                set_route_props(&mut props, route, false, snap.pool(&route.backend));
            }
            ctx.plugins = Some(StreamChain::new(registry.http.iter().cloned(), props));
            ctx.host.clone_from(&host);
            if self.run_request_headers(session, ctx, 0).await? {
                return Ok(true);
            }
            if ctx.request_edited {
                if let Some(h) = request_host(session.req_header()) {
                    host = h;
                }
            } else {
                routed = Some(first);
            }
        }
        let req = session.req_header();
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let route = routed.unwrap_or_else(|| {
            snap.routes
                .find_request(&host, path, &request_facts(req, local, ctx.tls))
                .map(|(r, _)| r.clone())
        });
        let Some(route) = route else {
            ctx.local_reason = Some("no-route");
            let body = format!("no route for host {host} path {}\n", req.uri.path());
            ctx.host = host;
            respond(session, 404, body).await?;
            return Ok(true);
        };
        ctx.host = host;
        ctx.route = Some(route.clone());
        ctx.deadline = route
            .rule
            .as_ref()
            .and_then(|r| r.request_timeout_ms)
            .filter(|ms| *ms > 0)
            .map(|ms| ctx.start + Duration::from_millis(ms));
        let route = &route;
        // A Gateway API rule's redirect, header edits and rewrite.
        if let Some(rule) = &route.rule {
            if apply_rule(session, ctx, route, rule, local.map(|a| a.port())).await? {
                return Ok(true);
            }
        }
        let req = session.req_header();
        // A canary Ingress may take this request (decided once, before
        // the Service's plugins and the pool); a Gateway API rule draws
        // among its weighted backends.
        let (backend, canary) = match route.weighted_pick() {
            None => route.backend_for(&req.headers),
            Some(WeightedPick::Backend(b)) => (b, false),
            Some(WeightedPick::Invalid) => {
                ctx.local_reason = Some("invalid-backend");
                let source = route.rule.as_ref().map_or("", |r| r.source.as_str());
                let body = format!("no valid backend for this request ({source})\n");
                respond(session, 500, body).await?;
                return Ok(true);
            }
        };
        // The drawn backendRef's own header filters, after the rule's.
        if let Some(rule) = route.rule.as_ref() {
            ctx.drawn = rule
                .weighted
                .iter()
                .position(|w| w.backend.as_ref().is_some_and(|k| std::ptr::eq(k, backend)));
            if let Some(w) = ctx.drawn.map(|i| &rule.weighted[i]) {
                edit_request(session.req_header_mut(), &w.request_headers)?;
            }
        }
        let backend_pool = snap.pool(backend);
        if canary {
            if let Some(c) = &route.canary {
                metrics::counter!("portico_canary_requests_total", "ingress" => c.ingress.clone())
                    .increment(1);
            }
        }
        if let Some(policy) = route.policy.clone() {
            if self.apply_policy(session, ctx, route, &policy).await? {
                return Ok(true);
            }
        }
        if let Some(chain) = ctx.plugins.as_mut() {
            set_route_props(chain.props_mut(), route, canary, backend_pool);
        }
        // The scoped listener plugins the route or its Service matched at
        // translation, then the Ingress's plugins, then the Service's.
        let service_plugins = backend_pool.map(|p| p.plugins()).unwrap_or_default();
        let service_scoped = backend_pool.map(|p| p.scoped_http()).unwrap_or_default();
        if !route.plugins.is_empty()
            || !service_plugins.is_empty()
            || !route.scoped_plugins.is_empty()
            || !service_scoped.is_empty()
        {
            let mut wanted = Vec::with_capacity(
                route.scoped_plugins.len()
                    + service_scoped.len()
                    + route.plugins.len()
                    + service_plugins.len(),
            );
            // Like the listener's own, a scoped plugin that a reload
            // removed is skipped; each runs once even when both the
            // Ingress and the Service match it.
            for (i, name) in route
                .scoped_plugins
                .iter()
                .chain(service_scoped)
                .enumerate()
            {
                if i >= route.scoped_plugins.len() && route.scoped_plugins.contains(name) {
                    continue;
                }
                if let Some(p) = registry.get(name) {
                    wanted.push(p.clone());
                }
            }
            for name in route.plugins.iter().chain(service_plugins) {
                match registry.get(name) {
                    Some(p) => wanted.push(p.clone()),
                    None => {
                        // Fail closed: a route that asks for a plugin
                        // (auth, say) is never served without it.
                        ctx.local_reason = Some("plugin-missing");
                        tracing::warn!(route = %route.ingress, plugin = %name, "route asks for a plugin that is not loaded");
                        let body =
                            format!("plugin {name} is not loaded (route {})\n", route.ingress);
                        respond(session, 500, body).await?;
                        return Ok(true);
                    }
                }
            }
            let from = match ctx.plugins.as_mut() {
                Some(chain) => {
                    let from = chain.len();
                    chain.extend(wanted);
                    from
                }
                None => {
                    let mut props = stream_props(session, ctx, &ctx.host);
                    set_route_props(&mut props, route, canary, backend_pool);
                    ctx.plugins = Some(StreamChain::new(wanted, props));
                    0
                }
            };
            if self.run_request_headers(session, ctx, from).await? {
                return Ok(true);
            }
        }
        // The route's default backend stands in for a Service with no
        // endpoints (ingress-nginx `default-backend`).
        let pool = backend_pool
            .filter(|p| !p.is_empty())
            .or_else(|| route.fallback.as_ref().and_then(|f| snap.pool(f)))
            .cloned();
        match pool {
            Some(p) if !p.is_empty() => ctx.pool = Some(p),
            _ => {
                ctx.local_reason = Some("no-endpoints");
                let body = format!("no available endpoints for service {backend}\n");
                respond(session, 503, body).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no pool chosen"))?;
        let req = PickRequest {
            preferred: ctx.plugins.as_ref().and_then(|c| c.override_host),
            client_ip: ctx.client,
            exclude: &ctx.tried,
        };
        let Some(pick) = pool.pick(&req) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("no endpoint of {} left to try", pool.key()),
            ));
        };
        let addr = pick.addr;
        ctx.tried.push(addr);
        ctx.pick = Some(pick);
        if let Some(chain) = ctx.plugins.as_mut() {
            chain.props_mut().upstream = Some(addr);
        }
        // A route's policy (e.g. proxy-*-timeout annotations) wins.
        let policy = ctx.route.as_ref().and_then(|r| r.policy.as_ref());
        let rule = ctx.route.as_ref().and_then(|r| r.rule.as_ref());
        let mut peer = upstream_peer_for(
            addr,
            pool.key(),
            policy.and_then(|p| p.policy.backend_protocol),
            ctx.route.as_ref().and_then(|r| upstream_host(r)),
        );
        let o = &mut peer.options;
        let ms = |route: Option<u64>, default: u64| Duration::from_millis(route.unwrap_or(default));
        o.connection_timeout = Some(ms(
            policy.and_then(|p| p.policy.connect_timeout_ms),
            self.cfg.connect_timeout_ms,
        ));
        // A Gateway API rule's `timeouts.backendRequest` bounds each
        // attempt's wait for the backend (Pingora times each read); `0s`
        // there means none.
        let rule_timeout = rule.and_then(|r| r.backend_timeout_ms);
        o.read_timeout = match rule_timeout {
            Some(0) => None,
            _ => Some(ms(
                rule_timeout.or(policy.and_then(|p| p.policy.read_timeout_ms)),
                self.cfg.read_timeout_ms,
            )),
        };
        o.write_timeout = Some(ms(
            policy.and_then(|p| p.policy.write_timeout_ms),
            self.cfg.write_timeout_ms,
        ));
        // `timeouts.request`: no wait may go past the request's deadline
        // (a body still arriving then is cut in `response_body_filter`).
        if let Some(deadline) = ctx.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "the rule's timeouts.request passed before a backend answered",
                ));
            }
            for t in [
                &mut o.connection_timeout,
                &mut o.read_timeout,
                &mut o.write_timeout,
            ] {
                *t = Some(t.map_or(left, |t| t.min(left)));
            }
        }
        o.idle_timeout = Some(Duration::from_millis(self.cfg.upstream_idle_timeout_ms));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let backend = ctx
            .pool
            .as_ref()
            .map(|p| p.key().to_string())
            .unwrap_or_default();
        metrics::counter!("portico_upstream_connect_errors_total", "backend" => backend.clone())
            .increment(1);
        if let (Some(pool), Some(addr)) = (ctx.pool.as_ref(), ctx.pick.as_ref().map(|p| p.addr)) {
            pool.report_failure(addr);
        }
        let more = ctx
            .pool
            .as_ref()
            .is_some_and(|p| p.endpoints().len() > ctx.tried.len());
        if more && ctx.tried.len() <= self.cfg.connect_retries {
            tracing::debug!(endpoint = %peer.address(), error = %e, "connect failed; retrying another endpoint");
            e.set_retry(true);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(pool), Some(pick)) = (ctx.pool.as_ref(), ctx.pick.as_ref()) {
            pool.report_success(pick.addr);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let hop = Hop {
            peer: client_ip(session),
            server_port: session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port()),
            vhost: ctx.route.as_ref().and_then(|r| upstream_host(r)),
        };
        if self.cfg.preserve_header_case || !upstream.raw_path_is_utf8() {
            // Pingora's own insert keeps each name's case as the client
            // sent it, at the cost of a parse and a second map per header.
            let mut edits = forwarded_headers(&upstream.headers, ctx, &hop)?;
            if edits.remove_forwarded {
                upstream.remove_header(&http::header::FORWARDED);
            }
            if let Some(cookies) = joined_cookies(&upstream.headers) {
                upstream.insert_header(http::header::COOKIE, cookies)?;
            }
            for (name, value) in edits.take() {
                upstream.insert_header(name, value)?;
            }
            self.start_mirrors(session, upstream, ctx);
            return Ok(());
        }
        // Names in lowercase (as Envoy sends them; HTTP header names are
        // case-insensitive): the headers are inserted into the request's
        // own map, reserved once, with names that need no parsing.
        let send_end_stream = upstream.send_end_stream();
        let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts: http::request::Parts = std::mem::replace(upstream, placeholder).into();
        let result = forwarded_headers(&parts.headers, ctx, &hop).map(|mut edits| {
            if edits.remove_forwarded {
                parts.headers.remove(http::header::FORWARDED);
            }
            if let Some(cookies) = joined_cookies(&parts.headers) {
                parts.headers.insert(http::header::COOKIE, cookies);
            }
            parts.headers.reserve(edits.len);
            for (name, value) in edits.take() {
                parts.headers.insert(name, value);
            }
        });
        *upstream = RequestHeader::from(parts);
        if let Some(eos) = send_end_stream {
            upstream.set_send_end_stream(eos);
        }
        if result.is_ok() {
            self.start_mirrors(session, upstream, ctx);
        }
        result
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chain) = ctx.plugins.as_mut() else {
            if let Some(feed) = ctx.mirror.as_mut() {
                feed.feed(body.as_ref(), end_of_stream);
            }
            return Ok(());
        };
        let local = match chain.on_request_body(body, end_of_stream) {
            Verdict::Continue | Verdict::Pause(_) => {
                // The body as the plugins left it, as it goes upstream.
                if let Some(feed) = ctx.mirror.as_mut() {
                    feed.feed(body.as_ref(), end_of_stream);
                }
                return Ok(());
            }
            Verdict::Respond(local) => local,
            Verdict::Fail(p) => plugin_failed(&p),
            Verdict::TooLarge(p) => body_too_large(&p, 413),
        };
        // The request may already be on its way upstream: stop it, and
        // let fail_to_proxy write the answer.
        let status = local.status as u16;
        ctx.plugin_response = Some(local);
        Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "a plugin answered the request from its body",
        ))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        if let Some(local) = self.custom_error(session, resp.status.as_u16(), ctx).await {
            let mut replacement = local_header(&local)?;
            replacement.insert_header("content-length", local.body.len().to_string())?;
            replacement.insert_header("x-request-id", ctx.request_id.clone())?;
            *resp = replacement;
            ctx.replace_body = Some(Bytes::from(local.body));
            ctx.local_reason = Some("custom-error");
            return Ok(());
        }
        if let Some(rule) = ctx.route.as_ref().and_then(|r| r.rule.as_ref()) {
            edit_response(resp, &rule.response_headers)?;
            // Then the drawn backendRef's own.
            if let Some(w) = ctx.drawn.and_then(|i| rule.weighted.get(i)) {
                edit_response(resp, &w.response_headers)?;
            }
        }
        let cors = ctx
            .route
            .as_ref()
            .and_then(|r| r.policy.as_ref())
            .and_then(|p| p.policy.cors.as_ref());
        match (ctx.cors_origin.as_deref(), cors) {
            (Some(origin), Some(cors)) => cors_headers(resp, cors, origin)?,
            // Refused origins too: a cache must not hand this answer to
            // an origin that would have been allowed.
            (None, Some(cors)) if cors.varies_by_origin() => {
                resp.append_header("vary", "Origin")?;
            }
            _ => {}
        }
        let Some(local) = self.run_response_headers(session, ctx, resp).await else {
            return Ok(());
        };
        // Replace the upstream's response with the plugin's.
        let mut replacement = local_header(&local)?;
        replacement.insert_header("content-length", local.body.len().to_string())?;
        replacement.insert_header("x-request-id", ctx.request_id.clone())?;
        *resp = replacement;
        ctx.replace_body = Some(Bytes::from(local.body));
        ctx.local_reason = Some("plugin");
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            // The request's `limit-connections` slot is free before the
            // client can see the end of the response (and send the next
            // request), not only after `logging`.
            ctx.limit_slot = None;
        } else if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            // The headers are gone: cutting the response short is the
            // only way left to keep the rule's `timeouts.request`.
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the rule's timeouts.request passed while the response body was sent",
            ));
        }
        if matches!(ctx.local_reason, Some("plugin" | "custom-error")) {
            // The headers were replaced: send the replacement body once,
            // and none of the upstream's.
            *body = ctx.replace_body.take();
            return Ok(None);
        }
        let Some(chain) = ctx.plugins.as_mut() else {
            return Ok(None);
        };
        match chain.on_response_body(body, end_of_stream) {
            Verdict::Continue | Verdict::Pause(_) | Verdict::Respond(_) => Ok(None),
            // The headers are gone: the only way left to fail is to cut
            // the response short, which the client sees as an error.
            Verdict::Fail(p) => Err(Error::explain(
                ErrorType::InternalError,
                format!("plugin {p} failed in the response body"),
            )),
            Verdict::TooLarge(p) => Err(Error::explain(
                ErrorType::InternalError,
                format!("response body too large to buffer for plugin {p}"),
            )),
        }
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        let Some(chain) = ctx.plugins.as_mut() else {
            return Ok(None);
        };
        let mut pairs = http_filter::trailer_pairs(trailers);
        let mut changed = false;
        let mut request = Lent::request(session.req_header_mut(), scheme(ctx.tls));
        let verdict = chain.on_response_trailers(request.slot(), &mut pairs, &mut changed);
        drop(request.finish());
        if let Verdict::Fail(p) = verdict {
            return Err(Error::explain(
                ErrorType::InternalError,
                format!("plugin {p} failed in the response trailers"),
            ));
        }
        if changed {
            http_filter::apply_trailers(trailers, &pairs);
        }
        Ok(None)
    }

    /// Error answers with a short body naming the backend, so an operator
    /// reading a 502 or 504 knows which Service to look at.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use pingora::ErrorSource;
        let backend = ctx
            .route
            .as_ref()
            .map(|r| r.backend.to_string())
            .unwrap_or_else(|| "-".into());
        let (code, what) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "no endpoint available"),
            // Every endpoint tried refused or timed out: the service is down,
            // not misbehaving.
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError => (503, "all endpoints tried are down"),
            ErrorType::ReadTimedout => (504, "the upstream did not answer in time"),
            ErrorType::WriteTimedout => (504, "writing to the upstream timed out"),
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "the upstream failed"),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "")
                    }
                    _ => (400, "bad request"),
                },
                _ => (500, "internal error"),
            },
        };
        if let Some(local) = ctx.plugin_response.take() {
            ctx.local_reason = Some("plugin");
            let code = local.status as u16;
            if session.response_written().is_none() {
                if let Err(err) = self.respond_local(session, ctx, local).await {
                    tracing::debug!(error = %err, "could not send the plugin's response");
                }
            }
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if code > 0 && session.response_written().is_none() {
            let body = if code == 400 {
                "bad request\n".to_string()
            } else {
                let tried = ctx.tried.len();
                format!("{what} (service {backend}, endpoints tried: {tried})\n")
            };
            if let Err(err) = respond(session, code, body).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.in_flight.is_some() {
            listener_metrics().active.decrement(1.0);
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let class = code_class(status);
        let listener = LISTENERS[usize::from(ctx.tls)];
        let elapsed = ctx.start.elapsed();
        match &ctx.route {
            Some(r) => {
                r.metrics.requests(&r.ingress, ctx.tls, class).increment(1);
                r.metrics
                    .duration(&r.ingress, ctx.tls)
                    .record(elapsed.as_secs_f64());
            }
            // Answered before routing (404, 400...): rare, labelled by why.
            None => {
                let reason = ctx.local_reason.unwrap_or("none");
                metrics::counter!("portico_http_requests_total",
                    "listener" => listener, "route" => reason, "code_class" => CODE_CLASSES[class])
                .increment(1);
                metrics::histogram!("portico_http_request_duration_seconds",
                    "listener" => listener, "route" => reason)
                .record(elapsed.as_secs_f64());
            }
        }
        let bytes_in = session.body_bytes_read() as u64;
        let bytes_out = session.body_bytes_sent() as u64;
        let m = listener_metrics();
        m.bytes_received[usize::from(ctx.tls)].increment(bytes_in);
        m.bytes_sent[usize::from(ctx.tls)].increment(bytes_out);
        if self.access_log {
            let req = session.req_header();
            let version = format!("{:?}", req.version);
            let backend = ctx.route.as_ref().map(|r| r.backend.to_string());
            let endpoint = ctx.tried.last().map(|a| a.to_string());
            write_access_log(&AccessRecord {
                request_id: ctx.request_id.to_str().ok(),
                client: ctx.client,
                listener,
                method: req.method.as_str(),
                host: &ctx.host,
                path: req.uri.path(),
                version: &version,
                status,
                route: ctx
                    .route
                    .as_ref()
                    .map_or(ctx.local_reason.unwrap_or("none"), |r| r.ingress.as_str()),
                backend: backend.as_deref(),
                endpoint: endpoint.as_deref(),
                attempts: ctx.tried.len(),
                elapsed,
                bytes_in,
                bytes_out,
                error: e.map(|e| e.to_string()).as_deref(),
            });
        }
        ctx.pick = None;
        if let Some(mut chain) = ctx.plugins.take() {
            let mut request = Lent::request(session.req_header_mut(), scheme(ctx.tls));
            chain.finish(Some(request.slot()));
            drop(request.finish());
        }
    }
}

/// One access log line's fields (both HTTP paths write the same line).
pub(super) struct AccessRecord<'a> {
    pub request_id: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub listener: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub backend: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub attempts: usize,
    pub elapsed: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<&'a str>,
}

/// Writes the access log line: one JSON object on stdout.
pub(super) fn write_access_log(r: &AccessRecord<'_>) {
    let line = serde_json::json!({
        "ts": humantime_now(),
        "request_id": r.request_id,
        "client": r.client.map(|i| i.to_string()),
        "listener": r.listener,
        "method": r.method,
        "host": r.host,
        "path": r.path,
        "version": r.version,
        "status": r.status,
        "route": r.route,
        "backend": r.backend,
        "endpoint": r.endpoint,
        "attempts": r.attempts,
        "duration_ms": r.elapsed.as_secs_f64() * 1000.0,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "error": r.error,
    });
    println!("{line}");
}

/// RFC 3339 UTC timestamp with milliseconds, without a date crate.
fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookies_are_joined_in_order() {
        let mut h = http::HeaderMap::new();
        assert_eq!(joined_cookies(&h), None);
        h.append(http::header::COOKIE, "a=1".parse().unwrap());
        assert_eq!(joined_cookies(&h), None, "one field stays as it is");
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        h.append(http::header::COOKIE, "c=3; d=4".parse().unwrap());
        assert_eq!(joined_cookies(&h).unwrap(), "a=1; b=2; c=3; d=4");
    }

    #[test]
    fn only_a_client_going_away_is_kept_out_of_the_error_log() {
        assert!(client_went_away(&Error::new_down(
            ErrorType::ConnectionClosed
        )));
        assert!(client_went_away(&Error::new_down(ErrorType::WriteError)));
        assert!(
            !client_went_away(&Error::new_up(ErrorType::ConnectionClosed)),
            "an upstream that closes is logged"
        );
        assert!(
            !client_went_away(&Error::new_down(ErrorType::InvalidHTTPHeader)),
            "a malformed request is logged"
        );
    }

    #[test]
    fn timestamp_format() {
        let t = humantime_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn host_from_authority_or_header() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("host", "a.example.com:8080").unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("a.example.com:8080"));
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.set_uri(http::Uri::from_static("https://b.example.com/x"));
        assert_eq!(request_host(&req).as_deref(), Some("b.example.com"));
    }

    #[test]
    fn client_addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.9",
            "99.100.101.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn request_ids_are_32_hex_digits_as_format_writes_them() {
        for n in [0u128, 1, 0xdead_beef, u128::MAX, fastrand::u128(..)] {
            let mut hex = [0u8; 32];
            hex_into(n, &mut hex);
            assert_eq!(std::str::from_utf8(&hex).unwrap(), format!("{n:032x}"));
        }
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
    }
}
