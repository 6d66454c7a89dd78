//! `[announce]`: how this node makes the addresses it owns reachable.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceMode {
    /// Addresses are reachable some other way (configured on the node,
    /// routed to it, or announced by MetalLB/kube-vip).
    #[default]
    Off,
    /// ARP (IPv4) and NDP (IPv6) on the segment.
    L2,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceConfig {
    pub mode: AnnounceMode,
    /// The addresses this node owns and announces.
    pub addresses: Vec<IpAddr>,
    /// Interfaces to announce on. Empty: for each address, the interface
    /// with a network of its family that contains it.
    pub interfaces: Vec<String>,
    /// Gratuitous ARP / unsolicited neighbor advertisements for every owned
    /// address this often (and at take-over).
    pub garp_interval_seconds: u64,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            mode: AnnounceMode::Off,
            addresses: Vec::new(),
            interfaces: Vec::new(),
            garp_interval_seconds: 60,
        }
    }
}

impl AnnounceConfig {
    /// Problems with the section, each naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.mode == AnnounceMode::L2 {
            if self.addresses.is_empty() {
                out.push(
                    "announce.addresses: mode \"l2\" announces nothing without addresses".into(),
                );
            }
            for a in &self.addresses {
                let link_local = match a {
                    IpAddr::V4(v4) => v4.is_link_local(),
                    IpAddr::V6(v6) => v6.is_unicast_link_local(),
                };
                if a.is_loopback() || a.is_unspecified() || a.is_multicast() || link_local {
                    out.push(format!("announce.addresses: {a} cannot be announced"));
                }
            }
            if self.garp_interval_seconds == 0 {
                out.push("announce.garp_interval_seconds: must be at least 1".into());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_needs_announceable_addresses() {
        let mut c = AnnounceConfig {
            mode: AnnounceMode::L2,
            ..AnnounceConfig::default()
        };
        assert_eq!(c.validate().len(), 1, "{:?}", c.validate());
        c.addresses = vec!["192.0.2.10".parse().unwrap()];
        assert!(c.validate().is_empty());
        c.addresses.push("2001:db8::1".parse().unwrap());
        assert!(c.validate().is_empty(), "IPv6 (NDP): {:?}", c.validate());
        c.addresses.push("127.0.0.1".parse().unwrap());
        c.addresses.push("fe80::1".parse().unwrap());
        let problems = c.validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("fe80::1 cannot")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("127.0.0.1 cannot")),
            "{problems:?}"
        );
        // Off: nothing to check.
        c.mode = AnnounceMode::Off;
        assert!(c.validate().is_empty());
    }
}
