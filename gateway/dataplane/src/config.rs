//! The data plane's configuration: `[proxy]` (L7) and `[l4]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub connect_timeout_ms: u64,
    /// Longest wait for the upstream to send the next bytes.
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// How long an idle upstream keep-alive connection stays in the pool.
    pub upstream_idle_timeout_ms: u64,
    /// How long an idle downstream keep-alive connection is kept open.
    pub downstream_keepalive_timeout_ms: u64,
    /// Request header block larger than this gets 431.
    pub max_request_header_bytes: usize,
    /// Extra connection attempts on other endpoints after a failed connect.
    pub connect_retries: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct L4Config {
    /// Open listeners on `nodePort` for NodePort and LoadBalancer Services.
    /// Off when kube-proxy owns those ports.
    pub node_ports: bool,
    pub tcp_idle_timeout_ms: u64,
    pub udp_idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub connect_retries: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout_ms: 2_000,
            read_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            upstream_idle_timeout_ms: 60_000,
            downstream_keepalive_timeout_ms: 75_000,
            max_request_header_bytes: 32 * 1024,
            connect_retries: 2,
        }
    }
}

impl Default for L4Config {
    fn default() -> Self {
        L4Config {
            node_ports: true,
            tcp_idle_timeout_ms: 3_600_000,
            udp_idle_timeout_ms: 60_000,
            connect_timeout_ms: 2_000,
            connect_retries: 2,
        }
    }
}

impl ProxyConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}
