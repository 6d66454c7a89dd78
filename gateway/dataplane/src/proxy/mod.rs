//! The L7 data plane.

pub mod client_addr;
pub mod http;
pub mod limits;
pub mod path;
