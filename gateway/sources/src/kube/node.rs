//! This edge node's addresses, read from its Node object, and every
//! Node's, which are never announced as load-balancer addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

/// The addresses listeners bind to on a hostNetwork pod: InternalIP first,
/// then ExternalIP (often the same NIC on bare metal). Hostnames are not
/// addresses to bind.
pub fn addresses(node: &Node) -> Vec<IpAddr> {
    let all = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or(&[]);
    let mut out: Vec<IpAddr> = Vec::new();
    for wanted in ["InternalIP", "ExternalIP"] {
        for a in all.iter().filter(|a| a.type_ == wanted) {
            if let Ok(ip) = a.address.parse::<IpAddr>() {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// Logs a failing Node watch once until it recovers (`logged` is reset by
/// the next event).
fn warn_once(logged: &mut bool, what: &str, e: &watcher::Error) {
    if !*logged {
        let (_, msg) = super::watch::describe("nodes", what, &super::watch::Coverage::Kind, e);
        tracing::warn!("{msg}");
        *logged = true;
    }
}

/// Follows one Node and sends its addresses whenever they change.
pub async fn run(client: Client, name: String, tx: watch::Sender<Option<Vec<IpAddr>>>) {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut logged_error = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Apply(n)) | Ok(Event::InitApply(n)) => {
                logged_error = false;
                let addrs = addresses(&n);
                if addrs.is_empty() {
                    tracing::warn!(node = %name, "Node has no InternalIP or ExternalIP address");
                }
                tx.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&addrs);
                    *cur = Some(addrs);
                    changed
                });
            }
            Ok(_) => {}
            Err(e) => warn_once(&mut logged_error, &format!("(Node {name})"), &e),
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Every Node's addresses, from a watch of all Nodes: the union changes
/// only when a Node comes, goes or changes addresses.
#[derive(Debug, Default)]
pub struct AllNodes {
    by_name: BTreeMap<String, Vec<IpAddr>>,
    /// A relist in progress (`Init` .. `InitDone`).
    relist: Option<BTreeMap<String, Vec<IpAddr>>>,
}

impl AllNodes {
    /// Applies one watch event; the union of addresses when it changed.
    pub fn apply(&mut self, ev: Event<Node>) -> Option<BTreeSet<IpAddr>> {
        let before = self.union();
        let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        match ev {
            Event::Init => self.relist = Some(BTreeMap::new()),
            Event::InitApply(n) => {
                let list = self.relist.get_or_insert_with(BTreeMap::new);
                list.insert(name(&n), addresses(&n));
                return None;
            }
            Event::InitDone => {
                if let Some(list) = self.relist.take() {
                    self.by_name = list;
                }
            }
            Event::Apply(n) => {
                self.by_name.insert(name(&n), addresses(&n));
            }
            Event::Delete(n) => {
                self.by_name.remove(&name(&n));
            }
        }
        let after = self.union();
        (after != before).then_some(after)
    }

    pub fn union(&self) -> BTreeSet<IpAddr> {
        self.by_name.values().flatten().copied().collect()
    }
}

/// Follows every Node and sends the union of their addresses once listed
/// and whenever it changes (`None` until the first list is complete).
/// Only objects' addresses are kept, not the objects.
pub async fn run_all(client: Client, tx: watch::Sender<Option<BTreeSet<IpAddr>>>) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut nodes = AllNodes::default();
    let mut logged_error = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                logged_error = false;
                let listed = matches!(ev, Event::InitDone);
                match nodes.apply(ev) {
                    Some(all) => {
                        tx.send_replace(Some(all));
                    }
                    // The first complete list counts even when empty.
                    None if listed && tx.borrow().is_none() => {
                        tx.send_replace(Some(nodes.union()));
                    }
                    None => {}
                }
            }
            Err(e) => warn_once(
                &mut logged_error,
                "(every Node's addresses, never announced)",
                &e,
            ),
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn every_nodes_addresses_follow_the_watch() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut all = AllNodes::default();
        assert_eq!(all.apply(Event::Init), None);
        assert_eq!(all.apply(Event::InitApply(node("a", "10.0.0.1"))), None);
        assert_eq!(all.apply(Event::InitApply(node("b", "10.0.0.2"))), None);
        assert_eq!(
            all.apply(Event::InitDone),
            Some(BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")]))
        );
        // A status update with the same addresses changes nothing.
        assert_eq!(all.apply(Event::Apply(node("a", "10.0.0.1"))), None);
        assert_eq!(
            all.apply(Event::Apply(node("a", "10.0.0.3"))),
            Some(BTreeSet::from([ip("10.0.0.2"), ip("10.0.0.3")]))
        );
        assert_eq!(
            all.apply(Event::Delete(node("b", "10.0.0.2"))),
            Some(BTreeSet::from([ip("10.0.0.3")]))
        );
        // A relist replaces the set (a Node deleted while disconnected).
        all.apply(Event::Init);
        all.apply(Event::InitApply(node("c", "10.0.0.4")));
        assert_eq!(
            all.apply(Event::InitDone),
            Some(BTreeSet::from([ip("10.0.0.4")]))
        );
    }

    #[test]
    fn internal_before_external_and_hostnames_skipped() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edge-1"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "edge-1"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "10.0.0.7"},
                {"type": "InternalIP", "address": "fd00::7"}
            ]}
        }))
        .unwrap();
        let want: Vec<IpAddr> = vec![
            "10.0.0.7".parse().unwrap(),
            "fd00::7".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
        ];
        assert_eq!(addresses(&node), want);
    }
}
