//! HTTP/1.1 wire work of the fast path (`proxy::fast_h1`): which requests
//! it may take, the upstream request and downstream response heads it
//! writes, and where a response body ends. Pure functions over byte
//! slices parsed by `httparse`; no I/O, no allocation beyond the output
//! buffers the caller owns and reuses.
//!
//! The fast path only takes requests whose meaning is plain. Anything
//! else (a framing or header the full path judges, an upgrade, a body in
//! chunks, HTTP/1.0) is `None` here and goes to the full Pingora path
//! unchanged, which answers it as it always has: the defence table in
//! `integration-tests/tests/defences.rs` holds for both.

use std::net::IpAddr;

/// Most header lines a fast-path request may have; more goes to the full path.
pub const MAX_REQUEST_HEADERS: usize = 48;
/// Most header lines of an upstream response head.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// A request the fast path can carry: what it needs of it, borrowed from
/// the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainRequest<'a> {
    pub method: &'a str,
    /// The request target as sent (origin-form: path and query).
    pub target: &'a str,
    pub host: &'a str,
    /// Request body length (`Content-Length`, 0 without one).
    pub body_len: u64,
    /// The client asked to close after this request.
    pub close: bool,
    /// The client's `X-Request-Id`, when usable as ours.
    pub request_id: Option<&'a [u8]>,
}

/// Request headers the fast path drops: hop-by-hop ones (as Pingora strips
/// them) and the forwarding headers it writes itself (an untrusted peer's
/// are replaced, never appended to).
fn dropped_request_header(name: &str) -> bool {
    const DROPPED: [&str; 15] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
    ];
    DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case("x-request-id")
        || name.eq_ignore_ascii_case("forwarded")
}

/// Methods the fast path carries: the ones with no special handling.
fn plain_method(m: &str) -> bool {
    matches!(
        m,
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS"
    )
}

/// `Some` when `req` (a complete head) is one the fast path may carry.
pub fn plain_request<'a>(req: &httparse::Request<'_, 'a>) -> Option<PlainRequest<'a>> {
    let method = req.method?;
    let target = req.path?;
    if req.version != Some(1) || !plain_method(method) || !target.starts_with('/') {
        return None;
    }
    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    let mut request_id = None;
    let mut seen_request_id = false;
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            let v = std::str::from_utf8(h.value).ok()?;
            if host.replace(v).is_some() || !super::http::valid_host(v) {
                return None;
            }
        } else if n.eq_ignore_ascii_case("content-length") {
            if body_len.is_some() || h.value.is_empty() || h.value.len() > 15 {
                return None;
            }
            if !h.value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            body_len = Some(
                h.value
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
            );
        } else if n.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    // Nominates other headers as hop-by-hop, or asks to
                    // upgrade: the full path's business.
                    return None;
                }
            }
        } else if n.eq_ignore_ascii_case("x-request-id") {
            // As the full path: the first one, when usable.
            if !seen_request_id {
                seen_request_id = true;
                request_id = Some(h.value).filter(|v| usable_request_id(v));
            }
        } else if n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("upgrade")
            || n.eq_ignore_ascii_case("expect")
            || n.eq_ignore_ascii_case("http2-settings")
        {
            return None;
        }
    }
    Some(PlainRequest {
        method,
        target,
        host: host?,
        body_len: body_len.unwrap_or(0),
        close,
        request_id,
    })
}

/// A client's `X-Request-Id` Portico keeps as the request's id: what
/// `HeaderValue::to_str` accepts (visible ASCII and tab), 1 to 200 bytes,
/// as the full path decides.
pub fn usable_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 200 && v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The forwarding headers of one upstream request, for a client that is
/// the peer itself (no trusted proxy in between).
pub struct Forwarding<'a> {
    pub client: IpAddr,
    pub tls: bool,
    pub server_port: Option<u16>,
    pub request_id: &'a [u8],
}

/// Writes the upstream request head into `out`: the request line with
/// `target` (the normalized path), the client's headers less the dropped
/// ones, then the forwarding set, as the full path's
/// `upstream_request_filter` writes it for an untrusted peer. Names go in
/// lowercase, as on the full path, unless `preserve_case`
/// (`proxy.preserve_header_case`).
///
/// `headers` are (name, value) pairs; an HTTP/2 request's carry no `Host`
/// (its `:authority` is `host`), and `add_host` then writes one, as the
/// full path does for an HTTP/1.1 upstream.
#[allow(clippy::too_many_arguments)]
pub fn write_upstream_head<'h>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    host: &str,
    add_host: bool,
    fwd: &Forwarding<'_>,
    preserve_case: bool,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if add_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if dropped_request_header(name) {
            continue;
        }
        if preserve_case {
            out.extend_from_slice(name.as_bytes());
        } else {
            out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        }
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let mut ip = [0u8; 39];
    let ip = ip_text(fwd.client, &mut ip);
    out.extend_from_slice(b"x-forwarded-for: ");
    out.extend_from_slice(ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(if fwd.tls { b"https" } else { b"http" });
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(host.as_bytes());
    if let Some(port) = fwd.server_port {
        out.extend_from_slice(b"\r\nx-forwarded-port: ");
        push_decimal(out, u64::from(port));
    }
    out.extend_from_slice(b"\r\nx-real-ip: ");
    out.extend_from_slice(ip);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(fwd.request_id);
    out.extend_from_slice(b"\r\n\r\n");
}

/// The address as `Display` writes it, without `fmt` for IPv4 (nearly
/// every client; `fmt` costs more than a microsecond of a request). Both
/// HTTP paths write client addresses with it.
pub(super) fn ip_text(ip: IpAddr, buf: &mut [u8; 39]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            &buf[..len]
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            let len = cursor.position() as usize;
            &buf[..len]
        }
    }
}

pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// How an upstream response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes; the downstream connection closes too.
    UntilClose,
}

/// What the fast path needs of an upstream response head.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The upstream connection may carry another request afterwards.
    pub reusable: bool,
}

/// Why an upstream response is not passed on: the upstream failed.
#[derive(Debug, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Reads the framing of a complete response head (RFC 9112 §6.3): two
/// `Content-Length`s, a `Transfer-Encoding` other than `chunked`, or both
/// at once are the upstream failing (502), never guessed at.
pub fn response_head(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<ResponseHead, BadResponse> {
    let status = resp.code.ok_or(BadResponse("no status"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = resp.version != Some(1);
    for h in resp.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            let v = h.value;
            if length.is_some() || v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit)
            {
                return Err(BadResponse("invalid or repeated Content-Length"));
            }
            length = Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if n.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if chunked && length.is_some() {
        return Err(BadResponse("both Content-Length and Transfer-Encoding"));
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(ResponseHead {
        status,
        framing,
        reusable: !close && framing != Framing::UntilClose,
    })
}

/// Response headers the fast path does not pass on: the connection's own
/// (it writes its own `Connection`), `Date` (its own, as Pingora does) and
/// `X-Request-Id` (the request's).
fn dropped_response_header(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "date",
        "x-request-id",
    ]
    .iter()
    .any(|d| d.eq_ignore_ascii_case(name))
}

/// Writes the downstream response head: the upstream's status and headers
/// less the dropped ones, then `date`, `connection` and `x-request-id`.
pub fn write_downstream_head(
    out: &mut Vec<u8>,
    resp: &httparse::Response<'_, '_>,
    date: &[u8],
    keepalive: bool,
    request_id: &[u8],
) {
    let status = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    let reason = resp.reason.unwrap_or("");
    if reason.is_empty() {
        let canonical = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(canonical.as_bytes());
    } else {
        out.extend_from_slice(reason.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if dropped_response_header(h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(if keepalive {
        b"\r\nconnection: keep-alive\r\nx-request-id: "
    } else {
        b"\r\nconnection: close\r\nx-request-id: "
    });
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Finds where a chunked body ends in bytes that arrive in pieces, so the
/// body can be relayed as it is (chunk framing and trailers included)
/// and the connection reused after it. Strict: a size line must end in
/// CRLF and data in CRLF; anything else stops the relay.
#[derive(Debug, Default)]
pub struct ChunkedEnd {
    state: ChunkState,
    /// The chunk size read so far (a size line may span two reads).
    size: u64,
    /// Bytes of the current size, extension or trailer line seen so far.
    line_len: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// After the digits: extensions up to CR.
    Extension,
    /// The LF ending a size line.
    SizeLf,
    /// Data bytes left in the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    TrailerStart,
    Trailer,
    /// The LF of the empty line that ends the body.
    EndLf,
    Done,
}

/// A chunked body that cannot be relayed safely.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

/// Longest chunk extension or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

impl ChunkedEnd {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes `buf`; returns how many of its bytes belong to the body
    /// (all of them unless the body ended inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        self.feed_data(buf, |_| {})
    }

    /// As `feed`, and hands `data` the ranges of `buf` that are chunk
    /// data (what an HTTP/2 client gets: the body without its framing).
    pub fn feed_data(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.line_len += 1;
                        // 15 hex digits: far beyond any body, never overflows.
                        if self.line_len > 15 {
                            return Err(BadChunk);
                        }
                        self.size = self.size * 16 + u64::from(d);
                        ChunkState::Size
                    }
                    None if self.line_len == 0 => return Err(BadChunk),
                    None if b == b'\r' => ChunkState::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.line_len = 0;
                        ChunkState::Extension
                    }
                    None => return Err(BadChunk),
                },
                ChunkState::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE || b == b'\n' {
                        return Err(BadChunk);
                    }
                    if b == b'\r' {
                        ChunkState::SizeLf
                    } else {
                        ChunkState::Extension
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    let size = std::mem::take(&mut self.size);
                    self.line_len = 0;
                    if size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data(size)
                    }
                }
                ChunkState::Data(left) => {
                    let take = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(i..i + take);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    continue;
                }
                ChunkState::DataCr if b == b'\r' => ChunkState::DataLf,
                ChunkState::DataLf if b == b'\n' => ChunkState::Size,
                ChunkState::DataCr | ChunkState::DataLf => return Err(BadChunk),
                ChunkState::TrailerStart if b == b'\r' => ChunkState::EndLf,
                ChunkState::TrailerStart | ChunkState::Trailer => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err(BadChunk);
                    }
                    if b == b'\n' {
                        self.line_len = 0;
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Trailer
                    }
                }
                ChunkState::EndLf if b == b'\n' => {
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::EndLf => return Err(BadChunk),
            };
            i += 1;
        }
        Ok(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Option<PlainRequest<'_>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        plain_request(&req)
    }

    #[test]
    fn a_plain_get_is_taken() {
        let p = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: x.test:8080\r\nX-Request-Id: abc\r\n\r\n")
            .unwrap();
        assert_eq!(p.method, "GET");
        assert_eq!(p.target, "/a?b=1");
        assert_eq!(p.host, "x.test:8080");
        assert_eq!(p.body_len, 0);
        assert!(!p.close);
        assert_eq!(p.request_id, Some(&b"abc"[..]));
        let p =
            parse(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\nConnection: close\r\n\r\n")
                .unwrap();
        assert_eq!(p.body_len, 12);
        assert!(p.close);
    }

    #[test]
    fn anything_the_full_path_judges_is_left_to_it() {
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-secret\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        ] {
            assert_eq!(parse(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn an_unusable_request_id_is_not_kept() {
        let p = parse(b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: \r\n\r\n").unwrap();
        assert_eq!(p.request_id, None);
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: {}\r\n\r\n",
            "a".repeat(201)
        );
        assert_eq!(parse(long.as_bytes()).unwrap().request_id, None);
        // Only the first counts (as the full path reads it); tab is fine.
        let two = b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\tb\r\nX-Request-Id: c\r\n\r\n";
        assert_eq!(parse(two).unwrap().request_id, Some(&b"a\tb"[..]));
        let bad_first = b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: \r\nX-Request-Id: c\r\n\r\n";
        assert_eq!(parse(bad_first).unwrap().request_id, None);
    }

    #[test]
    fn the_upstream_head_replaces_forwarding_and_hop_by_hop_headers() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nProxy-Authorization: secret\r\nTE: trailers\r\nAccept: */*\r\nX-Request-Id: theirs\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(raw).unwrap();
        let mut out = Vec::new();
        let fwd = Forwarding {
            client: "10.1.2.3".parse().unwrap(),
            tls: false,
            server_port: Some(8080),
            request_id: b"theirs",
        };
        write_upstream_head(
            &mut out,
            "GET",
            "/y",
            pairs(&req),
            "a.test",
            false,
            &fwd,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /y HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.test\r\n\
             x-forwarded-port: 8080\r\nx-real-ip: 10.1.2.3\r\nx-request-id: theirs\r\n\r\n"
        );
        let mut out = Vec::new();
        write_upstream_head(
            &mut out,
            "GET",
            "/y",
            pairs(&req),
            "a.test",
            false,
            &fwd,
            true,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("GET /y HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n"));
    }

    fn pairs<'r, 'h>(
        req: &'r httparse::Request<'r, 'h>,
    ) -> impl Iterator<Item = (&'h str, &'h [u8])> + 'r {
        req.headers.iter().map(|h| (h.name, h.value))
    }

    #[test]
    fn an_http2_request_gets_a_host_header_from_its_authority() {
        let fwd = Forwarding {
            client: "10.1.2.3".parse().unwrap(),
            tls: true,
            server_port: None,
            request_id: b"id",
        };
        let mut out = Vec::new();
        let headers: [(&str, &[u8]); 2] = [("accept", b"*/*"), ("te", b"trailers")];
        write_upstream_head(
            &mut out,
            "GET",
            "/",
            headers.into_iter(),
            "a.test:8443",
            true,
            &fwd,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: a.test:8443\r\naccept: */*\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: https\r\nx-forwarded-host: a.test:8443\r\n\
             x-real-ip: 10.1.2.3\r\nx-request-id: id\r\n\r\n"
        );
    }

    #[test]
    fn chunk_data_is_the_body_without_its_framing() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        // Fed whole and in every two-piece split, the data is the same.
        for cut in 0..raw.len() {
            let mut c = ChunkedEnd::default();
            let mut body = Vec::new();
            let mut used = 0;
            for piece in [&raw[..cut], &raw[cut..]] {
                if c.is_done() {
                    break;
                }
                used += c
                    .feed_data(piece, |r| body.extend_from_slice(&piece[r]))
                    .unwrap();
            }
            assert!(c.is_done(), "cut {cut}");
            assert_eq!(body, b"hello, world", "cut {cut}");
            assert_eq!(used, raw.len() - 4, "cut {cut}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut buf = [0u8; 39];
        for ip in [
            "0.0.0.0",
            "10.20.255.9",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
        let max: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(ip_text(max, &mut buf), max.to_string().as_bytes());
    }

    fn response(raw: &[u8], head: bool) -> Result<ResponseHead, BadResponse> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        response_head(&resp, head)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Length(5), true));
        let r = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        let r = response(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!(r.framing, Framing::Empty);
        let r = response(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.framing, Framing::Empty);
        let r = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!r.reusable);
        let r = response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).unwrap();
        assert!(!r.reusable);
    }

    #[test]
    fn ambiguous_responses_are_the_upstream_failing() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(
                response(raw, false).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn the_downstream_head_carries_our_connection_date_and_id() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nDate: old\r\nX-Request-Id: up\r\nServer: be\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(raw).unwrap();
        let mut out = Vec::new();
        write_downstream_head(&mut out, &resp, b"now", true, b"id1");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: be\r\ndate: now\r\n\
             connection: keep-alive\r\nx-request-id: id1\r\n\r\n"
        );
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_do() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and split at every byte: the same end.
        let mut c = ChunkedEnd::default();
        assert_eq!(c.feed(body), Ok(end));
        assert!(c.is_done());
        for split in 1..body.len() {
            let mut c = ChunkedEnd::default();
            let a = c.feed(&body[..split]).unwrap();
            if c.is_done() {
                assert_eq!(a, end);
                continue;
            }
            assert_eq!(a, split);
            assert_eq!(
                split + c.feed(&body[split..]).unwrap(),
                end,
                "split at {split}"
            );
            assert!(c.is_done());
        }
        let mut c = ChunkedEnd::default();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(5));
        assert!(c.is_done());
    }

    #[test]
    fn malformed_chunks_stop_the_relay() {
        for raw in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"1234567890abcdef0\r\n",
            b"\r\n",
            b"0\r\n\rX",
        ] {
            let mut c = ChunkedEnd::default();
            assert_eq!(
                c.feed(raw),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    /// Bytes biased towards what the parsers care about.
    fn noise(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b";",
            b" ",
            b"0",
            b"5",
            b"a",
            b"F",
            b"x",
            b":",
            b"\0",
            b"\xff",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked",
            b"Host: h",
            b"HTTP/1.1",
            b"GET /",
        ];
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            if rng.bool() {
                out.push(rng.u8(..));
            } else {
                out.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
            }
        }
        out
    }

    /// Randomized robustness (a stand-in for fuzzing, which needs a
    /// nightly toolchain): arbitrary bytes never panic the chunk tracker,
    /// and where a body ends does not depend on how it arrives.
    #[test]
    fn chunk_tracking_is_total_and_split_invariant() {
        let mut rng = fastrand::Rng::with_seed(0x005e_edc4);
        for _ in 0..20_000 {
            let len = rng.usize(0..64);
            let input = noise(&mut rng, len);
            let mut whole = ChunkedEnd::default();
            let at_once = whole.feed(&input).map(|n| (n, whole.is_done()));
            let mut parts = ChunkedEnd::default();
            let split = rng.usize(0..=input.len());
            let first = parts.feed(&input[..split]);
            let piecewise = match first {
                Err(e) => Err(e),
                Ok(n) if parts.is_done() => Ok((n, true)),
                Ok(n) => parts
                    .feed(&input[split..])
                    .map(|m| (n + m, parts.is_done())),
            };
            // A stream that failed whole may fail in the first piece or
            // the second; one that succeeded must agree exactly.
            match (&at_once, &piecewise) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{input:?} split at {split}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{input:?} split at {split}: {at_once:?} vs {piecewise:?}"),
            }
        }
        // Valid bodies built at random end exactly where they should.
        for _ in 0..2_000 {
            let mut body = Vec::new();
            for _ in 0..rng.usize(0..5) {
                let n = rng.usize(1..300);
                body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                body.extend(std::iter::repeat_n(b'z', n));
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let end = body.len();
            body.extend_from_slice(b"NEXT");
            let mut c = ChunkedEnd::default();
            let mut consumed = 0;
            let mut rest = &body[..];
            while !c.is_done() {
                let take = rng.usize(1..=rest.len().min(64));
                consumed += c.feed(&rest[..take]).unwrap();
                rest = &rest[take..];
            }
            assert_eq!(consumed, end);
        }
    }

    #[test]
    fn request_and_response_heads_never_panic_and_stay_within_httparse() {
        let mut rng = fastrand::Rng::with_seed(0xfa57_9a7b);
        for _ in 0..20_000 {
            let mut raw = b"GET /".to_vec();
            let len = rng.usize(0..80);
            raw.extend(noise(&mut rng, len));
            raw.extend_from_slice(b"\r\n\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(_)) = req.parse(&raw) {
                if let Some(p) = plain_request(&req) {
                    // What is taken is HTTP/1.1 with one valid Host.
                    assert_eq!(req.version, Some(1));
                    assert!(super::super::http::valid_host(p.host), "{raw:?}");
                    let mut out = Vec::new();
                    let fwd = Forwarding {
                        client: "10.0.0.1".parse().unwrap(),
                        tls: false,
                        server_port: None,
                        request_id: b"id",
                    };
                    write_upstream_head(
                        &mut out,
                        p.method,
                        p.target,
                        pairs(&req),
                        p.host,
                        false,
                        &fwd,
                        false,
                    );
                    // What goes upstream parses back as one request.
                    let mut again = [httparse::EMPTY_HEADER; 64];
                    let mut back = httparse::Request::new(&mut again);
                    assert_eq!(
                        back.parse(&out),
                        Ok(httparse::Status::Complete(out.len())),
                        "{raw:?}"
                    );
                }
            }
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            let len = rng.usize(0..80);
            raw.extend(noise(&mut rng, len));
            raw.extend_from_slice(b"\r\n\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(_)) = resp.parse(&raw) {
                let _ = response_head(&resp, rng.bool());
                let mut out = Vec::new();
                write_downstream_head(&mut out, &resp, b"now", rng.bool(), b"id");
                let mut again = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS + 3];
                let mut back = httparse::Response::new(&mut again);
                assert_eq!(
                    back.parse(&out),
                    Ok(httparse::Status::Complete(out.len())),
                    "{raw:?}"
                );
            }
        }
    }
}
