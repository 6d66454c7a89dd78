//! TCP forwarding: accept, pick an endpoint (retrying failed connects on
//! others), then splice both ways with half-close and an idle timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{splice, L4Settings};
use crate::lb::{clock_ms, Pick, PickRequest};
use crate::shutdown::InFlight;
use crate::snapshot::{L4ListenerKey, Snapshot};

pub async fn serve(
    key: L4ListenerKey,
    listener: TcpListener,
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: L4Settings,
    mut stop: watch::Receiver<bool>,
) {
    let label = key.to_string();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    let snapshot = snapshot.clone();
                    let label = label.clone();
                    tokio::spawn(async move {
                        handle(key, &label, stream, peer, snapshot, settings).await;
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

async fn connect(
    key: L4ListenerKey,
    label: &str,
    peer: SocketAddr,
    snapshot: &ArcSwap<Snapshot>,
    settings: L4Settings,
) -> Option<(TcpStream, Pick, String)> {
    let snap = snapshot.load_full();
    let Some(backend) = snap.l4.get(&key) else {
        tracing::debug!(listener = %label, "listener no longer configured");
        return None;
    };
    let pool = snap.pool(backend)?;
    let mut tried = Vec::new();
    for _ in 0..=settings.connect_retries {
        let Some(pick) = pool.pick(&PickRequest {
            preferred: None,
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
                return Some((s, pick, backend.to_string()));
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
    client: TcpStream,
    peer: SocketAddr,
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: L4Settings,
) {
    let _in_flight = InFlight::start();
    metrics::counter!("portico_l4_connections_total", "listener" => label.to_string()).increment(1);
    let Some((upstream, pick, _backend)) = connect(key, label, peer, &snapshot, settings).await
    else {
        metrics::counter!("portico_l4_connections_failed_total", "listener" => label.to_string())
            .increment(1);
        return;
    };
    let _ = client.set_nodelay(true);
    let active = metrics::gauge!("portico_l4_connections_active", "listener" => label.to_string());
    active.increment(1.0);
    let activity = AtomicU64::new(clock_ms());
    let copies = async {
        tokio::join!(
            splice::forward(&client, &upstream, &activity),
            splice::forward(&upstream, &client, &activity)
        )
    };
    let idle = idle_watch(&activity, settings.idle_timeout);
    let (sent, received) = tokio::select! {
        (up, down) = copies => (up.unwrap_or(0), down.unwrap_or(0)),
        _ = idle => {
            tracing::debug!(listener = %label, client = %peer, endpoint = %pick.addr, "idle timeout");
            (0, 0)
        }
    };
    active.decrement(1.0);
    metrics::counter!("portico_l4_bytes_received_total", "listener" => label.to_string())
        .increment(sent);
    metrics::counter!("portico_l4_bytes_sent_total", "listener" => label.to_string())
        .increment(received);
    drop(pick);
}

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
