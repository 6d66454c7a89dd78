//! Who the client is when Portico sits behind other proxies.
//!
//! `X-Forwarded-For` and its relatives are only as honest as whoever sent
//! them: from an arbitrary client they are whatever it wants allowlists,
//! rate limits and backends to believe. So they are believed only from
//! peers in `proxy.trusted_proxies` (a load balancer or CDN in front of
//! Portico); from anyone else they are replaced. Behind trusted proxies the
//! client is the rightmost `X-Forwarded-For` address that is not itself a
//! trusted proxy (nginx's `real_ip_recursive on`), since every hop appends
//! and only the hops we trust can be believed about who they talked to.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A CIDR or a single address, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(|n| Cidr(n.trunc()))
            .map_err(|_| format!("{s:?} is neither a CIDR (10.0.0.0/8) nor an address"))
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|c| c.0.contains(&ip))
}

/// The client behind a trusted `peer`, from the request's
/// `X-Forwarded-For` values (every header line, in order): the rightmost
/// address that is not a trusted proxy. An entry that is not an address
/// ends the walk (the hop that wrote it is not believable beyond it), and
/// so does running out of entries: the last trusted hop is the client.
pub fn client_behind<'a>(
    trusted: &[Cidr],
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> IpAddr {
    let mut client = peer;
    for line in forwarded_for.rev() {
        let Ok(line) = std::str::from_utf8(line) else {
            return client;
        };
        for entry in line.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(trusted, ip) {
                return client;
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, how a dual-stack socket sees IPv4
/// peers) compares as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|s| Cidr::try_from(s.to_string()).unwrap())
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(trusted: &[&str], peer: &str, xff: &[&str]) -> IpAddr {
        client_behind(&cidrs(trusted), ip(peer), xff.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn config_entries_are_cidrs_or_addresses() {
        let c = cidrs(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.2.3/16"]);
        assert_eq!(c[1].to_string(), "192.0.2.7/32");
        // Host bits are dropped, so the entry reads as what it matches.
        assert_eq!(c[3].to_string(), "10.1.0.0/16");
        let err = Cidr::try_from("10.0.0.0/33".to_string()).unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let lb = ["10.0.0.0/8"];
        assert_eq!(client(&lb, "10.0.0.5", &["203.0.113.9"]), ip("203.0.113.9"));
        // A client that forges a chain only adds entries to the left of
        // the one the trusted hop appended.
        assert_eq!(
            client(&lb, "10.0.0.5", &["1.1.1.1, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        // Trusted hops are walked through, across header lines.
        assert_eq!(
            client(&lb, "10.0.0.5", &["198.51.100.1, 10.9.9.9", "10.0.0.7"]),
            ip("198.51.100.1")
        );
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            client(&lb, "10.0.0.5", &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            client(&lb, "10.0.0.5", &["192.0.2.1:1234"]),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn garbage_or_an_all_trusted_chain_stops_at_the_last_believable_hop() {
        let lb = ["10.0.0.0/8"];
        assert_eq!(
            client(&lb, "10.0.0.5", &["unknown, 10.0.0.9"]),
            ip("10.0.0.9")
        );
        assert_eq!(client(&lb, "10.0.0.5", &[]), ip("10.0.0.5"));
        assert_eq!(client(&lb, "10.0.0.5", &["10.1.1.1"]), ip("10.1.1.1"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_entries() {
        assert!(is_trusted(&cidrs(&["10.0.0.0/8"]), ip("::ffff:10.0.0.5")));
        assert!(!is_trusted(&cidrs(&["10.0.0.0/8"]), ip("::ffff:11.0.0.5")));
        assert!(!is_trusted(&[], ip("127.0.0.1")));
    }
}
