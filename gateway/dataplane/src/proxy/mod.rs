//! The L7 data plane.

pub mod client_addr;
pub mod fast_h1;
mod fast_h2;
mod h1_wire;
pub mod http;
pub mod limits;
mod mirror;
pub mod path;
pub mod proxy_protocol;
mod replay;
mod upstream_idle;
