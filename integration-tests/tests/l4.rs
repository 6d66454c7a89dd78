//! L4 end to end: TCP (with half-close) and UDP forwarding for
//! LoadBalancer Services, ClientIP affinity (L4 and L7, by the shipped
//! `session-affinity` plugin built from source), and listeners that
//! follow the manifests.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use portico_integration_tests::*;

fn lb_service(name: &str, port: u16, protocol: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: l4}}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 127.0.0.1\n{extra}  ports:\n  - {{name: p, port: {port}, protocol: {protocol}}}\n---\n"
    )
}

fn slice_for(service: &str, slice: &str, port: u16, protocol: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: l4\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: p, port: {port}, protocol: {protocol}}}]\nendpoints:\n- addresses: [127.0.0.1]\n---\n"
    )
}

fn tcp_roundtrip(port: u16, payload: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(payload).unwrap();
    // Half-close: the backend sees EOF, finishes echoing, then closes.
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn wait_refused(port: u16) {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if TcpStream::connect(addr(port)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} still accepts connections");
}

#[test]
fn tcp_and_udp_forwarding_with_half_close() {
    let backend = Echo::tcp("t1");
    let (tcp_port, udp_port) = (free_port(), free_port());
    let m = format!(
        "{}{}{}{}",
        lb_service("tcp", tcp_port, "TCP", ""),
        slice_for("tcp", "tcp-1", backend.http, "TCP"),
        lb_service("udp", udp_port, "UDP", ""),
        slice_for("udp", "udp-1", backend.http, "UDP"),
    );
    let gw = Gateway::start(&[("l4.yaml", &m)], "");
    wait_port(tcp_port, Duration::from_secs(5));

    // A large payload crosses both directions, then the half-close.
    let payload: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let got = tcp_roundtrip(tcp_port, &payload);
    assert_eq!(got.len(), 3 + payload.len());
    assert!(got.starts_with("t1\n"));
    assert_eq!(&got.as_bytes()[3..], &payload[..]);

    // UDP: several clients, each its own flow.
    for i in 0..3 {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for j in 0..3 {
            let msg = format!("hello {i}.{j}");
            c.send_to(msg.as_bytes(), addr(udp_port)).unwrap();
            let mut buf = [0u8; 1500];
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(
                from,
                addr(udp_port),
                "replies come from the listener address"
            );
            assert_eq!(&buf[..n], format!("t1:{msg}").as_bytes());
        }
    }
    let m = gw.metrics();
    assert!(
        m.contains("portico_udp_flows_total{listener=\"udp:127.0.0.1:"),
        "{m}"
    );
    assert!(
        m.contains("portico_l4_connections_total{listener=\"tcp:127.0.0.1:"),
        "{m}"
    );
}

#[test]
fn udp_flows_expire_when_idle() {
    let backend = Echo::tcp("u1");
    let udp_port = free_port();
    let m = format!(
        "{}{}",
        lb_service("udp", udp_port, "UDP", ""),
        slice_for("udp", "udp-1", backend.http, "UDP")
    );
    let gw = Gateway::start(&[("l4.yaml", &m)], "[l4]\nudp_idle_timeout_ms = 300\n");
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 100];
    // The listener binds right after the first snapshot; retry the first datagram.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        c.send_to(b"x", addr(udp_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if c.recv_from(&mut buf).is_ok() || Instant::now() > end {
            break;
        }
    }
    let active = |gw: &Gateway| -> String {
        gw.metrics()
            .lines()
            .find(|l| l.starts_with("portico_udp_flows_active"))
            .unwrap_or("")
            .to_string()
    };
    assert!(active(&gw).ends_with(" 1"), "{}", active(&gw));
    std::thread::sleep(Duration::from_millis(1200));
    assert!(active(&gw).ends_with(" 0"), "{}", active(&gw));
}

#[test]
fn client_ip_affinity_on_l4_and_l7() {
    let a = Echo::http("a");
    let b = Echo::http("b");
    let (sticky_port, plain_port) = (free_port(), free_port());
    let affinity =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n";
    let mut m = String::new();
    m += &lb_service("sticky", sticky_port, "TCP", affinity);
    m += &slice_for("sticky", "sticky-a", a.http, "TCP");
    m += &slice_for("sticky", "sticky-b", b.http, "TCP");
    m += &lb_service("plain", plain_port, "TCP", "");
    m += &slice_for("plain", "plain-a", a.http, "TCP");
    m += &slice_for("plain", "plain-b", b.http, "TCP");
    m += "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: l4}\nspec:\n  rules:\n  - host: sticky.test\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: sticky, port: {name: p}}}}]}\n  - host: plain.test\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: plain, port: {name: p}}}}]}\n";
    let gw = Gateway::start(&[("aff.yaml", &m)], &session_affinity_config());
    wait_port(sticky_port, Duration::from_secs(5));

    let names = |port: u16, host: &str| -> HashSet<String> {
        (0..12)
            .map(|_| {
                let r = http_get(port, host, "/").unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()["name"].as_str().unwrap().to_string()
            })
            .collect()
    };
    // L4 (HTTP over the TCP listener, a new connection each time).
    assert_eq!(
        names(sticky_port, "x").len(),
        1,
        "ClientIP affinity keeps one endpoint"
    );
    assert_eq!(names(plain_port, "x").len(), 2, "round robin uses both");
    // L7 through the Ingress.
    assert_eq!(names(gw.http, "sticky.test").len(), 1);
    assert_eq!(names(gw.http, "plain.test").len(), 2);
}

#[test]
fn l4_listeners_follow_the_manifests() {
    let backend = Echo::tcp("t1");
    let (p1, p2) = (free_port(), free_port());
    let one = format!(
        "{}{}",
        lb_service("one", p1, "TCP", ""),
        slice_for("one", "one-1", backend.http, "TCP")
    );
    let two = format!(
        "{}{}",
        lb_service("two", p2, "TCP", ""),
        slice_for("two", "two-1", backend.http, "TCP")
    );
    let gw = Gateway::start(&[("one.yaml", &one), ("two.yaml", &two)], "");
    wait_port(p1, Duration::from_secs(5));
    wait_port(p2, Duration::from_secs(5));

    // A long-lived connection on `one` survives removing that listener.
    let mut held = TcpStream::connect(addr(p1)).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 3];
    held.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"t1\n");

    gw.write_manifest("one.yaml", "# removed\n");
    wait_refused(p1);
    // The other listener was not touched.
    assert_eq!(tcp_roundtrip(p2, b"still here"), "t1\nstill here");
    // The held connection still works (drains), then closes normally.
    held.write_all(b"draining").unwrap();
    held.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    held.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "draining");

    // Back again.
    gw.write_manifest("one.yaml", &one);
    wait_port(p1, Duration::from_secs(5));
    assert_eq!(tcp_roundtrip(p1, b"again"), "t1\nagain");
}

/// A TCP backend that answers each connection with every byte it
/// received (after the client's half-close), so a test sees what came
/// before the payload.
fn recording_backend() -> u16 {
    serve_each(|mut conn| {
        let mut all = Vec::new();
        let _ = conn.read_to_end(&mut all);
        let _ = conn.write_all(&all);
    })
}

#[test]
fn proxy_protocol_headers_tell_l4_backends_the_client() {
    let backend = recording_backend();
    let (v1_port, v2_port, bad_port) = (free_port(), free_port(), free_port());
    let annotated = |name: &str, port: u16, version: &str| {
        lb_service(name, port, "TCP", "").replace(
            &format!("metadata: {{name: {name}, namespace: l4}}"),
            &format!(
                "metadata: {{name: {name}, namespace: l4, annotations: {{portico.io/proxy-protocol: \"{version}\"}}}}"
            ),
        ) + &slice_for(name, &format!("{name}-1"), backend, "TCP")
    };
    let m = annotated("ppv1", v1_port, "v1")
        + &annotated("ppv2", v2_port, "v2")
        + &annotated("ppbad", bad_port, "v3");
    let gw = Gateway::start(&[("l4.yaml", &m)], "");
    wait_port(v1_port, Duration::from_secs(5));

    let exchange = |port: u16| {
        let mut s = TcpStream::connect(addr(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client_port = s.local_addr().unwrap().port();
        s.write_all(b"payload").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        (got, client_port)
    };
    let (got, client_port) = exchange(v1_port);
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {v1_port}\r\npayload")
    );
    let (got, client_port) = exchange(v2_port);
    assert!(
        got.starts_with(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"),
        "{got:?}"
    );
    assert_eq!(&got[16..20], &[127, 0, 0, 1]);
    assert_eq!(&got[24..26], &client_port.to_be_bytes());
    assert_eq!(&got[26..28], &v2_port.to_be_bytes());
    assert_eq!(&got[28..], b"payload");
    // An unknown version is a warning on the Service, and no header.
    let (got, _) = exchange(bad_port);
    assert_eq!(got, b"payload");
    let log = gw.log();
    assert!(
        log.contains(
            "annotation portico.io/proxy-protocol: \"v3\" is not a PROXY protocol version"
        ),
        "{log}"
    );
}
