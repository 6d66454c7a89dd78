//! proxy-wasm HTTP filters in the data plane, end to end: the real
//! binary, real echo backends, real plugins compiled from source by
//! `plugins/build.sh` (written against the upstream proxy-wasm Rust SDK,
//! not ours), and hostile plugins written here as WebAssembly text.

use std::time::{Duration, Instant};

use portico_integration_tests::*;

fn wasm(name: &str) -> String {
    built_plugins().join(name).display().to_string()
}

/// One Service `web` on the echo backend, routed for `app.test` (`/`)
/// and, with the annotation, `plugged.test`.
fn manifests(echo: &Echo, annotation: Option<&str>) -> String {
    let mut m = yaml::service("default", "web", "", &[("http", 80)]);
    m += &yaml::slice("default", "web-1", "web", "http", echo.http, true);
    m += &yaml::ingress(
        "default",
        "plain",
        &[("app.test", "/", "Prefix", "web", "http")],
        "",
    );
    if let Some(a) = annotation {
        m += &yaml::ingress(
            "default",
            "plugged",
            &[("plugged.test", "/", "Prefix", "web", "http")],
            "",
        )
        .replace(
            "metadata: {name: plugged, namespace: default}",
            &format!(
                "metadata: {{name: plugged, namespace: default, annotations: {{portico.io/plugins: \"{a}\"}}}}"
            ),
        );
    }
    m
}

/// [`manifests`] plus one Ingress per (host, plugin) whose routes run that
/// plugin (`portico.io/plugins`).
fn routes_with_plugins(echo: &Echo, routes: &[(&str, &str)]) -> String {
    let mut m = manifests(echo, None);
    for (host, plugin) in routes {
        m += &yaml::ingress("default", plugin, &[(host, "/", "Prefix", "web", "http")], "")
            .replace(
                &format!("metadata: {{name: {plugin}, namespace: default}}"),
                &format!(
                    "metadata: {{name: {plugin}, namespace: default, annotations: {{portico.io/plugins: {plugin}}}}}"
                ),
            );
    }
    m
}

fn plugin_config(name: &str, file: &str, config: &str, extra: &str) -> String {
    format!(
        "[[plugins.load]]\nname = \"{name}\"\npath = \"{file}\"\nconfig = \"{config}\"\n{extra}\n"
    )
}

fn post(port: u16, host: &str, path: &str, body: &str) -> Response {
    http_request(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

/// The compat plugin's timer ticks so far (shared data, all instances).
fn ticks(g: &Gateway) -> u64 {
    http_get(g.http, "app.test", "/ticks")
        .unwrap()
        .text()
        .trim()
        .parse()
        .unwrap()
}

fn metric(g: &Gateway, prefix: &str) -> Option<f64> {
    g.metrics()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A filter built with a second SDK (AssemblyScript's
/// `@solo-io/proxy-runtime`): it imports WASI as `wasi_unstable`, exports
/// `malloc` and ABI 0.2.0, finds its root context by root id, and counts
/// with `proxy_record_metric` on a counter, all as it does under Envoy.
#[test]
fn an_assemblyscript_sdk_filter_runs_unchanged() {
    let echo = Echo::http("web");
    let file = built_assemblyscript_plugin().display().to_string();
    let mut config = String::from("[plugins]\nhttp = [\"as\"]\n");
    config += &plugin_config("as", &file, "green", "root_id = \"compat_as\"");
    let g = Gateway::start(&[("m.yaml", &manifests(&echo, None))], &config);

    // Headers both ways and its configuration.
    let r = http_get(g.http, "app.test", "/hello").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-as-status"), Some("200"));
    let seen = r.json();
    assert_eq!(seen["headers"]["x-as-config"], "green", "{seen}");
    assert_eq!(seen["headers"]["x-as-method"], "GET", "{seen}");

    // A local response, with its own header (not the echo's JSON). As in
    // Envoy, the reply goes through the filter's response phase too.
    let r = http_get(g.http, "app.test", "/as-local").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "assemblyscript says hi\n");
    assert_eq!(r.header("x-as"), Some("local"));
    assert_eq!(
        r.header("x-as-status"),
        Some("200"),
        "response phase on a local reply"
    );

    // Its counter went up by one per request (the SDK records each step).
    for _ in 0..3 {
        assert_eq!(http_get(g.http, "app.test", "/x").unwrap().status, 200);
    }
    let count = metric(
        &g,
        "portico_plugin_metric{plugin=\"as\",name=\"as_requests\"}",
    );
    assert_eq!(count, Some(5.0), "{}", g.metrics());
    assert!(g.log().contains("compat-as answered 200"), "{}", g.log());
}

/// The SDK looks its root context up by `plugin_root_id`: under the id it
/// registered the filter starts; under another it aborts at start, as in
/// Envoy, and `portico check` says which step failed.
#[test]
fn a_plugin_starts_only_under_the_root_id_it_registered() {
    let file = built_assemblyscript_plugin();
    let check = |root_id: &str| {
        let out = std::process::Command::new(portico_bin())
            .args(["check", "--plugin"])
            .arg(&file)
            .args(["--plugin-root-id", root_id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let good = check("compat_as");
    assert!(good.contains("proxy-wasm ABI 0.2.0"), "{good}");
    assert!(good.contains("; started"), "{good}");
    let bad = check("someone_else");
    assert!(bad.contains("does not start"), "{bad}");
    assert!(bad.contains("proxy_on_context_create"), "{bad}");
}

#[test]
fn an_upstream_sdk_filter_sees_and_changes_requests_and_responses() {
    let echo = Echo::http("web");
    let mut config = String::from("[plugins]\nhttp = [\"compat\"]\n");
    config += &plugin_config("compat", &wasm("compat_http_filter.wasm"), "blue", "");
    let g = Gateway::start(&[("m.yaml", &manifests(&echo, None))], &config);

    // Headers in, properties, shared-data counter.
    let r = http_get(g.http, "app.test", "/hello").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-compat"), Some("1"));
    assert_eq!(r.header("x-compat-status"), Some("200"));
    let seen = r.json();
    let h = &seen["headers"];
    assert_eq!(h["x-compat-tag"], "blue");
    assert_eq!(h["x-compat-method"], "GET");
    assert_eq!(h["x-compat-route"], "default/plain");
    assert!(
        h["x-compat-source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{h}"
    );
    assert!(
        h.get("x-compat-sni").is_none(),
        "no SNI over clear text: {h}"
    );
    let first: u64 = h["x-compat-count"].as_str().unwrap().parse().unwrap();
    let r = http_get(g.http, "app.test", "/hello").unwrap();
    let second: u64 = r.json()["headers"]["x-compat-count"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(second, first + 1, "shared data counts across requests");
    // Over TLS the plugin reads the client's SNI.
    let (out, err) = curl(&[
        "-k",
        "--resolve",
        &format!("app.test:{}:127.0.0.1", g.https),
        &format!("https://app.test:{}/sni", g.https),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    assert_eq!(v["headers"]["x-compat-sni"], "app.test", "{v}");

    // A local response never reaches the backend.
    let r = http_get(g.http, "app.test", "/blocked").unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-blocked-by"), Some("compat"));
    assert_eq!(r.text(), "blocked\n");

    // Path rewrite.
    let r = http_get(g.http, "app.test", "/rewrite/a?b=1").unwrap();
    assert_eq!(r.json()["path"], "/rewritten/a?b=1");

    // Request body buffered and rewritten (the plugin dropped the length,
    // so the proxy sent it chunked).
    let r = post(g.http, "app.test", "/upper", "hello body");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["body"], "HELLO BODY");
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked");

    // Response body buffered and rewritten.
    let (out, err) = curl(&[
        "-H",
        "Host: app.test",
        "--data",
        "abc",
        &format!("http://127.0.0.1:{}/upper-response", g.http),
    ]);
    assert!(out.contains("\"BODY\":\"ABC\""), "{out}{err}");

    // Timers: on_tick counts in shared data; /ticks reads it.
    std::thread::sleep(Duration::from_millis(300));
    let ticks = ticks(&g);
    assert!(ticks >= 3, "{ticks} ticks in 300 ms at 20 ms");

    // Shared queues: a request enqueues, the registering root context is
    // told (proxy_on_queue_ready), dequeues and keeps the item.
    let r = http_get(g.http, "app.test", "/enqueue/hello-queue").unwrap();
    assert_eq!(r.status, 202);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let last = http_get(g.http, "app.test", "/queue-last").unwrap().text();
        if last == "hello-queue" {
            break;
        }
        assert!(Instant::now() < end, "queue never delivered: {last:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The plugin's own metric, and the host's.
    let requests = metric(
        &g,
        "portico_plugin_metric{plugin=\"compat\",name=\"compat_requests\"}",
    );
    assert!(requests.is_some_and(|n| n >= 5.0), "{requests:?}");
    let ok = metric(
        &g,
        "portico_plugin_calls_total{plugin=\"compat\",result=\"ok\"}",
    );
    assert!(ok.is_some_and(|n| n > 10.0), "{ok:?}");
    assert!(g
        .log()
        .contains("compat-http-filter configured with tag \"blue\""));
}

#[test]
fn timers_tick_from_the_start_before_any_request() {
    let echo = Echo::http("web");
    let mut config = String::from("[plugins]\nhttp = [\"compat\"]\n");
    config += &plugin_config("compat", &wasm("compat_http_filter.wasm"), "green", "");
    let g = Gateway::start(&[("m.yaml", &manifests(&echo, None))], &config);
    // No request has reached a worker yet, so only the plugin's
    // main-thread instance can have ticked (every 20 ms); the request
    // below starts a worker's instance, whose own ticks start at 0.
    std::thread::sleep(Duration::from_millis(600));
    let ticks = ticks(&g);
    assert!(
        ticks >= 10,
        "{ticks} ticks in the 600 ms before the first request, at 20 ms"
    );
}

#[test]
fn route_plugins_come_from_the_ingress_annotation() {
    let echo = Echo::http("web");
    let config = plugin_config("compat", &wasm("compat_http_filter.wasm"), "route", "");
    let g = Gateway::start(&[("m.yaml", &manifests(&echo, Some("compat")))], &config);
    let plugged = http_get(g.http, "plugged.test", "/").unwrap();
    assert_eq!(plugged.json()["headers"]["x-compat-tag"], "route");
    assert_eq!(
        plugged.json()["headers"]["x-compat-route"],
        "default/plugged"
    );
    let plain = http_get(g.http, "app.test", "/").unwrap();
    assert!(plain.json()["headers"].get("x-compat-tag").is_none());
    assert_eq!(plain.header("x-compat"), None);

    // An annotation naming a plugin that is not loaded: the route is not
    // served without it, and `check` says why.
    let echo2 = Echo::http("web");
    let dir = TempDir::new("plugins-missing");
    dir.write("m.yaml", &manifests(&echo2, Some("compat, auth")));
    let cfg = dir.write("portico.toml", &config);
    let out = portico_check(&cfg, dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("default/plugged") && text.contains("plugin \"auth\" is not loaded"),
        "{text}"
    );
    // `explain` says which plugins a request gets, and from where.
    let out = portico(&[
        "explain",
        "--config",
        cfg.to_str().unwrap(),
        "--manifests",
        dir.path().to_str().unwrap(),
        "--host",
        "plugged.test",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("plugins:     compat (Ingress default/plugged (portico.io/plugins)), auth (Ingress default/plugged"),
        "{text}"
    );
    g.write_manifest("m.yaml", &manifests(&echo, Some("compat, auth")));
    let r = http_get(g.http, "plugged.test", "/").unwrap();
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("plugin auth is not loaded"),
        "{}",
        r.text()
    );
    assert_eq!(http_get(g.http, "app.test", "/").unwrap().status, 200);
}

/// A plugin whose `proxy_on_request_headers` runs `body` (WebAssembly
/// text that leaves an i32 action), for ABI `abi`.
fn hostile(dir: &TempDir, name: &str, abi: &str, body: &str) -> String {
    dir.write(
        &format!("{name}.wat"),
        &format!(
            r#"(module
                (memory (export "memory") 1)
                (func (export "proxy_abi_version_{abi}"))
                {}
                (func (export "proxy_on_context_create") (param i32 i32))
                (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                    {body}))"#,
            wat_bump_allocator("proxy_on_memory_allocate")
        ),
    )
    .display()
    .to_string()
}

/// A plugin that adds a header value with CR LF in it (a header-splitting
/// attempt) is refused at the call (`BadArgument`); it traps on that, as
/// SDKs do on an unexpected status, and its fail policy decides: open, the
/// request goes on without its edit; closed, a 500 that names the plugin
/// and carries no internal error text. Nothing reaches the backend.
#[test]
fn a_header_edit_http_cannot_carry_is_refused_under_the_fail_policy() {
    let echo = Echo::http("web");
    let dir = TempDir::new("split");
    let wasm = dir.write(
        "split.wat",
        &format!(
            r#"(module
                (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
                (memory (export "memory") 1)
                (data (i32.const 16) "x-split")
                (data (i32.const 32) "a\0d\0ax-injected: 1")
                (func (export "proxy_abi_version_0_2_1"))
                {}
                (func (export "proxy_on_context_create") (param i32 i32))
                (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                    (if (call $add (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 32) (i32.const 16))
                        (then unreachable))
                    i32.const 0))"#,
            wat_bump_allocator("proxy_on_memory_allocate")
        ),
    )
    .display()
    .to_string();
    let mut config = plugin_config("split-open", &wasm, "", "fail = \"open\"");
    config += &plugin_config("split-closed", &wasm, "", "fail = \"closed\"");
    let m = routes_with_plugins(
        &echo,
        &[("open.test", "split-open"), ("closed.test", "split-closed")],
    );
    let g = Gateway::start(&[("m.yaml", &m)], &config);

    let r = http_get(g.http, "open.test", "/").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert!(seen["headers"].get("x-injected").is_none(), "{seen}");
    assert!(seen["headers"].get("x-split").is_none(), "{seen}");

    let r = http_get(g.http, "closed.test", "/").unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.text(), "plugin split-closed failed\n");
    for plugin in ["split-open", "split-closed"] {
        let traps = metric(
            &g,
            &format!("portico_plugin_failures_total{{plugin=\"{plugin}\",kind=\"trap\"}}"),
        );
        assert_eq!(traps, Some(1.0), "{plugin}: {}", g.metrics());
    }
}

/// A plugin whose own allocator traps, or loops, when the host hands it
/// a header value: the whole call fails with it (not a status the plugin
/// can ignore), the instance is replaced, the fail policy applies, and a
/// looping allocator is stopped at the plugin's deadline.
#[test]
fn a_failing_allocator_fails_the_call_under_the_fail_policy() {
    let echo = Echo::http("web");
    let dir = TempDir::new("alloc");
    let module = |name: &str, allocator: &str| {
        dir.write(
            &format!("{name}.wat"),
            &format!(
                r#"(module
                    (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
                    (memory (export "memory") 1)
                    (data (i32.const 16) "host")
                    (func (export "proxy_abi_version_0_2_1"))
                    (func (export "proxy_on_memory_allocate") (param i32) (result i32) {allocator})
                    (func (export "proxy_on_context_create") (param i32 i32))
                    (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                        (drop (call $get (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 64) (i32.const 68)))
                        i32.const 0))"#
            ),
        )
        .display()
        .to_string()
    };
    let trap = module("alloc-trap", "unreachable");
    let spin = module("alloc-spin", "(loop br 0) i32.const 0");
    let mut config = plugin_config("alloc-trap", &trap, "", "fail = \"closed\"");
    config += &plugin_config(
        "alloc-spin",
        &spin,
        "",
        "fail = \"closed\"\ndeadline_ms = 20",
    );
    let m = routes_with_plugins(
        &echo,
        &[("trap.test", "alloc-trap"), ("spin.test", "alloc-spin")],
    );
    let g = Gateway::start(&[("m.yaml", &m)], &config);
    for _ in 0..2 {
        let r = http_get(g.http, "trap.test", "/").unwrap();
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.text(), "plugin alloc-trap failed\n");
        let started = Instant::now();
        let r = http_get(g.http, "spin.test", "/").unwrap();
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a looping allocator held the request {:?}",
            started.elapsed()
        );
    }
    for (plugin, kind) in [("alloc-trap", "trap"), ("alloc-spin", "deadline")] {
        let failures = metric(
            &g,
            &format!("portico_plugin_failures_total{{plugin=\"{plugin}\",kind=\"{kind}\"}}"),
        );
        assert_eq!(failures, Some(2.0), "{plugin}: {}", g.metrics());
    }
    assert_eq!(http_get(g.http, "app.test", "/").unwrap().status, 200);
}

/// A plugin that fails on every request (a loop that hits its deadline)
/// trips its circuit after 5 failures: later requests get its fail policy
/// at once, without a worker spending the deadline in it; after the
/// cool-down one probe calls it again (and, still failing, reopens it).
#[test]
fn a_plugin_that_keeps_failing_trips_its_circuit() {
    let echo = Echo::http("web");
    let dir = TempDir::new("breaker");
    let spin = hostile(&dir, "spin", "0_2_1", "(loop br 0) i32.const 0");
    let config = plugin_config("spin", &spin, "", "fail = \"closed\"\ndeadline_ms = 20");
    let g = Gateway::start(&[("m.yaml", &manifests(&echo, Some("spin")))], &config);
    let failures = |g: &Gateway| {
        metric(
            g,
            "portico_plugin_failures_total{plugin=\"spin\",kind=\"deadline\"}",
        )
        .unwrap_or(0.0)
    };
    let refused = |g: &Gateway| {
        metric(
            g,
            "portico_plugin_calls_total{plugin=\"spin\",result=\"circuit_open\"}",
        )
        .unwrap_or(0.0)
    };
    for _ in 0..5 {
        assert_eq!(http_get(g.http, "plugged.test", "/").unwrap().status, 500);
    }
    assert_eq!(failures(&g), 5.0, "{}", g.metrics());
    // Open: the fail policy (closed: 500) without calling the plugin.
    for _ in 0..10 {
        let r = http_get(g.http, "plugged.test", "/").unwrap();
        assert_eq!(r.status, 500);
        assert_eq!(r.text(), "plugin spin failed\n");
    }
    assert_eq!(failures(&g), 5.0, "the plugin was called while open");
    assert_eq!(refused(&g), 10.0, "{}", g.metrics());
    assert_eq!(g.log().matches("circuit open").count(), 1, "{}", g.log());
    assert!(g
        .metrics()
        .contains("portico_plugin_circuit_opened_total{plugin=\"spin\"} 1"));
    // Other routes never noticed.
    assert_eq!(http_get(g.http, "app.test", "/").unwrap().status, 200);
    // After the cool-down, one probe: it fails again, the circuit reopens.
    std::thread::sleep(Duration::from_millis(5_300));
    assert_eq!(http_get(g.http, "plugged.test", "/").unwrap().status, 500);
    assert_eq!(failures(&g), 6.0, "one probe call");
    assert_eq!(http_get(g.http, "plugged.test", "/").unwrap().status, 500);
    assert_eq!(failures(&g), 6.0, "open again after the failed probe");
    assert!(g
        .metrics()
        .contains("portico_plugin_circuit_opened_total{plugin=\"spin\"} 2"));
}

#[test]
fn hostile_plugins_are_contained_by_their_fail_policy() {
    let echo = Echo::http("web");
    let dir = TempDir::new("hostile");
    let spin = hostile(&dir, "spin", "0_2_1", "(loop br 0) i32.const 0");
    let trap = hostile(&dir, "trap", "0_2_1", "unreachable");
    let hog = hostile(
        &dir,
        "hog",
        "0_2_0",
        "(drop (memory.grow (i32.const 1000))) i32.const 0",
    );
    let mut config = String::new();
    config += &plugin_config("spin", &spin, "", "fail = \"closed\"\ndeadline_ms = 20");
    config += &plugin_config("trap", &trap, "", "fail = \"open\"");
    config += &plugin_config("hog", &hog, "", "fail = \"closed\"\nmemory_mib = 16");
    let mut m = manifests(&echo, Some("spin"));
    for (host, plugin) in [("trap.test", "trap"), ("hog.test", "hog")] {
        m += &yaml::ingress(
            "default",
            plugin,
            &[(host, "/", "Prefix", "web", "http")],
            "",
        )
        .replace(
            &format!("metadata: {{name: {plugin}, namespace: default}}"),
            &format!(
                "metadata: {{name: {plugin}, namespace: default, annotations: {{portico.io/plugins: {plugin}}}}}"
            ),
        );
    }
    let g = Gateway::start(&[("m.yaml", &m)], &config);

    for _ in 0..3 {
        // An endless loop: stopped at its deadline, fail closed → 500.
        let started = Instant::now();
        let r = http_get(g.http, "plugged.test", "/").unwrap();
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(r.text().contains("plugin spin failed"), "{}", r.text());
        assert!(started.elapsed() < Duration::from_secs(5));
        // A trap, fail open → the request goes on without the plugin.
        let r = http_get(g.http, "trap.test", "/").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        // Unbounded memory (ABI 0.2.0 module): capped, fail closed → 500.
        let r = http_get(g.http, "hog.test", "/").unwrap();
        assert_eq!(r.status, 500, "{}", r.text());
        // Routes without plugins are untouched.
        assert_eq!(http_get(g.http, "app.test", "/").unwrap().status, 200);
    }
    // Each failure discarded its instance: later requests got fresh ones.
    for (plugin, kind) in [
        ("spin", "deadline"),
        ("trap", "trap"),
        ("hog", "out_of_memory"),
    ] {
        let failures = metric(
            &g,
            &format!("portico_plugin_failures_total{{plugin=\"{plugin}\",kind=\"{kind}\"}}"),
        );
        assert_eq!(failures, Some(3.0), "{plugin}: {}", g.metrics());
        let started = metric(
            &g,
            &format!("portico_plugin_instances_started_total{{plugin=\"{plugin}\"}}"),
        )
        .unwrap();
        // One at load (the check start is not counted) plus one per failure.
        assert!(started >= 3.0, "{plugin}: {started}");
    }
    // One log line per plugin, not one per failure.
    let log = g.log();
    assert_eq!(
        log.matches("plugin failed; its instance is replaced")
            .count(),
        3,
        "{log}"
    );
    assert!(log.contains("ran past its deadline"), "{log}");
}

#[test]
fn a_changed_plugin_is_swapped_in_and_a_broken_one_keeps_the_old_version() {
    let echo = Echo::http("web");
    let dir = TempDir::new("reload-plugin");
    let file = dir.path().join("p.wasm");
    std::fs::copy(built_plugins().join("compat_http_headers.wasm"), &file).unwrap();
    let mut config = String::from("[plugins]\nhttp = [\"p\"]\nreload_interval_ms = 100\n");
    config += &plugin_config("p", &file.display().to_string(), "one", "");
    let g = Gateway::start(&[("m.yaml", &manifests(&echo, None))], &config);
    let tag = |g: &Gateway| {
        http_get(g.http, "app.test", "/").unwrap().json()["headers"]["x-compat-tag"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(tag(&g), "one");

    // A slow request in flight across the swap completes.
    let port = g.http;
    let slow = std::thread::spawn(move || http_get(port, "app.test", "/delay/600").unwrap());
    std::thread::sleep(Duration::from_millis(100));

    // The plugin's config changes in portico.toml: swapped in.
    let cfg_path = g.dir.path().join("portico.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("config = \"one\"", "config = \"two\""),
    )
    .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while tag(&g) != "two" {
        assert!(Instant::now() < end, "not reloaded; log:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);

    // The module file changes to the other compat plugin: swapped in.
    let tmp = dir.path().join("p.tmp");
    std::fs::copy(built_plugins().join("compat_http_filter.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while http_get(g.http, "app.test", "/blocked").unwrap().status != 403
        || http_get(g.http, "app.test", "/").unwrap().json()["headers"]
            .get("x-compat-count")
            .is_none()
    {
        assert!(Instant::now() < end, "not reloaded; log:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broken file: the previous version keeps serving, the log says why.
    std::fs::write(&tmp, "not wasm").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !g.log().contains("the previous version keeps serving") {
        assert!(Instant::now() < end, "no error logged; log:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(g.log().contains("not a WebAssembly binary"), "{}", g.log());
    assert_eq!(tag(&g), "two");
    assert_eq!(
        http_get(g.http, "app.test", "/blocked").unwrap().status,
        403
    );
}

#[test]
fn a_plugin_that_does_not_load_stops_run_with_the_reason() {
    let dir = TempDir::new("bad-plugin-run");
    let bad = dir.write("bad.wasm", "nope");
    let cfg = dir.write(
        "portico.toml",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n[listen]\nhttp = [\"127.0.0.1:{}\"]\nhttps = []\n{}",
            free_port(),
            free_port(),
            plugin_config("bad", &bad.display().to_string(), "", "")
        ),
    );
    let out = portico(&["run", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("plugin \"bad\"") && err.contains("not a WebAssembly binary"),
        "{err}"
    );
    // A plugin that rejects its configuration is named too.
    let cfg = dir.write(
        "portico2.toml",
        &plugin_config("picky", &wasm("compat_http_filter.wasm"), "reject", ""),
    );
    let out = portico(&["check", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("plugin \"picky\"") && text.contains("rejected its configuration"),
        "{text}"
    );
}

#[test]
fn http_callouts_reach_a_named_backend_and_resume_or_answer_the_request() {
    let web = Echo::http("web");
    let auth = Echo::http("auth");
    let mut m = manifests(&web, None);
    m += &yaml::service("default", "auth", "", &[("http", 80)]);
    m += &yaml::slice("default", "auth-1", "auth", "http", auth.http, true);
    // Callable backends are the ones the gateway routes to.
    m += &yaml::ingress(
        "default",
        "auth",
        &[("auth.test", "/", "Prefix", "auth", "http")],
        "",
    );
    // Envoy-style cluster names: one mapped, and Istio's form.
    let mut config = String::from(
        "[plugins]\nhttp = [\"compat\"]\nclusters = { authz = \"default/auth:http\" }\n",
    );
    config += &plugin_config("compat", &wasm("compat_http_filter.wasm"), "calls", "");
    let g = Gateway::start(&[("m.yaml", &m)], &config);
    let get = |path: &str, upstream: &str| {
        http_request(
            g.http,
            &format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nx-callout-upstream: {upstream}\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    };

    // The request waits for the call's answer, then goes on with what the
    // plugin learnt from it.
    let r = get("/callout", "default/auth:http");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["name"], "web");
    assert_eq!(seen["headers"]["x-callout-status"], "200");
    assert_eq!(seen["headers"]["x-callout-name"], "auth");
    let bytes: usize = seen["headers"]["x-callout-body-bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 10, "{bytes}");

    // The plugin answers from the call's callback instead.
    // From the response headers: the response waits for the answer.
    let r = get("/late-callout", "default/auth:http");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-late-callout-status"), Some("200"));
    assert_eq!(r.header("x-late-callout-name"), Some("auth"));
    assert_eq!(r.header("x-compat"), Some("1"));
    assert_eq!(r.json()["name"], "web");

    let r = get("/callout-deny", "default/auth:http");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("x-denied-by"), Some("callout"));

    // A name that is not a backend is refused at the call.
    let r = get("/callout", "default/nope:http");
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "callout refused\n");

    let ok = metric(
        &g,
        "portico_plugin_callouts_total{plugin=\"compat\",result=\"ok\"}",
    );
    // /callout, /late-callout and /callout-deny.
    assert_eq!(ok, Some(3.0), "{}", g.metrics());

    // Calls reuse kept-alive connections to the backend (per worker
    // thread: with 7 calls, some thread makes at least two).
    for _ in 0..4 {
        assert_eq!(get("/callout", "default/auth:http").status, 200);
    }
    let connections = |reused: &str| {
        metric(
            &g,
            &format!("portico_callout_connections_total{{reused=\"{reused}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (new, reused) = (connections("false"), connections("true"));
    assert_eq!(new + reused, 7.0, "{}", g.metrics());
    assert!(
        reused >= 1.0,
        "no call reused a connection: {}",
        g.metrics()
    );
    // A plugin written for Envoy names a cluster; one written for Istio
    // names `outbound|PORT||SERVICE.NAMESPACE.svc.cluster.local`.
    for cluster in ["authz", "outbound|http||auth.default.svc.cluster.local"] {
        let r = get("/callout", cluster);
        assert_eq!(r.status, 200, "{cluster}: {}", r.text());
        assert_eq!(r.json()["headers"]["x-callout-name"], "auth", "{cluster}");
    }
}

/// Service `web` with one endpoint on each echo backend (one slice each:
/// two endpoints on 127.0.0.1 in one slice would need two ports).
fn two_endpoints(one: &Echo, two: &Echo) -> String {
    let mut m = yaml::service("default", "web", "", &[("http", 80)]);
    m += &yaml::slice("default", "web-1", "web", "http", one.http, true);
    m += &yaml::slice("default", "web-2", "web", "http", two.http, true);
    m
}

#[test]
fn a_plugin_chooses_the_endpoint_with_the_upstream_choice_extension() {
    let (one, two) = (Echo::http("one"), Echo::http("two"));
    let mut m = two_endpoints(&one, &two);
    m += &yaml::ingress(
        "default",
        "plain",
        &[("app.test", "/", "Prefix", "web", "http")],
        "",
    );
    let mut config = String::from("[plugins]\nhttp = [\"compat\"]\n");
    config += &plugin_config("compat", &wasm("compat_http_filter.wasm"), "lb", "");
    let g = Gateway::start(&[("m.yaml", &m)], &config);
    let last = if format!("127.0.0.1:{}", one.http) > format!("127.0.0.1:{}", two.http) {
        "one"
    } else {
        "two"
    };
    for _ in 0..6 {
        let r = http_get(g.http, "app.test", "/pick-last").unwrap();
        let seen = r.json();
        assert_eq!(seen["headers"]["x-compat-candidates"], "2", "{seen}");
        assert_eq!(seen["name"], last, "{seen}");
    }
    // Without a choice the Service's own policy (round robin) spreads.
    let names: std::collections::BTreeSet<String> = (0..6)
        .map(|_| {
            http_get(g.http, "app.test", "/").unwrap().json()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let used = metric(&g, "portico_lb_plugin_choices_total{result=\"used\"}");
    assert_eq!(used, Some(6.0));
}

/// A LoadBalancer Service on 127.0.0.1:`port` with one TCP endpoint.
fn l4_service(name: &str, port: u16, backend: u16, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: l4{annotations}}}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 127.0.0.1\n  ports:\n  - {{name: p, port: {port}, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: l4\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: p, port: {backend}, protocol: TCP}}]\nendpoints:\n- addresses: [127.0.0.1]\n---\n"
    )
}

fn tcp_exchange(port: u16, payload: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(payload).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn tcp_stream_contexts_see_and_change_both_directions() {
    let backend = Echo::tcp("t1");
    let (plugged, plain) = (free_port(), free_port());
    let m = l4_service(
        "plugged",
        plugged,
        backend.http,
        ", annotations: {portico.io/plugins: tcp}",
    ) + &l4_service("plain", plain, backend.http, "");
    let config = plugin_config("tcp", &wasm("compat_tcp_filter.wasm"), "edge", "");
    let g = Gateway::start(&[("l4.yaml", &m)], &config);
    wait_port(plugged, Duration::from_secs(5));
    wait_port(plain, Duration::from_secs(5));

    // The backend greets with its name, then echoes; the plugin upper-cases
    // `ping` on the way in and prefixes the first bytes on the way out.
    let out = tcp_exchange(plugged, b"ping pong ping\n");
    assert_eq!(out, "[edge] t1\nPING pong PING\n");
    // A Service without the annotation is untouched (and spliced).
    assert_eq!(tcp_exchange(plain, b"ping\n"), "t1\nping\n");
    // A plugin can close the connection.
    let out = tcp_exchange(plugged, b"please close-me now\n");
    assert!(!out.contains("close-me"), "{out}");
    let log = g.log();
    assert!(
        log.contains("compat-tcp-filter: client side closed"),
        "{log}"
    );
    assert!(
        log.contains("compat-tcp-filter: upstream side closed"),
        "{log}"
    );
}

/// Ingress `default/sticky` for `sticky.test` to Service `web`, with
/// these annotations (YAML flow mapping entries).
fn sticky_ingress(annotations: &str) -> String {
    yaml::ingress(
        "default",
        "sticky",
        &[("sticky.test", "/", "Prefix", "web", "http")],
        "",
    )
    .replace(
        "metadata: {name: sticky, namespace: default}",
        &format!("metadata: {{name: sticky, namespace: default, annotations: {{{annotations}}}}}"),
    )
}

/// A scoped listener plugin (`applies_to`) is attached at translation to
/// the routes that match, and never called on the others.
#[test]
fn a_scoped_plugin_runs_only_on_the_routes_it_applies_to() {
    let (one, two) = (Echo::http("one"), Echo::http("two"));
    let mut m = two_endpoints(&one, &two);
    m += &yaml::ingress(
        "default",
        "plain",
        &[("plain.test", "/", "Prefix", "web", "http")],
        "",
    );
    m += &sticky_ingress("nginx.ingress.kubernetes.io/affinity: cookie");
    let g = Gateway::start(&[("m.yaml", &m)], &session_affinity_config());
    let calls = |g: &Gateway| -> u64 {
        g.metrics()
            .lines()
            .filter(|l| {
                l.starts_with("portico_plugin_calls_total{") && l.contains("plugin=\"affinity\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    // Starting the plugin (its test start at load, each instance's
    // start) calls it too: count only what requests add.
    let at_start = calls(&g);
    for _ in 0..40 {
        let r = http_request(
            g.http,
            "GET / HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("set-cookie"), None);
    }
    assert_eq!(
        calls(&g),
        at_start,
        "the plugin was called on a route it does not apply to"
    );
    for _ in 0..40 {
        let r = http_request(
            g.http,
            "GET / HTTP/1.1\r\nHost: sticky.test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert!(
            r.header("set-cookie").is_some(),
            "the sticky route gets its cookie"
        );
    }
    assert!(
        calls(&g) > at_start,
        "the plugin runs on the route it applies to"
    );
    // explain says where each plugin comes from.
    let explain = |host: &str| -> serde_json::Value {
        let r = http_get(g.admin, "admin", &format!("/explain?host={host}&path=/")).unwrap();
        serde_json::from_slice(&r.body).unwrap()
    };
    assert_eq!(explain("plain.test")["plugins"], serde_json::json!([]));
    let sticky = explain("sticky.test")["plugins"].clone();
    assert_eq!(sticky[0]["name"], "affinity", "{sticky}");
    assert_eq!(
        sticky[0]["from"], "plugins.http, applies_to matches Ingress default/sticky",
        "{sticky}"
    );
}

#[test]
fn cookie_affinity_from_the_ingress_nginx_annotations() {
    let (one, two) = (Echo::http("one"), Echo::http("two"));
    let mut m = two_endpoints(&one, &two);
    m += &sticky_ingress(
        "nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/session-cookie-name: route, nginx.ingress.kubernetes.io/session-cookie-max-age: '60'",
    );
    let g = Gateway::start(&[("m.yaml", &m)], &session_affinity_config());
    let get = |cookie: Option<&str>| {
        let extra = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
        http_request(
            g.http,
            &format!("GET / HTTP/1.1\r\nHost: sticky.test\r\n{extra}Connection: close\r\n\r\n"),
        )
        .unwrap()
    };
    let first = get(None);
    let set = first
        .header("set-cookie")
        .expect("a cookie is set")
        .to_string();
    assert!(
        set.starts_with("route=") && set.contains("Max-Age=60"),
        "{set}"
    );
    let name = first.json()["name"].as_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    for _ in 0..6 {
        let r = get(Some(&cookie));
        assert_eq!(r.json()["name"], name.as_str());
        assert_eq!(
            r.header("set-cookie"),
            None,
            "a held cookie is not set again"
        );
    }
    // Without the cookie the Service's round robin spreads; an unknown
    // cookie value gets a new cookie.
    let names: std::collections::BTreeSet<String> = (0..6)
        .map(|_| get(None).json()["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(get(Some("route=0000")).header("set-cookie").is_some());
}

#[test]
fn check_warns_about_a_cluster_mapped_to_no_backend() {
    let dir = TempDir::new("clusters");
    let mut m = yaml::service("default", "auth", "", &[("http", 80)]);
    m += &yaml::slice("default", "auth-1", "auth", "http", 8081, true);
    m += &yaml::ingress(
        "default",
        "auth",
        &[("auth.test", "/", "Prefix", "auth", "http")],
        "",
    );
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("m/auth.yaml"), m).unwrap();
    let config = dir.write(
        "portico.toml",
        "[plugins]\nclusters = { authz = \"default/auth:http\", stale = \"default/gone:http\" }\n",
    );
    let out = portico_check(&config, &dir.path().join("m"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning is not an error: {text}");
    assert!(
        text.contains(
            "cluster \"stale\" maps to \"default/gone:http\", which no Ingress or L4 listener uses"
        ),
        "{text}"
    );
    assert!(!text.contains("\"authz\""), "{text}");
}
