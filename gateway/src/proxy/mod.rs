//! The L7 data plane.

pub mod http;
