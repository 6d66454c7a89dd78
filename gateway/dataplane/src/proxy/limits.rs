//! Per-client request rate and concurrency limits of a route
//! (ingress-nginx `limit-rps`, `limit-rpm`, `limit-connections`).
//!
//! State is keyed by (Ingress, client IP) and outlives snapshots, so a
//! change to an unrelated object does not reset anybody's budget. Memory is
//! bounded: a full shard drops clients idle for a minute, then, if still
//! full, every rate budget not tied to a request in flight.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use portico_model::policy::RateLimit;

const SHARDS: usize = 16;
/// Entries per shard before idle ones are dropped.
const SHARD_CAP: usize = 4096;

#[derive(Debug)]
struct Entry {
    tokens: f64,
    last: Instant,
    in_flight: u32,
}

/// Clients of one shard, by Ingress then address: looking up an Ingress
/// by `&str` needs no allocation on the request path.
#[derive(Default)]
struct Shard {
    by_ingress: HashMap<Arc<str>, HashMap<IpAddr, Entry>>,
    len: usize,
}

impl Shard {
    /// Drops the entries `keep` refuses.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        for clients in self.by_ingress.values_mut() {
            clients.retain(|_, e| keep(e));
        }
        self.by_ingress.retain(|_, clients| !clients.is_empty());
        self.len = self.by_ingress.values().map(HashMap::len).sum();
    }
}

#[derive(Default)]
pub struct Limiter {
    shards: [Mutex<Shard>; SHARDS],
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Rate,
    Connections,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Rate => "rate",
            Refused::Connections => "connections",
        }
    }
}

/// Held for the life of an admitted request; gives its concurrency slot
/// back when dropped.
pub struct Slot {
    limiter: Arc<Limiter>,
    ingress: Arc<str>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self.limiter.shard(self.ip);
        if let Some(e) = shard
            .by_ingress
            .get_mut(&*self.ingress)
            .and_then(|c| c.get_mut(&self.ip))
        {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

impl Limiter {
    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, Shard> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        ip.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one request of `ingress` from `ip` under `limit`, or says
    /// which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        ingress: &str,
        ip: IpAddr,
        limit: &RateLimit,
        now: Instant,
    ) -> Result<Option<Slot>, Refused> {
        let per_second = limit.per_second();
        let capacity = per_second.map(|r| (r * f64::from(limit.burst_multiplier)).max(1.0));
        let mut shard = self.shard(ip);
        let known = shard
            .by_ingress
            .get(ingress)
            .is_some_and(|c| c.contains_key(&ip));
        if !known {
            if shard.len >= SHARD_CAP {
                shard.retain(|e| {
                    e.in_flight > 0 || now.saturating_duration_since(e.last).as_secs() < 60
                });
                if shard.len >= SHARD_CAP {
                    // Still full of recent clients: forget their rate
                    // budgets (they start afresh) rather than grow.
                    shard.retain(|e| e.in_flight > 0);
                }
            }
            shard.len += 1;
            if !shard.by_ingress.contains_key(ingress) {
                shard.by_ingress.insert(Arc::from(ingress), HashMap::new());
            }
        }
        // The shared name, for a slot to find its entry again.
        let name = limit
            .connections
            .and_then(|_| shard.by_ingress.get_key_value(ingress))
            .map(|(k, _)| k.clone());
        let Some(clients) = shard.by_ingress.get_mut(ingress) else {
            return Ok(None);
        };
        let e = clients.entry(ip).or_insert(Entry {
            tokens: capacity.unwrap_or(0.0),
            last: now,
            in_flight: 0,
        });
        if let (Some(rate), Some(cap)) = (per_second, capacity) {
            let elapsed = now.saturating_duration_since(e.last).as_secs_f64();
            e.tokens = (e.tokens + elapsed * rate).min(cap);
            e.last = now;
            if e.tokens < 1.0 {
                return Err(Refused::Rate);
            }
        }
        if let Some(max) = limit.connections {
            if e.in_flight >= max {
                return Err(Refused::Connections);
            }
        }
        if per_second.is_some() {
            e.tokens -= 1.0;
        }
        e.last = now;
        let Some(ingress) = name else {
            return Ok(None);
        };
        e.in_flight += 1;
        drop(shard);
        Ok(Some(Slot {
            limiter: self.clone(),
            ingress,
            ip,
        }))
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(rps: Option<u32>, connections: Option<u32>) -> RateLimit {
        RateLimit {
            rps,
            rpm: None,
            burst_multiplier: 2,
            connections,
            exempt: Vec::new(),
        }
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let l = Arc::new(Limiter::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let lim = limit(Some(5), None);
        // Burst: 5 rps × 2.
        for _ in 0..10 {
            assert!(l.admit("ns/a", ip, &lim, t0).is_ok());
        }
        assert_eq!(l.admit("ns/a", ip, &lim, t0).err(), Some(Refused::Rate));
        // Another client and another Ingress have their own budgets.
        assert!(l
            .admit("ns/a", "192.0.2.2".parse().unwrap(), &lim, t0)
            .is_ok());
        assert!(l.admit("ns/b", ip, &lim, t0).is_ok());
        // 200 ms at 5 rps: one more.
        let t1 = t0 + Duration::from_millis(200);
        assert!(l.admit("ns/a", ip, &lim, t1).is_ok());
        assert_eq!(l.admit("ns/a", ip, &lim, t1).err(), Some(Refused::Rate));
    }

    #[test]
    fn concurrency_slots_come_back_when_requests_end() {
        let l = Arc::new(Limiter::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let lim = limit(None, Some(2));
        let a = l.admit("ns/a", ip, &lim, now).unwrap();
        let _b = l.admit("ns/a", ip, &lim, now).unwrap();
        assert_eq!(
            l.admit("ns/a", ip, &lim, now).err(),
            Some(Refused::Connections)
        );
        drop(a);
        assert!(l.admit("ns/a", ip, &lim, now).is_ok());
    }

    #[test]
    fn idle_entries_are_dropped_when_a_shard_is_full() {
        let l = Arc::new(Limiter::default());
        let lim = limit(Some(1), None);
        let t0 = Instant::now();
        for i in 0..(SHARDS * SHARD_CAP * 2) as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = l.admit(
                "ns/a",
                ip,
                &lim,
                t0 + Duration::from_secs(u64::from(i) / 1000),
            );
        }
        assert!(l.entries() <= SHARDS * SHARD_CAP, "{}", l.entries());
        // All at once (none idle) is bounded too.
        let l = Arc::new(Limiter::default());
        for i in 0..(SHARDS * SHARD_CAP * 2) as u32 {
            let _ = l.admit("ns/a", IpAddr::from(i.to_be_bytes()), &lim, t0);
        }
        assert!(l.entries() <= SHARDS * SHARD_CAP, "{}", l.entries());
    }
}
