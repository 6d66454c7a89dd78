//! Idle upstream HTTP/1.1 connections of the fast path, per worker thread.
//!
//! Each Pingora worker runs its own single-threaded runtime (`work_stealing
//! = false`) and a socket's readiness is driven by the runtime that
//! registered it, so a connection is only ever reused on the thread that
//! opened it: the pool is thread-local and takes no lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Most idle connections kept per endpoint and thread.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Keyed by address with a fast hash: the key is ours, not an attacker's.
type ByEndpoint = HashMap<SocketAddr, Vec<(TcpStream, Instant)>, rustc_hash::FxBuildHasher>;

thread_local! {
    static IDLE: RefCell<ByEndpoint> = RefCell::new(ByEndpoint::default());
}

/// The most recently parked connection to `addr` idle for less than
/// `max_idle`; older ones are closed.
pub fn take(addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.get_mut(&addr)?;
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() < max_idle {
                return Some(conn);
            }
        }
        None
    })
}

/// Parks a connection that finished a response cleanly. Connections past
/// `max_idle` are closed on the way.
pub fn put(addr: SocketAddr, conn: TcpStream, max_idle: Duration) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = idle.entry(addr).or_default();
        // Oldest first: the expired ones are a prefix.
        let expired = conns
            .iter()
            .take_while(|(_, since)| since.elapsed() >= max_idle)
            .count();
        conns.drain(..expired);
        if conns.len() < MAX_IDLE_PER_ENDPOINT {
            conns.push((conn, Instant::now()));
        }
    })
}

/// Whether a parked connection still looks usable: no bytes and no FIN
/// waiting on it (an upstream that closed an idle connection).
pub fn looks_alive(conn: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_reused_newest_first_and_expire() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let a = TcpStream::connect(addr).await.unwrap();
        let (_a_peer, _) = listener.accept().await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        let (_b_peer, _) = listener.accept().await.unwrap();
        let (a_port, b_port) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let long = Duration::from_secs(60);
        put(addr, a, long);
        put(addr, b, long);
        assert_eq!(take(addr, long).unwrap().local_addr().unwrap(), b_port);
        let a = take(addr, long).unwrap();
        assert_eq!(a.local_addr().unwrap(), a_port);
        assert!(take(addr, long).is_none());
        assert!(looks_alive(&a));
        put(addr, a, long);
        assert!(
            take(addr, Duration::ZERO).is_none(),
            "expired connections are not reused"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_does_not_look_alive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let conn = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!looks_alive(&conn));
    }
}
