//! Gateway API → routes and certificates: GatewayClasses of Portico's
//! controller, their Gateways' HTTP and HTTPS listeners, and the
//! HTTPRoutes attached to those listeners. The routes land in the same
//! route table as Ingress routes, with the rule's conditions, filters and
//! weights in [`RuleAction`], so the data plane serves both alike.
//!
//! Portico's HTTP listeners are fixed by its configuration (`listen.http`,
//! `listen.https`): a Gateway listener is served when its protocol and
//! port are one of them, and its routes match only requests arriving on
//! that port. What the spec says a listener or route status shows is
//! collected in [`GatewayApiStatus`] for the status writer and reported as
//! problems.

use std::collections::{BTreeMap, BTreeSet};

use portico_gateway_api::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From, GatewayListenersTlsMode,
};
use portico_gateway_api::httproutes::{
    HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersType as F,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use portico_gateway_api::{Gateway, HTTPRoute};
use portico_model::gateway_status::{
    Condition, GatewayApiStatus, GatewayState, ListenerState, ParentState,
};
use portico_model::problems::Problem;
use portico_model::route_rule::{
    HeaderEdits, MirrorFilter, NamedMatch, PathChange, RedirectFilter, RequestConditions,
    RewriteFilter, RuleAction, ValueMatch, ValueRegex, WeightedBackend,
};
use portico_model::routing::{Annotations, PathKind, PathRegex, Route};
use portico_model::snapshot::{BackendKey, L4ListenerKey, L4Protocol, SnapshotSpec};
use portico_model::sni::SniRoute;
use portico_model::store::{ObjectKey, Store};

use super::backend::{Backends, PortRef};
use super::label_selector::LabelSelector;

mod session;

/// The `controllerName` of the GatewayClasses Portico implements.
pub const CONTROLLER_NAME: &str = "portico.io/gateway-controller";

/// The `extensionRef` of a filter naming a Portico plugin.
pub const PLUGIN_GROUP: &str = "portico.io";
pub const PLUGIN_KIND: &str = "Plugin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Protocol {
    Http,
    Https,
    Tcp,
    Udp,
    /// `TLS` with `tls.mode: Passthrough`: routed by SNI, not terminated.
    Tls,
}

impl Protocol {
    /// The route kinds a listener of this protocol takes.
    fn route_kinds(self) -> &'static [&'static str] {
        match self {
            Protocol::Http | Protocol::Https => &["HTTPRoute", "GRPCRoute"],
            Protocol::Tcp => &["TCPRoute"],
            Protocol::Udp => &["UDPRoute"],
            Protocol::Tls => &["TLSRoute"],
        }
    }
}

/// A listener that routes may attach to.
struct Listener {
    gateway: ObjectKey,
    name: String,
    protocol: Protocol,
    port: u16,
    hostname: Option<String>,
    from: From,
    /// With `from: Selector`.
    selector: Option<LabelSelector>,
    /// A `TLS` listener in `Terminate` mode: its certificates.
    terminate: Option<std::sync::Arc<portico_model::sni::Termination>>,
    /// The route kinds it takes: its protocol's, narrowed by
    /// `allowedRoutes.kinds`.
    kinds: Vec<&'static str>,
    /// False when its certificates did not load: routes still attach
    /// (and count in `attachedRoutes`, as the spec asks) but nothing is
    /// served on it.
    programmed: bool,
}

/// Adds what the Gateway API objects in `store` declare to `out`.
pub fn add_gateway_api(
    store: &Store,
    settings: &super::Settings,
    backends: &mut Backends<'_>,
    out: &mut SnapshotSpec,
) {
    let mut status = GatewayApiStatus::default();
    let classes: Vec<&str> = store
        .gateway_classes
        .iter()
        .filter(|(_, c)| c.object.spec.controller_name == CONTROLLER_NAME)
        .map(|(k, _)| {
            status.classes.insert(
                k.name.clone(),
                Condition::ok("Accepted", "Accepted", "handled by Portico"),
            );
            k.name.as_str()
        })
        .collect();
    let mut listeners: Vec<Listener> = Vec::new();
    for (key, gw) in super::oldest_first(&store.gateways, |g| &g.metadata) {
        if !classes.contains(&gw.object.spec.gateway_class_name.as_str()) {
            continue;
        }
        let here = Store::locate(&store.gateways, "Gateway", key);
        let state = add_gateway(key, &gw.object, &here, store, settings, out, &mut listeners);
        status.gateways.insert(key.clone(), state);
    }
    let http = Flavor::http();
    for (key, route) in super::oldest_first(&store.http_routes, |r| &r.metadata) {
        let here = Store::locate(&store.http_routes, "HTTPRoute", key);
        add_http_route(
            &http,
            key,
            &route.object,
            &here,
            store,
            settings,
            backends,
            &listeners,
            &mut status,
            out,
        );
    }
    // A GRPCRoute is an HTTPRoute whose matches are gRPC paths
    // (`/service/method`) and whose backends speak HTTP/2 (h2c).
    let grpc = Flavor::grpc();
    for (key, route) in super::oldest_first(&store.grpc_routes, |r| &r.metadata) {
        let here = Store::locate(&store.grpc_routes, "GRPCRoute", key);
        match grpc_as_http(&route.object) {
            Ok(as_http) => add_http_route(
                &grpc,
                key,
                &as_http,
                &here,
                store,
                settings,
                backends,
                &listeners,
                &mut status,
                out,
            ),
            Err(e) => out
                .problems
                .push(Problem::error(&here, format!("{e}; route not served"))),
        }
    }
    // (protocol, port) → (route, Gateway, listener) holding it.
    let mut taken: BTreeMap<(Protocol, u16), (ObjectKey, ObjectKey, String)> = BTreeMap::new();
    // (Gateway, listener, route) of each TCP, UDP and TLS route attached:
    // the listeners' attachedRoutes.
    let mut l4_attached: BTreeSet<(ObjectKey, String, ObjectKey)> = BTreeSet::new();
    // TCPRoute and UDPRoute have the same shape in different types.
    macro_rules! l4_routes {
        ($map:expr, $kind:literal, $protocol:expr, $states:expr, |$spec:ident| $hostnames:expr) => {
            for (key, route) in super::oldest_first(&$map, |r| &r.metadata) {
                let here = Store::locate(&$map, $kind, key);
                let $spec = &route.object.spec;
                let spec = $spec;
                let l4 = L4Route {
                    protocol: $protocol,
                    hostnames: $hostnames,
                    parents: spec
                        .parent_refs
                        .iter()
                        .flatten()
                        .map(|p| ParentRef {
                            group: p.group.clone(),
                            kind: p.kind.clone(),
                            namespace: p.namespace.clone(),
                            name: p.name.clone(),
                            section_name: p.section_name.clone(),
                            port: p.port,
                        })
                        .collect(),
                    backends: spec
                        .rules
                        .iter()
                        .flat_map(|r| r.backend_refs.iter())
                        .map(|b| BackendRef {
                            group: b.group.clone(),
                            kind: b.kind.clone(),
                            name: b.name.clone(),
                            namespace: b.namespace.clone(),
                            port: b.port,
                            weight: b.weight,
                        })
                        .collect(),
                };
                let node = &settings.node_addresses;
                let st = add_l4_route(
                    key,
                    &l4,
                    &here,
                    store,
                    backends,
                    &listeners,
                    &status,
                    &mut taken,
                    &mut l4_attached,
                    node,
                    out,
                );
                if !st.is_empty() {
                    $states.insert(key.clone(), st);
                }
            }
        };
    }
    let (mut tcp_states, mut udp_states, mut tls_states) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    l4_routes!(
        store.tcp_routes,
        "TCPRoute",
        Protocol::Tcp,
        tcp_states,
        |s| Vec::new()
    );
    l4_routes!(
        store.udp_routes,
        "UDPRoute",
        Protocol::Udp,
        udp_states,
        |s| Vec::new()
    );
    // After TCP: a port both want stays with the TCP listener.
    l4_routes!(
        store.tls_routes,
        "TLSRoute",
        Protocol::Tls,
        tls_states,
        |s| s.hostnames.clone()
    );
    status.tcp_routes = tcp_states;
    status.udp_routes = udp_states;
    status.tls_routes = tls_states;
    // attachedRoutes of the TCP, UDP and TLS listeners.
    for (gateway, listener, _) in &l4_attached {
        status
            .gateways
            .entry(gateway.clone())
            .or_default()
            .listeners
            .entry(listener.clone())
            .or_default()
            .attached_routes += 1;
    }

    out.gateway_api = status;
}

/// What tells an HTTPRoute from a GRPCRoute once translated alike.
struct Flavor {
    kind: &'static str,
    /// The routes' policy: gRPC backends speak h2c.
    policy: Option<std::sync::Arc<portico_model::policy::CheckedPolicy>>,
}

impl Flavor {
    fn http() -> Self {
        Flavor {
            kind: "HTTPRoute",
            policy: None,
        }
    }

    fn grpc() -> Self {
        let policy = portico_model::policy::RoutePolicy {
            backend_protocol: Some(portico_model::policy::BackendProtocol::Grpc),
            ..Default::default()
        };
        Flavor {
            kind: "GRPCRoute",
            policy: Some(std::sync::Arc::new(portico_model::policy::CheckedPolicy {
                policy,
                allow: Vec::new(),
                limit_exempt: Vec::new(),
            })),
        }
    }

    fn parents<'a>(
        &self,
        status: &'a mut GatewayApiStatus,
    ) -> &'a mut BTreeMap<ObjectKey, BTreeMap<String, ParentState>> {
        if self.kind == "GRPCRoute" {
            &mut status.grpc_routes
        } else {
            &mut status.routes
        }
    }
}

/// A GRPCRoute as the HTTPRoute that routes its calls: each method match
/// becomes a path match (`/service/method` Exact, `/service` PathPrefix,
/// or a RegularExpression), the rest (headers, filters, backends) has the
/// same shape and is read as it is.
fn grpc_as_http(route: &portico_gateway_api::GRPCRoute) -> Result<HTTPRoute, String> {
    let mut spec = serde_json::to_value(&route.spec).map_err(|e| e.to_string())?;
    for (ri, rule) in spec["rules"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (mi, m) in rule["matches"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(o) = m.as_object_mut() else { continue };
            let Some(method) = o.remove("method") else {
                continue;
            };
            let what = format!("spec.rules[{ri}].matches[{mi}].method");
            let service = method["service"].as_str();
            let name = method["method"].as_str();
            let path = match (method["type"].as_str().unwrap_or("Exact"), service, name) {
                (_, None, None) => {
                    return Err(format!("{what}: needs a service or a method"));
                }
                ("Exact", Some(s), Some(n)) => {
                    serde_json::json!({"type": "Exact", "value": format!("/{s}/{n}")})
                }
                ("Exact", Some(s), None) => {
                    serde_json::json!({"type": "PathPrefix", "value": format!("/{s}")})
                }
                ("Exact", None, Some(n)) => serde_json::json!({
                    "type": "RegularExpression",
                    "value": format!("/[^/]+/{}", escape_regex(n)),
                }),
                ("RegularExpression", s, n) => serde_json::json!({
                    "type": "RegularExpression",
                    "value": format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), n.unwrap_or("[^/]+")),
                }),
                (other, _, _) => {
                    return Err(format!(
                        "{what}.type {other:?} is not Exact or RegularExpression"
                    ))
                }
            };
            o.insert("path".into(), path);
        }
    }
    let spec = serde_json::from_value(spec).map_err(|e| format!("cannot read as routes: {e}"))?;
    Ok(HTTPRoute {
        metadata: route.metadata.clone(),
        spec,
        status: None,
    })
}

/// `s` with every character that is not a letter, digit or `_` escaped.
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A parentRef of any route kind.
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
}

/// A backendRef of a TCPRoute or UDPRoute.
struct BackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i32>,
    weight: Option<i32>,
}

struct L4Route {
    protocol: Protocol,
    /// A TLSRoute's (SNI names); empty for TCP and UDP.
    hostnames: Vec<String>,
    parents: Vec<ParentRef>,
    backends: Vec<BackendRef>,
}

/// A TCPRoute or UDPRoute: its listener becomes an L4 listener on the
/// node's addresses, forwarding to the first valid backend. Any number
/// of routes attach to a listener (all Accepted, as the spec asks); the
/// oldest gets its connections. A TLSRoute: its hostnames, narrowed by
/// each listener's, go into the passthrough listener's SNI table (any
/// number of routes per listener).
#[allow(clippy::too_many_arguments)]
fn add_l4_route(
    key: &ObjectKey,
    route: &L4Route,
    here: &str,
    store: &Store,
    backends: &mut Backends<'_>,
    listeners: &[Listener],
    status: &GatewayApiStatus,
    taken: &mut BTreeMap<(Protocol, u16), (ObjectKey, ObjectKey, String)>,
    attached: &mut BTreeSet<(ObjectKey, String, ObjectKey)>,
    node: &[std::net::IpAddr],
    out: &mut SnapshotSpec,
) -> BTreeMap<String, ParentState> {
    let kind = route.protocol.route_kinds()[0];
    let mut states = BTreeMap::new();
    if route.protocol == Protocol::Tls {
        if route.hostnames.is_empty() {
            out.problems.push(Problem::error(
                here,
                "spec.hostnames: a TLSRoute needs at least one hostname (the SNI it takes); not served",
            ));
            return states;
        }
        for (hi, h) in route.hostnames.iter().enumerate() {
            if let Err(e) = validate_hostname(h) {
                out.problems.push(Problem::error(
                    here,
                    format!("spec.hostnames[{hi}] {h:?}: {e}; not served"),
                ));
                return states;
            }
        }
    }
    // The backend: the first that resolves, with a weight; with several,
    // the split by weight (a share that does not resolve is refused).
    let mut resolved: Option<BackendKey> = None;
    let mut split: Vec<WeightedBackend> = Vec::new();
    let mut refs_problem: Option<(&'static str, String)> = None;
    for (bi, b) in route.backends.iter().enumerate() {
        let bw = format!("spec.rules[].backendRefs[{bi}]");
        if b.weight == Some(0) {
            continue;
        }
        let group = b.group.as_deref().unwrap_or("");
        let bkind = b.kind.as_deref().unwrap_or("Service");
        let ns = b.namespace.clone().unwrap_or_else(|| key.namespace.clone());
        let target = ObjectKey::new(ns.clone(), b.name.clone());
        let r = if !(group.is_empty() || group == "core") || bkind != "Service" {
            Err((
                "InvalidKind",
                format!("{bw}: {group}/{bkind} is not a Service"),
            ))
        } else if ns != key.namespace
            && !granted(store, &key.namespace, kind, "", "Service", &target)
        {
            Err((
                "RefNotPermitted",
                format!("{bw}: Service {target} is in another namespace and no ReferenceGrant there allows {kind}s of {} to refer to it", key.namespace),
            ))
        } else if let Some(port) = b.port {
            match backends.resolve(&ns, &b.name, &PortRef::Number(port)) {
                (bk, None) => Ok(bk),
                (_, Some(why)) => Err(("BackendNotFound", format!("{bw}: {why}"))),
            }
        } else {
            Err((
                "BackendNotFound",
                format!("{bw}: a Service backendRef needs a port"),
            ))
        };
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        match r {
            Ok(bk) => {
                resolved.get_or_insert(bk.clone());
                split.push(WeightedBackend {
                    backend: Some(bk),
                    weight,
                    ..Default::default()
                });
            }
            Err(e) => {
                out.problems.push(Problem::error(here, e.1.clone()));
                refs_problem.get_or_insert(e);
                split.push(WeightedBackend {
                    backend: None,
                    weight,
                    ..Default::default()
                });
            }
        }
    }
    if split.len() < 2 {
        split.clear();
    }
    for (pi, parent) in route.parents.iter().enumerate() {
        if parent
            .group
            .as_deref()
            .is_some_and(|g| g != portico_gateway_api::GROUP)
            || parent.kind.as_deref().is_some_and(|k| k != "Gateway")
        {
            continue;
        }
        let gw_key = ObjectKey::new(
            parent
                .namespace
                .clone()
                .unwrap_or_else(|| key.namespace.clone()),
            parent.name.clone(),
        );
        if !status.gateways.contains_key(&gw_key) {
            continue;
        }
        let mut label = gw_key.to_string();
        if let Some(s) = &parent.section_name {
            label = format!("{label}/{s}");
        }
        if let Some(p) = parent.port {
            label = format!("{label}:{p}");
        }
        let state = states.entry(label).or_insert_with(|| {
            ParentState::new(gw_key.clone(), parent.section_name.clone(), parent.port)
        });
        let what = format!("spec.parentRefs[{pi}] (Gateway {gw_key})");
        // The spec's order: no listener by sectionName/port is
        // NoMatchingParent; listeners that do not take the route (protocol,
        // kind, namespace) are NotAllowedByListeners.
        let candidates: Vec<&Listener> = listeners
            .iter()
            .filter(|l| {
                l.gateway == gw_key
                    && parent.section_name.as_deref().is_none_or(|s| s == l.name)
                    && parent.port.is_none_or(|p| i32::from(l.port) == p)
            })
            .collect();
        if candidates.is_empty() {
            let msg = "no listener of the Gateway matches sectionName/port, or none is served";
            out.problems
                .push(Problem::error(here, format!("{what}: {msg}; not attached")));
            state.accepted = Condition::bad("Accepted", "NoMatchingParent", msg);
            continue;
        }
        let mut fitting = candidates.into_iter().filter(|l| {
            l.protocol == route.protocol
                && l.kinds.contains(&kind)
                && admits_namespace(l, &key.namespace, store)
        });
        let Some(l) = fitting.next() else {
            let msg = format!(
                "no served {} listener of the Gateway matches and admits routes of this namespace",
                kind.trim_end_matches("Route")
            );
            out.problems
                .push(Problem::error(here, format!("{what}: {msg}; not attached")));
            state.accepted = Condition::bad("Accepted", "NotAllowedByListeners", &msg);
            continue;
        };
        if route.protocol == Protocol::Tls {
            if let Some((reason, msg)) = &refs_problem {
                state.resolved_refs = Condition::bad("ResolvedRefs", reason, msg);
            }
            let mut hostname_met = false;
            let mut refused: Option<String> = None;
            let mut attached_somewhere = false;
            for l in std::iter::once(l).chain(fitting) {
                let names: Vec<String> = intersect(l.hostname.as_deref(), &route.hostnames)
                    .into_iter()
                    .flatten()
                    .collect();
                if names.is_empty() {
                    continue;
                }
                hostname_met = true;
                if !l.programmed {
                    // Attached, counted, not served (its certificate).
                    attached.insert((l.gateway.clone(), l.name.clone(), key.clone()));
                    attached_somewhere = true;
                    continue;
                }
                let target = (resolved.as_ref(), &split[..]);
                let addrs = listener_addresses(node, &l.gateway, out);
                match attach_sni(key, l, &names, target, &what, here, &addrs, out) {
                    Ok(()) => {
                        attached_somewhere = true;
                        attached.insert((l.gateway.clone(), l.name.clone(), key.clone()));
                    }
                    Err(why) => refused = Some(why),
                }
            }
            if let (false, Some(why)) = (attached_somewhere, refused) {
                state.accepted = Condition::bad("Accepted", "NotAllowedByListeners", &why);
            }
            if !hostname_met {
                let msg = "no hostname of the route falls under the listener's hostname";
                out.problems
                    .push(Problem::error(here, format!("{what}: {msg}; not attached")));
                state.accepted = Condition::bad("Accepted", "NoMatchingListenerHostname", msg);
            }
            continue;
        }
        if let Some((reason, msg)) = &refs_problem {
            state.resolved_refs = Condition::bad("ResolvedRefs", reason, msg);
        }
        let protocol = match route.protocol {
            Protocol::Udp => L4Protocol::Udp,
            _ => L4Protocol::Tcp,
        };
        // Without a sectionName or port the route attaches to every
        // listener that takes it, as the spec says.
        for l in std::iter::once(l).chain(fitting) {
            attached.insert((l.gateway.clone(), l.name.clone(), key.clone()));
            if !l.programmed {
                continue;
            }
            if let Some((first, _, _)) = taken.get(&(route.protocol, l.port)) {
                if first != key {
                    out.problems.push(Problem::warning(
                        here,
                        format!(
                            "{what}: listener {} already carries {kind} {first}, which is older; attached, but its connections go to {first}",
                            l.name
                        ),
                    ));
                    continue;
                }
            }
            let Some(backend) = resolved.clone() else {
                continue;
            };
            let mut placed = false;
            for ip in &listener_addresses(node, &l.gateway, out) {
                let lk = L4ListenerKey {
                    protocol,
                    addr: std::net::SocketAddr::new(*ip, l.port),
                };
                let passthrough = L4ListenerKey {
                    protocol: L4Protocol::Tls,
                    addr: lk.addr,
                };
                if protocol == L4Protocol::Tcp && out.sni.contains_key(&passthrough) {
                    out.problems.push(Problem::error(
                        here,
                        format!(
                            "{what}: {} is a TLS passthrough listener; not attached there",
                            lk.addr
                        ),
                    ));
                    continue;
                }
                match out.l4.get(&lk) {
                    Some(other) if *other != backend => {
                        out.problems.push(Problem::error(
                            here,
                            format!("{what}: {lk} already forwards to {other} (a Service's port); not attached there"),
                        ));
                    }
                    _ => {
                        out.l4.insert(lk, backend.clone());
                        if !split.is_empty() {
                            out.l4_split.insert(lk, split.clone());
                        }
                        placed = true;
                    }
                }
            }
            if placed {
                taken.insert(
                    (route.protocol, l.port),
                    (key.clone(), l.gateway.clone(), l.name.clone()),
                );
            }
        }
    }
    states
}

/// Where a Gateway's TCP, UDP and TLS listeners listen: the node's
/// addresses and the Gateway's own from announce pools.
fn listener_addresses(
    node: &[std::net::IpAddr],
    gateway: &ObjectKey,
    out: &SnapshotSpec,
) -> Vec<std::net::IpAddr> {
    let mut addrs = node.to_vec();
    addrs.extend(
        out.load_balancer_addresses
            .iter()
            .filter(|(ip, owner)| {
                matches!(owner, portico_model::snapshot::AddressOwner::Gateway(k) if k == gateway)
                    && !node.contains(ip)
            })
            .map(|(ip, _)| *ip),
    );
    addrs
}

/// Puts a TLSRoute's `names` (already narrowed by the listener's
/// hostname) into the SNI table of listener `l` on each of `node`.
/// `backend` is `None` when the route's backends do not resolve: its
/// names are still taken, and their connections refused, as the spec
/// asks. `Err` says why, when the route is attached nowhere.
#[allow(clippy::too_many_arguments)]
fn attach_sni(
    key: &ObjectKey,
    l: &Listener,
    names: &[String],
    (backend, split): (Option<&BackendKey>, &[WeightedBackend]),
    what: &str,
    here: &str,
    node: &[std::net::IpAddr],
    out: &mut SnapshotSpec,
) -> Result<(), String> {
    let mut attached = false;
    let mut why = String::from("no node address to listen on");
    for ip in node {
        let addr = std::net::SocketAddr::new(*ip, l.port);
        let tcp = L4ListenerKey {
            protocol: L4Protocol::Tcp,
            addr,
        };
        if let Some(other) = out.l4.get(&tcp) {
            why = format!("{addr} already forwards TCP to {other}");
            out.problems.push(Problem::error(
                here,
                format!("{what}: {why}; not attached there"),
            ));
            continue;
        }
        let lk = L4ListenerKey {
            protocol: L4Protocol::Tls,
            addr,
        };
        let table = out.sni.entry(lk).or_default();
        // Passthrough and Terminate listeners may share a port: each
        // route's server names keep their own listener's mode (`certs`).
        if table.terminate.is_none() {
            table.terminate = l.terminate.clone();
        }
        for name in names {
            let taken = SniRoute {
                hostname: name.clone(),
                backend: backend.cloned(),
                split: split.to_vec(),
                route: key.to_string(),
                certs: l.terminate.clone(),
            };
            if table.insert(taken) {
                attached = true;
            } else if let Some(holder) = table.holder(name).filter(|h| h.route != key.to_string()) {
                // Said once, not once per node address.
                why = format!(
                    "hostname {name} on port {} is already routed by TLSRoute {} (older)",
                    l.port, holder.route
                );
                let msg = format!("{what}: {why}; not used here");
                if !out.problems.iter().any(|p| p.message == msg) {
                    out.problems.push(Problem::warning(here, msg));
                }
            } else {
                attached = true;
            }
        }
    }
    if attached {
        Ok(())
    } else {
        Err(why)
    }
}

/// Settles a Gateway's listeners; the usable ones are pushed to `all`.
fn add_gateway(
    key: &ObjectKey,
    gw: &Gateway,
    here: &str,
    store: &Store,
    settings: &super::Settings,
    out: &mut SnapshotSpec,
    all: &mut Vec<Listener>,
) -> GatewayState {
    let mut state = GatewayState::default();
    if let Some(p) = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    {
        let msg = format!(
            "spec.infrastructure.parametersRef: {}/{} {} is not parameters Portico takes (it takes none); the Gateway is not accepted",
            p.group, p.kind, p.name
        );
        out.problems.push(Problem::error(here, msg.clone()));
        state.invalid_parameters = Some(msg);
    }
    let mut seen: BTreeMap<(String, u16, Option<String>), String> = BTreeMap::new();
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        let what = format!("spec.listeners[{i}] ({})", l.name);
        let mut ls = ListenerState::default();
        let listener = check_listener(key, l, &what, here, store, settings, out, &mut ls);
        if let Some(listener) = listener {
            let id = (l.protocol.clone(), listener.port, listener.hostname.clone());
            if let Some(first) = seen.get(&id) {
                let msg = format!(
                    "{what}: same protocol, port and hostname as listener {first}; not served"
                );
                out.problems.push(Problem::error(here, msg.clone()));
                // Conflicted is a negative-polarity condition: True says
                // there is a conflict.
                ls.conflicted = Some(Condition::ok("Conflicted", "HostnameConflict", &msg));
                ls.programmed = Condition::bad("Programmed", "Invalid", &msg);
            } else if state.invalid_parameters.is_some() {
                ls.programmed =
                    Condition::bad("Programmed", "Invalid", "the Gateway is not accepted");
            } else {
                seen.insert(id, l.name.clone());
                all.push(listener);
            }
        }
        state.listeners.insert(l.name.clone(), ls);
    }
    requested_addresses(key, gw, here, settings, out, &mut state);
    // A Gateway that is not accepted takes no address of its own.
    if state.invalid_parameters.is_some() || state.addresses_unsupported {
        let owner = portico_model::snapshot::AddressOwner::Gateway(key.clone());
        out.load_balancer_addresses.retain(|_, o| *o != owner);
        state.allocated_addresses.clear();
    }
    state
}

/// `spec.addresses`: Portico serves a Gateway on its own listeners, at
/// the addresses it publishes (`kubernetes.publish_addresses`, else the
/// node's), and at addresses of announce pools open to Gateways, which
/// become the Gateway's own (announced, and its L4 listeners bind there).
/// An `IPAddress` of either kind is assigned and becomes the Gateway's
/// status address; another, or a pool address a Service or an older
/// Gateway has, is not assigned (Programmed=False, AddressNotUsable);
/// other types and values that are not IPs are unsupported
/// (Accepted=False, UnsupportedAddress).
fn requested_addresses(
    key: &ObjectKey,
    gw: &Gateway,
    here: &str,
    settings: &super::Settings,
    out: &mut SnapshotSpec,
    state: &mut GatewayState,
) {
    let served = if settings.gateway_addresses.is_empty() {
        &settings.node_addresses
    } else {
        &settings.gateway_addresses
    };
    let asks = gw
        .spec
        .addresses
        .iter()
        .flatten()
        .any(|a| a.value.as_deref().is_some_and(|v| !v.is_empty()));
    if !asks && settings.gateway_load_balancer {
        allocated_addresses(key, gw, here, served, settings, out, state);
    }
    for (i, a) in gw.spec.addresses.iter().flatten().enumerate() {
        let what = format!("spec.addresses[{i}]");
        let kind = a.r#type.as_deref().unwrap_or("IPAddress");
        if kind != "IPAddress" {
            out.problems.push(Problem::error(
                here,
                format!("{what}: type {kind} is not supported (only IPAddress); the Gateway is not accepted"),
            ));
            state.addresses_unsupported = true;
            continue;
        }
        // No value: any address of the type, which Portico's are.
        let Some(value) = a.value.as_deref() else {
            continue;
        };
        match value.parse::<std::net::IpAddr>() {
            Err(_) => {
                out.problems.push(Problem::error(
                    here,
                    format!("{what}: {value:?} is not an IP address; the Gateway is not accepted"),
                ));
                state.addresses_unsupported = true;
            }
            Ok(ip) if served.contains(&ip) => state.assigned_addresses.push(ip),
            Ok(ip) => match gateway_pool_of(settings, ip) {
                Some(pool) => {
                    let owner = portico_model::snapshot::AddressOwner::Gateway(key.clone());
                    match out.load_balancer_addresses.get(&ip) {
                        Some(other) if *other != owner => {
                            out.problems.push(Problem::error(
                                here,
                                format!("{what}: {ip} (announce pool {pool}) is already the address of {other}; not assigned"),
                            ));
                            state.unassigned_addresses.push(ip);
                        }
                        _ if state.assigned_addresses.contains(&ip) => {}
                        _ => {
                            out.load_balancer_addresses.insert(ip, owner);
                            state.assigned_addresses.push(ip);
                        }
                    }
                }
                None => {
                    let list: Vec<String> = served.iter().map(|a| a.to_string()).collect();
                    let pools: Vec<&str> = settings
                        .gateway_pools
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect();
                    out.problems.push(Problem::error(
                        here,
                        format!(
                            "{what}: {ip} is not an address Portico serves Gateways at ({}; kubernetes.publish_addresses, else node.addresses) nor in an announce pool open to Gateways ({}); not assigned",
                            list.join(", "),
                            if pools.is_empty() { "none: [[announce.pools]] with gateways = true".to_string() } else { pools.join(", ") }
                        ),
                    ));
                    state.unassigned_addresses.push(ip);
                }
            },
        }
    }
}

/// A Gateway that asks for no address, with a load-balancer plugin: the
/// IPs in its status inside an announce pool open to Gateways were given
/// it by the plugin (the leader wrote them), so they are the Gateway's,
/// announced like a LoadBalancer Service's. Only those: the status also
/// holds Portico's own addresses when nothing was allocated, and another
/// edge node's address must never be announced here.
fn allocated_addresses(
    key: &ObjectKey,
    gw: &Gateway,
    here: &str,
    served: &[std::net::IpAddr],
    settings: &super::Settings,
    out: &mut SnapshotSpec,
    state: &mut GatewayState,
) {
    let status = gw.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in status.into_iter().flatten() {
        let Ok(ip) = a.value.parse::<std::net::IpAddr>() else {
            continue;
        };
        if served.contains(&ip)
            || settings.node_addresses.contains(&ip)
            || settings.cluster_node_addresses.contains(&ip)
            || gateway_pool_of(settings, ip).is_none()
        {
            continue;
        }
        let owner = portico_model::snapshot::AddressOwner::Gateway(key.clone());
        match out.load_balancer_addresses.get(&ip) {
            Some(other) if *other != owner => out.problems.push(Problem::error(
                here,
                format!("status.addresses: {ip}, from the load-balancer plugin, is already the address of {other}; not served for this Gateway"),
            )),
            _ if state.allocated_addresses.contains(&ip) => {}
            _ => {
                out.load_balancer_addresses.insert(ip, owner);
                state.allocated_addresses.push(ip);
            }
        }
    }
}

/// The announce pool open to Gateways that `ip` is in (never for a
/// Node's address, which is that node's to answer for).
fn gateway_pool_of(settings: &super::Settings, ip: std::net::IpAddr) -> Option<&str> {
    if settings.cluster_node_addresses.contains(&ip) || settings.node_addresses.contains(&ip) {
        return None;
    }
    settings
        .gateway_pools
        .iter()
        .find(|(_, nets)| nets.iter().any(|n| n.contains(ip)))
        .map(|(name, _)| name.as_str())
}

#[allow(clippy::too_many_arguments)]
fn check_listener(
    gateway: &ObjectKey,
    l: &GatewayListeners,
    what: &str,
    here: &str,
    store: &Store,
    settings: &super::Settings,
    out: &mut SnapshotSpec,
    ls: &mut ListenerState,
) -> Option<Listener> {
    let mut refuse = |reason: &str, msg: String, out: &mut SnapshotSpec| {
        out.problems
            .push(Problem::error(here, format!("{what}: {msg}; not served")));
        ls.accepted = Condition::bad("Accepted", reason, &msg);
        ls.programmed = Condition::bad("Programmed", "Invalid", &msg);
        None
    };
    let port = u16::try_from(l.port).unwrap_or(0);
    let protocol = match l.protocol.as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "TLS" => Protocol::Tls,
        other => {
            return refuse(
                "UnsupportedProtocol",
                format!(
                    "protocol {other} is not supported yet (HTTP, HTTPS, TLS, TCP and UDP are)"
                ),
                out,
            )
        }
    };
    match protocol {
        Protocol::Http | Protocol::Https => {
            let (ports, setting) = if protocol == Protocol::Http {
                (&settings.http_ports, "listen.http")
            } else {
                (&settings.https_ports, "listen.https")
            };
            if !ports.contains(&port) {
                return refuse(
                    "PortUnavailable",
                    format!(
                        "port {} is not one of Portico's {} ports ({setting}: {:?})",
                        l.port, l.protocol, ports
                    ),
                    out,
                );
            }
        }
        Protocol::Tcp | Protocol::Udp | Protocol::Tls => {
            if port == 0 {
                return refuse(
                    "PortUnavailable",
                    format!("port {} is not a port", l.port),
                    out,
                );
            }
            if protocol != Protocol::Udp
                && (settings.http_ports.contains(&port) || settings.https_ports.contains(&port))
            {
                return refuse(
                    "PortUnavailable",
                    format!("port {port} is one of Portico's HTTP listener ports"),
                    out,
                );
            }
            if settings.node_addresses.is_empty() {
                return refuse(
                    "PortUnavailable",
                    "no node address to listen on (node.addresses)".into(),
                    out,
                );
            }
        }
    }
    if let Some(h) = l.hostname.as_deref() {
        if let Err(e) = validate_hostname(h) {
            return refuse("Invalid", format!("hostname {h:?}: {e}"), out);
        }
    }
    let from = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.clone())
        .unwrap_or(From::Same);
    let selector = if from == From::Selector {
        let given = l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.selector.as_ref());
        let Some(given) = given else {
            return refuse(
                "Invalid",
                "allowedRoutes.namespaces.from is Selector but there is no allowedRoutes.namespaces.selector".into(),
                out,
            );
        };
        let expressions: Vec<(String, String, Vec<String>)> = given
            .match_expressions
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.key.clone(),
                    e.operator.clone(),
                    e.values.clone().unwrap_or_default(),
                )
            })
            .collect();
        match LabelSelector::new(given.match_labels.clone().unwrap_or_default(), &expressions) {
            Ok(s) => Some(s),
            Err(e) => {
                return refuse(
                    "Invalid",
                    format!("allowedRoutes.namespaces.selector.{e}"),
                    out,
                )
            }
        }
    } else {
        None
    };
    let supported = protocol.route_kinds();
    let mut kinds: Vec<&'static str> = supported.to_vec();
    if let Some(listed) = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        let ours = |k: &portico_gateway_api::gateways::GatewayListenersAllowedRoutesKinds| {
            k.group
                .as_deref()
                .is_none_or(|g| g == portico_gateway_api::GROUP)
        };
        kinds.retain(|kind| listed.iter().any(|k| ours(k) && k.kind == *kind));
        let bad: Vec<&str> = listed
            .iter()
            .filter(|k| !ours(k) || !supported.contains(&k.kind.as_str()))
            .map(|k| k.kind.as_str())
            .collect();
        if !bad.is_empty() {
            let msg = format!(
                "allowedRoutes.kinds {bad:?}: a {} listener takes {} only",
                l.protocol,
                supported.join(" and ")
            );
            out.problems
                .push(Problem::warning(here, format!("{what}: {msg}")));
            ls.resolved_refs = Condition::bad("ResolvedRefs", "InvalidRouteKinds", &msg);
        }
    }
    ls.supported_kinds = kinds.iter().map(|k| k.to_string()).collect();
    // The spec's default TLS mode is Terminate.
    let terminate_tls = protocol == Protocol::Tls
        && l.tls.as_ref().and_then(|t| t.mode.as_ref())
            != Some(&GatewayListenersTlsMode::Passthrough);
    let mut terminate = None;
    let mut programmed = true;
    if protocol == Protocol::Https || terminate_tls {
        let tls = l.tls.as_ref();
        if tls
            .and_then(|t| t.mode.as_ref())
            .is_some_and(|m| *m == GatewayListenersTlsMode::Passthrough)
        {
            return refuse(
                "UnsupportedProtocol",
                "tls.mode Passthrough is not supported on HTTPS listeners".into(),
                out,
            );
        }
        let refs = tls
            .and_then(|t| t.certificate_refs.as_deref())
            .unwrap_or(&[]);
        if refs.is_empty() {
            return refuse(
                "Invalid",
                format!(
                    "a{} listener needs tls.certificateRefs",
                    if terminate_tls {
                        " TLS Terminate"
                    } else {
                        "n HTTPS"
                    }
                ),
                out,
            );
        }
        // A TLS listener's certificates are its own, not the HTTPS
        // listeners': loaded into a store of their own, then put back.
        let https_certs = terminate_tls.then(|| std::mem::take(&mut out.certs));
        let mut loaded = false;
        for (ci, r) in refs.iter().enumerate() {
            let ns = r
                .namespace
                .clone()
                .unwrap_or_else(|| gateway.namespace.clone());
            let secret_key = ObjectKey::new(ns.clone(), r.name.clone());
            let rw = format!("{what}.tls.certificateRefs[{ci}]");
            let (group, kind) = (
                r.group.as_deref().unwrap_or(""),
                r.kind.as_deref().unwrap_or("Secret"),
            );
            let problem = if !(group.is_empty() || group == "core") || kind != "Secret" {
                Some((
                    "InvalidCertificateRef",
                    format!("{rw}: {group}/{kind} is not a Secret"),
                ))
            } else if ns != gateway.namespace
                && !granted(
                    store,
                    &gateway.namespace,
                    "Gateway",
                    "",
                    "Secret",
                    &secret_key,
                )
            {
                Some((
                    "RefNotPermitted",
                    format!(
                        "{rw}: Secret {secret_key} is in another namespace and no ReferenceGrant there allows Gateways of {} to refer to it",
                        gateway.namespace
                    ),
                ))
            } else {
                out.referenced_secrets.insert(secret_key.clone());
                match store.secrets.get(&secret_key) {
                    None => Some((
                        "InvalidCertificateRef",
                        format!("{rw}: TLS Secret {secret_key} not found"),
                    )),
                    Some(s) => {
                        match super::ingress::secret_certificate(&s.object, &secret_key.to_string())
                        {
                            Err(e) => Some((
                                "InvalidCertificateRef",
                                format!("{rw}: TLS Secret {secret_key}: {e}"),
                            )),
                            Ok(cert) => {
                                let kept = match l.hostname.as_deref() {
                                    Some(h) => out.certs.insert(h, cert),
                                    None => out.certs.set_any_host(cert),
                                };
                                if !kept {
                                    out.problems.push(Problem::warning(
                                        here,
                                        format!(
                                            "{rw}: {} already has a certificate (an older Ingress or Gateway); this one is not used",
                                            l.hostname.as_deref().unwrap_or("a listener without hostname")
                                        ),
                                    ));
                                }
                                loaded = true;
                                None
                            }
                        }
                    }
                }
            };
            if let Some((reason, msg)) = problem {
                out.problems.push(
                    Problem::error(here, msg.clone())
                        .with_reason(super::ingress::TLS_SECRET_INVALID),
                );
                ls.resolved_refs = Condition::bad("ResolvedRefs", reason, &msg);
                if let Some(h) = l.hostname.as_deref() {
                    out.certs.note_fallback(h, msg);
                }
            }
        }
        if let Some(https_certs) = https_certs {
            let own = std::mem::replace(&mut out.certs, https_certs);
            match portico_model::sni::Termination::new(own) {
                Ok(t) => terminate = Some(std::sync::Arc::new(t)),
                Err(e) => return refuse("Invalid", format!("TLS configuration: {e}"), out),
            }
        }
        if !loaded {
            ls.programmed = Condition::bad(
                "Programmed",
                "Invalid",
                "no certificate of tls.certificateRefs could be loaded",
            );
            programmed = false;
        }
    }
    Some(Listener {
        gateway: gateway.clone(),
        name: l.name.clone(),
        protocol,
        port,
        hostname: l.hostname.clone().map(|h| h.to_ascii_lowercase()),
        from,
        selector,
        terminate,
        kinds,
        programmed,
    })
}

/// `allowedRoutes.namespaces.from`: Same, All, or the namespaces whose
/// labels the selector matches. A namespace without a Namespace object
/// (a manifests folder need not have one) has only the label the API
/// server gives every namespace, `kubernetes.io/metadata.name`.
fn admits_namespace(l: &Listener, namespace: &str, store: &Store) -> bool {
    match (&l.from, &l.selector) {
        (From::All, _) => true,
        (From::Same, _) => l.gateway.namespace == namespace,
        (From::Selector, Some(selector)) => {
            let mut labels = store
                .namespaces
                .get(&ObjectKey::new("", namespace))
                .and_then(|n| n.object.metadata.labels.clone())
                .unwrap_or_default();
            labels
                .entry("kubernetes.io/metadata.name".into())
                .or_insert_with(|| namespace.to_string());
            selector.matches(&labels)
        }
        (From::Selector, None) => false,
    }
}

/// Whether a ReferenceGrant in `to.namespace` lets objects of `kind`
/// (group `gateway.networking.k8s.io`) in `from_ns` refer to the object
/// `to` of group `to_group` and kind `to_kind`.
fn granted(
    store: &Store,
    from_ns: &str,
    kind: &str,
    to_group: &str,
    to_kind: &str,
    to: &ObjectKey,
) -> bool {
    store
        .reference_grants
        .iter()
        .filter(|(k, _)| k.namespace == to.namespace)
        .any(|(_, g)| {
            let spec = &g.object.spec;
            spec.from.iter().any(|f| {
                f.group == portico_gateway_api::GROUP && f.kind == kind && f.namespace == from_ns
            }) && spec.to.iter().any(|t| {
                (t.group == to_group || (to_group.is_empty() && t.group == "core"))
                    && t.kind == to_kind
                    && t.name.as_deref().is_none_or(|n| n == to.name)
            })
        })
}

/// The hostnames a route serves on a listener: the spec's intersection.
/// `Some(vec![])` when they do not intersect; `None` entries mean any host.
fn intersect(listener: Option<&str>, route: &[String]) -> Vec<Option<String>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => vec![None],
        (None, false) => route.into_iter().map(Some).collect(),
        (Some(l), true) => vec![Some(l.to_string())],
        (Some(l), false) => {
            let mut out = Vec::new();
            for r in route {
                if let Some(h) = narrower(l, &r) {
                    if !out.contains(&Some(h.clone())) {
                        out.push(Some(h));
                    }
                }
            }
            out
        }
    }
}

/// The narrower of two hostnames when one covers the other.
fn narrower(a: &str, b: &str) -> Option<String> {
    if a == b {
        return Some(a.to_string());
    }
    // `*.x` covers any name ending in `.x` (one label or more).
    let covers = |wild: &str, name: &str| {
        wild.strip_prefix("*.").is_some_and(|suffix| {
            name.len() > suffix.len() + 1 && name.ends_with(&format!(".{suffix}"))
        })
    };
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

#[allow(clippy::too_many_arguments)]
fn add_http_route(
    flavor: &Flavor,
    key: &ObjectKey,
    route: &HTTPRoute,
    here: &str,
    store: &Store,
    settings: &super::Settings,
    backends: &mut Backends<'_>,
    listeners: &[Listener],
    status: &mut GatewayApiStatus,
    out: &mut SnapshotSpec,
) {
    let spec = &route.spec;
    let hostnames = spec.hostnames.as_deref().unwrap_or(&[]);
    for h in hostnames {
        if let Err(e) = validate_hostname(h) {
            out.problems.push(Problem::error(
                here,
                format!("spec.hostnames {h:?}: {e}; route not served"),
            ));
            return;
        }
    }
    // Attachments: (listener, hostnames) for every parentRef that is ours.
    let mut attached: Vec<(&Listener, Vec<Option<String>>)> = Vec::new();
    for (pi, parent) in spec.parent_refs.iter().flatten().enumerate() {
        let Some(gw_key) = our_gateway(key, parent, status) else {
            continue;
        };
        let candidates: Vec<&Listener> = listeners
            .iter()
            .filter(|l| {
                l.gateway == gw_key
                    && parent.section_name.as_deref().is_none_or(|s| s == l.name)
                    && parent.port.is_none_or(|p| i32::from(l.port) == p)
            })
            .collect();
        let state = flavor
            .parents(status)
            .entry(key.clone())
            .or_default()
            .entry(parent_label(&gw_key, parent))
            .or_insert_with(|| {
                ParentState::new(gw_key.clone(), parent.section_name.clone(), parent.port)
            });
        let what = format!("spec.parentRefs[{pi}] (Gateway {gw_key})");
        if candidates.is_empty() {
            let msg = "no listener of the Gateway matches sectionName/port, or none is served";
            out.problems
                .push(Problem::error(here, format!("{what}: {msg}; not attached")));
            state.accepted = Condition::bad("Accepted", "NoMatchingParent", msg);
            continue;
        }
        let allowed: Vec<&Listener> = candidates
            .into_iter()
            .filter(|l| {
                matches!(l.protocol, Protocol::Http | Protocol::Https)
                    && l.kinds.contains(&flavor.kind)
                    && admits_namespace(l, &key.namespace, store)
            })
            .collect();
        if allowed.is_empty() {
            let msg = "no listener there takes routes of this kind and namespace (protocol, allowedRoutes)";
            out.problems
                .push(Problem::error(here, format!("{what}: {msg}; not attached")));
            state.accepted = Condition::bad("Accepted", "NotAllowedByListeners", msg);
            continue;
        }
        let mut any = false;
        for l in allowed {
            let hosts = intersect(l.hostname.as_deref(), hostnames);
            if !hosts.is_empty() {
                any = true;
                status
                    .gateways
                    .entry(l.gateway.clone())
                    .or_default()
                    .listeners
                    .entry(l.name.clone())
                    .or_default()
                    .attached_routes += 1;
                if l.programmed {
                    attached.push((l, hosts));
                }
            }
        }
        let state = flavor
            .parents(status)
            .entry(key.clone())
            .or_default()
            .entry(parent_label(&gw_key, parent))
            .or_insert_with(|| {
                ParentState::new(gw_key.clone(), parent.section_name.clone(), parent.port)
            });
        if any {
            state.accepted = Condition::ok("Accepted", "Accepted", "attached");
        } else {
            let msg = "no hostname of the route intersects the listeners' hostnames";
            out.problems
                .push(Problem::error(here, format!("{what}: {msg}; not attached")));
            state.accepted = Condition::bad("Accepted", "NoMatchingListenerHostname", msg);
        }
    }
    // A route attached nowhere still has its references checked, for the
    // ResolvedRefs of its parents; one that is not ours has no status.
    if attached.is_empty() && flavor.parents(status).get(key).is_none() {
        return;
    }
    let annotations: std::sync::Arc<Annotations> = std::sync::Arc::new(
        route
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| !k.ends_with("last-applied-configuration"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
            .into(),
    );
    let scoped_plugins = settings
        .scoped
        .for_ingress(route.metadata.annotations.as_ref());
    let mut resolved_refs: Option<(String, String)> = None;
    for (ri, rule) in spec.rules.iter().flatten().enumerate() {
        let what = format!("spec.rules[{ri}]");
        let built = build_rule(
            (key, flavor.kind),
            (ri, rule),
            &what,
            store,
            settings,
            backends,
        );
        let policy = match &built.cors {
            None => flavor.policy.clone(),
            Some(cors) => {
                let mut policy = flavor
                    .policy
                    .as_ref()
                    .map(|p| p.policy.clone())
                    .unwrap_or_default();
                policy.cors = Some(cors.clone());
                Some(std::sync::Arc::new(portico_model::policy::CheckedPolicy {
                    policy,
                    allow: Vec::new(),
                    limit_exempt: Vec::new(),
                }))
            }
        };
        for (reason, msg) in &built.problems {
            out.problems.push(Problem::error(here, msg.clone()));
            if resolved_refs.is_none() && !reason.is_empty() {
                resolved_refs = Some((reason.clone(), msg.clone()));
            }
        }
        for msg in &built.warnings {
            out.problems.push(Problem::warning(here, msg.clone()));
        }
        // The plugins a rule with session persistence gets: those scoped
        // to its annotation as well (see `session`).
        let session_plugins = built.session.as_ref().map(|p| {
            let mut a = (**annotations).clone();
            a.insert(p.scope_annotation().into(), "true".into());
            let plugins = settings.scoped.for_ingress(Some(&a));
            if plugins.len() == scoped_plugins.len() {
                out.problems.push(Problem::warning(
                    here,
                    format!(
                        "{what}.sessionPersistence: no loaded plugin applies to {} (the shipped session-affinity plugin does, with applies_to); the rule serves without session persistence",
                        p.scope_annotation()
                    ),
                ));
            }
            plugins
        });
        let default_match = [HttpRouteRulesMatches::default()];
        let matches = rule
            .matches
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(&default_match);
        for (mi, m) in matches.iter().enumerate() {
            let mw = format!("{what}.matches[{mi}]");
            let Some(matched) = build_match(m, &mw, here, out) else {
                continue;
            };
            if built.needs_prefix && matched.kind != PathKind::Prefix {
                out.problems.push(Problem::error(
                    here,
                    format!("{mw}: ReplacePrefixMatch needs a PathPrefix match; match skipped"),
                ));
                continue;
            }
            // With session persistence, the plugin's annotations for this
            // match: plain and for HTTPS listeners (a Secure cookie).
            let session = built.session.as_ref().map(|c| {
                let path = session::cookie_path(matched.kind, &matched.path);
                [false, true].map(|secure| {
                    std::sync::Arc::new(session::annotations(&annotations, c, &path, secure).into())
                })
            });
            for (l, hosts) in &attached {
                let (route_annotations, route_plugins) = match (&session, &session_plugins) {
                    (Some([plain, secure]), Some(plugins)) => (
                        if l.protocol == Protocol::Https {
                            secure
                        } else {
                            plain
                        },
                        plugins,
                    ),
                    _ => (&annotations, &scoped_plugins),
                };
                let mut conditions = matched.conditions.clone();
                conditions.ports = vec![l.port];
                conditions.tls = Some(l.protocol == Protocol::Https);
                let action = RuleAction {
                    source: format!("{} {key}", flavor.kind),
                    rule: ri,
                    via: format!("Gateway {} listener {}", l.gateway, l.name),
                    conditions: Some(conditions),
                    ..built.action.clone()
                };
                let action = std::sync::Arc::new(action);
                for host in hosts {
                    let r = Route {
                        ingress: key.to_string(),
                        host: host.clone().unwrap_or_else(|| "*".into()),
                        path: matched.path.clone(),
                        kind: matched.kind,
                        backend: built.backend.clone(),
                        plugins: built.plugins.clone(),
                        scoped_plugins: route_plugins.clone(),
                        annotations: route_annotations.clone(),
                        policy: policy.clone(),
                        canary: None,
                        path_regex: matched.regex.clone(),
                        fallback: None,
                        metrics: Default::default(),
                        rule: Some(action.clone()),
                    };
                    if let Err(kept) = out.routes.gateway_host_mut(host.as_deref()).add(
                        matched.kind,
                        &matched.path,
                        r,
                    ) {
                        let same = kept
                            .rule
                            .as_ref()
                            .is_some_and(|r| r.source == format!("{} {key}", flavor.kind));
                        if !same {
                            out.problems.push(Problem::warning(
                                here,
                                format!(
                                    "{mw}: {} {} with the same conditions is already routed by {}, which is older; ignored",
                                    host.as_deref().unwrap_or("*"),
                                    matched.path,
                                    kept.rule.as_ref().map_or_else(|| format!("Ingress {}", kept.ingress), |r| r.source.clone())
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    // ResolvedRefs on every parent the route is attached to.
    if let Some(parents) = flavor.parents(status).get_mut(key) {
        for state in parents.values_mut() {
            state.resolved_refs = match &resolved_refs {
                Some((reason, msg)) => Condition::bad("ResolvedRefs", reason, msg),
                None => Condition::ok("ResolvedRefs", "ResolvedRefs", "all references resolved"),
            };
        }
    }
}

/// `namespace/name` of the Gateway a parentRef names when it is one of
/// Portico's (known to the status as a Gateway of an accepted class).
fn our_gateway(
    route: &ObjectKey,
    parent: &HttpRouteParentRefs,
    status: &GatewayApiStatus,
) -> Option<ObjectKey> {
    if parent
        .group
        .as_deref()
        .is_some_and(|g| g != portico_gateway_api::GROUP)
        || parent.kind.as_deref().is_some_and(|k| k != "Gateway")
    {
        return None;
    }
    let key = ObjectKey::new(
        parent
            .namespace
            .clone()
            .unwrap_or_else(|| route.namespace.clone()),
        parent.name.clone(),
    );
    status.gateways.contains_key(&key).then_some(key)
}

fn parent_label(gw: &ObjectKey, parent: &HttpRouteParentRefs) -> String {
    let mut s = gw.to_string();
    if let Some(section) = &parent.section_name {
        s.push('/');
        s.push_str(section);
    }
    if let Some(port) = parent.port {
        s.push(':');
        s.push_str(&port.to_string());
    }
    s
}

struct Matched {
    kind: PathKind,
    path: String,
    regex: Option<PathRegex>,
    conditions: RequestConditions,
}

fn build_match(
    m: &HttpRouteRulesMatches,
    what: &str,
    here: &str,
    out: &mut SnapshotSpec,
) -> Option<Matched> {
    let mut fail = |msg: String| {
        out.problems.push(Problem::error(
            here,
            format!("{what}: {msg}; match skipped"),
        ));
        None
    };
    let (kind, path) = match &m.path {
        None => (PathKind::Prefix, "/".to_string()),
        Some(p) => (
            match p
                .r#type
                .as_ref()
                .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => PathKind::Exact,
                HttpRouteRulesMatchesPathType::PathPrefix => PathKind::Prefix,
                HttpRouteRulesMatchesPathType::RegularExpression => PathKind::Regex,
            },
            p.value.clone().unwrap_or_else(|| "/".into()),
        ),
    };
    if kind != PathKind::Regex && !path.starts_with('/') {
        return fail(format!("path {path:?} must start with '/'"));
    }
    let regex = if kind == PathKind::Regex {
        match PathRegex::whole(&path) {
            Ok(r) => Some(r),
            Err(e) => return fail(format!("path {path:?}: {e}")),
        }
    } else {
        None
    };
    let mut conditions = RequestConditions {
        method: m.method.as_ref().map(|m| {
            serde_json::to_value(m)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }),
        ..Default::default()
    };
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        // Only the first entry of a name counts (the spec).
        if conditions.headers.iter().any(|c| c.name == name) {
            continue;
        }
        let value = match h.r#type.as_ref() {
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                match ValueRegex::new(&h.value) {
                    Ok(r) => ValueMatch::Regex(r),
                    Err(e) => return fail(format!("header {}: {e}", h.name)),
                }
            }
            _ => ValueMatch::Exact(h.value.clone()),
        };
        conditions.headers.push(NamedMatch { name, value });
    }
    for q in m.query_params.iter().flatten() {
        if conditions.query.iter().any(|c| c.name == q.name) {
            continue;
        }
        let value = match q.r#type.as_ref() {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                match ValueRegex::new(&q.value) {
                    Ok(r) => ValueMatch::Regex(r),
                    Err(e) => return fail(format!("query parameter {}: {e}", q.name)),
                }
            }
            _ => ValueMatch::Exact(q.value.clone()),
        };
        conditions.query.push(NamedMatch {
            name: q.name.clone(),
            value,
        });
    }
    Some(Matched {
        kind,
        path,
        regex,
        conditions,
    })
}

/// A rule's filters and backends, shared by its matches.
struct BuiltRule {
    action: RuleAction,
    backend: BackendKey,
    plugins: Vec<String>,
    /// A `ReplacePrefixMatch` needs every match to be a PathPrefix.
    needs_prefix: bool,
    /// A `CORS` filter: applied as route policy, as ingress-nginx's
    /// `enable-cors` is.
    cors: Option<portico_model::policy::Cors>,
    /// (ResolvedRefs reason or "", message).
    problems: Vec<(String, String)>,
    /// `sessionPersistence`, when Portico carries it out.
    session: Option<session::Persistence>,
    warnings: Vec<String>,
}

/// The route a rule belongs to, and its kind (`HTTPRoute`, `GRPCRoute`):
/// what ReferenceGrants are checked for.
type RouteRef<'a> = (&'a ObjectKey, &'static str);

fn build_rule(
    (route, kind): RouteRef<'_>,
    (index, rule): (usize, &HttpRouteRules),
    what: &str,
    store: &Store,
    settings: &super::Settings,
    backends: &mut Backends<'_>,
) -> BuiltRule {
    let mut b = BuiltRule {
        action: RuleAction::default(),
        backend: BackendKey {
            namespace: route.namespace.clone(),
            service: String::new(),
            port: String::new(),
        },
        plugins: Vec::new(),
        needs_prefix: false,
        cors: None,
        problems: Vec::new(),
        session: None,
        warnings: Vec::new(),
    };
    // A filter Portico cannot apply makes the rule answer 500 (the spec:
    // such a filter must not be skipped).
    let mut broken = false;
    for (fi, f) in rule.filters.iter().flatten().enumerate() {
        let fw = format!("{what}.filters[{fi}]");
        if f.r#type == F::RequestMirror {
            // The spec: a mirror whose backend does not resolve is
            // dropped (ResolvedRefs False); the rule still serves.
            match mirror_filter((route, kind), f, &fw, store, backends) {
                Ok(m) => b.action.mirrors.push(m),
                Err((reason, msg)) => b
                    .problems
                    .push((reason.into(), format!("{msg}; requests are not mirrored"))),
            }
            continue;
        }
        if let Err(msg) = apply_filter(f, &fw, settings, &mut b) {
            b.problems
                .push((String::new(), format!("{msg}; the rule answers 500")));
            broken = true;
        }
    }
    if b.action.redirect.is_some() && b.action.rewrite.is_some() {
        b.problems.push((
            String::new(),
            format!("{what}: RequestRedirect and URLRewrite cannot be used together; the rule answers 500"),
        ));
        broken = true;
    }
    if let Some(t) = &rule.timeouts {
        for (field, value, slot) in [
            ("request", &t.request, &mut b.action.request_timeout_ms),
            (
                "backendRequest",
                &t.backend_request,
                &mut b.action.backend_timeout_ms,
            ),
        ] {
            if let Some(v) = value {
                match parse_duration_ms(v) {
                    // 0s: no timeout (kept as 0, which the data plane
                    // reads as none).
                    Some(ms) => *slot = Some(ms),
                    None => b.problems.push((
                        String::new(),
                        format!("{what}.timeouts.{field} {v:?} is not a Gateway API duration (e.g. 10s, 500ms, 1h30m); ignored"),
                    )),
                }
            }
        }
    }
    let mut weighted: Vec<WeightedBackend> = Vec::new();
    for (bi, r) in rule.backend_refs.iter().flatten().enumerate() {
        let bw = format!("{what}.backendRefs[{bi}]");
        let mut entry = WeightedBackend {
            weight: u32::try_from(r.weight.unwrap_or(1)).unwrap_or(0),
            ..Default::default()
        };
        for (fi, f) in r.filters.iter().flatten().enumerate() {
            let fw = format!("{bw}.filters[{fi}]");
            if let Err(msg) = backend_filter(f, &fw, &mut entry) {
                b.problems
                    .push((String::new(), format!("{msg}; the rule answers 500")));
                broken = true;
            }
        }
        match resolve_backend((route, kind), r, &bw, store, backends) {
            Ok(bk) => entry.backend = Some(bk),
            Err((reason, msg)) => b.problems.push((
                reason.into(),
                format!("{msg}; its share of requests gets 500"),
            )),
        }
        weighted.push(entry);
    }
    if broken {
        b.action.weighted = vec![WeightedBackend {
            backend: None,
            weight: 1,
            ..Default::default()
        }];
        b.action.redirect = None;
        return b;
    }
    if b.action.redirect.is_some() {
        return b;
    }
    weighted.retain(|w| w.weight > 0);
    match weighted.as_slice() {
        // One backend without filters of its own: the route's backend.
        [WeightedBackend {
            backend: Some(bk),
            request_headers,
            response_headers,
            ..
        }] if request_headers.is_empty() && response_headers.is_empty() => b.backend = bk.clone(),
        [] => {
            // No backend (or only zero weights): 500, as the spec asks.
            b.action.weighted = vec![WeightedBackend {
                backend: None,
                weight: 0,
                ..Default::default()
            }];
        }
        many => {
            if let Some(first) = many.iter().find_map(|w| w.backend.clone()) {
                b.backend = first;
            }
            b.action.weighted = many.to_vec();
        }
    }
    if rule.retry.is_some() {
        b.warnings.push(format!(
            "{what}.retry (experimental) is not supported; requests are not retried by status"
        ));
    }
    if let Some(sp) = &rule.session_persistence {
        let sw = format!("{what}.sessionPersistence");
        // GEP-1619 lets an implementation refuse persistence across a
        // traffic split; the plugin pins endpoints of one backend.
        let result = if b.action.weighted.len() > 1 {
            Err(format!(
                "{sw}: session persistence across several backendRefs is not supported"
            ))
        } else {
            session::persistence(sp, &route.to_string(), index, &sw)
        };
        match result {
            Ok((persistence, warnings)) => {
                b.session = Some(persistence);
                b.warnings.extend(warnings);
            }
            Err(msg) => b.problems.push((
                String::new(),
                format!("{msg}; the rule serves without session persistence"),
            )),
        }
    }
    b
}

/// A filter on a backendRef: the header modifiers, applied when that
/// backend is drawn. The rest have no per-backend meaning Portico
/// implements.
fn backend_filter(
    f: &portico_gateway_api::httproutes::HttpRouteRulesBackendRefsFilters,
    what: &str,
    into: &mut WeightedBackend,
) -> Result<(), String> {
    let (key, target) = match &f.r#type {
        portico_gateway_api::httproutes::HttpRouteRulesBackendRefsFiltersType::RequestHeaderModifier => {
            ("requestHeaderModifier", &mut into.request_headers)
        }
        portico_gateway_api::httproutes::HttpRouteRulesBackendRefsFiltersType::ResponseHeaderModifier => {
            ("responseHeaderModifier", &mut into.response_headers)
        }
        other => {
            return Err(format!(
                "{what}: a {other:?} filter on a backendRef is not supported (only RequestHeaderModifier and ResponseHeaderModifier)"
            ))
        }
    };
    // Both modifiers have the request modifier's shape.
    let m: portico_gateway_api::httproutes::HttpRouteRulesFiltersRequestHeaderModifier =
        serde_json::to_value(f)
            .ok()
            .and_then(|v| v.get(key).cloned())
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| format!("{what}: type {:?} without its settings", f.r#type))?;
    edits(
        what,
        target,
        m.set.iter().flatten().map(|h| (&h.name, &h.value)),
        m.add.iter().flatten().map(|h| (&h.name, &h.value)),
        m.remove.iter().flatten(),
    )
}

fn mirror_filter(
    route: RouteRef<'_>,
    f: &HttpRouteRulesFilters,
    what: &str,
    store: &Store,
    backends: &mut Backends<'_>,
) -> Result<MirrorFilter, (&'static str, String)> {
    let m = f.request_mirror.as_ref().ok_or_else(|| {
        (
            "",
            format!("{what}: type RequestMirror without its settings"),
        )
    })?;
    let (numerator, denominator) = match (m.percent, &m.fraction) {
        (Some(p), _) => (p, 100),
        (None, Some(fr)) => (fr.numerator, fr.denominator.unwrap_or(100)),
        (None, None) => (1, 1),
    };
    let (Ok(numerator), Ok(denominator)) = (u32::try_from(numerator), u32::try_from(denominator))
    else {
        return Err(("", format!("{what}: a negative mirror share")));
    };
    if denominator == 0 || numerator > denominator {
        return Err((
            "",
            format!(
                "{what}: mirror share {numerator}/{denominator} is not a fraction of at most 1"
            ),
        ));
    }
    let r = &m.backend_ref;
    let as_ref = portico_gateway_api::httproutes::HttpRouteRulesBackendRefs {
        group: r.group.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        port: r.port,
        ..Default::default()
    };
    let backend = resolve_backend(
        route,
        &as_ref,
        &format!("{what}.requestMirror.backendRef"),
        store,
        backends,
    )?;
    Ok(MirrorFilter {
        backend,
        numerator,
        denominator,
    })
}

fn resolve_backend(
    (route, route_kind): RouteRef<'_>,
    r: &portico_gateway_api::httproutes::HttpRouteRulesBackendRefs,
    what: &str,
    store: &Store,
    backends: &mut Backends<'_>,
) -> Result<BackendKey, (&'static str, String)> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("{what}: {group}/{kind} is not a Service"),
        ));
    }
    let ns = r
        .namespace
        .clone()
        .unwrap_or_else(|| route.namespace.clone());
    let target = ObjectKey::new(ns.clone(), r.name.clone());
    if ns != route.namespace
        && !granted(store, &route.namespace, route_kind, "", "Service", &target)
    {
        return Err((
            "RefNotPermitted",
            format!(
                "{what}: Service {target} is in another namespace and no ReferenceGrant there allows {route_kind}s of {} to refer to it",
                route.namespace
            ),
        ));
    }
    let Some(port) = r.port else {
        return Err((
            "BackendNotFound",
            format!("{what}: a Service backendRef needs a port"),
        ));
    };
    let (bk, why) = backends.resolve(&ns, &r.name, &PortRef::Number(port));
    match why {
        Some(why) => Err(("BackendNotFound", format!("{what}: {why}"))),
        None => Ok(bk),
    }
}

fn apply_filter(
    f: &HttpRouteRulesFilters,
    what: &str,
    settings: &super::Settings,
    b: &mut BuiltRule,
) -> Result<(), String> {
    let missing = || format!("{what}: type {:?} without its settings", f.r#type);
    match f.r#type {
        F::RequestHeaderModifier => {
            let m = f.request_header_modifier.as_ref().ok_or_else(missing)?;
            edits(
                what,
                &mut b.action.request_headers,
                m.set.iter().flatten().map(|h| (&h.name, &h.value)),
                m.add.iter().flatten().map(|h| (&h.name, &h.value)),
                m.remove.iter().flatten(),
            )?;
        }
        F::ResponseHeaderModifier => {
            let m = f.response_header_modifier.as_ref().ok_or_else(missing)?;
            edits(
                what,
                &mut b.action.response_headers,
                m.set.iter().flatten().map(|h| (&h.name, &h.value)),
                m.add.iter().flatten().map(|h| (&h.name, &h.value)),
                m.remove.iter().flatten(),
            )?;
        }
        F::RequestRedirect => {
            let r = f.request_redirect.as_ref().ok_or_else(missing)?;
            let path = match &r.path {
                None => None,
                Some(p) => Some(path_change(
                    p.r#type == portico_gateway_api::httproutes::HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
                    p.replace_full_path.as_deref(),
                    p.replace_prefix_match.as_deref(),
                    what,
                    &mut b.needs_prefix,
                )?),
            };
            let status = u16::try_from(r.status_code.unwrap_or(302)).unwrap_or(0);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!("{what}: statusCode {status} is not a redirect"));
            }
            if let Some(h) = r.hostname.as_deref() {
                validate_hostname(h).map_err(|e| format!("{what}: hostname {h:?}: {e}"))?;
            }
            b.action.redirect = Some(RedirectFilter {
                scheme: r.scheme.as_ref().map(|s| {
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                }),
                hostname: r.hostname.clone(),
                path,
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                status,
            });
        }
        F::UrlRewrite => {
            let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
            if let Some(h) = r.hostname.as_deref() {
                validate_hostname(h).map_err(|e| format!("{what}: hostname {h:?}: {e}"))?;
            }
            let path = match &r.path {
                None => None,
                Some(p) => Some(path_change(
                    p.r#type == portico_gateway_api::httproutes::HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                    p.replace_full_path.as_deref(),
                    p.replace_prefix_match.as_deref(),
                    what,
                    &mut b.needs_prefix,
                )?),
            };
            b.action.rewrite = Some(RewriteFilter {
                hostname: r.hostname.clone(),
                path,
            });
        }
        F::ExtensionRef => {
            let e = f.extension_ref.as_ref().ok_or_else(missing)?;
            if e.group != PLUGIN_GROUP || e.kind != PLUGIN_KIND {
                return Err(format!(
                    "{what}: extensionRef {}/{} is not a Portico plugin (group {PLUGIN_GROUP}, kind {PLUGIN_KIND})",
                    e.group, e.kind
                ));
            }
            if !settings.plugins.contains(&e.name) {
                return Err(format!(
                    "{what}: extensionRef names plugin {:?}, which is not configured ([[plugins.load]])",
                    e.name
                ));
            }
            b.plugins.push(e.name.clone());
        }
        F::Cors => {
            let c = f.cors.as_ref().ok_or_else(missing)?;
            b.cors = Some(cors_filter(c, what)?);
        }
        // Taken by `build_rule`, which resolves its backend.
        F::RequestMirror => {}
        // Experimental channel: not implemented, and an auth filter must
        // never be skipped.
        F::ExternalAuth => {
            return Err(format!(
                "{what}: the ExternalAuth filter is not supported (an ExtensionRef to a Portico plugin can authorize requests)"
            ))
        }
    }
    Ok(())
}

/// A `CORS` filter as route policy. Origins are `*` or
/// `http(s)://host[:port]`, the host optionally starting with `*.`;
/// methods are tokens; header names are header names; `*` stands alone.
fn cors_filter(
    c: &portico_gateway_api::httproutes::HttpRouteRulesFiltersCors,
    what: &str,
) -> Result<portico_model::policy::Cors, String> {
    let origins = c.allow_origins.clone().unwrap_or_default();
    for o in &origins {
        if o != "*" && !valid_cors_origin(o) {
            return Err(format!(
                "{what}: cors.allowOrigins {o:?} is not `*` or http(s)://host[:port] (the host may start with `*.`)"
            ));
        }
    }
    let list = |field: &str, values: &Option<Vec<String>>| -> Result<String, String> {
        let values = values.as_deref().unwrap_or_default();
        if values.len() > 1 && values.iter().any(|v| v == "*") {
            return Err(format!(
                "{what}: cors.{field} cannot have `*` beside other values"
            ));
        }
        for v in values {
            if v != "*" && http::HeaderName::from_bytes(v.as_bytes()).is_err() {
                return Err(format!("{what}: cors.{field} {v:?} is not a token"));
            }
        }
        Ok(values.join(", "))
    };
    if origins.len() > 1 && origins.iter().any(|o| o == "*") {
        return Err(format!(
            "{what}: cors.allowOrigins cannot have `*` beside other origins"
        ));
    }
    let max_age = c.max_age.unwrap_or(5);
    if max_age < 1 {
        return Err(format!("{what}: cors.maxAge {max_age} is below 1"));
    }
    Ok(portico_model::policy::Cors {
        allow_origins: origins,
        allow_methods: list("allowMethods", &c.allow_methods)?,
        allow_headers: list("allowHeaders", &c.allow_headers)?,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        expose_headers: list("exposeHeaders", &c.expose_headers)?,
        max_age_seconds: max_age as u64,
        // The conformance suite's preflights expect 200.
        preflight_status: 200,
    })
}

fn valid_cors_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    matches!(scheme, "http" | "https")
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
        && !host.is_empty()
        && (host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

/// Header fields a filter may not touch: they frame the message or the
/// connection (changing them would desynchronise client, proxy and
/// backend), or they are the Host (`URLRewrite` sets that).
const UNEDITABLE: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn edits<'a>(
    what: &str,
    into: &mut HeaderEdits,
    set: impl Iterator<Item = (&'a String, &'a String)>,
    add: impl Iterator<Item = (&'a String, &'a String)>,
    remove: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    let name = |n: &str| -> Result<String, String> {
        let lower = n.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(format!("{what}: {n:?} is not a header name"));
        }
        if UNEDITABLE.contains(&lower.as_str()) {
            return Err(format!(
                "{what}: header {n:?} frames the message or names the host and cannot be edited"
            ));
        }
        Ok(lower)
    };
    let value = |n: &str, v: &str| -> Result<String, String> {
        http::HeaderValue::from_str(v)
            .map(|_| v.to_string())
            .map_err(|_| format!("{what}: the value of {n:?} is not a header value"))
    };
    for (n, v) in set {
        into.set.push((name(n)?, value(n, v)?));
    }
    for (n, v) in add {
        into.add.push((name(n)?, value(n, v)?));
    }
    for n in remove {
        into.remove.push(name(n)?);
    }
    Ok(())
}

fn path_change(
    replace_full: bool,
    full: Option<&str>,
    prefix: Option<&str>,
    what: &str,
    needs_prefix: &mut bool,
) -> Result<PathChange, String> {
    let checked = |p: &str| -> Result<String, String> {
        if !p.starts_with('/') || p.contains('?') || http::uri::PathAndQuery::try_from(p).is_err() {
            return Err(format!(
                "{what}: path {p:?} must start with '/' and be a plain path"
            ));
        }
        Ok(p.to_string())
    };
    if replace_full {
        let p = full
            .ok_or_else(|| format!("{what}: path type ReplaceFullPath without replaceFullPath"))?;
        Ok(PathChange::ReplaceFullPath(checked(p)?))
    } else {
        *needs_prefix = true;
        let p = prefix.ok_or_else(|| {
            format!("{what}: path type ReplacePrefixMatch without replacePrefixMatch")
        })?;
        Ok(PathChange::ReplacePrefixMatch(checked(p)?))
    }
}

/// A Gateway API duration (`1h`, `30s`, `500ms`, `1h30m`) in milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
        if parts > 4 {
            return None;
        }
    }
    Some(total)
}

fn validate_hostname(h: &str) -> Result<(), &'static str> {
    super::ingress::validate_host(h)
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod table_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_intersect_as_the_spec_says() {
        let s = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let some = |h: &str| Some(h.to_string());
        assert_eq!(intersect(None, &[]), vec![None]);
        assert_eq!(intersect(None, &s(&["a.test"])), vec![some("a.test")]);
        assert_eq!(intersect(Some("a.test"), &[]), vec![some("a.test")]);
        assert_eq!(intersect(Some("a.test"), &s(&["b.test"])), vec![]);
        assert_eq!(
            intersect(
                Some("*.example.com"),
                &s(&["foo.example.com", "x.other.com"])
            ),
            vec![some("foo.example.com")]
        );
        // Wildcards cover several labels in the Gateway API.
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["a.b.example.com"])),
            vec![some("a.b.example.com")]
        );
        assert_eq!(
            intersect(Some("foo.example.com"), &s(&["*.example.com"])),
            vec![some("foo.example.com")]
        );
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["*.foo.example.com"])),
            vec![some("*.foo.example.com")]
        );
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["example.com"])),
            vec![]
        );
    }

    #[test]
    fn durations_parse_as_gateway_api_durations() {
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        for bad in ["", "10", "1.5s", "s", "123456s", "1d", "1h1h1h1h1h"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }
}
