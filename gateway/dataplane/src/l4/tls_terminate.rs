//! TLS ended on an L4 listener (Gateway API `TLS` listener in `Terminate`
//! mode): the handshake with the listener's certificate for the SNI, then
//! the plain bytes relayed to the backend and back.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use portico_model::lb::clock_ms;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Completes the handshake on `client`, whose first bytes (`opening`,
/// the ClientHello read to route the connection) are put back in front.
pub async fn accept(
    client: TcpStream,
    opening: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
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
