//! `proxy_http_call`: a plugin's HTTP request to a named upstream, and
//! the answer delivered back through `proxy_on_http_call_response`.
//!
//! Upstream names are Portico backends, `namespace/service:port` (the
//! Service port's name, or its number when unnamed, as `/config` shows
//! it) of a Service that an Ingress or L4 listener uses, so a plugin
//! reaches only what the gateway already routes to, balanced like any
//! request. The request is HTTP/1.1 (hyper, see `http_client`); the
//! answer is read whole (at most `MAX_RESPONSE` bytes) within the
//! plugin's timeout.
//!
//! Connections are kept alive and reused, per worker thread and endpoint:
//! a plugin that calls an auth service on every request would otherwise
//! open a connection per request and leave one socket in TIME_WAIT per
//! call, which runs out of ports for one destination at a few hundred
//! calls per second.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::http_client;
pub use crate::http_client::{Answer as CalloutResponse, MAX_RESPONSE};

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

/// Performs the call, on a kept-alive connection when there is one. A
/// failed call (connect, timeout, bad answer) is `Err`, which proxy-wasm
/// reports as an answer with no headers.
pub async fn perform(addr: SocketAddr, c: &Callout) -> Result<CalloutResponse, String> {
    let body = bytes::Bytes::from(c.body.clone());
    let work = http_client::pooled(addr, || {
        http_client::request(&c.headers, body.clone(), &c.upstream)
    });
    match tokio::time::timeout(c.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {addr} within {:?}", c.timeout)),
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

    /// A server on 127.0.0.1 that reads one request (head and
    /// `content-length` body), answers `answer` and closes; the request
    /// as it arrived comes back from the thread.
    fn answer_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = |got: &[u8]| {
                let mut h = [httparse::EMPTY_HEADER; 32];
                let mut r = httparse::Request::new(&mut h);
                let Ok(httparse::Status::Complete(n)) = r.parse(got) else {
                    return false;
                };
                let len = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                got.len() >= n + len
            };
            while !complete(&got) {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = s.write_all(answer);
            String::from_utf8(got).unwrap()
        });
        (addr, server)
    }

    fn run(addr: SocketAddr, c: &Callout) -> Result<CalloutResponse, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(perform(addr, c))
    }

    #[test]
    fn requests_are_framed_by_the_host() {
        let (addr, server) = answer_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let c = call(&[
            (":method", "POST"),
            (":path", "/check?a=1"),
            (":authority", "auth"),
            ("x-a", "1"),
            ("content-length", "999"),
            ("connection", "upgrade"),
        ]);
        assert_eq!(run(addr, &c).unwrap().headers[0].1, b"204");
        let text = server.join().unwrap();
        assert!(text.starts_with("POST /check?a=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("host: auth\r\n"), "{text}");
        assert!(text.contains("x-a: 1\r\n"), "{text}");
        assert!(text.contains("content-length: 2\r\n") && !text.contains("999"));
        assert!(text.ends_with("\r\n\r\nhi"), "{text}");
        assert!(!text.contains("upgrade"), "{text}");
        // Without :authority, the upstream's name is the Host.
        let (addr, server) = answer_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        run(addr, &call(&[(":path", "/")])).unwrap();
        let text = server.join().unwrap();
        assert!(text.starts_with("GET / HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("host: default/auth:http\r\n"), "{text}");
        // Refused before anything is sent.
        let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for (headers, why) in [
            (vec![(":method", "GET")], "no :path"),
            (vec![(":path", "/a\r\nx: y")], "is not a path"),
            (vec![(":path", "http://a/b")], "is not a path"),
            (vec![(":path", "/"), ("x-b", "1\r\nx: y")], "not valid"),
            (vec![(":path", "/"), ("bad name", "1")], "not valid"),
            (vec![(":path", "/"), (":method", "G T")], "not a method"),
        ] {
            let e = run(nowhere, &call(&headers)).unwrap_err();
            assert!(e.contains(why), "{headers:?}: {e}");
        }
    }

    #[test]
    fn answers_with_length_or_chunks_or_until_the_end() {
        let get = |answer: &'static [u8], method: &str| {
            let (addr, server) = answer_once(answer);
            let r = run(addr, &call(&[(":method", method), (":path", "/")]));
            server.join().unwrap();
            r
        };
        let r = get(
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-Y: z\r\n\r\nabcdef",
            "GET",
        )
        .unwrap();
        assert_eq!(r.headers[0], (":status".to_string(), b"201".to_vec()));
        assert!(r.headers.contains(&("x-y".to_string(), b"z".to_vec())));
        assert_eq!(r.body, b"abc");
        let r = get(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n", "GET")
            .unwrap();
        assert_eq!(r.body, b"abcde");
        // Cut short, or not HTTP.
        let e = get(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", "GET").unwrap_err();
        assert!(e.contains("read from"), "{e}");
        assert!(get(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
            "GET"
        )
        .is_err());
        assert!(get(b"garbage\r\n\r\n", "GET").is_err());
        // No length: the body is whatever came before the end.
        let r = get(b"HTTP/1.1 200 OK\r\n\r\nall of it", "GET").unwrap();
        assert_eq!(r.body, b"all of it");
        // A HEAD's answer has a length but no body.
        let r = get(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "HEAD").unwrap();
        assert!(r.body.is_empty());
        // Interim answers are skipped.
        let r = get(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "GET",
        )
        .unwrap();
        assert_eq!(r.headers[0].1, b"200");
        assert_eq!(r.body, b"ok");
    }

    #[test]
    fn an_answer_over_the_limit_is_refused() {
        let big: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                MAX_RESPONSE + 1,
                "x".repeat(MAX_RESPONSE + 1)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let (addr, server) = answer_once(big);
        let mut c = call(&[(":path", "/")]);
        c.timeout = Duration::from_secs(10);
        let e = run(addr, &c).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        server.join().unwrap();
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
