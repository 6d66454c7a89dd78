//! Request-level defences, end to end (README, Security):
//! - one meaning per request path: the path is normalized before routing,
//!   so a route's policies cannot be bypassed with `..`, escaped dots or
//!   doubled slashes, and the backend receives the path that was routed;
//! - forwarding headers believed only from trusted proxies;
//! - `portico rbac`, the Roles for reading only referenced Secrets.
//!
//! Real binary, real backends, raw HTTP/1.1 and curl (h2c).

use portico_integration_tests::*;

/// `app.test`: `/` → web, `/api` → api behind an allowlist that admits
/// nobody on loopback (the ingress-nginx plugin's
/// `whitelist-source-range`), so reaching `api` at all is a bypass.
/// `open.test`: `/` → web, `/api` → api without policy, to see the
/// forwarded path.
fn manifests(web: &Echo, api: &Echo) -> String {
    let mut m = String::new();
    m += &yaml::service("default", "web", "", &[("http", 80)]);
    m += &yaml::slice("default", "web-1", "web", "http", web.http, true);
    m += &yaml::service("default", "api", "", &[("http", 80)]);
    m += &yaml::slice("default", "api-1", "api", "http", api.http, true);
    m += &yaml::ingress(
        "default",
        "site",
        &[
            ("app.test", "/", "Prefix", "web", "http"),
            ("open.test", "/", "Prefix", "web", "http"),
            ("open.test", "/api", "Prefix", "api", "http"),
        ],
        "",
    );
    m += &allowlisted("admin-api", ("app.test", "/api", "api"), "10.0.0.0/8");
    m
}

/// An Ingress for (host, path, service) that admits only `cidr` (the
/// ingress-nginx plugin's `whitelist-source-range`).
fn allowlisted(name: &str, (host, path, service): (&str, &str, &str), cidr: &str) -> String {
    yaml::ingress("default", name, &[(host, path, "Prefix", service, "http")], "").replace(
        &format!("metadata: {{name: {name}, namespace: default}}"),
        &format!("metadata: {{name: {name}, namespace: default, annotations: {{nginx.ingress.kubernetes.io/whitelist-source-range: '{cidr}'}}}}"),
    )
}

fn policy_config() -> String {
    format!(
        "[ingress]\npolicy_plugin = \"nginx\"\n[[plugins.load]]\nname = \"nginx\"\npath = \"{}\"\n",
        built_plugins().join("ingress_nginx.wasm").display()
    )
}

/// (backend name, path it received) for a 200, else the status and body.
fn served(r: &Response) -> Result<(String, String), String> {
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.text().trim()));
    }
    let v = r.json();
    Ok((
        v["name"].as_str().unwrap().to_string(),
        v["path"].as_str().unwrap().to_string(),
    ))
}

#[test]
fn paths_are_normalized_before_routing_so_policies_cannot_be_bypassed() {
    let web = Echo::http("web");
    let api = Echo::http("api");
    let gw = Gateway::start(&[("site.yaml", &manifests(&web, &api))], &policy_config());

    // The allowlisted route refuses loopback clients however the path is
    // spelled: every spelling routes to /api and its policy.
    for path in [
        "/api",
        "/x/../api",
        "/x/%2e%2e/api",
        "/x/%2E%2e/api/",
        "//api",
        "/./api",
        "/%61pi",
        "/static/..//api/v1",
    ] {
        let r = http_get(gw.http, "app.test", path).unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(
            r.text().contains("default/admin-api"),
            "{path}: {}",
            r.text()
        );
    }
    // Paths that only look alike still go to `/`.
    for path in ["/apix", "/..api", "/x/.../api"] {
        let r = http_get(gw.http, "app.test", path).unwrap();
        assert_eq!(served(&r).map(|(n, _)| n), Ok("web".into()), "{path}");
    }

    // The backend receives the normalized path, the query as sent.
    let cases = [
        ("/x/../api/v1", "/api/v1", "api"),
        ("/x/%2e%2e/api?q=/../%2e", "/api?q=/../%2e", "api"),
        ("//api//v1/", "/api/v1/", "api"),
        ("/%7euser/a%2fb%20c", "/~user/a%2Fb%20c", "web"),
        ("/a/b/..", "/a/", "web"),
    ];
    // (%2f is refused by default: checked below with the keep policy.)
    for (sent, want, backend) in &cases[..3] {
        let r = http_get(gw.http, "open.test", sent).unwrap();
        assert_eq!(
            served(&r),
            Ok(((*backend).into(), (*want).into())),
            "{sent}"
        );
    }
    let r = http_get(gw.http, "open.test", cases[4].0).unwrap();
    assert_eq!(served(&r), Ok(("web".into(), "/a/".into())));

    // h2c: the same normalization (curl sends the dots as they are).
    let url = format!("http://127.0.0.1:{}/x/%2e%2e/api/v2", gw.http);
    let (out, err) = curl(&[
        "--http2-prior-knowledge",
        "--path-as-is",
        "-H",
        "Host: open.test",
        &url,
    ]);
    assert!(out.contains("\"name\":\"api\""), "{out} {err}");
    assert!(out.contains("\"path\":\"/api/v2\""), "{out} {err}");

    // Paths without one meaning: 400 naming why, before any route.
    let refused = [
        ("/../etc/passwd", "climbs above the root"),
        ("/api/%2e%2e/%2e%2e/x", "climbs above the root"),
        ("/api%2Fadmin", "encoded slash"),
        ("/api%5cadmin", "encoded slash"),
        ("/a%00.html", "NUL"),
        ("/a%zz", "invalid percent-escape"),
    ];
    for (path, why) in refused {
        let r = http_get(gw.http, "open.test", path).unwrap();
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains(why), "{path}: {}", r.text());
    }

    let m = gw.metrics();
    assert!(
        m.contains(
            "portico_http_paths_refused_total{reason=\"encoded slash (%2F or %5C) in path\"} 2"
        ),
        "{m}"
    );
    assert!(m.contains("portico_http_paths_normalized_total"), "{m}");
    assert!(m.contains("route=\"bad-path\",code_class=\"4xx\""), "{m}");

    // Encoded slashes kept as data on request: the backend gets them
    // uppercased, and they do not split segments.
    let keep = Gateway::start(
        &[("site.yaml", &manifests(&web, &api))],
        "[proxy.paths]\nescaped_slashes = \"keep\"\n",
    );
    let (sent, want, backend) = cases[3];
    let r = http_get(keep.http, "open.test", sent).unwrap();
    assert_eq!(served(&r), Ok((backend.into(), want.into())));
    let r = http_get(keep.http, "open.test", "/x%2f..%2fapi").unwrap();
    assert_eq!(served(&r), Ok(("web".into(), "/x%2F..%2Fapi".into())));
}

#[test]
fn normalization_can_be_turned_off_with_the_documented_risk() {
    let web = Echo::http("web");
    let api = Echo::http("api");
    let gw = Gateway::start(
        &[("site.yaml", &manifests(&web, &api))],
        &format!("{}[proxy.paths]\nnormalize = false\n", policy_config()),
    );
    // The raw path is routed (to `/`) and forwarded unchanged: a backend
    // that normalizes it serves /api without the allowlist having run.
    let r = http_get(gw.http, "app.test", "/x/../api").unwrap();
    assert_eq!(served(&r), Ok(("web".into(), "/x/../api".into())));
    assert_eq!(http_get(gw.http, "app.test", "/api").unwrap().status, 403);
}

#[test]
fn forwarding_headers_are_replaced_unless_the_peer_is_a_trusted_proxy() {
    let web = Echo::http("web");
    let api = Echo::http("api");
    let mut m = manifests(&web, &api);
    // Only 203.0.113.0/24 may use this route.
    m += &allowlisted("partners", ("partners.test", "/", "web"), "203.0.113.0/24");
    let forged = |host: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 203.0.113.7\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Port: 443\r\n\
             X-Real-IP: 203.0.113.7\r\nForwarded: for=203.0.113.7;proto=https\r\nConnection: close\r\n\r\n"
        )
    };

    // Untrusted peer (the default: nobody is trusted): every forwarding
    // header is Portico's own, and the allowlist sees the real peer.
    let gw = Gateway::start(&[("site.yaml", &m)], &policy_config());
    let r = http_request(gw.http, &forged("open.test")).unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "open.test", "{h}");
    assert_eq!(h["x-forwarded-port"], gw.http.to_string(), "{h}");
    assert!(h.get("forwarded").is_none(), "{h}");
    assert_eq!(
        http_request(gw.http, &forged("partners.test"))
            .unwrap()
            .status,
        403
    );

    // Loopback as a trusted proxy (a load balancer in front): the chain is
    // appended to, its scheme/host/port kept, and the client it names is
    // the one allowlists and X-Real-IP see.
    let behind_lb = Gateway::start(
        &[("site.yaml", &m)],
        &format!(
            "{}[proxy]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
            policy_config()
        ),
    );
    let r = http_request(behind_lb.http, &forged("open.test")).unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{h}");
    assert_eq!(h["x-real-ip"], "203.0.113.7", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-host"], "evil.test", "{h}");
    assert_eq!(h["x-forwarded-port"], "443", "{h}");
    assert_eq!(h["forwarded"], "for=203.0.113.7;proto=https", "{h}");
    let r = http_request(behind_lb.http, &forged("partners.test")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A client outside the allowlist behind the same proxy is refused; a
    // forged entry left of the proxy's own does not help it.
    let r = http_request(
        behind_lb.http,
        "GET / HTTP/1.1\r\nHost: partners.test\r\nX-Forwarded-For: 203.0.113.7, 198.51.100.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
}

/// `portico rbac` from manifest folders with the default config: one Role
/// per namespace naming the Secrets of the Ingresses Portico admits, and
/// nothing of another controller's Ingress (its Secret is not Portico's
/// to read).
#[test]
fn rbac_helper_grants_only_the_secrets_of_admitted_ingresses() {
    let dir = TempDir::new("rbac");
    let tls = |secret: &str| format!("  tls:\n  - hosts: [\"a.test\"]\n    secretName: {secret}\n");
    let other = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: theirs, namespace: blog}\n\
                 spec:\n  ingressClassName: another-controller\n  tls:\n  - hosts: [b.test]\n    secretName: theirs-tls\n  \
                 rules:\n  - host: b.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n---\n";
    dir.write(
        "app.yaml",
        &(yaml::ingress(
            "shop",
            "web",
            &[("a.test", "/", "Prefix", "web", "http")],
            &tls("shop-tls"),
        ) + &yaml::ingress(
            "blog",
            "web",
            &[("c.test", "/", "Prefix", "web", "http")],
            &tls("blog-tls"),
        ) + other),
    );
    let out = portico(&[
        "rbac",
        "--manifests",
        dir.path().to_str().unwrap(),
        "--service-account",
        "edge/portico",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> = text
        .split("---\n")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v.is_object())
        .collect();
    let roles: Vec<(String, String)> = docs
        .iter()
        .filter(|d| d["kind"] == "Role")
        .map(|d| {
            (
                d["metadata"]["namespace"].as_str().unwrap().to_string(),
                d["rules"][0]["resourceNames"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("blog".to_string(), "[\"blog-tls\"]".to_string()),
            ("shop".to_string(), "[\"shop-tls\"]".to_string())
        ],
        "{text}"
    );
    assert!(docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding")
        .all(|d| d["subjects"][0]["namespace"] == "edge" && d["subjects"][0]["name"] == "portico"));

    let bad = portico(&[
        "rbac",
        "--manifests",
        dir.path().to_str().unwrap(),
        "--service-account",
        "portico",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected NAMESPACE/NAME"));
}
