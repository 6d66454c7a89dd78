//! Status the leader writes back: `status.loadBalancer.ingress` of the
//! Ingresses we serve and of LoadBalancer Services.
//!
//! `plan` is pure (store + settings → the writes needed); `Writer` runs the
//! leader election and applies the plan and the Events after each publish
//! and on a timer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use pingora::server::ShutdownWatch;
use serde_json::json;

use super::events::EventReporter;
use super::leader::Elector;
use super::Shared;
use crate::config::KubernetesConfig;
use portico_model::control::Admission;
use portico_model::control::{LbAnswer, LbService, LoadBalancerAddresses};
use portico_model::publish::Publisher;
use portico_model::store::{ObjectKey, Store};
use portico_translate::Settings;

/// `spec.loadBalancerClass` this gateway implements; Services naming
/// another class belong to another load-balancer implementation.
pub const LOAD_BALANCER_CLASS: &str = "portico.io/load-balancer";

/// One `status.loadBalancer.ingress[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbAddress {
    Ip(IpAddr),
    Hostname(String),
}

impl LbAddress {
    pub fn parse(s: &str) -> LbAddress {
        match s.parse::<IpAddr>() {
            Ok(ip) => LbAddress::Ip(ip),
            Err(_) => LbAddress::Hostname(s.to_string()),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            LbAddress::Ip(ip) => json!({"ip": ip.to_string()}),
            LbAddress::Hostname(h) => json!({"hostname": h}),
        }
    }
}

/// The writes needed to make the cluster's status match what we serve.
#[derive(Debug, Default, PartialEq)]
pub struct StatusPlan {
    pub ingresses: BTreeMap<ObjectKey, Vec<LbAddress>>,
    pub services: BTreeMap<ObjectKey, Vec<LbAddress>>,
    /// What a load-balancer plugin reported about a Service.
    pub allocation_problems: Vec<(ObjectKey, String)>,
}

fn current(
    entries: Option<&Vec<k8s_openapi::api::core::v1::LoadBalancerIngress>>,
) -> Vec<LbAddress> {
    let mut v: Vec<LbAddress> = entries
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.ip.as_deref()
                .and_then(|ip| ip.parse().ok())
                .map(LbAddress::Ip)
                .or_else(|| e.hostname.clone().map(LbAddress::Hostname))
        })
        .collect();
    v.sort();
    v
}

fn ingress_current(ing: &Ingress) -> Vec<LbAddress> {
    // Ingress status has its own entry type with the same fields.
    let mut v: Vec<LbAddress> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.ip.as_deref()
                .and_then(|ip| ip.parse().ok())
                .map(LbAddress::Ip)
                .or_else(|| e.hostname.clone().map(LbAddress::Hostname))
        })
        .collect();
    v.sort();
    v
}

fn is_ours(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none_or(|c| c == LOAD_BALANCER_CLASS)
}

/// Pure: what status every served Ingress and every LoadBalancer Service
/// should have, minus what they already have.
/// `lb_answer`: the allocation plugin's answer for [`lb_services`], when
/// a plugin allocates (asked beforehand: it may wait for an external
/// API, and planning runs under the store's lock).
pub fn plan(
    store: &Store,
    settings: &Settings,
    publish: &[String],
    lb_answer: Option<&Result<LbAnswer, String>>,
) -> StatusPlan {
    let mut out = StatusPlan::default();
    let node: Vec<LbAddress> = settings
        .node_addresses
        .iter()
        .map(|ip| LbAddress::Ip(*ip))
        .collect();
    let published = published_addresses(settings, publish);

    let classes: Vec<_> = store
        .ingress_classes
        .values()
        .map(|c| c.object.as_ref())
        .collect();
    if !published.is_empty() {
        for (key, ing) in &store.ingresses {
            if !matches!(
                settings.admission.admit(&ing.object, &classes),
                Admission::Admit(_)
            ) {
                continue;
            }
            if ingress_current(&ing.object) != published {
                out.ingresses.insert(key.clone(), published.clone());
            }
        }
    }

    let services = portico_translate::oldest_first(&store.services, |s| &s.metadata);
    if let Some(answer) = lb_answer {
        plan_with_plugin(answer, &services, &mut out);
        return out;
    }
    // No allocation plugin (`kubernetes.load_balancer_plugin`, e.g. the
    // shipped `cloud-lb`): a Service gets the address it asks for, else
    // the edge node's own, which is where its listeners bind.
    for (key, s) in &services {
        let want: Vec<LbAddress> = if is_ours(&s.object) {
            match s
                .object
                .spec
                .as_ref()
                .and_then(|sp| sp.load_balancer_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            {
                Some(ip) => vec![LbAddress::Ip(ip)],
                None => node.clone(),
            }
        } else if s.object.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer")
        {
            // Another implementation's Service: not ours to touch.
            continue;
        } else {
            Vec::new()
        };
        let mut want = want;
        want.sort();
        if lb_status(&s.object) != want {
            out.services.insert((*key).clone(), want);
        }
    }
    out
}

/// The addresses Ingresses and Gateways are reachable at:
/// `kubernetes.publish_addresses`, else the node's.
pub fn published_addresses(settings: &Settings, publish: &[String]) -> Vec<LbAddress> {
    let mut published: Vec<LbAddress> = if publish.is_empty() {
        settings
            .node_addresses
            .iter()
            .map(|ip| LbAddress::Ip(*ip))
            .collect()
    } else {
        publish.iter().map(|s| LbAddress::parse(s)).collect()
    };
    published.sort();
    published.dedup();
    published
}

fn lb_status(s: &Service) -> Vec<LbAddress> {
    current(
        s.status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref()),
    )
}

/// LoadBalancer status from a plugin (`kubernetes.load_balancer_plugin`):
/// it sees every Service we implement and decides their addresses; other
/// LoadBalancer Services are left alone, and Services that stopped being
/// LoadBalancers are cleared as without a plugin.
fn plan_with_plugin(
    answer: &Result<LbAnswer, String>,
    services: &[(&ObjectKey, &portico_model::store::Stored<Service>)],
    out: &mut StatusPlan,
) {
    for (key, s) in services {
        let have = lb_status(&s.object);
        let want: Vec<LbAddress> = if is_ours(&s.object) {
            let Ok(answer) = &answer else {
                continue;
            };
            match answer
                .addresses
                .get(&(key.namespace.clone(), key.name.clone()))
            {
                Some(a) => a.iter().map(|a| LbAddress::parse(a)).collect(),
                None => continue,
            }
        } else if s.object.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer")
        {
            continue;
        } else {
            Vec::new()
        };
        let mut want = want;
        want.sort();
        if have != want {
            out.services.insert((*key).clone(), want);
        }
    }
    if let Ok(answer) = answer {
        out.allocation_problems = answer
            .problems
            .iter()
            .map(|(ns, name, m)| (ObjectKey::new(ns, name), m.clone()))
            .collect();
    }
}

/// What the allocation plugin is asked about: every LoadBalancer Service
/// this gateway implements, oldest first.
pub fn lb_services(store: &Store) -> Vec<LbService> {
    portico_translate::oldest_first(&store.services, |s| &s.metadata)
        .into_iter()
        .filter(|(_, s)| is_ours(&s.object))
        .map(|(k, s)| LbService {
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            load_balancer_ip: s
                .object
                .spec
                .as_ref()
                .and_then(|sp| sp.load_balancer_ip.clone()),
            annotations: s.object.metadata.annotations.clone().unwrap_or_default(),
            current: lb_status(&s.object)
                .iter()
                .map(|a| match a {
                    LbAddress::Ip(ip) => ip.to_string(),
                    LbAddress::Hostname(h) => h.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The Gateways the allocation plugin is asked about: those of Portico's
/// classes, oldest first, with their status addresses as `current`; one
/// that asks for an address has it as `loadBalancerIP` (so the plugin
/// counts it as taken and answers with it), like a Service's. Gateways
/// with `infrastructure.parametersRef` are not accepted, so not asked.
pub fn lb_gateways(store: &Store) -> Vec<LbService> {
    let ours = |class: &str| {
        store
            .gateway_classes
            .get(&ObjectKey::new("", class))
            .is_some_and(|c| {
                c.object.spec.controller_name == portico_translate::gateway::CONTROLLER_NAME
            })
    };
    portico_translate::oldest_first(&store.gateways, |g| &g.metadata)
        .into_iter()
        .filter(|(_, g)| {
            ours(&g.object.spec.gateway_class_name)
                && g.object
                    .spec
                    .infrastructure
                    .as_ref()
                    .is_none_or(|i| i.parameters_ref.is_none())
        })
        .map(|(k, g)| LbService {
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            load_balancer_ip: g
                .object
                .spec
                .addresses
                .iter()
                .flatten()
                .filter_map(|a| a.value.as_deref())
                .find(|v| v.parse::<IpAddr>().is_ok())
                .map(str::to_string),
            annotations: g.object.metadata.annotations.clone().unwrap_or_default(),
            current: g
                .object
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .map(|a| a.value.clone())
                .collect(),
        })
        .collect()
}

/// Runs the election and, while leading, status and Events.
pub struct Writer {
    client: Client,
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    elector: Option<Elector>,
    events: Option<EventReporter>,
    publish: Vec<String>,
    /// `kubernetes.load_balancer_plugin`.
    lb_plugin: Option<Arc<dyn LoadBalancerAddresses>>,
    retry: Duration,
    /// What we last wrote and when, so a write whose watch event has not
    /// come back yet is not repeated on every publish.
    written: HashMap<(bool, ObjectKey), (Vec<LbAddress>, Instant)>,
    gateway_written:
        HashMap<(super::gateway_status::GatewayKind, ObjectKey), (serde_json::Value, Instant)>,
    problems_logged: BTreeSet<ObjectKey>,
    gateway_problems_logged: BTreeSet<ObjectKey>,
}

pub fn identity(cfg: &KubernetesConfig) -> String {
    cfg.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "portico".into());
            format!("{host}-{}", std::process::id())
        })
}

impl Writer {
    pub fn new(
        client: Client,
        k: &KubernetesConfig,
        lb_plugin: Option<Arc<dyn LoadBalancerAddresses>>,
        shared: Arc<Shared>,
        publisher: Arc<Publisher>,
    ) -> Self {
        let identity = identity(k);
        let duration = Duration::from_secs(k.lease_duration_seconds);
        let elector = k.leader_election.then(|| {
            let ns = k
                .lease_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            Elector::new(
                client.clone(),
                &ns,
                &k.lease_name,
                identity.clone(),
                duration,
            )
        });
        // 1 while this process writes status: always without election.
        metrics::gauge!("portico_kubernetes_leader").set(if k.leader_election { 0.0 } else { 1.0 });
        Writer {
            events: k
                .events
                .then(|| EventReporter::new(client.clone(), identity.clone())),
            client,
            shared,
            publisher,
            elector,
            publish: k.publish_addresses.clone(),
            lb_plugin,
            retry: duration / 3,
            written: HashMap::new(),
            gateway_written: HashMap::new(),
            problems_logged: BTreeSet::new(),
            gateway_problems_logged: BTreeSet::new(),
        }
    }

    pub async fn run(mut self, shutdown: &mut ShutdownWatch) {
        let mut changes = self.publisher.subscribe();
        let mut next_tick = tokio::time::Instant::now();
        let mut leader = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_tick) => {
                    leader = match self.elector.as_mut() {
                        Some(e) => e.tick().await,
                        None => true,
                    };
                    next_tick = tokio::time::Instant::now() + self.retry;
                    if leader { self.sync().await; }
                }
                r = changes.changed(), if leader => {
                    if r.is_err() { return; }
                    // Let a burst of publishes settle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    changes.borrow_and_update();
                    self.sync().await;
                }
                _ = shutdown.changed() => {
                    if let Some(e) = self.elector.as_mut() { e.release().await; }
                    return;
                }
            }
        }
    }

    async fn sync(&mut self) {
        if !self.publisher.is_ready() {
            return;
        }
        // The allocation plugin is asked outside the lock and off the
        // runtime: it may wait for an external load-balancer API.
        let mut gateways_asked: Vec<LbService> = Vec::new();
        let lb_answer = match &self.lb_plugin {
            None => None,
            Some(alloc) => {
                let (asked, gateways, node) = {
                    let inner = self.shared.lock();
                    (
                        lb_services(&inner.cluster.store),
                        lb_gateways(&inner.cluster.store),
                        inner.settings.node_addresses.clone(),
                    )
                };
                gateways_asked = gateways.clone();
                if asked.is_empty() && gateways.is_empty() {
                    Some(Ok(LbAnswer::default()))
                } else {
                    let alloc = alloc.clone();
                    let answer = tokio::task::spawn_blocking(move || {
                        alloc.allocate(&asked, &gateways, &node)
                    })
                    .await;
                    Some(answer.unwrap_or_else(|e| Err(format!("allocation task: {e}"))))
                }
            }
        };
        let gateway_allocation: Option<BTreeMap<ObjectKey, Vec<IpAddr>>> = match &lb_answer {
            // Only for Gateways that ask for no address: one that asks is
            // told its own back, and its spec decides what it gets.
            Some(Ok(a)) => Some(
                a.gateway_addresses
                    .iter()
                    .filter(|((ns, name), _)| {
                        gateways_asked.iter().any(|g| {
                            &g.namespace == ns && &g.name == name && g.load_balancer_ip.is_none()
                        })
                    })
                    .map(|((ns, name), ips)| (ObjectKey::new(ns, name), ips.clone()))
                    .collect(),
            ),
            // The plugin failed: every Gateway keeps the addresses its
            // status has (an allocation must not move on a timeout).
            Some(Err(_)) => Some(
                gateways_asked
                    .iter()
                    .filter(|g| g.load_balancer_ip.is_none())
                    .map(|g| {
                        let ips = g.current.iter().filter_map(|a| a.parse().ok()).collect();
                        (ObjectKey::new(&g.namespace, &g.name), ips)
                    })
                    .collect(),
            ),
            None => None,
        };
        let (plan, gateway_writes, events) = {
            let inner = self.shared.lock();
            let plan = plan(
                &inner.cluster.store,
                &inner.settings,
                &self.publish,
                lb_answer.as_ref(),
            );
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let gateway_writes = super::gateway_status::plan(
                &inner.cluster.store,
                &self.publisher.current().gateway_api,
                &published_addresses(&inner.settings, &self.publish),
                gateway_allocation.as_ref(),
                &now,
            );
            let events = self
                .events
                .as_mut()
                .map(|r| r.pending(&inner.cluster.store, &self.publisher.current().problems))
                .unwrap_or_default();
            (plan, gateway_writes, events)
        };
        for (key, message) in &plan.allocation_problems {
            if self.problems_logged.insert(key.clone()) {
                tracing::error!(service = %key, plugin = ?self.lb_plugin.as_ref().map(|p| p.name().to_string()), "{message}");
            }
        }
        if let Some(Ok(answer)) = &lb_answer {
            for (ns, name, message) in &answer.gateway_problems {
                let key = ObjectKey::new(ns, name);
                if self.gateway_problems_logged.insert(key.clone()) {
                    tracing::error!(gateway = %key, plugin = ?self.lb_plugin.as_ref().map(|p| p.name().to_string()), "{message}");
                }
            }
        }
        for (key, want) in &plan.ingresses {
            self.write(true, key, want).await;
        }
        for (key, want) in &plan.services {
            self.write(false, key, want).await;
        }
        for w in gateway_writes {
            self.write_gateway_status(w).await;
        }
        if let Some(r) = self.events.as_mut() {
            r.publish(events).await;
        }
    }

    /// Writes one Gateway API object's status (a merge patch of the status
    /// subresource).
    async fn write_gateway_status(&mut self, w: super::gateway_status::StatusWrite) {
        use super::gateway_status::GatewayKind;
        use portico_gateway_api::{
            GRPCRoute, Gateway, GatewayClass, HTTPRoute, TCPRoute, TLSRoute, UDPRoute,
        };
        let id = (w.kind, w.key.clone());
        if let Some((last, at)) = self.gateway_written.get(&id) {
            if *last == w.status && at.elapsed() < Duration::from_secs(10) {
                return;
            }
        }
        let mut body = json!({ "status": w.status });
        if let Some(rv) = &w.resource_version {
            // A precondition: a newer version (another controller's
            // entry, say) makes this write fail rather than erase it.
            body["metadata"] = json!({ "resourceVersion": rv });
        }
        let params = PatchParams::default();
        let patch = Patch::Merge(&body);
        let (c, key) = (self.client.clone(), &w.key);
        let result = match w.kind {
            GatewayKind::GatewayClass => Api::<GatewayClass>::all(c)
                .patch_status(&key.name, &params, &patch)
                .await
                .map(|_| ()),
            GatewayKind::Gateway => Api::<Gateway>::namespaced(c, &key.namespace)
                .patch_status(&key.name, &params, &patch)
                .await
                .map(|_| ()),
            GatewayKind::HTTPRoute => Api::<HTTPRoute>::namespaced(c, &key.namespace)
                .patch_status(&key.name, &params, &patch)
                .await
                .map(|_| ()),
            GatewayKind::GRPCRoute => Api::<GRPCRoute>::namespaced(c, &key.namespace)
                .patch_status(&key.name, &params, &patch)
                .await
                .map(|_| ()),
            GatewayKind::TCPRoute => Api::<TCPRoute>::namespaced(c, &key.namespace)
                .patch_status(&key.name, &params, &patch)
                .await
                .map(|_| ()),
            GatewayKind::UDPRoute => Api::<UDPRoute>::namespaced(c, &key.namespace)
                .patch_status(&key.name, &params, &patch)
                .await
                .map(|_| ()),
            GatewayKind::TLSRoute => Api::<TLSRoute>::namespaced(c, &key.namespace)
                .patch_status(&key.name, &params, &patch)
                .await
                .map(|_| ()),
        };
        let kind = w.kind.name();
        match result {
            Ok(()) => {
                metrics::counter!("portico_kubernetes_status_writes_total", "kind" => kind, "result" => "ok").increment(1);
                tracing::info!(object = %format!("{kind} {key}"), "Gateway API status written");
                self.gateway_written.insert(id, (w.status, Instant::now()));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Changed since it was read: planned again from the new
                // version when its watch event arrives.
                metrics::counter!("portico_kubernetes_status_writes_total", "kind" => kind, "result" => "conflict").increment(1);
                tracing::debug!(object = %format!("{kind} {key}"), "status changed since read; planned again");
            }
            Err(e) => {
                metrics::counter!("portico_kubernetes_status_writes_total", "kind" => kind, "result" => "error").increment(1);
                tracing::warn!(object = %format!("{kind} {key}"), error = %e, "cannot write Gateway API status");
            }
        }
    }

    async fn write(&mut self, ingress: bool, key: &ObjectKey, want: &[LbAddress]) {
        let id = (ingress, key.clone());
        if let Some((last, at)) = self.written.get(&id) {
            if last == want && at.elapsed() < Duration::from_secs(10) {
                return;
            }
        }
        let body = json!({"status": {"loadBalancer": {"ingress": want.iter().map(LbAddress::to_json).collect::<Vec<_>>()}}});
        let params = PatchParams::default();
        let result = if ingress {
            Api::<Ingress>::namespaced(self.client.clone(), &key.namespace)
                .patch_status(&key.name, &params, &Patch::Merge(&body))
                .await
                .map(|_| ())
        } else {
            Api::<Service>::namespaced(self.client.clone(), &key.namespace)
                .patch_status(&key.name, &params, &Patch::Merge(&body))
                .await
                .map(|_| ())
        };
        let kind = if ingress { "Ingress" } else { "Service" };
        match result {
            Ok(()) => {
                metrics::counter!("portico_kubernetes_status_writes_total", "kind" => kind, "result" => "ok").increment(1);
                tracing::info!(object = %format!("{kind} {key}"), addresses = ?want, "status.loadBalancer written");
                self.written.insert(id, (want.to_vec(), Instant::now()));
            }
            Err(e) => {
                metrics::counter!("portico_kubernetes_status_writes_total", "kind" => kind, "result" => "error").increment(1);
                tracing::warn!(object = %format!("{kind} {key}"), error = %e, "cannot write status.loadBalancer");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::store::AnyObject;

    fn settings(node: &[&str]) -> Settings {
        Settings::new(node.iter().map(|a| a.parse().unwrap()).collect())
    }

    fn store(yamls: &[&str]) -> Store {
        let mut s = Store::default();
        for y in yamls {
            let v: serde_yaml::Value = serde_yaml::from_str(y).unwrap();
            let o = match v["kind"].as_str().unwrap() {
                "Service" => AnyObject::Service(Arc::new(serde_yaml::from_value(v).unwrap())),
                "Ingress" => AnyObject::Ingress(Arc::new(serde_yaml::from_value(v).unwrap())),
                k => panic!("{k}"),
            };
            s.insert(o, None);
        }
        s
    }

    fn lb(name: &str, ts: &str, extra: &str) -> String {
        format!("kind: Service\napiVersion: v1\nmetadata: {{name: {name}, namespace: ns, creationTimestamp: \"{ts}\"}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]{extra}}}\n")
    }

    fn ips(list: &[&str]) -> Vec<LbAddress> {
        list.iter().map(|s| LbAddress::parse(s)).collect()
    }

    #[test]
    fn served_ingresses_get_the_publish_addresses() {
        let s = store(&[
            "kind: Ingress\napiVersion: networking.k8s.io/v1\nmetadata: {name: a, namespace: ns}\nspec: {ingressClassName: portico}\n",
            "kind: Ingress\napiVersion: networking.k8s.io/v1\nmetadata: {name: other, namespace: ns}\nspec: {ingressClassName: traefik}\n",
            "kind: Ingress\napiVersion: networking.k8s.io/v1\nmetadata: {name: done, namespace: ns}\nspec: {ingressClassName: portico}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.1}]}}\n",
        ]);
        let p = plan(&s, &settings(&["192.0.2.1"]), &[], None);
        // Without an admission plugin every Ingress is served.
        assert_eq!(
            p.ingresses,
            BTreeMap::from([
                (ObjectKey::new("ns", "a"), ips(&["192.0.2.1"])),
                (ObjectKey::new("ns", "other"), ips(&["192.0.2.1"])),
            ])
        );
        let p = plan(
            &s,
            &settings(&["192.0.2.1"]),
            &["lb.example.com".into()],
            None,
        );
        assert_eq!(p.ingresses.len(), 3);
        assert_eq!(
            p.ingresses[&ObjectKey::new("ns", "done")],
            vec![LbAddress::Hostname("lb.example.com".into())]
        );
    }

    #[test]
    fn without_a_plugin_load_balancers_get_their_own_ip_or_the_node_addresses() {
        let s = store(&[
            &lb(
                "pinned",
                "2024-01-01T00:00:00Z",
                ", loadBalancerIP: 198.51.100.9",
            ),
            &lb("plain", "2024-01-02T00:00:00Z", ""),
            &format!(
                "{}status: {{loadBalancer: {{ingress: [{{ip: 192.0.2.1}}]}}}}\n",
                lb("done", "2024-01-03T00:00:00Z", "")
            ),
            &lb(
                "foreign",
                "2024-01-04T00:00:00Z",
                ", loadBalancerClass: example.com/other",
            ),
        ]);
        let p = plan(&s, &settings(&["192.0.2.1"]), &[], None);
        assert_eq!(
            p.services,
            BTreeMap::from([
                (ObjectKey::new("ns", "pinned"), ips(&["198.51.100.9"])),
                (ObjectKey::new("ns", "plain"), ips(&["192.0.2.1"])),
            ])
        );
    }

    #[test]
    fn status_of_a_service_no_longer_load_balancer_is_cleared() {
        let s = store(&["kind: Service\napiVersion: v1\nmetadata: {name: was, namespace: ns}\nspec: {type: ClusterIP, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.2}]}}\n"]);
        let p = plan(&s, &settings(&[]), &[], None);
        assert_eq!(p.services[&ObjectKey::new("ns", "was")], vec![]);
    }
}
