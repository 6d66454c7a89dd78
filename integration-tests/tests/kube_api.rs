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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_integration_tests::apiserver::Rule;
use portico_integration_tests::kube_apiserver::{shared, KubeApiServer};
use portico_integration_tests::netns::{Netns, NsEcho};
use portico_integration_tests::*;

const NO_NODE_PORTS: &str = "[l4]\nnode_ports = false\n";

const BACKEND_PORT: u16 = 8080;

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

/// `shop` with TLS from Secret `web-tls` holding `crt` and `key`.
fn shop_tls(ns: &str, host: &str, net: &Netns, crt: &str, key: &str) -> String {
    shop(ns, host, net, true) + &yaml::tls_secret(ns, "web-tls", crt, key)
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
    api.apply(&shop_tls(&ns, "shop.test", &net, &crt, &key))
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

    // `portico.io/proxy-protocol` on the Service: its pods hear who
    // connected before the client's bytes; taking it off stops that.
    let annotated = svc("  type: LoadBalancer\n").replace(
        &format!("namespace: {ns}}}"),
        &format!("namespace: {ns}, annotations: {{portico.io/proxy-protocol: v1}}}}"),
    );
    api.apply(&annotated).unwrap();
    wait_for(10, "a PROXY header at the pod", || {
        tcp_hello(lb).is_ok_and(|s| {
            s.starts_with("l4-pod\nPROXY TCP4 127.0.0.1 127.0.0.3 ")
                && s.ends_with(&format!(" {port}\r\nping"))
        })
    });
    api.apply(&svc("  type: LoadBalancer\n")).unwrap();
    wait_for(10, "no PROXY header once the annotation is gone", || {
        tcp_hello(lb).map(|s| s == "l4-pod\nping").unwrap_or(false)
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

/// deploy/rbac.yaml without its Secrets rule.
fn without_secrets(rbac: String) -> String {
    rbac.replace(
        "resources: [\"services\", \"secrets\", \"nodes\"]",
        "resources: [\"services\", \"nodes\"]",
    )
}

/// A ClusterRole older than the image (no `namespaces`, no `tlsroutes`)
/// on a cluster with the Gateway API installed: those kinds count as
/// empty, with the RBAC line logged, and everything else is served.
#[test]
fn an_older_cluster_role_does_not_hold_the_gateway_api_back() {
    let (api, ns, net, _web) = setup("oldrole");
    api.install_gateway_api_crds();
    let (_, token, rules) = install_rbac(api, &ns, |r| {
        r.replace(
            "- apiGroups: [\"\"]\n  resources: [\"namespaces\"]\n  verbs: [\"list\", \"watch\"]\n",
            "",
        )
        .replace(", \"tlsroutes\"]", "]")
    });
    assert!(!rules.iter().any(|r| r
        .resources
        .iter()
        .any(|x| x == "namespaces" || x == "tlsroutes")));
    api.apply(&shop(&ns, "old.test", &net, false)).unwrap();
    let dir = TempDir::new("kapi");
    let kubeconfig = api.token_kubeconfig(dir.path(), "portico", &token);
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw-old", NO_NODE_PORTS, false);
    api.apply(&gateway_api_objects(&ns, gw.http, "route.old.test"))
        .unwrap();
    gw.wait_ready();
    wait_for(15, "the Ingress and the HTTPRoute served", || {
        routes_to(&gw, "old.test", "web-1") && routes_to(&gw, "route.old.test", "web-1")
    });
    let log = gw.log();
    assert!(
        log.contains("RBAC: the API server forbids `list` on namespaces"),
        "{log}"
    );
    assert!(log.contains("on tlsroutes"), "{log}");
}

/// A rule missing from the ServiceAccount's role: the real 403 gives one
/// clear log line (not one per retry), readiness waits, and granting the
/// rule recovers without a restart.
#[test]
fn a_missing_rbac_rule_gives_one_clear_line_until_granted() {
    let (api, ns, net, _web) = setup("norbac");
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
    api.install_gateway_api_crds();
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
    // A Gateway of a class of ours and a route to it: their status is
    // written (the listener's port is not Portico's: refused, with status).
    api.apply(&gateway_api_objects(&ns, 1, "rbac.test"))
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
    let patched = |r: &str| {
        api.audit(&user).iter().any(|e| {
            e["verb"] == "patch"
                && e["objectRef"]["resource"] == r
                && e["objectRef"]["subresource"] == "status"
        })
    };
    // GatewayClasses are cluster-wide: another test's gateway may write
    // this class's status first (then ours finds it right). Not waited for.
    let kinds = [
        "gateways",
        "httproutes",
        "grpcroutes",
        "tcproutes",
        "udproutes",
        "tlsroutes",
    ];
    let end = Instant::now() + Duration::from_secs(15);
    let mut missing: Vec<&str> = kinds.to_vec();
    while !missing.is_empty() && Instant::now() < end {
        missing.retain(|r| !patched(r));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        missing.is_empty(),
        "no status patch on {missing:?}; log:\n{}",
        gw.log()
    );
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
    // recorder patches an Event only when the same problem repeats), `list`
    // on leases (L2 announcement with Leases, off here; l2_failover.rs),
    // `patch` on gatewayclasses/status (cluster-wide: another gateway of
    // this test run may have written it first).
    let rare = [
        ("events.k8s.io/events", "patch"),
        ("coordination.k8s.io/leases", "list"),
        ("gateway.networking.k8s.io/gatewayclasses/status", "patch"),
    ];
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

#[test]
fn endpoints_scale_up_and_down_under_load_with_zero_failures() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let api = shared();
    let ns = api.namespace("scale");
    let net = Netns::new();
    let addrs: Vec<String> = (2..=4)
        .map(|h| if h == 2 { net.addr(2) } else { net.add_host(h) })
        .collect();
    let _backends: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| net.echo_http(&format!("pod-{i}"), a, BACKEND_PORT))
        .collect();
    let slice = |addrs: &[String]| yaml::slice_at(&ns, "web-1", "web", "http", BACKEND_PORT, addrs);
    api.apply(
        &(yaml::service(&ns, "web", "", &[("http", 80)])
            + &slice(&addrs[..1])
            + &yaml::ingress(
                &ns,
                "web",
                &[("scale.test", "/", "Prefix", "web", "http")],
                "",
            )),
    )
    .unwrap();
    let dir = TempDir::new("kapi");
    let gw = Gateway::spawn_kube_real(
        &api.kubeconfig(dir.path(), "admin"),
        &ns,
        "gw",
        NO_NODE_PORTS,
        true,
    );
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
    api.apply(&slice(&addrs)).unwrap();
    wait_for(10, "all three pods answering", || {
        names_since(mark).len() == 3
    });
    // Down to one: after a moment only pod-2 answers.
    api.apply(&slice(&addrs[2..])).unwrap();
    std::thread::sleep(Duration::from_millis(800));
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
}

/// An HTTPS request to `host` through the gateway, verified against `ca`;
/// the backend's name, or curl's error.
fn https_name(gw: &Gateway, host: &str, ca: &std::path::Path) -> Result<String, String> {
    let (out, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("{host}:{}:127.0.0.1", gw.https),
        &format!("https://{host}:{}/", gw.https),
    ]);
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["name"].as_str().map(String::from))
        .ok_or(err)
}

fn events_with_reason(api: &KubeApiServer, ns: &str, reason: &str) -> Vec<serde_json::Value> {
    api.list("events.events.k8s.io", ns)
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// A Secret rotated through the API is served without a restart; one whose
/// key does not match its certificate (the API server accepts it: it checks
/// only that both keys are there) is reported, and the host falls back.
#[test]
fn rotated_certificate_is_served_without_restart() {
    let (api, ns, net, _web) = setup("rot");
    let (crt1, key1) = self_signed(&["rot.test"]);
    api.apply(&shop_tls(&ns, "rot.test", &net, &crt1, &key1))
        .unwrap();
    let dir = TempDir::new("kapi");
    let gw = Gateway::spawn_kube_real(
        &api.kubeconfig(dir.path(), "admin"),
        &ns,
        "gw",
        NO_NODE_PORTS,
        true,
    );
    gw.wait_ready();
    let ca1 = gw.dir.write("ca1.pem", &crt1);
    assert_eq!(https_name(&gw, "rot.test", &ca1), Ok("web-1".into()));

    let (crt2, key2) = self_signed(&["rot.test"]);
    let ca2 = gw.dir.write("ca2.pem", &crt2);
    let pid = gw.pid();
    api.apply(&yaml::tls_secret(&ns, "web-tls", &crt2, &key2))
        .unwrap();
    wait_for(10, "the new certificate", || {
        https_name(&gw, "rot.test", &ca2).is_ok()
    });
    assert!(
        https_name(&gw, "rot.test", &ca1).is_err(),
        "old certificate still served"
    );
    assert_eq!(gw.pid(), pid);

    let (crt3, _) = self_signed(&["rot.test"]);
    api.apply(&yaml::tls_secret(&ns, "web-tls", &crt3, &key2))
        .unwrap();
    wait_for(10, "a TLSSecretInvalid Event", || {
        !events_with_reason(api, &ns, "TLSSecretInvalid").is_empty()
    });
    let ev = &events_with_reason(api, &ns, "TLSSecretInvalid")[0];
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["kind"], "Ingress");
    assert_eq!(ev["regarding"]["name"], "web");
    assert!(
        ev["note"]
            .as_str()
            .unwrap()
            .contains(&format!("{ns}/web-tls")),
        "{ev}"
    );
    assert!(
        https_name(&gw, "rot.test", &ca2).is_err(),
        "a mismatched key pair was served"
    );
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
}

/// Users that wrote a status subresource, from the audit log.
fn status_writers(api: &KubeApiServer, users: &[&str]) -> BTreeSet<String> {
    users
        .iter()
        .filter(|u| {
            api.audit(u).iter().any(|e| {
                e["objectRef"]["subresource"] == "status"
                    && (e["verb"] == "patch" || e["verb"] == "update")
                    && e["responseStatus"]["code"] == 200
            })
        })
        .map(|u| u.to_string())
        .collect()
}

/// Two processes on a real Lease, each with its own ServiceAccount so the
/// audit log tells their writes apart: only the leader writes status; when
/// it is killed, the other takes over once the Lease expires.
#[test]
fn leader_failover_between_two_processes_only_the_leader_writes() {
    let (api, ns, net, _web) = setup("lead");
    let (sa, token_a, _) = install_rbac(api, &ns, |r| r);
    // A second account with the same roles.
    let sa_b = format!("{sa}-b");
    api.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa_b}, namespace: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {sa_b}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {sa}}}\n\
         subjects: [{{kind: ServiceAccount, name: {sa_b}, namespace: {ns}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa_b}, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: portico-leader-election}}\n\
         subjects: [{{kind: ServiceAccount, name: {sa_b}, namespace: {ns}}}]\n"
    ))
    .unwrap();
    let token_b = api.token(&ns, &sa_b);
    let (user_a, user_b) = (
        format!("system:serviceaccount:{ns}:{sa}"),
        format!("system:serviceaccount:{ns}:{sa_b}"),
    );
    let users = [user_a.as_str(), user_b.as_str()];
    api.apply(&shop(&ns, "lead.test", &net, false)).unwrap();
    let dir = TempDir::new("kapi");
    let cfg = format!("lease_duration_seconds = 3\n{NO_NODE_PORTS}");
    let spawn = |name: &str, token: &str| {
        let kubeconfig = api.token_kubeconfig(dir.path(), name, token);
        Gateway::spawn_kube_real(&kubeconfig, &ns, name, &cfg, true)
    };
    let mut a = Some(spawn("gw-a", &token_a));
    a.as_ref().unwrap().wait_ready();
    wait_for(15, "gw-a to write status", || {
        ingress_status_ips(api, &ns, "web") == ["127.0.0.1"]
    });
    let b = spawn("gw-b", &token_b);
    b.wait_ready();
    assert!(routes_to(a.as_ref().unwrap(), "lead.test", "web-1"));
    assert!(routes_to(&b, "lead.test", "web-1"));
    api.apply(&yaml::ingress(
        &ns,
        "late",
        &[("late.test", "/", "Prefix", "web", "http")],
        "",
    ))
    .unwrap();
    wait_for(10, "status of the new Ingress", || {
        ingress_status_ips(api, &ns, "late") == ["127.0.0.1"]
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status_writers(api, &users),
        BTreeSet::from([user_a.clone()])
    );
    let holder = |api: &KubeApiServer| {
        api.get("leases.coordination.k8s.io", &ns, "portico-leader")
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    assert_eq!(holder(api), Some("gw-a".into()));
    assert!(b.metrics().contains("portico_kubernetes_leader 0"));

    // The leader dies without releasing (SIGKILL): gw-b takes over once the
    // Lease expires and writes what changed meanwhile.
    a.take();
    api.apply(&yaml::ingress(
        &ns,
        "after",
        &[("after.test", "/", "Prefix", "web", "http")],
        "",
    ))
    .unwrap();
    wait_for(20, "gw-b to publish the status", || {
        ingress_status_ips(api, &ns, "after") == ["127.0.0.1"]
    });
    assert!(status_writers(api, &users).contains(&user_b));
    assert_eq!(holder(api), Some("gw-b".into()));
    assert!(b.metrics().contains("portico_kubernetes_leader 1"));
}

/// With `namespace` set, namespaced kinds are listed and watched in that
/// namespace only (the audit log says so), and another namespace's
/// Ingress is not served.
#[test]
fn namespace_restriction_watches_and_serves_one_namespace() {
    let (api, ns, net, _web) = setup("inns");
    let other = api.namespace("outns");
    api.apply(&(shop(&ns, "in.test", &net, false) + &shop(&other, "out.test", &net, false)))
        .unwrap();
    let (_, token, _) = install_rbac(api, &ns, |r| r);
    let dir = TempDir::new("kapi");
    let kubeconfig = api.token_kubeconfig(dir.path(), "portico", &token);
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw", NO_NODE_PORTS, true);
    gw.wait_ready();
    assert!(routes_to(&gw, "in.test", "web-1"));
    assert_eq!(http_get(gw.http, "out.test", "/").unwrap().status, 404);
    let user = format!("system:serviceaccount:{ns}:portico-{ns}");
    let reads: Vec<serde_json::Value> = api
        .audit(&user)
        .into_iter()
        .filter(|e| e["verb"] == "list" || e["verb"] == "watch")
        .collect();
    for kind in ["services", "secrets", "endpointslices", "ingresses"] {
        let of_kind: Vec<&serde_json::Value> = reads
            .iter()
            .filter(|e| e["objectRef"]["resource"] == kind)
            .collect();
        assert!(!of_kind.is_empty(), "{kind} never listed");
        for e in of_kind {
            assert_eq!(e["objectRef"]["namespace"], ns.as_str(), "{e}");
        }
    }
}

#[test]
fn external_name_backend_resolves_and_follows_dns_changes() {
    use portico_integration_tests::dns::DnsServer;
    let api = shared();
    let ns = api.namespace("extname");
    let net = Netns::new();
    let second = net.add_host(3);
    let _a = net.echo_http("ext-a", &net.addr(2), BACKEND_PORT);
    let _b = net.echo_http("ext-b", &second, BACKEND_PORT);
    let dns = DnsServer::start();
    let name = "backend.portico.test";
    dns.set(name, &[net.addr(2)], 1);
    api.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: {ns}}}\nspec:\n  type: ExternalName\n  externalName: {name}\n  ports: [{{name: http, port: {BACKEND_PORT}}}]\n---\n{}",
        yaml::ingress(&ns, "ext", &[("ext.test", "/", "Prefix", "ext", "http")], "")
    ))
    .unwrap();
    let dir = TempDir::new("kapi");
    let gw = Gateway::spawn_kube_real(
        &api.kubeconfig(dir.path(), "admin"),
        &ns,
        "gw",
        &format!(
            "{NO_NODE_PORTS}[dns]\nservers = [\"127.0.0.1:{}\"]\nmin_ttl_seconds = 1\n",
            dns.port()
        ),
        true,
    );
    gw.wait_ready();
    wait_for(10, "ext.test routed to the resolved address", || {
        routes_to(&gw, "ext.test", "ext-a")
    });
    dns.set(name, std::slice::from_ref(&second), 1);
    wait_for(10, "ext.test following the DNS change", || {
        routes_to(&gw, "ext.test", "ext-b")
    });
    dns.remove(name);
    wait_for(10, "the resolve failure to be logged", || {
        gw.log().contains("cannot resolve ExternalName")
    });
    for _ in 0..5 {
        assert!(routes_to(&gw, "ext.test", "ext-b"));
    }
}

/// The shipped `cloud-lb` plugin (built from source) decides
/// LoadBalancer addresses: internal-LB annotations get the internal pool,
/// others the default pool, and an exhausted pool is reported..
#[test]
fn the_cloud_lb_plugin_allocates_load_balancer_addresses() {
    let api = shared();
    let ns = api.namespace("cloudlb");
    let dir = TempDir::new("kapi");
    let kc = api.kubeconfig(dir.path(), "admin");
    let svc = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}{annotations}}}\nspec:\n  type: LoadBalancer\n  ports: [{{name: p, port: 80}}]\n---\n"
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
    let gw = Gateway::spawn_kube_real(&kc, &ns, "gw", &format!(
            "load_balancer_plugin = \"lb\"\n{NO_NODE_PORTS}\n[[plugins.load]]\nname = \"lb\"\npath = \"{}\"\n\
             config = '{{\"pools\": {{\"default\": [\"127.0.0.5\"], \"internal\": [\"127.0.0.6\"]}}}}'\n",
            wasm.display()
        ),
        true,
    );
    gw.wait_ready();
    let status = |name: &str| {
        api.get("services", &ns, name).and_then(|s| {
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

/// A Gateway that asks for no address of its own gets one from the
/// cloud-lb plugin's pool, after the Services: the leader writes it to the
/// Gateway's status, and the Gateway's TCP listener listens there.
#[test]
fn the_cloud_lb_plugin_gives_a_gateway_without_addresses_a_pool_address() {
    let api = shared();
    api.install_gateway_api_crds();
    let ns = api.namespace("gwlb");
    let net = Netns::new();
    let _pod = net.echo_tcp("gw-pod", &net.addr(2), 9000);
    let (port, lb_port) = (free_port(), free_port());
    let objects = yaml::service(&ns, "db", "", &[("t", 5432)])
        + &yaml::slice_at(&ns, "db-1", "db", "t", 9000, &[net.addr(2)])
        + &yaml::service(&ns, "lb", "  type: LoadBalancer\n", &[("p", lb_port)])
        + &portico_class(&ns);
    api.apply(&format!(
        "{objects}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {ns}}}
spec:
  gatewayClassName: portico-{ns}
  listeners: [{{name: db, protocol: TCP, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: db, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: db, port: 5432}}]}}]
"
    ))
    .unwrap();
    let dir = TempDir::new("kapi");
    let kc = api.kubeconfig(dir.path(), "admin");
    // Loopback pool addresses: the test needs no real network. The
    // announce pool opens 127.0.0.22 to Gateways (announced some other
    // way: mode off).
    let config = format!(
        "load_balancer_plugin = \"lb\"\n{NO_NODE_PORTS}\n[[plugins.load]]\nname = \"lb\"\npath = \"{}\"\n\
         config = '{{\"pools\": {{\"default\": [\"127.0.0.21\", \"127.0.0.22\"]}}}}'\n\
         [[announce.pools]]\nname = \"gw\"\naddresses = [\"127.0.0.22/32\"]\nmode = \"off\"\ngateways = true\n",
        built_plugins().join("cloud_lb.wasm").display()
    );
    let gw = Gateway::spawn_kube_real(&kc, &ns, "gw", &config, true);
    gw.wait_ready();
    wait_for(15, "the Service's pool address", || {
        lb_ip(api, &ns, "lb").as_deref() == Some("127.0.0.21")
    });
    wait_for(15, "the Gateway's pool address in its status", || {
        api.get("gateways.gateway.networking.k8s.io", &ns, "edge")
            .is_some_and(|g| {
                g["status"]["addresses"]
                    == serde_json::json!([{"type": "IPAddress", "value": "127.0.0.22"}])
            })
    });
    // The address is the Gateway's own now: its TCP listener binds there.
    let own: SocketAddr = format!("127.0.0.22:{port}").parse().unwrap();
    wait_for(15, "the Gateway's TCP listener on its address", || {
        tcp_hello(own).is_ok_and(|s| s == "gw-pod\nping")
    });
    let config = gw.config_json();
    assert_eq!(
        config["gateway_api"]["gateways"][format!("{ns}/edge")]["allocated_addresses"],
        serde_json::json!(["127.0.0.22"]),
        "{config}"
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
    let api = shared();
    let ns = api.namespace("cloudlb");
    let dir = TempDir::new("kapi");
    let kc = api.kubeconfig(dir.path(), "admin");
    let lb_api = FakeLbApi::start("127.0.0.6");
    let port = free_port();
    let svc = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}{annotations}}}\nspec:\n  type: LoadBalancer\n  ports:\n  - {{name: t, port: {port}, targetPort: 9000, protocol: TCP}}\n---\n"
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
    let gw = Gateway::spawn_kube_real(&kc, &ns, "gw", &cfg, true);
    gw.wait_ready();
    wait_for(15, "the status the API gave", || {
        api.get("services", &ns, "ext")
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
    let late = api.get("services", &ns, "late").unwrap();
    assert!(
        late["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{late}"
    );
    assert_eq!(
        api.get("services", &ns, "ext").unwrap()["status"]["loadBalancer"]["ingress"][0]["ip"],
        "127.0.0.6"
    );
    // It answers again: the new Service gets its address.
    *lb_api.status.lock().unwrap() = 200;
    wait_for(20, "the late Service's status", || {
        api.get("services", &ns, "late")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.6")
    });
}

#[test]
fn cloud_lb_verifies_an_https_load_balancer_api_against_its_ca() {
    let api = shared();
    let ns = api.namespace("cloudlb");
    let dir = TempDir::new("kapi");
    let kc = api.kubeconfig(dir.path(), "admin");
    let (ca, tls) = lb_api_tls();
    let lb_api = FakeLbApi::start_tls("127.0.0.7", tls);
    let port = free_port();
    let svc = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  type: LoadBalancer\n  ports:\n  - {{name: t, port: {port}, targetPort: 9000, protocol: TCP}}\n---\n"
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
    let gw = Gateway::spawn_kube_real(&kc, &ns, "gw", &cfg(&other_ca), true);
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
    let s = api.get("services", &ns, "secure").unwrap();
    assert!(
        s["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{s}"
    );
    drop(gw);
    // The right CA: the API is asked and its address published.
    let gw = Gateway::spawn_kube_real(&kc, &ns, "gw", &cfg(&ca), true);
    gw.wait_ready();
    wait_for(15, "the status the HTTPS API gave", || {
        api.get("services", &ns, "secure")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.7")
    });
    assert_eq!(
        lb_api.bodies.lock().unwrap().last().unwrap()["services"][0]["name"],
        "secure"
    );
}

/// The shipped `deploy/` as a user applies it, validated and defaulted by
/// the real server without being stored (`--dry-run=server`): every object
/// is accepted, the DaemonSet's `lifecycle.preStop.sleep` included (a 1.30+
/// field, hence the oldest supported version in README).
#[test]
fn deploy_manifests_pass_a_server_side_dry_run() {
    let api = shared();
    // A dry run stores nothing, not even deploy/'s Namespace, so the
    // namespaced objects need it to exist already (as on a second apply).
    let _ = api.kubectl(&["create", "namespace", "portico-system"], None);
    let deploy = workspace_root().join("deploy");
    let out = api
        .kubectl(
            &["apply", "--dry-run=server", "-k", deploy.to_str().unwrap()],
            None,
        )
        .unwrap_or_else(|e| panic!("kubectl apply --dry-run=server -k deploy/ refused: {e}"));
    for object in [
        "namespace/portico-system",
        "serviceaccount/portico",
        "clusterrole.rbac.authorization.k8s.io/portico",
        "clusterrolebinding.rbac.authorization.k8s.io/portico",
        "role.rbac.authorization.k8s.io/portico-leader-election",
        "rolebinding.rbac.authorization.k8s.io/portico-leader-election",
        "ingressclass.networking.k8s.io/portico",
        "daemonset.apps/portico",
    ] {
        assert!(out.contains(object), "{object} missing from:\n{out}");
    }
    assert!(out.contains("(server dry run)"), "{out}");
}

/// An Ingress of another controller's IngressClass, with the shipped
/// `ingress-class` admission: not served, its status never written, no
/// Event about it, one log line with the reason, and counted.
#[test]
fn an_ingress_of_another_controller_is_left_alone_and_explained() {
    let (api, ns, net, _web) = setup("ignored");
    let (ours, theirs) = (format!("portico-{ns}"), format!("other-{ns}"));
    let class = |name: &str, controller: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: {name}}}\nspec: {{controller: {controller}}}\n---\n"
        )
    };
    let with_class = |yaml: String, class: &str| {
        yaml.replace(
            "spec:\n  rules:",
            &format!("spec:\n  ingressClassName: {class}\n  rules:"),
        )
    };
    api.apply(
        &(class(&ours, "portico.io/ingress-controller")
            + &class(&theirs, "example.com/other")
            + &with_class(shop(&ns, "mine.test", &net, false), &ours)
            + &with_class(
                yaml::ingress(
                    &ns,
                    "theirs",
                    &[("theirs.test", "/", "Prefix", "web", "http")],
                    "",
                ),
                &theirs,
            )),
    )
    .unwrap();
    let dir = TempDir::new("kapi");
    let cfg = format!(
        "{NO_NODE_PORTS}[ingress]\nadmission = \"classes\"\n[[plugins.load]]\nname = \"classes\"\npath = \"{}\"\n",
        built_plugins().join("ingress_class.wasm").display()
    );
    let gw = Gateway::spawn_kube_real(&api.kubeconfig(dir.path(), "admin"), &ns, "gw", &cfg, true);
    gw.wait_ready();
    wait_for(15, "status of the served Ingress", || {
        ingress_status_ips(api, &ns, "web") == ["127.0.0.1"]
    });
    assert!(routes_to(&gw, "mine.test", "web-1"));
    assert_eq!(http_get(gw.http, "theirs.test", "/").unwrap().status, 404);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ingress_status_ips(api, &ns, "theirs"), Vec::<String>::new());
    let about_theirs: Vec<serde_json::Value> = api
        .list("events.events.k8s.io", &ns)
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "theirs")
        .collect();
    assert!(about_theirs.is_empty(), "{about_theirs:?}");
    let why = "belongs to controller example.com/other, not portico.io/ingress-controller";
    let log = gw.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Ingress not served"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(&format!("{ns}/theirs")) && lines[0].contains(why),
        "{log}"
    );
    assert!(gw
        .metrics()
        .contains("portico_ingresses{state=\"ignored\"} 1"));
    let ex = http_get(gw.admin, "admin", "/explain?host=theirs.test&path=/")
        .unwrap()
        .json();
    assert!(ex["why"].as_str().unwrap().contains(why), "{ex}");
}

/// `/metrics` after traffic of every kind (HTTP, TLS, L4, a plugin, the
/// Kubernetes source against the real API server) passes `promtool check
/// metrics` (Debian's `prometheus`): every family has HELP, counters end
/// in `_total`, units are base units in the name.
#[test]
fn metrics_pass_promtool_after_every_kind_of_traffic() {
    let (api, ns, net, _web) = setup("promtool");
    let _l4_pod = net.echo_tcp("l4-pod", &net.addr(2), 9000);
    let (crt, key) = self_signed(&["prom.test"]);
    let port = free_port();
    api.apply(
        &(shop_tls(&ns, "prom.test", &net, &crt, &key)
            + &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: game, namespace: {ns}}}\nspec:\n  type: LoadBalancer\n  ports:\n  - {{name: t, port: {port}, targetPort: 9000, protocol: TCP}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: game-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: game}}\naddressType: IPv4\nports: [{{name: t, port: 9000, protocol: TCP}}]\nendpoints:\n- addresses: [\"{}\"]\n",
                net.addr(2)
            )),
    )
    .unwrap();
    let dir = TempDir::new("kapi");
    let cfg = format!(
        "{}{NO_NODE_PORTS}[plugins]\nhttp = [\"compat\"]\n[[plugins.load]]\nname = \"compat\"\npath = \"{}\"\nconfig = \"blue\"\n",
        cloud_lb("127.0.0.8"),
        built_plugins().join("compat_http_filter.wasm").display()
    );
    let gw = Gateway::spawn_kube_real(&api.kubeconfig(dir.path(), "admin"), &ns, "gw", &cfg, true);
    gw.wait_ready();
    assert_eq!(http_get(gw.http, "prom.test", "/").unwrap().status, 200);
    assert_eq!(http_get(gw.http, "nowhere.test", "/").unwrap().status, 404);
    let ca = gw.dir.write("ca.pem", &crt);
    assert_eq!(https_name(&gw, "prom.test", &ca), Ok("web-1".into()));
    let lb: SocketAddr = format!("127.0.0.8:{port}").parse().unwrap();
    wait_for(10, "the L4 listener", || {
        tcp_hello(lb).is_ok_and(|s| s == "l4-pod\nping")
    });
    wait_for(10, "the Ingress status", || {
        ingress_status_ips(api, &ns, "web") == ["127.0.0.1"]
    });
    let scrape = gw.metrics();
    for family in [
        "portico_http_requests_total",
        "portico_tls_handshakes_total",
        "portico_l4_connections_total",
        "portico_plugin_calls_total",
        "portico_kubernetes_objects",
        "portico_kubernetes_status_writes_total",
        "portico_ingresses",
    ] {
        assert!(
            scrape.contains(&format!("\n{family}")),
            "{family} missing:\n{scrape}"
        );
    }
    let file = gw.dir.write("scrape.txt", &scrape);
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (apt-get install prometheus)");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}

/// `kubernetes.secrets = "referenced"` on the real server with RBAC on:
/// the ServiceAccount has no access to Secrets but the Roles `portico
/// rbac` prints (read from the cluster). Portico serves the named Secret,
/// never reads another one (the audit log), reports a newly named Secret
/// it may not read in one clear line and as a problem on that Secret, and
/// serves it once the regenerated Roles grant it, without a restart.
#[test]
fn referenced_secrets_mode_reads_exactly_the_named_secrets() {
    let (api, ns, net, _web) = setup("refsec");
    let (sa, token, _) = install_rbac(api, &ns, without_secrets);
    let (crt, key) = self_signed(&["ref.test"]);
    let (crt2, key2) = self_signed(&["two.ref.test"]);
    api.apply(
        &(shop_tls(&ns, "ref.test", &net, &crt, &key)
            + &yaml::tls_secret(&ns, "unrelated", &crt2, &key2)),
    )
    .unwrap();

    // The helper, as a cluster admin would run it, scoped to this test's
    // namespace (the server is shared).
    let dir = TempDir::new("kapi");
    let admin = api.kubeconfig(dir.path(), "admin");
    let helper_cfg = dir.write(
        "helper.toml",
        &format!("[kubernetes]\nnamespace = \"{ns}\"\n"),
    );
    let rbac = || {
        let out = portico(&[
            "rbac",
            "--config",
            helper_cfg.to_str().unwrap(),
            "--kubeconfig",
            admin.to_str().unwrap(),
            "--service-account",
            &format!("{ns}/{sa}"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let roles = rbac();
    assert!(roles.contains("resourceNames: [\"web-tls\"]"), "{roles}");
    assert!(!roles.contains("unrelated"), "{roles}");
    api.apply(&roles).unwrap();

    let kubeconfig = api.token_kubeconfig(dir.path(), "portico", &token);
    let gw = Gateway::spawn_kube_real(
        &kubeconfig,
        &ns,
        "gw",
        &format!("secrets = \"referenced\"\n{NO_NODE_PORTS}"),
        true,
    );
    gw.wait_ready();
    let ca = gw.dir.write("ca.pem", &crt);
    // Ready means the named Secret was already read: no default
    // certificate in between.
    assert_eq!(https_name(&gw, "ref.test", &ca), Ok("web-1".into()));

    // A second Ingress names the Secret the Roles do not grant.
    api.apply(&yaml::ingress(
        &ns,
        "two",
        &[("two.ref.test", "/", "Prefix", "web", "http")],
        "  tls:\n  - hosts: [\"two.ref.test\"]\n    secretName: unrelated\n",
    ))
    .unwrap();
    let line = "RBAC: the API server forbids `list` on secrets named";
    wait_for(15, "the RBAC line for the named Secret", || {
        gw.log().contains(line)
    });
    let log = gw.log();
    assert!(log.contains("portico rbac"), "{log}");
    let config = http_get(gw.admin, "admin", "/config").unwrap().json();
    let problems = config["problems"].to_string();
    assert!(
        problems.contains(&format!("Secret {ns}/unrelated")) && problems.contains("forbids"),
        "{problems}"
    );
    // Still serving what it could read.
    assert_eq!(https_name(&gw, "ref.test", &ca), Ok("web-1".into()));

    // Regenerated Roles grant it: served without a restart.
    let pid = gw.pid();
    let roles = rbac();
    assert!(
        roles.contains("resourceNames: [\"unrelated\", \"web-tls\"]"),
        "{roles}"
    );
    api.apply(&roles).unwrap();
    let ca2 = gw.dir.write("ca2.pem", &crt2);
    wait_for(30, "two.ref.test with its own certificate", || {
        https_name(&gw, "two.ref.test", &ca2).is_ok()
    });
    assert_eq!(gw.pid(), pid);

    // The Ingress goes: its Secret's watch stops.
    api.delete("ingresses.networking.k8s.io", &ns, "two")
        .unwrap();
    wait_for(10, "one named watch left", || {
        gw.metrics()
            .contains("portico_kubernetes_named_watches{kind=\"Secret\"} 1")
    });

    // The audit log: every Secret request named one Secret, and only the
    // two that Ingresses named; no list of the kind.
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let secret_requests: Vec<String> = api
        .audit(&user)
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "secrets")
        .map(|e| e["requestURI"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!secret_requests.is_empty());
    for uri in &secret_requests {
        assert!(
            uri.contains("fieldSelector=metadata.name%3Dweb-tls")
                || uri.contains("fieldSelector=metadata.name%3Dunrelated"),
            "a Secret request not by name: {uri}"
        );
        assert!(uri.contains(&format!("/namespaces/{ns}/secrets")), "{uri}");
    }
}

/// A GatewayClass of Portico's named after `ns` (classes are
/// cluster-wide), a Gateway `edge` with an HTTP listener on `port`, and an
/// HTTPRoute `web` for `host` to Service `web`, plus one to a Service that
/// does not exist; a GRPCRoute; a TCPRoute and a UDPRoute that no listener
/// takes (their status says so).
/// GatewayClass `portico-NS`, Portico's, for the Gateways of namespace NS.
fn portico_class(ns: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico-{ns}}}
spec: {{controllerName: portico.io/gateway-controller}}
---
"
    )
}

fn gateway_api_objects(ns: &str, port: u16, host: &str) -> String {
    portico_class(ns)
        + &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {ns}}}
spec:
  gatewayClassName: portico-{ns}
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [{host}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: web, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: broken, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [broken.{host}]
  rules: [{{backendRefs: [{{name: nowhere, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [grpc.{host}]
  rules: [{{matches: [{{method: {{service: pkg.Svc}}}}], backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: tcp, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {{name: udp, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: tls, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [tls.{host}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
"
        )
}

/// The condition `type_` of a status `conditions` list.
fn condition<'a>(conditions: &'a serde_json::Value, type_: &str) -> Option<&'a serde_json::Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

/// A listener that admits routes by namespace label: the route attaches
/// when its Namespace gets the label (the Namespace watch), and leaves
/// when the label goes, without a restart.
#[test]
fn gateway_listener_selectors_follow_namespace_labels() {
    let (api, ns, net, _web) = setup("gwsel");
    api.install_gateway_api_crds();
    api.apply(&shop(&ns, "ingress.test", &net, false)).unwrap();
    let dir = TempDir::new("kapi");
    let kubeconfig = api.kubeconfig(dir.path(), "admin");
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw-sel", NO_NODE_PORTS, true);
    gw.wait_ready();
    let pid = gw.pid();
    let port = gw.http;
    api.apply(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico-{ns}}}
spec: {{controllerName: portico.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: sel, namespace: {ns}}}
spec:
  gatewayClassName: portico-{ns}
  listeners:
  - name: http
    protocol: HTTP
    port: {port}
    allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{edge-routes: 'yes'}}}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {ns}}}
spec:
  parentRefs: [{{name: sel}}]
  hostnames: [sel.test]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
"
    ))
    .unwrap();
    let attached = |want: &str| {
        api.get("httproutes.gateway.networking.k8s.io", &ns, "web")
            .is_some_and(|r| {
                condition(&r["status"]["parents"][0]["conditions"], "Accepted")
                    .is_some_and(|c| c["status"] == want)
            })
    };
    wait_for(15, "NotAllowedByListeners while unlabelled", || {
        attached("False")
    });
    assert_eq!(http_get(gw.http, "sel.test", "/").unwrap().status, 404);
    api.kubectl(&["label", "namespace", &ns, "edge-routes=yes"], None)
        .unwrap();
    wait_for(15, "the route served once labelled", || {
        routes_to(&gw, "sel.test", "web-1")
    });
    wait_for(10, "Accepted once labelled", || attached("True"));
    api.kubectl(&["label", "namespace", &ns, "edge-routes-"], None)
        .unwrap();
    wait_for(15, "the route gone with the label", || {
        http_get(gw.http, "sel.test", "/").is_ok_and(|r| r.status == 404)
    });
    assert_eq!(gw.pid(), pid);
}

/// Gateway API objects on the real API server (CRDs installed): the routes
/// are watched and served without a restart, and the leader writes the
/// spec's status to the class, the Gateway and the routes, with an Event
/// for the route whose backend does not exist.
#[test]
fn gateway_api_routes_are_served_and_their_status_written() {
    let (api, ns, net, _web) = setup("gwapi");
    api.install_gateway_api_crds();
    api.apply(&shop(&ns, "ingress.test", &net, false)).unwrap();
    let dir = TempDir::new("kapi");
    let kubeconfig = api.kubeconfig(dir.path(), "admin");
    // A pool open to Gateways, announced some other way (mode off): its
    // addresses are served without touching this host's network.
    let config = format!(
        "{NO_NODE_PORTS}[[announce.pools]]\nname = \"gw\"\naddresses = [\"192.0.2.77/32\"]\nmode = \"off\"\ngateways = true\n"
    );
    let gw = Gateway::spawn_kube_real(&kubeconfig, &ns, "gw-api", &config, true);
    gw.wait_ready();
    let pid = gw.pid();
    api.apply(&gateway_api_objects(&ns, gw.http, "route.test"))
        .unwrap();
    wait_for(15, "the HTTPRoute served", || {
        routes_to(&gw, "route.test", "web-1")
    });
    // The Ingress beside it still works; nothing restarted.
    assert!(routes_to(&gw, "ingress.test", "web-1"));
    assert_eq!(gw.pid(), pid);
    // The objects of one apply may come in separate watch events.
    wait_for(10, "500 for the route without a backend", || {
        http_get(gw.http, "broken.route.test", "/").is_ok_and(|r| r.status == 500)
    });

    wait_for(15, "route status", || {
        api.get("httproutes.gateway.networking.k8s.io", &ns, "web")
            .is_some_and(|r| {
                let p = &r["status"]["parents"][0];
                p["controllerName"] == "portico.io/gateway-controller"
                    && condition(&p["conditions"], "Accepted")
                        .is_some_and(|c| c["status"] == "True")
                    && condition(&p["conditions"], "ResolvedRefs")
                        .is_some_and(|c| c["status"] == "True")
            })
    });
    let class = api
        .get(
            "gatewayclasses.gateway.networking.k8s.io",
            "",
            &format!("portico-{ns}"),
        )
        .unwrap();
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted").unwrap()["status"],
        "True"
    );
    wait_for(10, "Gateway status", || {
        api.get("gateways.gateway.networking.k8s.io", &ns, "edge")
            .is_some_and(|g| {
                let l = &g["status"]["listeners"][0];
                g["status"]["addresses"][0]["value"] == "127.0.0.1"
                    && condition(&g["status"]["conditions"], "Programmed")
                        .is_some_and(|c| c["status"] == "True")
                    && l["attachedRoutes"] == 3
                    && condition(&l["conditions"], "Accepted")
                        .is_some_and(|c| c["status"] == "True")
            })
    });
    // spec.addresses on the real API server (its CRD validates them):
    // an address Portico does not serve is not assigned; one it serves
    // is, and becomes the status address.
    let asks = |address: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: asks, namespace: {ns}}}\nspec:\n  gatewayClassName: portico-{ns}\n  addresses: [{{type: IPAddress, value: {address}}}]\n  listeners: [{{name: http, protocol: HTTP, port: {}}}]\n", gw.http)
    };
    api.apply(&asks("198.51.100.7")).unwrap();
    wait_for(10, "AddressNotUsable", || {
        api.get("gateways.gateway.networking.k8s.io", &ns, "asks")
            .is_some_and(|g| {
                condition(&g["status"]["conditions"], "Programmed")
                    .is_some_and(|c| c["status"] == "False" && c["reason"] == "AddressNotUsable")
            })
    });
    api.apply(&asks("127.0.0.1")).unwrap();
    wait_for(10, "the served address assigned", || {
        api.get("gateways.gateway.networking.k8s.io", &ns, "asks")
            .is_some_and(|g| {
                g["status"]["addresses"]
                    == serde_json::json!([{"type": "IPAddress", "value": "127.0.0.1"}])
                    && condition(&g["status"]["conditions"], "Programmed")
                        .is_some_and(|c| c["status"] == "True")
            })
    });
    // One of a pool open to Gateways is the Gateway's own.
    api.apply(&asks("192.0.2.77")).unwrap();
    wait_for(10, "the pool address assigned", || {
        api.get("gateways.gateway.networking.k8s.io", &ns, "asks")
            .is_some_and(|g| {
                g["status"]["addresses"]
                    == serde_json::json!([{"type": "IPAddress", "value": "192.0.2.77"}])
                    && condition(&g["status"]["conditions"], "Programmed")
                        .is_some_and(|c| c["status"] == "True")
            })
    });
    wait_for(10, "BackendNotFound on the broken route", || {
        api.get("httproutes.gateway.networking.k8s.io", &ns, "broken")
            .is_some_and(|r| {
                condition(&r["status"]["parents"][0]["conditions"], "ResolvedRefs")
                    .is_some_and(|c| c["status"] == "False" && c["reason"] == "BackendNotFound")
            })
    });
    // A TLSRoute on an HTTP-only Gateway: watched, and refused in its
    // status as the conformance suite expects.
    wait_for(10, "NotAllowedByListeners on the TLSRoute", || {
        api.get("tlsroutes.gateway.networking.k8s.io", &ns, "tls")
            .is_some_and(|r| {
                condition(&r["status"]["parents"][0]["conditions"], "Accepted").is_some_and(|c| {
                    c["status"] == "False" && c["reason"] == "NotAllowedByListeners"
                })
            })
    });
    wait_for(10, "an Event on the broken route", || {
        api.list("events.events.k8s.io", &ns).iter().any(|e| {
            e["regarding"]["kind"] == "HTTPRoute"
                && e["regarding"]["name"] == "broken"
                && e["note"].as_str().is_some_and(|n| n.contains("nowhere"))
        })
    });

    // The route moves to another path: served at once.
    api.apply(&gateway_api_objects(&ns, gw.http, "route.test").replace(
        "matches: [{path: {type: PathPrefix, value: /}}]",
        "matches: [{path: {type: PathPrefix, value: /only}}]",
    ))
    .unwrap();
    wait_for(10, "the new match", || {
        http_get(gw.http, "route.test", "/").is_ok_and(|r| r.status == 404)
            && http_get(gw.http, "route.test", "/only/x").is_ok_and(|r| r.status == 200)
    });
    api.delete("httproutes.gateway.networking.k8s.io", &ns, "web")
        .unwrap();
    wait_for(10, "the route gone", || {
        http_get(gw.http, "route.test", "/only/x").is_ok_and(|r| r.status == 404)
    });
}

/// Each Gateway API route kind serves traffic in Kubernetes mode, from
/// objects on the real API server to pods in a network namespace: HTTPS
/// (the listener's certificate from a Secret), gRPC (h2c to the pod), TLS
/// passthrough (the pod's own certificate, by SNI), TCP and UDP.
#[test]
fn every_gateway_route_kind_serves_in_kubernetes_mode() {
    let api = shared();
    api.install_gateway_api_crds();
    let ns = api.namespace("gwkinds");
    let net = Netns::new();
    let pod = net.addr(2);
    let _web = net.echo_http("web-pod", &pod, 8080);
    let _tls = net.echo_with("tls-pod", &[("--https", &pod, 8443)]);
    let _grpc = net.echo_with("grpc-pod", &[("--h2c", &pod, 8081)]);
    let _l4 = net.echo_tcp("l4-pod", &pod, 9000);
    let (crt, key) = self_signed(&["secure.kinds.test"]);
    let dir = TempDir::new("kapi");
    let kc = api.kubeconfig(dir.path(), "admin");
    let config = format!("{NO_NODE_PORTS}{}", session_affinity_config());
    let gw = Gateway::spawn_kube_real(&kc, &ns, "gw-kinds", &config, true);
    gw.wait_ready();
    let (pass, tcp, udp) = (free_port(), free_port(), free_port());
    let service = |name: &str, port: u16, protocol: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: p, port: {port}, protocol: {protocol}}}]\n---
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: p, port: {port}, protocol: {protocol}}}]\nendpoints:\n- addresses: [\"{pod}\"]\n---\n"
        )
    };
    let objects = service("web", 8080, "TCP")
        + &service("tls", 8443, "TCP")
        + &service("grpc", 8081, "TCP")
        + &service("l4", 9000, "TCP")
        + &service("l4u", 9000, "UDP")
        + &yaml::tls_secret(&ns, "cert", &crt, &key)
        + &portico_class(&ns)
        + &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {ns}}}
spec:
  gatewayClassName: portico-{ns}
  listeners:
  - {{name: http, protocol: HTTP, port: {http}}}
  - {{name: https, protocol: HTTPS, port: {https}, hostname: secure.kinds.test, tls: {{certificateRefs: [{{name: cert}}]}}}}
  - {{name: pass, protocol: TLS, port: {pass}, tls: {{mode: Passthrough}}}}
  - {{name: tcp, protocol: TCP, port: {tcp}}}
  - {{name: udp, protocol: UDP, port: {udp}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge, sectionName: https}}]
  rules: [{{sessionPersistence: {{sessionName: KINDS}}, backendRefs: [{{name: web, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  hostnames: [grpc.kinds.test]
  rules: [{{matches: [{{method: {{service: pkg.Users}}}}], backendRefs: [{{name: grpc, port: 8081}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: pass, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge, sectionName: pass}}]
  hostnames: [pass.kinds.test]
  rules: [{{backendRefs: [{{name: tls, port: 8443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: tcp, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: l4, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {{name: udp, namespace: {ns}}}
spec:
  parentRefs: [{{name: edge, sectionName: udp}}]
  rules: [{{backendRefs: [{{name: l4u, port: 9000}}]}}]
",
            http = gw.http,
            https = gw.https,
        );
    api.apply(&objects).unwrap();
    // HTTPS with the listener's certificate from the Secret.
    let ca = dir.write("ca.pem", &crt);
    wait_for(20, "the HTTPS route", || {
        https_name(&gw, "secure.kinds.test", &ca).is_ok_and(|n| n == "web-pod")
    });
    // Its sessionPersistence (experimental field, kept by the API server)
    // reaches the session-affinity plugin: a Secure cookie named as asked.
    let (head, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("secure.kinds.test:{}:127.0.0.1", gw.https),
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("https://secure.kinds.test:{}/", gw.https),
    ]);
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no session cookie: {head} {err}"));
    assert!(
        cookie.contains("KINDS=") && cookie.trim_end().ends_with("; Secure"),
        "{cookie}"
    );
    // gRPC over h2c to the pod.
    wait_for(10, "the GRPCRoute", || {
        let (out, _) = curl(&[
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-H",
            "content-type: application/grpc",
            "--data-binary",
            "abc",
            "-H",
            "Host: grpc.kinds.test",
            &format!("http://127.0.0.1:{}/pkg.Users/Get", gw.http),
        ]);
        out.starts_with("HTTP/2 200") && out.contains("\"name\":\"grpc-pod\"")
    });
    // TLS passthrough: the handshake is the pod's (its name in the body).
    wait_for(10, "the TLSRoute", || {
        let (out, _) = curl(&[
            "-k",
            "--resolve",
            &format!("pass.kinds.test:{pass}:127.0.0.1"),
            &format!("https://pass.kinds.test:{pass}/"),
        ]);
        out.contains("\"name\":\"tls-pod\"")
    });
    // TCP and UDP.
    let at = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    wait_for(10, "the TCPRoute", || {
        tcp_hello(at(tcp)).is_ok_and(|s| s == "l4-pod\nping")
    });
    wait_for(10, "the UDPRoute", || {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 64];
        u.send_to(b"hi", at(udp)).is_ok()
            && u.recv_from(&mut buf)
                .is_ok_and(|(n, _)| &buf[..n] == b"l4-pod:hi")
    });
    // Every route says Accepted in its status.
    for (resource, name) in [
        ("httproutes", "secure"),
        ("grpcroutes", "grpc"),
        ("tlsroutes", "pass"),
        ("tcproutes", "tcp"),
        ("udproutes", "udp"),
    ] {
        wait_for(10, &format!("{resource}/{name} Accepted"), || {
            api.get(&format!("{resource}.gateway.networking.k8s.io"), &ns, name)
                .is_some_and(|r| {
                    condition(&r["status"]["parents"][0]["conditions"], "Accepted")
                        .is_some_and(|c| c["status"] == "True")
                })
        });
    }
}
