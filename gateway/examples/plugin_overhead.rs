//! What one plugin costs a request, without the network: runs the
//! proxy-wasm HTTP phases of a typical keep-alive request (headers in,
//! response headers, a one-chunk body, end of stream, log) through a
//! plugin chain in a loop and prints nanoseconds per request.
//!
//!     cargo run --release -p portico --example plugin_overhead -- plugin.wasm [iterations]
//!
//! The benchmark harness (`integration-tests/bench/bench.py`, scenario
//! `plugins`) runs it next to the end-to-end measurement, which is
//! noisier on a shared 2-core machine.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use portico::config::{FailPolicy, PluginConfig};
use portico::plugins::http_filter::{request_pairs, response_pairs, StreamChain};
use portico::plugins::properties::{RequestProps, StreamProps};
use portico::plugins::{host, registry};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: plugin_overhead PLUGIN.wasm [ITERATIONS]");
    let iterations: u32 = args
        .next()
        .map_or(200_000, |n| n.parse().expect("a number"));
    let engine = portico::plugins::engine().expect("engine");
    let linker = host::linker(&engine).expect("linker");
    let plugin = registry::load_one(
        &engine,
        &linker,
        &PluginConfig {
            name: "bench".into(),
            path: path.into(),
            config: String::new(),
            fail: FailPolicy::Closed,
            deadline_ms: 5,
            memory_mib: 64,
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // What wrk sends and what nginx answers in the end-to-end scenario.
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("Host", "bench.portico.test").unwrap();
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

    let request = |plugins: Vec<Arc<registry::Plugin>>| {
        let mut chain = StreamChain::new(
            plugins,
            StreamProps {
                source: Some("127.0.0.1:40000".parse().unwrap()),
                request: Some(RequestProps {
                    path: "/".into(),
                    host: "bench.portico.test".into(),
                    method: "GET".into(),
                    scheme: "http",
                    protocol: "HTTP/1.1",
                    id: String::new(),
                }),
                ..StreamProps::default()
            },
        );
        chain.set_request_headers(request_pairs(&req, "bench.portico.test", "http"));
        let mut changed = false;
        let _ = chain.on_request_headers(0, true, &mut changed);
        let mut headers = response_pairs(&resp);
        let _ = chain.on_response_headers(&mut headers, false, &mut changed);
        let mut chunk = Some(body.clone());
        let _ = chain.on_response_body(&mut chunk, false);
        let mut end = None;
        let _ = chain.on_response_body(&mut end, true);
        chain.finish();
    };

    for _ in 0..10_000 {
        request(vec![plugin.clone()]);
    }
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iterations {
            request(vec![plugin.clone()]);
        }
        let with = t.elapsed();
        let t = Instant::now();
        for _ in 0..iterations {
            request(Vec::new());
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
