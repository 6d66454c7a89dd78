//! Table tests of the Gateway API translation: attachment, hostnames,
//! matching precedence, filters, backends and references, each checked
//! through the route table the data plane reads.

use portico_model::route_rule::{RequestFacts, RequestParts, WeightedPick};
use portico_model::snapshot::SnapshotSpec;

use crate::tests::store_of;
use crate::{translate, Settings};

/// A class of ours and one of another controller; Gateway `infra/gw`
/// with an HTTP listener on 80 open to all namespaces and one on 8080
/// for its own; Services `shop/web` and `shop/api`, `other/far`.
const BASE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: portico
  listeners:
  - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
  - {name: own, protocol: HTTP, port: 8080}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: infra}
spec:
  gatewayClassName: theirs
  listeners:
  - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: far, namespace: other}
spec:
  ports: [{name: http, port: 80}]
";

fn settings() -> Settings {
    let mut s = Settings::new(vec!["127.0.0.1".parse().unwrap()]);
    s.http_ports = vec![80, 8080];
    s.https_ports = vec![443];
    s.plugins = ["auth".to_string()].into_iter().collect();
    s
}

fn spec_of(extra: &str) -> SnapshotSpec {
    translate(&store_of(&format!("{BASE}---\n{extra}")), &settings())
}

/// An HTTPRoute in `shop` named `name` with these spec lines.
fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}\n"
    )
}

struct Req<'a> {
    host: &'a str,
    path: &'a str,
    port: u16,
    method: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

fn get<'a>(host: &'a str, path: &'a str) -> Req<'a> {
    Req {
        host,
        path,
        port: 80,
        method: "GET",
        headers: &[],
    }
}

/// `namespace/name#rule` of the route taking the request, or `None`.
fn routed(spec: &SnapshotSpec, req: &Req<'_>) -> Option<String> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in req.headers {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let facts = RequestFacts {
        port: Some(req.port),
        tls: req.port == 443,
        request: Some(RequestParts {
            method: req.method,
            headers: &headers,
            query: req.path.split_once('?').map(|(_, q)| q),
        }),
    };
    spec.routes
        .find_request(req.host, req.path, &facts)
        .map(|(r, _)| match &r.rule {
            Some(rule) => format!("{}#{}", r.ingress, rule.rule),
            None => r.ingress.clone(),
        })
}

fn problems(spec: &SnapshotSpec) -> String {
    spec.problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn routes_attach_only_to_portico_gateways_and_allowed_listeners() {
    let spec = spec_of(&[
        route("a", "  parentRefs: [{name: gw, namespace: infra}]\n  hostnames: [a.test]\n  rules: [{backendRefs: [{name: web, port: 80}]}]"),
        route("theirs", "  parentRefs: [{name: other, namespace: infra}]\n  hostnames: [t.test]\n  rules: [{backendRefs: [{name: web, port: 80}]}]"),
        route("own", "  parentRefs: [{name: gw, namespace: infra, sectionName: own}]\n  hostnames: [o.test]\n  rules: [{backendRefs: [{name: web, port: 80}]}]"),
    ]
    .join("---\n"));
    // Attached to the listener open to all namespaces, on its port only.
    assert_eq!(
        routed(&spec, &get("a.test", "/x")).as_deref(),
        Some("shop/a#0")
    );
    assert_eq!(
        routed(
            &spec,
            &Req {
                port: 8080,
                ..get("a.test", "/x")
            }
        ),
        None
    );
    // Another controller's Gateway: nothing, and no complaint either.
    assert_eq!(routed(&spec, &get("t.test", "/")), None);
    assert!(!problems(&spec).contains("theirs"), "{}", problems(&spec));
    // `own` admits routes of its Gateway's namespace only.
    assert_eq!(
        routed(
            &spec,
            &Req {
                port: 8080,
                ..get("o.test", "/")
            }
        ),
        None
    );
    let st = &spec.gateway_api.routes[&portico_model::store::ObjectKey::new("shop", "own")];
    let parent = &st["infra/gw/own"];
    assert!(!parent.accepted.status);
    assert_eq!(parent.accepted.reason, "NotAllowedByListeners");
    // attachedRoutes counts per listener.
    let gw = &spec.gateway_api.gateways[&portico_model::store::ObjectKey::new("infra", "gw")];
    assert_eq!(gw.listeners["http"].attached_routes, 1);
    assert_eq!(gw.listeners["own"].attached_routes, 0);
    assert!(spec.gateway_api.classes.contains_key("portico"));
    assert!(!spec.gateway_api.classes.contains_key("theirs"));
}

#[test]
fn listeners_portico_cannot_serve_are_refused_with_the_spec_reasons() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: odd, namespace: infra}
spec:
  gatewayClassName: portico
  listeners:
  - {name: p9000, protocol: HTTP, port: 9000}
  - {name: tcp80, protocol: TCP, port: 80}
  - {name: tls, protocol: TLS, port: 8443}
  - {name: quic, protocol: example.com/QUIC, port: 8444}
  - {name: dup-a, protocol: HTTP, port: 80, hostname: d.test}
  - {name: dup-b, protocol: HTTP, port: 80, hostname: d.test}
  - {name: nocert, protocol: HTTPS, port: 443}
";
    let spec = spec_of(yaml);
    let gw = &spec.gateway_api.gateways[&portico_model::store::ObjectKey::new("infra", "odd")];
    let reason = |l: &str| gw.listeners[l].accepted.reason.clone();
    assert_eq!(reason("p9000"), "PortUnavailable");
    assert_eq!(reason("tcp80"), "PortUnavailable");
    // The default TLS mode is Terminate, which needs a certificate.
    assert_eq!(reason("tls"), "Invalid");
    assert_eq!(reason("quic"), "UnsupportedProtocol");
    assert_eq!(reason("nocert"), "Invalid");
    assert!(gw.listeners["dup-a"].conflicted.is_none());
    // Conflicted is True when there is a conflict.
    assert_eq!(
        gw.listeners["dup-b"]
            .conflicted
            .as_ref()
            .map(|c| (c.status, c.reason.as_str())),
        Some((true, "HostnameConflict"))
    );
    let text = problems(&spec);
    assert!(
        text.contains("t.yaml:") && text.contains("Gateway infra/odd"),
        "{text}"
    );
    assert!(
        text.contains("port 9000 is not one of Portico's HTTP ports"),
        "{text}"
    );
}

#[test]
fn hostnames_intersect_with_the_listener() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wild, namespace: shop}
spec:
  gatewayClassName: portico
  listeners:
  - {name: w, protocol: HTTP, port: 8080, hostname: '*.example.com'}
---
".to_string()
        + &route("r", "  parentRefs: [{name: wild}]\n  hostnames: [a.example.com, other.test]\n  rules: [{backendRefs: [{name: web, port: 80}]}]")
        + "---\n"
        + &route("any", "  parentRefs: [{name: wild}]\n  rules: [{matches: [{path: {type: PathPrefix, value: /any}}], backendRefs: [{name: api, port: 80}]}]")
        + "---\n"
        + &route("none", "  parentRefs: [{name: wild}]\n  hostnames: [x.test]\n  rules: [{backendRefs: [{name: web, port: 80}]}]");
    let spec = spec_of(&yaml);
    let on = |host: &'static str, path: &'static str| {
        routed(
            &spec,
            &Req {
                port: 8080,
                ..get(host, path)
            },
        )
    };
    assert_eq!(on("a.example.com", "/").as_deref(), Some("shop/r#0"));
    assert_eq!(
        on("other.test", "/"),
        None,
        "outside the listener's hostname"
    );
    // A route without hostnames takes the listener's, which covers
    // several labels in the Gateway API.
    assert_eq!(
        on("b.c.example.com", "/any/x").as_deref(),
        Some("shop/any#0")
    );
    assert_eq!(on("example.com", "/any"), None);
    let none = &spec.gateway_api.routes[&portico_model::store::ObjectKey::new("shop", "none")];
    assert_eq!(
        none["shop/wild"].accepted.reason,
        "NoMatchingListenerHostname"
    );
}

#[test]
fn matches_follow_the_spec_precedence() {
    // One host; each rule a different kind of match, added newest
    // first so the table cannot rely on insertion order.
    let rules = "  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [p.test]
  rules:
  - {matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: PathPrefix, value: /api}}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: Exact, value: /api}}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: PathPrefix, value: /api}, method: POST}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-A, value: '1'}]}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: q, value: '1'}]}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: RegularExpression, value: '/v[0-9]+/.*'}}], backendRefs: [{name: web, port: 80}]}
  - {matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-c, type: RegularExpression, value: 'ab+'}]}], backendRefs: [{name: web, port: 80}]}";
    let spec = spec_of(&route("p", rules));
    let r = |req: Req<'_>| routed(&spec, &req).map(|s| s.trim_start_matches("shop/p#").to_string());
    let with = |path: &'static str, headers: &'static [(&'static str, &'static str)]| Req {
        headers,
        ..get("p.test", path)
    };
    let cases: &[(Req<'_>, Option<&str>)] = &[
        (get("p.test", "/other"), Some("0")),
        (get("p.test", "/api/x"), Some("1")),
        (get("p.test", "/apix"), Some("0")),
        // Exact wins over every prefix of the same path.
        (with("/api", &[("x-a", "1"), ("x-b", "2")]), Some("2")),
        // A method beats headers.
        (
            Req {
                method: "POST",
                ..with("/api/x", &[("x-a", "1")])
            },
            Some("3"),
        ),
        // More headers beat fewer; header names are case-insensitive.
        (with("/api/x", &[("X-A", "1"), ("x-b", "2")]), Some("5")),
        (with("/api/x", &[("x-a", "1")]), Some("4")),
        (with("/api/x", &[("x-a", "2")]), Some("1")),
        // Headers beat query parameters.
        (with("/api/x?q=1", &[("x-a", "1")]), Some("4")),
        (get("p.test", "/api/x?q=1"), Some("6")),
        (get("p.test", "/api/x?q=2"), Some("1")),
        // Regular expressions match the whole path.
        (get("p.test", "/v2/x"), Some("7")),
        (get("p.test", "/a/v2/x"), Some("0")),
        (with("/api/x", &[("x-c", "abbb")]), Some("8")),
        (with("/api/x", &[("x-c", "abc")]), Some("1")),
    ];
    for (req, want) in cases {
        assert_eq!(
            r(Req { ..*req }).as_deref(),
            *want,
            "{} {}{} {:?}",
            req.method,
            req.host,
            req.path,
            req.headers
        );
    }
}

#[test]
fn equal_matches_go_to_the_oldest_route_then_by_name() {
    let older = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: zz-old, namespace: shop, creationTimestamp: '2020-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [t.test]
  rules: [{backendRefs: [{name: web, port: 80}]}]
";
    let newer = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: aa-new, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [t.test]
  rules: [{backendRefs: [{name: api, port: 80}]}]
";
    let spec = spec_of(&format!("{newer}---\n{older}"));
    assert_eq!(
        routed(&spec, &get("t.test", "/")).as_deref(),
        Some("shop/zz-old#0")
    );
    assert!(problems(&spec).contains("already routed by HTTPRoute shop/zz-old"));
}

#[test]
fn backends_weights_and_references() {
    let grant = "apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: let-shop, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: '', kind: Service}]
";
    let rules = "  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [b.test]
  rules:
  - matches: [{path: {value: /split}}]
    backendRefs: [{name: web, port: 80, weight: 3}, {name: api, port: 80, weight: 1}, {name: api, port: 80, weight: 0}]
  - matches: [{path: {value: /missing}}]
    backendRefs: [{name: web, port: 80}, {name: nowhere, port: 80}]
  - matches: [{path: {value: /far}}]
    backendRefs: [{name: far, namespace: other, port: 80}]
  - matches: [{path: {value: /none}}]
  - matches: [{path: {value: /kind}}]
    backendRefs: [{group: example.com, kind: Bucket, name: b}]";
    let without = spec_of(&route("b", rules));
    let with = spec_of(&format!("{grant}---\n{}", route("b", rules)));
    let rule = |spec: &SnapshotSpec, path: &str| {
        spec.routes
            .find("b.test", path)
            .unwrap()
            .0
            .rule
            .clone()
            .unwrap()
    };
    let split = rule(&without, "/split");
    assert_eq!(split.weighted.len(), 2, "zero weights dropped");
    let draws: Vec<String> = (0..4)
        .map(|roll| match split.pick(|_| roll) {
            Some(WeightedPick::Backend(b)) => b.service.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(draws, ["web", "web", "web", "api"]);
    // A missing Service takes its share as 500s.
    assert_eq!(
        rule(&without, "/missing").pick(|_| 1),
        Some(WeightedPick::Invalid)
    );
    // Another namespace: refused without a ReferenceGrant, served with one.
    assert_eq!(
        rule(&without, "/far").pick(|_| 0),
        Some(WeightedPick::Invalid)
    );
    let far = rule(&with, "/far");
    assert!(
        far.weighted.is_empty(),
        "one valid backend is the route's own"
    );
    assert_eq!(
        with.routes
            .find("b.test", "/far")
            .unwrap()
            .0
            .backend
            .service,
        "far"
    );
    // No backend, or not a Service: 500.
    assert_eq!(
        rule(&without, "/none").pick(|_| 0),
        Some(WeightedPick::Invalid)
    );
    assert_eq!(
        rule(&without, "/kind").pick(|_| 0),
        Some(WeightedPick::Invalid)
    );
    let text = problems(&without);
    assert!(text.contains("Service shop/nowhere"), "{text}");
    assert!(
        text.contains("no ReferenceGrant there allows HTTPRoutes of shop"),
        "{text}"
    );
    assert!(
        text.contains("example.com/Bucket is not a Service"),
        "{text}"
    );
    let st = &without.gateway_api.routes[&portico_model::store::ObjectKey::new("shop", "b")];
    assert!(!st["infra/gw"].resolved_refs.status);
}

#[test]
fn filters_become_the_rule_action() {
    let rules = "  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [f.test]
  rules:
  - matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Env, value: prod}], add: [{name: x-add, value: a}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-served-by, value: portico}]}
    - type: URLRewrite
      urlRewrite: {hostname: internal.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}
    - type: ExtensionRef
      extensionRef: {group: portico.io, kind: Plugin, name: auth}
    backendRefs: [{name: web, port: 80}]
    timeouts: {request: 10s, backendRequest: 2s}
  - matches: [{path: {value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: api, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: api, port: 80}, percent: 25}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: api, port: 80}, fraction: {numerator: 1, denominator: 3}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: gone, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: far, namespace: other, port: 80}}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /unknown-plugin}}]
    filters: [{type: ExtensionRef, extensionRef: {group: portico.io, kind: Plugin, name: nope}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /exact}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}]
    backendRefs: [{name: web, port: 80}]";
    let spec = spec_of(&route("f", rules));
    let found = |path: &str| spec.routes.find("f.test", path).map(|(r, _)| r.clone());
    let old = found("/old/x").unwrap();
    let redirect = old.rule.as_ref().unwrap().redirect.clone().unwrap();
    assert_eq!(
        redirect.location("http", "f.test", 80, "/old/x", None, &old.path),
        "https://f.test/new/x"
    );
    assert_eq!(redirect.status, 301);
    let api = found("/api/y").unwrap();
    let a = api.rule.as_ref().unwrap();
    assert_eq!(
        a.request_headers.set,
        [("x-env".to_string(), "prod".to_string())]
    );
    assert_eq!(
        a.request_headers.add,
        [("x-add".to_string(), "a".to_string())]
    );
    assert_eq!(a.request_headers.remove, ["x-drop"]);
    assert_eq!(a.response_headers.set.len(), 1);
    let rewrite = a.rewrite.as_ref().unwrap();
    assert_eq!(rewrite.hostname.as_deref(), Some("internal.test"));
    assert_eq!(
        rewrite.path.as_ref().unwrap().apply("/api/y", &api.path),
        "/v1/y"
    );
    assert_eq!(api.plugins, ["auth"]);
    assert_eq!(
        (a.request_timeout_ms, a.backend_timeout_ms),
        (Some(10_000), Some(2_000))
    );
    assert!(!api.forwards_plainly(false));
    // Mirrors: those that resolve, with their shares; the rule serves.
    let mirror = found("/mirror").unwrap();
    let m = mirror.rule.as_ref().unwrap();
    assert_eq!(
        m.mirrors
            .iter()
            .map(|m| (m.backend.service.as_str(), m.numerator, m.denominator))
            .collect::<Vec<_>>(),
        [("api", 1, 1), ("api", 25, 100), ("api", 1, 3)]
    );
    assert_eq!(mirror.backend.service, "web");
    assert!(!mirror.forwards_plainly(false));
    // What Portico cannot apply answers 500 rather than being skipped.
    let r = found("/unknown-plugin").unwrap();
    assert_eq!(
        r.rule.as_ref().unwrap().pick(|_| 0),
        Some(WeightedPick::Invalid)
    );
    // ReplacePrefixMatch on an Exact match: the match is refused.
    assert!(found("/exact").is_none_or(|r| r.path != "/exact"));
    let text = problems(&spec);
    for want in [
        "spec.rules[2].filters[3].requestMirror.backendRef: ",
        "spec.rules[2].filters[4].requestMirror.backendRef: Service other/far is in another namespace",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    assert!(text.contains("requests are not mirrored"), "{text}");
    // A mirror that does not resolve shows in ResolvedRefs.
    let status = format!("{:?}", spec.gateway_api.routes);
    assert!(status.contains("BackendNotFound"), "{status}");
    assert!(
        text.contains("plugin \"nope\", which is not configured"),
        "{text}"
    );
    assert!(
        text.contains("ReplacePrefixMatch needs a PathPrefix match"),
        "{text}"
    );
}

#[test]
fn cors_filters_become_route_policy_and_bad_ones_answer_500() {
    let rules = r#"  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [c.test]
  rules:
  - matches: [{path: {value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://www.foo.com", "https://*.bar.com"]
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1, x-header-2]
        exposeHeaders: [x-header-3]
        allowCredentials: true
        maxAge: 3600
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /defaults}}]
    filters: [{type: CORS, cors: {allowOrigins: ["*"], allowMethods: ["*"]}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /bad-origin}}]
    filters: [{type: CORS, cors: {allowOrigins: ["ftp://x.test"]}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /bad-wildcard}}]
    filters: [{type: CORS, cors: {allowOrigins: ["https://a.test"], allowMethods: ["*", GET]}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /bad-header}}]
    filters: [{type: CORS, cors: {allowOrigins: ["https://a.test"], allowHeaders: ["x y"]}}]
    backendRefs: [{name: web, port: 80}]"#;
    let spec = spec_of(&route("c", rules));
    let found = |path: &str| {
        spec.routes
            .find("c.test", path)
            .map(|(r, _)| r.clone())
            .unwrap()
    };
    let r = found("/cors");
    assert!(!r.forwards_plainly(false));
    let cors = r.policy.as_ref().unwrap().policy.cors.clone().unwrap();
    assert_eq!(cors.allow_methods, "GET, OPTIONS");
    assert_eq!(cors.allow_headers, "x-header-1, x-header-2");
    assert_eq!(cors.exposed(), Some("x-header-3"));
    assert_eq!((cors.max_age_seconds, cors.preflight_status), (3600, 200));
    assert!(cors.allow_credentials);
    assert_eq!(
        cors.allow("https://xpto.www.bar.com").as_deref(),
        Some("https://xpto.www.bar.com")
    );
    assert_eq!(cors.allow("https://foobar.com"), None);
    // Its backend is the rule's: CORS does not replace routing.
    assert_eq!(r.rule.as_ref().unwrap().pick(|_| 0), None);
    let d = found("/defaults")
        .policy
        .as_ref()
        .unwrap()
        .policy
        .cors
        .clone()
        .unwrap();
    assert_eq!((d.max_age_seconds, d.allow_credentials), (5, false));
    assert_eq!(d.allow("https://any.test").as_deref(), Some("*"));
    assert_eq!(d.allow_methods_for(Some("PUT")), Some("PUT"));
    for path in ["/bad-origin", "/bad-wildcard", "/bad-header"] {
        let r = found(path);
        assert_eq!(
            r.rule.as_ref().unwrap().pick(|_| 0),
            Some(WeightedPick::Invalid),
            "{path}"
        );
    }
    let text = problems(&spec);
    for want in [
        "spec.rules[2].filters[0]: cors.allowOrigins \"ftp://x.test\" is not",
        "spec.rules[3].filters[0]: cors.allowMethods cannot have `*` beside other values",
        "spec.rules[4].filters[0]: cors.allowHeaders \"x y\" is not a token",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}

#[test]
fn backend_ref_filters_edit_headers_when_their_backend_is_drawn() {
    let rules = "  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [b.test]
  rules:
  - matches: [{path: {value: /one}}]
    backendRefs:
    - name: web
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Backend, value: web}]}}
      - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-from, value: web}]}}
  - matches: [{path: {value: /two}}]
    backendRefs:
    - {name: web, port: 80, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-b, value: web}]}}]}
    - {name: api, port: 80}
  - matches: [{path: {value: /redirecting}}]
    backendRefs:
    - {name: web, port: 80, filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]}";
    let spec = spec_of(&route("b", rules));
    let found = |path: &str| {
        spec.routes
            .find("b.test", path)
            .map(|(r, _)| r.clone())
            .unwrap()
    };
    let one = found("/one");
    let w = &one.rule.as_ref().unwrap().weighted;
    // A single backend with filters is kept as a draw of one.
    assert_eq!(w.len(), 1);
    assert_eq!(
        w[0].request_headers.set,
        [("x-backend".to_string(), "web".to_string())]
    );
    assert_eq!(
        w[0].response_headers.add,
        [("x-from".to_string(), "web".to_string())]
    );
    assert!(!one.forwards_plainly(false));
    let two = found("/two");
    let w = &two.rule.as_ref().unwrap().weighted;
    assert_eq!(w.len(), 2);
    assert_eq!(w[0].request_headers.add.len(), 1);
    assert!(w[1].request_headers.is_empty());
    assert_eq!(
        found("/redirecting").rule.as_ref().unwrap().pick(|_| 0),
        Some(WeightedPick::Invalid)
    );
    let text = problems(&spec);
    assert!(
        text.contains("spec.rules[2].backendRefs[0].filters[0]: a RequestRedirect filter on a backendRef is not supported"),
        "{text}"
    );
}

#[test]
fn a_plain_route_keeps_the_fast_path() {
    let spec = spec_of(&route(
        "plain",
        "  parentRefs: [{name: gw, namespace: infra}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    ));
    let (r, _) = spec.routes.find("any.test", "/").unwrap();
    assert!(r.forwards_plainly(false));
    // Its listener condition still holds on the fast path, which knows
    // only the port.
    let on = |port| RequestFacts {
        port: Some(port),
        tls: false,
        request: None,
    };
    assert!(spec.routes.find_request("any.test", "/", &on(80)).is_some());
    assert!(spec
        .routes
        .find_request("any.test", "/", &on(8080))
        .is_none());
}

#[test]
fn https_listeners_take_certificates_from_secrets_and_grants() {
    let (crt, key) = portico_model::certs::self_signed_pem(&["*.example.com"], None).unwrap();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let secret = |ns: &str, name: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&crt),
            indent(&key)
        )
    };
    let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: infra}
spec:
  gatewayClassName: portico
  listeners:
  - name: local
    protocol: HTTPS
    port: 443
    hostname: a.example.com
    tls: {certificateRefs: [{name: cert}]}
  - name: remote
    protocol: HTTPS
    port: 443
    hostname: b.example.com
    tls: {certificateRefs: [{name: cert, namespace: certs}]}
";
    let grant = "apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: gateways, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: '', kind: Secret, name: cert}]
";
    let base = format!(
        "{gateway}---\n{}---\n{}",
        secret("infra", "cert"),
        secret("certs", "cert")
    );
    let without = spec_of(&base);
    assert!(without.certs.find("a.example.com").is_some());
    assert!(without.certs.find("b.example.com").is_none());
    let gw = &without.gateway_api.gateways[&portico_model::store::ObjectKey::new("infra", "tls")];
    assert_eq!(
        gw.listeners["remote"].resolved_refs.reason,
        "RefNotPermitted"
    );
    assert!(!gw.listeners["remote"].programmed.status);
    let with = spec_of(&format!("{base}---\n{grant}"));
    assert!(with.certs.find("b.example.com").is_some());
    assert!(with
        .referenced_secrets
        .contains(&portico_model::store::ObjectKey::new("certs", "cert")));
}

#[test]
fn tcp_and_udp_routes_become_l4_listeners_on_the_node() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4, namespace: shop}
spec:
  gatewayClassName: portico
  listeners:
  - {name: db, protocol: TCP, port: 5432}
  - {name: dns, protocol: UDP, port: 5353}
  - {name: spare, protocol: TCP, port: 6000}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: db, namespace: shop, creationTimestamp: '2020-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: l4, sectionName: db}]
  rules: [{backendRefs: [{name: web, port: 80}, {name: api, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: late, namespace: shop, creationTimestamp: '2021-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: l4, sectionName: db}]
  rules: [{backendRefs: [{name: api, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {name: dns, namespace: shop}
spec:
  parentRefs: [{name: l4, port: 5353}]
  rules: [{backendRefs: [{name: api, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: wrong-kind, namespace: shop}
spec:
  parentRefs: [{name: l4, sectionName: dns}]
  rules: [{backendRefs: [{name: api, port: 80}]}]
";
    let spec = spec_of(yaml);
    let l4: std::collections::BTreeMap<String, String> = spec
        .l4
        .iter()
        .map(|(k, b)| (k.to_string(), b.service.clone()))
        .collect();
    assert_eq!(
        l4.get("tcp:127.0.0.1:5432").map(String::as_str),
        Some("web"),
        "{l4:?}"
    );
    assert_eq!(
        l4.get("udp:127.0.0.1:5353").map(String::as_str),
        Some("api"),
        "{l4:?}"
    );
    assert!(
        !l4.contains_key("tcp:127.0.0.1:6000"),
        "no route, no listener"
    );
    let key = |n: &str| portico_model::store::ObjectKey::new("shop", n);
    // A later route on the same listener: attached (the spec), warned,
    // and its connections go to the older one.
    let late = &spec.gateway_api.tcp_routes[&key("late")]["shop/l4/db"];
    assert!(late.accepted.status, "{late:?}");
    assert!(
        problems(&spec).contains("listener db already carries TCPRoute shop/db, which is older")
    );
    assert_eq!(
        l4.get("tcp:127.0.0.1:5432").map(String::as_str),
        Some("web")
    );
    let wrong = &spec.gateway_api.tcp_routes[&key("wrong-kind")]["shop/l4/dns"];
    assert_eq!(wrong.accepted.reason, "NotAllowedByListeners");
    assert!(
        spec.gateway_api.udp_routes[&key("dns")]["shop/l4:5353"]
            .accepted
            .status
    );
    let gw = &spec.gateway_api.gateways[&key("l4")];
    assert_eq!(gw.listeners["db"].attached_routes, 2);
    assert_eq!(gw.listeners["dns"].attached_routes, 1);
    // Two backends: connections split by weight (1 each by default).
    let split: Vec<(String, u32)> = spec
        .l4_split
        .iter()
        .find(|(k, _)| k.to_string() == "tcp:127.0.0.1:5432")
        .map(|(_, s)| {
            s.iter()
                .map(|w| (w.backend.as_ref().unwrap().service.clone(), w.weight))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(split, [("web".to_string(), 1), ("api".to_string(), 1)]);
    assert!(!spec.l4_split.keys().any(|k| k.addr.port() == 5353));
}

#[test]
fn namespace_selectors_choose_who_may_attach() {
    let yaml = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: sel, namespace: infra}
spec:
  gatewayClassName: portico
  listeners:
  - name: team
    protocol: HTTP
    port: 80
    hostname: team.test
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: shop}}}}
  - name: byname
    protocol: HTTP
    port: 80
    hostname: byname.test
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [other, ghost]}]}
  - name: bad
    protocol: HTTP
    port: 8080
    allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: [{key: env, operator: In}]}}}
  - name: none
    protocol: HTTP
    port: 8080
    hostname: none.test
    allowedRoutes: {namespaces: {from: Selector}}
";
    let mut yaml = yaml.to_string();
    for (ns, host) in [
        ("shop", "team.test"),
        ("other", "team.test"),
        ("other", "byname.test"),
        ("ghost", "byname.test"),
        ("shop", "byname.test"),
    ] {
        yaml += &format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {ns}-{host}, namespace: {ns}}}
spec:
  parentRefs: [{{name: sel, namespace: infra, sectionName: {section}}}]
  hostnames: [{host}]
  rules: [{{backendRefs: [{{name: far, namespace: other, port: 80}}]}}]
",
            section = host.trim_end_matches(".test")
        );
    }
    let spec = spec_of(&yaml);
    let accepted = |ns: &str, host: &str| {
        let st = &spec.gateway_api.routes
            [&portico_model::store::ObjectKey::new(ns, format!("{ns}-{host}"))];
        let p = &st[&format!("infra/sel/{}", host.trim_end_matches(".test"))];
        (p.accepted.status, p.accepted.reason.clone())
    };
    assert_eq!(accepted("shop", "team.test"), (true, "Accepted".into()));
    assert_eq!(
        accepted("other", "team.test"),
        (false, "NotAllowedByListeners".into())
    );
    // The name label needs no Namespace object.
    assert_eq!(accepted("other", "byname.test"), (true, "Accepted".into()));
    assert_eq!(accepted("ghost", "byname.test"), (true, "Accepted".into()));
    assert_eq!(
        accepted("shop", "byname.test"),
        (false, "NotAllowedByListeners".into())
    );
    let gw = &spec.gateway_api.gateways[&portico_model::store::ObjectKey::new("infra", "sel")];
    assert_eq!(gw.listeners["team"].attached_routes, 1);
    assert_eq!(gw.listeners["byname"].attached_routes, 2);
    for l in ["bad", "none"] {
        assert_eq!(gw.listeners[l].accepted.reason, "Invalid", "{l}");
    }
    let all = problems(&spec);
    assert!(
        all.contains(
            "allowedRoutes.namespaces.selector.matchExpressions[0]: operator In needs values"
        ),
        "{all}"
    );
}

#[test]
fn tls_routes_route_passthrough_listeners_by_sni() {
    let tls_route = |name: &str, created: &str, hosts: &str, parent: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: shop, creationTimestamp: '{created}T00:00:00Z'}}
spec:
  parentRefs: [{parent}]
  hostnames: {hosts}
  rules: [{{backendRefs: [{backend}]}}]
---
"
        )
    };
    let mut yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: shop}
spec:
  gatewayClassName: portico
  listeners:
  - {name: pass, protocol: TLS, port: 8443, hostname: '*.example.com', tls: {mode: Passthrough}}
  - {name: kinds, protocol: TLS, port: 6443, tls: {mode: Passthrough},
     allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: TLSRoute}]}}
  - {name: any, protocol: TLS, port: 9443, tls: {mode: Passthrough}}
  - {name: raw, protocol: TCP, port: 9443}
  - {name: term, protocol: TLS, port: 7443, tls: {certificateRefs: [{name: term-cert}]}}
  - {name: nocert, protocol: TLS, port: 7444}
  - {name: mixed, protocol: TLS, port: 8443, hostname: '*.mixed.test', tls: {certificateRefs: [{name: term-cert}]}}
  - {name: onhttps, protocol: TLS, port: 443, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: raw, namespace: shop}
spec:
  parentRefs: [{name: tls, sectionName: raw}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
"
    .to_string();
    let web = "{name: web, port: 80}";
    let api = "{name: api, port: 80}";
    yaml += &tls_route(
        "exact",
        "2020-01-01",
        "[abc.example.com]",
        "{name: tls, sectionName: pass}",
        web,
    );
    yaml += &tls_route("wild", "2020-01-02", "['*.com']", "{name: tls}", api);
    yaml += &tls_route(
        "dup",
        "2020-01-03",
        "[ABC.example.com]",
        "{name: tls, sectionName: pass}",
        api,
    );
    yaml += &tls_route(
        "broken",
        "2020-01-04",
        "[broken.example.com]",
        "{name: tls, sectionName: pass}",
        "{name: gone, port: 80}",
    );
    yaml += &tls_route(
        "nomatch",
        "2020-01-05",
        "[www.nomatch.org, '*.nomatch.org']",
        "{name: tls, sectionName: pass}",
        web,
    );
    yaml += &tls_route(
        "onhttp",
        "2020-01-06",
        "[abc.example.com]",
        "{name: gw, namespace: infra, sectionName: http}",
        web,
    );
    yaml += &tls_route(
        "terminate",
        "2020-01-07",
        "[abc.example.com]",
        "{name: tls, sectionName: term}",
        web,
    );
    yaml += &tls_route(
        "mixed",
        "2020-01-08",
        "[a.mixed.test]",
        "{name: tls, sectionName: mixed}",
        web,
    );
    let (crt, key) = portico_model::certs::self_signed_pem(&["abc.example.com"], None).unwrap();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    yaml += &format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: term-cert, namespace: shop}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
        indent(&crt),
        indent(&key)
    );
    let spec = spec_of(&yaml);
    let table = |port: u16| {
        spec.sni
            .iter()
            .find(|(k, _)| k.addr.port() == port)
            .map(|(_, t)| t.clone())
    };
    let to = |port: u16, sni: &str| -> Option<Option<String>> {
        let t = table(port)?;
        let r = t.find(Some(sni))?;
        Some(r.backend.as_ref().map(|b| b.service.clone()))
    };
    let web = || Some(Some("web".to_string()));
    let api = || Some(Some("api".to_string()));
    // The exact name beats the wildcard; the wildcard narrowed by the
    // listener's hostname takes the rest of *.example.com only.
    assert_eq!(to(8443, "abc.example.com"), web());
    assert_eq!(to(8443, "other.example.com"), api());
    assert_eq!(to(8443, "a.b.example.com"), api());
    assert_eq!(to(8443, "non.matching.com"), None);
    // A name whose backend does not resolve is held, and refused.
    assert_eq!(to(8443, "broken.example.com"), Some(None));
    // Listener without hostname: the route's own (*.com).
    assert_eq!(to(6443, "non.matching.com"), api());
    assert_eq!(to(6443, "example.org"), None);
    // 9443 is the TCP listener's: its TCPRoute came first.
    assert!(table(9443).is_none());
    assert_eq!(
        spec.l4
            .iter()
            .find(|(k, _)| k.addr.port() == 9443)
            .map(|(k, b)| (k.to_string(), b.service.as_str())),
        Some(("tcp:127.0.0.1:9443".to_string(), "web"))
    );
    assert!(table(443).is_none() && table(7444).is_none());
    // Terminate: the listener's own certificate, not the HTTPS listeners'.
    let term = table(7443).expect("the Terminate listener");
    let certs = &term.terminate.as_ref().expect("terminates TLS").certs;
    assert_eq!(
        certs.find("abc.example.com").unwrap().source,
        "shop/term-cert"
    );
    assert!(spec.certs.find("abc.example.com").is_none());
    assert_eq!(to(7443, "abc.example.com"), web());
    // Passthrough and Terminate share 8443, by server name.
    let shared = table(8443).unwrap();
    let mode = |name: &str| shared.find(Some(name)).map(|r| r.certs.is_some());
    assert_eq!(mode("a.mixed.test"), Some(true));
    assert_eq!(mode("abc.example.com"), Some(false));
    assert_eq!(to(8443, "a.mixed.test"), web());

    let key = |n: &str| portico_model::store::ObjectKey::new("shop", n);
    let routes = &spec.gateway_api.tls_routes;
    let parent = |route: &str, label: &str| routes[&key(route)][label].clone();
    assert!(parent("exact", "shop/tls/pass").accepted.status);
    assert!(parent("wild", "shop/tls").accepted.status);
    let broken = parent("broken", "shop/tls/pass");
    assert!(broken.accepted.status);
    assert_eq!(broken.resolved_refs.reason, "BackendNotFound");
    assert_eq!(
        parent("nomatch", "shop/tls/pass").accepted.reason,
        "NoMatchingListenerHostname"
    );
    assert_eq!(
        parent("onhttp", "infra/gw/http").accepted.reason,
        "NotAllowedByListeners"
    );
    assert!(parent("terminate", "shop/tls/term").accepted.status);
    // Attached nowhere: its only name is older `exact`'s; a Terminate
    // listener on the passthrough port.
    let dup = parent("dup", "shop/tls/pass").accepted;
    assert_eq!(
        (dup.status, dup.reason.as_str()),
        (false, "NotAllowedByListeners")
    );
    assert!(
        dup.message
            .contains("already routed by TLSRoute shop/exact"),
        "{}",
        dup.message
    );
    assert!(parent("mixed", "shop/tls/mixed").accepted.status);
    let all = problems(&spec);
    assert!(
        all.contains(
            "hostname abc.example.com on port 8443 is already routed by TLSRoute shop/exact"
        ),
        "{all}"
    );
    assert!(
        all.contains("127.0.0.1:9443 already forwards TCP to shop/web"),
        "{all}"
    );

    let gw = &spec.gateway_api.gateways[&key("tls")];
    // exact, wild and broken; dup holds no name of its own.
    assert_eq!(gw.listeners["pass"].attached_routes, 3);
    assert_eq!(gw.listeners["pass"].supported_kinds, ["TLSRoute"]);
    assert_eq!(gw.listeners["kinds"].attached_routes, 1);
    assert_eq!(gw.listeners["kinds"].supported_kinds, ["TLSRoute"]);
    assert_eq!(
        gw.listeners["kinds"].resolved_refs.reason,
        "InvalidRouteKinds"
    );
    assert!(gw.listeners["term"].accepted.status);
    // `terminate`, and `wild` (no sectionName: every TLS listener).
    assert_eq!(gw.listeners["term"].attached_routes, 2);
    assert_eq!(gw.listeners["nocert"].accepted.reason, "Invalid");
    assert!(!all.contains("Passthrough and Terminate"), "{all}");
    assert_eq!(gw.listeners["mixed"].attached_routes, 1);
    assert_eq!(gw.listeners["onhttps"].accepted.reason, "PortUnavailable");
}

#[test]
fn what_cannot_be_served_safely_is_refused() {
    let kinds_gw = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: kinds, namespace: shop}
spec:
  gatewayClassName: portico
  listeners:
  - {name: grpc-only, protocol: HTTP, port: 8080, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
";
    let ingress = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: old, namespace: shop}
spec:
  rules: [{host: shadow.test, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
";
    let rules = "  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [h.test]
  rules:
  - matches: [{path: {value: /framing}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: Content-Length, value: '0'}]}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /bad-name}}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: 'a b', value: x}]}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {value: /bad-path}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: 'x?y'}}}]
    backendRefs: [{name: web, port: 80}]";
    let spec = spec_of(&format!(
        "{kinds_gw}---\n{ingress}---\n{}---\n{}---\n{}",
        route("r", rules),
        route(
            "kinds",
            "  parentRefs: [{name: kinds}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]"
        ),
        route(
            "shadowed",
            "  parentRefs: [{name: gw, namespace: infra}]\n  hostnames: [shadow.test]\n  rules: [{backendRefs: [{name: api, port: 80}]}]"
        ),
    ));
    for path in ["/framing", "/bad-name", "/bad-path"] {
        let (r, _) = spec.routes.find("h.test", path).unwrap();
        assert_eq!(
            r.rule.as_ref().unwrap().pick(|_| 0),
            Some(WeightedPick::Invalid),
            "{path}"
        );
    }
    let text = problems(&spec);
    assert!(
        text.contains("\"Content-Length\" frames the message"),
        "{text}"
    );
    assert!(text.contains("\"a b\" is not a header name"), "{text}");
    assert!(text.contains("\"x?y\" must start with '/'"), "{text}");
    // A listener whose kinds leave HTTPRoute out takes none.
    let st = &spec.gateway_api.routes[&portico_model::store::ObjectKey::new("shop", "kinds")];
    assert_eq!(st["shop/kinds"].accepted.reason, "NotAllowedByListeners");
    // An Ingress on the same host and path takes every request first:
    // said, not silently shadowed.
    assert_eq!(
        routed(&spec, &get("shadow.test", "/")).as_deref(),
        Some("shop/old")
    );
    assert!(
        text.contains("already routed by Ingress shop/old"),
        "{text}"
    );
}

/// GRPCRoute `shop/g` on `gw` for `grpc.test`, with these rules.
fn grpc_route(rules: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: shop}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [grpc.test]\n  rules:\n{rules}")
}

#[test]
fn grpc_routes_match_services_and_methods_over_h2c() {
    let yaml = grpc_route(
        "  - matches: [{method: {service: pkg.Users, method: Get}}]
    backendRefs: [{name: api, port: 80}]
  - matches: [{method: {service: pkg.Users}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{method: {method: Health}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{method: {type: RegularExpression, service: 'pkg\\.Admin.*', method: 'Del.*'}, headers: [{name: x-admin, value: 'yes'}]}]
    backendRefs: [{name: api, port: 80}]
",
    ) + "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: empty-match, namespace: shop}
spec:
  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [grpc.test]
  rules: [{matches: [{method: {}}], backendRefs: [{name: api, port: 80}]}]
";
    let spec = spec_of(&yaml);
    let post = |path: &'static str, headers: &'static [(&'static str, &'static str)]| Req {
        method: "POST",
        headers,
        ..get("grpc.test", path)
    };
    let cases: &[(Req<'_>, Option<&str>)] = &[
        (post("/pkg.Users/Get", &[]), Some("shop/g#0")),
        (post("/pkg.Users/List", &[]), Some("shop/g#1")),
        (post("/other.Svc/Health", &[]), Some("shop/g#2")),
        (
            post("/pkg.AdminV2/DeleteAll", &[("x-admin", "yes")]),
            Some("shop/g#3"),
        ),
        (post("/pkg.AdminV2/DeleteAll", &[]), None),
        (post("/pkg.Usersx/Get", &[]), None),
    ];
    for (req, want) in cases {
        assert_eq!(
            routed(&spec, &Req { ..*req }).as_deref(),
            *want,
            "{}",
            req.path
        );
    }
    let (r, _) = spec.routes.find("grpc.test", "/pkg.Users/Get").unwrap();
    // The backend leg is HTTP/2 in clear, as gRPC needs.
    assert_eq!(
        r.policy.as_ref().unwrap().policy.backend_protocol,
        Some(portico_model::policy::BackendProtocol::Grpc)
    );
    assert_eq!(r.rule.as_ref().unwrap().source, "GRPCRoute shop/g");
    let key = portico_model::store::ObjectKey::new("shop", "g");
    assert!(
        spec.gateway_api.grpc_routes[&key]["infra/gw"]
            .accepted
            .status
    );
    assert!(
        problems(&spec).contains("needs a service or a method"),
        "{}",
        problems(&spec)
    );
    // The listener takes both HTTP route kinds.
    let gw = &spec.gateway_api.gateways[&portico_model::store::ObjectKey::new("infra", "gw")];
    assert_eq!(
        gw.listeners["http"].supported_kinds,
        ["HTTPRoute", "GRPCRoute"]
    );
}

#[test]
fn grpc_routes_need_grants_from_grpc_routes_for_backends_and_mirrors() {
    let route = grpc_route(
        "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: far, namespace: other, port: 80}}}]
    backendRefs: [{name: far, namespace: other, port: 80}]
",
    );
    let grant = |from: &str| {
        format!("---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: other}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: {from}, namespace: shop}}]\n  to: [{{group: '', kind: Service}}]\n")
    };
    let spec = spec_of(&format!("{route}{}", grant("GRPCRoute")));
    let (r, _) = spec.routes.find("grpc.test", "/pkg.S/M").unwrap();
    assert_eq!(r.backend.service, "far");
    assert_eq!(r.rule.as_ref().unwrap().mirrors.len(), 1);
    // A grant to HTTPRoutes does not cover a GRPCRoute.
    let spec = spec_of(&format!("{route}{}", grant("HTTPRoute")));
    let text = problems(&spec);
    assert!(
        text.contains("no ReferenceGrant there allows GRPCRoutes of shop"),
        "{text}"
    );
    let (r, _) = spec.routes.find("grpc.test", "/pkg.S/M").unwrap();
    assert!(r.rule.as_ref().unwrap().mirrors.is_empty());
}

#[test]
fn session_persistence_scopes_the_affinity_plugin_to_its_rules() {
    let (crt, key) = portico_model::certs::self_signed_pem(&["s.test"], None).unwrap();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let extra = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls, namespace: infra}}
spec:
  gatewayClassName: portico
  listeners:
  - {{name: https, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: cert}}]}}, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
{}",
        indent(&crt),
        indent(&key),
        route(
            "sticky",
            "  parentRefs: [{name: gw, namespace: infra, sectionName: http}, {name: tls, namespace: infra}]
  hostnames: [s.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /app/}}, {path: {type: RegularExpression, value: '/re/v[0-9]+/x'}}]
    sessionPersistence: {sessionName: S, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /plain}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /header}}]
    sessionPersistence: {type: Header}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    sessionPersistence: {}
    backendRefs: [{name: web, port: 80}, {name: api, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /default}}]
    sessionPersistence: {absoluteTimeout: 10m}
    backendRefs: [{name: web, port: 80}]"
        )
    );
    let store = store_of(&format!("{BASE}---\n{extra}"));
    let mut s = settings();
    s.scoped.http.push(session_affinity_scoped());
    let spec = translate(&store, &s);
    let at = |path: &str, port: u16| {
        let r = route_at(&spec, "s.test", path, port);
        let a = |k: &str| {
            r.annotations
                .get(&format!("nginx.ingress.kubernetes.io/{k}"))
                .cloned()
        };
        (
            r.scoped_plugins.clone(),
            a("affinity"),
            a("session-cookie-name"),
            a("session-cookie-path"),
            a("session-cookie-max-age"),
            a("session-cookie-secure"),
        )
    };
    let plugin = vec!["session-affinity".to_string()];
    let some = |v: &str| Some(v.to_string());
    // A Permanent cookie named as asked, on the matched path, Secure on
    // the HTTPS listener only.
    assert_eq!(
        at("/app/x", 80),
        (
            plugin.clone(),
            some("cookie"),
            some("S"),
            some("/app"),
            some("3600"),
            None
        )
    );
    assert_eq!(at("/app/x", 443).5, some("true"));
    // A regular expression: its longest literal prefix, to a '/'.
    assert_eq!(at("/re/v2/x", 80).3, some("/re"));
    // No persistence: no plugin, no annotations.
    assert_eq!(at("/plain", 80), (vec![], None, None, None, None, None));
    // Header persistence: the header annotation, and the plugin scoped to
    // it.
    let r = route_at(&spec, "s.test", "/header", 80);
    assert_eq!(at("/header", 80).1, None, "no cookie");
    assert!(r
        .annotations
        .get("portico.io/session-header")
        .is_some_and(|h| h.starts_with("portico-session-")));
    assert_eq!(r.scoped_plugins, plugin);
    // Refused: a traffic split serves without it.
    let text = problems(&spec);
    assert!(
        text.contains("spec.rules[3].sessionPersistence: session persistence across several backendRefs is not supported"),
        "{text}"
    );
    // A Session cookie with a generated name; the timeout it cannot
    // enforce is reported.
    let (_, affinity, name, _, max_age, _) = at("/default", 80);
    assert_eq!(affinity, some("cookie"));
    assert!(name.unwrap().starts_with("portico-session-"));
    assert_eq!(max_age, None);
    assert!(
        text.contains(
            "spec.rules[4].sessionPersistence.absoluteTimeout on a Session cookie is not enforced"
        ),
        "{text}"
    );
    // Without a plugin scoped to the annotation, the route says so.
    let spec = translate(&store, &settings());
    assert_eq!(
        route_at(&spec, "s.test", "/app/x", 80).scoped_plugins,
        Vec::<String>::new()
    );
    assert!(
        problems(&spec).contains("spec.rules[0].sessionPersistence: no loaded plugin applies to nginx.ingress.kubernetes.io/affinity"),
        "{}",
        problems(&spec)
    );
}

/// The route a request for `host` and `path` on `port` takes (TLS on
/// 443), ignoring its other conditions.
fn route_at<'a>(
    spec: &'a SnapshotSpec,
    host: &str,
    path: &str,
    port: u16,
) -> &'a portico_model::routing::Route {
    let facts = RequestFacts {
        port: Some(port),
        tls: port == 443,
        request: None,
    };
    spec.routes.find_request(host, path, &facts).unwrap().0
}

#[test]
fn gateway_addresses_from_pools_open_to_gateways_are_their_own() {
    let gateway = |name: &str, ip: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: shop}}
spec:
  gatewayClassName: portico
  addresses: [{{value: {ip}}}]
  listeners:
  - {{name: db-{name}, protocol: TCP, port: {port}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: db-{name}, namespace: shop}}
spec:
  parentRefs: [{{name: {name}}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
",
            port = 5400 + name.len()
        )
    };
    let yaml = gateway("vip", "192.0.2.70")
        + &gateway("taken", "192.0.2.71")
        + &gateway("outside", "198.51.100.1")
        + "apiVersion: v1
kind: Service
metadata: {name: lb, namespace: shop}
spec:
  type: LoadBalancer
  loadBalancerIP: 192.0.2.71
  ports: [{port: 9000}]
";
    let store = store_of(&format!("{BASE}---\n{yaml}"));
    let mut s = settings();
    s.gateway_pools = vec![("gateways".into(), vec!["192.0.2.64/28".parse().unwrap()])];
    let spec = translate(&store, &s);
    let owners: Vec<(String, String)> = spec
        .load_balancer_addresses
        .iter()
        .map(|(ip, o)| (ip.to_string(), o.to_string()))
        .collect();
    assert_eq!(
        owners,
        [
            ("192.0.2.70".to_string(), "Gateway shop/vip".to_string()),
            ("192.0.2.71".to_string(), "Service shop/lb".to_string())
        ]
    );
    // Assigned: the status address, and its TCP listener binds there
    // as well as on the node.
    let key = |n: &str| portico_model::store::ObjectKey::new("shop", n);
    let vip = &spec.gateway_api.gateways[&key("vip")];
    assert_eq!(
        vip.assigned_addresses,
        ["192.0.2.70".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(vip.unassigned_addresses.is_empty());
    let l4: Vec<String> = spec.l4.keys().map(|k| k.to_string()).collect();
    assert!(l4.contains(&"tcp:192.0.2.70:5403".to_string()), "{l4:?}");
    assert!(l4.contains(&"tcp:127.0.0.1:5403".to_string()), "{l4:?}");
    // A Service's address and one outside every open pool are refused,
    // and nothing listens there.
    for (name, ip) in [("taken", "192.0.2.71"), ("outside", "198.51.100.1")] {
        let gw = &spec.gateway_api.gateways[&key(name)];
        assert_eq!(
            gw.unassigned_addresses,
            [ip.parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            !l4.iter().any(|k| k.contains(ip) && !k.ends_with(":9000")),
            "{l4:?}"
        );
    }
    let text = problems(&spec);
    assert!(
        text.contains("spec.addresses[0]: 192.0.2.71 (announce pool gateways) is already the address of Service shop/lb; not assigned"),
        "{text}"
    );
    assert!(
        text.contains("198.51.100.1 is not an address Portico serves Gateways at (127.0.0.1; kubernetes.publish_addresses, else node.addresses) nor in an announce pool open to Gateways (gateways); not assigned"),
        "{text}"
    );
    // Without an open pool the address is not the Gateway's.
    let spec = translate(&store, &settings());
    assert!(!spec
        .load_balancer_addresses
        .contains_key(&"192.0.2.70".parse().unwrap()));
    assert!(problems(&spec).contains("(none: [[announce.pools]] with gateways = true)"));
}

#[test]
fn addresses_a_load_balancer_plugin_gave_a_gateway_are_its_own() {
    let gateway = |name: &str, spec_addresses: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: shop}}
spec:
  gatewayClassName: portico
  {spec_addresses}
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
status:
  addresses: [{{type: IPAddress, value: 192.0.2.90}}, {{type: IPAddress, value: 127.0.0.1}}]
---
"
        )
    };
    let yaml = gateway("allocated", "") + &gateway("asks", "addresses: [{value: 127.0.0.1}]");
    let store = store_of(&format!("{BASE}---\n{yaml}"));
    let mut s = settings();
    s.gateway_load_balancer = true;
    // Outside every announce pool open to Gateways (another edge node's
    // address, say): never taken as the Gateway's.
    assert!(translate(&store, &s).load_balancer_addresses.is_empty());
    s.gateway_pools = vec![("gw".into(), vec!["192.0.2.64/26".parse().unwrap()])];
    let spec = translate(&store, &s);
    let key = |n: &str| portico_model::store::ObjectKey::new("shop", n);
    // The plugin's address (not the node's) is the Gateway's, announced.
    assert_eq!(
        spec.gateway_api.gateways[&key("allocated")].allocated_addresses,
        ["192.0.2.90".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        spec.load_balancer_addresses
            .get(&"192.0.2.90".parse().unwrap())
            .map(|o| o.to_string()),
        Some("Gateway shop/allocated".to_string())
    );
    // A Gateway that asks for addresses: its spec decides, not its status.
    assert_eq!(
        spec.gateway_api.gateways[&key("asks")].assigned_addresses,
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    // Without a load-balancer plugin the status is only a report.
    s.gateway_load_balancer = false;
    let spec = translate(&store, &s);
    assert!(spec.load_balancer_addresses.is_empty());
    assert!(spec.gateway_api.gateways[&key("allocated")]
        .allocated_addresses
        .is_empty());
}

#[test]
fn grpc_routes_have_session_persistence_too() {
    let yaml = grpc_route(
        "  - matches: [{method: {service: pkg.Cart}}]
    sessionPersistence: {sessionName: CART}
    backendRefs: [{name: api, port: 80}]
",
    );
    let store = store_of(&format!("{BASE}---\n{yaml}"));
    let mut s = settings();
    s.scoped.http.push(session_affinity_scoped());
    let spec = translate(&store, &s);
    let (r, _) = spec.routes.find("grpc.test", "/pkg.Cart/Add").unwrap();
    assert_eq!(r.scoped_plugins, ["session-affinity"]);
    let a = |k: &str| {
        r.annotations
            .get(&format!("nginx.ingress.kubernetes.io/{k}"))
            .map(String::as_str)
    };
    assert_eq!(a("session-cookie-name"), Some("CART"));
    // The service's path prefix is the cookie's path.
    assert_eq!(a("session-cookie-path"), Some("/pkg.Cart"));
}

#[test]
fn a_gateway_with_infrastructure_parameters_is_not_accepted_nor_served() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: params, namespace: shop}
spec:
  gatewayClassName: portico
  infrastructure: {parametersRef: {group: invalid.io, kind: InvalidParameters, name: x}}
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: params}]
  hostnames: [params.test]
  rules: [{backendRefs: [{name: web, port: 80}]}]
";
    let mut s = settings();
    s.gateway_pools = vec![("gw".into(), vec!["192.0.2.64/26".parse().unwrap()])];
    let yaml = yaml.replace(
        "  listeners: [{name: http",
        "  addresses: [{value: 192.0.2.70}]\n  listeners: [{name: http",
    );
    let spec = translate(&store_of(&format!("{BASE}---\n{yaml}")), &s);
    // Not accepted: it takes no address of its own.
    assert!(spec.load_balancer_addresses.is_empty());
    let gw = &spec.gateway_api.gateways[&portico_model::store::ObjectKey::new("shop", "params")];
    assert!(gw
        .invalid_parameters
        .as_deref()
        .is_some_and(|m| m.contains("invalid.io/InvalidParameters x")));
    assert!(!gw.listeners["http"].programmed.status);
    let on_8080 = Req {
        port: 8080,
        ..get("params.test", "/")
    };
    assert_eq!(routed(&spec, &on_8080), None);
    assert!(problems(&spec).contains("spec.infrastructure.parametersRef"));
}

#[test]
fn parent_refs_match_listeners_first_then_their_kinds_and_attach_to_all() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4only, namespace: shop}
spec:
  gatewayClassName: portico
  listeners:
  - {name: a, protocol: TCP, port: 7001}
  - {name: b, protocol: TCP, port: 7002}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: all, namespace: shop}
spec:
  parentRefs: [{name: l4only}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: nosection, namespace: shop}
spec:
  parentRefs: [{name: l4only, sectionName: missing}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-on-tcp, namespace: shop}
spec:
  parentRefs: [{name: l4only}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
";
    let spec = spec_of(yaml);
    let key = |n: &str| portico_model::store::ObjectKey::new("shop", n);
    // No sectionName: every listener that takes the route.
    let l4: Vec<String> = spec.l4.keys().map(|k| k.to_string()).collect();
    assert!(
        l4.contains(&"tcp:127.0.0.1:7001".to_string())
            && l4.contains(&"tcp:127.0.0.1:7002".to_string()),
        "{l4:?}"
    );
    let gw = &spec.gateway_api.gateways[&key("l4only")];
    assert_eq!(gw.listeners["a"].attached_routes, 1);
    assert_eq!(gw.listeners["b"].attached_routes, 1);
    // A sectionName no listener has: NoMatchingParent.
    let missing = &spec.gateway_api.tcp_routes[&key("nosection")]["shop/l4only/missing"];
    assert_eq!(missing.accepted.reason, "NoMatchingParent");
    // Listeners exist but none takes HTTP routes: NotAllowedByListeners.
    let http = &spec.gateway_api.routes[&key("http-on-tcp")]["shop/l4only"];
    assert_eq!(http.accepted.reason, "NotAllowedByListeners");
}

#[test]
fn routes_attach_to_a_listener_whose_certificate_is_missing_but_it_serves_nothing() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: nocert, namespace: shop}
spec:
  gatewayClassName: portico
  listeners:
  - {name: https, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: missing}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: nocert}]
  hostnames: [nocert.test]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
";
    let spec = spec_of(yaml);
    let key = |n: &str| portico_model::store::ObjectKey::new("shop", n);
    let l = &spec.gateway_api.gateways[&key("nocert")].listeners["https"];
    assert!(!l.programmed.status);
    assert!(!l.resolved_refs.status);
    // The spec: the route counts, and is Accepted there.
    assert_eq!(l.attached_routes, 1);
    let parent = &spec.gateway_api.routes[&key("r")]["shop/nocert"];
    assert!(parent.accepted.status, "{parent:?}");
    // Its references are still checked.
    assert_eq!(parent.resolved_refs.reason, "BackendNotFound");
    // Nothing is served there.
    let on_443 = Req {
        port: 443,
        ..get("nocert.test", "/")
    };
    assert_eq!(routed(&spec, &on_443), None);
}

/// The shipped session-affinity plugin as `conf/portico.toml` scopes it.
fn session_affinity_scoped() -> (String, portico_model::scope::PluginScope) {
    (
        "session-affinity".into(),
        portico_model::scope::PluginScope {
            ingress_annotations: vec![
                "nginx.ingress.kubernetes.io/affinity".into(),
                "portico.io/session-header".into(),
            ],
            ..Default::default()
        },
    )
}
