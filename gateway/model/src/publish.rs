//! Publishing: attaches runtime state to a translated spec and swaps the
//! snapshot in atomically. Readers holding the old one keep it until done.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::lb::{HealthPolicy, PoolRegistry};
use crate::snapshot::{BackendKey, Snapshot, SnapshotSpec};

pub struct Publisher {
    current: Arc<ArcSwap<Snapshot>>,
    registry: PoolRegistry,
    health: HealthPolicy,
    generation: AtomicU64,
    ready: AtomicBool,
    changed: watch::Sender<u64>,
}

impl Publisher {
    pub fn new(health: HealthPolicy) -> Self {
        Publisher {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            registry: PoolRegistry::default(),
            health,
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            changed: watch::channel(0).0,
        }
    }

    /// The handle the data plane reads (`load()` per request/connection).
    pub fn handle(&self) -> Arc<ArcSwap<Snapshot>> {
        self.current.clone()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// True once the sources say the snapshot is complete and they are
    /// following changes: `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            tracing::info!("ready: first full sync applied and sources are watched");
        }
    }

    /// Notified with the generation after each publish (L4 listener manager).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn publish(&self, spec: SnapshotSpec) -> Arc<Snapshot> {
        self.publish_with(spec, None)
    }

    /// Publishes a spec in which only the backends in `rebuilt` changed:
    /// every other pool is carried over from the current snapshot as is.
    pub fn publish_incremental(&self, spec: SnapshotSpec, rebuilt: &[BackendKey]) -> Arc<Snapshot> {
        self.publish_with(spec, Some(rebuilt))
    }

    fn publish_with(&self, spec: SnapshotSpec, rebuilt: Option<&[BackendKey]>) -> Arc<Snapshot> {
        let started = std::time::Instant::now();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let pools = match rebuilt {
            None => self
                .registry
                .build(spec.backends.values(), self.health)
                .into_iter()
                .map(|p| (p.key().clone(), p))
                .collect(),
            Some(rebuilt) => {
                let current = self.current.load();
                let rebuilt: HashSet<&BackendKey> = rebuilt.iter().collect();
                spec.backends
                    .values()
                    .map(|b| {
                        let pool = match current.pools.get(&b.key) {
                            Some(p) if !rebuilt.contains(&b.key) => p.clone(),
                            _ => self.registry.rebuild_one(b, self.health),
                        };
                        (b.key.clone(), pool)
                    })
                    .collect()
            }
        };
        // Each Ingress left out is said once, with its reason, not on every
        // rebuild (one line per Ingress and reason). Both lists are sorted
        // (translate sorts them): a lookup is a binary search, as a cluster
        // may hold thousands of other controllers' Ingresses and this runs
        // on every publish, endpoint-only ones included.
        let before = self.current.load();
        for i in &spec.ignored_ingresses {
            if before.ignored_ingresses.binary_search(i).is_err() {
                tracing::info!(ingress = %i.ingress, reason = %i.reason, "Ingress not served");
            }
        }
        drop(before);
        let snap = Arc::new(Snapshot {
            generation,
            routes: spec.routes,
            pools,
            l4: spec.l4,
            sni: spec.sni,
            l4_split: spec.l4_split,
            certs: spec.certs,
            problems: spec.problems,
            admitted_ingresses: spec.admitted_ingresses,
            ignored_ingresses: spec.ignored_ingresses,
            load_balancer_addresses: spec.load_balancer_addresses,
            gateway_api: spec.gateway_api,
        });
        self.current.store(snap.clone());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics::gauge!("portico_snapshot_generation").set(generation as f64);
        metrics::gauge!("portico_snapshot_last_apply_timestamp_seconds").set(now);
        metrics::histogram!("portico_snapshot_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("portico_backends").set(snap.pools.len() as f64);
        metrics::gauge!("portico_l4_listeners_configured")
            .set((snap.l4.len() + snap.sni.len()) as f64);
        metrics::gauge!("portico_ingresses", "state" => "served")
            .set(snap.admitted_ingresses as f64);
        metrics::gauge!("portico_ingresses", "state" => "ignored")
            .set(snap.ignored_ingresses.len() as f64);
        self.changed.send_replace(generation);
        tracing::info!(
            generation,
            backends = snap.pools.len(),
            l4_listeners = snap.l4.len() + snap.sni.len(),
            problems = snap.problems.len(),
            "snapshot applied"
        );
        snap
    }
}
