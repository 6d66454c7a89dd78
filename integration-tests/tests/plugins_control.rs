//! Control-plane plugins (Portico's control ABI v1) end to end: the
//! shipped `ingress-class` plugin, built from source with the SDK by
//! `plugins/build.sh`, decides which Ingresses the real binary serves;
//! a plugin that answers outside the schema is refused.

use portico_integration_tests::*;

fn manifests(echo: &Echo) -> String {
    let mut m = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: portico}\nspec: {controller: portico.io/ingress-controller}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: other}\nspec: {controller: example.com/other}\n---\n",
    );
    m += &yaml::service("default", "web", "", &[("http", 80)]);
    m += &yaml::slice("default", "web-1", "web", "http", echo.http, true);
    for (name, class) in [
        ("ours", "portico"),
        ("theirs", "other"),
        ("migrating", "nginx"),
    ] {
        m += &yaml::ingress(
            "default",
            name,
            &[(&format!("{name}.test"), "/", "Prefix", "web", "http")],
            "",
        )
        .replace("spec:\n", &format!("spec:\n  ingressClassName: {class}\n"));
    }
    m
}

fn admission_config(plugin_file: &str) -> String {
    format!(
        "[ingress]\nadmission = \"classes\"\naccepted_classes = [\"portico\", \"nginx\"]\n\
         [[plugins.load]]\nname = \"classes\"\npath = \"{plugin_file}\"\n"
    )
}

#[test]
fn the_ingress_class_plugin_decides_what_is_served() {
    let echo = Echo::http("web");
    let wasm = built_plugins().join("ingress_class.wasm");
    let g = Gateway::start(
        &[("m.yaml", &manifests(&echo))],
        &admission_config(&wasm.display().to_string()),
    );
    assert_eq!(http_get(g.http, "ours.test", "/").unwrap().status, 200);
    assert_eq!(http_get(g.http, "migrating.test", "/").unwrap().status, 200);
    assert_eq!(http_get(g.http, "theirs.test", "/").unwrap().status, 404);

    // `check` loads the plugin too, and agrees.
    let dir = TempDir::new("admission-check");
    dir.write("m.yaml", &manifests(&echo));
    let cfg = dir.write(
        "portico.toml",
        &admission_config(&wasm.display().to_string()),
    );
    let out = portico_check(&cfg, dir.path());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Portico control ABI v1"), "{text}");

    // The Ingress left out is never silent: `check` warns with the
    // admission's reason...
    let why = "spec.ingressClassName other belongs to controller example.com/other, not portico.io/ingress-controller";
    assert!(
        text.contains(&format!(
            "Ingress default/theirs: warning: not served: {why}"
        )),
        "{text}"
    );
    assert!(text.contains("1 warning(s)"), "{text}");
    // ...`explain` for its host says which Ingress would have matched and why
    // it is not served...
    let ex = portico(&[
        "explain",
        "--admin",
        &format!("127.0.0.1:{}", g.admin),
        "--host",
        "theirs.test",
    ]);
    let ex = String::from_utf8_lossy(&ex.stdout);
    assert!(
        ex.contains(&format!("not served:  Ingress default/theirs ({why})")),
        "{ex}"
    );
    assert!(ex.contains("is not served"), "{ex}");
    // ...and `/config`, the metrics and the log (once) have it.
    let config = http_get(g.admin, "admin", "/config").unwrap().json();
    assert_eq!(config["ingresses"]["served"], 2, "{config}");
    assert_eq!(
        config["ingresses"]["ignored"][0]["ingress"],
        "default/theirs"
    );
    assert_eq!(config["ingresses"]["ignored"][0]["reason"], why);
    let metrics = g.metrics();
    assert!(
        metrics.contains("portico_ingresses{state=\"ignored\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portico_ingresses{state=\"served\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        g.log().matches("Ingress not served").count(),
        1,
        "{}",
        g.log()
    );
}

#[test]
fn an_answer_outside_the_schema_is_refused_and_nothing_is_admitted_by_it() {
    let echo = Echo::http("web");
    let dir = TempDir::new("bad-control");
    // Answers {"admit": "yes"}: not a boolean, no reason.
    let answer = r#"{"admit": "yes"}"#;
    let bad = dir.write(
        "bad.wat",
        &format!(
            r#"(module
                (import "env" "portico_return" (func $ret (param i32 i32) (result i32)))
                (memory (export "memory") 1)
                (data (i32.const 16) "{}")
                (func (export "portico_control_abi_v1"))
                {}
                (func (export "portico_admit_ingress") (param i32 i32) (result i32)
                    (drop (call $ret (i32.const 16) (i32.const {})))
                    (i32.const 0)))"#,
            answer.replace('"', "\\\""),
            wat_bump_allocator("portico_alloc"),
            answer.len()
        ),
    );
    let g = Gateway::start(
        &[("m.yaml", &manifests(&echo))],
        &admission_config(&bad.display().to_string()),
    );
    assert_eq!(http_get(g.http, "ours.test", "/").unwrap().status, 404);
    let log = g.log();
    assert!(log.contains("answer.admit must be true or false"), "{log}");
    let errors = g
        .metrics()
        .lines()
        .find(|l| l.starts_with("portico_plugin_control_errors_total{plugin=\"classes\""))
        .map(str::to_string);
    assert!(errors.is_some(), "{}", g.metrics());
}

/// Loads the shipped `ingress-nginx` as the policy plugin.
fn nginx_config() -> String {
    format!(
        "[ingress]\npolicy_plugin = \"nginx\"\n[[plugins.load]]\nname = \"nginx\"\npath = \"{}\"\n",
        built_plugins().join("ingress_nginx.wasm").display()
    )
}

/// An Ingress with ingress-nginx annotations.
fn nginx_ingress(name: &str, path: &str, annotations: &[(&str, &str)]) -> String {
    let ann: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: '{v}'"))
        .collect();
    yaml::ingress(
        "default",
        name,
        &[(&format!("{name}.test"), path, "Prefix", "web", "http")],
        "",
    )
    .replace(
        &format!("metadata: {{name: {name}, namespace: default}}"),
        &format!(
            "metadata: {{name: {name}, namespace: default, annotations: {{{}}}}}",
            ann.join(", ")
        ),
    )
}

#[test]
fn the_ingress_nginx_plugin_turns_annotations_into_typed_policy() {
    let echo = Echo::http("web");
    let mut m = yaml::service("default", "web", "", &[("http", 80)]);
    m += &yaml::slice("default", "web-1", "web", "http", echo.http, true);
    m += &nginx_ingress("secure", "/", &[("force-ssl-redirect", "true")]);
    m += &nginx_ingress("root", "/", &[("app-root", "/app")]);
    m += &nginx_ingress("limited", "/", &[("proxy-body-size", "10")]);
    m += &nginx_ingress("denied", "/", &[("whitelist-source-range", "10.0.0.0/8")]);
    // ingress-nginx's rewrite: the path is a regex and the whole path is
    // replaced, with capture groups.
    m += &nginx_ingress(
        "rewrite",
        "/API(/|$)(.*)",
        &[
            ("rewrite-target", "/v2/$2"),
            ("upstream-vhost", "internal.svc"),
        ],
    );
    m += &nginx_ingress("regex", "/items/[0-9]+$", &[("use-regex", "true")]);
    m += &nginx_ingress(
        "cors",
        "/",
        &[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://app.example"),
        ],
    );
    m += &nginx_ingress(
        "snippet",
        "/",
        &[("configuration-snippet", "more_set_headers x;")],
    );
    let g = Gateway::start(&[("m.yaml", &m)], &nginx_config());

    let r = http_get(g.http, "secure.test", "/x?y=1").unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://secure.test/x?y=1"));

    let r = http_get(g.http, "root.test", "/").unwrap();
    assert_eq!((r.status, r.header("location")), (302, Some("/app")));
    assert_eq!(http_get(g.http, "root.test", "/other").unwrap().status, 200);

    let post = |host: &str, body: &str| {
        http_request(
            g.http,
            &format!(
                "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    assert_eq!(post("limited.test", "0123456789abcdef").status, 413);
    assert_eq!(post("limited.test", "short").status, 200);

    // 127.0.0.1 is not in 10.0.0.0/8.
    assert_eq!(http_get(g.http, "denied.test", "/").unwrap().status, 403);

    let r = http_get(g.http, "rewrite.test", "/api/users?x=1").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/v2/users?x=1");
    let r = http_get(g.http, "rewrite.test", "/api").unwrap();
    assert_eq!(r.json()["path"], "/v2/");
    assert_eq!(r.json()["host"], "internal.svc");
    // use-regex: matched from the start, case-insensitively.
    for (host, path, status) in [
        ("rewrite.test", "/apix", 404),
        ("regex.test", "/Items/42", 200),
        ("regex.test", "/items/4x", 404),
        ("regex.test", "/x/items/4", 404),
    ] {
        let got = http_get(g.http, host, path).unwrap().status;
        assert_eq!(got, status, "{host}{path}");
    }

    // CORS: the preflight is answered here; allowed origins get the
    // headers on the real response, others do not.
    let with_origin = |method: &str, origin: &str| {
        http_request(
            g.http,
            &format!("{method} / HTTP/1.1\r\nHost: cors.test\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    };
    let r = with_origin("OPTIONS", "https://app.example");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    let r = with_origin("GET", "https://app.example");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = with_origin("GET", "https://evil.example");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // The snippet is refused (reported), the rest of that Ingress served.
    assert_eq!(http_get(g.http, "snippet.test", "/").unwrap().status, 200);
    let dir = TempDir::new("nginx-check");
    dir.write("m.yaml", &m);
    let cfg = dir.write("portico.toml", &nginx_config());
    let out = portico_check(&cfg, dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("default/snippet") && text.contains("configuration-snippet refused"),
        "{text}"
    );
}

/// `portico explain` asked of the running gateway.
fn explain(g: &Gateway, host: &str) -> String {
    let out = portico(&[
        "explain",
        "--admin",
        &format!("127.0.0.1:{}", g.admin),
        "--host",
        host,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Service with one ready endpoint for each echo.
fn services(list: &[(&str, &Echo)]) -> String {
    let mut m = String::new();
    for (svc, echo) in list {
        m += &yaml::service("default", svc, "", &[("http", 80)]);
        m += &yaml::slice("default", &format!("{svc}-1"), svc, "http", echo.http, true);
    }
    m
}

/// `backend-protocol`: HTTPS to a TLS-only endpoint (self-signed, not
/// verified, as ingress-nginx), GRPC as h2c with the gRPC trailer passed
/// back to an HTTP/2 client.
#[test]
fn backend_protocol_https_and_grpc_reach_their_endpoints() {
    let tls = Echo::https("tls-pod");
    let h2 = Echo::h2c("h2-pod");
    let mut m = services(&[("tls", &tls), ("h2", &h2)]);
    let to = |ing: &str, svc: &str, protocol: Option<&str>| {
        let ann: Vec<(&str, &str)> = protocol
            .map(|p| ("backend-protocol", p))
            .into_iter()
            .collect();
        nginx_ingress(ing, "/", &ann)
            .replace("service: {name: web,", &format!("service: {{name: {svc},"))
    };
    m += &to("secure", "tls", Some("HTTPS"));
    m += &to("plain", "tls", None);
    m += &to("grpc", "h2", Some("GRPC"));
    let g = Gateway::start(&[("m.yaml", &m)], &nginx_config());

    let r = http_get(g.http, "secure.test", "/over-tls").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "tls-pod");
    assert_eq!(r.json()["path"], "/over-tls");
    // Without the annotation the same endpoint gets clear text and fails.
    assert_eq!(http_get(g.http, "plain.test", "/").unwrap().status, 502);

    // An HTTP/1.1 client: the upstream leg is HTTP/2.
    let r = http_get(g.http, "grpc.test", "/pkg.Svc/Call").unwrap();
    // (The answer is chunked: h2 carries no length.)
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"proto\":\"h2\""), "{}", r.text());
    assert!(
        r.text().contains("\"path\":\"/pkg.Svc/Call\""),
        "{}",
        r.text()
    );
    // A gRPC-shaped call over h2c: the trailer comes back.
    let (out, err) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-H",
        "content-type: application/grpc",
        "--data-binary",
        "abc",
        "-H",
        "Host: grpc.test",
        &format!("http://127.0.0.1:{}/pkg.Svc/Call", g.http),
    ]);
    assert!(out.starts_with("HTTP/2 200"), "{out}{err}");
    assert!(out.contains("\"body_bytes\":3"), "{out}");
    assert!(out.contains("grpc-status: 0"), "{out}");
}

/// ingress-nginx canaries: a second Ingress for the same host and path
/// takes requests by header, by cookie, then by weight; a canary with no
/// main Ingress is reported and not served.
#[test]
fn canary_ingresses_take_their_share_of_the_main_route() {
    let stable = Echo::http("stable");
    let next = Echo::http("next");
    let mut m = services(&[("stable", &stable), ("next", &next)]);
    let to = |ing: &str, host: &str, svc: &str, ann: &[(&str, &str)]| {
        nginx_ingress(ing, "/", ann)
            .replace("service: {name: web,", &format!("service: {{name: {svc},"))
            .replace(&format!("\"{ing}.test\""), &format!("\"{host}\""))
    };
    // The canary sorts first: it is attached whatever the order.
    m += &to(
        "a-canary",
        "shop.test",
        "next",
        &[
            ("canary", "true"),
            ("canary-weight", "50"),
            ("canary-by-header", "X-Canary"),
            ("canary-by-cookie", "use_canary"),
        ],
    );
    m += &to("main", "shop.test", "stable", &[]);
    m += &to(
        "orphan",
        "orphan.test",
        "next",
        &[("canary", "true"), ("canary-weight", "100")],
    );
    let g = Gateway::start(&[("m.yaml", &m)], &nginx_config());

    let name = |extra: &str| {
        let r = http_request(
            g.http,
            &format!("GET / HTTP/1.1\r\nHost: shop.test\r\n{extra}Connection: close\r\n\r\n"),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["name"].as_str().unwrap().to_string()
    };
    for _ in 0..10 {
        assert_eq!(name("X-Canary: always\r\n"), "next");
        assert_eq!(
            name("X-Canary: never\r\nCookie: use_canary=always\r\n"),
            "stable"
        );
        assert_eq!(name("Cookie: a=b; use_canary=always\r\n"), "next");
        assert_eq!(name("Cookie: use_canary=never\r\n"), "stable");
    }
    // 50%: out of 200 requests each side gets well over 50 (the chance of
    // fewer is below 1e-12).
    let to_next = (0..200).filter(|_| name("") == "next").count();
    assert!(
        (50..=150).contains(&to_next),
        "{to_next} of 200 went to the canary"
    );
    assert!(g
        .metrics()
        .contains("portico_canary_requests_total{ingress=\"default/a-canary\"}"));

    let text = explain(&g, "shop.test");
    assert!(
        text.contains("canary:      Ingress default/a-canary to default/next:http (header X-Canary, cookie use_canary, weight 50/100)"),
        "{text}"
    );
    assert_eq!(http_get(g.http, "orphan.test", "/").unwrap().status, 404);
    let cfg = g.config_json().to_string();
    assert!(
        cfg.contains("canary for orphan.test /, but no other Ingress routes that host and path"),
        "{cfg}"
    );
}

/// ingress-nginx `limit-rps` (burst of 5 × the rate) and
/// `limit-connections` per client: over them, 503; `limit-whitelist`
/// clients are never limited.
#[test]
fn rate_and_connection_limits_per_client() {
    let echo = Echo::http("web");
    let mut m = services(&[("web", &echo)]);
    m += &nginx_ingress("rps", "/", &[("limit-rps", "2")]);
    m += &nginx_ingress(
        "exempt",
        "/",
        &[("limit-rps", "1"), ("limit-whitelist", "127.0.0.0/8")],
    );
    m += &nginx_ingress("conns", "/", &[("limit-connections", "1")]);
    let g = Gateway::start(&[("m.yaml", &m)], &nginx_config());

    let statuses: Vec<u16> = (0..30)
        .map(|_| http_get(g.http, "rps.test", "/").unwrap().status)
        .collect();
    assert!(statuses[..10].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(g
        .metrics()
        .contains("portico_rate_limited_total{ingress=\"default/rps\",limit=\"rate\"}"));
    for _ in 0..30 {
        assert_eq!(http_get(g.http, "exempt.test", "/").unwrap().status, 200);
    }

    // One request in flight holds the only slot.
    let port = g.http;
    let slow = std::thread::spawn(move || http_get(port, "conns.test", "/delay/1500").unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let r = http_get(g.http, "conns.test", "/").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("connections limit"), "{}", r.text());
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(http_get(g.http, "conns.test", "/").unwrap().status, 200);
}

/// ingress-nginx `default-backend` (serves when the route's Service has no
/// endpoints) and `custom-http-errors` (upstream errors answered by the
/// default backend, which gets `X-Code` and friends).
#[test]
fn default_backend_and_custom_http_errors() {
    let web = Echo::http("web");
    let errors = Echo::http("errors");
    let mut m = services(&[("web", &web), ("errors", &errors)]);
    m += &yaml::service("default", "nopods", "", &[("http", 80)]);
    m += &nginx_ingress(
        "custom",
        "/",
        &[
            ("default-backend", "errors"),
            ("custom-http-errors", "404,503"),
        ],
    );
    m += &nginx_ingress("empty", "/", &[("default-backend", "errors")])
        .replace("service: {name: web,", "service: {name: nopods,");
    let g = Gateway::start(&[("m.yaml", &m)], &nginx_config());

    // Not listed: the upstream's own answer.
    let r = http_get(g.http, "custom.test", "/status/500").unwrap();
    assert_eq!((r.status, r.json()["name"].as_str()), (500, Some("web")));
    // Listed: the default backend answers the same request.
    let r = http_request(
        g.http,
        "GET /status/404?q=1 HTTP/1.1\r\nHost: custom.test\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let v = r.json();
    assert_eq!(v["name"], "errors", "{v}");
    let h = &v["headers"];
    assert_eq!(h["x-code"], "404", "{v}");
    assert_eq!(h["x-original-uri"], "/status/404?q=1", "{v}");
    assert_eq!(h["x-format"], "application/json", "{v}");
    assert_eq!(
        (
            &h["x-namespace"],
            &h["x-ingress-name"],
            &h["x-service-name"]
        ),
        (&"default".into(), &"custom".into(), &"web".into()),
        "{v}"
    );
    assert_eq!(r.header("x-request-id"), h["x-request-id"].as_str());
    assert!(g
        .metrics()
        .contains("portico_custom_errors_total{ingress=\"default/custom\"}"));

    // No endpoints behind the route: the default backend serves.
    let r = http_get(g.http, "empty.test", "/x").unwrap();
    assert_eq!((r.status, r.json()["name"].as_str()), (200, Some("errors")));
    let text = explain(&g, "empty.test");
    assert!(
        text.contains("has no ready or serving endpoint: its default backend default/errors:"),
        "{text}"
    );
}
