//! The HTTP/2 fast path: plain requests on plain routes, on HTTP/2
//! connections (ALPN `h2` or h2c with prior knowledge), proxied to the
//! HTTP/1.1 upstream without Pingora's per-request pipeline.
//!
//! The connection is Pingora's: its HTTP/2 handshake and its per-stream
//! sessions (`HttpSession::from_h2_conn`, which also refuses malformed
//! streams), accepted in a loop shaped as Pingora's own (GOAWAY on
//! shutdown, then the streams in flight finish). Each stream is then
//! judged as `fast_h1` judges an HTTP/1.1 request: a body-less request
//! with a plain method, host and headers, on a route that only forwards
//! (`FastH1::plain_route`), is sent upstream with the same head, the
//! same forwarding headers, connection reuse, retries and error answers
//! as the HTTP/1.1 fast path (`FastH1::forward`), and the response is
//! relayed as HTTP/2 (a chunked body without its framing). Any other
//! stream is handed, as it is, to Pingora's `HttpProxy` on the same
//! connection: so a request with a body, a route with plugins or
//! policies, gRPC, or a request the full path would refuse gets exactly
//! the full path's answer.
//!
//! Streams run on the connection's thread (`tokio::spawn` on the
//! worker's single-threaded runtime): HTTP/2 streams share the
//! connection's state behind one lock, and a stream on another thread
//! would wake the connection across cores on every frame.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::apps::HttpServerApp;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::fast_h1::{bounded, Active, ConnInfo, Done, Down, FastH1, Scratch, Stop};
use super::h1_wire::{self, Framing};
use super::http as full;
use super::upstream_idle;
use crate::shutdown::InFlight;
use portico_model::lb::PickRequest;

/// Malformed streams (refused by Pingora's checks) a connection may send
/// before it is closed: a client that sends nothing else is not served.
const MAX_REFUSED_STREAMS: usize = 32;

/// Serves an HTTP/2 connection: fast streams here, the rest through
/// Pingora's `HttpProxy`.
pub(super) async fn serve(
    app: &Arc<FastH1>,
    stream: Stream,
    info: ConnInfo,
    shutdown: &ShutdownWatch,
) -> Option<Stream> {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match h2_server::handshake(stream, app.full.h2_options()).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return None;
        }
    };
    let mut watch = shutdown.clone();
    let mut closing = false;
    let mut refused = 0;
    loop {
        let accepted = if closing {
            HttpSession::from_h2_conn(&mut conn, digest.clone()).await
        } else {
            tokio::select! {
                // The signal first, so one that arrives with a stream is
                // seen; `from_h2_conn` is cancel-safe.
                biased;
                _ = watch.changed() => {
                    conn.graceful_shutdown();
                    closing = true;
                    continue;
                }
                accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
            }
        };
        match accepted {
            Ok(Some(H2Accept::Session(session))) => {
                let app = app.clone();
                let shutdown = shutdown.clone();
                // Boxed: the stream's future is a few KB (the session, the
                // upstream exchange), and tokio moves a task's future into
                // its cell and its stages by value, which was a tenth of
                // an h2c request's instructions in copies.
                tokio::spawn(Box::pin(app.serve_stream(session, info, shutdown)));
            }
            // Answered or reset already by Pingora.
            Ok(Some(H2Accept::Rejected)) => {
                refused += 1;
                if refused >= MAX_REFUSED_STREAMS {
                    tracing::debug!("HTTP/2 connection closed: too many malformed streams");
                    return None;
                }
            }
            // The connection is over (clients often just close TCP).
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return None;
            }
        }
    }
}

/// What a fast stream needs of its request, borrowed from its header.
struct PlainStream<'a> {
    method: &'a str,
    /// Path and query, as sent.
    target: &'a str,
    host: &'a str,
    /// The request has no `Host` header (its host is `:authority`).
    no_host_header: bool,
    request_id: Option<&'a [u8]>,
}

/// `Some` when the request (its body already known to be empty) is one
/// the fast path may carry; the same rules as `h1_wire::plain_request`.
fn plain_stream(req: &RequestHeader, max_header_bytes: usize) -> Option<PlainStream<'_>> {
    let method = req.method.as_str();
    if !matches!(
        method,
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS"
    ) {
        return None;
    }
    let target = req.uri.path_and_query()?.as_str();
    if !target.starts_with('/') {
        return None;
    }
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let host = match req.uri.authority() {
        Some(a) => a.as_str(),
        None => host_header?.to_str().ok()?,
    };
    if !full::valid_host(host) {
        return None;
    }
    // The full path answers 431 above this.
    if req.headers.len() > full::MAX_HEADER_FIELDS {
        return None;
    }
    // As the full path: the first `x-request-id`, when usable.
    let request_id = req
        .headers
        .get("x-request-id")
        .map(|v| v.as_bytes())
        .filter(|v| h1_wire::usable_request_id(v));
    let mut header_bytes = target.len();
    let mut lengths = 0;
    for (name, value) in &req.headers {
        header_bytes += name.as_str().len() + value.len() + 4;
        match name.as_str() {
            // The full path's business: framing (a length other than one
            // `0`), upgrades, hop-by-hop nominations (HTTP/2 forbids most
            // of them anyway).
            "content-length" => {
                lengths += 1;
                if lengths > 1 || value.as_bytes() != b"0" {
                    return None;
                }
            }
            "transfer-encoding" | "upgrade" | "expect" | "connection" | "http2-settings" => {
                return None
            }
            _ => {}
        }
    }
    // The full path answers 431 above this.
    if header_bytes > max_header_bytes {
        return None;
    }
    Some(PlainStream {
        method,
        target,
        host,
        no_host_header: host_header.is_none(),
        request_id,
    })
}

/// What becomes of an upstream response field on an HTTP/2 response.
#[derive(Debug, PartialEq)]
enum ResponseField {
    /// Not passed on: HTTP/1.1's connection-specific fields (RFC 9113
    /// §8.2.2), `Date` (Pingora writes its own) and `X-Request-Id` (the
    /// request's).
    Dropped,
    /// A common field, named without parsing the name.
    Known(HeaderName),
    /// Any other field: its name is parsed.
    Other,
}

/// Classifies a response field by its name, in any case. The common
/// response fields are matched by length, then bytes: parsing a name
/// (`HeaderName::from_bytes`, which lower-cases it through a table and
/// then searches the standard names) was a tenth of an h2c response's
/// header work.
fn response_field(name: &str) -> ResponseField {
    use http::header as h;
    // `None`: dropped.
    type Names = &'static [(&'static str, Option<HeaderName>)];
    const LEN_2: Names = &[("te", None)];
    const LEN_3: Names = &[("age", Some(h::AGE))];
    const LEN_4: Names = &[
        ("date", None),
        ("etag", Some(h::ETAG)),
        ("vary", Some(h::VARY)),
    ];
    const LEN_6: Names = &[("server", Some(h::SERVER))];
    const LEN_7: Names = &[("upgrade", None), ("expires", Some(h::EXPIRES))];
    const LEN_8: Names = &[("location", Some(h::LOCATION))];
    const LEN_10: Names = &[
        ("connection", None),
        ("keep-alive", None),
        ("set-cookie", Some(h::SET_COOKIE)),
    ];
    const LEN_12: Names = &[
        ("content-type", Some(h::CONTENT_TYPE)),
        ("x-request-id", None),
    ];
    const LEN_13: Names = &[
        ("cache-control", Some(h::CACHE_CONTROL)),
        ("last-modified", Some(h::LAST_MODIFIED)),
        ("accept-ranges", Some(h::ACCEPT_RANGES)),
    ];
    const LEN_14: Names = &[("content-length", Some(h::CONTENT_LENGTH))];
    const LEN_16: Names = &[
        ("proxy-connection", None),
        ("content-encoding", Some(h::CONTENT_ENCODING)),
    ];
    const LEN_17: Names = &[("transfer-encoding", None)];
    let candidates = match name.len() {
        2 => LEN_2,
        3 => LEN_3,
        4 => LEN_4,
        6 => LEN_6,
        7 => LEN_7,
        8 => LEN_8,
        10 => LEN_10,
        12 => LEN_12,
        13 => LEN_13,
        14 => LEN_14,
        16 => LEN_16,
        17 => LEN_17,
        _ => return ResponseField::Other,
    };
    for (known, field) in candidates {
        if known.eq_ignore_ascii_case(name) {
            return match field {
                Some(n) => ResponseField::Known(n.clone()),
                None => ResponseField::Dropped,
            };
        }
    }
    ResponseField::Other
}

/// The HTTP/2 response header for an upstream's HTTP/1.1 response head.
///
/// Built as `http` parts, then wrapped: `ResponseHeader::append_header`
/// turns each name back into bytes and parses it again.
pub(super) fn response_header(
    resp: &httparse::Response<'_, '_>,
    request_id: &[u8],
) -> Result<Box<ResponseHeader>, h1_wire::BadResponse> {
    fn bad<E>(what: &'static str) -> impl Fn(E) -> h1_wire::BadResponse {
        move |_| h1_wire::BadResponse(what)
    }
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status =
        http::StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(bad("invalid status"))?;
    let headers = &mut parts.headers;
    headers
        .try_reserve(resp.headers.len() + 1)
        .map_err(bad("too many headers"))?;
    for h in resp.headers.iter() {
        let name = match response_field(h.name) {
            ResponseField::Dropped => continue,
            ResponseField::Known(name) => name,
            ResponseField::Other => {
                HeaderName::from_bytes(h.name.as_bytes()).map_err(bad("invalid header name"))?
            }
        };
        let value = HeaderValue::from_bytes(h.value).map_err(bad("invalid header value"))?;
        headers
            .try_append(name, value)
            .map_err(bad("too many headers"))?;
    }
    let mut id = HeaderValue::from_bytes(request_id).map_err(bad("invalid request id"))?;
    // One value per request: indexed, it would only evict another entry
    // from the client's HPACK table (as on the full path).
    id.set_sensitive(true);
    headers
        .try_insert(http::header::HeaderName::from_static("x-request-id"), id)
        .map_err(bad("too many headers"))?;
    Ok(Box::new(ResponseHeader::from(parts)))
}

impl FastH1 {
    /// A stream the fast path does not carry, as it came.
    async fn to_full_path(&self, s: HttpSession, shutdown: &ShutdownWatch) {
        self.full
            .process_new_http(ServerSession::new_http2(s), shutdown)
            .await;
    }

    /// One stream: served here when plain, else by the full path.
    async fn serve_stream(
        self: Arc<Self>,
        mut s: HttpSession,
        info: ConnInfo,
        shutdown: ShutdownWatch,
    ) {
        let cfg = &self.proxy.cfg;
        if !s.is_body_empty() {
            return self.to_full_path(s, &shutdown).await;
        }
        // The header moves out (the session keeps an empty one): the
        // stream is written to while the request is still read from. It
        // goes back if the full path takes the stream.
        let req = std::mem::replace(
            s.req_header_mut(),
            RequestHeader::from(http::Request::new(()).into_parts().0),
        );
        let chosen = plain_stream(&req, cfg.max_request_header_bytes).and_then(|plain| {
            let target = self.normalized(plain.target, &info)?;
            let (route, pool) = self.plain_route(plain.host, &target, &info)?;
            let pick = pool.pick(&PickRequest {
                preferred: None,
                client_ip: Some(info.peer),
                exclude: &[],
            })?;
            let normalized = match target {
                std::borrow::Cow::Owned(t) => Some(t),
                std::borrow::Cow::Borrowed(_) => None,
            };
            Some((plain, route, pool, pick, normalized))
        });
        let Some((plain, route, pool, mut pick, normalized)) = chosen else {
            *s.req_header_mut() = req;
            return self.to_full_path(s, &shutdown).await;
        };
        if normalized.is_some() {
            metrics::counter!("portico_http_paths_normalized_total").increment(1);
        }
        let target = normalized.as_deref().unwrap_or(plain.target);

        let timeouts = self.timeouts(&route);
        let start = Instant::now();
        let mut sc = Scratch::take();
        let sc = &mut *sc;
        let _in_flight = InFlight::start();
        let active = Active::start();
        let mut id_buf = [0u8; 32];
        let request_id = match plain.request_id {
            Some(id) => id,
            None => {
                full::hex_into(fastrand::u128(..), &mut id_buf);
                &id_buf[..]
            }
        };
        // HTTP/2 clients send cookies as fields of their own; an HTTP/1.1
        // server expects one line (RFC 9113 §8.2.3), as the full path sends.
        let cookies = full::joined_cookies(&req.headers);
        let headers = req
            .headers
            .iter()
            .filter(|(k, _)| cookies.is_none() || *k != http::header::COOKIE)
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(cookies.as_ref().map(|c| ("cookie", c.as_bytes())));
        sc.out.clear();
        h1_wire::write_upstream_head(
            &mut sc.out,
            plain.method,
            target,
            headers,
            plain.host,
            plain.no_host_header,
            &h1_wire::Forwarding {
                client: info.peer,
                tls: info.tls,
                server_port: info.local.map(|a| a.port()),
                request_id,
            },
            false,
        );
        let record_as = h1_wire::PlainRequest {
            method: plain.method,
            target: plain.target,
            host: plain.host,
            body_len: 0,
            close: false,
            request_id: plain.request_id,
        };
        let mut done = Done {
            route: &route,
            plain: &record_as,
            target,
            request_id,
            version: "HTTP/2.0",
            client: info.peer,
            start,
            addr: pick.addr,
            tried: 1,
        };
        let mut down = Down::H2 {
            head_request: plain.method == "HEAD",
            request_id,
            head: None,
        };
        // A client that resets the stream stops the wait: the stream no
        // longer counts against the connection's concurrency limit, so it
        // must not hold an upstream connection either.
        let forwarded = {
            let forward = self.forward(&mut down, sc, &pool, &mut pick, &mut done, &timeouts, 0);
            tokio::select! {
                // The upstream first: no random draw per poll.
                biased;
                forwarded = forward => forwarded,
                _ = s.idle() => Err(Stop::Downstream),
            }
        };
        let (mut up, head, up_head, up_len) = match forwarded {
            Ok(answered) => answered,
            Err(Stop::Upstream(f)) => {
                let (status, what, body) = super::fast_h1::failure_answer(&done, f);
                let mut h = ResponseHeader::build_no_case(status, Some(3)).expect("a valid status");
                let _ = h.insert_header("content-type", "text/plain; charset=utf-8");
                let _ = h.insert_header("content-length", body.len());
                let _ = h.insert_header("server", "portico");
                let len = body.len() as u64;
                if s.write_response_header(Box::new(h), false).is_ok() {
                    let _ = bounded(timeouts.write, s.write_body(Bytes::from(body), true)).await;
                }
                self.record(&info, &done, status, len, Some(what));
                return;
            }
            // The client went away (as on the HTTP/1.1 fast path, not
            // recorded); the upstream connection is dropped, not kept.
            Err(Stop::Downstream) => return,
        };
        let Down::H2 {
            head: Some(response),
            ..
        } = down
        else {
            unreachable!("forward built the head")
        };
        let mut remaining = match head.framing {
            Framing::Empty => 0,
            Framing::Length(n) => n,
            Framing::Chunked | Framing::UntilClose => u64::MAX,
        };
        // Two outcomes: the client's stream ended properly (`delivered`),
        // and the upstream connection may carry another request
        // (`reusable`): not when it sent more than its response.
        let mut delivered = s.write_response_header(response, remaining == 0).is_ok();
        let mut reusable = head.reusable && (remaining > 0 || up_len == up_head);
        let mut chunks = h1_wire::ChunkedEnd::default();
        let mut bytes_out = 0u64;
        let (mut from, mut to) = (up_head, up_len);
        while delivered && remaining > 0 {
            let avail = &sc.up[from..to];
            let (data, finished) = match head.framing {
                Framing::Empty | Framing::Length(_) => {
                    let take = avail
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    remaining -= take as u64;
                    reusable &= take == avail.len();
                    (Bytes::copy_from_slice(&avail[..take]), remaining == 0)
                }
                Framing::Chunked => {
                    sc.out.clear();
                    let out = &mut sc.out;
                    match chunks.feed_data(avail, |r| out.extend_from_slice(&avail[r])) {
                        Ok(n) => reusable &= n == avail.len(),
                        Err(_) => {
                            delivered = false;
                            break;
                        }
                    }
                    if chunks.is_done() {
                        remaining = 0;
                    }
                    (Bytes::copy_from_slice(&sc.out), chunks.is_done())
                }
                Framing::UntilClose => (Bytes::copy_from_slice(avail), false),
            };
            bytes_out += data.len() as u64;
            if (!data.is_empty() || finished)
                && !matches!(
                    bounded(timeouts.write, s.write_body(data, finished)).await,
                    Ok(Ok(()))
                )
            {
                delivered = false;
                break;
            }
            if finished {
                break;
            }
            let read = tokio::select! {
                biased;
                read = bounded(timeouts.read, up.read(&mut sc.up)) => read,
                // Reset by the client while the upstream is slow.
                _ = s.idle() => {
                    delivered = false;
                    break;
                }
            };
            match read {
                Ok(Ok(0)) if head.framing == Framing::UntilClose => {
                    delivered = s.finish().is_ok();
                    break;
                }
                Ok(Ok(n)) if n > 0 => (from, to) = (0, n),
                _ => {
                    // Cut short: the client sees the stream reset.
                    delivered = false;
                    break;
                }
            }
        }
        if !delivered {
            s.shutdown();
        }
        drop(active);
        if delivered && reusable {
            let max_idle = std::time::Duration::from_millis(cfg.upstream_idle_timeout_ms);
            upstream_idle::put(done.addr, up, max_idle);
        }
        drop(pick);
        self.record(
            &info,
            &done,
            head.status,
            bytes_out,
            (!delivered).then_some("response cut short"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build_no_case(method, uri.as_bytes(), None).unwrap();
        req.set_uri(uri.parse().unwrap());
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn a_plain_stream_is_routed_by_its_authority() {
        let req = request("GET", "https://a.test/x?y=1", &[("accept", "*/*")]);
        let p = plain_stream(&req, 4096).unwrap();
        assert_eq!((p.method, p.target, p.host), ("GET", "/x?y=1", "a.test"));
        assert!(p.no_host_header);
        assert_eq!(p.request_id, None);
        // Without `:authority`, the one Host header.
        let req = request(
            "HEAD",
            "/",
            &[("host", "b.test:8443"), ("x-request-id", "abc")],
        );
        let p = plain_stream(&req, 4096).unwrap();
        assert_eq!((p.host, p.no_host_header), ("b.test:8443", false));
        assert_eq!(p.request_id, Some(&b"abc"[..]));
    }

    #[test]
    fn the_full_path_gets_what_it_must_judge() {
        for (method, uri, headers) in [
            ("CONNECT", "https://a.test/", &[][..]),
            ("TRACE", "https://a.test/", &[]),
            ("GET", "/", &[]),
            ("GET", "/", &[("host", "a.test"), ("host", "b.test")]),
            ("GET", "/", &[("host", "a b")]),
            ("POST", "https://a.test/", &[("content-length", "5")]),
            ("GET", "https://a.test/", &[("expect", "100-continue")]),
            ("GET", "https://a.test/", &[("upgrade", "websocket")]),
            (
                "GET",
                "https://a.test/",
                &[("transfer-encoding", "chunked")],
            ),
        ] {
            let uri = uri.parse::<http::Uri>().unwrap();
            let mut req = RequestHeader::build_no_case(method, b"/", None).unwrap();
            req.set_uri(uri);
            for (k, v) in headers {
                req.append_header(k.to_string(), *v).unwrap();
            }
            assert!(plain_stream(&req, 4096).is_none(), "{method} {headers:?}");
        }
        let mut many = request("GET", "https://a.test/", &[]);
        for i in 0..=full::MAX_HEADER_FIELDS {
            many.append_header(format!("x-{i}"), "1").unwrap();
        }
        assert!(plain_stream(&many, usize::MAX).is_none(), "too many fields");
        let two = request(
            "GET",
            "https://a.test/",
            &[("content-length", "0"), ("content-length", "0")],
        );
        assert!(plain_stream(&two, 4096).is_none(), "two lengths");
        let zero = request("GET", "https://a.test/", &[("content-length", "0")]);
        assert!(plain_stream(&zero, 4096).is_some());
        // Headers past the limit: the full path answers 431.
        let req = request("GET", "https://a.test/", &[("x-big", &"a".repeat(100))]);
        assert!(plain_stream(&req, 4096).is_some());
        assert!(plain_stream(&req, 64).is_none());
        // An unusable request id is replaced, not refused; only the first
        // counts, as on the full path.
        let req = request("GET", "https://a.test/", &[("x-request-id", "")]);
        assert_eq!(plain_stream(&req, 4096).unwrap().request_id, None);
        let req = request(
            "GET",
            "https://a.test/",
            &[("x-request-id", "a\tb"), ("x-request-id", "c")],
        );
        assert_eq!(
            plain_stream(&req, 4096).unwrap().request_id,
            Some(&b"a\tb"[..])
        );
    }

    #[test]
    fn known_response_fields_are_named_as_parsing_names_them() {
        let dropped = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
            "date",
            "x-request-id",
        ];
        for name in dropped {
            assert_eq!(response_field(name), ResponseField::Dropped, "{name}");
            let upper = name.to_ascii_uppercase();
            assert_eq!(response_field(&upper), ResponseField::Dropped, "{upper}");
        }
        let known = [
            "age",
            "etag",
            "vary",
            "server",
            "expires",
            "location",
            "set-cookie",
            "content-type",
            "cache-control",
            "last-modified",
            "accept-ranges",
            "content-length",
            "content-encoding",
        ];
        for name in known {
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            for spelled in [name.to_string(), name.to_ascii_uppercase(), {
                let mut c = name.to_string();
                c[..1].make_ascii_uppercase();
                c
            }] {
                assert_eq!(
                    response_field(&spelled),
                    ResponseField::Known(parsed.clone()),
                    "{spelled}"
                );
            }
        }
        // Same lengths as known ones, and unknown lengths: parsed.
        for name in [
            "x-a",
            "x-powered-by",
            "content-range",
            "x-custom-field-name",
        ] {
            assert_eq!(response_field(name), ResponseField::Other, "{name}");
        }
    }

    #[test]
    fn the_response_header_drops_connection_specific_fields() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nDate: x\r\nX-Request-Id: theirs\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(raw).unwrap();
        let head = response_header(&resp, b"ours").unwrap();
        assert_eq!(head.status, 200);
        let h = &head.headers;
        assert_eq!(h.get("content-length").unwrap(), "2");
        assert_eq!(h.get("x-request-id").unwrap(), "ours");
        assert!(h.get("x-request-id").unwrap().is_sensitive());
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        for gone in ["connection", "keep-alive", "date"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        // A status HTTP cannot carry is the upstream failing (502).
        let raw = b"HTTP/1.1 099 Odd\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(raw).unwrap();
        assert!(response_header(&resp, b"id").is_err());
    }
}
