//! PROXY protocol on the L7 listeners (`[proxy] proxy_protocol = true`):
//! the real binary behind a "load balancer" that is this test (raw
//! sockets for version 1 and 2 headers) or curl (`--haproxy-protocol`,
//! over TLS), with a backend that records what reaches it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use portico_integration_tests::raw_backend::RawBackend;
use portico_integration_tests::*;

const TRUSTING_LOOPBACK: &str =
    "[proxy]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n";

fn manifests(backend: &RawBackend, crt: &str, key: &str) -> String {
    let mut m = yaml::service("default", "raw", "", &[("http", 80)]);
    m += &yaml::slice("default", "raw-1", "raw", "http", backend.port, true);
    m += &yaml::ingress(
        "default",
        "raw",
        &[("t.test", "/", "Prefix", "raw", "http")],
        "  tls:\n  - hosts: [t.test]\n    secretName: t-tls\n",
    );
    m += &yaml::tls_secret("default", "t-tls", crt, key);
    m
}

fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

/// Sends `raw` on a new connection and reads one response, or `None` when
/// the gateway closes the connection without answering.
fn send(port: u16, raw: &[u8]) -> Option<Response> {
    let mut s = TcpStream::connect(addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    read_response(&mut s).ok()
}

fn last_seen(backend: &RawBackend) -> portico_integration_tests::raw_backend::RawRequest {
    backend
        .requests()
        .last()
        .cloned()
        .expect("the backend saw a request")
}

#[test]
fn the_declared_client_is_the_client_on_both_paths() {
    let backend = RawBackend::start();
    let (crt, key) = self_signed(&["t.test"]);
    let m = manifests(&backend, &crt, &key);
    for extra in ["", "fast_path = false\n"] {
        let config = format!("{TRUSTING_LOOPBACK}{extra}");
        let gw = Gateway::start(&[("pp.yaml", &m)], &config);

        // Version 1, two requests on the connection: both from the client.
        let mut s = TcpStream::connect(addr(gw.http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nGET /v1 HTTP/1.1\r\nHost: t.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).unwrap().status, 200, "{config}");
        let seen = last_seen(&backend);
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("203.0.113.7"),
            "{config}: {}",
            seen.head
        );
        assert_eq!(seen.header("x-real-ip"), Some("203.0.113.7"));
        s.write_all(b"GET /v1-again HTTP/1.1\r\nHost: t.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).unwrap().status, 200);
        assert_eq!(
            last_seen(&backend).header("x-forwarded-for"),
            Some("203.0.113.7")
        );

        // Version 2, binary, with the request in the same segment.
        let mut raw = v2_header([198, 51, 100, 9], 40000);
        raw.extend_from_slice(b"GET /v2 HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n");
        assert_eq!(send(gw.http, &raw).map(|r| r.status), Some(200), "{config}");
        assert_eq!(
            last_seen(&backend).header("x-forwarded-for"),
            Some("198.51.100.9")
        );

        // A LOCAL header (the balancer's own health check) keeps the peer.
        let mut raw = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
        raw.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n");
        assert_eq!(send(gw.http, &raw).map(|r| r.status), Some(200));
        assert_eq!(
            last_seen(&backend).header("x-forwarded-for"),
            Some("127.0.0.1")
        );

        // TLS: the header comes before the handshake (curl sends version 1
        // with the connection's own addresses).
        let url = format!("https://t.test:{}/tls", gw.https);
        let resolve = format!("t.test:{}:127.0.0.1", gw.https);
        let status = |proxy_header: bool| {
            let mut args = vec![
                "-k",
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ];
            if proxy_header {
                args.push("--haproxy-protocol");
            }
            args.push(&url);
            curl(&args)
        };
        let (out, err) = status(true);
        assert_eq!(out, "200", "{config}: {err}");
        let seen = last_seen(&backend);
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        // Without the header the handshake never starts.
        let (out, _) = status(false);
        assert_eq!(out, "000", "{config}");
    }
}

#[test]
fn connections_without_an_acceptable_header_are_closed_unread() {
    let backend = RawBackend::start();
    let (crt, key) = self_signed(&["t.test"]);
    let m = manifests(&backend, &crt, &key);
    let gw = Gateway::start(&[("pp.yaml", &m)], TRUSTING_LOOPBACK);
    // Plain HTTP where a header is expected, and a malformed header.
    assert!(send(gw.http, b"GET /no-header HTTP/1.1\r\nHost: t.test\r\n\r\n").is_none());
    assert!(send(
        gw.http,
        b"PROXY TCP4 999.0.0.1 127.0.0.1 1 80\r\nGET /bad HTTP/1.1\r\nHost: t.test\r\n\r\n"
    )
    .is_none());
    // A client that says nothing is closed after the header timeout.
    let mut s = TcpStream::connect(addr(gw.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(s.read(&mut byte).unwrap_or(0), 0);

    // From a peer that is not a trusted load balancer, even a valid header
    // is refused: anyone could claim any address.
    let untrusting = Gateway::start(
        &[("pp.yaml", &m)],
        "[proxy]\nproxy_protocol = true\ntrusted_proxies = [\"10.9.9.9/32\"]\n",
    );
    assert!(send(
        untrusting.http,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nGET /untrusted HTTP/1.1\r\nHost: t.test\r\n\r\n"
    )
    .is_none());

    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    let metrics = gw.metrics();
    for reason in ["malformed", "timeout"] {
        assert!(
            metrics.contains(&format!(
                "portico_proxy_protocol_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
    assert!(untrusting
        .metrics()
        .contains("portico_proxy_protocol_refused_total{reason=\"untrusted-peer\"}"));
}
