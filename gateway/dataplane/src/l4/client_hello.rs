//! Reads the ClientHello that opens a TLS connection, without answering
//! it: TLS passthrough routes by its server name (SNI) and then sends the
//! very bytes read on to the backend, which does the handshake itself.
//!
//! rustls parses the hello (`Acceptor`), so a malformed or non-TLS
//! opening is refused by the same code that terminates TLS elsewhere.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A ClientHello larger than this is refused: a real one (even with
/// post-quantum key shares) is a few KiB, and every connection still
/// in its hello holds this much at most.
pub const MAX_HELLO_BYTES: usize = 16 << 10;

/// The opening of a TLS connection, as read.
#[derive(Debug)]
pub struct ClientHello {
    /// Everything read from the client so far, to be sent on first.
    pub bytes: Vec<u8>,
    /// The SNI, lowercase; `None` when the client sent none.
    pub server_name: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HelloError {
    /// The client closed (or reset) before a whole ClientHello.
    Closed,
    TimedOut,
    TooLarge,
    /// Not TLS, or a ClientHello rustls refuses; the reason.
    Invalid(String),
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::Closed => {
                f.write_str("client closed before its TLS ClientHello was complete")
            }
            HelloError::TimedOut => f.write_str("no complete TLS ClientHello in time"),
            HelloError::TooLarge => write!(f, "TLS ClientHello over {MAX_HELLO_BYTES} bytes"),
            HelloError::Invalid(why) => write!(f, "not a TLS ClientHello: {why}"),
        }
    }
}

/// Reads from `stream` until a whole ClientHello is in hand, for at most
/// `timeout`.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<ClientHello, HelloError> {
    tokio::time::timeout(timeout, read_hello(stream))
        .await
        .unwrap_or(Err(HelloError::TimedOut))
}

async fn read_hello(stream: &mut TcpStream) -> Result<ClientHello, HelloError> {
    let mut parser = HelloParser::default();
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HelloError::Closed)?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        if let Some(hello) = parser.feed(&chunk[..n])? {
            return Ok(hello);
        }
    }
}

/// The parsing half, apart from the socket so it can be tested on bytes.
#[derive(Default)]
pub struct HelloParser {
    acceptor: rustls::server::Acceptor,
    bytes: Vec<u8>,
}

impl HelloParser {
    /// Takes the next bytes from the client; `Some` once the ClientHello
    /// is complete.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<ClientHello>, HelloError> {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        let mut rest = data;
        while !rest.is_empty() {
            match self.acceptor.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(HelloError::Invalid(e.to_string())),
            }
        }
        match self.acceptor.accept() {
            Ok(None) => Ok(None),
            Ok(Some(accepted)) => Ok(Some(ClientHello {
                server_name: accepted
                    .client_hello()
                    .server_name()
                    .map(|n| n.to_ascii_lowercase()),
                bytes: std::mem::take(&mut self.bytes),
            })),
            Err((e, _alert)) => Err(HelloError::Invalid(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The ClientHello rustls's own client sends for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_is_read_and_every_byte_kept() {
        let hello = client_hello("Abc.Example.com");
        let got = HelloParser::default().feed(&hello).unwrap().unwrap();
        assert_eq!(got.server_name.as_deref(), Some("abc.example.com"));
        assert_eq!(got.bytes, hello);
    }

    #[test]
    fn a_hello_in_small_pieces_completes_with_the_last() {
        let hello = client_hello("abc.example.com");
        let mut parser = HelloParser::default();
        let mut result = None;
        for (i, piece) in hello.chunks(7).enumerate() {
            let r = parser.feed(piece).unwrap();
            if (i + 1) * 7 < hello.len() {
                assert!(
                    r.is_none(),
                    "complete after {} of {} bytes",
                    (i + 1) * 7,
                    hello.len()
                );
            }
            result = r;
        }
        let got = result.expect("complete at the end");
        assert_eq!(got.server_name.as_deref(), Some("abc.example.com"));
        assert_eq!(got.bytes, hello);
    }

    #[test]
    fn an_ip_address_sends_no_server_name() {
        let hello = client_hello("192.0.2.1");
        let got = HelloParser::default().feed(&hello).unwrap().unwrap();
        assert_eq!(got.server_name, None);
    }

    #[test]
    fn plain_http_and_endless_records_are_refused() {
        let http = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(
            HelloParser::default().feed(http),
            Err(HelloError::Invalid(_))
        ));
        // A handshake record header announcing 16 KiB, then never a
        // hello: refused once the limit passes, never buffered forever.
        let mut parser = HelloParser::default();
        let mut r = parser.feed(&[0x16, 0x03, 0x01, 0x40, 0x00]);
        let filler = vec![0u8; 8192];
        while let Ok(None) = r {
            r = parser.feed(&filler);
        }
        assert!(r.is_err(), "{r:?}");
    }
}
