//! The Kubernetes source end to end against the API-server **double**
//! (`portico_integration_tests::apiserver`), for what only a double can do.
//! Everything else runs against a real kube-apiserver in `kube_api.rs`;
//! each test here says why it needs the double.
//!
//! Needs root for `ip netns` (CI runs as root).

use std::time::Duration;

use portico_integration_tests::apiserver::ApiServer;
use portico_integration_tests::netns::{Netns, NsEcho};
use portico_integration_tests::*;

/// Kubernetes tests turn node ports off: the double hands out 30000 and up
/// to every test, and parallel gateways would fight over them.
const NO_NODE_PORTS: &str = "[l4]\nnode_ports = false\n";

const BACKEND_PORT: u16 = 8080;

/// Service `web` (port `http` 80) in `shop`, its slice, and an Ingress for
/// `host`.
fn shop(host: &str, addresses: &[String]) -> String {
    yaml::service("shop", "web", "", &[("http", 80)])
        + &yaml::slice_at("shop", "web-1", "web", "http", BACKEND_PORT, addresses)
        + &yaml::ingress("shop", "web", &[(host, "/", "Prefix", "web", "http")], "")
}

/// A fresh network namespace with pod `web-1` (an HTTP echo on
/// `.2:BACKEND_PORT`) and an empty API-server double.
fn pod_and_api() -> (Netns, NsEcho, ApiServer) {
    let net = Netns::new();
    let web = net.echo_http("web-1", &net.addr(2), BACKEND_PORT);
    (net, web, ApiServer::start())
}

fn events_with_reason(api: &ApiServer, reason: &str) -> Vec<serde_json::Value> {
    api.list("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// Why the double: an API outage and a compacted history (`410 Gone`) on
/// demand.
#[test]
fn api_outage_keeps_serving_and_resyncs_after_410() {
    let (net, _web, api) = pod_and_api();
    api.apply(&shop("up.test", &[net.addr(2)])).unwrap();
    let gw = Gateway::spawn_kube(&api, "gw", NO_NODE_PORTS);
    gw.wait_ready();
    assert!(routes_to(&gw, "up.test", "web-1"));

    api.set_down(true);
    // Changes made during the outage, and the history compacted so the
    // watches' resourceVersions are gone: the return must relist.
    api.apply(&yaml::ingress(
        "shop",
        "new",
        &[("new.test", "/", "Prefix", "web", "http")],
        "",
    ))
    .unwrap();
    api.compact();
    for _ in 0..20 {
        assert!(
            routes_to(&gw, "up.test", "web-1"),
            "stopped serving during the outage"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(gw.admin, "admin", "/readyz").unwrap().status, 200);
    api.set_down(false);
    wait_for(40, "new.test after the outage", || {
        routes_to(&gw, "new.test", "web-1")
    });
    assert!(routes_to(&gw, "up.test", "web-1"));
    assert!(gw.log().contains("recovered"), "{}", gw.log());
    // The watches resumed after 410 Gone: each kind listed again.
    let relists = api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/ingresses") && !r.query.contains("watch=true"))
        .count();
    assert!(relists >= 2, "ingresses listed {relists} times");
}

/// Why the double: the API unreachable at start, then a 403 injected for
/// one verb. (A real missing RBAC rule: `kube_api.rs`.)
#[test]
fn unreachable_at_start_then_forbidden_gives_one_clear_line() {
    let api = ApiServer::start();
    api.set_down(true);
    api.forbid("list", "secrets");
    let gw = Gateway::spawn_kube(&api, "gw", NO_NODE_PORTS);
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(
        http_get(gw.admin, "admin", "/readyz")
            .map(|r| r.status)
            .unwrap_or(0),
        200,
        "ready before the first sync"
    );
    assert!(gw.log().contains("retrying"), "{}", gw.log());
    api.set_down(false);
    let line = "RBAC: the API server forbids `list` on secrets in all namespaces";
    wait_for(20, "the RBAC line", || gw.log().contains(line));
    // Still retrying, yet said once.
    std::thread::sleep(Duration::from_secs(3));
    let log = gw.log();
    assert_eq!(log.matches(line).count(), 1, "{log}");
    assert!(log.contains("deploy/rbac.yaml"));
    assert_ne!(http_get(gw.admin, "admin", "/readyz").unwrap().status, 200);

    api.allow("list", "secrets");
    gw.wait_ready();
}

/// Why the double: a real API server refuses the malformed object, so
/// only a double can hand it to the gateway.
#[test]
fn malformed_object_is_skipped_with_an_event_and_others_serve() {
    let (net, _web, api) = pod_and_api();
    // `ports` must be a list: a real API server would refuse this, but a
    // conversion bug or version skew can still hand a gateway such objects.
    api.apply(&(shop("ok.test", &[net.addr(2)])
        + "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: shop}\nspec: {ports: eighty}\n"))
        .unwrap();
    let gw = Gateway::spawn_kube(&api, "gw", NO_NODE_PORTS);
    gw.wait_ready();
    assert!(routes_to(&gw, "ok.test", "web-1"));
    wait_for(10, "an InvalidObject Event", || {
        !events_with_reason(&api, "InvalidObject").is_empty()
    });
    let ev = &events_with_reason(&api, "InvalidObject")[0];
    assert_eq!(ev["regarding"]["kind"], "Service");
    assert_eq!(ev["regarding"]["name"], "broken");
    assert!(gw.log().contains("Service shop/broken"), "{}", gw.log());
}
