//! The HTTP/1.1 client under both plugin callouts (`proxy_http_call` and
//! the control ABI's `portico_http_call`), on hyper's client connection:
//! hyper writes and reads the wire (framing, chunked bodies, interim 1xx
//! answers, HEAD); this module turns proxy-wasm's header pairs into a
//! request, reads the answer within a size limit, and keeps idle
//! connections per worker thread.
//!
//! The pool is this module's and not hyper-util's pooled client because
//! the retry rule needs to know whether a connection was reused: a call
//! goes again on a new connection only when a kept-alive one was closed
//! under it and the method is safe to repeat (or the request was never
//! written). hyper-util's client retries only the latter and does not say
//! which connection failed.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// The most response body a call reads.
pub const MAX_RESPONSE: usize = 4 << 20;

/// Headers as proxy-wasm passes them: lowercase names, `:status` first in
/// an answer.
pub type Pairs = Vec<(String, Vec<u8>)>;

/// An answer: headers with `:status` first, and the body.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub headers: Pairs,
    pub body: Vec<u8>,
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// The request `headers` (pseudo-headers `:method`, `:path`,
/// `:authority`; `authority` when it has none) describe. The host frames
/// the body itself: a plugin's `content-length`, `transfer-encoding` and
/// `connection` are dropped.
pub fn request(
    headers: &[(String, Vec<u8>)],
    body: Bytes,
    authority: &str,
) -> Result<http::Request<Full<Bytes>>, String> {
    let method = header(headers, ":method").unwrap_or(b"GET");
    let path = header(headers, ":path").ok_or("the call has no :path header")?;
    let authority = header(headers, ":authority").unwrap_or(authority.as_bytes());
    let method = http::Method::from_bytes(method)
        .map_err(|_| format!("the call's :method {:?} is not a method", lossy(method)))?;
    let uri = http::Uri::try_from(path)
        .ok()
        .filter(|u| u.scheme().is_none() && path.starts_with(b"/"))
        .ok_or_else(|| format!("the call's :path {:?} is not a path", lossy(path)))?;
    let mut req = http::Request::builder().method(method).uri(uri);
    let host = http::HeaderValue::from_bytes(authority)
        .ok()
        .filter(|_| !authority.is_empty())
        .ok_or_else(|| format!("the call's :authority {:?} is not valid", lossy(authority)))?;
    req = req.header(http::header::HOST, host);
    for (k, v) in headers {
        let framing = matches!(
            k.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        );
        if k.starts_with(':') || framing {
            continue;
        }
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("the call's header name {k:?} is not valid"))?;
        let value = http::HeaderValue::from_bytes(v)
            .map_err(|_| format!("the call's header {k:?} has a value that is not valid"))?;
        req = req.header(name, value);
    }
    req.body(Full::new(body)).map_err(|e| e.to_string())
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// A new HTTP/1.1 connection over `io`, driven by a task of the current
/// runtime.
pub async fn handshake<IO>(io: IO, peer: &str) -> Result<SendRequest<Full<Bytes>>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP with {peer}: {e}"))?;
    tokio::spawn(async move {
        // Its errors reach the caller through the request's future.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads the whole answer, at most `MAX_RESPONSE` bytes of body.
pub async fn read_answer(
    resp: http::Response<hyper::body::Incoming>,
    peer: &str,
) -> Result<Answer, String> {
    let (head, body) = resp.into_parts();
    let mut headers = Vec::with_capacity(head.headers.len() + 1);
    headers.push((
        ":status".to_string(),
        head.status.as_str().as_bytes().to_vec(),
    ));
    for (k, v) in &head.headers {
        headers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
    }
    let body = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("the answer is larger than {MAX_RESPONSE} bytes")
            } else {
                format!("read from {peer}: {e}")
            }
        })?
        .to_bytes();
    Ok(Answer {
        headers,
        body: body.to_vec(),
    })
}

/// Why a request failed, in words, with hyper's cause.
fn failure(e: &hyper::Error, peer: &str) -> String {
    use std::error::Error;
    if e.is_incomplete_message() || e.is_canceled() {
        return format!("{peer} closed the connection without answering");
    }
    match e.source() {
        Some(cause) => format!("exchange with {peer}: {e}: {cause}"),
        None => format!("exchange with {peer}: {e}"),
    }
}

/// Idle kept-alive connections of this thread: (endpoint, connection,
/// idle since). Per thread because each worker is its own runtime, and a
/// connection's task belongs to the runtime that opened it.
type Idle = Vec<(SocketAddr, SendRequest<Full<Bytes>>, Instant)>;

thread_local! {
    static IDLE: RefCell<Idle> = const { RefCell::new(Vec::new()) };
}

/// At most this many idle connections per thread (all endpoints)...
const MAX_IDLE: usize = 32;
/// ...each kept this long: shorter than the keep-alive timeouts of
/// common servers, so one rarely closes a connection just as it is
/// reused.
const IDLE_FOR: Duration = Duration::from_secs(4);

/// An idle connection to `addr` that hyper has not seen closed, if any.
fn take_idle(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    IDLE.with(|idle| {
        let idle = &mut idle.borrow_mut();
        idle.retain(|(_, s, since)| since.elapsed() < IDLE_FOR && !s.is_closed());
        let i = idle.iter().rposition(|(a, _, _)| *a == addr)?;
        Some(idle.swap_remove(i).1)
    })
}

fn put_idle(addr: SocketAddr, s: SendRequest<Full<Bytes>>) {
    IDLE.with(|idle| {
        let idle = &mut idle.borrow_mut();
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push((addr, s, Instant::now()));
    });
}

fn count_connection(reused: bool) {
    let reused = if reused { "true" } else { "false" };
    metrics::counter!("portico_callout_connections_total", "reused" => reused).increment(1);
}

/// Sends the request built by `build` to `addr` over plain TCP, on a
/// kept-alive connection when there is one, and reads the answer. The
/// caller bounds it in time.
pub async fn pooled<F>(addr: SocketAddr, build: F) -> Result<Answer, String>
where
    F: Fn() -> Result<http::Request<Full<Bytes>>, String>,
{
    let peer = addr.to_string();
    let req = build()?;
    let idempotent = req.method().is_idempotent();
    let mut req = Some(req);
    if let Some(mut s) = take_idle(addr) {
        // Waits for hyper to have read the previous answer's end; errors
        // when the server closed the connection since.
        if s.ready().await.is_ok() {
            let sent = s.try_send_request(req.take().expect("built")).await;
            match sent {
                Ok(resp) => {
                    count_connection(true);
                    return finish(addr, s, resp, &peer).await;
                }
                Err(mut e) => {
                    // Never written: it can go again as it is. Written but
                    // unanswered: only if repeating it is harmless.
                    req = e.take_message();
                    if req.is_none() && !idempotent {
                        count_connection(true);
                        return Err(failure(e.error(), &peer));
                    }
                }
            }
        }
    }
    let req = match req {
        Some(r) => r,
        None => build()?,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut s = handshake(tcp, &peer).await?;
    count_connection(false);
    let resp = s.send_request(req).await.map_err(|e| failure(&e, &peer))?;
    finish(addr, s, resp, &peer).await
}

/// Reads the answer; the connection goes back to the pool if hyper keeps
/// it open after it.
async fn finish(
    addr: SocketAddr,
    s: SendRequest<Full<Bytes>>,
    resp: http::Response<hyper::body::Incoming>,
    peer: &str,
) -> Result<Answer, String> {
    let answer = read_answer(resp, peer).await?;
    if !s.is_closed() {
        put_idle(addr, s);
    }
    Ok(answer)
}

/// Sends one request on a new connection over `io` (plain or TLS) and
/// reads the answer; the connection is not kept.
pub async fn once<IO>(io: IO, peer: &str, req: http::Request<Full<Bytes>>) -> Result<Answer, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut s = handshake(io, peer).await?;
    let resp = s.send_request(req).await.map_err(|e| failure(&e, peer))?;
    read_answer(resp, peer).await
}
