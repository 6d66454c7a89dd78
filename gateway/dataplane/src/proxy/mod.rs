//! The L7 data plane.

pub mod http;
pub mod limits;
pub mod path;
