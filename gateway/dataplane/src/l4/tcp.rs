//! TCP forwarding: accept, pick an endpoint (retrying failed connects on
//! others), then splice both ways with half-close and an idle timeout.
//! Connections with plugins (proxy-wasm stream contexts) are relayed
//! through user-space buffers instead, so the plugins see the bytes.
//! A TLS passthrough listener first reads the ClientHello and picks the
//! backend by its SNI; the hello then goes on to the backend first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{client_hello, splice, tls_terminate, L4Settings};
use crate::shutdown::InFlight;
use portico_model::lb::{clock_ms, Pick, PickRequest};
use portico_model::route_rule::{pick_weighted, WeightedBackend, WeightedPick};
use portico_model::snapshot::{BackendKey, L4ListenerKey, L4Protocol, ProxyProtocol, Snapshot};
use portico_wasm::http_filter::StreamChain;
use portico_wasm::properties::{Candidates, RouteProps, StreamProps};
use portico_wasm::reload::RegistryHandle;
use portico_wasm::tcp_filter::TcpVerdict;

pub async fn serve(
    key: L4ListenerKey,
    listener: TcpListener,
    snapshot: Arc<ArcSwap<Snapshot>>,
    plugins: RegistryHandle,
    settings: L4Settings,
    mut stop: watch::Receiver<bool>,
) {
    let label = key.to_string();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    let snapshot = snapshot.clone();
                    let plugins = plugins.clone();
                    let label = label.clone();
                    tokio::spawn(async move {
                        handle(key, &label, stream, peer, snapshot, &plugins, settings).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep the listener.
                    tracing::warn!(listener = %label, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    tracing::info!(listener = %label, "listener closed; open connections drain");
}

/// A connection's backend by weight; `None` when the draw falls on a
/// backend that does not resolve (the connection is refused, as the
/// Gateway API asks for that share).
pub(super) fn draw(split: &[WeightedBackend]) -> Option<BackendKey> {
    match pick_weighted(split, |total| fastrand::u32(0..total)) {
        Some(WeightedPick::Backend(b)) => Some(b.clone()),
        _ => None,
    }
}

/// How long a TLS passthrough listener waits for a whole ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a new connection goes.
struct Target {
    backend: BackendKey,
    /// What was read from the client to decide (a ClientHello).
    opening: Vec<u8>,
    /// A TLS listener in Terminate mode: its certificates.
    terminate: Option<Arc<portico_model::sni::Termination>>,
}

/// The backend a new connection goes to: the listener's, or on a TLS
/// listener the route its ClientHello's SNI selects (`None`: the
/// connection is closed, without a TLS alert, as the Gateway API asks
/// when no route takes it).
async fn backend_for(
    key: L4ListenerKey,
    label: &str,
    client: &mut TcpStream,
    peer: SocketAddr,
    snapshot: &ArcSwap<Snapshot>,
    settings: L4Settings,
) -> Option<Target> {
    if key.protocol != L4Protocol::Tls {
        let snap = snapshot.load();
        let backend = match snap.l4_split.get(&key) {
            Some(split) => draw(split),
            None => snap.l4.get(&key).cloned(),
        };
        if backend.is_none() {
            tracing::debug!(listener = %label, "listener no longer configured");
        }
        return backend.map(|backend| Target {
            backend,
            opening: Vec::new(),
            terminate: None,
        });
    }
    let hello = match client_hello::read(client, HELLO_TIMEOUT.min(settings.idle_timeout)).await {
        Ok(h) => h,
        Err(e) => {
            metrics::counter!("portico_tls_passthrough_refused_total", "listener" => label.to_string(), "reason" => "bad-hello")
                .increment(1);
            tracing::debug!(listener = %label, client = %peer, error = %e, "connection refused");
            return None;
        }
    };
    let snap = snapshot.load();
    let table = snap.sni.get(&key);
    let route = table.and_then(|t| t.find(hello.server_name.as_deref()));
    let sni = hello.server_name.as_deref().unwrap_or("(none)");
    match route {
        Some(r) => match if r.split.is_empty() {
            r.backend.clone()
        } else {
            draw(&r.split)
        } {
            Some(b) => Some(Target {
                backend: b,
                opening: hello.bytes,
                terminate: r.certs.clone(),
            }),
            None => {
                metrics::counter!("portico_tls_passthrough_refused_total", "listener" => label.to_string(), "reason" => "invalid-backend")
                    .increment(1);
                tracing::debug!(listener = %label, client = %peer, sni, route = %r.route,
                    "the route for this name has no valid backend; connection refused");
                None
            }
        },
        None => {
            metrics::counter!("portico_tls_passthrough_refused_total", "listener" => label.to_string(), "reason" => "no-route")
                .increment(1);
            tracing::debug!(listener = %label, client = %peer, sni, "no TLSRoute for this server name; connection refused");
            None
        }
    }
}

async fn connect(
    backend: &BackendKey,
    label: &str,
    peer: SocketAddr,
    snapshot: &ArcSwap<Snapshot>,
    settings: L4Settings,
    preferred: Option<SocketAddr>,
) -> Option<(TcpStream, Pick, Option<ProxyProtocol>)> {
    let snap = snapshot.load_full();
    let pool = snap.pool(backend)?;
    let mut tried = Vec::new();
    for _ in 0..=settings.connect_retries {
        let Some(pick) = pool.pick(&PickRequest {
            preferred,
            client_ip: Some(peer.ip()),
            exclude: &tried,
        }) else {
            break;
        };
        tried.push(pick.addr);
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(pick.addr)).await {
            Ok(Ok(s)) => {
                pool.report_success(pick.addr);
                let _ = s.set_nodelay(true);
                return Some((s, pick, pool.proxy_protocol()));
            }
            Ok(Err(e)) => {
                metrics::counter!("portico_upstream_connect_errors_total", "backend" => backend.to_string())
                    .increment(1);
                tracing::debug!(listener = %label, endpoint = %pick.addr, error = %e, "connect failed");
                pool.report_failure(pick.addr);
            }
            Err(_) => {
                metrics::counter!("portico_upstream_connect_errors_total", "backend" => backend.to_string())
                    .increment(1);
                tracing::debug!(listener = %label, endpoint = %pick.addr, "connect timed out");
                pool.report_failure(pick.addr);
            }
        }
    }
    tracing::warn!(listener = %label, backend = %backend, client = %peer, tried = tried.len(),
        "no endpoint accepted the connection; closing it");
    None
}

async fn handle(
    key: L4ListenerKey,
    label: &str,
    mut client: TcpStream,
    peer: SocketAddr,
    snapshot: Arc<ArcSwap<Snapshot>>,
    plugins: &RegistryHandle,
    settings: L4Settings,
) {
    let _in_flight = InFlight::start();
    metrics::counter!("portico_l4_connections_total", "listener" => label.to_string()).increment(1);
    let failed = || {
        metrics::counter!("portico_l4_connections_failed_total", "listener" => label.to_string())
            .increment(1);
    };
    let Some(Target {
        backend,
        opening,
        terminate,
    }) = backend_for(key, label, &mut client, peer, &snapshot, settings).await
    else {
        return failed();
    };
    if let Some(termination) = terminate {
        // TLS ends here; plugins and splice(2) do not apply.
        let local = client.local_addr().unwrap_or(key.addr);
        let tls = match tls_terminate::accept(
            client,
            opening,
            termination.config.clone(),
            HELLO_TIMEOUT,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!("portico_tls_passthrough_refused_total", "listener" => label.to_string(), "reason" => "handshake")
                    .increment(1);
                tracing::debug!(listener = %label, client = %peer, error = %e, "TLS handshake failed");
                return failed();
            }
        };
        let Some((mut upstream, pick, proxy_protocol)) =
            connect(&backend, label, peer, &snapshot, settings, None).await
        else {
            return failed();
        };
        if let Some(version) = proxy_protocol {
            let written = match proxy_header(version, peer, local) {
                Ok(h) => upstream.write_all(&h).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::debug!(listener = %label, endpoint = %pick.addr, error = %e, "could not send the PROXY header");
                return failed();
            }
        }
        let active =
            metrics::gauge!("portico_l4_connections_active", "listener" => label.to_string());
        active.increment(1.0);
        let activity = AtomicU64::new(clock_ms());
        let (sent, received) = tokio::select! {
            counts = tls_terminate::relay(tls, upstream, &activity) => counts,
            _ = idle_watch(&activity, settings.idle_timeout) => {
                tracing::debug!(listener = %label, client = %peer, endpoint = %pick.addr, "idle timeout");
                (0, 0)
            }
        };
        active.decrement(1.0);
        metrics::counter!("portico_l4_bytes_received_total", "listener" => label.to_string())
            .increment(sent);
        metrics::counter!("portico_l4_bytes_sent_total", "listener" => label.to_string())
            .increment(received);
        return;
    }
    let mut chain = match plugin_chain(&backend, label, &client, peer, &snapshot, plugins) {
        Ok(c) => c,
        Err(()) => return failed(),
    };
    if let Some(c) = chain.as_mut() {
        match c.on_new_connection() {
            TcpVerdict::Continue => {}
            verdict => {
                tracing::debug!(listener = %label, client = %peer, ?verdict, "a plugin closed the connection");
                return failed();
            }
        }
    }
    let preferred = chain.as_ref().and_then(|c| c.override_host);
    let Some((mut upstream, pick, proxy_protocol)) =
        connect(&backend, label, peer, &snapshot, settings, preferred).await
    else {
        return failed();
    };
    let _ = client.set_nodelay(true);
    if let Some(version) = proxy_protocol {
        let header = proxy_header(version, peer, client.local_addr().unwrap_or(key.addr));
        let written = match header {
            Ok(h) => upstream.write_all(&h).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!(listener = %label, endpoint = %pick.addr, error = %e, "could not send the PROXY header");
            return failed();
        }
    }
    if let Some(c) = chain.as_mut() {
        c.props_mut().upstream = Some(pick.addr);
    }
    // The ClientHello a passthrough listener read goes first (through the
    // plugins, which see the stream from its first byte).
    let mut opening = opening;
    if !opening.is_empty() {
        if let Some(c) = chain.as_mut() {
            if c.on_data(true, &mut opening, false) != TcpVerdict::Continue {
                tracing::debug!(listener = %label, client = %peer, "a plugin closed the connection");
                return failed();
            }
        }
        if let Err(e) = upstream.write_all(&opening).await {
            tracing::debug!(listener = %label, endpoint = %pick.addr, error = %e, "could not send the ClientHello");
            return failed();
        }
    }
    let active = metrics::gauge!("portico_l4_connections_active", "listener" => label.to_string());
    active.increment(1.0);
    let activity = AtomicU64::new(clock_ms());
    let idle = idle_watch(&activity, settings.idle_timeout);
    let splice_ok = chain.as_ref().is_none_or(StreamChain::passthrough);
    let (sent, received) = match chain.as_mut().filter(|_| !splice_ok) {
        None => {
            let copies = async {
                tokio::join!(
                    splice::forward(&client, &upstream, &activity),
                    splice::forward(&upstream, &client, &activity)
                )
            };
            tokio::select! {
                (up, down) = copies => (up.unwrap_or(0), down.unwrap_or(0)),
                _ = idle => {
                    tracing::debug!(listener = %label, client = %peer, endpoint = %pick.addr, "idle timeout");
                    (0, 0)
                }
            }
        }
        Some(c) => {
            let mut counts = (0, 0);
            tokio::select! {
                _ = relay_with_plugins(client, upstream, c, &activity, &mut counts) => {}
                _ = idle => {
                    tracing::debug!(listener = %label, client = %peer, endpoint = %pick.addr, "idle timeout");
                }
            }
            counts
        }
    };
    if let Some(mut c) = chain {
        c.finish(None);
    }
    active.decrement(1.0);
    metrics::counter!("portico_l4_bytes_received_total", "listener" => label.to_string())
        .increment(sent);
    metrics::counter!("portico_l4_bytes_sent_total", "listener" => label.to_string())
        .increment(received);
    drop(pick);
}

/// The PROXY protocol header (HAProxy's spec, built by the `ppp` crate)
/// telling an endpoint who the client is: `client` connected to `local`.
fn proxy_header(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
) -> Result<Vec<u8>, String> {
    // A client and listener of different families (an IPv4 client on a
    // dual-stack socket) are written as the same family.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V6(l)) => match l.ip().to_ipv4_mapped() {
            Some(ip) => (client, SocketAddr::new(ip.into(), l.port())),
            None => (client, local),
        },
        (SocketAddr::V6(c), SocketAddr::V4(_)) => match c.ip().to_ipv4_mapped() {
            Some(ip) => (SocketAddr::new(ip.into(), c.port()), local),
            None => (client, local),
        },
        _ => (client, local),
    };
    match version {
        ProxyProtocol::V1 => Ok(ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes()),
        ProxyProtocol::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .map_err(|e| e.to_string()),
    }
}

/// The listener's and the Service's plugins for a new connection, or
/// `Err` when the Service asks for one that is not loaded (the connection
/// is refused rather than served without it).
fn plugin_chain(
    backend: &BackendKey,
    label: &str,
    client: &TcpStream,
    peer: SocketAddr,
    snapshot: &ArcSwap<Snapshot>,
    plugins: &RegistryHandle,
) -> Result<Option<StreamChain>, ()> {
    let registry = plugins.load();
    let snap = snapshot.load();
    let pool = snap.pool(backend);
    let service_plugins = pool.map(|p| p.plugins()).unwrap_or_default();
    let scoped = pool.map(|p| p.scoped_tcp()).unwrap_or_default();
    if registry.tcp.is_empty() && service_plugins.is_empty() && scoped.is_empty() {
        return Ok(None);
    }
    let mut wanted = registry.tcp.clone();
    // Scoped listener plugins follow the listener's: like them, one that
    // a reload removed is skipped.
    wanted.extend(scoped.iter().filter_map(|n| registry.get(n).cloned()));
    for name in service_plugins {
        match registry.get(name) {
            Some(p) => wanted.push(p.clone()),
            None => {
                tracing::warn!(listener = %label, plugin = %name, "Service asks for a plugin that is not loaded; connection refused");
                return Err(());
            }
        }
    }
    let props = StreamProps {
        source: Some(peer),
        destination: client.local_addr().ok(),
        route: Some(RouteProps::Service(backend.clone())),
        candidates: pool.map(|p| Candidates(p.clone())),
        ..StreamProps::default()
    };
    let mut chain = StreamChain::new(Vec::new(), props);
    chain.extend(wanted);
    Ok(Some(chain))
}

/// Relays both ways through the plugins until both sides are done, a
/// plugin closes the connection, or an error.
async fn relay_with_plugins(
    client: TcpStream,
    upstream: TcpStream,
    chain: &mut StreamChain,
    activity: &AtomicU64,
    counts: &mut (u64, u64),
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let mut from_client = vec![0u8; RELAY_BUFFER];
    let mut from_upstream = vec![0u8; RELAY_BUFFER];
    let (mut client_done, mut upstream_done) = (false, false);
    while !(client_done && upstream_done) {
        let downstream = tokio::select! {
            r = client_read.read(&mut from_client), if !client_done => (true, r.unwrap_or(0)),
            r = upstream_read.read(&mut from_upstream), if !upstream_done => (false, r.unwrap_or(0)),
        };
        let (is_client, n) = downstream;
        activity.store(clock_ms(), Ordering::Relaxed);
        let end = n == 0;
        let mut data = if is_client {
            from_client[..n].to_vec()
        } else {
            from_upstream[..n].to_vec()
        };
        if chain.on_data(is_client, &mut data, end) != TcpVerdict::Continue {
            return;
        }
        let out = if is_client {
            &mut upstream_write
        } else {
            &mut client_write
        };
        if !data.is_empty() {
            if out.write_all(&data).await.is_err() {
                return;
            }
            if is_client {
                counts.0 += data.len() as u64;
            } else {
                counts.1 += data.len() as u64;
            }
        }
        if end {
            // Half-close: the EOF travels on.
            let _ = out.shutdown().await;
            chain.on_close(is_client);
            if is_client {
                client_done = true;
            } else {
                upstream_done = true;
            }
        }
    }
}

/// Bytes read per side per plugin call.
const RELAY_BUFFER: usize = 16 << 10;

async fn idle_watch(activity: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since = clock_ms().saturating_sub(activity.load(Ordering::Relaxed));
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis((idle_ms - since).max(10))).await;
    }
}

#[cfg(test)]
mod proxy_header_tests {
    use super::*;
    use ppp::{HeaderResult, PartialResult};

    #[test]
    fn headers_carry_the_client_and_the_listener() {
        let client: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let local: SocketAddr = "192.0.2.10:443".parse().unwrap();
        let v1 = proxy_header(ProxyProtocol::V1, client, local).unwrap();
        assert_eq!(v1, b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 443\r\n");
        let v2 = proxy_header(ProxyProtocol::V2, client, local).unwrap();
        match HeaderResult::parse(&v2) {
            HeaderResult::V2(Ok(h)) => {
                assert_eq!(h.len(), v2.len());
                assert_eq!(h.addresses, ppp::v2::Addresses::from((client, local)));
            }
            other => panic!("not a v2 header: {other:?}"),
        }
        // An IPv4 client on a dual-stack listener is written as IPv4.
        let dual: SocketAddr = "[::ffff:192.0.2.10]:443".parse().unwrap();
        let v1 = proxy_header(ProxyProtocol::V1, client, dual).unwrap();
        assert_eq!(v1, b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 443\r\n");
        assert!(HeaderResult::parse(&v1).is_complete());
    }
}
