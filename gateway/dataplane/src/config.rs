//! The data plane's configuration: `[proxy]` (L7) and `[l4]`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proxy::client_addr::Cidr;
use crate::proxy::path::{EscapedSlashes, PathRules};

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
    /// Send request header names upstream with the client's case
    /// (HTTP/1.1) instead of lowercase, for backends that wrongly match
    /// names case-sensitively; costs a second header map per request.
    pub preserve_header_case: bool,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-*` headers are
    /// believed: from them the forwarding headers are appended to and the
    /// client address is read from `X-Forwarded-For`; from anyone else
    /// they are replaced (see `proxy::client_addr`).
    pub trusted_proxies: Vec<Cidr>,
    /// How request paths are normalized before routing (`[proxy.paths]`).
    pub paths: PathConfig,
    /// Plain HTTP/1.1 requests on routes with no plugin and no request
    /// policy skip Pingora's per-request pipeline (`proxy::fast_h1`);
    /// off: every request takes the full path.
    pub fast_path: bool,
    /// Every L7 connection starts with a PROXY protocol header (v1 or v2)
    /// from a peer in `trusted_proxies`, whose client address is used
    /// (`proxy::proxy_protocol`); connections without one are closed.
    pub proxy_protocol: bool,
}

/// `[proxy.paths]`: one meaning per request path (see `proxy::path`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PathConfig {
    /// Remove dot segments, decode escaped unreserved characters and
    /// uppercase other escapes before routing. Turning it off lets
    /// `/x/../api` be routed as `/x/...` and served as `/api` by a backend
    /// that normalizes: the `/api` route's policies and plugins never run.
    pub normalize: bool,
    /// Merge repeated slashes (`//api` → `/api`).
    pub merge_slashes: bool,
    /// `%2F` and `%5C`: "reject" (400), "keep" or "decode".
    pub escaped_slashes: EscapedSlashes,
    /// Listeners (as in `[listen]`) that route the raw path, for backends
    /// that need it byte for byte; `0.0.0.0:P` / `[::]:P` match any
    /// address on port P.
    pub raw_listeners: Vec<SocketAddr>,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            raw_listeners: Vec::new(),
        }
    }
}

impl PathConfig {
    /// The normalizer's rules on a connection accepted on `local`, or
    /// `None` where paths are routed raw.
    pub fn rules_for(&self, local: Option<SocketAddr>) -> Option<PathRules> {
        if !self.normalize {
            return None;
        }
        let raw = local.is_some_and(|local| {
            self.raw_listeners.iter().any(|l| {
                l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip())
            })
        });
        (!raw).then_some(PathRules {
            merge_slashes: self.merge_slashes,
            escaped_slashes: self.escaped_slashes,
        })
    }
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
            preserve_header_case: false,
            trusted_proxies: Vec::new(),
            paths: PathConfig::default(),
            fast_path: true,
            proxy_protocol: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_listeners_turn_normalization_off_only_there() {
        let cfg: PathConfig =
            serde_json::from_str(r#"{"raw_listeners": ["0.0.0.0:8081", "127.0.0.1:8082"]}"#)
                .unwrap();
        let at = |s: &str| Some(s.parse().unwrap());
        assert!(cfg.rules_for(at("10.0.0.1:8080")).is_some());
        assert!(cfg.rules_for(at("10.0.0.1:8081")).is_none());
        assert!(cfg.rules_for(at("127.0.0.1:8082")).is_none());
        assert!(cfg.rules_for(at("10.0.0.1:8082")).is_some());
        let off = PathConfig {
            normalize: false,
            ..PathConfig::default()
        };
        assert!(off.rules_for(at("10.0.0.1:8080")).is_none());
    }

    #[test]
    fn escaped_slashes_policy_names_are_checked() {
        let keep: PathConfig = serde_json::from_str(r#"{"escaped_slashes": "keep"}"#).unwrap();
        assert_eq!(keep.escaped_slashes, EscapedSlashes::Keep);
        let err =
            serde_json::from_str::<PathConfig>(r#"{"escaped_slashes": "allow"}"#).unwrap_err();
        assert!(err.to_string().contains("reject"), "{err}");
    }
}
