//! L4 listeners that come and go with the snapshot.
//!
//! Pingora's listeners are fixed at start, so TCP and UDP listeners for
//! Services run on tokio directly. The manager diffs the wanted listeners
//! against the open ones after every publish: new ones bind, removed ones
//! stop accepting (their open connections drain), others are untouched.
//! A bind that fails is retried on the next publish and every few seconds.

pub mod bind;
pub mod client_hello;
pub mod splice;
pub mod tcp;
pub mod tls_terminate;
pub mod udp;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use crate::config::L4Config;
use portico_model::snapshot::{L4ListenerKey, L4Protocol, Snapshot};

#[derive(Debug, Clone, Copy)]
pub struct L4Settings {
    pub connect_timeout: Duration,
    pub connect_retries: usize,
    pub idle_timeout: Duration,
    pub udp_idle_timeout: Duration,
}

impl From<&L4Config> for L4Settings {
    fn from(c: &L4Config) -> Self {
        L4Settings {
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            connect_retries: c.connect_retries,
            idle_timeout: Duration::from_millis(c.tcp_idle_timeout_ms),
            udp_idle_timeout: Duration::from_millis(c.udp_idle_timeout_ms),
        }
    }
}

pub struct L4Manager {
    snapshot: Arc<ArcSwap<Snapshot>>,
    plugins: portico_wasm::reload::RegistryHandle,
    changes: watch::Receiver<u64>,
    settings: L4Settings,
}

impl L4Manager {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        plugins: portico_wasm::reload::RegistryHandle,
        changes: watch::Receiver<u64>,
        settings: L4Settings,
    ) -> Self {
        L4Manager {
            snapshot,
            plugins,
            changes,
            settings,
        }
    }
}

struct Open {
    stop: watch::Sender<bool>,
}

impl L4Manager {
    async fn reconcile(
        &self,
        open: &mut BTreeMap<L4ListenerKey, Open>,
        failed: &mut BTreeSet<L4ListenerKey>,
    ) {
        let snap = self.snapshot.load_full();
        let wanted: BTreeSet<L4ListenerKey> =
            snap.l4.keys().chain(snap.sni.keys()).copied().collect();
        open.retain(|key, listener| {
            let keep = wanted.contains(key);
            if !keep {
                let _ = listener.stop.send(true);
                tracing::info!(listener = %key, "L4 listener removed");
            }
            keep
        });
        failed.retain(|k| wanted.contains(k));
        for key in wanted {
            if open.contains_key(&key) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let started = match key.protocol {
                L4Protocol::Tcp | L4Protocol::Tls => bind::tcp_listener(key.addr).map(|l| {
                    tokio::spawn(tcp::serve(
                        key,
                        l,
                        self.snapshot.clone(),
                        self.plugins.clone(),
                        self.settings,
                        stop_rx,
                    ));
                }),
                L4Protocol::Udp => bind::udp_socket(key.addr).map(|s| {
                    tokio::spawn(udp::serve(
                        key,
                        s,
                        self.snapshot.clone(),
                        self.settings,
                        stop_rx,
                    ));
                }),
            };
            match started {
                Ok(()) => {
                    failed.remove(&key);
                    tracing::info!(listener = %key, backend = %target(&snap, &key), "L4 listener open");
                    open.insert(key, Open { stop });
                }
                Err(e) => {
                    if failed.insert(key) {
                        metrics::counter!("portico_l4_bind_errors_total").increment(1);
                        tracing::error!(listener = %key, backend = %target(&snap, &key), error = %e,
                            "cannot open L4 listener; will retry");
                    }
                }
            }
        }
        metrics::gauge!("portico_l4_listeners_open").set(open.len() as f64);
    }
}

/// What a listener forwards to, for its log lines.
fn target(snap: &Snapshot, key: &L4ListenerKey) -> String {
    match (snap.l4.get(key), snap.sni.get(key)) {
        (Some(b), _) => b.to_string(),
        (None, Some(t)) => format!("{} TLS passthrough routes by SNI", t.routes().len()),
        (None, None) => "nothing".into(),
    }
}

#[async_trait]
impl BackgroundService for L4Manager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut open = BTreeMap::new();
        let mut failed = BTreeSet::new();
        let mut changes = self.changes.clone();
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        loop {
            self.reconcile(&mut open, &mut failed).await;
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = retry.tick(), if !failed.is_empty() => {},
                _ = shutdown.changed() => break,
            }
        }
        for (_, l) in open {
            let _ = l.stop.send(true);
        }
    }
}
