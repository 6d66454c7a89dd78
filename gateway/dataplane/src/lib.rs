//! The data plane: what touches traffic. L7 on Pingora (`proxy`: the
//! HTTP/1.1 fast path in `proxy::fast_h1` in front of Pingora's proxy,
//! which serves everything else through `proxy::http`; PROXY protocol on
//! the listeners), L4 TCP and UDP listeners that come and go with the
//! snapshot (`l4`, PROXY protocol to backends), the certificate for each
//! TLS handshake (`tls_accept`), and draining on shutdown (`shutdown`).
//! It reads the published snapshot per connection or request and calls
//! the plugin host beside it.
//!
//! Must not: read Kubernetes objects or configuration files, or decide
//! what objects mean (translation does, once per snapshot).

pub mod config;
pub mod l4;
pub mod proxy;
pub mod shutdown;
pub mod tls_accept;
