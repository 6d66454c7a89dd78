//! Translation: a pure function from the object store (and settings) to a
//! `SnapshotSpec`. No I/O, no clocks, no globals: everything Kubernetes
//! means is decided here and tested with tables.
//!
//! Control-plugin answers (Ingress admission, route policy) come in
//! through the `portico_model::control` traits in [`Settings`], so tests
//! hand in plain Rust implementations.
//!
//! Must not: read files, sockets or the Kubernetes API, or depend on the
//! plugin host, the sources or the data plane.

pub mod backend;
pub mod gateway;
pub mod ingress;
pub mod label_selector;
pub mod plugins;
mod services;

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::IngressClass;

use portico_model::control::{Admission, AdmitAll, IngressAdmission, IngressPolicy};
use portico_model::lb::PolicyKind;
use portico_model::problems::Problem;
use portico_model::snapshot::SnapshotSpec;
use portico_model::store::Store;

/// The settings translation depends on.
pub struct Settings {
    pub node_addresses: Vec<IpAddr>,
    pub node_ports: bool,
    pub default_policy: PolicyKind,
    pub admission: Box<dyn IngressAdmission>,
    /// Addresses of ExternalName Services' DNS names, as last resolved: an
    /// input like the store, so translation stays pure.
    pub resolved_names: BTreeMap<String, Vec<IpAddr>>,
    /// Names of the configured plugins, so an annotation naming another
    /// is reported.
    pub plugins: std::collections::BTreeSet<String>,
    /// The scoped listener plugins (`applies_to`), in listener order.
    pub scoped: plugins::ScopedPlugins,
    /// `ingress.policy_plugin`, when set: `Err` names it when this process
    /// did not load it (then Ingresses are not served rather than served
    /// without their policy).
    pub policy: Option<Result<std::sync::Arc<dyn IngressPolicy>, String>>,
    /// The ports of Portico's HTTP and HTTPS listeners (`listen.http`,
    /// `listen.https`): the Gateway listeners it can serve.
    pub http_ports: Vec<u16>,
    pub https_ports: Vec<u16>,
    /// The addresses Gateways are reachable at
    /// (`kubernetes.publish_addresses` that are IPs); empty: the node's.
    pub gateway_addresses: Vec<IpAddr>,
    /// `[[announce.pools]]` with `gateways = true`: (name, networks). A
    /// Gateway's `spec.addresses` IP in one of them is its own, served and
    /// announced.
    pub gateway_pools: Vec<(String, Vec<ipnetwork::IpNetwork>)>,
    /// A load-balancer plugin gives Gateways without `spec.addresses`
    /// their addresses (`kubernetes.load_balancer_plugin`): the IPs in
    /// such a Gateway's status other than Portico's own are the Gateway's.
    pub gateway_load_balancer: bool,
    /// Every Node's addresses (Kubernetes source, with announcement on):
    /// never announced for a Service or a Gateway, whatever their status
    /// says. A Service without an address of its own has the leader's node
    /// addresses in its status; another edge node announcing them would
    /// take that node's address.
    pub cluster_node_addresses: std::collections::BTreeSet<IpAddr>,
    /// False while those are being listed: then no status address of a
    /// Service is announced (it could be another node's).
    pub cluster_nodes_known: bool,
}

impl Settings {
    /// Settings with nothing configured but the node's addresses: every
    /// Ingress admitted, no plugins, no policy plugin.
    pub fn new(node_addresses: Vec<IpAddr>) -> Self {
        Settings {
            node_addresses,
            node_ports: true,
            default_policy: PolicyKind::RoundRobin,
            admission: Box::new(AdmitAll),
            resolved_names: BTreeMap::new(),
            plugins: Default::default(),
            scoped: Default::default(),
            policy: None,
            http_ports: vec![80],
            https_ports: vec![443],
            gateway_addresses: Vec::new(),
            gateway_pools: Vec::new(),
            gateway_load_balancer: false,
            cluster_node_addresses: Default::default(),
            cluster_nodes_known: true,
        }
    }
}

pub fn translate(store: &Store, settings: &Settings) -> SnapshotSpec {
    let mut out = SnapshotSpec::default();
    let mut backends = backend::Backends::new(store, settings);

    let classes: Vec<&IngressClass> = store
        .ingress_classes
        .values()
        .map(|c| c.object.as_ref())
        .collect();
    // Older Ingresses win conflicts (as ingress-nginx does).
    let mut canaries = Vec::new();
    for (key, ing) in oldest_first(&store.ingresses, |i| &i.metadata) {
        match settings.admission.admit(&ing.object, &classes) {
            Admission::Admit(_) => {
                out.admitted_ingresses += 1;
                canaries.extend(ingress::add_ingress(
                    key,
                    &ing.object,
                    store,
                    settings,
                    &mut backends,
                    &mut out,
                ))
            }
            Admission::Ignore(reason) => out.ignored_ingresses.push(ingress::ignored(
                key,
                &ing.object,
                Store::locate(&store.ingresses, "Ingress", key),
                reason,
            )),
        }
    }
    // Canaries after every main Ingress, whatever their age; the oldest
    // canary of a path wins.
    for c in canaries {
        let host = c.host.as_deref();
        if !out.routes.attach_canary(host, c.kind, &c.path, c.canary) {
            out.problems.push(portico_model::problems::Problem::warning(
                &c.here,
                format!(
                    "{}: canary for {} {}, but no other Ingress routes that host and path \
                     (or another canary took it); not served",
                    c.what,
                    host.unwrap_or("*"),
                    c.path
                ),
            ));
        }
    }

    services::add_l4_listeners(
        store,
        settings,
        &mut backends,
        &mut out.l4,
        &mut out.load_balancer_addresses,
        &mut out.problems,
    );
    // After the Services' L4 listeners: a Gateway's TCP or UDP listener
    // does not take a port a Service already has.
    gateway::add_gateway_api(store, settings, &mut backends, &mut out);

    for ps in backends.problems.values() {
        out.problems.extend(ps.iter().cloned());
    }
    out.backend_problems = backends.problems;
    out.backends = backends.built;
    out.problems.sort();
    out.problems.dedup();
    out.ignored_ingresses.sort();
    out
}

/// Recomputes the backends of `services` after only their EndpointSlices
/// changed; everything else in `spec` stays. The result equals a full
/// `translate` of the new store (the tests check this), at the cost of the
/// changed Services only. Returns the backends that were rebuilt.
pub fn refresh_endpoints(
    spec: &mut SnapshotSpec,
    store: &Store,
    settings: &Settings,
    services: &std::collections::BTreeSet<portico_model::store::ObjectKey>,
) -> Vec<portico_model::snapshot::BackendKey> {
    let mut backends = backend::Backends::for_services(store, settings, services);
    let affected: Vec<portico_model::snapshot::BackendKey> = spec
        .backends
        .keys()
        .filter(|k| {
            services.contains(&portico_model::store::ObjectKey::new(
                k.namespace.clone(),
                k.service.clone(),
            ))
        })
        .cloned()
        .collect();
    for key in &affected {
        let svc_key =
            portico_model::store::ObjectKey::new(key.namespace.clone(), key.service.clone());
        // A backend whose Service or port does not resolve has no endpoints
        // whatever the slices say: it stays as it is.
        let Some(svc) = store.services.get(&svc_key) else {
            continue;
        };
        let ports = svc
            .object
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or(&[]);
        if let Some(sp) = ports.iter().find(|p| backend::port_key(p) == key.port) {
            backends.service_port(&svc_key, &svc.object, sp);
        }
    }
    let rebuilt: Vec<_> = backends.built.keys().cloned().collect();
    spec.backends.append(&mut backends.built);
    for svc in services {
        if let Some(old) = spec.backend_problems.remove(svc) {
            spec.problems.retain(|p| !old.contains(p));
        }
    }
    for (svc, ps) in backends.problems {
        spec.problems.extend(ps.iter().cloned());
        spec.backend_problems.insert(svc, ps);
    }
    spec.problems.sort();
    spec.problems.dedup();
    rebuilt
}

/// Objects ordered oldest first (`creationTimestamp`, then namespace/name):
/// when two objects claim the same host+path or port, the older one keeps it.
pub fn oldest_first<T>(
    map: &std::collections::BTreeMap<
        portico_model::store::ObjectKey,
        portico_model::store::Stored<T>,
    >,
    meta: impl Fn(&T) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<(
    &portico_model::store::ObjectKey,
    &portico_model::store::Stored<T>,
)> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by(|(ka, a), (kb, b)| {
        let ta = meta(&a.object).creation_timestamp.as_ref().map(|t| t.0);
        let tb = meta(&b.object).creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| ka.cmp(kb))
    });
    v
}

/// Translation problems that are errors, for `portico check`.
pub fn errors(problems: &[Problem]) -> usize {
    problems.iter().filter(|p| p.is_error()).count()
}

#[cfg(test)]
mod tests;
