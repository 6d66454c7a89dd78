use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use portico_model::snapshot::{BackendKey, EndpointState, L4ListenerKey, L4Protocol};
use portico_model::store::AnyObject;

/// The store of a multi-document YAML, each object located as
/// `t.yaml:LINE` like the manifests source does (without its file
/// handling).
pub(crate) fn store_of(yaml: &str) -> Store {
    let mut store = Store::default();
    let mut docs: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in yaml.lines().enumerate() {
        if line.starts_with("---") {
            docs.push((i + 2, String::new()));
        } else {
            let doc = &mut docs.last_mut().unwrap().1;
            doc.push_str(line);
            doc.push('\n');
        }
    }
    for (line, doc) in docs {
        let v: serde_yaml::Value = serde_yaml::from_str(&doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap().to_string();
        let mut obj = match kind.as_str() {
            "Service" => AnyObject::Service(Arc::new(serde_yaml::from_value(v).unwrap())),
            "EndpointSlice" => {
                AnyObject::EndpointSlice(Arc::new(serde_yaml::from_value(v).unwrap()))
            }
            "Ingress" => AnyObject::Ingress(Arc::new(serde_yaml::from_value(v).unwrap())),
            "IngressClass" => AnyObject::IngressClass(Arc::new(serde_yaml::from_value(v).unwrap())),
            "Secret" => AnyObject::Secret(Arc::new(serde_yaml::from_value(v).unwrap())),
            "GatewayClass" => AnyObject::GatewayClass(Arc::new(serde_yaml::from_value(v).unwrap())),
            "Gateway" => AnyObject::Gateway(Arc::new(serde_yaml::from_value(v).unwrap())),
            "HTTPRoute" => AnyObject::HTTPRoute(Arc::new(serde_yaml::from_value(v).unwrap())),
            "ReferenceGrant" => {
                AnyObject::ReferenceGrant(Arc::new(serde_yaml::from_value(v).unwrap()))
            }
            "GRPCRoute" => AnyObject::GRPCRoute(Arc::new(serde_yaml::from_value(v).unwrap())),
            "TCPRoute" => AnyObject::TCPRoute(Arc::new(serde_yaml::from_value(v).unwrap())),
            "UDPRoute" => AnyObject::UDPRoute(Arc::new(serde_yaml::from_value(v).unwrap())),
            "TLSRoute" => AnyObject::TLSRoute(Arc::new(serde_yaml::from_value(v).unwrap())),
            "Namespace" => AnyObject::Namespace(Arc::new(serde_yaml::from_value(v).unwrap())),
            other => panic!("no {other} in the store"),
        };
        obj.set_namespace_default();
        store.insert(obj, Some(format!("t.yaml:{line}")));
    }
    store
}

fn settings() -> Settings {
    Settings::new(vec!["127.0.0.1".parse().unwrap()])
}

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: admin, port: 9000, targetPort: 9001}
  - {port: 7000}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-1}
- addresses: [10.1.0.2]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.1.0.3]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.1.0.4]
  conditions: {ready: false}
- addresses: [10.1.0.5]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-b
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8081}
endpoints:
- addresses: [10.1.0.9]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other
  namespace: elsewhere
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 1}
endpoints:
- addresses: [10.9.9.9]
";

fn eps(spec: &SnapshotSpec, key: &str) -> Vec<(SocketAddr, EndpointState)> {
    let (ns, rest) = key.split_once('/').unwrap();
    let (svc, port) = rest.split_once(':').unwrap();
    let k = BackendKey {
        namespace: ns.into(),
        service: svc.into(),
        port: port.into(),
    };
    spec.backends
        .get(&k)
        .unwrap_or_else(|| panic!("no backend {key}: {:?}", spec.backends.keys()))
        .endpoints
        .iter()
        .map(|e| (e.addr, e.state))
        .collect()
}

fn ingress(backend_port: &str) -> String {
    format!(
        "{SERVICE}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: shop, namespace: shop}}
spec:
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port: {backend_port}
"
    )
}

/// Service port by number or name; named targetPort resolved per slice;
/// numeric targetPort used when a slice has no matching port; conditions
/// to states; slices of another namespace ignored.
#[test]
fn service_port_resolution_table() {
    let cases = [
        (
            "{number: 80}",
            "shop/web:http",
            vec![
                ("10.1.0.1:8080", EndpointState::Ready),
                ("10.1.0.2:8080", EndpointState::ServingTerminating),
                ("10.1.0.5:8080", EndpointState::Ready),
                ("10.1.0.9:8081", EndpointState::Ready),
            ],
        ),
        (
            "{name: http}",
            "shop/web:http",
            vec![
                ("10.1.0.1:8080", EndpointState::Ready),
                ("10.1.0.2:8080", EndpointState::ServingTerminating),
                ("10.1.0.5:8080", EndpointState::Ready),
                ("10.1.0.9:8081", EndpointState::Ready),
            ],
        ),
        // The slices carry no "admin" port: numeric targetPort 9001 is used.
        (
            "{number: 9000}",
            "shop/web:admin",
            vec![
                ("10.1.0.1:9001", EndpointState::Ready),
                ("10.1.0.2:9001", EndpointState::ServingTerminating),
                ("10.1.0.5:9001", EndpointState::Ready),
                ("10.1.0.9:9001", EndpointState::Ready),
            ],
        ),
        // Unnamed port without targetPort: targetPort defaults to port.
        (
            "{number: 7000}",
            "shop/web:7000",
            vec![
                ("10.1.0.1:7000", EndpointState::Ready),
                ("10.1.0.2:7000", EndpointState::ServingTerminating),
                ("10.1.0.5:7000", EndpointState::Ready),
                ("10.1.0.9:7000", EndpointState::Ready),
            ],
        ),
    ];
    for (port, key, want) in cases {
        let spec = translate(&store_of(&ingress(port)), &settings());
        let want: Vec<(SocketAddr, EndpointState)> = want
            .into_iter()
            .map(|(a, s)| (a.parse().unwrap(), s))
            .collect();
        assert_eq!(eps(&spec, key), want, "backend port {port}");
        let (route, _) = spec.routes.find("shop.example.com", "/x").unwrap();
        assert_eq!(route.backend.to_string(), key);
        assert!(spec.problems.is_empty(), "{:?}", spec.problems);
    }
}

#[test]
fn missing_service_or_port_gives_empty_backend_and_warning() {
    for (port, msg) in [
        ("{number: 81}", "has no port with number 81"),
        ("{name: nope}", "has no port with name \"nope\""),
    ] {
        let spec = translate(&store_of(&ingress(port)), &settings());
        assert!(
            spec.problems.iter().any(|p| p.message.contains(msg)
                && p.location.contains("Ingress shop/shop")
                && p.location.starts_with("t.yaml:")),
            "{:?}",
            spec.problems
        );
        let (route, _) = spec.routes.find("shop.example.com", "/").unwrap();
        assert!(spec.backends[&route.backend].endpoints.is_empty());
    }
    let spec = translate(
        &store_of(&ingress("{number: 80}").replace("name: web\n", "name: gone\n")),
        &settings(),
    );
    assert!(spec
        .problems
        .iter()
        .any(|p| p.message.contains("Service shop/gone not found")));
}

#[test]
fn ingress_rules_default_backend_and_precedence() {
    let yaml = format!(
        "{SERVICE}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: a, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}}
spec:
  defaultBackend: {{service: {{name: web, port: {{number: 7000}}}}}}
  rules:
  - host: '*.example.com'
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}
  - http:
      paths:
      - {{path: /health, pathType: Exact, backend: {{service: {{name: web, port: {{number: 9000}}}}}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: b, namespace: shop, creationTimestamp: '2025-01-01T00:00:00Z'}}
spec:
  defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}
  rules:
  - host: '*.example.com'
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 9000}}}}}}}}
"
    );
    let spec = translate(&store_of(&yaml), &settings());
    let find = |h: &str, p: &str| spec.routes.find(h, p).map(|(r, _)| r.backend.to_string());
    assert_eq!(
        find("x.example.com", "/a").as_deref(),
        Some("shop/web:http")
    );
    assert_eq!(
        find("other.org", "/health").as_deref(),
        Some("shop/web:admin")
    );
    assert_eq!(
        find("other.org", "/health/x").as_deref(),
        Some("shop/web:7000")
    );
    // The older Ingress keeps the conflicting path and defaultBackend.
    let msgs: Vec<String> = spec.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("already routed by Ingress shop/a")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("Ingress shop/a already sets one")),
        "{msgs:?}"
    );
}

#[test]
fn invalid_paths_and_hosts_are_errors() {
    let yaml = format!(
        "{SERVICE}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: bad, namespace: shop}}
spec:
  rules:
  - host: 'a.*.com'
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
  - host: ok.example.com
    http:
      paths:
      - {{path: nope, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
      - {{path: /r, pathType: Regex, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
      - {{path: /ok, pathType: Exact, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"
    );
    let spec = translate(&store_of(&yaml), &settings());
    let errs: Vec<&str> = spec
        .problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs.iter().any(|m| m.contains("spec.rules[0].host")));
    assert!(errs.iter().any(|m| m.contains("paths[0].path \"nope\"")));
    assert!(errs
        .iter()
        .any(|m| m.contains("paths[1].pathType \"Regex\"")));
    assert!(spec.routes.find("ok.example.com", "/ok").is_some());
}

#[test]
fn l4_listeners_for_load_balancer_and_node_port() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: infra}
spec:
  type: LoadBalancer
  loadBalancerIP: 127.0.0.53
  sessionAffinity: ClientIP
  ports:
  - {name: dns-udp, port: 53, protocol: UDP, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: s, port: 99, protocol: SCTP}
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: infra, creationTimestamp: '2024-01-01T00:00:00Z', annotations: {portico.io/load-balancer: ring-hash}}
spec:
  type: NodePort
  ports:
  - {port: 80, nodePort: 30080}
---
apiVersion: v1
kind: Service
metadata: {name: clash, namespace: infra, creationTimestamp: '2025-01-01T00:00:00Z'}
spec:
  type: NodePort
  ports:
  - {port: 81, nodePort: 30080}
---
apiVersion: v1
kind: Service
metadata: {name: internal, namespace: infra}
spec:
  ports:
  - {port: 80}
";
    let spec = translate(&store_of(yaml), &settings());
    let key = |p: L4Protocol, a: &str| L4ListenerKey {
        protocol: p,
        addr: a.parse().unwrap(),
    };
    let l4: Vec<(L4ListenerKey, String)> =
        spec.l4.iter().map(|(k, v)| (*k, v.to_string())).collect();
    assert_eq!(
        l4,
        vec![
            (
                key(L4Protocol::Tcp, "127.0.0.1:30080"),
                "infra/np:80".into()
            ),
            (
                key(L4Protocol::Tcp, "127.0.0.53:53"),
                "infra/dns:dns-tcp".into()
            ),
            (
                key(L4Protocol::Udp, "127.0.0.1:30053"),
                "infra/dns:dns-udp".into()
            ),
            (
                key(L4Protocol::Udp, "127.0.0.53:53"),
                "infra/dns:dns-udp".into()
            ),
        ]
    );
    let dns = &spec
        .backends
        .values()
        .find(|b| b.key.service == "dns")
        .unwrap();
    assert_eq!(dns.affinity.unwrap().timeout.as_secs(), 10_800);
    let np = &spec
        .backends
        .values()
        .find(|b| b.key.service == "np")
        .unwrap();
    assert_eq!(np.policy, PolicyKind::RingHash);
    let msgs: Vec<String> = spec.problems.iter().map(|p| p.to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("SCTP")), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("Service infra/clash")
                && m.contains("already used by Service infra/np")),
        "{msgs:?}"
    );

    // With node ports off only the LoadBalancer address listens.
    let mut s = settings();
    s.node_ports = false;
    let spec = translate(&store_of(yaml), &s);
    assert_eq!(spec.l4.len(), 2);
}

#[test]
fn tls_secrets_checked_and_fallbacks_explained() {
    let (crt, key) =
        portico_model::certs::self_signed_pem(&["a.example.com", "b.example.com"], None).unwrap();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let yaml = format!(
        "{SERVICE}
---
apiVersion: v1
kind: Secret
metadata: {{name: shared, namespace: shop}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}---
apiVersion: v1
kind: Secret
metadata: {{name: broken, namespace: shop}}
type: kubernetes.io/tls
stringData: {{tls.crt: nope, tls.key: nope}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: tls, namespace: shop}}
spec:
  tls:
  - {{hosts: [a.example.com, b.example.com, c.example.com], secretName: shared}}
  - {{hosts: [d.example.com], secretName: broken}}
  - {{hosts: [e.example.com], secretName: missing}}
  rules:
  - host: a.example.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
",
        indent(&crt),
        indent(&key)
    );
    let spec = translate(&store_of(&yaml), &settings());
    assert_eq!(
        spec.certs.find("a.example.com").unwrap().source,
        "shop/shared"
    );
    assert_eq!(
        spec.certs.find("b.example.com").unwrap().source,
        "shop/shared"
    );
    assert!(spec.certs.find("c.example.com").is_none());
    assert!(spec
        .certs
        .fallback_reason("c.example.com")
        .contains("does not cover c.example.com"));
    assert!(spec
        .certs
        .fallback_reason("d.example.com")
        .contains("tls.crt"));
    assert!(spec
        .certs
        .fallback_reason("e.example.com")
        .contains("shop/missing not found"));
    assert_eq!(errors(&spec.problems), 3, "{:?}", spec.problems);
}

#[test]
fn ingresses_of_other_classes_are_not_served() {
    let yaml = format!(
        "{SERVICE}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: other}}
spec: {{controller: example.com/other}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: x, namespace: shop}}
spec:
  ingressClassName: other
  defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}
"
    );
    // The decision is the admission plugin's (`ingress-class`, tested in
    // its crate); this checks that translation obeys it.
    struct NotOther;
    impl portico_model::control::IngressAdmission for NotOther {
        fn admit(
            &self,
            ing: &k8s_openapi::api::networking::v1::Ingress,
            _: &[&k8s_openapi::api::networking::v1::IngressClass],
        ) -> portico_model::control::Admission {
            match ing
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref())
            {
                Some("other") => portico_model::control::Admission::Ignore("other".into()),
                _ => portico_model::control::Admission::Admit("ours".into()),
            }
        }
    }
    let store = store_of(&yaml);
    let mut s = settings();
    assert!(translate(&store, &s).routes.find("any", "/").is_some());
    s.admission = Box::new(NotOther);
    let spec = translate(&store, &s);
    assert!(spec.routes.find("any", "/").is_none());
    // Left out, but not silently: the Ingress, the admission's reason and
    // the hosts it names are in the spec for check, explain and metrics.
    assert_eq!(spec.admitted_ingresses, 0);
    assert_eq!(spec.ignored_ingresses.len(), 1);
    let ignored = &spec.ignored_ingresses[0];
    assert_eq!(ignored.ingress, "shop/x");
    assert_eq!(ignored.reason, "other");
    assert_eq!(ignored.hosts, ["*"], "a defaultBackend takes any host");
    assert!(
        ignored.location.contains("Ingress shop/x"),
        "{}",
        ignored.location
    );
}

/// An endpoint-only refresh gives exactly what a full translation gives.
#[test]
fn endpoint_refresh_equals_full_translation() {
    let before = ingress("{name: http}");
    let after = before
        .replace("- addresses: [10.1.0.1]\n  conditions: {ready: true}", "- addresses: [10.1.0.7, not-an-ip]\n  conditions: {ready: true}")
        .replace("- addresses: [10.1.0.9]\n", "- addresses: [10.1.0.9]\n- addresses: [10.1.0.10]\n  conditions: {ready: false, serving: true, terminating: true}\n")
        + "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-fqdn, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: FQDN\nendpoints: [{addresses: [a.example.com]}]\n";
    assert_ne!(before, after);
    let (s1, s2) = (store_of(&before), store_of(&after));
    let full = translate(&s2, &settings());
    let mut inc = translate(&s1, &settings());
    assert_ne!(inc.backends, full.backends, "the change must matter");
    let services = [portico_model::store::ObjectKey::new("shop", "web")]
        .into_iter()
        .collect();
    let rebuilt = refresh_endpoints(&mut inc, &s2, &settings(), &services);
    assert!(rebuilt.iter().all(|k| k.service == "web"));
    assert!(!rebuilt.is_empty());
    assert_eq!(inc.backends, full.backends);
    assert_eq!(inc.problems, full.problems);
    assert_eq!(inc.backend_problems, full.backend_problems);
    assert!(
        full.problems.iter().any(|p| p.message.contains("FQDN")),
        "{:?}",
        full.problems
    );
    assert!(full
        .problems
        .iter()
        .any(|p| p.message.contains("not-an-ip")));

    // And back again: the warnings of the old slices disappear.
    let back = translate(&s1, &settings());
    let mut inc2 = full.clone();
    refresh_endpoints(&mut inc2, &s1, &settings(), &services);
    assert_eq!(inc2.backends, back.backends);
    assert_eq!(inc2.problems, back.problems);
}

#[test]
fn external_name_backends_use_resolved_addresses_or_the_literal_ip() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: Api.Example.COM., ports: [{name: http, port: 8443}]}
---
apiVersion: v1
kind: Service
metadata: {name: lit, namespace: shop}
spec: {type: ExternalName, externalName: 192.0.2.7, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: x, namespace: shop}
spec:
  rules:
  - host: a.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: ext, port: {name: http}}}}
  - host: b.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: lit, port: {number: 80}}}}
";
    let store = store_of(yaml);
    // Only real names need resolving, normalised.
    assert_eq!(
        crate::backend::external_names(&store),
        ["api.example.com".to_string()].into_iter().collect()
    );
    // Not resolved yet: no endpoints, and a warning saying why.
    let spec = translate(&store, &settings());
    assert!(eps(&spec, "shop/ext:http").is_empty());
    assert!(spec.problems.iter().any(|p| p
        .message
        .contains("ExternalName api.example.com: no addresses yet")));
    assert_eq!(
        eps(&spec, "shop/lit:80"),
        vec![("192.0.2.7:80".parse().unwrap(), EndpointState::Ready)]
    );
    // Resolved: one endpoint per address on the Service port.
    let mut s = settings();
    s.resolved_names.insert(
        "api.example.com".into(),
        vec![
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        ],
    );
    let spec = translate(&store, &s);
    let got: Vec<SocketAddr> = eps(&spec, "shop/ext:http")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        got,
        vec![
            "198.51.100.1:8443".parse().unwrap(),
            "198.51.100.2:8443".parse::<SocketAddr>().unwrap()
        ]
    );
}

#[test]
fn load_balancer_addresses_are_announced_unless_the_service_opts_out() {
    let svc = |name: &str, ip: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns{extra}}}\n\
             spec:\n  type: LoadBalancer\n  loadBalancerIP: {ip}\n  ports: [{{port: 80}}]\n---\n"
        )
    };
    let yaml = svc("a", "192.0.2.10", "")
        + &svc("b", "192.0.2.11", ", annotations: {portico.io/announce: \"false\"}")
        + &svc("c", "192.0.2.12", ", annotations: {portico.io/announce: \"no\"}")
        // No address of its own: it listens on the node's, which are not
        // announced.
        + "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: ns}\n\
           spec:\n  type: LoadBalancer\n  ports: [{port: 81}]\n";
    let spec = translate(&store_of(&yaml), &settings());
    let announced: Vec<(String, String)> = spec
        .load_balancer_addresses
        .iter()
        .map(|(ip, k)| (ip.to_string(), k.to_string()))
        .collect();
    assert_eq!(
        announced,
        [
            ("192.0.2.10".to_string(), "Service ns/a".to_string()),
            ("192.0.2.12".to_string(), "Service ns/c".to_string())
        ]
    );
    assert!(spec
        .problems
        .iter()
        .any(|p| p.message.contains("portico.io/announce") && p.message.contains("\"no\"")));
    // Opting out of announcement is not opting out of serving.
    assert!(spec
        .l4
        .keys()
        .any(|k| k.addr == "192.0.2.11:80".parse().unwrap()));
}

#[test]
fn a_nodes_address_in_a_service_status_is_never_announced() {
    // The leader's fallback: its node address in the status of a Service
    // without an address of its own. Another node must not take it.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\n\
                spec:\n  type: LoadBalancer\n  ports: [{port: 80}]\n\
                status: {loadBalancer: {ingress: [{ip: 10.0.0.1}, {ip: 192.0.2.10}]}}\n";
    let mut s = settings();
    s.cluster_node_addresses = ["10.0.0.1".parse().unwrap()].into();
    let spec = translate(&store_of(yaml), &s);
    let announced: Vec<String> = spec
        .load_balancer_addresses
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(announced, ["192.0.2.10"]);
    // Nor is it listened on here (it is another node's).
    assert!(!spec
        .l4
        .keys()
        .any(|k| k.addr.ip() == "10.0.0.1".parse::<IpAddr>().unwrap()));
    // Without the Node's address known, it would be.
    let spec = translate(&store_of(yaml), &settings());
    assert_eq!(spec.load_balancer_addresses.len(), 2);
    // While the Nodes are being listed, nothing from a status is.
    let mut s = settings();
    s.cluster_nodes_known = false;
    assert!(translate(&store_of(yaml), &s)
        .load_balancer_addresses
        .is_empty());
}
