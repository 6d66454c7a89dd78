//! Which addresses this node announces (the candidates: the configured
//! ones and the LoadBalancer Services' own), which of them it owns in L2
//! mode, and the hand-over when it stops.
//!
//! Static ownership (manifests mode): the node owns every address it
//! announces, the listed ones and its manifests' LoadBalancer Services'
//! (so with several nodes on the same manifests, set
//! `announce.service_addresses = false` and list each address on one
//! node). Decided elsewhere (Kubernetes mode): whoever holds the
//! address's Lease owns it; the elector (`portico-sources`, which has the
//! API client) writes the owned set here, and the L2 responder reads it
//! before each answer. Every node keeps the local routes of all the
//! addresses it may own, so a take-over is only a matter of answering ARP
//! and sending a gratuitous one.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    /// Every address to announce, whoever owns it.
    candidates: RwLock<BTreeSet<IpAddr>>,
    /// `None`: every address (static ownership).
    owned: RwLock<Option<BTreeSet<IpAddr>>>,
    /// Bumped on every change of `owned` or `candidates`, so the responder notices a
    /// take-over without comparing sets on every frame.
    generation: AtomicU64,
    /// Set when the node stops (SIGTERM): the elector releases its Leases.
    giving_up: AtomicBool,
    /// Set by the elector once its Leases are released and taken by
    /// others (or nobody else is there to take them).
    handed_over: AtomicBool,
}

#[derive(Clone, Default)]
pub struct Ownership(Arc<Shared>);

impl Ownership {
    /// This node owns every address (static ownership).
    pub fn all() -> Ownership {
        Ownership::default()
    }

    /// Owns nothing until an elector says otherwise.
    pub fn elected() -> Ownership {
        let o = Ownership::default();
        *o.0.owned.write().unwrap_or_else(|e| e.into_inner()) = Some(BTreeSet::new());
        o
    }

    pub fn is_elected(&self) -> bool {
        self.0
            .owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The addresses to announce changed (config, or a LoadBalancer
    /// Service got or lost an address).
    pub fn set_candidates(&self, candidates: BTreeSet<IpAddr>) {
        let mut cur = self.0.candidates.write().unwrap_or_else(|e| e.into_inner());
        if *cur != candidates {
            *cur = candidates;
            self.0.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn candidates(&self) -> BTreeSet<IpAddr> {
        self.0
            .candidates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Owned: elected for it, or (static) one of the candidates.
    pub fn owns(&self, ip: IpAddr) -> bool {
        match &*self.0.owned.read().unwrap_or_else(|e| e.into_inner()) {
            None => self
                .0
                .candidates
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&ip),
            Some(set) => set.contains(&ip),
        }
    }

    /// The elector's decision.
    pub fn set_owned(&self, owned: BTreeSet<IpAddr>) {
        let mut cur = self.0.owned.write().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref() != Some(&owned) {
            metrics::gauge!("portico_announce_owned_addresses").set(owned.len() as f64);
            *cur = Some(owned);
            self.0.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::SeqCst)
    }

    /// The node is stopping: the elector releases the Leases.
    pub fn give_up(&self) {
        self.0.giving_up.store(true, Ordering::SeqCst);
    }

    pub fn giving_up(&self) -> bool {
        self.0.giving_up.load(Ordering::SeqCst)
    }

    pub fn note_handed_over(&self) {
        self.0.handed_over.store(true, Ordering::SeqCst);
    }

    /// Waits until the elector says the addresses are someone else's, at
    /// most `limit`; true when they are. Static ownership has nobody to
    /// hand over to.
    pub fn wait_handed_over(&self, limit: Duration) -> bool {
        if !self.is_elected() {
            return false;
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.0.handed_over.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_owns_all_elected_owns_what_it_is_told() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let all = Ownership::all();
        assert!(!all.owns(a), "not a candidate");
        let g = all.generation();
        all.set_candidates(BTreeSet::from([a]));
        assert!(all.owns(a) && !all.owns(b));
        assert_eq!(all.generation(), g + 1);
        assert!(!Ownership::all().wait_handed_over(Duration::from_secs(5)));
        let o = Ownership::elected();
        assert!(!o.owns(a));
        let g = o.generation();
        o.set_owned(BTreeSet::from([a]));
        assert!(o.owns(a) && !o.owns(b));
        assert_eq!(o.generation(), g + 1);
        o.set_owned(BTreeSet::from([a]));
        assert_eq!(o.generation(), g + 1, "no change, no new generation");
        let elector = o.clone();
        let t = std::thread::spawn(move || {
            while !elector.giving_up() {
                std::thread::sleep(Duration::from_millis(5));
            }
            elector.set_owned(BTreeSet::new());
            elector.note_handed_over();
        });
        o.give_up();
        assert!(o.wait_handed_over(Duration::from_secs(5)));
        assert!(!o.owns(a));
        t.join().unwrap();
    }
}
