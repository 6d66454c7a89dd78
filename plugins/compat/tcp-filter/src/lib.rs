//! A TCP test plugin written against the upstream proxy-wasm Rust SDK
//! (the `proxy-wasm` crate), not Portico's SDK: proxy-wasm stream
//! contexts on an L4 listener, driven by the integration tests.
//!
//! - every connection bumps the shared-data counter `compat.tcp`;
//! - client → upstream: `ping` becomes `PING` (same length);
//!   `close-me` makes the plugin close the connection;
//! - upstream → client: the first bytes get the prefix `[<config>] `
//!   (a length change);
//! - the close of each side is logged.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { prefix: String::new() })
    });
}}

struct Root {
    prefix: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.prefix = String::from_utf8_lossy(&config).into_owned();
        true
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Conn {
            prefix: format!("[{}] ", self.prefix),
            prefixed: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Conn {
    prefix: String,
    prefixed: bool,
}

impl Context for Conn {}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

impl StreamContext for Conn {
    fn on_new_connection(&mut self) -> Action {
        for _ in 0..100 {
            let (value, cas) = hostcalls::get_shared_data("compat.tcp").unwrap_or((None, None));
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            let next = (n + 1).to_string();
            if hostcalls::set_shared_data("compat.tcp", Some(next.as_bytes()), cas).is_ok() {
                break;
            }
        }
        Action::Continue
    }

    fn on_downstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        let data = self.get_downstream_data(0, size).unwrap_or_default();
        if data.windows(8).any(|w| w == b"close-me") {
            self.close_downstream();
            return Action::Pause;
        }
        let changed = replace_all(&data, b"ping", b"PING");
        if changed != data {
            self.set_downstream_data(0, size, &changed);
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if !self.prefixed && size > 0 {
            self.prefixed = true;
            self.set_upstream_data(0, 0, self.prefix.as_bytes());
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, _peer: PeerType) {
        log::info!("compat-tcp-filter: client side closed");
    }

    fn on_upstream_close(&mut self, _peer: PeerType) {
        log::info!("compat-tcp-filter: upstream side closed");
    }
}
