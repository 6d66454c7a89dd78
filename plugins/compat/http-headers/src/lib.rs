//! A test plugin written against the upstream proxy-wasm Rust SDK (the
//! `proxy-wasm` crate), not Portico's SDK: it proves plugins built for
//! Envoy run unchanged.
//!
//! - the plugin configuration (UTF-8 text) becomes the `x-compat-tag`
//!   request header;
//! - `/blocked` is answered locally with 403 and `x-blocked-by: compat`;
//! - every response gets `x-compat: 1`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { tag: String::new() })
    });
}}

struct Root {
    tag: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(config) = self.get_plugin_configuration() {
            self.tag = String::from_utf8_lossy(&config).into_owned();
        }
        log::info!("compat-http-headers configured with tag {:?}", self.tag);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            tag: self.tag.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    tag: String,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header(":path").as_deref() == Some("/blocked") {
            self.send_http_response(403, vec![("x-blocked-by", "compat")], Some(b"blocked\n"));
            return Action::Pause;
        }
        self.add_http_request_header("x-compat-tag", &self.tag);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-compat", Some("1"));
        Action::Continue
    }
}
