//! Bare-metal addresses, BGP mode, end to end: a router (BIRD 2, in its
//! own network namespace) peers with two edge nodes (two `portico run` in
//! two more namespaces, each on its own link to the router). Both nodes
//! advertise the same LoadBalancer address; the router gets both paths and
//! installs them as one ECMP route, and connections to the address reach
//! the nodes. A session reset recovers; SIGTERM withdraws the node's path
//! before its listeners close.
//!
//! Needs root, iproute2 and bird2 (`scripts/deps.sh test`).

use portico_integration_tests::netns::{ok, run, Killed};
use portico_integration_tests::*;
use std::process::{Command, Stdio};

const VIP: &str = "192.0.2.10";

/// The router's namespace and one per edge node, each edge on its own
/// veth link to the router: 10.217.K.(E*4+1) at the edge, .(E*4+2) at the
/// router, /30. Removed on drop.
struct Topology {
    router: String,
    edges: Vec<String>,
    k: u8,
}

impl Topology {
    fn new(edges: usize) -> Topology {
        // Tests of one process run in parallel: each gets its own names
        // and subnet.
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let k = ((pid % 60) as u8) * 4 + n % 4 + 1;
        let router = format!("pbgp-r-{pid}-{n}");
        let edge_names: Vec<String> = (0..edges).map(|e| format!("pbgp-e{e}-{pid}-{n}")).collect();
        for ns in std::iter::once(&router).chain(&edge_names) {
            let _ = run(&["ip", "netns", "del", ns]);
            ok(&["ip", "netns", "add", ns]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Flows hashed by ports too (the default hashes addresses only, so
        // every connection from the router would take one path).
        ok(&[
            "ip",
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.fib_multipath_hash_policy=1",
        ]);
        let t = Topology {
            router,
            edges: edge_names,
            k,
        };
        for (e, ns) in t.edges.iter().enumerate() {
            let link = format!("to-e{e}");
            ok(&[
                "ip", "-n", &t.router, "link", "add", &link, "type", "veth", "peer", "name",
                "eth0", "netns", ns,
            ]);
            // Both families on the link (IPv6 without duplicate address
            // detection: usable at once).
            let add = |ns: &str, cidr: String, dev: &str| {
                ok(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev, "nodad"])
            };
            add(&t.router, format!("{}/30", t.router_addr(e)), &link);
            add(&t.router, format!("{}/126", t.router_addr6(e)), &link);
            add(ns, format!("{}/30", t.edge_addr(e)), "eth0");
            add(ns, format!("{}/126", t.edge_addr6(e)), "eth0");
            ok(&["ip", "-n", &t.router, "link", "set", &link, "up"]);
            ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        t
    }

    fn edge_addr6(&self, e: usize) -> String {
        format!("fd00:217:{}::{}", self.k, e * 4 + 1)
    }

    fn router_addr6(&self, e: usize) -> String {
        format!("fd00:217:{}::{}", self.k, e * 4 + 2)
    }

    fn edge_addr(&self, e: usize) -> String {
        format!("10.217.{}.{}", self.k, e * 4 + 1)
    }

    fn router_addr(&self, e: usize) -> String {
        format!("10.217.{}.{}", self.k, e * 4 + 2)
    }

    fn in_ns(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.router).chain(&self.edges) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// BIRD in the router's namespace, AS 64501, waiting for each edge (AS
/// 64512) to connect, exporting the merged (ECMP) route to the kernel.
struct Bird {
    _process: Killed,
    socket: std::path::PathBuf,
}

impl Bird {
    fn start(t: &Topology, dir: &TempDir) -> Bird {
        Bird::start_with_password(t, dir, None)
    }

    /// With `password`, every session must be signed with it (TCP-MD5).
    fn start_with_password(t: &Topology, dir: &TempDir, password: Option<&str>) -> Bird {
        let mut conf = String::from(
            "router id 10.217.0.254;\nprotocol device {}\n\
             protocol kernel { merge paths on; ipv4 { import none; export all; }; }\n\
             protocol kernel { merge paths on; ipv6 { import none; export all; }; }\n",
        );
        for e in 0..t.edges.len() {
            conf += &format!(
                "protocol bgp edge{e}v6 {{\n  local {} as 64501;\n  neighbor {} as 64512;\n  \
                 passive on;\n  hold time 9;\n  ipv6 {{ import all; export none; }};\n}}\n",
                t.router_addr6(e),
                t.edge_addr6(e),
            );
            conf += &format!(
                "protocol bgp edge{e} {{\n  local {} as 64501;\n  neighbor {} as 64512;\n  \
                 passive on;\n  hold time 9;\n{}  ipv4 {{ import all; export none; }};\n}}\n",
                t.router_addr(e),
                t.edge_addr(e),
                password.map_or(String::new(), |p| format!("  password \"{p}\";\n"))
            );
        }
        let conf_path = dir.write("bird.conf", &conf);
        let socket = dir.path().join("bird.ctl");
        let log = std::fs::File::create(dir.path().join("bird.log")).unwrap();
        let process = t
            .in_ns(&t.router, &["bird", "-f", "-c"])
            .arg(&conf_path)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.path().join("bird.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("bird (apt install bird2)");
        Bird {
            _process: Killed(process),
            socket,
        }
    }

    fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The protocols (edge0, edge1, ...) BIRD has the address from.
    fn paths(&self) -> Vec<String> {
        self.paths_for(VIP)
    }

    fn paths_for(&self, address: &str) -> Vec<String> {
        let text = self.birdc(&["show", "route", "for", address, "all"]);
        let mut from: Vec<String> = text
            .lines()
            .filter_map(|l| l.split('[').nth(1))
            .filter_map(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with("edge"))
            .map(str::to_string)
            .collect();
        from.sort();
        from
    }

    fn established(&self, protocol: &str) -> bool {
        self.birdc(&["show", "protocols", protocol])
            .contains("Established")
    }
}

/// `portico run` in edge `e`'s namespace advertising VIP to the router,
/// with an L4 LoadBalancer Service on VIP:9000 to an echo backend named
/// `edge<e>`.
fn start_edge(
    t: &Topology,
    dir: &TempDir,
    e: usize,
    kubeconfig: Option<&std::path::Path>,
) -> (Killed, Killed) {
    start_edge_with(t, dir, e, kubeconfig, "")
}

/// `start_edge`, with `peer` added to the router's `[[announce.bgp.peers]]`
/// table (TOML lines).
fn start_edge_with(
    t: &Topology,
    dir: &TempDir,
    e: usize,
    kubeconfig: Option<&std::path::Path>,
    peer: &str,
) -> (Killed, Killed) {
    start_edge_for(t, dir, e, kubeconfig, VIP, &t.router_addr(e), peer)
}

/// `start_edge_with` for the address `vip`, peering with `router`.
fn start_edge_for(
    t: &Topology,
    dir: &TempDir,
    e: usize,
    kubeconfig: Option<&std::path::Path>,
    vip: &str,
    router: &str,
    peer: &str,
) -> (Killed, Killed) {
    let ns = &t.edges[e];
    let backend_port = 19_720;
    let echo = Killed(
        t.in_ns(
            ns,
            &[
                portico_bin().to_str().unwrap(),
                "echo",
                "--name",
                &format!("edge{e}"),
                "--tcp",
                &format!("127.0.0.1:{backend_port}"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut m = yaml::service(
        "default",
        "lb",
        &format!("  type: LoadBalancer\n  loadBalancerIP: {vip}\n"),
        &[("tcp", 9000)],
    );
    m += &yaml::slice("default", "lb-1", "lb", "tcp", backend_port, true);
    let manifests = dir.path().join(format!("m{e}"));
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("lb.yaml"), m).unwrap();
    let config = dir.write(
        &format!("edge{e}.toml"),
        &format!(
            "[shutdown]\ngrace_period_seconds = 3\n[l4]\nnode_ports = false\n\
             [announce]\nmode = \"bgp\"\naddresses = [\"{vip}\"]\n\
             [announce.bgp]\nlocal_asn = 64512\nhold_time_seconds = 9\n\
             communities = [\"64512:100\"]\n\
             router_id = \"{}\"\n\
             [[announce.bgp.peers]]\naddress = \"{router}\"\nasn = 64501\n{peer}",
            t.edge_addr(e)
        ),
    );
    let log = std::fs::File::create(dir.path().join(format!("edge{e}.log"))).unwrap();
    let child = t
        .in_ns(ns, &[portico_bin().to_str().unwrap(), "run"])
        .arg("--config")
        .arg(&config)
        .args(match kubeconfig {
            Some(k) => ["--kubeconfig".as_ref(), k.as_os_str()],
            None => ["--manifests".as_ref(), manifests.as_os_str()],
        })
        .args(["--http", "127.0.0.1:8080", "--https", "127.0.0.1:8443"])
        .args([
            "--admin",
            "127.0.0.1:9901",
            "--node-address",
            &t.edge_addr(e),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (Killed(child), echo)
}

fn log_of(dir: &TempDir, e: usize) -> String {
    std::fs::read_to_string(dir.path().join(format!("edge{e}.log"))).unwrap_or_default()
}

/// What a client in the router's namespace reads from VIP:9000 (the echo
/// backend greets with its name), from source port `port`, so different
/// connections hash to different ECMP paths.
fn greeting(t: &Topology, port: u16) -> String {
    greeting_from(t, VIP, port)
}

fn greeting_from(t: &Topology, vip: &str, port: u16) -> String {
    let family = if vip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let any = if vip.contains(':') { "::" } else { "0.0.0.0" };
    let out = t
        .in_ns(
            &t.router,
            &[
                "python3",
                "-c",
                &format!(
                    "import socket\ns=socket.socket(socket.{family})\ns.settimeout(3)\n\
                     s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                     s.bind(('{any}', {port}))\ns.connect(('{vip}', 9000))\n\
                     print(s.recv(64).decode().strip())"
                ),
            ],
        )
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn both_nodes_advertise_the_router_balances_and_a_draining_node_withdraws_first() {
    let t = Topology::new(2);
    let dir = TempDir::new("bgp");
    let bird = Bird::start(&t, &dir);
    let (mut edge0, _echo0) = start_edge(&t, &dir, 0, None);
    let (_edge1, _echo1) = start_edge(&t, &dir, 1, None);

    // Both paths at the router, merged into one ECMP route in its kernel.
    wait_for(20, "the router to have the address from both nodes", || {
        bird.paths() == ["edge0", "edge1"]
    });
    let route = run(&["ip", "-n", &t.router, "route", "show", VIP]);
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    for e in 0..2 {
        assert!(
            route.contains(&format!("nexthop via {}", t.edge_addr(e))),
            "ECMP route: {route}"
        );
    }
    let attributes = bird.birdc(&["show", "route", "for", VIP, "all"]);
    assert!(attributes.contains("BGP.as_path: 64512"), "{attributes}");
    assert!(
        attributes.contains("BGP.community: (64512,100)"),
        "{attributes}"
    );

    // Connections reach both nodes (the kernel hashes each flow).
    let mut reached = std::collections::BTreeSet::new();
    for port in 40_000..40_040 {
        reached.insert(greeting(&t, port));
        if reached.len() == 2 {
            break;
        }
    }
    assert_eq!(
        reached.into_iter().collect::<Vec<_>>(),
        ["edge0", "edge1"],
        "{}",
        log_of(&dir, 0)
    );

    // What the node says it announces: /config and /explain.
    let admin = |path: &str| {
        let out = t
            .in_ns(
                &t.edges[0],
                &["curl", "-s", &format!("http://127.0.0.1:9901{path}")],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let config = admin("/config");
    assert!(
        config.contains(&format!(
            "\"how\": \"BGP to {} (AS 64501)\"",
            t.router_addr(0)
        )) && config.contains("\"established\": true")
            && config.contains("\"advertised\": 1"),
        "{config}"
    );
    let explained = admin("/explain?host=x&port=9000");
    assert!(
        explained.contains("\"announced\"") && explained.contains("BGP to"),
        "{explained}"
    );

    // A session reset: the node reconnects and advertises again.
    bird.birdc(&["restart", "edge0"]);
    wait_for(15, "edge0's session to come back", || {
        bird.established("edge0") && bird.paths() == ["edge0", "edge1"]
    });
    assert!(
        log_of(&dir, 0).contains("BGP session down"),
        "{}",
        log_of(&dir, 0)
    );

    // SIGTERM: edge0 withdraws, and only then stops accepting.
    ok(&["kill", "-TERM", &edge0.0.id().to_string()]);
    wait_for(5, "edge0's path to be withdrawn", || {
        bird.paths() == ["edge1"]
    });
    let status = edge0.0.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", log_of(&dir, 0));
    let log = log_of(&dir, 0);
    let withdrawn = log.find("BGP routes withdrawn").expect("withdrawal logged");
    let closing = log.find("no longer accepting").expect("drain logged");
    assert!(
        withdrawn < closing,
        "withdrawn after the listeners closed:\n{log}"
    );
    assert!(
        bird.birdc(&["show", "protocols", "edge0"])
            .contains("Administrative shutdown"),
        "{}",
        bird.birdc(&["show", "protocols", "all", "edge0"])
    );
    // The address still works, through edge1.
    assert_eq!(greeting(&t, 40_100), "edge1");
}

#[test]
fn a_node_that_is_not_ready_keeps_its_session_but_advertises_nothing() {
    let t = Topology::new(1);
    let dir = TempDir::new("bgp-unready");
    let bird = Bird::start(&t, &dir);
    // The Kubernetes source never syncs (nothing listens there): /readyz
    // stays 503.
    let kubeconfig = dir.write(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: http://127.0.0.1:1\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\n\
         current-context: gone\n",
    );
    let (_edge, _echo) = start_edge(&t, &dir, 0, Some(&kubeconfig));
    wait_for(20, "the session to be established", || {
        bird.established("edge0")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let readyz = t
        .in_ns(
            &t.edges[0],
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:9901/readyz",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&readyz.stdout),
        "503",
        "{}",
        log_of(&dir, 0)
    );
    assert!(
        bird.paths().is_empty(),
        "advertised while not ready: {:?}",
        bird.paths()
    );
    let log = log_of(&dir, 0);
    assert!(log.contains("not ready (/readyz fails)"), "{log}");
}

#[test]
fn a_password_signs_the_session() {
    let t = Topology::new(2);
    let dir = TempDir::new("bgp-md5");
    let bird = Bird::start_with_password(&t, &dir, Some("s3cret"));
    let (_edge0, _echo0) = start_edge_with(&t, &dir, 0, None, "password = \"s3cret\"\n");
    let (_edge1, _echo1) = start_edge_with(&t, &dir, 1, None, "password = \"wrong\"\n");
    wait_for(20, "the session with the right password", || {
        bird.established("edge0") && bird.paths() == ["edge0"]
    });
    // Segments signed with another key are dropped: never established.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        !bird.established("edge1"),
        "{}",
        bird.birdc(&["show", "protocols", "all", "edge1"])
    );
    assert_eq!(bird.paths(), ["edge0"]);
}

/// The LoadBalancer Services' own addresses are advertised as they come
/// and go, without being listed in `announce.addresses`; a Service with
/// `portico.io/announce: "false"` is served but not advertised, nor is an
/// address in a pool with mode "off"; a pool's communities replace the
/// section's.
#[test]
fn service_addresses_are_advertised_as_they_come_and_go() {
    let t = Topology::new(1);
    let dir = TempDir::new("bgp-dynamic");
    let bird = Bird::start(&t, &dir);
    let pools = "[[announce.pools]]\nname = \"gold\"\naddresses = [\"192.0.2.16/29\"]\nmode = \"bgp\"\n\
                 communities = [\"64512:300\"]\n\
                 [[announce.pools]]\nname = \"quiet\"\naddresses = [\"192.0.2.40\"]\nmode = \"off\"\n";
    let (_edge, _echo) = start_edge_with(&t, &dir, 0, None, pools);
    wait_for(20, "the configured address", || bird.paths() == ["edge0"]);
    let lb = |name: &str, ip: &str, annotations: &str| {
        yaml::service(
            "default",
            name,
            &format!("  type: LoadBalancer\n  loadBalancerIP: {ip}\n"),
            &[("tcp", 9000)],
        )
        .replace(
            "namespace: default}",
            &format!("namespace: default, annotations: {{{annotations}}}}}"),
        )
    };
    let more = dir.path().join("m0/more.yaml");
    std::fs::write(
        &more,
        lb("two", "192.0.2.20", "")
            + &lb("three", "192.0.2.30", "portico.io/announce: \"false\"")
            + &lb("four", "192.0.2.40", ""),
    )
    .unwrap();
    wait_for(15, "the new Service's address advertised", || {
        bird.paths_for("192.0.2.20") == ["edge0"]
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        bird.paths_for("192.0.2.30"),
        Vec::<String>::new(),
        "opted out"
    );
    assert!(
        bird.paths_for("192.0.2.40").is_empty(),
        "pool with mode off"
    );
    let gold = bird.birdc(&["show", "route", "for", "192.0.2.20", "all"]);
    assert!(
        gold.contains("(64512,300)") && !gold.contains("(64512,100)"),
        "{gold}"
    );
    let default = bird.birdc(&["show", "route", "for", VIP, "all"]);
    assert!(default.contains("(64512,100)"), "{default}");
    std::fs::remove_file(&more).unwrap();
    wait_for(15, "the address withdrawn with its Service", || {
        bird.paths_for("192.0.2.20").is_empty()
    });
    assert_eq!(bird.paths(), ["edge0"]);
    let log = log_of(&dir, 0);
    assert!(log.contains("BGP routes changed"), "{log}");
}

#[test]
fn ipv6_addresses_are_advertised_as_128s_over_an_ipv6_session() {
    let vip6 = "2001:db8:217::10";
    let t = Topology::new(1);
    let dir = TempDir::new("bgp-v6");
    let bird = Bird::start(&t, &dir);
    let (_edge, _echo) = start_edge_for(&t, &dir, 0, None, vip6, &t.router_addr6(0), "");
    wait_for(20, "the router to have the IPv6 address", || {
        bird.paths_for(vip6) == ["edge0v6"]
    });
    let route = bird.birdc(&["show", "route", "for", vip6, "all"]);
    assert!(route.contains(&format!("{vip6}/128")), "{route}");
    assert!(
        route.contains(&format!("BGP.next_hop: {}", t.edge_addr6(0))),
        "{route}"
    );
    // Installed in the router's kernel, and connections get through.
    wait_for(10, "an IPv6 connection through the route", || {
        greeting_from(&t, vip6, 40_200) == "edge0"
    });
}

#[test]
fn bad_bgp_config_is_refused_with_the_key() {
    let dir = TempDir::new("bgp-bad");
    let config = dir.write(
        "portico.toml",
        "[announce]\nmode = \"bgp\"\naddresses = [\"192.0.2.10\"]\n\
         [announce.bgp]\nlocal_asn = 0\ncommunities = [\"1:2:3\"]\n\
         [[announce.bgp.peers]]\naddress = \"10.0.0.1\"\nasn = 64501\npassword = \"\"\n",
    );
    let out = portico(&["check", "--config", config.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for problem in [
        "announce.bgp.local_asn: 0 is not a usable AS number",
        "announce.bgp.communities: \"1:2:3\" is not ASN:VALUE",
        "announce.bgp.peers[0] (10.0.0.1): password (TCP-MD5) must be 1 to 80 bytes",
    ] {
        assert!(text.contains(problem), "{problem}\n{text}");
    }
}
