//! The PROXY protocol (HAProxy's, versions 1 and 2) on the L7 listeners:
//! with `[proxy] proxy_protocol = true`, every connection starts with a
//! PROXY header from a load balancer in `proxy.trusted_proxies`, and the
//! client address it declares becomes the connection's peer address for
//! everything after it (forwarding headers, allowlists, rate limits,
//! affinity, plugins, logs), as ingress-nginx's `use-proxy-protocol`.
//!
//! A connection from a peer that is not trusted, or one whose first bytes
//! are not a complete, valid header within the timeout, is closed before
//! anything is read as HTTP or TLS: a listener that expects the header
//! never guesses. A version 2 `LOCAL` header (a load balancer's own health
//! check) and a version 1 `UNKNOWN` keep the connection's own address.
//! Parsing is the `ppp` crate's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::{GetSocketDigest, SocketDigest, UniqueID};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::client_addr::{self, Cidr};

/// The longest header read: a version 1 header is at most 107 bytes, a
/// version 2 one 16 plus its addresses and TLVs (load balancers send a few
/// hundred bytes at most).
const MAX_HEADER: usize = 4096;
/// How long a connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection was closed before its header was accepted (the
/// `reason` label of `portico_proxy_protocol_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    UntrustedPeer,
    Malformed,
    TooLong,
    Timeout,
    Closed,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::UntrustedPeer => "untrusted-peer",
            Refused::Malformed => "malformed",
            Refused::TooLong => "too-long",
            Refused::Timeout => "timeout",
            Refused::Closed => "closed",
        }
    }
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// The client's address and port.
    Client(SocketAddr),
    /// Nothing about a client (`LOCAL`, `UNKNOWN`, or an address family
    /// other than IPv4/IPv6): the connection's own peer stands.
    Own,
}

/// Parses a complete header at the start of `buf`: what it declares and
/// its length; `Ok(None)` while more bytes may complete it.
pub fn parse(buf: &[u8]) -> Result<Option<(Declared, usize)>, Refused> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Err(Refused::TooLong)
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let declared = match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Declared::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Declared::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => Declared::Own,
            };
            Ok(Some((declared, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let declared = match (h.command, h.addresses) {
                (v2::Command::Local, _) => Declared::Own,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Declared::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Declared::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, _) => Declared::Own,
            };
            Ok(Some((declared, h.len())))
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(Refused::Malformed),
    }
}

/// Reads and checks the header at the start of `stream` (whose peer is
/// `peer`), then makes the declared client the stream's peer address.
/// Returns the bytes read past the header (the start of HTTP or TLS).
pub async fn accept<S>(stream: &mut S, trusted: &[Cidr]) -> Result<Vec<u8>, Refused>
where
    S: AsyncRead + GetSocketDigest + UniqueID + Unpin + ?Sized,
{
    let result = read_and_declare(stream, trusted).await;
    if let Err(why) = result {
        metrics::counter!("portico_proxy_protocol_refused_total", "reason" => why.as_str())
            .increment(1);
        tracing::debug!(
            reason = why.as_str(),
            "connection without an acceptable PROXY header closed"
        );
    }
    result
}

async fn read_and_declare<S>(stream: &mut S, trusted: &[Cidr]) -> Result<Vec<u8>, Refused>
where
    S: AsyncRead + GetSocketDigest + UniqueID + Unpin + ?Sized,
{
    let digest = stream.get_socket_digest();
    let peer = digest
        .as_ref()
        .and_then(|d| d.peer_addr())
        .and_then(|a| a.as_inet())
        .copied();
    if !peer.is_some_and(|p| client_addr::is_trusted(trusted, p.ip())) {
        return Err(Refused::UntrustedPeer);
    }
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let (declared, len) = loop {
        if let Some(done) = parse(&buf)? {
            break done;
        }
        let n = match tokio::time::timeout(HEADER_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Refused::Closed),
            Ok(Ok(n)) => n,
            Err(_) => return Err(Refused::Timeout),
        };
        buf.extend_from_slice(&chunk[..n]);
    };
    if let Declared::Client(client) = declared {
        let replaced = SocketDigest::from_raw_fd(stream.id());
        let _ = replaced.peer_addr.set(Some(PeerAddr::Inet(client)));
        let _ = replaced
            .local_addr
            .set(digest.as_ref().and_then(|d| d.local_addr()).cloned());
        stream.set_socket_digest(replaced);
    }
    Ok(buf.split_off(len))
}

/// The same for TLS listeners, before the handshake (Pingora's pre-TLS
/// hook): the bytes read past the header go back to the handshake.
pub struct BeforeTls {
    pub trusted: Arc<Vec<Cidr>>,
}

#[async_trait]
impl pingora::listeners::PreTlsProcess for BeforeTls {
    async fn process(
        &self,
        stream: &mut pingora::protocols::l4::stream::Stream,
    ) -> pingora::Result<()> {
        match accept(stream, &self.trusted).await {
            Ok(rest) => {
                stream.rewind(&rest);
                Ok(())
            }
            Err(why) => Err(pingora::Error::explain(
                pingora::ErrorType::AcceptError,
                format!("PROXY protocol: {}", why.as_str()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn version_1_declares_the_client() {
        let raw = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(raw),
            Ok(Some((
                Declared::Client("203.0.113.7:51000".parse().unwrap()),
                42
            )))
        );
        let raw = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse(raw),
            Ok(Some((
                Declared::Client("[2001:db8::7]:51000".parse().unwrap()),
                raw.len()
            )))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Declared::Own, 15))));
    }

    #[test]
    fn version_2_declares_the_client_unless_local() {
        let mut addresses = vec![198, 51, 100, 9, 10, 0, 0, 1];
        addresses.extend_from_slice(&40000u16.to_be_bytes());
        addresses.extend_from_slice(&443u16.to_be_bytes());
        let mut raw = v2(0x1, 0x11, &addresses);
        let len = raw.len();
        raw.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&raw),
            Ok(Some((
                Declared::Client("198.51.100.9:40000".parse().unwrap()),
                len
            )))
        );
        let local = v2(0x0, 0x00, &[]);
        assert_eq!(parse(&local), Ok(Some((Declared::Own, 16))));
    }

    #[test]
    fn partial_headers_wait_and_wrong_ones_are_refused() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7"), Ok(None));
        assert_eq!(parse(&v2(0x1, 0x11, &[1, 2, 3, 4])[..14]), Ok(None));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(Refused::Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n"),
            Err(Refused::Malformed)
        );
        assert_eq!(parse(&[b'P'; MAX_HEADER]), Err(Refused::Malformed));
    }

    /// Randomized robustness (a stand-in for fuzzing): any bytes give a
    /// verdict without panicking, a complete header never claims more
    /// bytes than it was given, and a valid header's verdict does not
    /// change with what follows it.
    #[test]
    fn any_bytes_get_a_verdict() {
        let mut rng = fastrand::Rng::with_seed(0x9909_0002);
        let prefixes: [&[u8]; 3] = [b"PROXY TCP4 ", b"\r\n\r\n\0\r\nQUIT\n", b""];
        for _ in 0..20_000 {
            let mut buf = prefixes[rng.usize(..prefixes.len())].to_vec();
            let len = rng.usize(0..120);
            buf.extend((0..len).map(|_| match rng.u8(..4) {
                0 => b"0123456789. :\r\n"[rng.usize(..15)],
                _ => rng.u8(..),
            }));
            if let Ok(Some((_, n))) = parse(&buf) {
                assert!(n <= buf.len(), "{buf:?}");
            }
        }
        let good = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n";
        for _ in 0..1_000 {
            let mut buf = good.to_vec();
            let len = rng.usize(0..64);
            buf.extend((0..len).map(|_| rng.u8(..)));
            assert_eq!(
                parse(&buf),
                Ok(Some((
                    Declared::Client("203.0.113.7:51000".parse().unwrap()),
                    good.len()
                )))
            );
        }
    }
}
