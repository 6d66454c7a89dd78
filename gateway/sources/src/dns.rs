//! Resolves ExternalName Services' DNS names and re-resolves each when its
//! answer's TTL runs out.
//!
//! A source tells the resolver which names it needs (a watch channel of the
//! name set) and gets back the addresses (a watch channel of the map),
//! which it hands to translation with the store: resolution is an input,
//! so translation stays pure. A name that stops resolving keeps its last
//! addresses (a DNS blip must not empty a backend) and is retried every
//! `dns.min_ttl_seconds`; one that never resolved has no endpoints (503).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::sync::watch;

use crate::config::DnsConfig;

pub type Resolved = BTreeMap<String, Vec<IpAddr>>;

/// When to ask again: at the answer's expiry, within the configured bounds.
pub fn next_refresh(ttl: Duration, cfg: &DnsConfig) -> Duration {
    ttl.clamp(
        Duration::from_secs(cfg.min_ttl_seconds),
        Duration::from_secs(cfg.max_ttl_seconds),
    )
}

fn resolver(cfg: &DnsConfig) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if cfg.servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?
    } else {
        let mut rc = ResolverConfig::new();
        for s in &cfg.servers {
            rc.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
            rc.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(rc, provider)
    };
    // Our own schedule decides when to ask again; a cached answer must not
    // outlive the TTL we were told.
    builder.options_mut().positive_max_ttl = Some(Duration::from_secs(cfg.max_ttl_seconds));
    Ok(builder.build())
}

/// Starts the resolver task: send the wanted names on the returned sender,
/// read addresses from the receiver. Stops when the sender is dropped.
pub fn spawn(cfg: &DnsConfig) -> (watch::Sender<BTreeSet<String>>, watch::Receiver<Resolved>) {
    let (names_tx, names_rx) = watch::channel(BTreeSet::new());
    let (out_tx, out_rx) = watch::channel(Resolved::new());
    let cfg = cfg.clone();
    tokio::spawn(run(cfg, names_rx, out_tx));
    (names_tx, out_rx)
}

async fn run(
    cfg: DnsConfig,
    mut names: watch::Receiver<BTreeSet<String>>,
    out: watch::Sender<Resolved>,
) {
    let resolver = match resolver(&cfg) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("ExternalName Services will not resolve: {e}");
            return;
        }
    };
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    let mut failing: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let wanted = names.borrow_and_update().clone();
        due.retain(|n, _| wanted.contains(n));
        failing.retain(|n, _| wanted.contains(n));
        let now = Instant::now();
        for n in &wanted {
            due.entry(n.clone()).or_insert(now);
        }
        out.send_if_modified(|r| {
            let before = r.len();
            r.retain(|n, _| wanted.contains(n));
            r.len() != before
        });

        let ready: Vec<String> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let answers = futures::future::join_all(ready.iter().map(|n| {
            let resolver = &resolver;
            async move { (n, resolver.lookup_ip(format!("{n}.")).await) }
        }))
        .await;
        let now = Instant::now();
        for (name, answer) in answers {
            match answer {
                Ok(lookup) => {
                    let mut addrs: Vec<IpAddr> = lookup.iter().collect();
                    addrs.sort();
                    addrs.dedup();
                    let ttl = lookup.valid_until().saturating_duration_since(now);
                    due.insert(name.clone(), now + next_refresh(ttl, &cfg));
                    if failing.remove(name).is_some() {
                        tracing::info!(name = %name, "ExternalName resolves again");
                    }
                    metrics::counter!("portico_dns_lookups_total", "result" => "ok").increment(1);
                    out.send_if_modified(|r| {
                        if r.get(name) == Some(&addrs) {
                            return false;
                        }
                        tracing::info!(name = %name, addresses = ?addrs, ttl_s = ttl.as_secs(), "ExternalName resolved");
                        r.insert(name.clone(), addrs);
                        true
                    });
                }
                Err(e) => {
                    due.insert(name.clone(), now + Duration::from_secs(cfg.min_ttl_seconds));
                    metrics::counter!("portico_dns_lookups_total", "result" => "error")
                        .increment(1);
                    let msg = e.to_string();
                    if failing.get(name) != Some(&msg) {
                        tracing::warn!(name = %name, error = %msg, "cannot resolve ExternalName; keeping its last addresses and retrying");
                        failing.insert(name.clone(), msg);
                    }
                }
            }
        }

        let next = due.values().min().copied();
        tokio::select! {
            changed = names.changed() => if changed.is_err() { return },
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let cfg = DnsConfig {
            servers: vec![],
            min_ttl_seconds: 5,
            max_ttl_seconds: 300,
        };
        assert_eq!(
            next_refresh(Duration::from_secs(30), &cfg),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_refresh(Duration::from_secs(0), &cfg),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_refresh(Duration::from_secs(86400), &cfg),
            Duration::from_secs(300)
        );
    }
}
