//! What one plugin costs a request, without the network: runs the
//! proxy-wasm HTTP phases of a typical keep-alive request (headers in,
//! response headers, a body with a length, log) through a plugin chain in
//! a loop, with the work the proxy adds when a plugin applies (properties,
//! the proxy's headers lent to each phase), and prints nanoseconds per request.
//!
//!     cargo run --release -p portico-wasm --example plugin_overhead -- plugin.wasm [iterations] [--sticky]
//!
//! With `--sticky` the request is one that the `session-affinity` plugin
//! acts on: its Ingress asks for cookie affinity, the backend has two
//! endpoints, and the request carries the cookie of one of them.
//!
//! The benchmark harness (`integration-tests/bench/bench.py`, scenario
//! `plugins`) runs it next to the end-to-end measurement, which is
//! noisier on a shared 2-core machine.

use std::sync::Arc;
use std::time::Instant;

// The allocator the `portico` binary runs with: the plugin path allocates
// a little per request, and glibc's malloc would misstate what that costs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use portico_model::lb::{HealthPolicy, PolicyKind, Pool};
use portico_model::snapshot::{BackendKey, BackendSpec, EndpointSpec, EndpointState};
use portico_wasm::config::{FailPolicy, PluginConfig};
use portico_wasm::headers::Lent;
use portico_wasm::http_filter::StreamChain;
use portico_wasm::properties::{Candidates, RequestProps, StreamProps};
use portico_wasm::{host, registry};
use std::collections::BTreeMap;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: plugin_overhead PLUGIN.wasm [ITERATIONS]");
    let iterations: u32 = args
        .next()
        .map_or(200_000, |n| n.parse().expect("a number"));
    let sticky = args.next().as_deref() == Some("--sticky");
    let engine = portico_wasm::engine().expect("engine");
    let linker = host::linker(&engine).expect("linker");
    let plugin = registry::load_one(
        &engine,
        &linker,
        &PluginConfig {
            name: "bench".into(),
            path: path.into(),
            config: String::new(),
            root_id: None,
            fail: FailPolicy::Closed,
            deadline_ms: 5,
            memory_mib: 64,
            applies_to: None,
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // What wrk sends and what nginx answers in the end-to-end scenario.
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("Host", "bench.portico.test").unwrap();
    // The session-affinity case: two endpoints, cookie affinity asked for
    // by the Ingress, and the client's cookie naming the second endpoint.
    let pool = Arc::new(Pool::new(
        BackendSpec {
            key: BackendKey {
                namespace: "bench".into(),
                service: "backend".into(),
                port: "http".into(),
            },
            endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
                .iter()
                .map(|a| EndpointSpec {
                    addr: a.parse().unwrap(),
                    state: EndpointState::Ready,
                    target: None,
                })
                .collect(),
            policy: PolicyKind::RoundRobin,
            affinity: None,
            plugins: Vec::new(),
            scoped_http: Vec::new(),
            scoped_tcp: Vec::new(),
            proxy_protocol: None,
        },
        Arc::default(),
        HealthPolicy::default(),
    ));
    let annotations: Arc<portico_model::routing::Annotations> = Arc::new(
        BTreeMap::from([(
            "nginx.ingress.kubernetes.io/affinity".to_string(),
            "cookie".to_string(),
        )])
        .into(),
    );
    if sticky {
        // FNV-1a of "10.0.0.2:80", as the plugin computes it.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in "10.0.0.2:80".bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        req.insert_header("Cookie", format!("INGRESSCOOKIE={h:016x}"))
            .unwrap();
    }
    let mut resp = ResponseHeader::build(200, None).unwrap();
    for (k, v) in [
        ("Server", "nginx/1.22.1"),
        ("Date", "Mon, 23 Nov 2026 12:00:00 GMT"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "34"),
        ("Connection", "keep-alive"),
        ("x-request-id", "0123456789abcdef0123456789abcdef"),
    ] {
        resp.insert_header(k, v).unwrap();
    }
    let body = Bytes::from_static(b"hello from the benchmark backend\n");

    let source: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let upstream: std::net::SocketAddr = "10.0.0.2:80".parse().unwrap();
    // What the proxy does for a request when a plugin applies (the
    // properties, the headers lent to each phase, every
    // callback), and nothing when none does, as in `proxy::http`.
    let request = |plugins: Vec<Arc<registry::Plugin>>,
                   req: &mut RequestHeader,
                   resp: &mut ResponseHeader| {
        if plugins.is_empty() {
            return;
        }
        let mut chain = StreamChain::new(
            plugins,
            StreamProps {
                source: Some(source),
                request: Some(RequestProps {
                    uri: req.uri.clone(),
                    host: "bench.portico.test".into(),
                    method: req.method.clone(),
                    scheme: "http",
                    protocol: "HTTP/1.1",
                    id: String::new(),
                }),
                candidates: sticky.then(|| Candidates(pool.clone())),
                annotations: sticky.then(|| annotations.clone()),
                upstream: Some(upstream),
                ..StreamProps::default()
            },
        );
        let mut changed = false;
        let mut headers = Lent::request(req, "http");
        let v = chain.on_request_headers(headers.slot(), 0, true, &mut changed);
        drop(headers.finish());
        if sticky && !matches!(v, portico_wasm::http_filter::Verdict::Continue) {
            panic!("{v:?}");
        }
        let mut request = Lent::request(req, "http");
        let mut headers = Lent::response(resp);
        let _ =
            chain.on_response_headers(request.slot(), headers.slot(), false, &mut changed, None);
        drop(request.finish());
        drop(headers.finish());
        // A body with a length arrives whole, marked as the end.
        let mut chunk = Some(body.clone());
        let _ = chain.on_response_body(&mut chunk, true);
        if sticky {
            // The plugin did act: it chose the cookie's endpoint.
            assert_eq!(chain.override_host, Some(upstream));
        }
        let mut request = Lent::request(req, "http");
        chain.finish(Some(request.slot()));
        drop(request.finish());
    };
    for _ in 0..10_000 {
        request(vec![plugin.clone()], &mut req, &mut resp);
    }
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iterations {
            request(vec![plugin.clone()], &mut req, &mut resp);
        }
        let with = t.elapsed();
        let t = Instant::now();
        for _ in 0..iterations {
            request(Vec::new(), &mut req, &mut resp);
        }
        let without = t.elapsed();
        rounds.push((with.as_nanos() as f64 - without.as_nanos() as f64) / iterations as f64);
    }
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{{\"plugin\": {:?}, \"iterations\": {iterations}, \"ns_per_request_median\": {:.0}, \"ns_per_request_min\": {:.0}}}",
        plugin.path.display().to_string(),
        rounds[2],
        rounds[0]
    );
}
