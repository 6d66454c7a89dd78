//! Load balancing: endpoint pools, policies and passive health.
//!
//! A `Pool` is built once per snapshot from a `BackendSpec`. Per-endpoint
//! counters and the round-robin cursor live in `PoolState`, which
//! `PoolRegistry` carries from one snapshot to the next so that an endpoint
//! change does not forget failing endpoints. Picking an endpoint takes no
//! lock. Session affinity (Service ClientIP, cookies) is the
//! `session-affinity` plugin's, through `PickRequest::preferred`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::snapshot::{BackendKey, BackendSpec, EndpointSpec, EndpointState};

/// The built-in policies; a Service picks one with the
/// `portico.io/load-balancer` annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    RoundRobin,
    Random,
    /// Power of two random choices on outstanding requests/connections.
    LeastRequest,
    /// Consistent hash ring on the client IP.
    RingHash,
}

impl PolicyKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round-robin" => Some(PolicyKind::RoundRobin),
            "random" => Some(PolicyKind::Random),
            "least-request" => Some(PolicyKind::LeastRequest),
            "ring-hash" => Some(PolicyKind::RingHash),
            _ => None,
        }
    }

    pub const NAMES: &'static str = "round-robin, random, least-request, ring-hash";
}

/// What a policy may look at when choosing.
pub struct PickRequest<'a> {
    /// An endpoint a plugin chose (`proxy_set_upstream_override_host`):
    /// taken when it is eligible (ready or serving, not excluded), which
    /// makes the plugin the policy for this request; otherwise the pool's
    /// own policy picks.
    pub preferred: Option<SocketAddr>,
    pub client_ip: Option<IpAddr>,
    /// Endpoints already tried for this request (connect retries).
    pub exclude: &'a [SocketAddr],
}

/// A load-balancing policy: chooses one of `candidates` (indices into
/// `pool.endpoints()`, never empty). Eligibility (readiness, health,
/// exclusions) and affinity are handled by the pool before this is called,
/// so a policy only ranks. Wasm-backed policies implement this too.
pub trait LbPolicy: Send + Sync {
    fn name(&self) -> &'static str;
    fn pick(&self, pool: &Pool, candidates: &[usize], req: &PickRequest<'_>) -> usize;
}

struct RoundRobin;
impl LbPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }
    fn pick(&self, pool: &Pool, candidates: &[usize], _: &PickRequest<'_>) -> usize {
        let n = pool.state.cursor.fetch_add(1, Ordering::Relaxed);
        candidates[n % candidates.len()]
    }
}

struct Random;
impl LbPolicy for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn pick(&self, _: &Pool, candidates: &[usize], _: &PickRequest<'_>) -> usize {
        candidates[fastrand::usize(..candidates.len())]
    }
}

struct LeastRequest;
impl LbPolicy for LeastRequest {
    fn name(&self) -> &'static str {
        "least-request"
    }
    fn pick(&self, pool: &Pool, candidates: &[usize], _: &PickRequest<'_>) -> usize {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let a = candidates[fastrand::usize(..candidates.len())];
        let mut b = candidates[fastrand::usize(..candidates.len() - 1)];
        if b == a {
            b = candidates[candidates.len() - 1];
        }
        let load = |i: usize| {
            pool.endpoints[i]
                .runtime
                .outstanding
                .load(Ordering::Relaxed)
        };
        if load(b) < load(a) {
            b
        } else {
            a
        }
    }
}

/// Consistent hashing: each endpoint owns `VNODES` points on a ring; a
/// client's hash walks clockwise to the first candidate. Removing an endpoint
/// moves only the clients it owned.
struct RingHash {
    ring: Vec<(u64, usize)>,
}

const VNODES: usize = 64;

impl RingHash {
    fn new(endpoints: &[Endpoint]) -> Self {
        let mut ring = Vec::with_capacity(endpoints.len() * VNODES);
        for (i, ep) in endpoints.iter().enumerate() {
            let base = ep.spec.addr.to_string();
            for v in 0..VNODES {
                ring.push((hash_bytes(format!("{base}#{v}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        RingHash { ring }
    }
}

impl LbPolicy for RingHash {
    fn name(&self) -> &'static str {
        "ring-hash"
    }
    fn pick(&self, _: &Pool, candidates: &[usize], req: &PickRequest<'_>) -> usize {
        let Some(ip) = req.client_ip else {
            return candidates[fastrand::usize(..candidates.len())];
        };
        let h = hash_ip(ip);
        let start = self.ring.partition_point(|(p, _)| *p < h);
        for k in 0..self.ring.len() {
            let (_, idx) = self.ring[(start + k) % self.ring.len()];
            if candidates.contains(&idx) {
                return idx;
            }
        }
        candidates[0]
    }
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// FNV-1a with a final avalanche: stable across processes and releases, so
/// every replica of the gateway maps a client to the same endpoint.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Passive health settings (from `[lb]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// Counters of one endpoint, shared by every snapshot that contains it.
#[derive(Debug, Default)]
pub struct EndpointRuntime {
    pub outstanding: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Milliseconds on `clock_ms()` until which the endpoint is skipped.
    cooldown_until: AtomicU64,
}

impl EndpointRuntime {
    fn cooling_down(&self, now: u64) -> bool {
        self.cooldown_until.load(Ordering::Relaxed) > now
    }
}

pub struct Endpoint {
    pub spec: EndpointSpec,
    pub runtime: Arc<EndpointRuntime>,
}

/// State of a backend that outlives snapshots.
#[derive(Default)]
pub struct PoolState {
    cursor: AtomicUsize,
    /// Latest cooldown end of any endpoint: lets `pick` skip the health
    /// filter (and its allocation) when nothing is cooling down.
    cooldown_horizon: AtomicU64,
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointRuntime>>>,
}

pub struct Pool {
    pub spec: BackendSpec,
    endpoints: Vec<Endpoint>,
    ready: Vec<usize>,
    terminating: Vec<usize>,
    policy: Box<dyn LbPolicy>,
    state: Arc<PoolState>,
    health: HealthPolicy,
    /// The endpoints' addresses as text, made on first use (plugins read
    /// them on every request; most pools are never asked).
    address_texts: std::sync::OnceLock<Box<[Box<str>]>>,
}

/// A chosen endpoint. Holding it counts as one outstanding request or
/// connection on that endpoint.
pub struct Pick {
    pub addr: SocketAddr,
    runtime: Arc<EndpointRuntime>,
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.runtime.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(spec: BackendSpec, state: Arc<PoolState>, health: HealthPolicy) -> Pool {
        let endpoints: Vec<Endpoint> = {
            let mut known = state.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            // Forget endpoints that left; their in-flight picks keep their Arc.
            let current: std::collections::HashSet<SocketAddr> =
                spec.endpoints.iter().map(|e| e.addr).collect();
            known.retain(|addr, _| current.contains(addr));
            spec.endpoints
                .iter()
                .map(|e| Endpoint {
                    spec: e.clone(),
                    runtime: known.entry(e.addr).or_default().clone(),
                })
                .collect()
        };
        let by_state = |s: EndpointState| -> Vec<usize> {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.spec.state == s)
                .map(|(i, _)| i)
                .collect()
        };
        let ready = by_state(EndpointState::Ready);
        let terminating = by_state(EndpointState::ServingTerminating);
        let policy: Box<dyn LbPolicy> = match spec.policy {
            PolicyKind::RoundRobin => Box::new(RoundRobin),
            PolicyKind::Random => Box::new(Random),
            PolicyKind::LeastRequest => Box::new(LeastRequest),
            PolicyKind::RingHash => Box::new(RingHash::new(&endpoints)),
        };
        Pool {
            spec,
            endpoints,
            ready,
            terminating,
            policy,
            state,
            health,
            address_texts: std::sync::OnceLock::new(),
        }
    }

    /// The endpoints' addresses as `ip:port` text, in [`Pool::endpoints`]
    /// order: formatted once for this snapshot's pool, not per request.
    pub fn address_texts(&self) -> &[Box<str>] {
        self.address_texts.get_or_init(|| {
            self.endpoints
                .iter()
                .map(|e| e.spec.addr.to_string().into_boxed_str())
                .collect()
        })
    }

    pub fn key(&self) -> &BackendKey {
        &self.spec.key
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The Service's ClientIP session affinity, if any.
    pub fn affinity(&self) -> Option<crate::snapshot::ClientIpAffinity> {
        self.spec.affinity
    }

    /// The PROXY protocol header L4 connections to the endpoints start with.
    pub fn proxy_protocol(&self) -> Option<crate::snapshot::ProxyProtocol> {
        self.spec.proxy_protocol
    }

    /// Plugins the Service asks for (`portico.io/plugins`).
    pub fn plugins(&self) -> &[String] {
        &self.spec.plugins
    }

    /// Scoped HTTP listener plugins whose `applies_to` the Service matches.
    pub fn scoped_http(&self) -> &[String] {
        &self.spec.scoped_http
    }

    /// Scoped TCP listener plugins whose `applies_to` the Service matches.
    pub fn scoped_tcp(&self) -> &[String] {
        &self.spec.scoped_tcp
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// True when no endpoint could take traffic (none ready or serving).
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.terminating.is_empty()
    }

    /// The endpoints a new request may use: ready ones that are not cooling
    /// down; all ready ones if every one is cooling down (better a retry than
    /// a certain 503); serving+terminating ones only if nothing is ready.
    fn candidates(&self, exclude: &[SocketAddr]) -> Vec<usize> {
        let now = clock_ms();
        for group in [&self.ready, &self.terminating] {
            let open: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| !exclude.contains(&self.endpoints[i].spec.addr))
                .collect();
            if open.is_empty() {
                continue;
            }
            let healthy: Vec<usize> = open
                .iter()
                .copied()
                .filter(|&i| !self.endpoints[i].runtime.cooling_down(now))
                .collect();
            return if healthy.is_empty() { open } else { healthy };
        }
        Vec::new()
    }

    pub fn pick(&self, req: &PickRequest<'_>) -> Option<Pick> {
        // Common case: nothing excluded, nothing cooling down, something
        // ready. Choose from the precomputed list without allocating.
        let fast = req.exclude.is_empty()
            && !self.ready.is_empty()
            && self.state.cooldown_horizon.load(Ordering::Relaxed) <= clock_ms();
        let owned;
        let candidates: &[usize] = if fast {
            &self.ready
        } else {
            owned = self.candidates(req.exclude);
            &owned
        };
        if candidates.is_empty() {
            return None;
        }
        let chosen = req.preferred.and_then(|want| {
            let found = candidates
                .iter()
                .copied()
                .find(|&i| self.endpoints[i].spec.addr == want);
            let outcome = if found.is_some() {
                "used"
            } else {
                "unavailable"
            };
            metrics::counter!("portico_lb_plugin_choices_total", "result" => outcome).increment(1);
            found
        });
        // ClientIP session affinity is the session-affinity plugin's
        // choice, arriving here as `preferred`.
        let idx = match chosen {
            Some(idx) => idx,
            None => self.policy.pick(self, candidates, req),
        };
        let ep = &self.endpoints[idx];
        ep.runtime.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            addr: ep.spec.addr,
            runtime: ep.runtime.clone(),
        })
    }

    /// Records a failed connect; enough in a row put the endpoint in cooldown.
    /// Returns true when this failure started a cooldown.
    pub fn report_failure(&self, addr: SocketAddr) -> bool {
        let Some(ep) = self.endpoints.iter().find(|e| e.spec.addr == addr) else {
            return false;
        };
        let n = ep
            .runtime
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if n >= self.health.failure_threshold {
            let until = clock_ms() + self.health.cooldown.as_millis() as u64;
            let before = ep.runtime.cooldown_until.swap(until, Ordering::Relaxed);
            self.state
                .cooldown_horizon
                .fetch_max(until, Ordering::Relaxed);
            let started = before <= clock_ms();
            if started {
                metrics::counter!("portico_endpoint_cooldowns_total", "backend" => self.spec.key.to_string())
                    .increment(1);
                tracing::warn!(
                    backend = %self.spec.key,
                    endpoint = %addr,
                    failures = n,
                    cooldown_ms = self.health.cooldown.as_millis() as u64,
                    "endpoint failing; skipped for the cool-down"
                );
            }
            return started;
        }
        false
    }

    pub fn report_success(&self, addr: SocketAddr) {
        if let Some(ep) = self.endpoints.iter().find(|e| e.spec.addr == addr) {
            if ep.runtime.consecutive_failures.load(Ordering::Relaxed) != 0 {
                ep.runtime.consecutive_failures.store(0, Ordering::Relaxed);
                ep.runtime.cooldown_until.store(0, Ordering::Relaxed);
            }
        }
    }

    /// For explain and `/config`: is this endpoint currently skipped?
    pub fn is_cooling_down(&self, idx: usize) -> bool {
        self.endpoints[idx].runtime.cooling_down(clock_ms())
    }

    /// Whether each endpoint (by index) is skipped now, with one clock
    /// read for the whole pool, and none when nothing cools down.
    pub fn cooling_down_now(&self) -> impl Fn(usize) -> bool + '_ {
        let now = clock_ms();
        let any = self.state.cooldown_horizon.load(Ordering::Relaxed) > now;
        move |idx| any && self.endpoints[idx].runtime.cooling_down(now)
    }
}

/// Keeps `PoolState` per backend across snapshots.
#[derive(Default)]
pub struct PoolRegistry {
    states: Mutex<HashMap<BackendKey, Arc<PoolState>>>,
}

impl PoolRegistry {
    /// Builds the pools of a new snapshot, reusing state of backends that
    /// already existed and dropping the state of backends that are gone.
    pub fn build<'a>(
        &self,
        specs: impl IntoIterator<Item = &'a BackendSpec>,
        health: HealthPolicy,
    ) -> Vec<Arc<Pool>> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh = HashMap::new();
        let mut pools = Vec::new();
        for spec in specs {
            let state = states.remove(&spec.key).unwrap_or_default();
            fresh.insert(spec.key.clone(), state.clone());
            pools.push(Arc::new(Pool::new(spec.clone(), state, health)));
        }
        *states = fresh;
        pools
    }
}

impl PoolRegistry {
    /// Builds one pool, keeping every other backend's state (incremental
    /// publish of a backend whose endpoints changed).
    pub fn rebuild_one(&self, spec: &BackendSpec, health: HealthPolicy) -> Arc<Pool> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let state = states.entry(spec.key.clone()).or_default().clone();
        Arc::new(Pool::new(spec.clone(), state, health))
    }
}

/// Milliseconds since the first call; cheap and monotonic.
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// `[lb]`: how pools choose and skip endpoints.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// Policy for Services without a `portico.io/load-balancer` annotation.
    pub default_policy: PolicyKind,
    /// Consecutive connect failures after which an endpoint is skipped.
    pub failure_threshold: u32,
    /// How long a failing endpoint is skipped.
    pub cooldown_ms: u64,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            default_policy: PolicyKind::RoundRobin,
            failure_threshold: 3,
            cooldown_ms: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: PolicyKind, eps: &[(&str, EndpointState)]) -> BackendSpec {
        BackendSpec {
            key: BackendKey {
                namespace: "ns".into(),
                service: "svc".into(),
                port: "http".into(),
            },
            endpoints: eps
                .iter()
                .map(|(a, s)| EndpointSpec {
                    addr: a.parse().unwrap(),
                    state: *s,
                    target: None,
                })
                .collect(),
            policy,
            affinity: None,
            plugins: Vec::new(),
            scoped_http: Vec::new(),
            scoped_tcp: Vec::new(),
            proxy_protocol: None,
        }
    }

    use EndpointState::{Ready, ServingTerminating as Term};

    fn pool(s: BackendSpec) -> Pool {
        Pool::new(s, Arc::default(), HealthPolicy::default())
    }

    fn req() -> PickRequest<'static> {
        PickRequest {
            preferred: None,
            client_ip: None,
            exclude: &[],
        }
    }

    #[test]
    fn round_robin_cycles_over_ready_only() {
        let p = pool(spec(
            PolicyKind::RoundRobin,
            &[
                ("10.0.0.1:80", Ready),
                ("10.0.0.2:80", Ready),
                ("10.0.0.3:80", Term),
            ],
        ));
        let got: Vec<u8> = (0..6)
            .map(|_| match p.pick(&req()).unwrap().addr.ip() {
                IpAddr::V4(v) => v.octets()[3],
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got, vec![1, 2, 1, 2, 1, 2]);
    }

    #[test]
    fn a_plugins_choice_is_taken_only_when_eligible() {
        let p = pool(spec(
            PolicyKind::RoundRobin,
            &[
                ("10.0.0.1:80", Ready),
                ("10.0.0.2:80", Ready),
                ("10.0.0.3:80", Term),
            ],
        ));
        let two: SocketAddr = "10.0.0.2:80".parse().unwrap();
        for _ in 0..4 {
            let r = PickRequest {
                preferred: Some(two),
                ..req()
            };
            assert_eq!(p.pick(&r).unwrap().addr, two);
        }
        // Not eligible (terminating while others are ready, excluded, or
        // not an endpoint at all): the pool's policy decides.
        for bad in ["10.0.0.3:80", "10.9.9.9:80"] {
            let r = PickRequest {
                preferred: Some(bad.parse().unwrap()),
                ..req()
            };
            assert_ne!(p.pick(&r).unwrap().addr, bad.parse().unwrap());
        }
        let tried = [two];
        let r = PickRequest {
            preferred: Some(two),
            client_ip: None,
            exclude: &tried,
        };
        assert_ne!(p.pick(&r).unwrap().addr, two);
    }

    #[test]
    fn terminating_used_only_when_nothing_ready() {
        let p = pool(spec(PolicyKind::Random, &[("10.0.0.3:80", Term)]));
        assert_eq!(p.pick(&req()).unwrap().addr, "10.0.0.3:80".parse().unwrap());
        let empty = pool(spec(PolicyKind::Random, &[]));
        assert!(empty.pick(&req()).is_none());
        assert!(empty.is_empty());
    }

    #[test]
    fn exclusions_skip_tried_endpoints() {
        let p = pool(spec(
            PolicyKind::RoundRobin,
            &[("10.0.0.1:80", Ready), ("10.0.0.2:80", Ready)],
        ));
        let tried = ["10.0.0.1:80".parse().unwrap()];
        for _ in 0..4 {
            let r = PickRequest {
                preferred: None,
                client_ip: None,
                exclude: &tried,
            };
            assert_eq!(p.pick(&r).unwrap().addr, "10.0.0.2:80".parse().unwrap());
        }
        let both = [
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        let r = PickRequest {
            preferred: None,
            client_ip: None,
            exclude: &both,
        };
        assert!(p.pick(&r).is_none());
    }

    #[test]
    fn failing_endpoint_cools_down_then_recovers() {
        let p = pool(spec(
            PolicyKind::RoundRobin,
            &[("10.0.0.1:80", Ready), ("10.0.0.2:80", Ready)],
        ));
        let bad: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let none = p.cooling_down_now();
        assert!(!none(0) && !none(1));
        assert!(!p.report_failure(bad));
        assert!(!p.report_failure(bad));
        assert!(p.report_failure(bad), "third failure starts the cooldown");
        assert!(p.is_cooling_down(0));
        let now = p.cooling_down_now();
        assert!(now(0) && !now(1), "the whole-pool view agrees");
        for _ in 0..5 {
            assert_ne!(p.pick(&req()).unwrap().addr, bad);
        }
        p.report_success(bad);
        assert!(!p.is_cooling_down(0));
        assert!(!p.cooling_down_now()(0));
        let texts: Vec<&str> = p.address_texts().iter().map(|t| &**t).collect();
        assert_eq!(texts, ["10.0.0.1:80", "10.0.0.2:80"]);
    }

    #[test]
    fn all_cooling_down_still_serves() {
        let p = pool(spec(PolicyKind::RoundRobin, &[("10.0.0.1:80", Ready)]));
        for _ in 0..3 {
            p.report_failure("10.0.0.1:80".parse().unwrap());
        }
        assert!(p.pick(&req()).is_some());
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let p = pool(spec(
            PolicyKind::LeastRequest,
            &[("10.0.0.1:80", Ready), ("10.0.0.2:80", Ready)],
        ));
        let busy: Vec<Pick> = (0..10)
            .filter_map(|_| {
                let pk = p.pick(&req()).unwrap();
                (pk.addr == "10.0.0.1:80".parse().unwrap()).then_some(pk)
            })
            .collect();
        assert!(!busy.is_empty());
        let load1 = busy.len();
        // With endpoint 1 carrying `load1` open picks, new picks go to 2
        // whenever the two choices differ.
        let p2: usize = (0..50)
            .map(|_| p.pick(&req()).unwrap())
            .filter(|pk| pk.addr == "10.0.0.2:80".parse().unwrap())
            .count();
        assert!(
            p2 >= 25,
            "idle endpoint got {p2} of 50 with the other at {load1}"
        );
        drop(busy);
        assert_eq!(
            p.endpoints()[0].runtime.outstanding.load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn ring_hash_is_stable_and_moves_only_removed_clients() {
        let four = [
            ("10.0.0.1:80", Ready),
            ("10.0.0.2:80", Ready),
            ("10.0.0.3:80", Ready),
            ("10.0.0.4:80", Ready),
        ];
        let p4 = pool(spec(PolicyKind::RingHash, &four));
        let p3 = pool(spec(PolicyKind::RingHash, &four[..3]));
        let mut moved = 0;
        let mut owned_by_4 = 0;
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i));
            let r = PickRequest {
                preferred: None,
                client_ip: Some(ip),
                exclude: &[],
            };
            let a = p4.pick(&r).unwrap().addr;
            assert_eq!(a, p4.pick(&r).unwrap().addr, "same client, same endpoint");
            let b = p3.pick(&r).unwrap().addr;
            if a.to_string() == "10.0.0.4:80" {
                owned_by_4 += 1;
            } else if a != b {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "clients of surviving endpoints stay put");
        assert!(
            (100..450).contains(&owned_by_4),
            "spread: {owned_by_4}/1000"
        );
    }

    #[test]
    fn policy_names_parse() {
        for name in PolicyKind::NAMES.split(", ") {
            assert!(PolicyKind::parse(name).is_some(), "{name}");
        }
        assert!(PolicyKind::parse("roundrobin").is_none());
    }
}
