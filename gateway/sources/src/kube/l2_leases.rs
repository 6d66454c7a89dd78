//! Who owns each L2 address among the edge nodes: one
//! `coordination.k8s.io/v1` Lease per address, held by the node that
//! answers ARP/NDP for it, plus one Lease per node saying it is a ready
//! candidate.
//!
//! Every round (a third of the lease duration) a node lists the Leases
//! (one request, by label), decides with `plan` (pure), and writes only
//! what changes hands or is renewed; every write carries the
//! resourceVersion it read, so two nodes never both take an address.
//!
//! Spread: a free address goes first to the ready node that ranks highest
//! for it (rendezvous hashing of address and identity) among those holding
//! fewer than their fair share (`ceil(addresses / nodes)`); any node under
//! its share takes it once it has stayed free for a round, so a stale view
//! of the members never leaves an address unowned. A node over its share
//! while another is under gives its lowest-ranked extras up.
//!
//! Failover: a killed owner stops renewing; its Lease expires after
//! `lease_duration_seconds` and the next round of another node takes it.
//! A node gives its addresses up before it stops serving: when it is no
//! longer ready, when it stops (SIGTERM; the Leases are released so others
//! take over within a round), and when it cannot renew (it stops answering
//! two thirds into the lease, before anyone else may take it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

/// Label on every Lease of this module: `address` or `member`.
pub const LABEL: &str = "portico.io/l2";
/// Annotation on an address Lease: the address, as written.
pub const ADDRESS_ANNOTATION: &str = "portico.io/address";

/// The live holder of each address's Lease.
pub type Holders = BTreeMap<IpAddr, String>;

/// What the elector needs from the process.
pub struct L2Election {
    /// The addresses to share out now (they change as LoadBalancer
    /// Services get and lose addresses).
    pub addresses: Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>,
    pub lease_duration: Duration,
    /// Whether this node may own addresses now (ready, not draining).
    pub eligible: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Whether the node is stopping (SIGTERM): release everything now.
    pub stopping: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The owned set, after every round.
    pub publish: Arc<dyn Fn(BTreeSet<IpAddr>) + Send + Sync>,
    /// Once stopping: the addresses are released and someone else holds
    /// them (or nobody else is there).
    pub handed_over: Arc<dyn Fn() + Send + Sync>,
    /// Who holds each address's Lease, after every round (for `/config`).
    pub holders: Arc<dyn Fn(&Holders) + Send + Sync>,
}

/// Where the Leases live and who this node is, from `[kubernetes]`.
pub struct Placement {
    pub namespace: String,
    pub identity: String,
    /// The Service or Gateway whose address this is, for the Event when it
    /// moves.
    pub owner_of: Arc<dyn Fn(IpAddr) -> Option<ObjectReference> + Send + Sync>,
}

/// The Lease name of an address: `portico-l2-192.0.2.10`, and for IPv6
/// every group written out (`portico-l2-fd00-0-0-0-0-0-0-10`), as Lease
/// names are DNS subdomains.
pub fn address_lease_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("portico-l2-{v4}"),
        IpAddr::V6(v6) => {
            let groups: Vec<String> = v6.segments().iter().map(|g| format!("{g:x}")).collect();
            format!("portico-l2-{}", groups.join("-"))
        }
    }
}

/// The member Lease of a node: its identity made a DNS label, with a hash
/// of the original so two identities never share one.
pub fn member_lease_name(identity: &str) -> String {
    let clean: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "portico-l2-member-{}-{:08x}",
        clean.trim_matches('-'),
        rank_hash(identity.as_bytes(), b"") as u32
    )
}

/// FNV-1a over both parts: stable across processes and releases, so every
/// node computes the same ranking.
fn rank_hash(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0u8].iter()).chain(b) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn rank(ip: IpAddr, identity: &str) -> u64 {
    rank_hash(ip.to_string().as_bytes(), identity.as_bytes())
}

/// The holder of a Lease at `now`, if it is live.
fn live_holder(lease: &Lease, now: Timestamp) -> Option<String> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(1).max(1));
    (renewed + SignedDuration::from_secs(duration) > now).then(|| holder.to_string())
}

/// The decisions of one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub renew: Vec<IpAddr>,
    pub acquire: Vec<IpAddr>,
    pub release: Vec<IpAddr>,
}

/// Pure: what `me` does this round. `holders`: the live holder of each
/// address (absent: free); `members`: the other ready nodes; `long_free`:
/// addresses seen free for a whole round already.
pub fn plan(
    me: &str,
    eligible: bool,
    addresses: &[IpAddr],
    holders: &BTreeMap<IpAddr, String>,
    members: &BTreeSet<String>,
    long_free: &BTreeSet<IpAddr>,
) -> Plan {
    let mut out = Plan::default();
    let mine: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|a| holders.get(a).map(String::as_str) == Some(me))
        .collect();
    if !eligible {
        out.release = mine;
        return out;
    }
    let mut all: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    all.insert(me);
    let fair = addresses.len().div_ceil(all.len());
    let mut count: BTreeMap<&str, usize> = all.iter().map(|m| (*m, 0)).collect();
    for h in holders.values() {
        if let Some(c) = count.get_mut(h.as_str()) {
            *c += 1;
        }
    }
    // Two more than another node: give up the one that ranks lowest for
    // this node (one a round, so the spread moves one address at a time).
    let mut keep = mine.clone();
    let least_other = count
        .iter()
        .filter(|(m, _)| **m != me)
        .map(|(_, c)| *c)
        .min();
    if least_other.is_some_and(|least| mine.len() > least + 1) {
        keep.sort_by_key(|a| std::cmp::Reverse(rank(*a, me)));
        out.release = keep.split_off(keep.len() - 1);
        if let Some(c) = count.get_mut(me) {
            *c -= 1;
        }
    }
    out.renew = keep;
    out.renew.sort();
    let mut free: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|a| !holders.contains_key(a))
        .collect();
    free.sort_by_key(|a| std::cmp::Reverse(rank(*a, me)));
    for a in free {
        if count[me] >= fair {
            break;
        }
        // The node holding the fewest, then ranking highest for it.
        let best = all
            .iter()
            .filter(|m| count[*m] < fair)
            .min_by_key(|m| (count[*m], std::cmp::Reverse(rank(a, m))))
            .copied();
        if best == Some(me) || long_free.contains(&a) {
            out.acquire.push(a);
            if let Some(c) = count.get_mut(me) {
                *c += 1;
            }
        }
    }
    out.acquire.sort();
    out
}

/// Runs until the process ends; releases the Leases it holds when
/// `stopping` turns true.
pub async fn run(client: Client, cfg: L2Election, at: Placement) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &at.namespace);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "portico".into(),
            instance: Some(at.identity.clone()),
        },
    );
    let round = (cfg.lease_duration / 3).max(Duration::from_millis(100));
    let member = member_lease_name(&at.identity);
    let mut renewed: BTreeMap<IpAddr, Instant> = BTreeMap::new();
    let mut free_since: BTreeMap<IpAddr, Instant> = BTreeMap::new();
    let mut handed_over = false;
    // Released because the node stops: handed over once others hold them.
    let mut released_on_stop: BTreeSet<IpAddr> = BTreeSet::new();
    let mut last_round = Instant::now();
    tracing::info!(
        namespace = %at.namespace,
        identity = %at.identity,
        lease_duration_ms = cfg.lease_duration.as_millis() as u64,
        "L2 ownership by Leases: one per address"
    );
    let mut next_round = Instant::now();
    loop {
        // While stopping, rounds come every 100 ms until the addresses
        // are handed over; a stop is noticed within 20 ms.
        loop {
            let hurry = (cfg.stopping)() && !handed_over;
            if Instant::now() >= next_round
                || (hurry && last_round.elapsed() >= Duration::from_millis(100))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last_round = Instant::now();
        next_round = last_round + round;
        let stopping = (cfg.stopping)();
        let addresses = (cfg.addresses)();
        let eligible = (cfg.eligible)() && !stopping;
        // The time written as renewTime, and its local twin: a renewal is
        // relied on for two thirds of the lease counted from here, not
        // from when its write returned.
        let now = Timestamp::now();
        let round_started = Instant::now();
        let leases = match api.list(&ListParams::default().labels(LABEL)).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "L2 ownership: cannot list Leases");
                metrics::counter!("portico_announce_lease_errors_total").increment(1);
                // Keep answering only while our renewals are surely
                // still valid to everyone else.
                let limit = cfg.lease_duration * 2 / 3;
                renewed.retain(|_, t| t.elapsed() < limit && eligible);
                (cfg.publish)(renewed.keys().copied().collect());
                continue;
            }
        };
        let by_name: BTreeMap<String, Lease> = leases
            .into_iter()
            .filter_map(|l| l.metadata.name.clone().map(|n| (n, l)))
            .collect();
        let mut holders: BTreeMap<IpAddr, String> = BTreeMap::new();
        for a in &addresses {
            if let Some(h) = by_name
                .get(&address_lease_name(*a))
                .and_then(|l| live_holder(l, now))
            {
                holders.insert(*a, h);
            }
        }
        let members: BTreeSet<String> = by_name
            .iter()
            .filter(|(n, l)| {
                **n != member
                    && l.metadata
                        .labels
                        .as_ref()
                        .and_then(|m| m.get(LABEL))
                        .map(String::as_str)
                        == Some("member")
            })
            .filter_map(|(_, l)| live_holder(l, now))
            .collect();
        let long_free: BTreeSet<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|a| {
                !holders.contains_key(a) && free_since.get(a).is_some_and(|t| t.elapsed() >= round)
            })
            .collect();
        for a in &addresses {
            if holders.contains_key(a) {
                free_since.remove(a);
            } else {
                free_since.entry(*a).or_insert_with(Instant::now);
            }
        }
        (cfg.holders)(&holders);
        let p = plan(
            &at.identity,
            eligible,
            &addresses,
            &holders,
            &members,
            &long_free,
        );
        let duration_s = cfg.lease_duration.as_secs().max(1) as i32;
        // The member Lease: held while eligible, released otherwise.
        let _ = Leases {
            api: &api,
            by_name: &by_name,
            duration_s,
            now,
        }
        .write(
            &member,
            eligible.then_some(at.identity.as_str()),
            "member",
            None,
        )
        .await;
        let leases = Leases {
            api: &api,
            by_name: &by_name,
            duration_s,
            now,
        };
        for a in &p.release {
            match leases.address(*a, None).await {
                Ok(true) => {
                    tracing::info!(address = %a, "L2 ownership: released the address's Lease")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(address = %a, error = %e, "L2 ownership: cannot release the Lease")
                }
            }
            renewed.remove(a);
        }
        for a in p.renew.iter().chain(&p.acquire) {
            let before = by_name.get(&address_lease_name(*a));
            match leases.address(*a, Some(&at.identity)).await {
                Ok(true) => {
                    if p.acquire.contains(a) {
                        let previous = before
                            .and_then(|l| l.spec.as_ref())
                            .and_then(|s| s.holder_identity.clone())
                            .filter(|h| !h.is_empty() && *h != at.identity);
                        took_over(&recorder, &at, *a, previous.as_deref()).await;
                    }
                    renewed.insert(*a, round_started);
                }
                // Someone else wrote first: theirs.
                Ok(false) => {
                    renewed.remove(a);
                }
                Err(e) => {
                    tracing::warn!(address = %a, error = %e, "L2 ownership: cannot renew the Lease");
                    metrics::counter!("portico_announce_lease_errors_total").increment(1);
                }
            }
        }
        // Held: renewed recently enough that nobody else can have it.
        let limit = cfg.lease_duration * 2 / 3;
        renewed
            .retain(|a, t| t.elapsed() < limit && (p.renew.contains(a) || p.acquire.contains(a)));
        let owned: BTreeSet<IpAddr> = renewed.keys().copied().collect();
        (cfg.publish)(owned);
        if stopping && !handed_over {
            released_on_stop.extend(p.release.iter().copied());
            // Released in an earlier round and held by another node now
            // (or there is no other node to take them).
            let taken = released_on_stop
                .iter()
                .all(|a| holders.get(a).is_some_and(|h| *h != at.identity));
            if renewed.is_empty() && p.release.is_empty() && (members.is_empty() || taken) {
                handed_over = true;
                tracing::info!(addresses = ?released_on_stop, "L2 ownership: handed over");
                (cfg.handed_over)();
            }
        }
    }
}

/// The Leases as listed this round, and how to write them.
struct Leases<'a> {
    api: &'a Api<Lease>,
    by_name: &'a BTreeMap<String, Lease>,
    duration_s: i32,
    now: Timestamp,
}

impl Leases<'_> {
    /// The Lease of `address`, held by `holder` or released with `None`.
    async fn address(&self, address: IpAddr, holder: Option<&str>) -> Result<bool, kube::Error> {
        self.write(
            &address_lease_name(address),
            holder,
            "address",
            Some(address),
        )
        .await
    }

    /// Writes a Lease held by `holder` (or released with `None`): creates
    /// it when missing, else replaces it carrying the resourceVersion
    /// read. `Ok(false)`: another node wrote first.
    async fn write(
        &self,
        name: &str,
        holder: Option<&str>,
        role: &str,
        address: Option<IpAddr>,
    ) -> Result<bool, kube::Error> {
        let (api, current, duration_s, now) =
            (self.api, self.by_name.get(name), self.duration_s, self.now);
        let old = current.and_then(|l| l.spec.as_ref());
        let old_holder = old
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        if holder.is_none() && old_holder.is_none() {
            return Ok(false);
        }
        let same = old_holder.is_some() && old_holder == holder;
        let spec = LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(duration_s),
            acquire_time: if same {
                old.and_then(|s| s.acquire_time.clone())
            } else {
                holder.map(|_| MicroTime(now))
            },
            renew_time: holder.map(|_| MicroTime(now)),
            lease_transitions: Some(
                old.and_then(|s| s.lease_transitions).unwrap_or(0)
                    + i32::from(!same && holder.is_some()),
            ),
            ..LeaseSpec::default()
        };
        let result = match current {
            Some(l) => {
                let mut l = l.clone();
                l.spec = Some(spec);
                api.replace(name, &PostParams::default(), &l).await
            }
            None => {
                let mut labels = BTreeMap::from([(LABEL.to_string(), role.to_string())]);
                labels.insert("app.kubernetes.io/name".into(), "portico".into());
                let annotations = address
                    .map(|a| BTreeMap::from([(ADDRESS_ANNOTATION.to_string(), a.to_string())]));
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        labels: Some(labels),
                        annotations,
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                api.create(&PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Logs, counts and reports (an Event on the address's owner) a take-over.
async fn took_over(recorder: &Recorder, at: &Placement, address: IpAddr, previous: Option<&str>) {
    let from = previous.unwrap_or("nobody");
    tracing::info!(address = %address, from, "L2 ownership: took the address");
    if previous.is_none() {
        return;
    }
    metrics::counter!("portico_announce_failovers_total").increment(1);
    let Some(owner) = (at.owner_of)(address) else {
        return;
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "AddressMoved".into(),
        note: Some(format!(
            "{address} is now announced by edge node {} (ARP/NDP), taken over from {from}",
            at.identity
        )),
        action: "Announce".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &owner).await {
        tracing::warn!(address = %address, error = %e, "cannot publish the AddressMoved Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(n: u8) -> Vec<IpAddr> {
        (1..=n).map(|i| IpAddr::from([192, 0, 2, i])).collect()
    }

    fn holders(pairs: &[(u8, &str)]) -> BTreeMap<IpAddr, String> {
        pairs
            .iter()
            .map(|(i, h)| (IpAddr::from([192, 0, 2, *i]), h.to_string()))
            .collect()
    }

    fn members(m: &[&str]) -> BTreeSet<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    /// Runs rounds of `plan` for every node in turn, applying what each
    /// decides, until nothing changes; the final holders.
    fn settle(
        nodes: &[&str],
        addrs: &[IpAddr],
        mut h: BTreeMap<IpAddr, String>,
    ) -> BTreeMap<IpAddr, String> {
        for _ in 0..10 {
            let before = h.clone();
            for me in nodes {
                let others: BTreeSet<String> = nodes
                    .iter()
                    .filter(|n| *n != me)
                    .map(|s| s.to_string())
                    .collect();
                let p = plan(me, true, addrs, &h, &others, &BTreeSet::new());
                for a in p.release {
                    h.remove(&a);
                }
                for a in p.acquire {
                    h.entry(a).or_insert_with(|| me.to_string());
                }
            }
            if h == before {
                return h;
            }
        }
        panic!("did not settle: {h:?}");
    }

    #[test]
    fn addresses_spread_evenly_and_each_has_one_owner() {
        let addrs = ips(7);
        let nodes = ["edge-a", "edge-b", "edge-c"];
        let h = settle(&nodes, &addrs, BTreeMap::new());
        assert_eq!(h.len(), 7, "every address owned: {h:?}");
        for n in nodes {
            let c = h.values().filter(|v| *v == n).count();
            assert!((2..=3).contains(&c), "{n} owns {c}: {h:?}");
        }
    }

    #[test]
    fn a_node_that_started_alone_gives_extras_to_newcomers() {
        let addrs = ips(4);
        let alone = settle(&["edge-a"], &addrs, BTreeMap::new());
        assert!(alone.values().all(|v| v == "edge-a") && alone.len() == 4);
        let h = settle(&["edge-a", "edge-b"], &addrs, alone);
        assert_eq!(h.values().filter(|v| *v == "edge-a").count(), 2, "{h:?}");
        assert_eq!(h.values().filter(|v| *v == "edge-b").count(), 2, "{h:?}");
    }

    #[test]
    fn the_dead_owners_addresses_are_taken_over() {
        let addrs = ips(4);
        let h = settle(&["edge-a", "edge-b"], &addrs, BTreeMap::new());
        // edge-b dies: its Leases expire (no longer live holders) and it
        // is no member any more.
        let survivors: BTreeMap<IpAddr, String> =
            h.into_iter().filter(|(_, v)| v == "edge-a").collect();
        let p = plan(
            "edge-a",
            true,
            &addrs,
            &survivors,
            &members(&[]),
            &BTreeSet::new(),
        );
        assert_eq!(p.acquire.len(), 2, "{p:?}");
        assert_eq!(p.renew.len(), 2);
    }

    #[test]
    fn only_the_best_ranked_node_takes_a_free_address_at_once() {
        let addrs = ips(1);
        let a = plan(
            "edge-a",
            true,
            &addrs,
            &BTreeMap::new(),
            &members(&["edge-b"]),
            &BTreeSet::new(),
        );
        let b = plan(
            "edge-b",
            true,
            &addrs,
            &BTreeMap::new(),
            &members(&["edge-a"]),
            &BTreeSet::new(),
        );
        assert_eq!(a.acquire.len() + b.acquire.len(), 1, "{a:?} {b:?}");
        // Free for a whole round (the best one is gone but still listed):
        // anyone under its share takes it.
        let long = addrs.iter().copied().collect();
        let loser = if a.acquire.is_empty() {
            "edge-a"
        } else {
            "edge-b"
        };
        let winner = if loser == "edge-a" {
            "edge-b"
        } else {
            "edge-a"
        };
        let p = plan(
            loser,
            true,
            &addrs,
            &BTreeMap::new(),
            &members(&[winner]),
            &long,
        );
        assert_eq!(p.acquire, addrs);
    }

    #[test]
    fn a_node_that_is_not_eligible_releases_everything() {
        let addrs = ips(2);
        let h = holders(&[(1, "edge-a"), (2, "edge-b")]);
        let p = plan(
            "edge-a",
            false,
            &addrs,
            &h,
            &members(&["edge-b"]),
            &BTreeSet::new(),
        );
        assert_eq!(
            p,
            Plan {
                release: vec![addrs[0]],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn lease_names_are_dns_subdomains() {
        assert_eq!(
            address_lease_name("192.0.2.10".parse().unwrap()),
            "portico-l2-192.0.2.10"
        );
        assert_eq!(
            address_lease_name("fd00::10".parse().unwrap()),
            "portico-l2-fd00-0-0-0-0-0-0-10"
        );
        let m = member_lease_name("Edge_Node.1:42");
        assert!(m.starts_with("portico-l2-member-edge-node-1-42-"), "{m}");
        assert_ne!(m, member_lease_name("edge-node-1-42"));
    }

    #[test]
    fn live_holder_follows_renew_time_and_duration() {
        let now = Timestamp::now();
        let lease = |holder: &str, ago_ms: i64| Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(now - SignedDuration::from_millis(ago_ms))),
                ..LeaseSpec::default()
            }),
        };
        assert_eq!(live_holder(&lease("a", 500), now).as_deref(), Some("a"));
        assert_eq!(live_holder(&lease("a", 1500), now), None);
        assert_eq!(live_holder(&lease("", 0), now), None);
    }
}
