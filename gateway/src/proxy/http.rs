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

use crate::config::ProxyConfig;
use crate::lb::{Pick, PickRequest, Pool};
use crate::routing::Route;
use crate::shutdown::InFlight;
use crate::snapshot::Snapshot;

pub struct HttpProxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    cfg: ProxyConfig,
    access_log: bool,
}

impl HttpProxy {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, cfg: ProxyConfig, access_log: bool) -> Self {
        HttpProxy {
            snapshot,
            cfg,
            access_log,
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    in_flight: Option<InFlight>,
    route: Option<Arc<Route>>,
    pool: Option<Arc<Pool>>,
    tried: Vec<SocketAddr>,
    pick: Option<Pick>,
    request_id: String,
    host: String,
    tls: bool,
    /// Set when the gateway answered itself (404, 503...).
    local_reason: Option<&'static str>,
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
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

fn header_bytes(req: &RequestHeader) -> usize {
    req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// A random 128-bit id in hex, for `X-Request-Id`.
fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

async fn respond(session: &mut Session, status: u16, body: String) -> Result<()> {
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("server", "portico")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[async_trait]
impl ProxyHttp for HttpProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            in_flight: None,
            route: None,
            pool: None,
            tried: Vec::new(),
            pick: None,
            request_id: String::new(),
            host: String::new(),
            tls: false,
            local_reason: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.in_flight = Some(InFlight::start());
        metrics::gauge!("portico_http_requests_active").increment(1.0);
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        session.set_keepalive(Some(self.cfg.downstream_keepalive_timeout_ms / 1000));

        let req = session.req_header();
        ctx.request_id = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 200)
            .map(str::to_string)
            .unwrap_or_else(new_request_id);

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
        let Some(host) = request_host(req) else {
            ctx.local_reason = Some("no-host");
            respond(session, 400, "missing Host header\n".into()).await?;
            return Ok(true);
        };
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let snap = self.snapshot.load();
        let Some((route, _)) = snap.routes.find(&host, path) else {
            ctx.local_reason = Some("no-route");
            let body = format!("no route for host {host} path {}\n", req.uri.path());
            ctx.host = host;
            respond(session, 404, body).await?;
            return Ok(true);
        };
        ctx.host = host;
        ctx.route = Some(route.clone());
        let pool = snap.pool(&route.backend).cloned();
        match pool {
            Some(p) if !p.is_empty() => ctx.pool = Some(p),
            _ => {
                ctx.local_reason = Some("no-endpoints");
                let body = format!("no available endpoints for service {}\n", route.backend);
                respond(session, 503, body).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no pool chosen"))?;
        let req = PickRequest {
            client_ip: client_ip(session),
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
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(Duration::from_millis(self.cfg.connect_timeout_ms));
        o.read_timeout = Some(Duration::from_millis(self.cfg.read_timeout_ms));
        o.write_timeout = Some(Duration::from_millis(self.cfg.write_timeout_ms));
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
        let client = client_ip(session)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let xff = match upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.is_empty() => format!("{prev}, {client}"),
            _ => client,
        };
        upstream.insert_header("x-forwarded-for", xff)?;
        upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        upstream.insert_header("x-forwarded-host", ctx.host.as_str())?;
        // ingress-nginx sends these too; backends migrating from it read them.
        if let Some(port) = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port())
        {
            upstream.insert_header("x-forwarded-port", port.to_string())?;
        }
        if let Some(ip) = client_ip(session) {
            upstream.insert_header("x-real-ip", ip.to_string())?;
        }
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        // h2 requests carry the host in :authority; HTTP/1.1 upstreams need Host.
        if upstream.headers.get(http::header::HOST).is_none() {
            upstream.insert_header(http::header::HOST, ctx.host.as_str())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
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
            metrics::gauge!("portico_http_requests_active").decrement(1.0);
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        let listener = if ctx.tls { "https" } else { "http" };
        let route = ctx
            .route
            .as_ref()
            .map(|r| r.ingress.clone())
            .unwrap_or_else(|| ctx.local_reason.unwrap_or("none").to_string());
        let elapsed = ctx.start.elapsed();
        metrics::counter!("portico_http_requests_total",
            "listener" => listener, "route" => route.clone(), "code_class" => class)
        .increment(1);
        metrics::histogram!("portico_http_request_duration_seconds",
            "listener" => listener, "route" => route.clone())
        .record(elapsed.as_secs_f64());
        let bytes_in = session.body_bytes_read() as u64;
        let bytes_out = session.body_bytes_sent() as u64;
        metrics::counter!("portico_http_bytes_received_total", "listener" => listener)
            .increment(bytes_in);
        metrics::counter!("portico_http_bytes_sent_total", "listener" => listener)
            .increment(bytes_out);
        if self.access_log {
            let req = session.req_header();
            let line = serde_json::json!({
                "ts": humantime_now(),
                "request_id": ctx.request_id,
                "client": client_ip(session).map(|i| i.to_string()),
                "listener": listener,
                "method": req.method.as_str(),
                "host": ctx.host,
                "path": req.uri.path(),
                "version": format!("{:?}", req.version),
                "status": status,
                "route": route,
                "backend": ctx.route.as_ref().map(|r| r.backend.to_string()),
                "endpoint": ctx.tried.last().map(|a| a.to_string()),
                "attempts": ctx.tried.len(),
                "duration_ms": elapsed.as_secs_f64() * 1000.0,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "error": e.map(|e| e.to_string()),
            });
            println!("{line}");
        }
        ctx.pick = None;
    }
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
}
