//! Problems with objects, reported as Kubernetes Events on those objects
//! (`kubectl describe ingress` shows them), by the leader only.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use portico_model::problems::Problem;
use portico_model::store::{ObjectKey, Store};

/// Reason of an object the API sent but that cannot be decoded.
pub const REASON_MALFORMED: &str = "InvalidObject";
/// Reason of any other problem translation found in an object.
pub const REASON_GENERIC: &str = "ConfigurationProblem";

/// At most this many Events per sync: a broken rollout touching thousands
/// of objects must not flood the API server. The rest follow on later syncs.
const MAX_PER_SYNC: usize = 50;

/// The object a problem is about, from its location (`Kind ns/name`, as
/// `Store::locate` writes it for objects that did not come from a file).
pub fn regarding(p: &Problem, store: &Store) -> Option<ObjectReference> {
    let (kind, rest) = p.location.split_once(' ')?;
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, rest.to_string()),
    };
    let key = ObjectKey::new(namespace.clone().unwrap_or_default(), name.clone());
    let (api_version, uid) = match kind {
        "Ingress" => (
            "networking.k8s.io/v1",
            store
                .ingresses
                .get(&key)
                .map(|s| s.object.metadata.uid.clone()),
        ),
        "IngressClass" => (
            "networking.k8s.io/v1",
            store
                .ingress_classes
                .get(&key)
                .map(|s| s.object.metadata.uid.clone()),
        ),
        "Service" => (
            "v1",
            store
                .services
                .get(&key)
                .map(|s| s.object.metadata.uid.clone()),
        ),
        "Secret" => (
            "v1",
            store
                .secrets
                .get(&key)
                .map(|s| s.object.metadata.uid.clone()),
        ),
        "EndpointSlice" => (
            "discovery.k8s.io/v1",
            store
                .endpoint_slices
                .get(&key)
                .map(|s| s.object.metadata.uid.clone()),
        ),
        "Gateway" => (
            "gateway.networking.k8s.io/v1",
            store
                .gateways
                .get(&key)
                .map(|s| s.object.metadata.uid.clone()),
        ),
        "HTTPRoute" => (
            "gateway.networking.k8s.io/v1",
            store
                .http_routes
                .get(&key)
                .map(|s| s.object.metadata.uid.clone()),
        ),
        _ => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace,
        name: Some(name),
        uid: uid.flatten(),
        ..ObjectReference::default()
    })
}

pub struct EventReporter {
    recorder: Recorder,
    /// Problems already reported; a problem that goes away and comes back
    /// is reported again.
    sent: BTreeSet<Problem>,
}

impl EventReporter {
    pub fn new(client: Client, identity: String) -> Self {
        EventReporter {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "portico".into(),
                    instance: Some(identity),
                },
            ),
            sent: BTreeSet::new(),
        }
    }

    /// The problems of the current snapshot not yet reported, with their
    /// objects (read under the store lock; published later without it).
    pub fn pending(
        &mut self,
        store: &Store,
        problems: &[Problem],
    ) -> Vec<(Problem, ObjectReference)> {
        let current: BTreeSet<&Problem> = problems.iter().collect();
        self.sent.retain(|p| current.contains(p));
        problems
            .iter()
            .filter(|p| !self.sent.contains(*p))
            .filter_map(|p| regarding(p, store).map(|r| (p.clone(), r)))
            .take(MAX_PER_SYNC)
            .collect()
    }

    pub async fn publish(&mut self, pending: Vec<(Problem, ObjectReference)>) {
        for (p, object) in pending {
            let event = Event {
                type_: EventType::Warning,
                reason: p.reason.unwrap_or(REASON_GENERIC).to_string(),
                note: Some(truncate(&p.message, 1024)),
                action: "Translate".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &object).await {
                Ok(()) => {
                    metrics::counter!("portico_kubernetes_events_total", "reason" => event.reason.clone()).increment(1);
                    self.sent.insert(p);
                }
                Err(e) => {
                    tracing::warn!(object = %p.location, error = %e, "cannot publish Kubernetes Event");
                    // Retried on the next sync.
                    return;
                }
            }
        }
    }
}

/// Event notes are limited to 1 KiB by the API server.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_their_objects() {
        let store = Store::default();
        let p = Problem::error("Ingress shop/web", "spec.tls[0]: bad");
        let r = regarding(&p, &store).unwrap();
        assert_eq!(r.kind.as_deref(), Some("Ingress"));
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.api_version.as_deref(), Some("networking.k8s.io/v1"));
        let p = Problem::error("IngressClass portico", "x");
        let r = regarding(&p, &store).unwrap();
        assert_eq!(r.namespace, None);
        // File locations are not objects.
        assert!(regarding(&Problem::error("conf/x.yaml:3", "x"), &store).is_none());
    }

    #[test]
    fn notes_are_cut_at_a_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1024);
        assert!(t.len() <= 1024 && t.ends_with("..."));
    }
}
