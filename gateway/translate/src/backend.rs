//! Service ports to backend pools: port lookup by number or name, target
//! ports resolved per EndpointSlice, endpoint conditions to states.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::Settings;
use portico_model::lb::PolicyKind;
use portico_model::problems::Problem;
use portico_model::snapshot::{
    BackendKey, BackendSpec, ClientIpAffinity, EndpointSpec, EndpointState, ProxyProtocol,
};
use portico_model::store::{ObjectKey, Store};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const LB_POLICY_ANNOTATION: &str = "portico.io/load-balancer";
/// `v1` or `v2`: L4 connections to the Service's endpoints start with a
/// PROXY protocol header carrying the client's address.
pub const PROXY_PROTOCOL_ANNOTATION: &str = "portico.io/proxy-protocol";
const DEFAULT_AFFINITY_TIMEOUT: u64 = 10_800;

/// How an Ingress or listener names a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

/// EndpointSlices grouped by the Service they belong to.
pub struct SliceIndex<'a> {
    by_service: HashMap<ObjectKey, Vec<&'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(store: &'a Store) -> Self {
        Self::build(store, |_| true)
    }

    fn build(store: &'a Store, wanted: impl Fn(&ObjectKey) -> bool) -> Self {
        let mut by_service: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
        for (key, slice) in &store.endpoint_slices {
            let owner = slice
                .object
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(svc) = owner {
                let service = ObjectKey::new(key.namespace.clone(), svc.clone());
                if wanted(&service) {
                    by_service.entry(service).or_default().push(&slice.object);
                }
            }
        }
        SliceIndex { by_service }
    }
}

/// Builds backends on demand, once per Service port, collecting problems.
pub struct Backends<'a> {
    store: &'a Store,
    slices: SliceIndex<'a>,
    default_policy: PolicyKind,
    resolved_names: &'a BTreeMap<String, Vec<IpAddr>>,
    known_plugins: &'a BTreeSet<String>,
    scoped: &'a super::plugins::ScopedPlugins,
    pub built: BTreeMap<BackendKey, BackendSpec>,
    /// Problems found while building backends, by the Service they are
    /// about, so an endpoint-only refresh can replace exactly those.
    pub problems: BTreeMap<ObjectKey, Vec<Problem>>,
}

/// `spec.externalName` of an ExternalName Service (lower-cased, without
/// the trailing dot).
pub fn external_name(svc: &Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    let name = spec.external_name.as_deref()?.trim_end_matches('.');
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// DNS names the store's ExternalName Services need resolved (IP literals
/// need no resolving).
pub fn external_names(store: &Store) -> BTreeSet<String> {
    store
        .services
        .values()
        .filter_map(|s| external_name(&s.object))
        .filter(|n| n.parse::<IpAddr>().is_err())
        .collect()
}

pub fn port_key(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => port.port.to_string(),
    }
}

impl<'a> Backends<'a> {
    pub fn new(store: &'a Store, settings: &'a Settings) -> Self {
        Backends {
            store,
            slices: SliceIndex::new(store),
            default_policy: settings.default_policy,
            resolved_names: &settings.resolved_names,
            known_plugins: &settings.plugins,
            scoped: &settings.scoped,
            built: BTreeMap::new(),
            problems: BTreeMap::new(),
        }
    }

    /// Like `new`, but indexes only the EndpointSlices of `services`.
    pub fn for_services(
        store: &'a Store,
        settings: &'a Settings,
        services: &BTreeSet<ObjectKey>,
    ) -> Self {
        Backends {
            store,
            slices: SliceIndex::build(store, |k| services.contains(k)),
            default_policy: settings.default_policy,
            resolved_names: &settings.resolved_names,
            known_plugins: &settings.plugins,
            scoped: &settings.scoped,
            built: BTreeMap::new(),
            problems: BTreeMap::new(),
        }
    }

    fn warn(&mut self, svc_key: &ObjectKey, location: &str, message: String) {
        warn(&mut self.problems, svc_key, location, message);
    }

    /// The backend for `namespace/service` at `port`. A missing Service or
    /// port still yields a key (with no endpoints, so requests get a 503
    /// naming it); the reason is returned for the caller to report.
    pub fn resolve(
        &mut self,
        namespace: &str,
        service: &str,
        port: &PortRef,
    ) -> (BackendKey, Option<String>) {
        let svc_key = ObjectKey::new(namespace, service);
        let Some(svc) = self.store.services.get(&svc_key) else {
            let key = self.unresolved(namespace, service, port);
            return (key, Some(format!("Service {svc_key} not found")));
        };
        let svc = svc.object.clone();
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or(&[]);
        let found = ports.iter().find(|p| match port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(n) => p.name.as_deref() == Some(n),
        });
        let Some(sp) = found else {
            let key = self.unresolved(namespace, service, port);
            let want = match port {
                PortRef::Number(n) => format!("number {n}"),
                PortRef::Name(n) => format!("name {n:?}"),
            };
            return (
                key,
                Some(format!("Service {svc_key} has no port with {want}")),
            );
        };
        let key = self.service_port(&svc_key, &svc, sp);
        (key, None)
    }

    /// A backend with no endpoints for a reference that does not resolve,
    /// so requests get a 503 naming it rather than a 404.
    fn unresolved(&mut self, namespace: &str, service: &str, port: &PortRef) -> BackendKey {
        let key = BackendKey {
            namespace: namespace.into(),
            service: service.into(),
            port: match port {
                PortRef::Number(n) => n.to_string(),
                PortRef::Name(n) => n.clone(),
            },
        };
        self.built
            .entry(key.clone())
            .or_insert_with(|| empty(&key, self.default_policy));
        key
    }

    /// The backend of one port of a Service (also used for L4 listeners).
    pub fn service_port(
        &mut self,
        svc_key: &ObjectKey,
        svc: &Service,
        sp: &ServicePort,
    ) -> BackendKey {
        let key = BackendKey {
            namespace: svc_key.namespace.clone(),
            service: svc_key.name.clone(),
            port: port_key(sp),
        };
        if self.built.contains_key(&key) {
            return key;
        }
        let location = Store::locate(&self.store.services, "Service", svc_key);
        let spec = svc.spec.as_ref();
        let endpoints = match external_name(svc) {
            Some(name) => self.external_endpoints(svc_key, &name, sp, &location),
            None => self.endpoints(svc_key, sp, &location),
        };
        let policy = match svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LB_POLICY_ANNOTATION))
        {
            None => self.default_policy,
            Some(v) => match PolicyKind::parse(v) {
                Some(p) => p,
                None => {
                    let msg = format!(
                        "annotation {LB_POLICY_ANNOTATION}: unknown policy {v:?} (expected one of {}); using {:?}",
                        PolicyKind::NAMES,
                        self.default_policy
                    );
                    self.warn(svc_key, &location, msg);
                    self.default_policy
                }
            },
        };
        let (plugins, unknown) =
            super::plugins::requested(svc.metadata.annotations.as_ref(), self.known_plugins);
        for m in unknown {
            self.warn(svc_key, &location, m);
        }
        let (scoped_http, scoped_tcp) = self.scoped.for_service(svc);
        let proxy_protocol = match svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROXY_PROTOCOL_ANNOTATION))
        {
            None => None,
            Some(v) => {
                let parsed = ProxyProtocol::parse(v);
                if parsed.is_none() {
                    let msg = format!(
                        "annotation {PROXY_PROTOCOL_ANNOTATION}: {v:?} is not a PROXY protocol version (expected \"v1\" or \"v2\"); no header is sent"
                    );
                    self.warn(svc_key, &location, msg);
                }
                parsed
            }
        };
        let affinity = spec
            .filter(|s| s.session_affinity.as_deref() == Some("ClientIP"))
            .map(|s| {
                let secs = s
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .filter(|t| *t > 0)
                    .map(|t| t as u64)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
                ClientIpAffinity {
                    timeout: Duration::from_secs(secs),
                }
            });
        self.built.insert(
            key.clone(),
            BackendSpec {
                key: key.clone(),
                endpoints,
                policy,
                affinity,
                plugins,
                scoped_http,
                scoped_tcp,
                proxy_protocol,
            },
        );
        key
    }

    /// An ExternalName Service's endpoints: its name's addresses (as last
    /// resolved, or the name itself when it is an IP) on the Service port.
    fn external_endpoints(
        &mut self,
        svc_key: &ObjectKey,
        name: &str,
        sp: &ServicePort,
        location: &str,
    ) -> Vec<EndpointSpec> {
        let Ok(port) = u16::try_from(sp.port) else {
            return Vec::new();
        };
        let addrs: Vec<IpAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.resolved_names.get(name).cloned().unwrap_or_default(),
        };
        if addrs.is_empty() {
            let msg = format!(
                "ExternalName {name}: no addresses yet (not resolved, or the name does not \
                 resolve); requests get 503 until it does"
            );
            warn(&mut self.problems, svc_key, location, msg);
        }
        addrs
            .into_iter()
            .map(|ip| EndpointSpec {
                addr: SocketAddr::new(ip, port),
                state: EndpointState::Ready,
                target: Some(name.to_string()),
            })
            .collect()
    }

    fn endpoints(
        &mut self,
        svc_key: &ObjectKey,
        sp: &ServicePort,
        location: &str,
    ) -> Vec<EndpointSpec> {
        let mut out: Vec<EndpointSpec> = Vec::new();
        let Some(slices) = self.slices.by_service.get(svc_key) else {
            return out;
        };
        let svc_port_name = sp.name.as_deref().unwrap_or("");
        let mut seen = std::collections::HashSet::new();
        let numeric_target = match &sp.target_port {
            Some(IntOrString::Int(n)) => Some(*n),
            None => Some(sp.port),
            Some(IntOrString::String(_)) => None,
        };
        for slice in slices {
            if slice.address_type == "FQDN" {
                let msg = format!(
                    "EndpointSlice {}/{} has addressType FQDN, which is not supported; skipped",
                    svc_key.namespace,
                    slice.metadata.name.as_deref().unwrap_or("")
                );
                warn(&mut self.problems, svc_key, location, msg);
                continue;
            }
            // The slice carries the resolved target port under the Service
            // port's name; a named targetPort can differ per slice.
            let slice_port = slice
                .ports
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == svc_port_name)
                .and_then(|p| p.port);
            let Some(port) = slice_port.or(numeric_target) else {
                continue;
            };
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            for ep in slice.endpoints.as_deref().unwrap_or(&[]) {
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let state = if ready && !terminating {
                    EndpointState::Ready
                } else if serving && terminating {
                    EndpointState::ServingTerminating
                } else {
                    continue;
                };
                for a in &ep.addresses {
                    let Ok(ip) = a.parse::<IpAddr>() else {
                        let msg = format!("endpoint address {a:?} is not an IP address; skipped");
                        warn(&mut self.problems, svc_key, location, msg);
                        continue;
                    };
                    let addr = SocketAddr::new(ip, port);
                    if !seen.insert(addr) {
                        continue;
                    }
                    out.push(EndpointSpec {
                        addr,
                        state,
                        target: ep.target_ref.as_ref().and_then(|t| t.name.clone()),
                    });
                }
            }
        }
        out.sort_by_key(|e| e.addr);
        out
    }
}

fn warn(
    problems: &mut BTreeMap<ObjectKey, Vec<Problem>>,
    svc_key: &ObjectKey,
    location: &str,
    message: String,
) {
    problems
        .entry(svc_key.clone())
        .or_default()
        .push(Problem::warning(location, message));
}

fn empty(key: &BackendKey, policy: PolicyKind) -> BackendSpec {
    BackendSpec {
        key: key.clone(),
        endpoints: Vec::new(),
        policy,
        affinity: None,
        plugins: Vec::new(),
        scoped_http: Vec::new(),
        scoped_tcp: Vec::new(),
        proxy_protocol: None,
    }
}
