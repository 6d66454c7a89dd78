//! # portico-sdk
//!
//! Everything a Portico plugin needs, in one crate:
//!
//! - **Data plane**: proxy-wasm ABI 0.2.1 contexts as traits (root, HTTP,
//!   TCP stream), headers, bodies, properties, shared data, metrics,
//!   timers, HTTP calls. This is the upstream proxy-wasm Rust SDK,
//!   re-exported as [`proxy_wasm`], so Envoy plugins move over unchanged.
//! - **Upstream choice** ([`upstream`]): read the endpoints of the backend
//!   a request or connection goes to and pick one, Portico's extension
//!   (host calls named after Higress's).
//! - **Typed properties** ([`properties`]): the values Portico provides
//!   (`source.address`, `request.path`, `portico.route`...) decoded.
//! - **Control plane** ([`control`]): hooks the gateway calls while it
//!   turns Kubernetes objects into configuration (which Ingresses to
//!   serve...), with typed JSON in and out.
//!
//! Builds with rustc 1.63 and later for `wasm32-wasi` / `wasm32-wasip1`
//! (`crate-type = ["cdylib"]`). Start from `sdk/template`.
//!
//! ```ignore
//! use portico_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
//! use portico_sdk::proxy_wasm::types::{Action, ContextType};
//!
//! portico_sdk::proxy_wasm::main! {{
//!     portico_sdk::proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
//! }}
//!
//! struct Root;
//! impl Context for Root {}
//! impl RootContext for Root {
//!     fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> { Some(Box::new(Tag)) }
//!     fn get_type(&self) -> Option<ContextType> { Some(ContextType::HttpContext) }
//! }
//!
//! struct Tag;
//! impl Context for Tag {}
//! impl HttpContext for Tag {
//!     fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
//!         let route = portico_sdk::properties::route().unwrap_or_default();
//!         self.add_http_request_header("x-route", &route);
//!         Action::Continue
//!     }
//! }
//! ```

pub use proxy_wasm;

pub mod control;
pub mod pairs;
pub mod properties;
pub mod upstream;
