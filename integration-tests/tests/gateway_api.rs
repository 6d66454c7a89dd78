//! Gateway API end to end in manifests mode: a Gateway with HTTP and
//! HTTPS listeners on the binary's own ports, HTTPRoutes with matches,
//! filters and weights, served by the real binary to real backends and
//! clients (our HTTP/1.1 client, curl) on 127.0.0.1.

use portico_integration_tests::raw_backend::RawBackend;
use portico_integration_tests::*;

/// Portico's GatewayClass, to start a manifest with.
const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.io/gateway-controller}
---
";

fn gateway_yaml(http: u16, https: u16) -> String {
    format!(
        "{CLASS}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: portico
  listeners:
  - {{name: http, protocol: HTTP, port: {http}, allowedRoutes: {{namespaces: {{from: All}}}}}}
  - name: https
    protocol: HTTPS
    port: {https}
    hostname: secure.test
    allowedRoutes: {{namespaces: {{from: All}}}}
    tls: {{certificateRefs: [{{name: secure-cert, namespace: default}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {{name: edge-certs, namespace: default}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}}]
  to: [{{group: '', kind: Secret}}]
---
"
    )
}

const ROUTES: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: default}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: http}]
  hostnames: [app.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: 'yes'}]}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-env, value: prod}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: portico}]}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: internal.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: Exact, value: /split}}]
    backendRefs: [{name: a, port: 80, weight: 1}, {name: b, port: 80, weight: 1}]
  - matches: [{path: {type: Exact, value: /missing}}]
    backendRefs: [{name: nowhere, port: 80}]
  - matches: [{path: {type: Exact, value: /only-post}, method: POST}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ['https://*.bar.com']
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-h1]
        exposeHeaders: [x-h3]
        allowCredentials: true
        maxAge: 3600
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: Exact, value: /drip}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: drip, port: 80}]
  - matches: [{path: {type: Exact, value: /per-backend}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: r}]}}
    backendRefs:
    - name: b
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: b}], remove: [x-rule]}}
      - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-drawn, value: b}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: secure, namespace: default}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: https}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
";

fn backends(a: &Echo, b: &Echo) -> String {
    let mut m = String::new();
    m += &yaml::service("default", "a", "", &[("http", 80)]);
    m += &yaml::slice("default", "a-1", "a", "http", a.http, true);
    m += &yaml::service("default", "b", "", &[("http", 80)]);
    m += &yaml::slice("default", "b-1", "b", "http", b.http, true);
    m
}

/// A backend that answers every connection with a 10-byte body sent one
/// byte every 200 ms.
fn drip_backend() -> u16 {
    use std::io::{Read, Write};
    serve_each(|mut conn| {
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n");
        for _ in 0..10 {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if conn.write_all(b"x").is_err() {
                return;
            }
        }
    })
}

fn get(port: u16, host: &str, path: &str, extra: &str) -> Response {
    http_request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
    .unwrap()
}

#[test]
fn http_routes_match_filter_and_split_through_a_gateway() {
    let a = Echo::http("a");
    let b = Echo::http("b");
    let shadow = RawBackend::start();
    let drip = drip_backend();
    let (crt, key) = self_signed(&["secure.test"]);
    let shadow_yaml = yaml::service("default", "shadow", "", &[("http", 80)])
        + &yaml::slice("default", "shadow-1", "shadow", "http", shadow.port, true)
        + &yaml::service("default", "drip", "", &[("http", 80)])
        + &yaml::slice("default", "drip-1", "drip", "http", drip, true);
    let gw = Gateway::start(
        &[
            ("backends.yaml", &backends(&a, &b)),
            ("shadow.yaml", &shadow_yaml),
            (
                "cert.yaml",
                &yaml::tls_secret("default", "secure-cert", &crt, &key),
            ),
        ],
        "",
    );
    gw.write_manifest(
        "gateway.yaml",
        &format!("{}{ROUTES}", gateway_yaml(gw.http, gw.https)),
    );
    let name = |r: &Response| {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["name"].as_str().unwrap().to_string()
    };

    // Header match before the plain prefix; header edits both ways.
    assert_eq!(
        name(&get(gw.http, "app.test", "/api/x", "x-canary: yes\r\n")),
        "b"
    );
    let r = get(gw.http, "app.test", "/api/x", "x-drop: 1\r\n");
    assert_eq!(name(&r), "a");
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-env"], "prod");
    assert!(seen.get("x-drop").is_none(), "{seen}");
    assert_eq!(r.header("x-served-by"), Some("portico"));

    // Redirect: the listener's port is kept (not a well-known one).
    let r = get(gw.http, "app.test", "/old/page?q=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("http://app.test:{}/new/page?q=1", gw.http).as_str())
    );

    // Rewrite of path and Host.
    let r = get(gw.http, "app.test", "/rewrite/x?y=1", "");
    assert_eq!(name(&r), "a");
    assert_eq!(r.json()["path"], "/v2/x?y=1");
    assert_eq!(r.json()["host"], "internal.test");

    // Equal weights: both backends take requests.
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..40 {
        names.insert(name(&get(gw.http, "app.test", "/split", "")));
    }
    assert_eq!(names.len(), 2, "{names:?}");

    // A backendRef to a Service that does not exist: 500 (the spec).
    assert_eq!(get(gw.http, "app.test", "/missing", "").status, 500);
    // A method match: GET does not take the POST-only rule.
    assert_eq!(get(gw.http, "app.test", "/only-post", "").status, 404);
    let r = http_request(
        gw.http,
        "POST /only-post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(name(&r), "b");

    // CORS: a preflight from an allowed origin is answered here (200, as
    // the conformance suite expects), with the rule's lists.
    let preflight = |origin: &str| {
        http_request(
            gw.http,
            &format!("OPTIONS /cors/x HTTP/1.1\r\nHost: app.test\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: x-h1\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    };
    let r = preflight("https://a.b.bar.com");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.b.bar.com")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, OPTIONS")
    );
    assert_eq!(r.header("access-control-allow-headers"), Some("x-h1"));
    assert_eq!(r.header("access-control-max-age"), Some("3600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r.text().is_empty(), "the backend answered: {}", r.text());
    // Another origin: no CORS headers; the request goes to the backend.
    let r = preflight("https://foobar.com");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(name(&r), "a");
    // An actual request from an allowed origin: the backend's answer
    // with the CORS headers added.
    let r = get(
        gw.http,
        "app.test",
        "/cors/x",
        "Origin: https://www.bar.com\r\n",
    );
    assert_eq!(name(&r), "a");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://www.bar.com")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("x-h3"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = get(
        gw.http,
        "app.test",
        "/cors/x",
        "Origin: https://bar.com\r\n",
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Refused, but a cache must still key the answer by Origin.
    assert_eq!(r.header("vary"), Some("Origin"));

    // timeouts.request: the whole exchange, not each read; past it, 504.
    assert_eq!(name(&get(gw.http, "app.test", "/delay/50", "")), "a");
    let started = std::time::Instant::now();
    let r = get(gw.http, "app.test", "/delay/3000", "");
    assert_eq!(r.status, 504, "{}", r.text());
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(450)
            && took < std::time::Duration::from_millis(2500),
        "{took:?}"
    );

    // ... including the body: one that drips in (every read well within
    // the timeout) is cut once the deadline passes.
    let cut = http_request(
        gw.http,
        "GET /drip HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(
        cut.as_ref().map_or(true, |r| r.body.len() < 10),
        "{:?}",
        cut.map(|r| r.text())
    );

    // A backendRef's own filters apply after the rule's.
    let r = get(gw.http, "app.test", "/per-backend", "");
    assert_eq!(name(&r), "b");
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-backend"], "b", "{seen}");
    assert!(seen.get("x-rule").is_none(), "{seen}");
    assert_eq!(r.header("x-drawn"), Some("b"));

    // RequestMirror: the backend answers; a copy of the request, body
    // included, reaches the mirror's endpoint, whose answer is dropped.
    let r = get(gw.http, "app.test", "/mirror/x?q=1", "x-trace: t1\r\n");
    assert_eq!(name(&r), "a");
    let r = http_request(
        gw.http,
        "POST /mirror/up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(name(&r), "a");
    assert_eq!(r.json()["body"], "hello", "{}", r.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shadow.requests().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let copies = shadow.requests();
    assert_eq!(copies.len(), 2, "{copies:?}");
    let get_copy = copies.iter().find(|c| c.head.starts_with("GET ")).unwrap();
    assert!(
        get_copy.head.starts_with("GET /mirror/x?q=1 HTTP/1.1\r\n"),
        "{}",
        get_copy.head
    );
    assert_eq!(get_copy.header("x-trace"), Some("t1"));
    assert_eq!(get_copy.header("host"), Some("app.test"));
    let post_copy = copies.iter().find(|c| c.head.starts_with("POST ")).unwrap();
    assert_eq!(post_copy.body, b"hello");
    // Counted once each answer is read (after the copy arrived).
    let sent = "portico_mirror_requests_total{backend=\"default/shadow:http\",result=\"sent\"} 2";
    while !gw.metrics().contains(sent) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(gw.metrics().contains(sent), "{}", gw.metrics());

    // The HTTPS listener: its certificate from the other namespace (by
    // ReferenceGrant), its route only there.
    let ca = gw.dir.write("ca.pem", &crt);
    let resolve = format!("secure.test:{}:127.0.0.1", gw.https);
    let (out, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code}",
        &format!("https://secure.test:{}/hello", gw.https),
    ]);
    assert!(out.ends_with("\n200"), "{out} {err}");
    assert!(out.contains("\"name\":\"a\""), "{out}");
    assert_eq!(get(gw.http, "secure.test", "/hello", "").status, 404);
    // Nor is app.test served on the HTTPS listener.
    let resolve = format!("app.test:{}:127.0.0.1", gw.https);
    let (out, _) = curl(&[
        "-k",
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code}",
        &format!("https://app.test:{}/api/x", gw.https),
    ]);
    assert!(out.ends_with("\n404"), "{out}");

    // explain names the rule, the route and the listener.
    let out = portico(&[
        "explain",
        "--host",
        "app.test",
        "--path",
        "/api/x",
        "--admin",
        &format!("127.0.0.1:{}", gw.admin),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = v["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("rule 1 of HTTPRoute default/app, via Gateway infra/edge listener http"),
        "{v}"
    );
    assert_eq!(v["route"]["rule"]["request_headers"]["set"][0][0], "x-env");

    // /config shows what the status would say.
    let config = gw.config_json();
    let status = &config["gateway_api"];
    assert_eq!(
        status["gateways"]["infra/edge"]["listeners"]["http"]["attached_routes"], 1,
        "{status}"
    );
    assert_eq!(
        status["routes"]["default/app"]["infra/edge/http"]["accepted"]["status"],
        true
    );
    assert_eq!(
        status["routes"]["default/app"]["infra/edge/http"]["resolved_refs"]["reason"],
        "BackendNotFound"
    );

    // A listener on a port Portico does not serve is refused, by name.
    let bad = format!(
        "{}{ROUTES}",
        gateway_yaml(gw.http, gw.https).replace(
            &format!("port: {}, allowedRoutes", gw.http),
            "port: 1, allowedRoutes"
        )
    );
    gw.write_manifest("gateway.yaml", &bad);
    let config = gw.config_json();
    assert_eq!(
        config["gateway_api"]["gateways"]["infra/edge"]["listeners"]["http"]["accepted"]["reason"],
        "PortUnavailable"
    );
    assert_eq!(get(gw.http, "app.test", "/api/x", "").status, 404);
}

/// Loads the shipped `ingress-nginx` plugin as the policy plugin.
fn nginx_config() -> String {
    format!(
        "[ingress]\npolicy_plugin = \"nginx\"\n[[plugins.load]]\nname = \"nginx\"\npath = \"{}\"\n",
        built_plugins().join("ingress_nginx.wasm").display()
    )
}

fn annotated(ingress: String, name: &str, annotations: &[(&str, &str)]) -> String {
    let ann: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: '{v}'"))
        .collect();
    ingress.replace(
        &format!("metadata: {{name: {name}, namespace: default}}"),
        &format!(
            "metadata: {{name: {name}, namespace: default, annotations: {{{}}}}}",
            ann.join(", ")
        ),
    )
}

/// `portico convert` on Ingresses with ingress-nginx annotations: a second
/// gateway serving only the converted Gateway API objects answers every
/// request as the first one, serving the Ingresses, does.
#[test]
fn converted_ingresses_serve_the_same_requests() {
    let a = Echo::http("a");
    let b = Echo::http("b");
    let ingresses = yaml::ingress(
        "default",
        "main",
        &[
            ("conv.test", "/", "Prefix", "a", "http"),
            ("conv.test", "/exact", "Exact", "b", "http"),
            ("other.test", "/o", "Prefix", "b", "http"),
        ],
        "",
    ) + &annotated(
        yaml::ingress(
            "default",
            "rw",
            &[("rw.test", "/old", "Prefix", "a", "http")],
            "",
        ),
        "rw",
        &[
            ("rewrite-target", "/new"),
            ("upstream-vhost", "inside.test"),
        ],
    ) + &annotated(
        yaml::ingress(
            "default",
            "canary",
            &[("conv.test", "/", "Prefix", "b", "http")],
            "",
        ),
        "canary",
        &[("canary", "true"), ("canary-by-header", "x-canary")],
    ) + &annotated(
        yaml::ingress(
            "default",
            "moved",
            &[("moved.test", "/", "Prefix", "a", "http")],
            "",
        ),
        "moved",
        &[("permanent-redirect", "https://new.test/landing")],
    );
    let config = nginx_config();
    let first = Gateway::start(
        &[
            ("backends.yaml", &backends(&a, &b)),
            ("ingresses.yaml", &ingresses),
        ],
        &config,
    );
    let second = Gateway::start(&[("backends.yaml", &backends(&a, &b))], &config);

    // Converted with the second gateway's listener ports, from the first
    // one's manifests.
    let cfg = second.dir.write(
        "convert.toml",
        &format!(
            "[listen]\nhttp = [\"127.0.0.1:{}\"]\nhttps = [\"127.0.0.1:{}\"]\n{config}",
            second.http, second.https
        ),
    );
    let out = portico(&[
        "convert",
        "--config",
        cfg.to_str().unwrap(),
        "--manifests",
        first.manifests.to_str().unwrap(),
    ]);
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(yaml.contains("kind: HTTPRoute"), "{yaml}");
    second.write_manifest("converted.yaml", &yaml);

    let requests: &[(&str, &str, &str)] = &[
        ("conv.test", "/", ""),
        ("conv.test", "/deep/x?q=1", ""),
        ("conv.test", "/exact", ""),
        ("conv.test", "/exact/no", ""),
        ("conv.test", "/", "x-canary: always\r\n"),
        ("conv.test", "/", "x-canary: never\r\n"),
        ("other.test", "/o/1", ""),
        ("other.test", "/", ""),
        ("rw.test", "/old/page?x=1", ""),
        ("moved.test", "/anything", ""),
        ("unknown.test", "/", ""),
    ];
    for (host, path, extra) in requests {
        let answer = |gw: &Gateway| {
            let r = get(gw.http, host, path, extra);
            let body = if r.status == 200 {
                let j = r.json();
                format!("{} {} {}", j["name"], j["path"], j["host"])
            } else {
                String::new()
            };
            (r.status, r.header("location").map(str::to_string), body)
        };
        assert_eq!(
            answer(&second),
            answer(&first),
            "{host}{path} {extra:?}; converted:\n{yaml}"
        );
    }
}

/// A Gateway's TCP and UDP listeners with a TCPRoute and a UDPRoute:
/// connections and datagrams on the node's address reach the Service's
/// endpoints; a second TCPRoute for the same listener is attached, the
/// older one keeping the connections.
#[test]
fn tcp_and_udp_routes_forward_on_gateway_listeners() {
    use std::io::{Read, Write};
    let backend = Echo::tcp("t1");
    let second = Echo::tcp("t2");
    let (tcp_port, udp_port, split_port) = (free_port(), free_port(), free_port());
    let mut m = String::new();
    m += &yaml::service("default", "echo", "", &[("tcp", 9000)]);
    m += &format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: echo}}\naddressType: IPv4\nports: [{{name: tcp, port: {p}, protocol: TCP}}, {{name: tcp, port: {p}, protocol: UDP}}]\nendpoints:\n- addresses: [127.0.0.1]\n  conditions: {{ready: true}}\n---\n",
        p = backend.http
    );
    m += &format!(
        "{CLASS}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: l4, namespace: default}}
spec:
  gatewayClassName: portico
  listeners:
  - {{name: tcp, protocol: TCP, port: {tcp_port}}}
  - {{name: udp, protocol: UDP, port: {udp_port}}}
  - {{name: split, protocol: TCP, port: {split_port}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: split, namespace: default}}
spec:
  parentRefs: [{{name: l4, sectionName: split}}]
  rules: [{{backendRefs: [{{name: echo, port: 9000, weight: 1}}, {{name: echo2, port: 9000, weight: 1}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: tcp, namespace: default, creationTimestamp: '2020-01-01T00:00:00Z'}}
spec:
  parentRefs: [{{name: l4, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: echo, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: second, namespace: default, creationTimestamp: '2021-01-01T00:00:00Z'}}
spec:
  parentRefs: [{{name: l4, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: echo, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {{name: udp, namespace: default}}
spec:
  parentRefs: [{{name: l4, sectionName: udp}}]
  rules: [{{backendRefs: [{{name: echo, port: 9000}}]}}]
---
"
    );
    m += &yaml::service("default", "echo2", "", &[("tcp", 9000)]);
    m += &yaml::slice("default", "echo2-1", "echo2", "tcp", second.http, true);
    let gw = Gateway::start(&[("l4.yaml", &m)], "");
    // A route with two backends splits connections by weight.
    wait_port(split_port, std::time::Duration::from_secs(5));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let s = std::net::TcpStream::connect(addr(split_port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
        seen.insert(line);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["t1\n", "t2\n"],
        "both backends get connections"
    );
    wait_port(tcp_port, std::time::Duration::from_secs(5));
    let mut s = std::net::TcpStream::connect(addr(tcp_port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(b"ping").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "t1\nping");

    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut answer = None;
    for _ in 0..20 {
        c.send_to(b"hello", addr(udp_port)).unwrap();
        let mut buf = [0u8; 100];
        if let Ok((n, _)) = c.recv_from(&mut buf) {
            answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
    }
    assert_eq!(answer.as_deref(), Some("t1:hello"));

    let config = gw.config_json();
    let split = config["l4_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listener"] == format!("tcp:127.0.0.1:{split_port}").as_str())
        .map(|l| l["split"].clone());
    assert_eq!(
        split.as_ref().and_then(|s| s.as_array()).map(Vec::len),
        Some(2),
        "{config}"
    );
    let status = &config["gateway_api"];
    // A second TCPRoute on the listener is attached (the spec) but the
    // older one keeps the connections (checked above).
    assert_eq!(
        status["tcp_routes"]["default/second"]["default/l4/tcp"]["accepted"]["status"], true,
        "{status}"
    );
    assert_eq!(
        status["gateways"]["default/l4"]["listeners"]["tcp"]["attached_routes"],
        2
    );
    assert_eq!(
        status["gateways"]["default/l4"]["listeners"]["udp"]["attached_routes"],
        1
    );
}

/// A TLS passthrough listener with two TLSRoutes: each TLS connection
/// reaches the HTTPS backend its SNI names (the backend's own certificate
/// answers: Portico holds none for these names), an exact name before
/// the wildcard; a name no route has is closed without an answer. A
/// Terminate listener ends TLS with its Secret's certificate and relays
/// the plain stream to a TCP backend.
#[test]
fn tls_routes_pass_tls_through_by_sni() {
    use std::io::{Read, Write};
    let (a, b) = (Echo::https("pass-a"), Echo::https("pass-b"));
    let raw = Echo::tcp("plain");
    let (port, term_port) = (free_port(), free_port());
    let (crt, key) = self_signed(&["t.example.com", "t.example.org"]);
    let mut m = backends(&a, &b);
    m += &yaml::service("default", "raw", "", &[("tcp", 9000)]);
    m += &yaml::slice("default", "raw-1", "raw", "tcp", raw.http, true);
    m += &yaml::tls_secret("default", "term-cert", &crt, &key);
    m += &format!(
        "{CLASS}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls, namespace: default}}
spec:
  gatewayClassName: portico
  listeners:
  - {{name: pass, protocol: TLS, port: {port}, hostname: '*.example.com', tls: {{mode: Passthrough}}}}
  - {{name: term, protocol: TLS, port: {term_port}, tls: {{mode: Terminate, certificateRefs: [{{name: term-cert}}]}}}}
  - {{name: shared, protocol: TLS, port: {port}, hostname: t.example.org, tls: {{certificateRefs: [{{name: term-cert}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: plain-shared, namespace: default}}
spec:
  parentRefs: [{{name: tls, sectionName: shared}}]
  hostnames: [t.example.org]
  rules: [{{backendRefs: [{{name: raw, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: plain, namespace: default}}
spec:
  parentRefs: [{{name: tls, sectionName: term}}]
  hostnames: [t.example.com]
  rules: [{{backendRefs: [{{name: raw, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: exact, namespace: default}}
spec:
  parentRefs: [{{name: tls}}]
  hostnames: [a.example.com]
  rules: [{{backendRefs: [{{name: a, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: wild, namespace: default}}
spec:
  parentRefs: [{{name: tls, sectionName: pass}}]
  hostnames: ['*.example.com']
  rules: [{{backendRefs: [{{name: b, port: 80}}]}}]
---
"
    );
    let gw = Gateway::start(&[("tls.yaml", &m)], "");
    wait_port(port, std::time::Duration::from_secs(5));
    let fetch = |name: &str| {
        curl(&[
            "-k",
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/over-tls"),
        ])
    };
    for (name, backend) in [
        ("a.example.com", "pass-a"),
        ("other.example.com", "pass-b"),
        ("x.y.example.com", "pass-b"),
    ] {
        let (body, err) = fetch(name);
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{name}: {e}: {body:?} {err}\n{}", gw.log()));
        assert_eq!(v["name"], backend, "{name}: {v}");
        assert_eq!(v["path"], "/over-tls", "{v}");
    }
    // No route for the name: the connection is closed before any TLS
    // answer (curl sees the peer go away, not an alert or a certificate).
    let (body, err) = fetch("nobody.example.org");
    assert!(body.is_empty(), "{body}");
    assert!(
        err.contains("SSL") || err.contains("reset") || err.contains("closed"),
        "{err}"
    );
    let metrics = gw.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portico_tls_passthrough_refused_total")
                && l.contains("no-route")),
        "{metrics}"
    );
    // explain names the route an SNI takes.
    let out = portico(&[
        "explain",
        "--admin",
        &format!("127.0.0.1:{}", gw.admin),
        "--host",
        "a.example.com",
        "--port",
        &port.to_string(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["listeners"][0]["route"], "TLSRoute default/exact", "{v}");
    let status = &gw.config_json()["gateway_api"];
    assert_eq!(
        status["gateways"]["default/tls"]["listeners"]["pass"]["attached_routes"], 2,
        "{status}"
    );
    assert_eq!(
        status["tls_routes"]["default/exact"]["default/tls"]["accepted"]["status"], true,
        "{status}"
    );

    // Terminate: our TLS client trusts only the Secret's certificate;
    // the TCP backend greets with its name, then echoes in clear.
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(crt.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let config = std::sync::Arc::new(config);
    let terminated = |port: u16, name: &'static str| {
        let conn = rustls::ClientConnection::new(config.clone(), name.try_into().unwrap()).unwrap();
        wait_port(port, std::time::Duration::from_secs(5));
        let tcp = std::net::TcpStream::connect(addr(port)).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"ping").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < b"plain\nping".len() {
            let n = tls.read(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "{name}: {e}; {:?}\n{}",
                    String::from_utf8_lossy(&got),
                    gw.log()
                )
            });
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), "plain\nping", "{name}");
    };
    terminated(term_port, "t.example.com");
    // Terminate beside Passthrough on one port, by server name: this name
    // is terminated while *.example.com above passed through.
    terminated(port, "t.example.org");
}

/// A GRPCRoute: a gRPC-shaped call over h2c reaches the h2c backend its
/// service and method select, trailers and all; another method is 404.
#[test]
fn grpc_routes_send_calls_to_h2c_backends() {
    let users = Echo::h2c("users");
    let other = Echo::h2c("other");
    let mut m = String::new();
    for (name, e) in [("users", &users), ("other", &other)] {
        m += &yaml::service("default", name, "", &[("grpc", 50051)]);
        m += &yaml::slice("default", &format!("{name}-1"), name, "grpc", e.http, true);
    }
    let gw = Gateway::start(&[("backends.yaml", &m)], "");
    gw.write_manifest(
        "grpc.yaml",
        &format!(
            "{CLASS}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: portico
  listeners: [{{name: http, protocol: HTTP, port: {}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [grpc.test]
  rules:
  - matches: [{{method: {{service: pkg.Users, method: Get}}}}]
    backendRefs: [{{name: users, port: 50051}}]
  - matches: [{{method: {{service: pkg.Other}}}}]
    backendRefs: [{{name: other, port: 50051}}]
",
            gw.http
        ),
    );
    let call = |path: &str| {
        curl(&[
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-H",
            "content-type: application/grpc",
            "--data-binary",
            "abc",
            "-H",
            "Host: grpc.test",
            &format!("http://127.0.0.1:{}{path}", gw.http),
        ])
    };
    let (out, err) = call("/pkg.Users/Get");
    assert!(out.starts_with("HTTP/2 200"), "{out}{err}");
    assert!(out.contains("\"name\":\"users\""), "{out}");
    assert!(out.contains("\"proto\":\"h2\""), "{out}");
    assert!(out.contains("grpc-status: 0"), "{out}");
    let (out, _) = call("/pkg.Other/Anything");
    assert!(out.contains("\"name\":\"other\""), "{out}");
    let (out, err) = call("/pkg.Users/Delete");
    assert!(out.starts_with("HTTP/2 404"), "{out}{err}");
}

/// HTTPRoute `sessionPersistence` through the shipped session-affinity
/// plugin: a cookie named as asked, on the matched path, `Secure` on the
/// HTTPS listener, or a header; requests carrying it stay on one endpoint.
#[test]
fn session_persistence_keeps_a_client_on_one_endpoint() {
    let (one, two) = (Echo::http("one"), Echo::http("two"));
    let (crt, key) = self_signed(&["secure.test"]);
    let mut m = yaml::service("default", "a", "", &[("http", 80)]);
    m += &yaml::slice("default", "a-1", "a", "http", one.http, true);
    m += &yaml::slice("default", "a-2", "a", "http", two.http, true);
    m += &yaml::tls_secret("default", "secure-cert", &crt, &key);
    let gw = Gateway::start(&[("backends.yaml", &m)], &session_affinity_config());
    let routes = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: sticky, namespace: default}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  hostnames: [app.test, secure.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /shop}}]
    sessionPersistence: {sessionName: SHOP, absoluteTimeout: 30m, cookieConfig: {lifetimeType: Permanent}}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /free}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    sessionPersistence: {type: Header, sessionName: X-Session}
    backendRefs: [{name: a, port: 80}]
";
    gw.write_manifest(
        "gateway.yaml",
        &format!("{}{routes}", gateway_yaml(gw.http, gw.https)),
    );
    let name = |r: &Response| {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["name"].as_str().unwrap().to_string()
    };
    let first = get(gw.http, "app.test", "/shop/cart", "");
    let set = first
        .header("set-cookie")
        .expect("a cookie is set")
        .to_string();
    assert!(set.starts_with("SHOP="), "{set}");
    assert!(set.contains("; Path=/shop;"), "{set}");
    assert!(set.contains("; Max-Age=1800"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let pinned = name(&first);
    let cookie = format!("Cookie: {}\r\n", set.split(';').next().unwrap());
    for _ in 0..8 {
        let r = get(gw.http, "app.test", "/shop/item", &cookie);
        assert_eq!(name(&r), pinned);
        assert_eq!(
            r.header("set-cookie"),
            None,
            "a held cookie is not set again"
        );
    }
    // The rule without persistence: no cookie, round robin.
    let seen: std::collections::BTreeSet<String> = (0..6)
        .map(|_| {
            let r = get(gw.http, "app.test", "/free", &cookie);
            assert_eq!(r.header("set-cookie"), None);
            name(&r)
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Header persistence: the token comes back in X-Session, and requests
    // that send it stay; without it they spread.
    let first = get(gw.http, "app.test", "/api/x", "");
    let token = first
        .header("x-session")
        .expect("the session header")
        .to_string();
    assert_eq!(first.header("set-cookie"), None);
    let pinned = name(&first);
    for _ in 0..8 {
        let r = get(
            gw.http,
            "app.test",
            "/api/x",
            &format!("X-Session: {token}\r\n"),
        );
        assert_eq!(name(&r), pinned);
        assert_eq!(
            r.header("x-session"),
            None,
            "a held session is not set again"
        );
    }
    let seen: std::collections::BTreeSet<String> = (0..6)
        .map(|_| name(&get(gw.http, "app.test", "/api/x", "")))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // On the HTTPS listener the cookie is Secure.
    let ca = gw.dir.write("ca.pem", &crt);
    let resolve = format!("secure.test:{}:127.0.0.1", gw.https);
    let (out, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("https://secure.test:{}/shop", gw.https),
    ]);
    let set = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie over HTTPS: {out} {err}"));
    assert!(
        set.contains("SHOP=") && set.trim_end().ends_with("; Secure"),
        "{set}"
    );
}
