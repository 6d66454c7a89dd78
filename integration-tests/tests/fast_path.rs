//! The HTTP/1.1 fast path (`proxy::fast_h1`) against the full Pingora
//! path: the same requests through two gateways, one with `[proxy]
//! fast_path = false`, must reach the backend and the client alike; and
//! the fast path's own upstream handling (connection reuse, retry on a
//! connection the upstream closed, chunked, close-delimited, interim and
//! broken responses) through the real binary.
//! (Header name case upstream, the same on both paths, is checked in
//! `http.rs`: `upstream_header_names_are_lowercase_unless_case_is_preserved`.)

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_integration_tests::raw_backend::RawBackend;
use portico_integration_tests::*;

const FULL_PATH: &str = "[proxy]\nfast_path = false\n";

fn route(name: &str, port: u16) -> String {
    let mut m = yaml::service("default", name, "", &[("http", 80)]);
    m += &yaml::slice("default", &format!("{name}-1"), name, "http", port, true);
    m += &yaml::ingress(
        "default",
        name,
        &[("t.test", "/", "Prefix", name, "http")],
        "",
    );
    m
}

/// A head as a set of `name: value` lines with lowercase names, so header
/// name case and order (which differ between the paths and mean nothing)
/// do not count.
fn header_set(head: &str, skip: &[&str]) -> BTreeSet<String> {
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| !skip.iter().any(|s| n.eq_ignore_ascii_case(s)))
        .map(|(n, v)| format!("{}: {}", n.to_ascii_lowercase(), v.trim()))
        .collect()
}

#[test]
fn both_paths_send_the_same_request_and_answer_alike() {
    let backend = RawBackend::start();
    let m = route("raw", backend.port);
    let fast = Gateway::start(&[("raw.yaml", &m)], "");
    let full = Gateway::start(&[("raw.yaml", &m)], FULL_PATH);
    let requests = [
        // Forwarding headers from an untrusted client are replaced, hop-by-hop
        // ones dropped, the rest kept with their case.
        "GET /a/./b/../c?q=1 HTTP/1.1\r\nHost: t.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
         Forwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nKeep-Alive: 5\r\n\
         Proxy-Authorization: secret\r\nTE: trailers\r\nX-Custom-Case: Value\r\nX-Request-Id: req-1\r\n\r\n",
        // A body by Content-Length, and escapes of unreserved characters decoded.
        "POST /%7Euser/%41 HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5\r\nX-Request-Id: req-2\r\n\r\nhello",
        "HEAD /h HTTP/1.1\r\nHost: t.test:80\r\nConnection: keep-alive\r\nX-Request-Id: req-3\r\n\r\n",
    ];
    for raw in requests {
        let mut seen = Vec::new();
        let mut answers = Vec::new();
        for gw in [&fast, &full] {
            let before = backend.requests().len();
            let mut s = TcpStream::connect(addr(gw.http)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(raw.as_bytes()).unwrap();
            let r = if raw.starts_with("HEAD") {
                read_head_only(&mut s)
            } else {
                read_response(&mut s).unwrap()
            };
            answers.push(r);
            wait_for(5, "the backend to see the request", || {
                backend.requests().len() > before
            });
            let got = backend.requests()[before..].to_vec();
            assert_eq!(got.len(), 1, "{got:?}");
            seen.push((got[0].clone(), gw.http));
        }
        let (fast_req, fast_port) = &seen[0];
        let (full_req, full_port) = &seen[1];
        assert_eq!(
            fast_req.head.lines().next(),
            full_req.head.lines().next(),
            "request line of {raw:?}"
        );
        assert_eq!(
            header_set(&fast_req.head, &["x-forwarded-port"]),
            header_set(&full_req.head, &["x-forwarded-port"]),
            "headers upstream for {raw:?}\nfast:\n{}\nfull:\n{}",
            fast_req.head,
            full_req.head
        );
        assert_eq!(
            fast_req.header("x-forwarded-port"),
            Some(&*fast_port.to_string())
        );
        assert_eq!(
            full_req.header("x-forwarded-port"),
            Some(&*full_port.to_string())
        );
        assert_eq!(fast_req.body, full_req.body);
        assert!(
            fast_req.head.contains("\r\nx-custom-case: Value\r\n") || !raw.contains("X-Custom")
        );
        assert!(!fast_req.head.to_ascii_lowercase().contains("secret"));
        let (a, b) = (&answers[0], &answers[1]);
        assert_eq!(a.status, b.status, "{raw:?}");
        assert_eq!(a.body, b.body, "{raw:?}");
        let names = |r: &Response| {
            r.headers
                .iter()
                .filter(|(n, _)| n != "date")
                .map(|(n, v)| format!("{n}: {v}"))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(names(a), names(b), "response headers for {raw:?}");
    }
    // The normalized path reached the backend on both.
    let heads: Vec<_> = backend.requests().into_iter().map(|r| r.head).collect();
    assert_eq!(
        heads
            .iter()
            .filter(|h| h.starts_with("GET /a/c?q=1 HTTP/1.1\r\n"))
            .count(),
        2,
        "{heads:?}"
    );
    assert_eq!(
        heads
            .iter()
            .filter(|h| h.starts_with("POST /~user/A HTTP/1.1\r\n"))
            .count(),
        2,
        "{heads:?}"
    );
}

fn read_head_only(s: &mut TcpStream) -> Response {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "response head cut short");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: Vec::new(),
    }
}

#[test]
fn keep_alive_requests_reuse_one_upstream_connection() {
    let backend = RawBackend::start();
    let gw = Gateway::start(&[("raw.yaml", &route("raw", backend.port))], "");
    let mut s = TcpStream::connect(addr(gw.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..20 {
        s.write_all(format!("GET /k/{i} HTTP/1.1\r\nHost: t.test\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.header("x-request-id").map(str::len), Some(32));
    }
    let conns: BTreeSet<_> = backend.requests().iter().map(|r| r.connection).collect();
    assert_eq!(
        conns.len(),
        1,
        "one upstream connection for 20 requests: {conns:?}"
    );
    // Counted per route as on the full path.
    let metrics = gw.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portico_http_requests_total{")
                && l.contains("route=\"default/raw\"")
                && l.contains("code_class=\"2xx\"")
                && l.ends_with(" 20")),
        "{metrics}"
    );
}

/// A backend answering each request by its path, recording the
/// connection each came on.
struct Scripted {
    port: u16,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
}

fn scripted() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    record.lock().unwrap().push((n, path.clone()));
                    let bare = path.split('?').next().unwrap_or("");
                    // A wrong backend: a body after its answer to HEAD.
                    let head_with_body = [
                        &b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n"[..],
                        &[b'x'; 20000],
                    ]
                    .concat();
                    if bare == "/slow" {
                        std::thread::sleep(Duration::from_secs(6));
                    }
                    let answer: &[u8] = match bare {
                        "/head-with-body" => &head_with_body,
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                        "/until-close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
                        "/early-hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
                        "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
                        "/die" => return,
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    if out.write_all(answer).is_err() {
                        return;
                    }
                    // These end their connection without saying so.
                    if bare == "/until-close" || bare == "/then-close" {
                        return;
                    }
                }
            });
        }
    });
    Scripted { port, seen }
}

fn get(port: u16, path: &str) -> Response {
    http_request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: t.test\r\n\r\n"),
    )
    .unwrap()
}

#[test]
fn upstream_responses_are_relayed_by_their_framing() {
    let be = scripted();
    let gw = Gateway::start(&[("s.yaml", &route("scripted", be.port))], "");

    // Chunked: relayed as sent (extensions and trailers included), and
    // the connection reused afterwards.
    let mut s = TcpStream::connect(addr(gw.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0\r\nX-Trailer: t\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "cut short: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n"),
        "{text}"
    );
    s.write_all(b"GET /after-chunked HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().text(), "ok");
    {
        let seen = be.seen.lock().unwrap();
        assert_eq!(
            seen[0].0, seen[1].0,
            "reused after a chunked body: {seen:?}"
        );
    }

    // Until close: the client's connection closes too.
    let r = get(gw.http, "/until-close");
    assert_eq!((r.status, r.text().as_str()), (200, "all of it"));
    assert_eq!(r.header("connection"), Some("close"));

    // Interim answers are not passed on.
    let r = get(gw.http, "/early-hints");
    assert_eq!((r.status, r.text().as_str()), (200, "final"));

    // An ambiguous or missing answer is the upstream failing: 502 naming
    // the Service, as the full path answers.
    for path in ["/two-lengths", "/die"] {
        let r = get(gw.http, path);
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(
            r.text(),
            "the upstream failed (service default/scripted:http, endpoints tried: 1)\n"
        );
    }
}

#[test]
fn a_parked_connection_the_upstream_closed_is_replaced() {
    let be = scripted();
    let gw = Gateway::start(&[("s.yaml", &route("scripted", be.port))], "");
    // The backend closes after answering, without `Connection: close`:
    // the gateway parks the connection, finds it dead on the next
    // request, and sends that request again on a new one.
    for i in 0..5 {
        let r = get(gw.http, &format!("/then-close?{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
    }
    let seen = be.seen.lock().unwrap().clone();
    let answered: Vec<_> = seen.iter().map(|(_, p)| p.as_str()).collect();
    for i in 0..5 {
        assert!(answered.contains(&&*format!("/then-close?{i}")), "{seen:?}");
    }
}

#[test]
fn the_access_log_is_written_for_fast_path_requests() {
    let backend = RawBackend::start();
    let gw = Gateway::start(
        &[("raw.yaml", &route("raw", backend.port))],
        "[log]\naccess_log = true\n",
    );
    let r = http_request(
        gw.http,
        "GET /logged/x?secret=1 HTTP/1.1\r\nHost: t.test\r\nX-Request-Id: log-me\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    wait_for(5, "the access log line", || gw.log().contains("\"log-me\""));
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("\"log-me\""))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["path"], "/logged/x");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "default/raw");
    assert_eq!(v["backend"], "default/raw:http");
    assert_eq!(v["endpoint"], format!("127.0.0.1:{}", backend.port));
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["client"], "127.0.0.1");
}

#[test]
fn failed_connects_try_other_endpoints_then_answer_as_the_full_path() {
    let backend = RawBackend::start();
    let (dead_a, dead_b) = (free_port(), free_port());
    let mut m = route("half", backend.port);
    m += &yaml::slice("default", "half-2", "half", "http", dead_a, true);
    m += &yaml::service("default", "gone", "", &[("http", 80)]);
    m += &yaml::slice("default", "gone-1", "gone", "http", dead_a, true);
    m += &yaml::slice("default", "gone-2", "gone", "http", dead_b, true);
    m += &yaml::ingress(
        "default",
        "gone",
        &[("gone.test", "/", "Prefix", "gone", "http")],
        "",
    );
    let fast = Gateway::start(&[("m.yaml", &m)], "");
    let full = Gateway::start(&[("m.yaml", &m)], FULL_PATH);
    for gw in [&fast, &full] {
        // One endpoint refuses: every request still reaches the other.
        for i in 0..6 {
            let r = get(gw.http, &format!("/half/{i}"));
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    // Both refuse: 503 after trying both, the same answer on both paths.
    let answers: Vec<_> = [&fast, &full]
        .iter()
        .map(|gw| {
            http_request(
                gw.http,
                "GET / HTTP/1.1\r\nHost: gone.test\r\nConnection: close\r\n\r\n",
            )
            .unwrap()
        })
        .collect();
    for r in &answers {
        assert_eq!(r.status, 503);
        assert_eq!(
            r.text(),
            "all endpoints tried are down (service default/gone:http, endpoints tried: 2)\n"
        );
    }
    assert!(fast
        .metrics()
        .contains("portico_upstream_connect_errors_total{backend=\"default/gone:http\"}"));
}

#[test]
fn http_1_1_and_h2_over_tls_take_their_fast_paths() {
    let backend = RawBackend::start();
    let (crt, key) = self_signed(&["t.test"]);
    let mut m = route("raw", backend.port).replace(
        "spec:\n  rules:",
        "spec:\n  tls:\n  - hosts: [t.test]\n    secretName: t-tls\n  rules:",
    );
    m += &yaml::tls_secret("default", "t-tls", &crt, &key);
    let gw = Gateway::start(&[("raw.yaml", &m)], "[log]\naccess_log = true\n");
    let resolve = format!("t.test:{}:127.0.0.1", gw.https);
    let one = format!("https://t.test:{}/one", gw.https);
    let two = format!("https://t.test:{}/two", gw.https);
    // Two requests on one TLS connection, HTTP/1.1 then HTTP/2.
    for version in ["--http1.1", "--http2"] {
        let (out, err) = curl(&[
            "-k",
            version,
            "--resolve",
            &resolve,
            "-w",
            " %{http_version}\n",
            &one,
            &two,
        ]);
        assert!(out.starts_with("ok "), "{version}: {out} {err}");
    }
    let seen = backend.requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for r in &seen {
        assert_eq!(r.header("x-forwarded-proto"), Some("https"), "{}", r.head);
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    }
    // The access log says which protocol each came in on.
    wait_for(5, "four access log lines", || {
        gw.log().matches("\"path\":\"/").count() >= 4
    });
    let log = gw.log();
    assert_eq!(log.matches("\"version\":\"HTTP/1.1\"").count(), 2, "{log}");
    assert_eq!(log.matches("\"version\":\"HTTP/2.0\"").count(), 2, "{log}");
    // Both on their fast paths.
    assert_eq!(fast_path_count(&gw, "HTTP/1.1"), 2);
    assert_eq!(fast_path_count(&gw, "HTTP/2"), 2);
}

/// `curl` over h2c with prior knowledge to `t.test` on the gateway's
/// plain port: (status line and headers, body).
fn h2c(port: u16, path: &str, extra: &[&str]) -> (String, String) {
    let resolve = format!("t.test:{port}:127.0.0.1");
    let url = format!("http://t.test:{port}{path}");
    let head = std::env::temp_dir().join(format!("portico-h2-head-{}-{port}", std::process::id()));
    let head_arg = head.to_str().unwrap().to_string();
    let mut args = vec![
        "--http2-prior-knowledge",
        "--path-as-is",
        "--resolve",
        &resolve,
        "-D",
        &head_arg,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let (body, err) = curl(&args);
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    let _ = std::fs::remove_file(&head);
    assert!(
        head_text.starts_with("HTTP/2 "),
        "no HTTP/2 answer for {path}: {head_text} {err}"
    );
    (head_text, body)
}

fn fast_path_count(gw: &Gateway, protocol: &str) -> u64 {
    let needle = format!("portico_http_fast_path_requests_total{{protocol=\"{protocol}\"}} ");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle).map(|n| n.trim().parse().unwrap()))
        .unwrap_or(0)
}

#[test]
fn h2_requests_reach_the_backend_as_on_the_full_path() {
    let backend = RawBackend::start();
    let m = route("raw", backend.port);
    let fast = Gateway::start(&[("raw.yaml", &m)], "");
    let full = Gateway::start(&[("raw.yaml", &m)], FULL_PATH);
    let requests: [(&str, &[&str]); 3] = [
        // Forwarding headers from an untrusted client are replaced, the
        // rest kept; the path normalized before it goes upstream.
        (
            "/a/./b/../c?q=1",
            &[
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-H",
                "X-Real-IP: 6.6.6.6",
                "-H",
                "Forwarded: for=6.6.6.6",
                "-H",
                "X-Forwarded-Host: evil",
                "-H",
                "X-Custom: Value",
                "-H",
                "X-Request-Id: req-1",
            ],
        ),
        ("/%7Euser/%41", &["-H", "X-Request-Id: req-2"]),
        ("/h", &["-I", "-H", "X-Request-Id: req-3"]),
    ];
    for (path, extra) in requests {
        let mut seen = Vec::new();
        let mut answers = Vec::new();
        for gw in [&fast, &full] {
            let before = backend.requests().len();
            answers.push(h2c(gw.http, path, extra));
            wait_for(5, "the backend to see the request", || {
                backend.requests().len() > before
            });
            let got = backend.requests()[before..].to_vec();
            assert_eq!(got.len(), 1, "{got:?}");
            seen.push(got[0].clone());
        }
        let (fast_req, full_req) = (&seen[0], &seen[1]);
        assert_eq!(
            fast_req.head.lines().next(),
            full_req.head.lines().next(),
            "request line of {path}"
        );
        // The ports differ: compared apart.
        let by_port = ["x-forwarded-port", "host", "x-forwarded-host"];
        assert_eq!(
            header_set(&fast_req.head, &by_port),
            header_set(&full_req.head, &by_port),
            "headers upstream for {path}\nfast:\n{}\nfull:\n{}",
            fast_req.head,
            full_req.head
        );
        for (req, port) in [(fast_req, fast.http), (full_req, full.http)] {
            let authority = format!("t.test:{port}");
            assert_eq!(req.header("host"), Some(&*authority), "{}", req.head);
            assert_eq!(req.header("x-forwarded-host"), Some(&*authority));
            assert_eq!(req.header("x-forwarded-port"), Some(&*port.to_string()));
        }
        assert_eq!(fast_req.header("x-forwarded-for"), Some("127.0.0.1"));
        let lines = |head: &str| {
            head.lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
                .map(str::to_string)
                .collect::<BTreeSet<_>>()
        };
        let (a, b) = (&answers[0], &answers[1]);
        assert_eq!(lines(&a.0), lines(&b.0), "response head for {path}");
        assert_eq!(a.1, b.1, "body for {path}");
    }
    // The first gateway's fast path carried them; the second's is off.
    assert_eq!(fast_path_count(&fast, "HTTP/2"), 3);
    assert_eq!(fast_path_count(&full, "HTTP/2"), 0);
    // A request with a body goes to the full path, on the same connection
    // kind, and still reaches the backend.
    let before = backend.requests().len();
    let (head, _) = h2c(fast.http, "/post", &["--data-binary", "hello"]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    wait_for(5, "the POST to arrive", || {
        backend.requests().len() > before
    });
    assert_eq!(backend.requests()[before].body, b"hello");
    assert_eq!(fast_path_count(&fast, "HTTP/2"), 3);
}

#[test]
fn h2_responses_are_relayed_by_their_framing() {
    let be = scripted();
    let gw = Gateway::start(&[("s.yaml", &route("scripted", be.port))], "");
    // Chunked: the body without its framing (HTTP/2 has its own).
    let (head, body) = h2c(gw.http, "/chunked", &[]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert_eq!(body, "hello world");
    let (_, body) = h2c(gw.http, "/until-close", &[]);
    assert_eq!(body, "all of it");
    let (head, body) = h2c(gw.http, "/early-hints", &[]);
    assert!(head.contains("HTTP/2 200"), "{head}");
    assert_eq!(body, "final");
    for path in ["/two-lengths", "/die"] {
        let (head, body) = h2c(gw.http, path, &[]);
        assert!(head.starts_with("HTTP/2 502"), "{path}: {head}");
        assert_eq!(
            body,
            "the upstream failed (service default/scripted:http, endpoints tried: 1)\n"
        );
    }
    // A body after the answer to HEAD: the client's stream ends with the
    // head, and the upstream connection (with bytes left in it) is not
    // used again.
    let (head, _) = h2c(gw.http, "/head-with-body", &["-I"]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("content-length: 20000"), "{head}");
    let (_, body) = h2c(gw.http, "/after-head", &[]);
    assert_eq!(body, "ok");
    {
        let seen = be.seen.lock().unwrap();
        let conn = |p: &str| seen.iter().find(|(_, q)| q == p).unwrap().0;
        assert_ne!(
            conn("/head-with-body"),
            conn("/after-head"),
            "a connection with a stray body was reused: {seen:?}"
        );
    }
    // A client that gives up while the upstream is slow: its stream ends
    // there, without waiting for the upstream's answer (6 s).
    let started = std::time::Instant::now();
    let resolve = format!("t.test:{}:127.0.0.1", gw.http);
    let (_, err) = curl(&[
        "--http2-prior-knowledge",
        "--max-time",
        "1",
        "--resolve",
        &resolve,
        &format!("http://t.test:{}/slow", gw.http),
    ]);
    assert!(err.contains("timed out"), "{err}");
    wait_for(3, "the abandoned request to end", || {
        gw.metrics()
            .lines()
            .any(|l| l == "portico_http_requests_active 0")
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    // Many streams at once on one connection (10 in flight), each answered.
    let out = std::process::Command::new("h2load")
        .args([
            "-n",
            "40",
            "-c",
            "1",
            "-m",
            "10",
            "-H",
            ":authority: t.test",
        ])
        .arg(format!("http://127.0.0.1:{}/n", gw.http))
        .output()
        .expect("h2load is installed");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("40 succeeded, 0 failed"), "{out}");
    assert!(out.contains("status codes: 40 2xx"), "{out}");
    assert_eq!(fast_path_count(&gw, "HTTP/2"), 47);
}
