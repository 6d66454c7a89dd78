//! Status the leader writes to Gateway API objects: the conditions
//! translation decided ([`GatewayApiStatus`]) in the shape the spec gives
//! them, for Portico's GatewayClasses, their Gateways (addresses,
//! listeners, `attachedRoutes`) and the HTTPRoutes attached to them.
//!
//! `plan` is pure: it returns only the objects whose status differs from
//! what the API already holds (ignoring `lastTransitionTime`, which it
//! keeps while a condition's status stays). An HTTPRoute's `parents` list
//! is shared with other controllers: their entries are kept as they are.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use portico_model::gateway_status::{Condition, GatewayApiStatus, ListenerState};
use portico_model::store::{ObjectKey, Store};
use portico_translate::gateway::CONTROLLER_NAME;

use super::status::LbAddress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GatewayKind {
    GatewayClass,
    Gateway,
    HTTPRoute,
    GRPCRoute,
    TCPRoute,
    UDPRoute,
    TLSRoute,
}

impl GatewayKind {
    pub fn name(self) -> &'static str {
        match self {
            GatewayKind::GatewayClass => "GatewayClass",
            GatewayKind::Gateway => "Gateway",
            GatewayKind::HTTPRoute => "HTTPRoute",
            GatewayKind::GRPCRoute => "GRPCRoute",
            GatewayKind::TCPRoute => "TCPRoute",
            GatewayKind::UDPRoute => "UDPRoute",
            GatewayKind::TLSRoute => "TLSRoute",
        }
    }
}

/// One status to write: the whole `status` object (a merge patch).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub kind: GatewayKind,
    pub key: ObjectKey,
    pub status: Value,
    /// For a route's `parents`, shared with other controllers: the
    /// version planned from, so a write over a newer one fails (409)
    /// instead of dropping another controller's entry.
    pub resource_version: Option<String>,
}

/// The writes that make the API's status match `st`. `now` is the
/// RFC 3339 time a changed condition gets as `lastTransitionTime`.
/// `allocated`: what the load-balancer plugin gave Gateways that ask for
/// no address of their own (when one is configured and answered).
pub fn plan(
    store: &Store,
    st: &GatewayApiStatus,
    addresses: &[LbAddress],
    allocated: Option<&BTreeMap<ObjectKey, Vec<std::net::IpAddr>>>,
    now: &str,
) -> Vec<StatusWrite> {
    let mut out = Vec::new();
    for (name, accepted) in &st.classes {
        let key = ObjectKey::new("", name.clone());
        let Some(class) = store.gateway_classes.get(&key) else {
            continue;
        };
        let current = serde_json::to_value(&class.object.status).unwrap_or(Value::Null);
        let generation = class.object.metadata.generation;
        let status = json!({
            "conditions": conditions(&[accepted], generation, &current["conditions"], now),
        });
        push_if_changed(&mut out, GatewayKind::GatewayClass, key, &current, status);
    }
    for (key, gs) in &st.gateways {
        let Some(gw) = store.gateways.get(key) else {
            continue;
        };
        let current = serde_json::to_value(&gw.object.status).unwrap_or(Value::Null);
        let generation = gw.object.metadata.generation;
        let mut listeners = Vec::new();
        let mut programmed = 0;
        for l in &gw.object.spec.listeners {
            let ls = gs.listeners.get(&l.name).cloned().unwrap_or_default();
            if ls.programmed.status {
                programmed += 1;
            }
            let old = current["listeners"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == l.name.as_str()))
                .map(|x| x["conditions"].clone())
                .unwrap_or(Value::Null);
            let conflicted = ls.conflicted.clone().unwrap_or_else(|| {
                Condition::bad("Conflicted", "NoConflicts", "no conflicting listener")
            });
            let kinds: Vec<Value> = ls
                .supported_kinds
                .iter()
                .map(|k| json!({"group": portico_gateway_api::GROUP, "kind": k}))
                .collect();
            let ListenerState {
                accepted,
                programmed: prog,
                resolved_refs,
                attached_routes,
                ..
            } = &ls;
            listeners.push(json!({
                "name": l.name,
                "supportedKinds": kinds,
                "attachedRoutes": attached_routes,
                "conditions": conditions(&[accepted, prog, resolved_refs, &conflicted], generation, &old, now),
            }));
        }
        let valid = gs.listeners.values().filter(|l| l.accepted.status).count();
        let accepted = if let Some(why) = &gs.invalid_parameters {
            Condition::bad("Accepted", "InvalidParameters", why)
        } else if gs.addresses_unsupported {
            Condition::bad(
                "Accepted",
                "UnsupportedAddress",
                "spec.addresses: only IPAddress values are supported",
            )
        } else if valid == 0 && !gs.listeners.is_empty() {
            Condition::bad("Accepted", "ListenersNotValid", "no listener is valid")
        } else if valid < gs.listeners.len() {
            // The spec: accepted, with the reason saying not every
            // listener is.
            Condition::ok(
                "Accepted",
                "ListenersNotValid",
                "some listeners are not valid; the others are served",
            )
        } else {
            Condition::ok("Accepted", "Accepted", "handled by Portico")
        };
        let gw_programmed = if !gs.unassigned_addresses.is_empty() {
            let list: Vec<String> = gs
                .unassigned_addresses
                .iter()
                .map(|a| a.to_string())
                .collect();
            Condition::bad(
                "Programmed",
                "AddressNotUsable",
                &format!(
                    "spec.addresses: {} not among the addresses Portico serves Gateways at, nor free in an announce pool open to Gateways",
                    list.join(", ")
                ),
            )
        } else if programmed > 0 {
            Condition::ok("Programmed", "Programmed", "served")
        } else {
            Condition::bad("Programmed", "Invalid", "no listener is served")
        };
        // The addresses asked for and assigned; for a Gateway that asks
        // for none, the plugin's answer, or while it has none (it failed),
        // what the status holds; else every address Portico serves.
        let none = Vec::new();
        let own = if !gs.assigned_addresses.is_empty() {
            &gs.assigned_addresses
        } else {
            match allocated {
                Some(a) => a.get(key).unwrap_or(&none),
                None => &gs.allocated_addresses,
            }
        };
        let addrs: Vec<Value> = if own.is_empty() {
            addresses
                .iter()
                .map(|a| match a {
                    LbAddress::Ip(ip) => json!({"type": "IPAddress", "value": ip.to_string()}),
                    LbAddress::Hostname(h) => json!({"type": "Hostname", "value": h}),
                })
                .collect()
        } else {
            own.iter()
                .map(|ip| json!({"type": "IPAddress", "value": ip.to_string()}))
                .collect()
        };
        let status = json!({
            "addresses": addrs,
            "conditions": conditions(&[&accepted, &gw_programmed], generation, &current["conditions"], now),
            "listeners": listeners,
        });
        push_if_changed(
            &mut out,
            GatewayKind::Gateway,
            key.clone(),
            &current,
            status,
        );
    }
    route_statuses(
        &mut out,
        GatewayKind::HTTPRoute,
        store.http_routes.iter().map(|(k, r)| {
            let v = serde_json::to_value(&r.object.status).unwrap_or(Value::Null);
            let m = &r.object.metadata;
            (k, v, m.generation, m.resource_version.clone())
        }),
        &st.routes,
        now,
    );
    route_statuses(
        &mut out,
        GatewayKind::GRPCRoute,
        store.grpc_routes.iter().map(|(k, r)| {
            let v = serde_json::to_value(&r.object.status).unwrap_or(Value::Null);
            let m = &r.object.metadata;
            (k, v, m.generation, m.resource_version.clone())
        }),
        &st.grpc_routes,
        now,
    );
    route_statuses(
        &mut out,
        GatewayKind::TCPRoute,
        store.tcp_routes.iter().map(|(k, r)| {
            let v = serde_json::to_value(&r.object.status).unwrap_or(Value::Null);
            let m = &r.object.metadata;
            (k, v, m.generation, m.resource_version.clone())
        }),
        &st.tcp_routes,
        now,
    );
    route_statuses(
        &mut out,
        GatewayKind::UDPRoute,
        store.udp_routes.iter().map(|(k, r)| {
            let v = serde_json::to_value(&r.object.status).unwrap_or(Value::Null);
            let m = &r.object.metadata;
            (k, v, m.generation, m.resource_version.clone())
        }),
        &st.udp_routes,
        now,
    );
    route_statuses(
        &mut out,
        GatewayKind::TLSRoute,
        store.tls_routes.iter().map(|(k, r)| {
            let v = serde_json::to_value(&r.object.status).unwrap_or(Value::Null);
            let m = &r.object.metadata;
            (k, v, m.generation, m.resource_version.clone())
        }),
        &st.tls_routes,
        now,
    );
    out
}

/// The `parents` of every route of one kind: (key, current status,
/// generation) from the store, ours from translation.
fn route_statuses<'a>(
    out: &mut Vec<StatusWrite>,
    kind: GatewayKind,
    routes: impl Iterator<Item = (&'a ObjectKey, Value, Option<i64>, Option<String>)>,
    st: &std::collections::BTreeMap<
        ObjectKey,
        std::collections::BTreeMap<String, portico_model::gateway_status::ParentState>,
    >,
    now: &str,
) {
    for (key, current, generation, resource_version) in routes {
        let ours = st.get(key);
        let old_parents = current["parents"].as_array().cloned().unwrap_or_default();
        let had_ours = old_parents
            .iter()
            .any(|p| p["controllerName"] == CONTROLLER_NAME);
        let ours = ours
            .map(|o| o.values().collect::<Vec<_>>())
            .unwrap_or_default();
        if ours.is_empty() && !had_ours {
            continue;
        }
        // Our entries in their places, others' untouched, new ones last;
        // entries of ours no longer wanted dropped.
        let entry = |p: &portico_model::gateway_status::ParentState, old: &Value| {
            let mut parent_ref = json!({
                "group": portico_gateway_api::GROUP,
                "kind": "Gateway",
                "namespace": p.gateway.namespace,
                "name": p.gateway.name,
            });
            if let Some(s) = &p.section_name {
                parent_ref["sectionName"] = json!(s);
            }
            if let Some(port) = p.port {
                parent_ref["port"] = json!(port);
            }
            json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions(&[&p.accepted, &p.resolved_refs], generation, old, now),
            })
        };
        let mut placed = vec![false; ours.len()];
        let mut parents: Vec<Value> = Vec::new();
        for o in &old_parents {
            if o["controllerName"] != CONTROLLER_NAME {
                parents.push(o.clone());
                continue;
            }
            let found = ours.iter().enumerate().find(|(i, p)| {
                !placed[*i] && entry(p, &Value::Null)["parentRef"] == o["parentRef"]
            });
            if let Some((i, p)) = found {
                placed[i] = true;
                parents.push(entry(p, &o["conditions"]));
            }
        }
        for (i, p) in ours.iter().enumerate() {
            if !placed[i] {
                parents.push(entry(p, &Value::Null));
            }
        }
        if current.get("parents") != Some(&json!(parents)) {
            out.push(StatusWrite {
                kind,
                key: key.clone(),
                status: json!({ "parents": parents }),
                resource_version,
            });
        }
    }
}

/// The conditions as the API holds them, keeping an existing
/// `lastTransitionTime` while the condition's status stays.
fn conditions(cs: &[&Condition], generation: Option<i64>, old: &Value, now: &str) -> Vec<Value> {
    cs.iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = old
                .as_array()
                .and_then(|a| a.iter().find(|o| o["type"] == c.type_.as_str()))
                .filter(|o| o["status"] == status)
                .and_then(|o| o["lastTransitionTime"].as_str())
                .unwrap_or(now);
            let mut v = json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                // The API caps a condition message at 32 KiB.
                "message": truncate(&c.message, 1024),
                "lastTransitionTime": since,
            });
            if let Some(g) = generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Whether `want`'s fields already hold in `current`.
fn push_if_changed(
    out: &mut Vec<StatusWrite>,
    kind: GatewayKind,
    key: ObjectKey,
    current: &Value,
    want: Value,
) {
    let same = want
        .as_object()
        .is_some_and(|w| w.iter().all(|(k, v)| current.get(k) == Some(v)));
    if !same {
        out.push(StatusWrite {
            kind,
            key,
            status: want,
            resource_version: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::store::AnyObject;
    use std::sync::Arc;

    fn store_with(objects: &[&str]) -> Store {
        let mut s = Store::default();
        for text in objects {
            let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
            let obj = match v["kind"].as_str().unwrap() {
                "GatewayClass" => {
                    AnyObject::GatewayClass(Arc::new(serde_yaml::from_value(v).unwrap()))
                }
                "Gateway" => AnyObject::Gateway(Arc::new(serde_yaml::from_value(v).unwrap())),
                "HTTPRoute" => AnyObject::HTTPRoute(Arc::new(serde_yaml::from_value(v).unwrap())),
                "Service" => AnyObject::Service(Arc::new(serde_yaml::from_value(v).unwrap())),
                k => panic!("{k}"),
            };
            s.insert(obj, None);
        }
        s
    }

    const CLASS: &str = "{apiVersion: gateway.networking.k8s.io/v1, kind: GatewayClass, metadata: {name: portico, generation: 1}, spec: {controllerName: portico.io/gateway-controller}}";
    const GW: &str = "{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, metadata: {name: gw, namespace: infra, generation: 2}, spec: {gatewayClassName: portico, listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}, {name: odd, protocol: HTTP, port: 81}]}}";
    const SVC: &str = "{apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop}, spec: {ports: [{port: 80}]}}";

    fn route_with_status(status: &str) -> String {
        format!("{{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {{name: r, namespace: shop, generation: 3}}, spec: {{parentRefs: [{{name: gw, namespace: infra}}], rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}{status}}}")
    }

    fn translated(store: &Store) -> GatewayApiStatus {
        let mut s = portico_translate::Settings::new(vec![]);
        s.http_ports = vec![80];
        portico_translate::translate(store, &s).gateway_api
    }

    #[test]
    fn statuses_follow_the_spec_and_keep_other_controllers_entries() {
        let other = ", status: {parents: [{parentRef: {name: theirs}, controllerName: example.com/x, conditions: []}]}";
        let store = store_with(&[CLASS, GW, SVC, &route_with_status(other)]);
        let st = translated(&store);
        let addrs = [LbAddress::Ip("192.0.2.1".parse().unwrap())];
        let writes = plan(&store, &st, &addrs, None, "2026-12-01T00:00:00Z");
        let by_kind = |k: GatewayKind| writes.iter().find(|w| w.kind == k).unwrap().status.clone();
        let class = by_kind(GatewayKind::GatewayClass);
        assert_eq!(class["conditions"][0]["type"], "Accepted");
        assert_eq!(class["conditions"][0]["status"], "True");
        assert_eq!(class["conditions"][0]["observedGeneration"], 1);
        let gw = by_kind(GatewayKind::Gateway);
        assert_eq!(gw["addresses"][0]["value"], "192.0.2.1");
        // One of two listeners is not valid: accepted, saying so.
        assert_eq!(gw["conditions"][0]["status"], "True");
        assert_eq!(gw["conditions"][0]["reason"], "ListenersNotValid");
        // None valid: not accepted.
        let none_valid = GW.replace(
            "listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}, ",
            "listeners: [",
        );
        let store2 = store_with(&[CLASS, &none_valid]);
        let none_writes = plan(
            &store2,
            &translated(&store2),
            &addrs,
            None,
            "2026-12-01T00:00:00Z",
        );
        let none = &none_writes
            .iter()
            .find(|w| w.kind == GatewayKind::Gateway)
            .unwrap()
            .status;
        assert_eq!(none["conditions"][0]["status"], "False", "{none}");
        assert_eq!(none["conditions"][0]["reason"], "ListenersNotValid");
        assert_eq!(gw["conditions"][1]["type"], "Programmed");
        assert_eq!(gw["conditions"][1]["status"], "True");
        assert_eq!(gw["listeners"][0]["attachedRoutes"], 1);
        assert_eq!(gw["listeners"][1]["name"], "odd");
        assert_eq!(
            gw["listeners"][1]["conditions"][0]["reason"],
            "PortUnavailable"
        );
        assert_eq!(gw["listeners"][0]["conditions"][3]["reason"], "NoConflicts");
        let route = by_kind(GatewayKind::HTTPRoute);
        let parents = route["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2, "{route}");
        assert_eq!(parents[0]["controllerName"], "example.com/x");
        assert_eq!(parents[1]["controllerName"], CONTROLLER_NAME);
        assert_eq!(parents[1]["parentRef"]["name"], "gw");
        assert_eq!(parents[1]["conditions"][0]["status"], "True");
        assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 3);
    }

    #[test]
    fn requested_addresses_are_assigned_only_when_portico_serves_them() {
        let with = |addresses: &str| {
            let gw = GW.replace("spec: {", &format!("spec: {{addresses: [{addresses}], "));
            let store = store_with(&[CLASS, &gw, SVC, &route_with_status("")]);
            let mut s = portico_translate::Settings::new(vec!["192.0.2.1".parse().unwrap()]);
            s.http_ports = vec![80];
            s.gateway_addresses = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
            let spec = portico_translate::translate(&store, &s);
            let addrs = [
                LbAddress::Ip("192.0.2.1".parse().unwrap()),
                LbAddress::Ip("192.0.2.2".parse().unwrap()),
            ];
            let writes = plan(
                &store,
                &spec.gateway_api,
                &addrs,
                None,
                "2026-12-01T00:00:00Z",
            );
            let gw = writes
                .iter()
                .find(|w| w.kind == GatewayKind::Gateway)
                .unwrap()
                .status
                .clone();
            let problems: Vec<String> = spec.problems.iter().map(|p| p.to_string()).collect();
            (gw, problems.join("\n"))
        };
        // Served: assigned, and the only status address.
        let (gw, problems) = with("{type: IPAddress, value: 192.0.2.2}");
        assert_eq!(
            gw["addresses"],
            json!([{"type": "IPAddress", "value": "192.0.2.2"}])
        );
        assert_eq!(gw["conditions"][0]["status"], "True");
        assert_eq!(gw["conditions"][1]["reason"], "Programmed");
        assert!(!problems.contains("spec.addresses"), "{problems}");
        // Not served: accepted, not programmed, and said where.
        let (gw, problems) = with("{value: 198.51.100.7}");
        assert_eq!(gw["conditions"][0]["status"], "True");
        assert_eq!(gw["conditions"][1]["status"], "False");
        assert_eq!(gw["conditions"][1]["reason"], "AddressNotUsable");
        assert!(
            problems.contains("spec.addresses[0]: 198.51.100.7 is not an address Portico serves Gateways at (192.0.2.1, 192.0.2.2"),
            "{problems}"
        );
        // Another type, or not an IP: not accepted.
        for bad in [
            "{type: Hostname, value: gw.example}",
            "{type: IPAddress, value: nope}",
        ] {
            let (gw, problems) = with(bad);
            assert_eq!(gw["conditions"][0]["reason"], "UnsupportedAddress", "{bad}");
            assert!(problems.contains("spec.addresses[0]"), "{problems}");
        }
        // No value: Portico's own addresses.
        let (gw, _) = with("{type: IPAddress}");
        assert_eq!(gw["addresses"].as_array().unwrap().len(), 2);
        assert_eq!(gw["conditions"][0]["status"], "True");
    }

    #[test]
    fn a_load_balancer_plugins_allocation_is_the_gateways_status_address() {
        let store = store_with(&[CLASS, GW, SVC, &route_with_status("")]);
        let mut st = translated(&store);
        let gw_key = ObjectKey::new("infra", "gw");
        // What an earlier allocation left in the status, as translation
        // read it.
        st.gateways.get_mut(&gw_key).unwrap().allocated_addresses =
            vec!["198.51.100.9".parse().unwrap()];
        let addrs = [LbAddress::Ip("192.0.2.1".parse().unwrap())];
        let address = |allocated: Option<&BTreeMap<ObjectKey, Vec<std::net::IpAddr>>>| {
            let writes = plan(&store, &st, &addrs, allocated, "2026-12-01T00:00:00Z");
            let gw = writes
                .iter()
                .find(|w| w.kind == GatewayKind::Gateway)
                .unwrap();
            gw.status["addresses"].clone()
        };
        let ip = |v: &str| json!([{"type": "IPAddress", "value": v}]);
        let given = BTreeMap::from([(gw_key.clone(), vec!["198.51.100.20".parse().unwrap()])]);
        assert_eq!(address(Some(&given)), ip("198.51.100.20"));
        // The plugin answered without it (an exhausted pool, a plugin
        // that does not allocate for Gateways): Portico's own addresses.
        assert_eq!(address(Some(&BTreeMap::new())), ip("192.0.2.1"));
        // No answer (the plugin failed): the status keeps what it has.
        assert_eq!(address(None), ip("198.51.100.9"));
    }

    #[test]
    fn a_status_already_written_is_not_written_again() {
        let store = store_with(&[CLASS, GW, SVC, &route_with_status("")]);
        let st = translated(&store);
        let first = plan(&store, &st, &[], None, "2026-12-01T00:00:00Z");
        assert_eq!(first.len(), 3);
        // The API now holds what was written; later, nothing changes.
        let route_status = serde_json::to_string(&first[2].status).unwrap();
        let store = store_with(&[
            &CLASS.replace(
                "}}",
                &format!(
                    "}}, status: {}}}",
                    serde_json::to_string(&first[0].status).unwrap()
                ),
            )[..],
            GW,
            SVC,
            &route_with_status(&format!(", status: {route_status}")),
        ]);
        let again = plan(&store, &st, &[], None, "2026-12-02T00:00:00Z");
        let kinds: Vec<GatewayKind> = again.iter().map(|w| w.kind).collect();
        assert!(!kinds.contains(&GatewayKind::HTTPRoute), "{again:?}");
        assert!(!kinds.contains(&GatewayKind::GatewayClass), "{again:?}");
    }

    #[test]
    fn our_entry_keeps_its_place_among_other_controllers_entries() {
        let theirs = "{parentRef: {name: theirs}, controllerName: example.com/x, conditions: []}";
        let store = store_with(&[
            CLASS,
            GW,
            SVC,
            &route_with_status(&format!(", status: {{parents: [{theirs}]}}")),
        ]);
        let st = translated(&store);
        let first = plan(&store, &st, &[], None, "2026-12-01T00:00:00Z");
        let route = first
            .iter()
            .find(|w| w.kind == GatewayKind::HTTPRoute)
            .unwrap();
        let ours = route.status["parents"][1].clone();
        // Ours first, theirs after (as another writer may leave them):
        // nothing to write, and a write would keep that order.
        let both = format!(
            ", status: {{parents: [{}, {theirs}]}}",
            serde_json::to_string(&ours).unwrap()
        );
        let store = store_with(&[CLASS, GW, SVC, &route_with_status(&both)]);
        let again = plan(&store, &st, &[], None, "2026-12-02T00:00:00Z");
        assert!(
            !again.iter().any(|w| w.kind == GatewayKind::HTTPRoute),
            "{again:?}"
        );
    }

    #[test]
    fn a_detached_route_loses_only_our_entries() {
        let ours = format!(", status: {{parents: [{{parentRef: {{name: gw}}, controllerName: {CONTROLLER_NAME}, conditions: []}}, {{parentRef: {{name: theirs}}, controllerName: example.com/x, conditions: []}}]}}");
        // No Gateway of ours any more.
        let store = store_with(&[CLASS, SVC, &route_with_status(&ours)]);
        let st = translated(&store);
        let writes = plan(&store, &st, &[], None, "2026-12-01T00:00:00Z");
        let route = writes
            .iter()
            .find(|w| w.kind == GatewayKind::HTTPRoute)
            .unwrap();
        let parents = route.status["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 1);
        assert_eq!(parents[0]["controllerName"], "example.com/x");
    }
}
