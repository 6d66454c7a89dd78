//! Translation: a pure function from the object store (and settings) to a
//! `SnapshotSpec`. No I/O, no clocks, no globals: everything Kubernetes
//! means is decided here and tested with tables.

pub mod backend;
pub mod class;
pub mod ingress;
pub mod plugins;
mod services;

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::IngressClass;

use crate::config::Config;
use crate::lb::PolicyKind;
use crate::problems::Problem;
use crate::snapshot::SnapshotSpec;
use crate::store::Store;
use class::{Admission, AdmitAll, IngressAdmission};

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
    pub policy: Option<Result<std::sync::Arc<crate::plugins::ingress_policy::WasmPolicy>, String>>,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        Settings {
            node_addresses: cfg.node.addresses.clone(),
            node_ports: cfg.l4.node_ports,
            default_policy: cfg.lb.default_policy,
            admission: match &cfg.ingress.admission {
                Some(plugin) => crate::plugins::admission::for_plugin(plugin),
                None => Box::new(AdmitAll),
            },
            resolved_names: BTreeMap::new(),
            plugins: cfg.plugins.load.iter().map(|p| p.name.clone()).collect(),
            scoped: plugins::ScopedPlugins::from_config(&cfg.plugins),
            policy: cfg.ingress.policy_plugin.as_ref().map(|name| {
                crate::plugins::ingress_policy::installed()
                    .ok_or_else(|| format!("policy plugin {name} is not loaded"))
            }),
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
            Admission::Admit(_) => canaries.extend(ingress::add_ingress(
                key,
                &ing.object,
                store,
                settings,
                &mut backends,
                &mut out,
            )),
            Admission::Ignore(why) => tracing::debug!(ingress = %key, %why, "not ours"),
        }
    }
    // Canaries after every main Ingress, whatever their age; the oldest
    // canary of a path wins.
    for c in canaries {
        let host = c.host.as_deref();
        if !out.routes.attach_canary(host, c.kind, &c.path, c.canary) {
            out.problems.push(crate::problems::Problem::warning(
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
        &mut out.problems,
    );

    for ps in backends.problems.values() {
        out.problems.extend(ps.iter().cloned());
    }
    out.backend_problems = backends.problems;
    out.backends = backends.built;
    out.problems.sort();
    out.problems.dedup();
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
    services: &std::collections::BTreeSet<crate::store::ObjectKey>,
) -> Vec<crate::snapshot::BackendKey> {
    let mut backends = backend::Backends::for_services(store, settings, services);
    let affected: Vec<crate::snapshot::BackendKey> = spec
        .backends
        .keys()
        .filter(|k| {
            services.contains(&crate::store::ObjectKey::new(
                k.namespace.clone(),
                k.service.clone(),
            ))
        })
        .cloned()
        .collect();
    for key in &affected {
        let svc_key = crate::store::ObjectKey::new(key.namespace.clone(), key.service.clone());
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
pub(crate) fn oldest_first<T>(
    map: &std::collections::BTreeMap<crate::store::ObjectKey, crate::store::Stored<T>>,
    meta: impl Fn(&T) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<(&crate::store::ObjectKey, &crate::store::Stored<T>)> {
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
