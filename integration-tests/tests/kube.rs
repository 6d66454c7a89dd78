//! The Kubernetes source end to end: the real `portico` binary fed by the
//! API-server **double** (`portico_integration_tests::apiserver`; a real
//! kube-apiserver cannot be installed here), with real backends inside a
//! network namespace this test creates (the API refuses loopback endpoint
//! addresses) and real clients on 127.0.0.1.
//!
//! Needs root for `ip netns` (CI runs as root).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_integration_tests::apiserver::{ApiServer, Rule};
use portico_integration_tests::dns::DnsServer;
use portico_integration_tests::netns::{Netns, NsEcho};
use portico_integration_tests::*;

/// Kubernetes tests turn node ports off: the double hands out 30000 and up
/// to every test, and parallel gateways would fight over them.
const NO_NODE_PORTS: &str = "[l4]\nnode_ports = false\n";

const BACKEND_PORT: u16 = 8080;

fn name_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["name"].as_str().unwrap_or_default().to_string()
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `secs`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

fn routes_to(gw: &Gateway, host: &str, backend: &str) -> bool {
    http_get(gw.http, host, "/")
        .map(|r| r.status == 200 && r.json()["name"] == backend)
        .unwrap_or(false)
}

/// Service `web` (port `http` 80) in `shop`, its slice, and an Ingress for
/// `host` (TLS from Secret `web-tls` when `tls`).
fn shop(host: &str, addresses: &[String], tls: bool) -> String {
    let tls = if tls {
        format!("  tls:\n  - hosts: [\"{host}\"]\n    secretName: web-tls\n")
    } else {
        String::new()
    };
    yaml::service("shop", "web", "", &[("http", 80)])
        + &yaml::slice_at("shop", "web-1", "web", "http", BACKEND_PORT, addresses)
        + &yaml::ingress("shop", "web", &[(host, "/", "Prefix", "web", "http")], &tls)
}

/// A fresh network namespace with pod `web-1` (an HTTP echo on
/// `.2:BACKEND_PORT`) and an empty API-server double.
fn pod_and_api() -> (Netns, NsEcho, ApiServer) {
    let net = Netns::new();
    let web = net.echo_http("web-1", &net.addr(2), BACKEND_PORT);
    (net, web, ApiServer::start())
}

/// `shop` for `host` on pod `web-1`, with TLS from Secret `web-tls`.
fn shop_tls(host: &str, net: &Netns, crt: &str, key: &str) -> String {
    shop(host, &[net.addr(2)], true) + &yaml::tls_secret("shop", "web-tls", crt, key)
}

fn ingress_status_ips(api: &ApiServer, ns: &str, name: &str) -> Vec<String> {
    api.get("networking.k8s.io/v1", "Ingress", ns, name)
        .and_then(|i| {
            i["status"]["loadBalancer"]["ingress"].as_array().map(|a| {
                a.iter()
                    .filter_map(|e| e["ip"].as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Tokens of the clients that wrote a status subresource, with counts.
fn status_writers(api: &ApiServer) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in api.requests() {
        if (r.method == "PATCH" || r.method == "PUT") && r.path.ends_with("/status") {
            *out.entry(r.token.unwrap_or_default()).or_default() += 1;
        }
    }
    out
}

/// An HTTPS request to `host` through the gateway, verified against `ca`;
/// the backend's name, or curl's error.
fn https_name(gw: &Gateway, host: &str, ca: &std::path::Path) -> Result<String, String> {
    let resolve = format!("{host}:{}:127.0.0.1", gw.https);
    let url = format!("https://{host}:{}/", gw.https);
    let (out, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["name"].as_str().map(String::from))
        .ok_or(err)
}

fn events_with_reason(api: &ApiServer, reason: &str) -> Vec<serde_json::Value> {
    api.list("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

#[test]
fn api_objects_route_http_and_https_to_pods_and_status_is_written() {
    let (net, _web, api) = pod_and_api();
    let (crt, key) = self_signed(&["shop.test"]);
    api.apply(&shop_tls("shop.test", &net, &crt, &key)).unwrap();

    let gw = Gateway::spawn_kube(&api, "gw-a", NO_NODE_PORTS);
    gw.wait_ready();
    let r = http_get(gw.http, "shop.test", "/").unwrap();
    assert_eq!(name_of(&r), "web-1");
    assert_eq!(http_get(gw.http, "other.test", "/").unwrap().status, 404);
    let ca = gw.dir.write("ca.pem", &crt);
    assert_eq!(https_name(&gw, "shop.test", &ca), Ok("web-1".to_string()));

    // Single process, leader election on: it takes the Lease and publishes
    // the node address (--node-address 127.0.0.1) on the Ingress.
    wait_for(15, "Ingress status", || {
        ingress_status_ips(&api, "shop", "web") == ["127.0.0.1"]
    });
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "default",
            "portico-leader",
        )
        .expect("a Lease was created");
    assert_eq!(lease["spec"]["holderIdentity"], "gw-a");

    // A new Ingress is picked up from the watch without a restart.
    let pid = gw.pid();
    api.apply(&yaml::ingress(
        "shop",
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
}

#[test]
fn endpoints_scale_up_and_down_under_load_with_zero_failures() {
    let net = Netns::new();
    let addrs: Vec<String> = (2..=4)
        .map(|h| if h == 2 { net.addr(2) } else { net.add_host(h) })
        .collect();
    let _backends: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| net.echo_http(&format!("pod-{i}"), a, BACKEND_PORT))
        .collect();
    let api = ApiServer::start();
    api.apply(&shop("scale.test", &addrs[..1], false)).unwrap();
    let gw = Gateway::spawn_kube(&api, "gw", NO_NODE_PORTS);
    gw.wait_ready();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen, failures) = (stop.clone(), seen.clone(), failures.clone());
            let port = gw.http;
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 20_000 {
                    n += 1;
                    match http_get(port, "scale.test", "/") {
                        Ok(r) if r.status == 200 => seen
                            .lock()
                            .unwrap()
                            .push(r.json()["name"].as_str().unwrap().into()),
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status)),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    let names_since = |from: usize| -> BTreeSet<String> {
        seen.lock().unwrap()[from..].iter().cloned().collect()
    };

    std::thread::sleep(Duration::from_millis(300));
    // Up: all three pods answer.
    let mark = seen.lock().unwrap().len();
    api.apply(&yaml::slice_at(
        "shop",
        "web-1",
        "web",
        "http",
        BACKEND_PORT,
        &addrs,
    ))
    .unwrap();
    wait_for(10, "all three pods answering", || {
        names_since(mark).len() == 3
    });
    // Down to one: after a moment only pod-2 answers.
    api.apply(&yaml::slice_at(
        "shop",
        "web-1",
        "web",
        "http",
        BACKEND_PORT,
        &addrs[2..],
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mark = seen.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(500));
    let after = names_since(mark);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = seen.lock().unwrap().len();
    let failures = failures.lock().unwrap();
    assert!(total > 100, "only {total} requests made");
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(after, BTreeSet::from(["pod-2".to_string()]));
    // The change took the endpoints-only path.
    assert!(gw.log().matches("edge node addresses").count() <= 1);
}

#[test]
fn rotated_certificate_is_served_without_restart() {
    let (net, _web, api) = pod_and_api();
    let (crt1, key1) = self_signed(&["rot.test"]);
    api.apply(&shop_tls("rot.test", &net, &crt1, &key1))
        .unwrap();
    let gw = Gateway::spawn_kube(&api, "gw", NO_NODE_PORTS);
    gw.wait_ready();
    let ca1 = gw.dir.write("ca1.pem", &crt1);
    assert_eq!(https_name(&gw, "rot.test", &ca1), Ok("web-1".into()));

    let (crt2, key2) = self_signed(&["rot.test"]);
    let ca2 = gw.dir.write("ca2.pem", &crt2);
    let pid = gw.pid();
    api.apply(&yaml::tls_secret("shop", "web-tls", &crt2, &key2))
        .unwrap();
    wait_for(10, "the new certificate", || {
        https_name(&gw, "rot.test", &ca2).is_ok()
    });
    assert!(
        https_name(&gw, "rot.test", &ca1).is_err(),
        "old certificate still served"
    );
    assert_eq!(gw.pid(), pid);

    // A broken Secret: the host falls back to the default certificate, and
    // the reason reaches the log, a metric and an Event on the Ingress.
    let (crt3, _) = self_signed(&["rot.test"]);
    api.apply(&yaml::tls_secret("shop", "web-tls", &crt3, &key2))
        .unwrap();
    wait_for(10, "a TLSSecretInvalid Event", || {
        !events_with_reason(&api, "TLSSecretInvalid").is_empty()
    });
    let ev = &events_with_reason(&api, "TLSSecretInvalid")[0];
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["kind"], "Ingress");
    assert_eq!(ev["regarding"]["name"], "web");
    assert!(
        ev["note"].as_str().unwrap().contains("shop/web-tls"),
        "{ev}"
    );
    assert!(
        https_name(&gw, "rot.test", &ca2).is_err(),
        "a mismatched key pair was served"
    );
    assert!(gw.log().contains("web-tls"));
    let out = portico(&[
        "explain",
        "--admin",
        &format!("127.0.0.1:{}", gw.admin),
        "--host",
        "rot.test",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["certificate"]["source"], "default", "{v}");
    assert!(
        v["certificate"]["why"]
            .as_str()
            .unwrap()
            .contains("web-tls"),
        "{v}"
    );
}

/// `[kubernetes]` keys (and the plugin entry after them) that take
/// LoadBalancer addresses from a one-address pool of the shipped `cloud-lb`.
fn cloud_lb(address: &str) -> String {
    format!(
        "load_balancer_plugin = \"lb\"\n[[plugins.load]]\nname = \"lb\"\npath = \"{}\"\n\
         config = '{{\"pools\": {{\"default\": [\"{address}\"]}}}}'\n",
        built_plugins().join("cloud_lb.wasm").display()
    )
}

fn tcp_hello(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"ping")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn service_switched_to_load_balancer_opens_listeners_and_gets_status() {
    let net = Netns::new();
    let _pod = net.echo_tcp("l4-pod", &net.addr(2), 9000);
    let api = ApiServer::start();
    let port = free_port();
    let node_port = free_port();
    let svc = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: game, namespace: l4}}\nspec:\n{extra}  ports:\n  - {{name: t, port: {port}, targetPort: 9000, protocol: TCP{np}}}\n  - {{name: u, port: {port}, targetPort: 9000, protocol: UDP}}\n---\n",
            np = if extra.is_empty() { String::new() } else { format!(", nodePort: {node_port}") }
        )
    };
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: game-1\n  namespace: l4\n  labels: {{kubernetes.io/service-name: game}}\naddressType: IPv4\nports: [{{name: t, port: 9000, protocol: TCP}}, {{name: u, port: 9000, protocol: UDP}}]\nendpoints:\n- addresses: [\"{}\"]\n---\n",
        net.addr(2)
    );
    api.apply(&(svc("") + &slice)).unwrap();
    // The pool address is on loopback so the test needs no real network.
    let gw = Gateway::spawn_kube(&api, "gw", &cloud_lb("127.0.0.3"));
    gw.wait_ready();
    let lb: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
    assert!(tcp_hello(lb).is_err(), "a ClusterIP Service got a listener");

    api.apply(&svc("  type: LoadBalancer\n")).unwrap();
    wait_for(10, "the LoadBalancer listener", || {
        tcp_hello(lb).map(|s| s == "l4-pod\nping").unwrap_or(false)
    });
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    u.send_to(b"hi", lb).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = u
        .recv_from(&mut buf)
        .expect("UDP answer through the gateway");
    assert_eq!(&buf[..n], b"l4-pod:hi");
    // nodePort on the node address (node ports are on by default).
    let np: SocketAddr = format!("127.0.0.1:{node_port}").parse().unwrap();
    wait_for(10, "the nodePort listener", || tcp_hello(np).is_ok());

    wait_for(10, "LoadBalancer status", || {
        api.get("v1", "Service", "l4", "game")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.3")
    });

    // Back to ClusterIP: listeners close and the status is cleared.
    api.apply(&svc("")).unwrap();
    wait_for(10, "the listener to close", || tcp_hello(lb).is_err());
    wait_for(10, "status cleared", || {
        api.get("v1", "Service", "l4", "game").is_some_and(|s| {
            s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .is_none_or(|a| a.is_empty())
        })
    });
}

#[test]
fn leader_failover_between_two_processes_only_the_leader_writes() {
    let (net, _web, api) = pod_and_api();
    api.apply(&shop("lead.test", &[net.addr(2)], false))
        .unwrap();
    let cfg = format!("lease_duration_seconds = 3\n{NO_NODE_PORTS}");
    let mut a = Some(Gateway::spawn_kube(&api, "gw-a", &cfg));
    a.as_ref().unwrap().wait_ready();
    wait_for(10, "gw-a to write status", || {
        status_writers(&api).contains_key("gw-a")
    });
    let b = Gateway::spawn_kube(&api, "gw-b", &cfg);
    b.wait_ready();
    // Both serve.
    assert!(routes_to(a.as_ref().unwrap(), "lead.test", "web-1"));
    assert!(routes_to(&b, "lead.test", "web-1"));
    // A change that needs a status write: only the leader makes it.
    api.apply(&yaml::ingress(
        "shop",
        "late",
        &[("late.test", "/", "Prefix", "web", "http")],
        "",
    ))
    .unwrap();
    wait_for(10, "status of the new Ingress", || {
        ingress_status_ips(&api, "shop", "late") == ["127.0.0.1"]
    });
    std::thread::sleep(Duration::from_secs(2));
    let writers = status_writers(&api);
    assert_eq!(writers.keys().collect::<Vec<_>>(), ["gw-a"], "{writers:?}");
    assert_eq!(
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "default",
            "portico-leader"
        )
        .unwrap()["spec"]["holderIdentity"],
        "gw-a"
    );
    assert!(b.metrics().contains("portico_kubernetes_leader 0"));

    // The leader dies without releasing (SIGKILL): gw-b takes over once the
    // Lease expires and writes what changed meanwhile.
    a.take();
    api.apply(&yaml::ingress(
        "shop",
        "after",
        &[("after.test", "/", "Prefix", "web", "http")],
        "",
    ))
    .unwrap();
    wait_for(20, "gw-b to publish the status", || {
        ingress_status_ips(&api, "shop", "after") == ["127.0.0.1"]
    });
    assert!(status_writers(&api).contains_key("gw-b"));
    assert_eq!(
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "default",
            "portico-leader"
        )
        .unwrap()["spec"]["holderIdentity"],
        "gw-b"
    );
    assert!(b.metrics().contains("portico_kubernetes_leader 1"));
}

#[test]
fn api_outage_keeps_serving_and_resyncs_after_410() {
    let (net, _web, api) = pod_and_api();
    api.apply(&shop("up.test", &[net.addr(2)], false)).unwrap();
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

#[test]
fn malformed_object_is_skipped_with_an_event_and_others_serve() {
    let (net, _web, api) = pod_and_api();
    // `ports` must be a list: a real API server would refuse this, but a
    // conversion bug or version skew can still hand a gateway such objects.
    api.apply(&(shop("ok.test", &[net.addr(2)], false)
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

/// deploy/rbac.yaml enforced by the double: everything Portico does is
/// allowed, and every rule is used (least privilege).
#[test]
fn deploy_rbac_allows_exactly_what_portico_uses() {
    let (net, _web, api) = pod_and_api();
    let rbac = std::fs::read_to_string(workspace_root().join("deploy/rbac.yaml")).unwrap();
    let rules = Rule::from_manifests(&rbac);
    assert!(!rules.is_empty());
    api.enforce_rbac(rules.clone());
    // The edge node's address from its Node object, as deploy/ runs it.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: edge-1}\nstatus:\n  addresses:\n  - {type: Hostname, address: edge-1}\n  - {type: InternalIP, address: 127.0.0.1}\n---\n";
    let (crt, _) = self_signed(&["rbac.test"]);
    let (_, other_key) = self_signed(&["rbac.test"]);
    let lb = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: shop}\nspec:\n  type: LoadBalancer\n  ports: [{name: http, port: 80}]\n";
    api.apply(
        &(shop("rbac.test", &[net.addr(2)], true)
            + &yaml::tls_secret("shop", "web-tls", &crt, &other_key)
            + node
            + lb),
    )
    .unwrap();
    let gw = Gateway::spawn_kube_with(
        &api,
        "gw",
        &format!(
            "node_name = \"edge-1\"\nlease_namespace = \"portico-system\"\nlease_duration_seconds = 3\n\
             {}{NO_NODE_PORTS}",
            cloud_lb("127.0.0.4")
        ),
        false,
    );
    gw.wait_ready();
    wait_for(10, "Ingress status from the Node's address", || {
        ingress_status_ips(&api, "shop", "web") == ["127.0.0.1"]
    });
    wait_for(10, "LoadBalancer status", || {
        api.get("v1", "Service", "shop", "lb")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.4")
    });
    wait_for(10, "the TLSSecretInvalid Event", || {
        !events_with_reason(&api, "TLSSecretInvalid").is_empty()
    });
    wait_for(10, "a Lease renewal", || {
        api.requests()
            .iter()
            .any(|r| r.verb == "update" && r.resource.ends_with("/leases"))
    });
    assert_eq!(api.refused(), Vec::<String>::new(), "{}", gw.log());

    let used: BTreeSet<(String, &str)> = api
        .requests()
        .iter()
        .filter(|r| r.token.as_deref() == Some("gw"))
        .map(|r| (r.resource.clone(), r.verb))
        .collect();
    // Granted but not always exercised: `patch` on events (kube-runtime's
    // recorder patches an Event only when the same problem repeats).
    let rare = [("events.k8s.io/events".to_string(), "patch")];
    for rule in &rules {
        for g in &rule.groups {
            for res in &rule.resources {
                for v in &rule.verbs {
                    let k = (format!("{g}/{res}"), v.as_str());
                    if !rare.iter().any(|(r, rv)| *r == k.0 && *rv == k.1) {
                        assert!(
                            used.iter().any(|(ur, uv)| *ur == k.0 && *uv == k.1),
                            "deploy/rbac.yaml grants {} {} but Portico never used it; used: {used:?}",
                            k.1,
                            k.0
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn external_name_backend_resolves_and_follows_dns_changes() {
    let net = Netns::new();
    let second = net.add_host(3);
    let _a = net.echo_http("ext-a", &net.addr(2), BACKEND_PORT);
    let _b = net.echo_http("ext-b", &second, BACKEND_PORT);
    let dns = DnsServer::start();
    let name = "backend.portico.test";
    dns.set(name, &[net.addr(2)], 1);
    let api = ApiServer::start();
    api.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: shop}}\nspec:\n  type: ExternalName\n  externalName: {name}\n  ports: [{{name: http, port: {BACKEND_PORT}}}]\n---\n{}",
        yaml::ingress("shop", "ext", &[("ext.test", "/", "Prefix", "ext", "http")], "")
    ))
    .unwrap();
    let gw = Gateway::spawn_kube(
        &api,
        "gw",
        &format!(
            "{NO_NODE_PORTS}[dns]\nservers = [\"127.0.0.1:{}\"]\nmin_ttl_seconds = 1\n",
            dns.port()
        ),
    );
    gw.wait_ready();
    wait_for(10, "ext.test routed to the resolved address", || {
        routes_to(&gw, "ext.test", "ext-a")
    });

    // The answer changes; the TTL (1 s) runs out and the new one is used.
    dns.set(name, std::slice::from_ref(&second), 1);
    wait_for(10, "ext.test following the DNS change", || {
        routes_to(&gw, "ext.test", "ext-b")
    });
    assert!(gw.log().contains("ExternalName resolved"), "{}", gw.log());

    // The name stops resolving: the last addresses keep serving.
    dns.remove(name);
    wait_for(10, "the resolve failure to be logged", || {
        gw.log().contains("cannot resolve ExternalName")
    });
    for _ in 0..5 {
        assert!(routes_to(&gw, "ext.test", "ext-b"));
    }
}

#[test]
fn namespace_restriction_watches_and_serves_one_namespace() {
    let (net, _web, api) = pod_and_api();
    api.apply(&shop("in.test", &[net.addr(2)], false)).unwrap();
    // The same objects in another namespace, for another host.
    api.apply(
        &shop("out.test", &[net.addr(2)], false).replace("namespace: shop", "namespace: other"),
    )
    .unwrap();
    let gw = Gateway::spawn_kube(
        &api,
        "gw",
        &format!("namespace = \"shop\"\n{NO_NODE_PORTS}"),
    );
    gw.wait_ready();
    assert!(routes_to(&gw, "in.test", "web-1"));
    assert_eq!(http_get(gw.http, "out.test", "/").unwrap().status, 404);
    // Namespaced kinds were only ever asked for in `shop`.
    for r in api.requests() {
        let namespaced = [
            "/services",
            "/secrets",
            "discovery.k8s.io/endpointslices",
            "networking.k8s.io/ingresses",
        ]
        .iter()
        .any(|k| r.resource.ends_with(k));
        if namespaced && (r.verb == "list" || r.verb == "watch") {
            assert!(r.path.contains("/namespaces/shop/"), "{r:?}");
        }
    }
}

/// The shipped `cloud-lb` plugin (built from source) decides
/// LoadBalancer addresses: internal-LB annotations get the internal pool,
/// others the default pool, and an exhausted pool is reported. Against
/// the API-server double.
#[test]
fn the_cloud_lb_plugin_allocates_load_balancer_addresses() {
    let api = ApiServer::start();
    let svc = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: lb{annotations}}}\nspec:\n  type: LoadBalancer\n  ports: [{{name: p, port: 80}}]\n---\n"
        )
    };
    api.apply(
        &(svc("public", "")
            + &svc(
                "private",
                ", annotations: {service.beta.kubernetes.io/aws-load-balancer-internal: 'true'}",
            )),
    )
    .unwrap();
    let wasm = built_plugins().join("cloud_lb.wasm");
    let gw = Gateway::spawn_kube(
        &api,
        "gw",
        &format!(
            "load_balancer_plugin = \"lb\"\n{NO_NODE_PORTS}\n[[plugins.load]]\nname = \"lb\"\npath = \"{}\"\n\
             config = '{{\"pools\": {{\"default\": [\"127.0.0.5\"], \"internal\": [\"127.0.0.6\"]}}}}'\n",
            wasm.display()
        ),
    );
    gw.wait_ready();
    let status = |name: &str| {
        api.get("v1", "Service", "lb", name).and_then(|s| {
            s["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(str::to_string)
        })
    };
    wait_for(10, "public pool address", || {
        status("public").as_deref() == Some("127.0.0.5")
    });
    wait_for(10, "internal pool address", || {
        status("private").as_deref() == Some("127.0.0.6")
    });
    // The default pool is used up: a third Service gets nothing, and the
    // plugin's reason is logged.
    api.apply(&svc("third", "")).unwrap();
    wait_for(10, "the exhausted pool reported", || {
        gw.log()
            .contains("the default address pool has no free address")
    });
    assert_eq!(status("third"), None);
    assert_eq!(
        status("public").as_deref(),
        Some("127.0.0.5"),
        "addresses do not move"
    );
}

/// A stand-in for an external load-balancer API (a cloud's, or an IPAM):
/// answers every POST with `address` for each Service asked about, or
/// with `status` and no body when not 200, and keeps the bodies it got.
struct FakeLbApi {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    status: Arc<Mutex<u16>>,
}

/// A certificate (PEM, its own CA) for 127.0.0.1, and a server
/// configuration that presents it.
fn lb_api_tls() -> (String, Arc<rustls::ServerConfig>) {
    use rustls::pki_types::pem::PemObject;
    let (cert, key) = self_signed(&["127.0.0.1"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    (cert, Arc::new(config))
}

trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

impl FakeLbApi {
    fn start(address: &'static str) -> FakeLbApi {
        Self::serve(address, None)
    }

    /// The same API over HTTPS with a certificate from `tls`.
    fn start_tls(address: &'static str, tls: Arc<rustls::ServerConfig>) -> FakeLbApi {
        Self::serve(address, Some(tls))
    }

    fn serve(address: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> FakeLbApi {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200));
        let (b, st) = (bodies.clone(), status.clone());
        // Detached: it ends with the test process.
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut s: Box<dyn Conn> = match &tls {
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                        Box::new(rustls::StreamOwned::new(conn, s))
                    }
                    None => Box::new(s),
                };
                let mut got = Vec::new();
                let mut buf = [0u8; 8192];
                let body = loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|n| n.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break Some(body.to_string());
                        }
                    }
                };
                let Some(body) = body else { continue };
                let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let answer = serde_json::json!({"services": req["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| serde_json::json!({"namespace": s["namespace"], "name": s["name"], "addresses": [address]}))
                    .collect::<Vec<_>>()});
                b.lock().unwrap().push(req);
                let code = *st.lock().unwrap();
                let out = if code == 200 {
                    answer.to_string()
                } else {
                    "unavailable".into()
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
                    out.len()
                );
                let _ = s.flush();
            }
        });
        FakeLbApi {
            addr,
            bodies,
            status,
        }
    }
}

#[test]
fn cloud_lb_takes_addresses_from_an_external_load_balancer_api() {
    let api = ApiServer::start();
    let lb_api = FakeLbApi::start("127.0.0.6");
    let port = free_port();
    let svc = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: l4{annotations}}}\nspec:\n  type: LoadBalancer\n  ports:\n  - {{name: t, port: {port}, targetPort: 9000, protocol: TCP}}\n---\n"
        )
    };
    api.apply(&svc(
        "ext",
        ", annotations: {service.beta.kubernetes.io/aws-load-balancer-internal: \"true\"}",
    ))
    .unwrap();
    let cfg = format!(
        "load_balancer_plugin = \"lb\"\n{NO_NODE_PORTS}[[plugins.load]]\nname = \"lb\"\npath = \"{}\"\n\
         config = '{{\"api\": {{\"url\": \"http://{}/v1/allocate\", \"headers\": {{\"x-token\": \"t\"}}, \"timeoutMs\": 2000}}}}'\n",
        built_plugins().join("cloud_lb.wasm").display(),
        lb_api.addr
    );
    let gw = Gateway::spawn_kube(&api, "gw", &cfg);
    gw.wait_ready();
    wait_for(15, "the status the API gave", || {
        api.get("v1", "Service", "l4", "ext")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.6")
    });
    let asked = lb_api.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(asked["services"][0]["name"], "ext");
    // The plugin tells the API which pool the annotations ask for.
    assert_eq!(asked["services"][0]["pool"], "internal");
    assert_eq!(asked["nodeAddresses"][0], "127.0.0.1");

    // The API fails: a new Service gets no status, the first keeps its
    // own, and the log says why.
    *lb_api.status.lock().unwrap() = 503;
    api.apply(&svc("late", "")).unwrap();
    wait_for(15, "the failed call to be logged", || {
        gw.log().contains("answered 503")
    });
    let late = api.get("v1", "Service", "l4", "late").unwrap();
    assert!(
        late["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{late}"
    );
    assert_eq!(
        api.get("v1", "Service", "l4", "ext").unwrap()["status"]["loadBalancer"]["ingress"][0]
            ["ip"],
        "127.0.0.6"
    );
    // It answers again: the new Service gets its address.
    *lb_api.status.lock().unwrap() = 200;
    wait_for(20, "the late Service's status", || {
        api.get("v1", "Service", "l4", "late")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.6")
    });
}

#[test]
fn cloud_lb_verifies_an_https_load_balancer_api_against_its_ca() {
    let api = ApiServer::start();
    let (ca, tls) = lb_api_tls();
    let lb_api = FakeLbApi::start_tls("127.0.0.7", tls);
    let port = free_port();
    let svc = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: l4}}\nspec:\n  type: LoadBalancer\n  ports:\n  - {{name: t, port: {port}, targetPort: 9000, protocol: TCP}}\n---\n"
        )
    };
    api.apply(&svc("secure")).unwrap();
    // The CA goes into the plugin's JSON configuration as a string.
    let plugin_config = |ca: &str| {
        serde_json::json!({"api": {"url": format!("https://{}/v1/allocate", lb_api.addr), "caPem": ca}})
            .to_string()
    };
    let cfg = |ca: &str| {
        format!(
            "load_balancer_plugin = \"lb\"\n{NO_NODE_PORTS}[[plugins.load]]\nname = \"lb\"\npath = \"{}\"\nconfig = '{}'\n",
            built_plugins().join("cloud_lb.wasm").display(),
            plugin_config(ca)
        )
    };
    // Another CA than the one that signed the API's certificate: the
    // handshake fails, the Service gets no address, the log says why.
    let (other_ca, _) = lb_api_tls();
    // (One identity for both gateways: the second takes the status lease
    // over at once.)
    let gw = Gateway::spawn_kube(&api, "gw", &cfg(&other_ca));
    gw.wait_ready();
    wait_for(15, "the refused certificate to be logged", || {
        gw.log().contains("TLS handshake with")
    });
    assert!(
        gw.log().contains("invalid peer certificate"),
        "{}",
        gw.log()
    );
    assert!(
        lb_api.bodies.lock().unwrap().is_empty(),
        "the request was sent"
    );
    let s = api.get("v1", "Service", "l4", "secure").unwrap();
    assert!(
        s["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{s}"
    );
    drop(gw);
    // The right CA: the API is asked and its address published.
    let gw = Gateway::spawn_kube(&api, "gw", &cfg(&ca));
    gw.wait_ready();
    wait_for(15, "the status the HTTPS API gave", || {
        api.get("v1", "Service", "l4", "secure")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.7")
    });
    assert_eq!(
        lb_api.bodies.lock().unwrap().last().unwrap()["services"][0]["name"],
        "secure"
    );
}
