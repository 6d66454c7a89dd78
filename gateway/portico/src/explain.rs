//! `explain`: what a request would get, and why, from a snapshot.
//! Also the JSON view of a whole snapshot served at `/config`.

use serde_json::{json, Value};

use portico_model::lb::Pool;
use portico_model::snapshot::Snapshot;

fn pool_json(pool: &Pool) -> Value {
    let endpoints: Vec<Value> = pool
        .endpoints()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({
                "address": e.spec.addr.to_string(),
                "state": e.spec.state,
                "target": e.spec.target,
                "cooling_down": pool.is_cooling_down(i),
                "outstanding": e.runtime.outstanding.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    json!({
        "backend": pool.key().to_string(),
        "policy": pool.policy_name(),
        "affinity": pool.spec.affinity.map(|a| json!({"type": "ClientIP", "timeout_seconds": a.timeout.as_secs()})),
        "endpoints": endpoints,
    })
}

/// The L7 listeners, as (`http` | `https`, address), for explain.
pub type L7Listeners = [(&'static str, std::net::SocketAddr)];

/// The plugins every request (`plugins.http`) or connection
/// (`plugins.tcp`) runs, by name: without the scoped ones (`applies_to`),
/// which the snapshot's routes and Services name where they apply.
#[derive(Debug, Clone, Default)]
pub struct ListenerPlugins {
    pub http: Vec<String>,
    pub tcp: Vec<String>,
}

impl ListenerPlugins {
    pub fn from_config(cfg: &portico_wasm::config::PluginsConfig) -> Self {
        let unscoped = |names: &[String]| {
            names
                .iter()
                .filter(|n| {
                    !cfg.load
                        .iter()
                        .any(|p| &p.name == *n && p.applies_to.is_some())
                })
                .cloned()
                .collect()
        };
        ListenerPlugins {
            http: unscoped(&cfg.http),
            tcp: unscoped(&cfg.tcp),
        }
    }
}

/// Which plugins a stream gets, in order, and where each comes from:
/// groups of (names, source), a name listed once.
fn plugin_list(groups: &[(&[String], String)]) -> Value {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (names, from) in groups {
        for n in names.iter() {
            if !seen.contains(&n.as_str()) {
                seen.push(n);
                out.push(json!({"name": n, "from": from}));
            }
        }
    }
    Value::Array(out)
}

/// Explains a request for `host` + `path` (L7), or a connection to `port`
/// when an L4 listener has that port. `l7` names the listeners a request
/// could arrive on (those with `port`, when it is given).
pub fn explain(
    snap: &Snapshot,
    host: &str,
    path: &str,
    port: Option<u16>,
    l7: &L7Listeners,
    plugins: &ListenerPlugins,
) -> Value {
    if let Some(port) = port {
        let mut l4: Vec<Value> = snap
            .l4
            .iter()
            .filter(|(k, _)| k.addr.port() == port)
            .map(|(k, backend)| {
                let pool = snap.pool(backend);
                let svc = format!("{}/{}", backend.namespace, backend.service);
                let groups = match (k.protocol, pool) {
                    (portico_model::snapshot::L4Protocol::Tcp, Some(p)) => vec![
                        (&plugins.tcp[..], "plugins.tcp".to_string()),
                        (
                            p.scoped_tcp(),
                            format!("plugins.tcp, applies_to matches Service {svc}"),
                        ),
                        (p.plugins(), format!("Service {svc} (portico.io/plugins)")),
                    ],
                    (portico_model::snapshot::L4Protocol::Tcp, None) => {
                        vec![(&plugins.tcp[..], "plugins.tcp".to_string())]
                    }
                    _ => Vec::new(),
                };
                json!({
                    "listener": k.to_string(),
                    "pool": pool.map(|p| pool_json(p)),
                    "plugins": plugin_list(&groups),
                    "why": format!("L4 listener for Service port {backend}"),
                })
            })
            .collect();
        // TLS listeners (passthrough or terminate): `host` is the SNI.
        l4.extend(
            snap.sni
                .iter()
                .filter(|(k, _)| k.addr.port() == port)
                .map(|(k, table)| match table.find(Some(host)) {
                    Some(r) => json!({
                        "listener": k.to_string(),
                        "sni": host,
                        "route": format!("TLSRoute {}", r.route),
                        "hostname": r.hostname,
                        "pool": r.backend.as_ref().and_then(|b| snap.pool(b)).map(|p| pool_json(p)),
                        "plugins": [],
                        "why": match &r.backend {
                            Some(b) => format!("TLS listener: SNI {host} matches {} of TLSRoute {}, to Service port {b}", r.hostname, r.route),
                            None => format!("TLS listener: SNI {host} matches {} of TLSRoute {}, whose backend does not resolve: the connection is closed", r.hostname, r.route),
                        },
                    }),
                    None => json!({
                        "listener": k.to_string(),
                        "sni": host,
                        "route": null,
                        "plugins": [],
                        "why": format!("TLS listener: no TLSRoute hostname matches SNI {host}: the connection is closed"),
                    }),
                }),
        );
        if !l4.is_empty() {
            let first = l4[0]["plugins"].clone();
            return json!({"generation": snap.generation, "layer": "L4", "listeners": l4, "plugins": first});
        }
    }
    let cert = match snap.certs.find(host) {
        Some(c) => json!({"source": c.source, "why": "an Ingress TLS entry names this host"}),
        None => json!({"source": "default", "why": snap.certs.fallback_reason(host)}),
    };
    // The listener the request arrives on: `--port`, else the first HTTP
    // one. Gateway API routes match only on their listeners' ports; the
    // request is taken as a GET without other headers.
    let listener = l7.iter().find(|(_, a)| port.is_none_or(|p| a.port() == p));
    let empty = http::HeaderMap::new();
    let facts = portico_model::route_rule::RequestFacts {
        port: port.or(listener.map(|(_, a)| a.port())),
        tls: listener.is_some_and(|(kind, _)| *kind == "https"),
        request: Some(portico_model::route_rule::RequestParts {
            method: "GET",
            headers: &empty,
            query: path.split_once('?').map(|(_, q)| q),
        }),
    };
    let route = snap.routes.find_request(host, path, &facts);
    let mut groups = vec![(&plugins.http[..], "plugins.http".to_string())];
    if let Some((r, _)) = route {
        let svc = format!("{}/{}", r.backend.namespace, r.backend.service);
        let pool = snap.pool(&r.backend);
        groups.push((
            &r.scoped_plugins[..],
            format!("plugins.http, applies_to matches Ingress {}", r.ingress),
        ));
        if let Some(p) = pool {
            groups.push((
                p.scoped_http(),
                format!("plugins.http, applies_to matches Service {svc}"),
            ));
        }
        groups.push((
            &r.plugins[..],
            match &r.rule {
                Some(rule) => format!("{} rule {} (ExtensionRef)", rule.source, rule.rule),
                None => format!("Ingress {} (portico.io/plugins)", r.ingress),
            },
        ));
        if let Some(p) = pool {
            groups.push((p.plugins(), format!("Service {svc} (portico.io/plugins)")));
        }
    }
    let plugins_json = plugin_list(&groups);
    // Ingresses that name this host but that the admission left out: the
    // answer to "why is my Ingress not served?".
    let ignored: Vec<Value> = snap
        .ignored_ingresses
        .iter()
        .filter(|i| i.names_host(host))
        .map(|i| json!({"ingress": i.ingress, "reason": i.reason}))
        .collect();
    let (route_json, pool_json_v, why) = match route {
        None => (
            Value::Null,
            Value::Null,
            match snap.ignored_ingresses.iter().find(|i| i.names_host(host)) {
                Some(i) => format!(
                    "no served Ingress rule matches host {host:?} path {path:?}: 404; Ingress {} has a rule for this host but is not served: {}",
                    i.ingress, i.reason
                ),
                None => format!("no Ingress rule or HTTPRoute matches host {host:?} path {path:?} on this listener and no defaultBackend is set: 404"),
            },
        ),
        Some((r, how)) => {
            let pool = snap.pool(&r.backend);
            let what = match &r.rule {
                Some(rule) => format!("rule {} of {}, via {}", rule.rule, rule.source, rule.via),
                None => format!("Ingress {}", r.ingress),
            };
            let why = match pool {
                _ if r.rule.as_ref().is_some_and(|x| x.redirect.is_some()) => format!(
                    "host matched {how:?} rule {:?}, path {:?} ({:?}) of {what}: redirected",
                    r.host, r.path, r.kind
                ),
                _ if r.rule.as_ref().is_some_and(|x| !x.weighted.is_empty()) => format!(
                    "host matched {how:?} rule {:?}, path {:?} ({:?}) of {what}: split by weight (see route.rule.weighted; a share without a valid backend gets 500)",
                    r.host, r.path, r.kind
                ),
                Some(p) if !p.is_empty() => format!(
                    "host matched {how:?} rule {:?}, path {:?} ({:?}) of {what}",
                    r.host, r.path, r.kind
                ),
                _ => match &r.fallback {
                    Some(f) => format!("route of Ingress {} found, but {} has no ready or serving endpoint: its default backend {f} serves", r.ingress, r.backend),
                    None => format!("route of Ingress {} found, but {} has no ready or serving endpoint: 503", r.ingress, r.backend),
                },
            };
            (
                json!({
                    "ingress": r.ingress, "host": r.host, "path": r.path, "path_type": r.kind, "host_match": how,
                    "canary": r.canary.as_ref().map(|c| json!({"ingress": c.ingress, "backend": c.backend.to_string(), "rule": c.rule})),
                    "default_backend": r.fallback.as_ref().map(|f| f.to_string()),
                    "rule": r.rule.as_deref(),
                }),
                pool.map(|p| pool_json(p)).unwrap_or(Value::Null),
                why,
            )
        }
    };
    let listeners: Vec<String> = l7
        .iter()
        .filter(|(_, a)| port.is_none_or(|p| a.port() == p))
        .map(|(kind, a)| format!("{kind} {a}"))
        .collect();
    json!({
        "generation": snap.generation,
        "layer": "L7",
        "listeners": listeners,
        "request": {"host": host, "path": path},
        "route": route_json,
        "pool": pool_json_v,
        "certificate": cert,
        "plugins": plugins_json,
        "ignored_ingresses": ignored,
        "why": why,
    })
}

/// The active snapshot as JSON. Certificates appear only as their source
/// names; key material never leaves the process.
/// For an L4 answer, says how each listener's address is made reachable
/// (what this running node announces, and whether it does now).
pub fn add_announcements(
    v: &mut Value,
    snap: &Snapshot,
    port: Option<u16>,
    status: &portico_announce::status::Status,
) {
    let (Some(port), Some(listeners)) =
        (port, v.get_mut("listeners").and_then(Value::as_array_mut))
    else {
        return;
    };
    for key in snap.l4.keys().filter(|k| k.addr.port() == port) {
        let name = key.to_string();
        let Some(entry) = listeners
            .iter_mut()
            .find(|e| e["listener"] == name.as_str())
        else {
            continue;
        };
        // NodePorts and other wildcard listeners have no address to announce.
        if key.addr.ip().is_unspecified() {
            continue;
        }
        let how = status
            .addresses
            .iter()
            .find(|a| a.address == key.addr.ip())
            // `owned` false: another edge node holds the address's Lease.
            .map(|a| json!({"how": a.how, "mode": a.mode, "owned": a.owned, "now": status.ready && a.owned}));
        entry["announced"] = how.unwrap_or_else(|| {
            json!(format!(
                "not by this node (announce.mode = {:?}): reachable only if the address is on an interface or routed here",
                status.mode
            ))
        });
    }
}

pub fn snapshot_json(snap: &Snapshot) -> Value {
    let routes: Vec<Value> = snap
        .routes
        .all_routes()
        .iter()
        .map(|r| {
            let mut v = json!({"ingress": r.ingress, "host": r.host, "path": r.path, "path_type": r.kind, "backend": r.backend.to_string()});
            if let Some(rule) = &r.rule {
                // A Gateway API rule: which object, and what it adds.
                v["rule"] = json!(**rule);
            }
            v
        })
        .collect();
    let pools: Vec<Value> = snap.pools.values().map(|p| pool_json(p)).collect();
    let l4: Vec<Value> = snap
        .l4
        .iter()
        .map(|(k, b)| {
            let mut v = json!({"listener": k.to_string(), "backend": b.to_string()});
            if let Some(split) = snap.l4_split.get(k) {
                // Connections are drawn by weight; `backend` is the first.
                v["split"] = json!(split);
            }
            v
        })
        .chain(snap.sni.iter().map(|(k, t)| {
            let routes: Vec<Value> = t
                .routes()
                .iter()
                .map(|r| json!({"hostname": r.hostname, "route": r.route, "backend": r.backend.as_ref().map(|b| b.to_string())}))
                .collect();
            json!({"listener": k.to_string(), "sni_routes": routes})
        }))
        .collect();
    json!({
        "generation": snap.generation,
        "routes": routes,
        "backends": pools,
        "l4_listeners": l4,
        "certificates": snap.certs.summary(),
        "default_certificate_hosts": snap.certs.fallbacks(),
        "problems": snap.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "gateway_api": snap.gateway_api,
        // What this snapshot asks announcement to make reachable, and for
        // whom (the announcers' own state is under `announce`).
        "announced_addresses": snap
            .load_balancer_addresses
            .iter()
            .map(|(ip, owner)| (ip.to_string(), owner.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "ingresses": {
            "served": snap.admitted_ingresses,
            "ignored": snap.ignored_ingresses.iter().map(|i| json!({"ingress": i.ingress, "reason": i.reason, "hosts": i.hosts})).collect::<Vec<_>>(),
        },
    })
}

/// Human-readable rendering of an `explain` answer for the CLI.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    out.push_str(&format!("snapshot generation {}\n", s(&v["generation"])));
    if v["layer"] == "L4" {
        for l in v["listeners"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "listener:    {}\nwhy:         {}\n",
                s(&l["listener"]),
                s(&l["why"])
            ));
            render_pool(&mut out, &l["pool"]);
        }
    } else {
        let r = &v["route"];
        let listeners: Vec<String> = v["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect();
        out.push_str(&format!(
            "listener:    {}\n",
            if listeners.is_empty() {
                "none on that port".to_string()
            } else {
                listeners.join(", ")
            }
        ));
        out.push_str(&format!(
            "request:     host {} path {}\n",
            s(&v["request"]["host"]),
            s(&v["request"]["path"])
        ));
        if r.is_null() {
            out.push_str("route:       none\n");
        } else {
            out.push_str(&format!(
                "route:       Ingress {} host {} path {} ({}, host match {})\n",
                s(&r["ingress"]),
                s(&r["host"]),
                s(&r["path"]),
                s(&r["path_type"]),
                s(&r["host_match"])
            ));
        }
        render_pool(&mut out, &v["pool"]);
        let c = &r["canary"];
        if !c.is_null() {
            let rule = &c["rule"];
            let mut how = Vec::new();
            if !rule["header"].is_null() {
                how.push(format!("header {}", s(&rule["header"])));
            }
            if !rule["cookie"].is_null() {
                how.push(format!("cookie {}", s(&rule["cookie"])));
            }
            how.push(format!(
                "weight {}/{}",
                s(&rule["weight"]),
                s(&rule["weightTotal"])
            ));
            out.push_str(&format!(
                "canary:      Ingress {} to {} ({})\n",
                s(&c["ingress"]),
                s(&c["backend"]),
                how.join(", ")
            ));
        }
        if !r["default_backend"].is_null() {
            out.push_str(&format!(
                "default:     {} (no endpoints, custom errors)\n",
                s(&r["default_backend"])
            ));
        }
        out.push_str(&format!(
            "certificate: {} ({})\n",
            s(&v["certificate"]["source"]),
            s(&v["certificate"]["why"])
        ));
        for i in v["ignored_ingresses"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "not served:  Ingress {} ({})\n",
                s(&i["ingress"]),
                s(&i["reason"])
            ));
        }
        out.push_str(&format!("why:         {}\n", s(&v["why"])));
    }
    let names: Vec<String> = v["plugins"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| format!("{} ({})", s(&p["name"]), s(&p["from"])))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        out.push_str("plugins:     none\n");
    } else {
        out.push_str(&format!("plugins:     {}\n", names.join(", ")));
    }
    out
}

fn render_pool(out: &mut String, pool: &Value) {
    if pool.is_null() {
        return;
    }
    out.push_str(&format!(
        "backend:     {} (policy {}{})\n",
        pool["backend"].as_str().unwrap_or("-"),
        pool["policy"].as_str().unwrap_or("-"),
        if pool["affinity"].is_null() {
            String::new()
        } else {
            format!(
                ", ClientIP affinity {}s",
                pool["affinity"]["timeout_seconds"]
            )
        }
    ));
    let eps = pool["endpoints"].as_array().cloned().unwrap_or_default();
    if eps.is_empty() {
        out.push_str("endpoints:   none\n");
    }
    for e in eps {
        out.push_str(&format!(
            "endpoint:    {} {}{}{}\n",
            e["address"].as_str().unwrap_or("-"),
            e["state"].as_str().unwrap_or("-"),
            e["target"]
                .as_str()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default(),
            if e["cooling_down"] == true {
                " cooling down after connect failures"
            } else {
                ""
            }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use portico_model::publish::Publisher;
    use portico_sources::manifests::{build_store, parse_file, ManifestSet};
    use portico_translate::translate;

    const YAML: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 8000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1], targetRef: {name: web-1}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  tls: [{hosts: [shop.example.com], secretName: missing}]
  rules:
  - host: shop.example.com
    http:
      paths: [{path: /cart, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}]
  - host: empty.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: nothing, port: {number: 80}}}}]
";

    fn snapshot() -> std::sync::Arc<Snapshot> {
        let mut set = ManifestSet::new();
        set.insert("x.yaml".into(), parse_file("x.yaml", YAML));
        let (store, _) = build_store(&set);
        let mut cfg = Config::default();
        cfg.node.addresses = vec!["127.0.0.1".parse().unwrap()];
        Publisher::new(Default::default()).publish(translate(
            &store,
            &crate::settings::translate_settings(&cfg),
        ))
    }

    #[test]
    fn explains_route_backend_endpoints_and_certificate() {
        let snap = snapshot();
        let l7 = [
            ("http", "127.0.0.1:8080".parse().unwrap()),
            ("https", "127.0.0.1:8443".parse().unwrap()),
        ];
        let v = explain(
            &snap,
            "shop.example.com",
            "/cart/1",
            None,
            &l7,
            &Default::default(),
        );
        assert_eq!(v["route"]["ingress"], "shop/shop");
        assert_eq!(v["pool"]["backend"], "shop/web:http");
        assert_eq!(v["pool"]["endpoints"][0]["address"], "10.0.0.1:8080");
        assert_eq!(v["certificate"]["source"], "default");
        assert!(v["certificate"]["why"]
            .as_str()
            .unwrap()
            .contains("shop/missing not found"));
        let text = render(&v);
        assert!(
            text.contains("endpoint:    10.0.0.1:8080 ready (web-1)"),
            "{text}"
        );
    }

    #[test]
    fn explains_404_503_and_l4() {
        let snap = snapshot();
        let v = explain(
            &snap,
            "shop.example.com",
            "/other",
            None,
            &[],
            &Default::default(),
        );
        assert!(v["route"].is_null());
        assert!(v["why"].as_str().unwrap().contains("404"));
        let v = explain(
            &snap,
            "empty.example.com",
            "/",
            None,
            &[],
            &Default::default(),
        );
        assert!(v["why"].as_str().unwrap().contains("503"), "{v}");
        let v = explain(&snap, "", "/", Some(8000), &[], &Default::default());
        assert_eq!(v["layer"], "L4");
        assert_eq!(v["listeners"][0]["listener"], "tcp:127.0.0.1:8000");
    }

    #[test]
    fn config_json_has_no_key_material() {
        let snap = snapshot();
        let text = snapshot_json(&snap).to_string();
        assert!(text.contains("\"generation\":1"));
        assert!(!text.contains("PRIVATE KEY"));
    }
}
