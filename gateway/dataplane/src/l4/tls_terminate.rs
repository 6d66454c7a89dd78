//! TLS ended on an L4 listener (Gateway API `TLS` listener in `Terminate`
//! mode): the handshake with the listener's certificate for the SNI, then
//! the plain bytes relayed to the backend and back.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use portico_model::certs::CertStore;
use portico_model::lb::clock_ms;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The certificate for a handshake: the listener's for the SNI, else the
/// one it has for any name; none (the handshake fails) otherwise.
#[derive(Debug)]
struct ListenerCerts(Arc<CertStore>);

impl ResolvesServerCert for ListenerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .find(hello.server_name().unwrap_or(""))
            .map(|c| c.key.clone())
    }
}

/// Completes the handshake on `client`, whose first bytes (`opening`,
/// the ClientHello read to route the connection) are put back in front.
pub async fn accept(
    client: TcpStream,
    opening: Vec<u8>,
    certs: Arc<CertStore>,
    timeout: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ListenerCerts(certs)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let stream = Prefixed {
        head: opening,
        pos: 0,
        inner: client,
    };
    tokio::time::timeout(timeout, acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Copies both ways until both sides are done (half-close passed on),
/// noting activity for the idle timeout. Bytes (client → backend,
/// backend → client).
pub async fn relay<C, U>(client: C, upstream: U, activity: &AtomicU64) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    tokio::join!(
        pump(&mut cr, &mut uw, activity),
        pump(&mut ur, &mut cw, activity)
    )
}

async fn pump<R, W>(from: &mut R, to: &mut W, activity: &AtomicU64) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        activity.store(clock_ms(), Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = to.shutdown().await;
    total
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let from = self.pos;
            buf.put_slice(&self.head[from..from + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = Prefixed {
            head: b"hello ".to_vec(),
            pos: 0,
            inner: a,
        };
        b.write_all(b"world").await.unwrap();
        drop(b);
        let mut got = String::new();
        p.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
    }
}
