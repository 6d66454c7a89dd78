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

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use portico_integration_tests::apiserver::Rule;
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
    api.apply(
        &(shop(&ns, "shop.test", &net, true) + &yaml::tls_secret(&ns, "web-tls", &crt, &key)),
    )
    .unwrap();

    let dir = TempDir::new("kapi");
    let kubeconfig = api.kubeconfig(dir.path(), "admin");
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw-a", NO_NODE_PORTS, true);
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
    api.delete("ingresses.networking.k8s.io", &ns, "web2")
        .unwrap();
    wait_for(10, "two.shop.test gone", || {
        http_get(gw.http, "two.shop.test", "/").is_ok_and(|r| r.status == 404)
    });
}

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

fn lb_ip(api: &KubeApiServer, ns: &str, name: &str) -> Option<String> {
    api.get("services", ns, name).and_then(|s| {
        s["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(String::from)
    })
}

#[test]
fn service_switched_to_load_balancer_opens_listeners_and_gets_status() {
    let api = shared();
    let ns = api.namespace("l4");
    let net = Netns::new();
    let _pod = net.echo_tcp("l4-pod", &net.addr(2), 9000);
    let port = free_port();
    let svc = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: game, namespace: {ns}}}\nspec:\n{extra}  ports:\n  - {{name: t, port: {port}, targetPort: 9000, protocol: TCP}}\n  - {{name: u, port: {port}, targetPort: 9000, protocol: UDP}}\n---\n"
        )
    };
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: game-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: game}}\naddressType: IPv4\nports: [{{name: t, port: 9000, protocol: TCP}}, {{name: u, port: 9000, protocol: UDP}}]\nendpoints:\n- addresses: [\"{}\"]\n---\n",
        net.addr(2)
    );
    api.apply(&(svc("") + &slice)).unwrap();
    let dir = TempDir::new("kapi");
    let kubeconfig = api.kubeconfig(dir.path(), "admin");
    // The pool address is on loopback so the test needs no real network.
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw", &cloud_lb("127.0.0.3"), true);
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
    // The nodePort the API server allocated, on the node address.
    let node_port = api.get("services", &ns, "game").unwrap()["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a nodePort was allocated");
    let np: SocketAddr = format!("127.0.0.1:{node_port}").parse().unwrap();
    wait_for(10, "the nodePort listener", || tcp_hello(np).is_ok());
    wait_for(10, "LoadBalancer status", || {
        lb_ip(api, &ns, "game").as_deref() == Some("127.0.0.3")
    });

    // Back to ClusterIP (the server drops the nodePorts): listeners close
    // and the status is cleared.
    api.apply(&svc("  type: ClusterIP\n")).unwrap();
    wait_for(10, "the listener to close", || tcp_hello(lb).is_err());
    wait_for(10, "the nodePort listener to close", || {
        tcp_hello(np).is_err()
    });
    wait_for(10, "status cleared", || lb_ip(api, &ns, "game").is_none());
}

/// deploy/rbac.yaml as shipped (after `edit`), moved into namespace `ns`
/// and named after it (ClusterRoles are cluster-wide), with its
/// ServiceAccount: (account, a token of it, the rules granted).
fn install_rbac(
    api: &KubeApiServer,
    ns: &str,
    edit: impl Fn(String) -> String,
) -> (String, String, Vec<Rule>) {
    let sa = format!("portico-{ns}");
    let shipped = std::fs::read_to_string(workspace_root().join("deploy/rbac.yaml")).unwrap();
    let rbac = edit(
        shipped
            .replace("  name: portico\n", &format!("  name: {sa}\n"))
            .replace("namespace: portico-system", &format!("namespace: {ns}")),
    );
    let rules = Rule::from_manifests(&rbac);
    assert!(!rules.is_empty());
    api.apply(&rbac).unwrap();
    api.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n"
    ))
    .unwrap();
    let token = api.token(ns, &sa);
    (sa, token, rules)
}

/// A rule missing from the ServiceAccount's role: the real 403 gives one
/// clear log line (not one per retry), readiness waits, and granting the
/// rule recovers without a restart.
#[test]
fn a_missing_rbac_rule_gives_one_clear_line_until_granted() {
    let (api, ns, net, _web) = setup("norbac");
    let without_secrets = |r: String| {
        r.replace(
            "resources: [\"services\", \"secrets\", \"nodes\"]",
            "resources: [\"services\", \"nodes\"]",
        )
    };
    let (_, token, rules) = install_rbac(api, &ns, without_secrets);
    assert!(!rules
        .iter()
        .any(|r| r.resources.iter().any(|x| x == "secrets")));
    api.apply(&shop(&ns, "norbac.test", &net, false)).unwrap();
    let dir = TempDir::new("kapi");
    let kubeconfig = api.token_kubeconfig(dir.path(), "portico", &token);
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw", NO_NODE_PORTS, true);
    let line = "RBAC: the API server forbids `list` on secrets";
    wait_for(20, "the RBAC line", || gw.log().contains(line));
    std::thread::sleep(Duration::from_secs(3));
    let log = gw.log();
    assert_eq!(log.matches(line).count(), 1, "{log}");
    assert!(log.contains("deploy/rbac.yaml"), "{log}");
    assert_ne!(http_get(gw.admin, "admin", "/readyz").unwrap().status, 200);

    install_rbac(api, &ns, |r| r);
    gw.wait_ready();
    assert!(routes_to(&gw, "norbac.test", "web-1"));
}

/// deploy/rbac.yaml on the real server, RBAC on: Portico runs as its
/// ServiceAccount with a real token; the audit log shows that nothing it
/// did was refused and that it used every rule (least privilege).
#[test]
fn deploy_rbac_allows_exactly_what_portico_uses() {
    let (api, ns, net, _web) = setup("rbac");
    let (sa, token, rules) = install_rbac(api, &ns, |r| r);
    // The edge node's address from its Node object, as deploy/ runs it; a
    // Secret whose key is not the certificate's (an Event); a LoadBalancer.
    let node = format!("edge-{ns}");
    let (crt, _) = self_signed(&["rbac.test"]);
    let (_, other_key) = self_signed(&["rbac.test"]);
    let lb = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: {ns}}}\nspec:\n  type: LoadBalancer\n  ports: [{{name: http, port: 80}}]\n---\n"
    );
    api.apply(
        &(shop(&ns, "rbac.test", &net, true)
            + &yaml::tls_secret(&ns, "web-tls", &crt, &other_key)
            + &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\n---\n")
            + &lb),
    )
    .unwrap();
    api.set_status(
        "nodes",
        "",
        &node,
        &serde_json::json!({"addresses": [{"type": "Hostname", "address": node}, {"type": "InternalIP", "address": "127.0.0.1"}]}),
    )
    .unwrap();

    let dir = TempDir::new("kapi");
    let kubeconfig = api.token_kubeconfig(dir.path(), "portico", &token);
    let gw = Gateway::spawn_kube_real(
        &kubeconfig,
        &ns,
        "gw",
        &format!(
            "node_name = \"{node}\"\nlease_duration_seconds = 3\n{}{NO_NODE_PORTS}",
            cloud_lb("127.0.0.4")
        ),
        false,
    );
    gw.wait_ready();
    wait_for(15, "Ingress status from the Node's address", || {
        ingress_status_ips(api, &ns, "web") == ["127.0.0.1"]
    });
    wait_for(10, "LoadBalancer status", || {
        lb_ip(api, &ns, "lb").as_deref() == Some("127.0.0.4")
    });
    wait_for(10, "the TLSSecretInvalid Event", || {
        api.list("events.events.k8s.io", &ns)
            .iter()
            .any(|e| e["reason"] == "TLSSecretInvalid")
    });
    let user = format!("system:serviceaccount:{ns}:{sa}");
    wait_for(10, "a Lease renewal", || {
        api.audit(&user)
            .iter()
            .any(|e| e["verb"] == "update" && e["objectRef"]["resource"] == "leases")
    });

    let entries = api.audit(&user);
    let refused: Vec<String> = entries
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert_eq!(refused, Vec::<String>::new(), "{}", gw.log());
    let used: BTreeSet<(String, String)> = entries
        .iter()
        .map(|e| {
            let o = &e["objectRef"];
            let mut resource = format!(
                "{}/{}",
                o["apiGroup"].as_str().unwrap_or(""),
                o["resource"].as_str().unwrap_or("")
            );
            if let Some(sub) = o["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            (resource, e["verb"].as_str().unwrap_or("").to_string())
        })
        .collect();
    // Granted but not always exercised: `patch` on events (kube-runtime's
    // recorder patches an Event only when the same problem repeats).
    let rare = [("events.k8s.io/events", "patch")];
    for rule in &rules {
        for g in &rule.groups {
            for res in &rule.resources {
                for v in &rule.verbs {
                    let k = (format!("{g}/{res}"), v.clone());
                    if rare.iter().any(|(r, rv)| *r == k.0 && *rv == k.1) {
                        continue;
                    }
                    assert!(
                        used.contains(&k),
                        "deploy/rbac.yaml grants {} {} but Portico never used it; used: {used:?}",
                        k.1,
                        k.0
                    );
                }
            }
        }
    }
}
