//! The Kubernetes source end to end against a **real** kube-apiserver
//! (`portico_integration_tests::kube_apiserver`: etcd and the API server
//! built from Kubernetes' source, on loopback): the real `portico` binary,
//! real backends inside a network namespace this test creates (the API
//! server refuses loopback endpoint addresses), real clients on 127.0.0.1.
//! Each test has its own namespace, and Portico watches only it.
//!
//! Tests that need what only a double can do (outages, forced `410 Gone`,
//! injected 403s) stay in `kube.rs` against the double.
//!
//! Needs root for `ip netns` (CI runs as root) and Debian's `etcd-server`.

use std::time::{Duration, Instant};

use portico_integration_tests::kube_apiserver::{shared, KubeApiServer};
use portico_integration_tests::netns::{Netns, NsEcho};
use portico_integration_tests::*;

const NO_NODE_PORTS: &str = "[l4]\nnode_ports = false\n";

const BACKEND_PORT: u16 = 8080;

/// Polls `f` every 100 ms until it is true; panics with `what` after `secs`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

fn routes_to(gw: &Gateway, host: &str, backend: &str) -> bool {
    http_get(gw.http, host, "/")
        .map(|r| r.status == 200 && r.json()["name"] == backend)
        .unwrap_or(false)
}

/// Service `web` (port `http` 80) in `ns`, its slice on pod `web-1`, and an
/// Ingress for `host` (TLS from Secret `web-tls` when `tls`).
fn shop(ns: &str, host: &str, net: &Netns, tls: bool) -> String {
    let tls = if tls {
        format!("  tls:\n  - hosts: [\"{host}\"]\n    secretName: web-tls\n")
    } else {
        String::new()
    };
    yaml::service(ns, "web", "", &[("http", 80)])
        + &yaml::slice_at(ns, "web-1", "web", "http", BACKEND_PORT, &[net.addr(2)])
        + &yaml::ingress(ns, "web", &[(host, "/", "Prefix", "web", "http")], &tls)
}

/// A fresh namespace on the shared server and a network namespace with
/// pod `web-1` (an HTTP echo on `.2:BACKEND_PORT`).
fn setup(tag: &str) -> (&'static KubeApiServer, String, Netns, NsEcho) {
    let api = shared();
    let ns = api.namespace(tag);
    let net = Netns::new();
    let web = net.echo_http("web-1", &net.addr(2), BACKEND_PORT);
    (api, ns, net, web)
}

fn ingress_status_ips(api: &KubeApiServer, ns: &str, name: &str) -> Vec<String> {
    api.get("ingresses.networking.k8s.io", ns, name)
        .and_then(|i| {
            i["status"]["loadBalancer"]["ingress"].as_array().map(|a| {
                a.iter()
                    .filter_map(|e| e["ip"].as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn api_objects_route_http_and_https_to_pods_and_status_is_written() {
    let (api, ns, net, _web) = setup("route");
    let (crt, key) = self_signed(&["shop.test"]);
    api.apply(&(shop(&ns, "shop.test", &net, true) + &yaml::tls_secret(&ns, "web-tls", &crt, &key)))
        .unwrap();

    let dir = TempDir::new("kapi");
    let kubeconfig = api.kubeconfig(dir.path(), "admin");
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw-a", NO_NODE_PORTS);
    gw.wait_ready();
    let r = http_get(gw.http, "shop.test", "/").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "web-1");
    assert_eq!(http_get(gw.http, "other.test", "/").unwrap().status, 404);
    let ca = gw.dir.write("ca.pem", &crt);
    let (out, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("shop.test:{}:127.0.0.1", gw.https),
        &format!("https://shop.test:{}/", gw.https),
    ]);
    assert!(out.contains("\"web-1\""), "{out} {err}");

    // Leader election on a real Lease, and the status subresource.
    wait_for(15, "Ingress status", || {
        ingress_status_ips(api, &ns, "web") == ["127.0.0.1"]
    });
    let lease = api
        .get("leases.coordination.k8s.io", &ns, "portico-leader")
        .expect("a Lease was created");
    assert_eq!(lease["spec"]["holderIdentity"], "gw-a");

    // A new Ingress is picked up from the watch without a restart.
    let pid = gw.pid();
    api.apply(&yaml::ingress(
        &ns,
        "web2",
        &[("two.shop.test", "/", "Prefix", "web", "http")],
        "",
    ))
    .unwrap();
    wait_for(10, "two.shop.test routed", || {
        routes_to(&gw, "two.shop.test", "web-1")
    });
    assert_eq!(gw.pid(), pid);
    assert!(gw.metrics().contains("portico_kubernetes_leader 1"));

    // Deleting the Ingress takes the route away.
    api.delete("ingresses.networking.k8s.io", &ns, "web2").unwrap();
    wait_for(10, "two.shop.test gone", || {
        http_get(gw.http, "two.shop.test", "/").is_ok_and(|r| r.status == 404)
    });
}
