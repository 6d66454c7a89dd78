//! UDP forwarding: one flow per client address, each with its own connected
//! upstream socket, expired after an idle timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::L4Settings;
use portico_model::lb::{clock_ms, Pick, PickRequest};
use portico_model::snapshot::{L4ListenerKey, Snapshot};

struct Flow {
    upstream: Arc<UdpSocket>,
    last_seen: Arc<AtomicU64>,
    replies: JoinHandle<()>,
    _pick: Pick,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

pub async fn serve(
    key: L4ListenerKey,
    socket: UdpSocket,
    snapshot: Arc<ArcSwap<Snapshot>>,
    settings: L4Settings,
    mut stop: watch::Receiver<bool>,
) {
    let label = key.to_string();
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 65_535];
    let sweep_every =
        (settings.udp_idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(sweep_every);
    let flows_gauge = metrics::gauge!("portico_udp_flows_active", "listener" => label.clone());
    loop {
        tokio::select! {
            res = socket.recv_from(&mut buf) => {
                let (n, client) = match res {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(listener = %label, error = %e, "recv failed");
                        continue;
                    }
                };
                metrics::counter!("portico_l4_bytes_received_total", "listener" => label.clone()).increment(n as u64);
                let flow = match flows.entry(client) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        match open_flow(key, &label, client, &socket, &snapshot).await {
                            Some(flow) => {
                                flows_gauge.increment(1.0);
                                v.insert(flow)
                            }
                            None => continue,
                        }
                    }
                };
                flow.last_seen.store(clock_ms(), Ordering::Relaxed);
                if let Err(e) = flow.upstream.send(&buf[..n]).await {
                    tracing::debug!(listener = %label, client = %client, error = %e, "send upstream failed");
                    flows.remove(&client);
                    flows_gauge.set(flows.len() as f64);
                }
            }
            _ = sweep.tick() => {
                let idle = settings.udp_idle_timeout.as_millis() as u64;
                let now = clock_ms();
                let before = flows.len();
                flows.retain(|_, f| now.saturating_sub(f.last_seen.load(Ordering::Relaxed)) < idle);
                if flows.len() != before {
                    flows_gauge.set(flows.len() as f64);
                    tracing::debug!(listener = %label, expired = before - flows.len(), "UDP flows expired");
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Flows go with the listener: UDP has no connection to drain.
    flows_gauge.set(0.0);
    tracing::info!(listener = %label, "UDP listener closed");
}

async fn open_flow(
    key: L4ListenerKey,
    label: &str,
    client: SocketAddr,
    socket: &Arc<UdpSocket>,
    snapshot: &ArcSwap<Snapshot>,
) -> Option<Flow> {
    let snap = snapshot.load_full();
    let backend = match snap.l4_split.get(&key) {
        Some(split) => super::tcp::draw(split)?,
        None => snap.l4.get(&key)?.clone(),
    };
    let pool = snap.pool(&backend)?;
    let pick = pool.pick(&PickRequest {
        preferred: None,
        client_ip: Some(client.ip()),
        exclude: &[],
    });
    let Some(pick) = pick else {
        tracing::debug!(listener = %label, backend = %pool.key(), "no endpoint for UDP flow");
        return None;
    };
    let bind: SocketAddr = if pick.addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let upstream = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(listener = %label, error = %e, "cannot open upstream UDP socket");
            return None;
        }
    };
    if let Err(e) = upstream.connect(pick.addr).await {
        tracing::warn!(listener = %label, endpoint = %pick.addr, error = %e, "cannot reach endpoint");
        pool.report_failure(pick.addr);
        return None;
    }
    metrics::counter!("portico_udp_flows_total", "listener" => label.to_string()).increment(1);
    let upstream = Arc::new(upstream);
    let last_seen = Arc::new(AtomicU64::new(clock_ms()));
    let replies = {
        let upstream = upstream.clone();
        let socket = socket.clone();
        let last_seen = last_seen.clone();
        let label = label.to_string();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                match upstream.recv(&mut buf).await {
                    Ok(n) => {
                        last_seen.store(clock_ms(), Ordering::Relaxed);
                        metrics::counter!("portico_l4_bytes_sent_total", "listener" => label.clone())
                            .increment(n as u64);
                        if socket.send_to(&buf[..n], client).await.is_err() {
                            break;
                        }
                    }
                    // ICMP port unreachable surfaces here; keep the flow
                    // until it idles out rather than spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    Some(Flow {
        upstream,
        last_seen,
        replies,
        _pick: pick,
    })
}
