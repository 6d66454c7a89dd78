//! Bare-metal addresses, L2 mode, end to end: an edge node (a network
//! namespace running `portico run`) owns a LoadBalancer address that is on
//! none of its interfaces; a client in a second namespace on the same
//! segment finds it by ARP (`arping`, from iputils) and connects to it, over
//! L4 (a listener bound to the address with IP_FREEBIND) and L7 (a wildcard
//! listener). Gratuitous ARP is seen with `tcpdump`. On SIGTERM the node
//! stops answering; killed, it stops answering too (strict ARP: the kernel
//! never answers for the address, only Portico does). The same for an IPv6
//! address by NDP: the client's neighbour table (filled by connecting) shows
//! the owner's MAC, and unsolicited neighbor advertisements are seen with
//! `tcpdump`.
//!
//! Needs root, iproute2, iputils-arping and tcpdump (`scripts/deps.sh test`).

use std::process::{Command, Stdio};
use std::time::Duration;

use portico_integration_tests::netns::{arp_owner, link_mac, ok, run, Killed};
use portico_integration_tests::*;

/// Two namespaces joined by a veth pair on 10.214.K.0/24 and
/// fd00:214:K::/64: the edge node (.1, ::1) and a client (.2, ::2).
/// Removed on drop.
struct Segment {
    edge: String,
    client: String,
    k: u8,
}

impl Segment {
    fn new() -> Segment {
        // Tests of one process run in parallel: each gets its own pair.
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let k = ((pid % 60) as u8) * 4 + n % 4 + 1;
        let (edge, client) = (
            format!("pbm-edge-{pid}-{n}"),
            format!("pbm-client-{pid}-{n}"),
        );
        for ns in [&edge, &client] {
            let _ = run(&["ip", "netns", "del", ns]);
            ok(&["ip", "netns", "add", ns]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        ok(&[
            "ip", "-n", &edge, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", &client,
        ]);
        for (ns, host) in [(&edge, 1), (&client, 2)] {
            add_address(ns, &format!("10.214.{k}.{host}/24"));
            // No duplicate address detection: usable at once.
            ok(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("fd00:214:{k}::{host}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        Segment { edge, client, k }
    }

    fn addr(&self, host: u8) -> String {
        format!("10.214.{}.{host}", self.k)
    }

    fn addr6(&self, host: u8) -> String {
        format!("fd00:214:{}::{host}", self.k)
    }

    /// The MAC the client's kernel learns by NDP for `ip` when it connects
    /// to it (its neighbour cache flushed first; refused or not, the
    /// connection needs the neighbour), or None when nobody answers.
    fn ndp_owner(&self, ip: &str) -> Option<String> {
        let _ = run(&["ip", "-n", &self.client, "neigh", "flush", "dev", "eth0"]);
        let connect = format!("exec 3<>/dev/tcp/{ip}/9");
        let _ = self
            .in_ns(&self.client, &["timeout", "2", "bash", "-c", &connect])
            .output()
            .unwrap();
        let out = run(&["ip", "-n", &self.client, "-6", "neigh", "show", ip]);
        // "fd00:214:K::100 dev eth0 lladdr aa:bb:.. REACHABLE"
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("lladdr ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(|s| s.to_ascii_uppercase())
    }

    /// What the edge node's admin listener answers at `path`.
    fn admin(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:9901{path}");
        let out = run(&["ip", "netns", "exec", &self.edge, "curl", "-s", &url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn in_ns(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    fn edge_mac(&self) -> String {
        link_mac(&self.edge, "eth0")
    }

    /// The MAC that answers ARP for `ip`, asked from the client.
    fn arp_owner(&self, ip: &str) -> Option<String> {
        arp_owner(&self.client, "eth0", ip)
    }

    /// The body the client gets for `http://ip:8080/x` with `Host: host`
    /// (the edge node's wildcard HTTP listener).
    fn http_get(&self, ip: &str, host: &str) -> String {
        let out = self
            .in_ns(
                &self.client,
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "5",
                    "-H",
                    &format!("Host: {host}"),
                    &format!("http://{ip}:8080/x"),
                ],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the client reads from `ip:port` (TCP), or the error.
    fn tcp_read(&self, ip: &str, port: u16) -> String {
        // The echo backend greets with its name and a newline.
        let script =
            format!("exec 3<>/dev/tcp/{ip}/{port} && IFS= read -r -t 2 line <&3; echo \"$line\"");
        let out = self
            .in_ns(&self.client, &["timeout", "5", "bash", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

/// Adds an IPv4 network address to `eth0` in namespace `ns`.
fn add_address(ns: &str, cidr: &str) {
    ok(&["ip", "-n", ns, "addr", "add", cidr, "dev", "eth0"]);
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.edge]);
        let _ = run(&["ip", "netns", "del", &self.client]);
    }
}

/// `tcpdump` on the client's side of the segment.
struct Capture(Killed);

impl Capture {
    fn start(seg: &Segment, filter: &str) -> Capture {
        let child = seg
            .in_ns(&seg.client, &["tcpdump", "-l", "-n", "-i", "eth0", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Capture(Killed(child))
    }

    /// Stops it; the packets it printed, a line each.
    fn stop(mut self) -> String {
        use std::io::Read;
        let _ = self.0 .0.kill();
        let mut captured = String::new();
        if let Some(mut out) = self.0 .0.stdout.take() {
            out.read_to_string(&mut captured).unwrap();
        }
        captured
    }
}

/// An echo backend (`portico echo`, named `edge-echo`) in the edge
/// namespace.
fn edge_echo(seg: &Segment, args: &[&str]) -> Killed {
    Killed(
        seg.in_ns(
            &seg.edge,
            &[
                portico_bin().to_str().unwrap(),
                "echo",
                "--name",
                "edge-echo",
            ],
        )
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    )
}

/// Starts `portico run` in the edge namespace with `config` (TOML) and
/// one manifest file, its log in `dir`.
fn spawn_edge(seg: &Segment, dir: &TempDir, config: &str, manifest: &str) -> Killed {
    let manifests = dir.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("lb.yaml"), manifest).unwrap();
    let config = dir.write("portico.toml", config);
    let log = std::fs::File::create(dir.path().join("portico.log")).unwrap();
    let child = seg
        .in_ns(&seg.edge, &[portico_bin().to_str().unwrap(), "run"])
        .arg("--config")
        .arg(&config)
        .arg("--manifests")
        .arg(&manifests)
        .args(["--http", "0.0.0.0:8080", "--https", "0.0.0.0:8443"])
        .args(["--admin", "127.0.0.1:9901", "--node-address", &seg.addr(1)])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Killed(child)
}

/// Starts `portico run` in the edge namespace owning `vip`, with an L4
/// LoadBalancer Service on vip:9000 and an Ingress on the wildcard
/// listener, both to echo backends in the same namespace.
fn start_edge(seg: &Segment, dir: &TempDir, vip: &str) -> (Killed, Vec<Killed>) {
    let (tcp_port, http_port) = (19_700, 19_701);
    let backends = vec![
        edge_echo(seg, &["--tcp", &format!("127.0.0.1:{tcp_port}")]),
        edge_echo(seg, &["--http", &format!("127.0.0.1:{http_port}")]),
    ];
    let mut m = yaml::service(
        "default",
        "lb",
        &format!("  type: LoadBalancer\n  loadBalancerIP: {vip}\n"),
        &[("tcp", 9000)],
    );
    m += &yaml::slice("default", "lb-1", "lb", "tcp", tcp_port, true);
    m += &yaml::service("default", "web", "", &[("http", 80)]);
    m += &yaml::slice("default", "web-1", "web", "http", http_port, true);
    m += &yaml::ingress(
        "default",
        "web",
        &[("vip.test", "/", "Prefix", "web", "http")],
        "",
    );
    let config = format!(
        "[shutdown]\ngrace_period_seconds = 2\n[l4]\nnode_ports = false\n\
         [announce]\nmode = \"l2\"\naddresses = [\"{vip}\"]\ngarp_interval_seconds = 1\n"
    );
    (spawn_edge(seg, dir, &config, &m), backends)
}

fn log_of(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("portico.log")).unwrap_or_default()
}

#[test]
fn l2_mode_makes_an_address_on_no_interface_reachable_and_gives_it_up() {
    let seg = Segment::new();
    let vip = seg.addr(100);
    let dir = TempDir::new("bare-metal");
    // Gratuitous ARP is watched from the client before the node starts.
    let tcpdump = Capture::start(&seg, "arp");
    std::thread::sleep(Duration::from_millis(500));
    // Before: nobody answers for the address.
    assert_eq!(seg.arp_owner(&vip), None);

    let (mut edge, _backends) = start_edge(&seg, &dir, &vip);
    let mac = seg.edge_mac();
    wait_for(20, "the edge node to answer ARP", || {
        seg.arp_owner(&vip).as_deref() == Some(mac.as_str())
    });
    // L4: the listener bound to the address itself (IP_FREEBIND).
    wait_for(10, "an L4 connection to the address", || {
        seg.tcp_read(&vip, 9000).contains("edge-echo")
    });
    // L7: the wildcard listener receives it through the local route.
    let body = seg.http_get(&vip, "vip.test");
    assert!(
        body.contains("\"name\":\"edge-echo\""),
        "{body} {}",
        log_of(&dir)
    );

    // Gratuitous ARP: at take-over and every second (garp_interval_seconds).
    std::thread::sleep(Duration::from_millis(1500));
    let captured = tcpdump.stop();
    let announcements = captured
        .lines()
        .filter(|l| {
            l.contains(&format!("Announcement, {vip}"))
                || l.contains(&format!("who-has {vip} tell {vip}"))
        })
        .count();
    assert!(announcements >= 2, "gratuitous ARP for {vip}:\n{captured}");

    // /config says how the address is announced.
    let config = seg.admin("/config");
    assert!(
        config.contains("\"mode\": \"l2\"")
            && config.contains(&format!(
                "\"how\": \"ARP on eth0 (MAC {})\"",
                mac.to_ascii_lowercase()
            ))
            && config.contains("\"ready\": true"),
        "{config}"
    );

    // The kernel itself never answers for it (strict ARP on the interface).
    let sysctl = run(&[
        "ip",
        "netns",
        "exec",
        &seg.edge,
        "cat",
        "/proc/sys/net/ipv4/conf/eth0/arp_ignore",
    ]);
    assert_eq!(String::from_utf8_lossy(&sysctl.stdout).trim(), "1");

    // SIGTERM: the address is given up at once, while in-flight work drains.
    let local_route = || {
        let out = run(&[
            "ip", "-n", &seg.edge, "route", "show", "table", "local", &vip,
        ]);
        String::from_utf8_lossy(&out.stdout).contains(&vip)
    };
    assert!(local_route(), "no local route for {vip}");
    ok(&["kill", "-TERM", &edge.0.id().to_string()]);
    wait_for(5, "the address to be given up", || {
        seg.arp_owner(&vip).is_none()
    });
    wait_for(5, "the local route to go", || !local_route());
    let status = edge.0.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", log_of(&dir));
    let log = log_of(&dir);
    assert!(log.contains("announcing addresses by ARP"), "{log}");
    assert!(log.contains("gave up the announced addresses"), "{log}");
}

#[test]
fn a_killed_node_stops_answering_arp() {
    let seg = Segment::new();
    let vip = seg.addr(101);
    let dir = TempDir::new("bare-metal-kill");
    let (mut edge, _backends) = start_edge(&seg, &dir, &vip);
    let mac = seg.edge_mac();
    wait_for(20, "the edge node to answer ARP", || {
        seg.arp_owner(&vip).as_deref() == Some(mac.as_str())
    });
    let _ = edge.0.kill();
    let _ = edge.0.wait();
    // The local route outlives the process, but the kernel does not answer
    // ARP for it: clients stop finding a node that is gone.
    assert_eq!(seg.arp_owner(&vip), None, "{}", log_of(&dir));
}

/// A LoadBalancer Service's address is announced without being listed in
/// the config; one on no interface's network is tried again until an
/// interface can take it (here: the network is added to the interface
/// after the node started).
#[test]
fn a_service_address_is_announced_once_an_interface_can_take_it() {
    let seg = Segment::new();
    let vip = seg.addr(102);
    let dir = TempDir::new("bare-metal-late");
    let (_edge, _backends) = start_edge(&seg, &dir, &vip);
    let mac = seg.edge_mac();
    wait_for(20, "the listed address answered", || {
        seg.arp_owner(&vip).as_deref() == Some(mac.as_str())
    });
    let late = format!("10.99.{}.200", seg.k);
    std::fs::write(
        dir.path().join("m/late.yaml"),
        yaml::service(
            "default",
            "late",
            &format!("  type: LoadBalancer\n  loadBalancerIP: {late}\n"),
            &[("tcp", 9100)],
        ),
    )
    .unwrap();
    wait_for(10, "the unplaceable address logged", || {
        log_of(&dir).contains(&format!("{late} is not announced"))
    });
    assert_eq!(seg.arp_owner(&late), None);
    for (ns, host) in [(&seg.edge, 1), (&seg.client, 2)] {
        add_address(ns, &format!("10.99.{}.{host}/24", seg.k));
    }
    wait_for(15, "the address answered once its network is there", || {
        seg.arp_owner(&late).as_deref() == Some(mac.as_str())
    });
    assert!(log_of(&dir).contains("an interface can take the address now"));
}

#[test]
fn l2_mode_answers_ndp_for_an_ipv6_address_and_gives_it_up() {
    let seg = Segment::new();
    let vip = seg.addr6(100);
    let dir = TempDir::new("bare-metal-v6");
    // Neighbor advertisements (ICMPv6 type 136), watched before the start.
    let tcpdump = Capture::start(&seg, "icmp6 and ip6[40] == 136");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        seg.ndp_owner(&vip),
        None,
        "answered before the node started"
    );

    let (mut edge, _backends) = start_edge(&seg, &dir, &vip);
    let mac = seg.edge_mac();
    wait_for(20, "the edge node to answer NDP", || {
        seg.ndp_owner(&vip).as_deref() == Some(mac.as_str())
    });
    // L4 over IPv6: the listener bound to the address (IPV6_FREEBIND).
    wait_for(10, "an L4 connection to the IPv6 address", || {
        seg.tcp_read(&vip, 9000).contains("edge-echo")
    });

    // Asked again with an empty cache: the answer to its solicitation
    // (the first answer may have come from an unsolicited advert).
    assert_eq!(seg.ndp_owner(&vip).as_deref(), Some(mac.as_str()));
    // Unsolicited advertisements: at take-over and every second.
    std::thread::sleep(Duration::from_millis(1500));
    let captured = tcpdump.stop();
    // "IP6 fd00:214:K::100 > ff02::1: ICMP6, neighbor advertisement, tgt is fd00:214:K::100, ..."
    let unsolicited = captured
        .lines()
        .filter(|l| l.contains(&format!("{vip} > ff02::1")) && l.contains(&format!("tgt is {vip}")))
        .count();
    assert!(
        unsolicited >= 2,
        "unsolicited adverts for {vip}:\n{captured}"
    );
    let client = seg.addr6(2);
    let solicited = captured
        .lines()
        .filter(|l| {
            l.contains(&format!("{vip} > {client}:")) && l.contains(&format!("tgt is {vip}"))
        })
        .count();
    assert!(
        solicited >= 1,
        "answers to the client's solicitations:\n{captured}"
    );
    let metrics = seg.admin("/metrics");
    assert!(
        metrics.contains("portico_ndp_sent_total{kind=\"reply\"}")
            && metrics.contains("portico_ndp_sent_total{kind=\"unsolicited\"}"),
        "{metrics}"
    );

    // SIGTERM: nobody answers for it any more.
    ok(&["kill", "-TERM", &edge.0.id().to_string()]);
    wait_for(5, "the IPv6 address to be given up", || {
        seg.ndp_owner(&vip).is_none()
    });
    let status = edge.0.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", log_of(&dir));
}

#[test]
fn bad_announce_config_is_refused_with_the_key() {
    let dir = TempDir::new("bare-metal-bad");
    let config = dir.write(
        "portico.toml",
        "[announce]\nmode = \"l2\"\naddresses = [\"fe80::1\"]\n\
         [[announce.pools]]\nname = \"p\"\naddresses = [\"192.0.2.0/33\"]\nmode = \"bgp\"\n",
    );
    let out = portico(&["check", "--config", config.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("announce.addresses: fe80::1 cannot be announced"),
        "{text}"
    );
    // Every problem at once, each naming its key.
    assert!(
        text.contains("announce.pools[p].addresses: \"192.0.2.0/33\""),
        "{text}"
    );
    assert!(text.contains("announce.bgp.local_asn"), "{text}");
    // An interface this machine lacks: a warning (check may run elsewhere).
    let config = dir.write(
        "iface.toml",
        "[announce]\nmode = \"l2\"\ninterfaces = [\"nosuch0\"]\n",
    );
    let empty = dir.path().join("m");
    std::fs::create_dir_all(&empty).unwrap();
    let out = portico(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "--manifests",
        empty.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("announce.interfaces: warning: no interface named \"nosuch0\""),
        "{text}"
    );
}

/// A Gateway that asks for an address of an announce pool open to
/// Gateways gets it: announced by ARP (with `service_addresses = false`,
/// which concerns Services only), its HTTP routes reachable there on the
/// wildcard listener and its TCP listener bound there, and the address in
/// its status. One outside the pool is not assigned and not announced.
#[test]
fn a_gateway_address_from_an_open_pool_is_announced_and_served() {
    let seg = Segment::new();
    let (vip, outside) = (seg.addr(110), seg.addr(120));
    let dir = TempDir::new("bare-metal-gateway");
    let (tcp_port, http_port) = (19_710, 19_711);
    let _backends = [
        edge_echo(&seg, &["--tcp", &format!("127.0.0.1:{tcp_port}")]),
        edge_echo(&seg, &["--http", &format!("127.0.0.1:{http_port}")]),
    ];
    let mut m = yaml::service("default", "db", "", &[("tcp", 5432)]);
    m += &yaml::slice("default", "db-1", "db", "tcp", tcp_port, true);
    m += &yaml::service("default", "web", "", &[("http", 80)]);
    m += &yaml::slice("default", "web-1", "web", "http", http_port, true);
    m += &format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico}}
spec: {{controllerName: portico.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: portico
  addresses: [{{value: {vip}}}]
  listeners:
  - {{name: http, protocol: HTTP, port: 8080}}
  - {{name: db, protocol: TCP, port: 9100}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: stray, namespace: default}}
spec:
  gatewayClassName: portico
  addresses: [{{value: {outside}}}]
  listeners:
  - {{name: http, protocol: HTTP, port: 8080}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [gw.test]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: db, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: db}}]
  rules: [{{backendRefs: [{{name: db, port: 5432}}]}}]
"
    );
    let config = format!(
        "[shutdown]\ngrace_period_seconds = 2\n[l4]\nnode_ports = false\n\
         [announce]\nmode = \"l2\"\nservice_addresses = false\ngarp_interval_seconds = 1\n\
         [[announce.pools]]\nname = \"gateways\"\naddresses = [\"{vip}/32\"]\nmode = \"l2\"\ngateways = true\n"
    );
    let mut edge = spawn_edge(&seg, &dir, &config, &m);
    let mac = seg.edge_mac();
    wait_for(
        20,
        "the edge node to answer ARP for the Gateway's address",
        || seg.arp_owner(&vip).as_deref() == Some(mac.as_str()),
    );
    // HTTP on the wildcard listener, through the Gateway's address.
    let body = seg.http_get(&vip, "gw.test");
    assert!(
        body.contains("\"name\":\"edge-echo\""),
        "{body} {}",
        log_of(&dir)
    );
    // The TCPRoute's listener is bound on the Gateway's address.
    wait_for(10, "a TCP connection to the Gateway's address", || {
        seg.tcp_read(&vip, 9100).contains("edge-echo")
    });
    // The status says which address is the Gateway's; the other Gateway's
    // address is refused, and nobody answers for it.
    let config = seg.admin("/config");
    let parsed: serde_json::Value = serde_json::from_str(&config).unwrap();
    let gateways = &parsed["gateway_api"]["gateways"];
    assert_eq!(
        gateways["default/edge"]["assigned_addresses"],
        serde_json::json!([vip]),
        "{gateways}"
    );
    assert_eq!(
        gateways["default/stray"]["unassigned_addresses"],
        serde_json::json!([outside]),
        "{gateways}"
    );
    assert!(
        config.contains("nor in an announce pool open to Gateways (gateways)"),
        "{config}"
    );
    assert_eq!(seg.arp_owner(&outside), None);
    // SIGTERM gives the address up as for a Service's.
    ok(&["kill", "-TERM", &edge.0.id().to_string()]);
    wait_for(5, "the address to be given up", || {
        seg.arp_owner(&vip).is_none()
    });
    let _ = edge.0.wait();
}
