//! A test plugin written against the upstream proxy-wasm Rust SDK (the
//! `proxy-wasm` crate), not Portico's SDK, exercising what Envoy plugins
//! use. The integration tests drive it through the real gateway:
//!
//! - every request: `x-compat-tag` (the plugin configuration),
//!   `x-compat-source` (`source.address`), `x-compat-route`
//!   (`portico.route`), `x-compat-method` (`request.method`), and
//!   `x-compat-count`, a counter kept in shared data with compare-and-swap;
//!   the metric `compat_requests` counts them;
//! - `/blocked`: answered locally, 403 with `x-blocked-by: compat`;
//! - `/rewrite/...`: the path becomes `/rewritten/...`;
//! - `/upper...`: the request body is buffered and upper-cased; with
//!   `/upper-response...` the response body is too;
//! - `/ticks`: answered locally with the number of timer ticks so far
//!   (shared data written by `on_tick`, every 20 ms);
//! - every response gets `x-compat: 1` and `x-compat-status` (the
//!   `response.code` property);
//! - `/callout...`: the request waits while the plugin calls the upstream
//!   named by the `x-callout-upstream` header (`GET /called`); the answer's
//!   status, `x-echo-name` and body size become request headers
//!   (`x-callout-*`). With `/callout-deny` the plugin answers 401 instead;
//! - `/late-callout...`: the same call made from the response headers,
//!   which wait for it; the answer's status and `x-echo-name` become
//!   response headers (`x-late-callout-*`);
//! - `/pick-last...`: the plugin lists the backend's endpoints with
//!   Portico's upstream-choice extension (`proxy_get_upstream_hosts`, not
//!   in the upstream SDK, so imported directly here) and sends the request
//!   to the last ready one in address order
//!   (`proxy_set_upstream_override_host`); `x-compat-candidates` says how
//!   many there were;
//! - `/enqueue/<text>`: puts `<text>` on the shared queue `compat.queue`,
//!   which the root context registered at start; its `on_queue_ready`
//!   takes it off and keeps it in shared data; `/queue-last` answers with
//!   the last text taken.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { tag: String::new(), requests: 0 })
    });
}}

struct Root {
    tag: String,
    requests: u32,
}

extern "C" {
    fn proxy_get_upstream_hosts(return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_set_upstream_override_host(data: *const u8, size: usize) -> u32;
}

/// Pairs in the proxy-wasm header-map encoding.
fn parse_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |i: usize| -> usize {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[i..i + 4]);
        u32::from_le_bytes(b) as usize
    };
    if bytes.len() < 4 {
        return Vec::new();
    }
    let n = word(0);
    let mut at = 4 + 8 * n;
    let mut out = Vec::new();
    for i in 0..n {
        let (kl, vl) = (word(4 + 8 * i), word(8 + 8 * i));
        let k = String::from_utf8_lossy(&bytes[at..at + kl]).into_owned();
        at += kl + 1;
        let v = String::from_utf8_lossy(&bytes[at..at + vl]).into_owned();
        at += vl + 1;
        out.push((k, v));
    }
    out
}

fn upstream_hosts() -> Vec<(String, String)> {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // Safety: the host writes a buffer it allocated with our allocator
    // (`proxy_on_memory_allocate`) and its length.
    unsafe {
        if proxy_get_upstream_hosts(&mut ptr, &mut len) != 0 || ptr.is_null() || len == 0 {
            return Vec::new();
        }
        let bytes = Vec::from_raw_parts(ptr, len, len);
        parse_pairs(&bytes)
    }
}

fn choose_upstream(addr: &str) -> bool {
    unsafe { proxy_set_upstream_override_host(addr.as_ptr(), addr.len()) == 0 }
}

/// Adds one to a shared-data counter, retrying on a CAS mismatch.
fn bump(key: &str) -> u64 {
    for _ in 0..100 {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let text = n.to_string();
        if hostcalls::set_shared_data(key, Some(text.as_bytes()), cas).is_ok() {
            return n;
        }
    }
    0
}

fn read_counter(key: &str) -> u64 {
    hostcalls::get_shared_data(key)
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.set_tick_period(Duration::from_millis(20));
        let _ = hostcalls::register_shared_queue("compat.queue");
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            let _ = hostcalls::set_shared_data("compat.queue.last", Some(&item), None);
        }
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(config) = self.get_plugin_configuration() {
            self.tag = String::from_utf8_lossy(&config).into_owned();
        }
        if self.tag == "reject" {
            return false;
        }
        self.requests = hostcalls::define_metric(MetricType::Counter, "compat_requests").unwrap_or(0);
        log::info!("compat-http-filter configured with tag {:?}", self.tag);
        true
    }

    fn on_tick(&mut self) {
        bump("compat.ticks");
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            tag: self.tag.clone(),
            requests: self.requests,
            upper_request: false,
            upper_response: false,
            deny_after_call: false,
            late_upstream: None,
            late_call: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    tag: String,
    requests: u32,
    upper_request: bool,
    upper_response: bool,
    deny_after_call: bool,
    /// `/late-callout`: the upstream to call from the response headers.
    late_upstream: Option<String>,
    /// The pending call is the response headers' one.
    late_call: bool,
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if self.late_call {
            let name = self.get_http_call_response_header("x-echo-name").unwrap_or_default();
            self.set_http_response_header("x-late-callout-status", Some(&status));
            self.set_http_response_header("x-late-callout-name", Some(&name));
            self.resume_http_response();
            return;
        }
        if self.deny_after_call {
            self.send_http_response(401, vec![("x-denied-by", "callout")], Some(b"denied\n"));
            return;
        }
        let name = self.get_http_call_response_header("x-echo-name").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        self.set_http_request_header("x-callout-status", Some(&status));
        self.set_http_request_header("x-callout-name", Some(&name));
        self.set_http_request_header("x-callout-body-bytes", Some(&body.len().to_string()));
        self.resume_http_request();
    }
}

fn text(v: Option<Vec<u8>>) -> String {
    v.map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path == "/blocked" {
            self.send_http_response(403, vec![("x-blocked-by", "compat")], Some(b"blocked\n"));
            return Action::Pause;
        }
        if let Some(text) = path.strip_prefix("/enqueue/") {
            let queued = hostcalls::resolve_shared_queue("", "compat.queue")
                .ok()
                .flatten()
                .map(|q| hostcalls::enqueue_shared_queue(q, Some(text.as_bytes())).is_ok())
                .unwrap_or(false);
            let status = if queued { 202 } else { 500 };
            self.send_http_response(status, vec![], None);
            return Action::Pause;
        }
        if path == "/queue-last" {
            let last = hostcalls::get_shared_data("compat.queue.last")
                .ok()
                .and_then(|(v, _)| v)
                .unwrap_or_default();
            self.send_http_response(200, vec![], Some(&last));
            return Action::Pause;
        }
        if path == "/ticks" {
            let body = format!("{}\n", read_counter("compat.ticks"));
            self.send_http_response(200, vec![("content-type", "text/plain")], Some(body.as_bytes()));
            return Action::Pause;
        }
        if path.starts_with("/late-callout") {
            self.late_upstream = self.get_http_request_header("x-callout-upstream");
        }
        if path.starts_with("/callout") {
            self.deny_after_call = path.starts_with("/callout-deny");
            let upstream = self.get_http_request_header("x-callout-upstream").unwrap_or_default();
            let call = self.dispatch_http_call(
                &upstream,
                vec![(":method", "GET"), (":path", "/called"), (":authority", "callout.test"), ("x-from", "compat")],
                None,
                vec![],
                Duration::from_secs(5),
            );
            if call.is_err() {
                self.send_http_response(500, vec![], Some(b"callout refused\n"));
            }
            return Action::Pause;
        }
        if path.starts_with("/pick-last") {
            let hosts = upstream_hosts();
            self.add_http_request_header("x-compat-candidates", &hosts.len().to_string());
            let last = hosts
                .iter()
                .filter(|(_, state)| state == "ready")
                .map(|(addr, _)| addr.clone())
                .max();
            if let Some(addr) = last {
                let ok = choose_upstream(&addr);
                self.add_http_request_header("x-compat-chose", if ok { &addr } else { "refused" });
            }
        }
        if let Some(rest) = path.strip_prefix("/rewrite/") {
            self.set_http_request_header(":path", Some(&format!("/rewritten/{rest}")));
        }
        if path.starts_with("/upper") {
            self.upper_request = true;
            self.upper_response = path.starts_with("/upper-response");
            // The body changes, so its length may: let the proxy frame it.
            self.set_http_request_header("content-length", None);
        }
        let _ = hostcalls::increment_metric(self.requests, 1);
        let count = bump("compat.requests");
        self.add_http_request_header("x-compat-tag", &self.tag);
        self.add_http_request_header("x-compat-count", &count.to_string());
        let source = text(self.get_property(vec!["source", "address"]));
        self.add_http_request_header("x-compat-source", &source);
        let route = text(self.get_property(vec!["portico", "route"]));
        self.add_http_request_header("x-compat-route", &route);
        let method = text(self.get_property(vec!["request", "method"]));
        self.add_http_request_header("x-compat-method", &method);
        // The TLS client's SNI; none over clear text.
        let sni = text(self.get_property(vec!["connection", "requested_server_name"]));
        if !sni.is_empty() {
            self.add_http_request_header("x-compat-sni", &sni);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.upper_request {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-compat", Some("1"));
        let code = self
            .get_property(vec!["response", "code"])
            .filter(|v| v.len() == 8)
            .map(|v| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                i64::from_le_bytes(b)
            })
            .unwrap_or(-1);
        self.set_http_response_header("x-compat-status", Some(&code.to_string()));
        if self.upper_response {
            self.set_http_response_header("content-length", None);
        }
        if let Some(upstream) = self.late_upstream.take() {
            let call = self.dispatch_http_call(
                &upstream,
                vec![(":method", "GET"), (":path", "/called-late"), (":authority", "callout.test")],
                None,
                vec![],
                Duration::from_secs(5),
            );
            if call.is_ok() {
                self.late_call = true;
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.upper_response {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, body_size) {
            self.set_http_response_body(0, body_size, &body.to_ascii_uppercase());
        }
        Action::Continue
    }
}
