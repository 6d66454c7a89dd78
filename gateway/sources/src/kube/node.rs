//! This edge node's addresses, read from its Node object.

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
            Err(e) => {
                if !logged_error {
                    let (_, msg) = super::watch::describe(
                        "nodes",
                        &format!("(Node {name})"),
                        &super::watch::Coverage::Kind,
                        &e,
                    );
                    tracing::warn!("{msg}");
                    logged_error = true;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
