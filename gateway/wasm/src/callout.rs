//! `proxy_http_call`: a plugin's HTTP request to a named upstream, and
//! the answer delivered back through `proxy_on_http_call_response`.
//!
//! Upstream names are Portico backends, `namespace/service:port` (the
//! Service port's name, or its number when unnamed, as `/config` shows
//! it) of a Service that an Ingress or L4 listener uses, so a plugin
//! reaches only what the gateway already routes to, balanced like any
//! request. The request is HTTP/1.1; the answer is read whole (at most
//! `MAX_RESPONSE` bytes) within the plugin's timeout.
//!
//! Connections are kept alive and reused, per worker thread and endpoint:
//! a plugin that calls an auth service on every request would otherwise
//! open a connection per request and leave one socket in TIME_WAIT per
//! call, which runs out of ports for one destination at a few hundred
//! calls per second.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A call the plugin made; started by the host once the plugin returns.
#[derive(Debug, Clone)]
pub struct Callout {
    pub token: u32,
    /// The context that made it (its answer goes there).
    pub context: u32,
    pub upstream: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// The answer: headers with `:status` first, body, trailers (none over
/// HTTP/1.1). `None` for a call that failed (connect, timeout, bad
/// answer), which proxy-wasm reports as an answer with no headers.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The most response a callout reads.
pub const MAX_RESPONSE: usize = 4 << 20;

type Resolve = dyn Fn(&str) -> Result<SocketAddr, String> + Send + Sync;

static RESOLVER: OnceLock<Arc<Resolve>> = OnceLock::new();

/// Sets how upstream names become an endpoint (once, at startup).
pub fn set_resolver(f: Arc<Resolve>) {
    let _ = RESOLVER.set(f);
}

/// Whether a name can be called now: checked when the plugin calls, so a
/// bad name fails the call at once (`BadArgument`) rather than later.
pub fn resolve(upstream: &str) -> Result<SocketAddr, String> {
    match RESOLVER.get() {
        Some(r) => r(upstream),
        None => Err("HTTP callouts are not available in this process".into()),
    }
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// The request on the wire; `close` asks the server to close the
/// connection after answering.
pub fn encode(c: &Callout, close: bool) -> Result<Vec<u8>, String> {
    let method = header(&c.headers, ":method").unwrap_or(b"GET");
    let path = header(&c.headers, ":path").ok_or("the call has no :path header")?;
    let authority = header(&c.headers, ":authority").unwrap_or(c.upstream.as_bytes());
    let ok = |b: &[u8]| !b.iter().any(|&x| x == b'\r' || x == b'\n');
    let mut out = Vec::with_capacity(256 + c.body.len());
    for part in [method, path, authority] {
        if !ok(part) || part.is_empty() {
            return Err("a pseudo-header of the call is empty or has a line break".into());
        }
    }
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    for (k, v) in &c.headers {
        let framing = matches!(
            k.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        );
        if k.starts_with(':') || framing {
            continue;
        }
        if !ok(k.as_bytes()) || !ok(v) || k.is_empty() {
            return Err(format!("header {k:?} of the call has a line break"));
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", c.body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&c.body);
    Ok(out)
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// When the server closes the connection.
    Close,
    /// No body (1xx, 204, 304).
    Empty,
}

/// An answer's status line and headers.
struct Head {
    /// Bytes up to the body.
    len: usize,
    headers: Vec<(String, Vec<u8>)>,
    framing: Framing,
    /// The server keeps the connection open after this answer.
    keep_alive: bool,
}

/// The head of the final answer, once all of it has arrived (`None`
/// before); interim `1xx` answers before it are skipped. The answer to a
/// HEAD request has no body, whatever its headers say.
fn parse_head(raw: &[u8], head_request: bool) -> Result<Option<Head>, String> {
    let mut skipped = 0;
    loop {
        let Some(mut head) = parse_one_head(&raw[skipped..], head_request)? else {
            return Ok(None);
        };
        let interim = head.headers[0].1.first() == Some(&b'1') && head.headers[0].1 != b"101";
        if !interim {
            head.len += skipped;
            return Ok(Some(head));
        }
        skipped += head.len;
    }
}

fn parse_one_head(raw: &[u8], head_request: bool) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("the answer is not HTTP/1.1: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut out = vec![(":status".to_string(), status.to_string().into_bytes())];
    let mut chunked = false;
    let mut length = None;
    let mut keep_alive = resp.version == Some(1);
    for h in resp.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
        match name.as_str() {
            "transfer-encoding" => chunked = value.contains("chunked"),
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "connection" if value.contains("close") => keep_alive = false,
            "connection" if value.contains("keep-alive") => keep_alive = true,
            _ => {}
        }
        out.push((name, h.value.to_vec()));
    }
    let framing = match (status, chunked, length) {
        _ if head_request => Framing::Empty,
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        (_, true, _) => Framing::Chunked,
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::Close,
    };
    Ok(Some(Head {
        len,
        headers: out,
        framing,
        keep_alive: keep_alive && framing != Framing::Close,
    }))
}

/// The body, if all of it is in `rest`: (body, bytes it took).
fn body(framing: Framing, rest: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    Ok(match framing {
        Framing::Empty => Some((Vec::new(), 0)),
        Framing::Length(n) => (rest.len() >= n).then(|| (rest[..n].to_vec(), n)),
        Framing::Chunked => dechunk(rest)?,
        // Complete only at the end of the stream.
        Framing::Close => None,
    })
}

/// Parses a whole HTTP/1.1 response (read until the server closed) to a
/// request (`head_request`: a HEAD).
pub fn decode(raw: &[u8], head_request: bool) -> Result<CalloutResponse, String> {
    let head = parse_head(raw, head_request)?.ok_or("the answer ended inside its headers")?;
    let rest = &raw[head.len..];
    let body = match head.framing {
        Framing::Close => rest.to_vec(),
        framing => match body(framing, rest)? {
            Some((body, _)) => body,
            None if framing == Framing::Chunked => {
                return Err("the answer ended inside a chunk".into())
            }
            None => return Err("the answer ended inside its body".into()),
        },
    };
    Ok(CalloutResponse {
        headers: head.headers,
        body,
    })
}

/// A chunked body, if all of it is in `all`: (body, bytes it took,
/// trailers included).
fn dechunk(all: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut rest = all;
    let mut body = Vec::new();
    let line = |rest: &[u8]| rest.windows(2).position(|w| w == b"\r\n");
    loop {
        let Some(line_end) = line(rest) else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailer lines (ignored), then an empty line.
            loop {
                let Some(end) = line(rest) else {
                    return Ok(None);
                };
                rest = &rest[end + 2..];
                if end == 0 {
                    return Ok(Some((body, all.len() - rest.len())));
                }
            }
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Idle kept-alive connections of this thread: (endpoint, connection,
/// idle since). Per thread because each worker is its own runtime, and a
/// connection belongs to the runtime that opened it.
struct Idle(Vec<(SocketAddr, TcpStream, Instant)>);

thread_local! {
    static IDLE: RefCell<Idle> = const { RefCell::new(Idle(Vec::new())) };
}

/// At most this many idle connections per thread (all endpoints)...
const MAX_IDLE: usize = 32;
/// ...each kept this long: shorter than the keep-alive timeouts of
/// common servers, so one rarely closes a connection just as it is
/// reused (and a closed one is noticed before use, see `take_idle`).
const IDLE_FOR: Duration = Duration::from_secs(4);

/// An idle connection to `addr` that is still open, if any.
fn take_idle(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let idle = &mut idle.borrow_mut().0;
        idle.retain(|(_, _, since)| since.elapsed() < IDLE_FOR);
        while let Some(i) = idle.iter().rposition(|(a, _, _)| *a == addr) {
            let (_, s, _) = idle.swap_remove(i);
            // Closed by the server (end of stream), or it sent something
            // unasked: not reusable.
            let open = matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if open {
                return Some(s);
            }
        }
        None
    })
}

fn put_idle(addr: SocketAddr, s: TcpStream) {
    IDLE.with(|idle| {
        let idle = &mut idle.borrow_mut().0;
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push((addr, s, Instant::now()));
    });
}

/// Why one attempt failed, and whether the request may go again on a new
/// connection: only from a reused connection that was closed before any
/// of the answer came, with a request that is safe to repeat (or was
/// never written).
struct Failed {
    error: String,
    retry: bool,
}

/// Performs the call, on a kept-alive connection when there is one.
pub async fn perform(addr: SocketAddr, c: &Callout) -> Result<CalloutResponse, String> {
    let request = encode(c, false)?;
    let method = header(&c.headers, ":method").unwrap_or(b"GET");
    let idempotent = matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE");
    let head_request = method == b"HEAD";
    let work = async {
        if let Some(s) = take_idle(addr) {
            match exchange(addr, s, &request, idempotent, head_request).await {
                Err(f) if f.retry => {}
                done => {
                    count_connection(true);
                    return done.map_err(|f| f.error);
                }
            }
        }
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        count_connection(false);
        exchange(addr, s, &request, idempotent, head_request)
            .await
            .map_err(|f| f.error)
    };
    match tokio::time::timeout(c.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {addr} within {:?}", c.timeout)),
    }
}

fn count_connection(reused: bool) {
    let reused = if reused { "true" } else { "false" };
    metrics::counter!("portico_callout_connections_total", "reused" => reused).increment(1);
}

/// One request and its answer on `s`, which goes back to the idle
/// connections if the answer leaves it usable.
async fn exchange(
    addr: SocketAddr,
    mut s: TcpStream,
    request: &[u8],
    idempotent: bool,
    head_request: bool,
) -> Result<CalloutResponse, Failed> {
    let fail = |error: String, retry: bool| Failed { error, retry };
    if let Err(e) = s.write_all(request).await {
        return Err(fail(format!("write to {addr}: {e}"), true));
    }
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let mut head: Option<Head> = None;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let retry = raw.is_empty() && idempotent;
                return Err(fail(format!("read from {addr}: {e}"), retry));
            }
        };
        if n == 0 {
            if raw.is_empty() {
                return Err(fail(
                    format!("{addr} closed the connection without answering"),
                    idempotent,
                ));
            }
            // The answer ends with the stream (or was cut short).
            return decode(&raw, head_request).map_err(|e| fail(e, false));
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_RESPONSE {
            return Err(fail(
                format!("the answer is larger than {MAX_RESPONSE} bytes"),
                false,
            ));
        }
        if head.is_none() {
            head = parse_head(&raw, head_request).map_err(|e| fail(e, false))?;
        }
        let Some(h) = &head else { continue };
        let rest = &raw[h.len..];
        if let Some((body, used)) = body(h.framing, rest).map_err(|e| fail(e, false))? {
            // Bytes past the answer would be read as the next one's.
            let reusable = h.keep_alive && used == rest.len();
            let headers = head.take().map(|h| h.headers).unwrap_or_default();
            if reusable {
                put_idle(addr, s);
            }
            return Ok(CalloutResponse { headers, body });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(headers: &[(&str, &str)]) -> Callout {
        Callout {
            token: 1,
            context: 2,
            upstream: "default/auth:http".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: b"hi".to_vec(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn requests_are_framed_by_the_host() {
        let c = call(&[
            (":method", "POST"),
            (":path", "/check"),
            (":authority", "auth"),
            ("x-a", "1"),
            ("content-length", "999"),
            ("connection", "upgrade"),
        ]);
        let wire = encode(&c, false).unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(
            text.starts_with("POST /check HTTP/1.1\r\nhost: auth\r\n"),
            "{text}"
        );
        assert!(text.contains("x-a: 1\r\n"));
        assert!(text.contains("content-length: 2\r\n") && !text.contains("999"));
        assert!(text.ends_with("\r\n\r\nhi"));
        assert!(!text.contains("connection"), "{text}");
        let once = String::from_utf8(encode(&c, true).unwrap()).unwrap();
        assert!(once.ends_with("connection: close\r\n\r\nhi"), "{once}");
        assert!(
            encode(&call(&[(":method", "GET")]), false).is_err(),
            "no :path"
        );
        assert!(encode(&call(&[(":path", "/a\r\nx: y")]), false).is_err());
    }

    #[test]
    fn answers_with_length_or_chunks() {
        let r = decode(
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-Y: z\r\n\r\nabcdef",
            false,
        )
        .unwrap();
        assert_eq!(r.headers[0], (":status".to_string(), b"201".to_vec()));
        assert!(r.headers.contains(&("x-y".to_string(), b"z".to_vec())));
        assert_eq!(r.body, b"abc");
        let r = decode(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", false)
            .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(decode(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false).is_err());
        assert!(decode(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
            false
        )
        .is_err());
        assert!(decode(b"garbage", false).is_err());
        // No length: the body is whatever came before the end.
        let r = decode(b"HTTP/1.1 200 OK\r\n\r\nall of it", false).unwrap();
        assert_eq!(r.body, b"all of it");
        let r = decode(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert!(r.body.is_empty());
        // A HEAD's answer has a length but no body.
        let r = decode(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap();
        assert!(r.body.is_empty());
        // Interim answers are skipped.
        let r = decode(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        )
        .unwrap();
        assert_eq!(r.headers[0].1, b"200");
        assert_eq!(r.body, b"ok");
    }

    #[test]
    fn an_answer_is_complete_when_its_framing_says_so() {
        let ka = |raw: &[u8]| {
            let h = parse_head(raw, false).unwrap().unwrap();
            (
                h.framing,
                h.keep_alive,
                body(h.framing, &raw[h.len..]).unwrap(),
            )
        };
        let (f, keep, b) = ka(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(
            (f, keep, b),
            (Framing::Length(2), true, Some((b"ok".to_vec(), 2)))
        );
        let (_, _, b) = ka(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok");
        assert_eq!(b, None, "more to come");
        // Chunked with a trailer: all of it is taken.
        let raw =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n";
        let (f, keep, b) = ka(raw);
        assert_eq!((f, keep), (Framing::Chunked, true));
        let (body, used) = b.unwrap();
        let head = parse_head(raw, false).unwrap().unwrap().len;
        assert_eq!((body.as_slice(), used), (&b"ok"[..], raw.len() - head));
        assert_eq!(
            ka(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n").2,
            None
        );
        // Not kept: asked to close, HTTP/1.0, or a body that ends with the stream.
        assert!(!ka(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").1);
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").1);
        assert!(ka(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").1);
        let (f, keep, b) = ka(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
        assert_eq!((f, keep, b), (Framing::Close, false, None));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nX: y", false)
            .unwrap()
            .is_none());
    }

    /// A server on 127.0.0.1 that answers every request on a connection
    /// with `answer`, closing after `per_connection` answers (with
    /// `unanswered`, once the next request has arrived); counts the
    /// connections it accepted.
    fn server_with(
        answer: &'static [u8],
        per_connection: usize,
        unanswered: bool,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    let reads = per_connection.saturating_add(unanswered.into());
                    for i in 0..reads {
                        // Each request ends with its 2-byte body ("hi").
                        while !got.windows(6).any(|w| w == b"\r\n\r\nhi") {
                            match s.read(&mut buf) {
                                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                                _ => return,
                            }
                        }
                        got.clear();
                        if i == per_connection || s.write_all(answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn server(
        answer: &'static [u8],
        per_connection: usize,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        server_with(answer, per_connection, false)
    }

    fn run_calls(addr: SocketAddr, n: usize, method: &str) -> Vec<Result<CalloutResponse, String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = call(&[
            (":method", method),
            (":path", "/check"),
            (":authority", "auth"),
        ]);
        rt.block_on(async {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(perform(addr, &c).await);
            }
            out
        })
    }

    #[test]
    fn calls_reuse_a_kept_alive_connection() {
        let (addr, accepted) = server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes",
            usize::MAX,
        );
        for r in run_calls(addr, 5, "POST") {
            assert_eq!(r.unwrap().body, b"yes");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Chunked answers end where their last chunk says, too.
        let (addr, accepted) = server(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nyes\r\n0\r\n\r\n",
            usize::MAX,
        );
        for r in run_calls(addr, 3, "GET") {
            assert_eq!(r.unwrap().body, b"yes");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_connection_the_server_closes_is_not_reused() {
        // Says so.
        let (addr, accepted) = server(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nyes",
            1,
        );
        for r in run_calls(addr, 3, "POST") {
            assert_eq!(r.unwrap().body, b"yes");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Does not say so, and closes after each answer: noticed before
        // the connection is used again, or (if the close arrives just
        // after that check) the GET goes again on a new connection.
        let (addr, accepted) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes", 1);
        for r in run_calls(addr, 3, "GET") {
            assert_eq!(r.unwrap().body, b"yes");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn a_kept_connection_closed_under_a_request_retries_it_only_if_safe() {
        // The server takes the second request, then closes without an
        // answer (as when its keep-alive timeout fires just then).
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes";
        let (addr, accepted) = server_with(ok, 1, true);
        for r in run_calls(addr, 2, "GET") {
            assert_eq!(r.unwrap().body, b"yes");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // A POST might have been acted on: it is not sent twice.
        let (addr, accepted) = server_with(ok, 1, true);
        let r = run_calls(addr, 2, "POST");
        assert_eq!(r[0].as_ref().unwrap().body, b"yes");
        let e = r[1].as_ref().unwrap_err();
        assert!(e.contains("closed the connection without answering"), "{e}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

/// The backend (`namespace/service:port`) a plugin's callout target names:
/// a cluster mapped in `[plugins.clusters]`, Istio's
/// `outbound|PORT|SUBSET|SERVICE.NAMESPACE.svc[.cluster.local]` (what
/// plugins written for Istio pass), or the name itself.
pub fn cluster_target<'a>(
    clusters: &'a std::collections::BTreeMap<String, String>,
    name: &'a str,
) -> std::borrow::Cow<'a, str> {
    if let Some(backend) = clusters.get(name) {
        return backend.as_str().into();
    }
    let istio = name.strip_prefix("outbound|").and_then(|rest| {
        let mut parts = rest.splitn(3, '|');
        let (port, _subset, host) = (parts.next()?, parts.next()?, parts.next()?);
        let host = host
            .strip_suffix(".cluster.local")
            .unwrap_or(host)
            .strip_suffix(".svc")?;
        let (service, namespace) = host.split_once('.')?;
        (!port.is_empty()
            && !service.is_empty()
            && !namespace.is_empty()
            && !namespace.contains('.'))
        .then(|| format!("{namespace}/{service}:{port}"))
    });
    match istio {
        Some(backend) => backend.into(),
        None => name.into(),
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::cluster_target;

    #[test]
    fn cluster_names_map_to_backends() {
        let clusters = [("httpbin".to_string(), "web/httpbin:http".to_string())]
            .into_iter()
            .collect();
        for (name, backend) in [
            ("httpbin", "web/httpbin:http"),
            (
                "outbound|80||httpbin.default.svc.cluster.local",
                "default/httpbin:80",
            ),
            ("outbound|8080|v1|api.shop.svc", "shop/api:8080"),
            ("shop/api:http", "shop/api:http"),
            ("unknown", "unknown"),
            (
                "outbound|80||httpbin.example.com",
                "outbound|80||httpbin.example.com",
            ),
            (
                "outbound|80||a.b.c.svc.cluster.local",
                "outbound|80||a.b.c.svc.cluster.local",
            ),
        ] {
            assert_eq!(cluster_target(&clusters, name), backend, "{name}");
        }
    }
}
