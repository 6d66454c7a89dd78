//! The HTTP/1.1 fast path: plain requests on plain routes, proxied
//! without Pingora's per-request pipeline.
//!
//! Profiles showed Pingora's proxy pipeline (its `HeaderMap`s, the
//! per-request futures and channels, the connector's pool) costing about
//! four times nginx's user CPU per request, with the same system calls.
//! Most edge traffic needs none of what that pipeline offers: a GET on a
//! route with no plugin and no request policy is parsed, routed,
//! forwarded with the forwarding headers, and its response relayed. This
//! module does exactly that, over Pingora's accepted `Stream` (so
//! listeners, TLS and ALPN stay Pingora's), with `httparse` on a buffer
//! kept for the connection's life and upstream connections kept per
//! worker thread (`upstream_idle`).
//!
//! Everything else goes to the full path, unchanged: the bytes read are
//! put back in front of the stream (`replay`) and Pingora's `HttpProxy`
//! serves the connection from there on. That covers HTTP/2 (ALPN or h2c
//! preface), HTTP/1.0, upgrades, chunked request bodies, `Expect`, more
//! than one `Host` or `Content-Length`, any request the normalizer
//! refuses, routes with plugins, canaries or request policies (the
//! route's `forwards_plainly`), peers in `trusted_proxies`, and an
//! unroutable request (the full path answers 404). So every answer about
//! the request itself comes from one place, and the fast path never
//! judges a request the full path would refuse. What it answers itself is
//! about the upstream, with the full path's statuses and bodies: 503 when
//! no endpoint tried accepts a connection (after `connect_retries` other
//! endpoints, as `fail_to_connect` does), 502 and 504.
//!
//! `[proxy] fast_path = false` turns it off.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::h1_wire::{self, Framing, MAX_REQUEST_HEADERS, MAX_RESPONSE_HEADERS};
use super::http::{self as full, AccessRecord, HttpProxy};
use super::replay::Replay;
use super::upstream_idle;
use crate::shutdown::InFlight;
use portico_model::lb::{PickRequest, Pool};
use portico_model::route_metrics::{code_class, LISTENERS};
use portico_model::routing::Route;

/// Request heads larger than this go to the full path (which reads on).
const READ_BUFFER: usize = 16 * 1024;
/// A connection's read buffer starts this small (idle keep-alive
/// connections are most of them) and doubles up to `READ_BUFFER`.
const FIRST_READ_BUFFER: usize = 2048;
/// Scratch buffers kept per worker thread for the next request.
const SPARE_SCRATCH: usize = 64;
/// Largest upstream response head read.
const RESPONSE_HEAD_LIMIT: usize = 64 * 1024;
/// How an h2c connection with prior knowledge starts (RFC 9113 §3.4), up
/// to the first empty line, which is all a complete head holds for sure.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// The L7 service's application: the fast path in front of Pingora's
/// `HttpProxy` running Portico's `ProxyHttp` phases.
pub struct FastH1 {
    pub(super) full: Arc<pingora::proxy::HttpProxy<HttpProxy>>,
    pub(super) proxy: HttpProxy,
    /// Plain connections may start with the HTTP/2 preface (`[listen] h2c`).
    h2c: bool,
}

impl FastH1 {
    /// `proxy` shares the snapshot, plugins and configuration of the one
    /// inside `full`.
    pub fn new(full: pingora::proxy::HttpProxy<HttpProxy>, proxy: HttpProxy) -> Self {
        let h2c = full.server_options.as_ref().is_some_and(|o| o.h2c);
        FastH1 {
            full: Arc::new(full),
            proxy,
            h2c,
        }
    }
}

/// What the client sent and has not been served yet: `len` bytes valid.
struct ReadBuf {
    buf: Vec<u8>,
    len: usize,
}

/// Buffers a request in progress needs, taken from a per-thread stock
/// (`Scratch::take`) and given back when it ends, so an idle keep-alive
/// connection holds only its small read buffer.
pub(super) struct Scratch {
    /// Bytes read from the upstream (and request bodies on their way).
    pub(super) up: Box<[u8]>,
    /// Bytes being written (either way).
    pub(super) out: Vec<u8>,
}

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Scratch>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Scratch {
    pub(super) fn take() -> ScratchGuard {
        let spare = SPARE.with(|s| s.borrow_mut().pop());
        ScratchGuard(Some(spare.unwrap_or_else(|| Scratch {
            up: vec![0; READ_BUFFER].into_boxed_slice(),
            out: Vec::with_capacity(4096),
        })))
    }
}

/// A `Scratch` going back to the thread's stock when dropped.
pub(super) struct ScratchGuard(Option<Scratch>);

impl std::ops::Deref for ScratchGuard {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        self.0.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for ScratchGuard {
    fn deref_mut(&mut self) -> &mut Scratch {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(mut scratch) = self.0.take() {
            // A large response may have grown it: keep the stock small.
            if scratch.out.capacity() > 4 * READ_BUFFER {
                scratch.out = Vec::with_capacity(4096);
            }
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARE_SCRATCH {
                    s.push(scratch);
                }
            });
        }
    }
}

/// The downstream connection.
#[derive(Clone, Copy)]
pub(super) struct ConnInfo {
    pub(super) served: u64,
    pub(super) tls: bool,
    pub(super) peer: IpAddr,
    pub(super) local: Option<SocketAddr>,
}

/// Counts a request in `portico_http_requests_active` while alive.
pub(super) struct Active;

impl Active {
    pub(super) fn start() -> Self {
        full::listener_metrics().active.increment(1.0);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        full::listener_metrics().active.decrement(1.0);
    }
}

enum Next {
    KeepAlive,
    Close,
    /// The full path takes the connection from here, with the bytes read.
    Fallback,
    /// The client spoke the HTTP/2 preface (h2c): `fast_h2` takes the
    /// connection from here, with the bytes read.
    H2c,
}

#[async_trait]
impl ServerApp for FastH1 {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // PROXY protocol: on TLS listeners read before the handshake
        // (`proxy_protocol::BeforeTls`), here on plain ones.
        let mut prefix = Vec::new();
        if self.proxy.cfg.proxy_protocol && stream.get_ssl_digest().is_none() {
            prefix = super::proxy_protocol::accept(&mut *stream, &self.proxy.cfg.trusted_proxies)
                .await
                .ok()?;
        }
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let eligible = self.proxy.cfg.fast_path
            && peer.is_some_and(|p| {
                !super::client_addr::is_trusted(&self.proxy.cfg.trusted_proxies, p)
            });
        let Some(peer) = peer.filter(|_| eligible) else {
            let stream: Stream = if prefix.is_empty() {
                stream
            } else {
                Box::new(Replay::new(prefix, stream))
            };
            return ServerApp::process_new(&self.full, stream, shutdown).await;
        };
        let mut read = ReadBuf {
            len: prefix.len(),
            buf: prefix,
        };
        if read.buf.len() < FIRST_READ_BUFFER {
            read.buf.resize(FIRST_READ_BUFFER, 0);
        }
        let mut info = ConnInfo {
            served: 0,
            tls: stream.get_ssl_digest().is_some(),
            peer,
            local: digest
                .as_ref()
                .and_then(|d| d.local_addr())
                .and_then(|a| a.as_inet())
                .copied(),
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return super::fast_h2::serve(self, stream, info, shutdown).await;
        }
        loop {
            match self
                .serve_one(&mut stream, &mut read, &info, shutdown)
                .await
            {
                Next::KeepAlive => info.served += 1,
                Next::Close => {
                    let _ = AsyncWriteExt::shutdown(&mut stream).await;
                    return None;
                }
                Next::Fallback => {
                    let replay = Replay::new(read.buf[..read.len].to_vec(), stream);
                    return ServerApp::process_new(&self.full, Box::new(replay), shutdown).await;
                }
                Next::H2c => {
                    let replay = Replay::new(read.buf[..read.len].to_vec(), stream);
                    return super::fast_h2::serve(self, Box::new(replay), info, shutdown).await;
                }
            }
        }
    }

    async fn cleanup(&self) {
        self.full.cleanup().await;
    }
}

/// `fut` within `limit`. Most reads and writes on a busy connection
/// complete on their first poll: those arm no timer (a timer costs more
/// than the write).
pub(super) async fn bounded<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Result<F::Output, pingora::time::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    if let std::task::Poll::Ready(out) =
        std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await
    {
        return Ok(out);
    }
    pingora::time::timeout(limit, fut).await
}

/// Where a request ends in the client's bytes: the first empty line
/// (CRLF or a bare LF, as `httparse` accepts both).
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(i + 2) == Some(&b'\n')))
}

/// What went wrong with the upstream once the request was on its way.
pub(super) enum UpstreamFailure {
    Timeout(&'static str),
    Failed,
    /// No endpoint tried accepted a connection.
    Down,
}

impl FastH1 {
    /// The request target as routed: normalized per `[proxy.paths]`
    /// (`Owned` when that changed it); `None` when the full path must
    /// judge it (it answers 400 for what normalization refuses).
    pub(super) fn normalized<'t>(
        &self,
        target: &'t str,
        info: &ConnInfo,
    ) -> Option<std::borrow::Cow<'t, str>> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let normal = match self.proxy.cfg.paths.rules_for(info.local) {
            Some(rules) => super::path::normalize(path, rules).ok()?,
            None => None,
        };
        Some(match (normal, query) {
            (None, _) => target.into(),
            (Some(p), None) => p.into(),
            (Some(p), Some(q)) => format!("{p}?{q}").into(),
        })
    }

    /// The route and backend of a request the fast path may carry, or
    /// `None` for the full path: plugins configured, no route (the full
    /// path answers 404), a route that acts on requests, or a backend
    /// without endpoints or with plugins.
    pub(super) fn plain_route(
        &self,
        host: &str,
        target: &str,
        info: &ConnInfo,
    ) -> Option<(Arc<Route>, Arc<Pool>)> {
        let snap = self.proxy.snapshot.load();
        if !self.proxy.plugins.load().http.is_empty() {
            return None;
        }
        // Only the listener is checked here: a route with request
        // conditions (headers, method, query) is not plain and goes to
        // the full path, which checks them.
        let facts = portico_model::route_rule::RequestFacts {
            port: info.local.map(|a| a.port()),
            tls: info.tls,
            request: None,
        };
        let (route, _) = snap.routes.find_request(host, target, &facts)?;
        if !route.forwards_plainly(info.tls) {
            return None;
        }
        let pool = snap.pool(&route.backend)?;
        if pool.is_empty() || !pool.plugins().is_empty() || !pool.scoped_http().is_empty() {
            return None;
        }
        // Held, not the snapshot: a response may take minutes.
        Some((route.clone(), pool.clone()))
    }

    /// The route's timeouts, else the configured ones.
    pub(super) fn timeouts(&self, route: &Route) -> Timeouts {
        let cfg = &self.proxy.cfg;
        let policy = route.policy.as_ref().map(|p| &p.policy);
        let ms = |route: Option<u64>, default: u64| Duration::from_millis(route.unwrap_or(default));
        Timeouts {
            connect: ms(
                policy.and_then(|p| p.connect_timeout_ms),
                cfg.connect_timeout_ms,
            ),
            read: ms(policy.and_then(|p| p.read_timeout_ms), cfg.read_timeout_ms),
            write: ms(
                policy.and_then(|p| p.write_timeout_ms),
                cfg.write_timeout_ms,
            ),
        }
    }

    /// Sends the request (`sc.out`, then `body_left` more body bytes from
    /// the client) to `pick`'s endpoint and reads the response head: on
    /// a new connection, or a kept one (sent again on a new one when the
    /// kept one turns out closed and the request is all in hand); another
    /// endpoint when one refuses to connect, as the full path's
    /// `fail_to_connect`. Returns the upstream connection, the response's
    /// framing, the head's length and the bytes read into `sc.up`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward(
        &self,
        down: &mut Down<'_>,
        sc: &mut Scratch,
        pool: &Pool,
        pick: &mut portico_model::lb::Pick,
        done: &mut Done<'_>,
        timeouts: &Timeouts,
        mut body_left: u64,
    ) -> Result<(TcpStream, h1_wire::ResponseHead, usize, usize), Stop> {
        let cfg = &self.proxy.cfg;
        let max_idle = Duration::from_millis(cfg.upstream_idle_timeout_ms);
        let mut addr = pick.addr;
        // Whether the request can be sent again as it is: `body_left`
        // itself drops to 0 once the body has been streamed.
        let all_in_hand = body_left == 0;
        // An idle connection the upstream closed is found out by the first
        // write or read; the request is then sent again on a new one if it
        // is all in hand (its body not streamed yet).
        let mut parked = upstream_idle::take(addr, max_idle);
        if body_left > 0 {
            parked = parked.filter(upstream_idle::looks_alive);
        }
        let mut retried = false;
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let (mut conn, reused) = match parked.take() {
                Some(conn) => (conn, true),
                None => match bounded(timeouts.connect, TcpStream::connect(addr)).await {
                    Ok(Ok(conn)) => {
                        let _ = conn.set_nodelay(true);
                        (conn, false)
                    }
                    _ => {
                        // As the full path's `fail_to_connect`: passive
                        // health hears of it, and another endpoint is
                        // tried while retries and endpoints last.
                        metrics::counter!("portico_upstream_connect_errors_total", "backend" => pool.key().to_string())
                            .increment(1);
                        pool.report_failure(addr);
                        tried.push(addr);
                        let next = (tried.len() <= cfg.connect_retries
                            && pool.endpoints().len() > tried.len())
                        .then(|| {
                            pool.pick(&PickRequest {
                                preferred: None,
                                client_ip: Some(done.client),
                                exclude: &tried,
                            })
                        })
                        .flatten();
                        let Some(next) = next else {
                            return Err(Stop::Upstream(UpstreamFailure::Down));
                        };
                        *pick = next;
                        addr = pick.addr;
                        done.addr = addr;
                        done.tried = tried.len() + 1;
                        parked = upstream_idle::take(addr, max_idle).filter(|_| all_in_hand);
                        continue;
                    }
                },
            };
            pool.report_success(addr);
            match exchange(down, sc, &mut conn, &mut body_left, timeouts).await {
                Ok((head, head_len, len)) => return Ok((conn, head, head_len, len)),
                Err(Exchange::Downstream) => return Err(Stop::Downstream),
                Err(Exchange::Retry) if reused && !retried && all_in_hand => {
                    retried = true;
                    continue;
                }
                Err(Exchange::Retry) => return Err(Stop::Upstream(UpstreamFailure::Failed)),
                Err(Exchange::Upstream(f)) => return Err(Stop::Upstream(f)),
            }
        }
    }

    async fn serve_one(
        &self,
        s: &mut Stream,
        rb: &mut ReadBuf,
        info: &ConnInfo,
        shutdown: &ShutdownWatch,
    ) -> Next {
        let cfg = &self.proxy.cfg;
        // The next request: within the keep-alive timeout once one was served.
        while !head_complete(&rb.buf[..rb.len]) {
            if rb.len == rb.buf.len() {
                if rb.len >= READ_BUFFER {
                    return Next::Fallback;
                }
                rb.buf.resize(rb.len * 2, 0);
            }
            let wait = Duration::from_millis(if info.served > 0 || rb.len > 0 {
                cfg.downstream_keepalive_timeout_ms
            } else {
                cfg.read_timeout_ms.max(cfg.downstream_keepalive_timeout_ms)
            });
            match bounded(wait, s.read(&mut rb.buf[rb.len..])).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) if rb.len == 0 => return Next::Close,
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Next::Fallback,
                Ok(Ok(n)) => rb.len += n,
            }
        }
        if self.h2c && !info.tls && info.served == 0 && rb.buf[..rb.len].starts_with(H2_PREFACE) {
            return Next::H2c;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&rb.buf[..rb.len]) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return Next::Fallback,
        };
        let Some(plain) = h1_wire::plain_request(&req) else {
            return Next::Fallback;
        };
        // The full path answers 431 above this (the same sum as its own).
        let header_bytes = plain.target.len()
            + req
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len() + 4)
                .sum::<usize>();
        if header_bytes > cfg.max_request_header_bytes {
            return Next::Fallback;
        }
        let Some(target) = self.normalized(plain.target, info) else {
            return Next::Fallback;
        };
        let Some((route, pool)) = self.plain_route(plain.host, &target, info) else {
            return Next::Fallback;
        };
        let Some(mut pick) = pool.pick(&PickRequest {
            preferred: None,
            client_ip: Some(info.peer),
            exclude: &[],
        }) else {
            return Next::Fallback;
        };
        if matches!(target, std::borrow::Cow::Owned(_)) {
            metrics::counter!("portico_http_paths_normalized_total").increment(1);
        }
        let timeouts = self.timeouts(&route);
        let start = Instant::now();
        let mut sc = Scratch::take();
        let sc = &mut *sc;
        let _in_flight = InFlight::start();
        let active = Active::start();
        let body_here =
            (rb.len - head_len).min(usize::try_from(plain.body_len).unwrap_or(usize::MAX));
        let body_left = plain.body_len - body_here as u64;
        let mut id_buf = [0u8; 32];
        let request_id = match plain.request_id {
            Some(id) => id,
            None => {
                full::hex_into(fastrand::u128(..), &mut id_buf);
                &id_buf[..]
            }
        };
        sc.out.clear();
        h1_wire::write_upstream_head(
            &mut sc.out,
            plain.method,
            &target,
            req.headers.iter().map(|h| (h.name, h.value)),
            plain.host,
            false,
            &h1_wire::Forwarding {
                client: info.peer,
                tls: info.tls,
                server_port: info.local.map(|a| a.port()),
                request_id,
            },
            cfg.preserve_header_case,
        );
        sc.out
            .extend_from_slice(&rb.buf[head_len..head_len + body_here]);
        let mut done = Done {
            route: &route,
            plain: &plain,
            target: &target,
            request_id,
            version: "HTTP/1.1",
            client: info.peer,
            start,
            addr: pick.addr,
            tried: 1,
        };
        // Pipelined requests are not served, as on the full path (README,
        // Known limitations): bytes after this request close the connection.
        let pipelined = rb.len > head_len + body_here;
        let answer = Answer {
            head_request: plain.method == "HEAD",
            keepalive: !plain.close
                && !pipelined
                && !*shutdown.borrow()
                && !crate::shutdown::draining(),
            request_id,
        };
        let mut down = Down::H1 { s, answer: &answer };
        let forwarded = self
            .forward(
                &mut down, sc, &pool, &mut pick, &mut done, &timeouts, body_left,
            )
            .await;
        let Down::H1 { s, .. } = down else {
            unreachable!("made H1 above")
        };
        let (mut up, head, up_head, up_len) = match forwarded {
            Ok(answered) => answered,
            Err(Stop::Downstream) => return Next::Close,
            Err(Stop::Upstream(f)) => return self.upstream_failed(s, sc, info, &done, f).await,
        };
        let addr = done.addr;
        let max_idle = Duration::from_millis(cfg.upstream_idle_timeout_ms);

        // Body bytes that came with the head, then the rest.
        let mut chunks = h1_wire::ChunkedEnd::default();
        let mut remaining = match head.framing {
            Framing::Empty => 0,
            Framing::Length(n) => n,
            Framing::Chunked | Framing::UntilClose => u64::MAX,
        };
        let mut clean = true;
        let mut bytes_out = 0u64;
        let (mut from, mut to) = (up_head, up_len);
        loop {
            let avail = &sc.up[from..to];
            let (take, finished) = match head.framing {
                Framing::Empty | Framing::Length(_) => {
                    let take = avail
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    remaining -= take as u64;
                    (take, remaining == 0)
                }
                Framing::Chunked => match chunks.feed(avail) {
                    Ok(n) => (n, chunks.is_done()),
                    Err(_) => {
                        clean = false;
                        break;
                    }
                },
                Framing::UntilClose => (avail.len(), false),
            };
            if take < avail.len() {
                // More than the response: the upstream is not to be trusted again.
                clean = false;
            }
            sc.out.extend_from_slice(&avail[..take]);
            bytes_out += take as u64;
            if !sc.out.is_empty() {
                let w = bounded(timeouts.write, async {
                    s.write_all(&sc.out).await?;
                    s.flush().await
                })
                .await;
                sc.out.clear();
                if !matches!(w, Ok(Ok(()))) {
                    clean = false;
                    break;
                }
            }
            if finished {
                break;
            }
            match bounded(timeouts.read, up.read(&mut sc.up)).await {
                Ok(Ok(0)) if head.framing == Framing::UntilClose => break,
                Ok(Ok(n)) if n > 0 => (from, to) = (0, n),
                _ => {
                    // Cut short: the client sees the response end early.
                    clean = false;
                    break;
                }
            }
        }
        drop(active);
        if clean && head.reusable {
            upstream_idle::put(addr, up, max_idle);
        }
        drop(pick);
        self.record(
            info,
            &done,
            head.status,
            bytes_out,
            (!clean).then_some("response cut short"),
        );
        rb.len = 0;
        if answer.keepalive && head.framing != Framing::UntilClose && clean {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// The full path's error answer for an upstream that failed after the
    /// request was sent: 502 or 504 naming the Service, connection closed.
    async fn upstream_failed(
        &self,
        s: &mut Stream,
        sc: &mut Scratch,
        info: &ConnInfo,
        done: &Done<'_>,
        failure: UpstreamFailure,
    ) -> Next {
        let (status, what, body) = failure_answer(done, failure);
        sc.out.clear();
        sc.out.extend_from_slice(match status {
            504 => b"HTTP/1.1 504 Gateway Timeout\r\n",
            503 => b"HTTP/1.1 503 Service Unavailable\r\n",
            _ => b"HTTP/1.1 502 Bad Gateway\r\n",
        });
        sc.out
            .extend_from_slice(b"content-type: text/plain; charset=utf-8\r\ncontent-length: ");
        h1_wire::push_decimal(&mut sc.out, body.len() as u64);
        sc.out.extend_from_slice(b"\r\nserver: portico\r\ndate: ");
        sc.out
            .extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
        sc.out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        sc.out.extend_from_slice(body.as_bytes());
        let _ = bounded(Duration::from_secs(5), async {
            s.write_all(&sc.out).await?;
            s.flush().await
        })
        .await;
        self.record(info, done, status, body.len() as u64, Some(what));
        Next::Close
    }

    /// Metrics and the access log line, as the full path's `logging`.
    pub(super) fn record(
        &self,
        info: &ConnInfo,
        done: &Done<'_>,
        status: u16,
        bytes_out: u64,
        error: Option<&str>,
    ) {
        let elapsed = done.start.elapsed();
        let route = done.route;
        route
            .metrics
            .requests(&route.ingress, info.tls, code_class(status))
            .increment(1);
        route
            .metrics
            .duration(&route.ingress, info.tls)
            .record(elapsed.as_secs_f64());
        let m = full::listener_metrics();
        m.fast_path[usize::from(done.version != "HTTP/1.1")].increment(1);
        m.bytes_received[usize::from(info.tls)].increment(done.plain.body_len);
        m.bytes_sent[usize::from(info.tls)].increment(bytes_out);
        if self.proxy.access_log {
            let endpoint = done.addr.to_string();
            let backend = route.backend.to_string();
            full::write_access_log(&AccessRecord {
                request_id: std::str::from_utf8(done.request_id).ok(),
                client: Some(info.peer),
                listener: LISTENERS[usize::from(info.tls)],
                method: done.plain.method,
                host: done.plain.host,
                path: done.target.split_once('?').map_or(done.target, |(p, _)| p),
                version: done.version,
                status,
                route: &route.ingress,
                backend: Some(&backend),
                endpoint: Some(&endpoint),
                attempts: done.tried,
                elapsed,
                bytes_in: done.plain.body_len,
                bytes_out,
                error,
            });
        }
    }
}

/// Sends the request (`sc.out`, then the rest of the body from the
/// client), reads the response head into `sc.up` and writes the
/// downstream head into `sc.out`. Returns the response's framing, the
/// head's length and the bytes read.
async fn exchange(
    down: &mut Down<'_>,
    sc: &mut Scratch,
    up: &mut TcpStream,
    body_left: &mut u64,
    t: &Timeouts,
) -> Result<(h1_wire::ResponseHead, usize, usize), Exchange> {
    const WRITE_TIMED_OUT: &str = "writing to the upstream timed out";
    match bounded(t.write, up.write_all(&sc.out)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(Exchange::Retry),
        Err(_) => {
            return Err(Exchange::Upstream(UpstreamFailure::Timeout(
                WRITE_TIMED_OUT,
            )))
        }
    }
    while *body_left > 0 {
        let Down::H1 { s, .. } = down else {
            return Err(Exchange::Downstream);
        };
        let want = sc
            .up
            .len()
            .min(usize::try_from(*body_left).unwrap_or(usize::MAX));
        let n = match bounded(t.read, s.read(&mut sc.up[..want])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(Exchange::Downstream),
        };
        *body_left -= n as u64;
        match bounded(t.write, up.write_all(&sc.up[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Exchange::Upstream(UpstreamFailure::Failed)),
            Err(_) => {
                return Err(Exchange::Upstream(UpstreamFailure::Timeout(
                    WRITE_TIMED_OUT,
                )))
            }
        }
    }
    let limit = sc.up.len().min(RESPONSE_HEAD_LIMIT);
    let mut len = 0;
    loop {
        let n = match bounded(t.read, up.read(&mut sc.up[len..limit])).await {
            Ok(Ok(n)) if n > 0 => n,
            Ok(_) if len == 0 => return Err(Exchange::Retry),
            Ok(_) => return Err(Exchange::Upstream(UpstreamFailure::Failed)),
            Err(_) => {
                return Err(Exchange::Upstream(UpstreamFailure::Timeout(
                    "the upstream did not answer in time",
                )))
            }
        };
        len += n;
        // Interim answers (103 Early Hints...) are dropped, as Pingora
        // does by default; the final one may be in the same read.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&sc.up[..len]) {
                Ok(httparse::Status::Complete(head)) => match resp.code.unwrap_or(0) {
                    // Nothing here asked to switch protocols.
                    101 => return Err(Exchange::Upstream(UpstreamFailure::Failed)),
                    100..=199 => {
                        sc.up.copy_within(head..len, 0);
                        len -= head;
                        if len == 0 {
                            break;
                        }
                    }
                    _ => {
                        let head_request = match down {
                            Down::H1 { answer, .. } => answer.head_request,
                            Down::H2 { head_request, .. } => *head_request,
                        };
                        let refused = |bad: h1_wire::BadResponse| {
                            tracing::debug!(why = bad.0, "upstream response refused");
                            Exchange::Upstream(UpstreamFailure::Failed)
                        };
                        let framing =
                            h1_wire::response_head(&resp, head_request).map_err(refused)?;
                        match down {
                            Down::H1 { answer, .. } => {
                                sc.out.clear();
                                h1_wire::write_downstream_head(
                                    &mut sc.out,
                                    &resp,
                                    pingora::protocols::http::date::get_cached_date().as_bytes(),
                                    answer.keepalive && framing.framing != Framing::UntilClose,
                                    answer.request_id,
                                );
                            }
                            Down::H2 {
                                request_id, head, ..
                            } => {
                                *head = Some(
                                    super::fast_h2::response_header(&resp, request_id)
                                        .map_err(refused)?,
                                );
                            }
                        }
                        return Ok((framing, head, len));
                    }
                },
                Ok(httparse::Status::Partial) if len < limit => break,
                _ => return Err(Exchange::Upstream(UpstreamFailure::Failed)),
            }
        }
    }
}

/// Where a response head goes.
pub(super) enum Down<'a> {
    /// An HTTP/1.1 client: the rest of the request body is read from it,
    /// and the response head written into `sc.out` for it.
    H1 {
        s: &'a mut Stream,
        answer: &'a Answer<'a>,
    },
    /// An HTTP/2 stream (its request all in hand): the head is built
    /// for it.
    H2 {
        head_request: bool,
        request_id: &'a [u8],
        head: Option<Box<pingora::http::ResponseHeader>>,
    },
}

/// Why `forward` gave up.
pub(super) enum Stop {
    Upstream(UpstreamFailure),
    /// The client went away mid-request.
    Downstream,
}

/// The full path's error answer for an upstream failure: status, what
/// failed, and the body naming the Service and the endpoints tried.
pub(super) fn failure_answer(
    done: &Done<'_>,
    failure: UpstreamFailure,
) -> (u16, &'static str, String) {
    let (status, what) = match failure {
        UpstreamFailure::Timeout(what) => (504, what),
        UpstreamFailure::Failed => (502, "the upstream failed"),
        UpstreamFailure::Down => (503, "all endpoints tried are down"),
    };
    let body = format!(
        "{what} (service {}, endpoints tried: {})\n",
        done.route.backend, done.tried
    );
    (status, what, body)
}

/// What the downstream response head is written with.
pub(super) struct Answer<'a> {
    head_request: bool,
    /// The client connection may stay open (before the upstream's framing
    /// has its say).
    keepalive: bool,
    request_id: &'a [u8],
}

pub(super) struct Timeouts {
    pub(super) connect: Duration,
    pub(super) read: Duration,
    pub(super) write: Duration,
}

/// What a finished request is recorded with.
pub(super) struct Done<'a> {
    pub(super) route: &'a Route,
    pub(super) plain: &'a h1_wire::PlainRequest<'a>,
    pub(super) target: &'a str,
    pub(super) request_id: &'a [u8],
    /// As the access log writes it.
    pub(super) version: &'static str,
    pub(super) client: IpAddr,
    pub(super) start: Instant,
    pub(super) addr: SocketAddr,
    /// Endpoints tried, this one included.
    pub(super) tried: usize,
}

enum Exchange {
    /// Nothing came back on a reused connection: it may have been closed
    /// while idle, so the request is sent again on a new one when it can be.
    Retry,
    Upstream(UpstreamFailure),
    /// The client went away mid-request.
    Downstream,
}

#[cfg(test)]
mod tests {
    use super::head_complete;

    #[test]
    fn a_head_ends_at_the_first_empty_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\n\r\nbody"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r"));
        assert!(!head_complete(b""));
    }
}
