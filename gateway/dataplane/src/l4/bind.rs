//! L4 listener sockets that bind whether or not their address is on this
//! node yet (`IP_FREEBIND` / `IPV6_FREEBIND`).
//!
//! A LoadBalancer address moves between edge nodes (bare-metal address
//! announcement): every node listens on every address it may own, so the
//! one that takes an address serves it at once, and the others hold a
//! listener that simply receives nothing. Without FREEBIND the bind fails
//! with `EADDRNOTAVAIL` until the address is local, and would have to be
//! retried at the moment of failover; with it no sysctl
//! (`net.ipv4.ip_nonlocal_bind`) is needed either.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

fn socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    // As tokio's own bind does: a restarted gateway rebinds at once over
    // connections still in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

pub fn tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

pub fn udp_socket(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = socket(addr, Type::DGRAM, Protocol::UDP)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_an_address_this_host_does_not_have() {
        // TEST-NET-3: documentation addresses, on no interface here.
        let addr: SocketAddr = "203.0.113.77:0".parse().unwrap();
        assert!(
            std::net::TcpListener::bind(addr).is_err(),
            "203.0.113.77 is local here?"
        );
        let l = tcp_listener(addr).unwrap();
        assert_eq!(l.local_addr().unwrap().ip(), addr.ip());
        let u = udp_socket(addr).unwrap();
        assert_eq!(u.local_addr().unwrap().ip(), addr.ip());
        let v6: SocketAddr = "[2001:db8::77]:0".parse().unwrap();
        assert_eq!(
            tcp_listener(v6).unwrap().local_addr().unwrap().ip(),
            v6.ip()
        );
    }

    #[tokio::test]
    async fn a_freebind_listener_on_loopback_serves() {
        let l = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (_conn, peer) = l.accept().await.unwrap();
        assert_eq!(peer.ip(), addr.ip());
        client.await.unwrap().unwrap();
    }
}
