//! A template HTTP filter on `portico-sdk`:
//!
//! - tells the backend which route served the request (`x-portico-route`,
//!   from the `portico.route` property);
//! - with a request header `x-pin-endpoint: <ip:port>`, sends the request
//!   to that endpoint of the backend if it is one (upstream choice);
//! - reads a greeting from its configuration and adds it to responses.

use portico_sdk::proxy_wasm;
use portico_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use portico_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};
use portico_sdk::{properties, upstream};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { greeting: String::new() })
    });
}}

struct Root {
    greeting: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.greeting = String::from_utf8_lossy(&config).trim().to_string();
        log::info!("template plugin configured: greeting {:?}", self.greeting);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            greeting: self.greeting.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    greeting: String,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(route) = properties::route() {
            self.set_http_request_header("x-portico-route", Some(&route));
        }
        if let Some(pin) = self.get_http_request_header("x-pin-endpoint") {
            let known = upstream::hosts()
                .map(|hosts| hosts.iter().any(|h| h.address == pin))
                .unwrap_or(false);
            if known && upstream::choose(&pin).is_ok() {
                log::debug!("pinned to {pin}");
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if !self.greeting.is_empty() {
            self.set_http_response_header("x-greeting", Some(&self.greeting));
        }
        Action::Continue
    }
}
