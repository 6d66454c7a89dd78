//! L2 ownership by Leases, end to end: two edge nodes (two `portico run`
//! in two network namespaces on one bridge) read a **real** kube-apiserver
//! (reached through a loopback bridge into each namespace), both may
//! announce one LoadBalancer address, and the Leases make exactly one of
//! them answer ARP for it. A client in a third namespace connects to the
//! address. Killed with SIGKILL, the owner's address moves to the other
//! node; the time until a new TCP connection succeeds is measured (target:
//! at most 2 s). Stopped with SIGTERM, the owner hands the address over
//! with no failed new connection.
//!
//! Needs root, iproute2, iputils-arping, curl and Debian's etcd-server
//! (`scripts/deps.sh test`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use portico_integration_tests::kube_apiserver::{shared, KubeApiServer};
use portico_integration_tests::netns::{arp_owner, link_mac, ok, run, Killed, LoopbackBridge};
use portico_integration_tests::*;

/// A bridge (in a namespace of its own, which also holds the backend
/// "pod" at .50) joining edge nodes `a` (.1) and `b` (.2) and a client
/// (.3), on 10.215.K.0/24.
struct Lan {
    prefix: String,
    k: u8,
}

impl Lan {
    fn new() -> Lan {
        let pid = std::process::id();
        let k = (pid % 250) as u8 + 1;
        let lan = Lan {
            prefix: format!("pl2-{pid}"),
            k,
        };
        let sw = lan.ns("sw");
        for n in ["sw", "a", "b", "c"] {
            let ns = lan.ns(n);
            let _ = run(&["ip", "netns", "del", &ns]);
            ok(&["ip", "netns", "add", &ns]);
            ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        ok(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ok(&[
            "ip",
            "-n",
            &sw,
            "addr",
            "add",
            &format!("{}/24", lan.addr(50)),
            "dev",
            "br0",
        ]);
        ok(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for (n, host) in [("a", 1), ("b", 2), ("c", 3)] {
            let ns = lan.ns(n);
            let port = format!("p-{n}");
            ok(&[
                "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ]);
            ok(&["ip", "-n", &sw, "link", "set", &port, "master", "br0"]);
            ok(&["ip", "-n", &sw, "link", "set", &port, "up"]);
            ok(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lan.addr(host)),
                "dev",
                "eth0",
            ]);
            ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        lan
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn addr(&self, host: u8) -> String {
        format!("10.215.{}.{host}", self.k)
    }

    fn mac(&self, n: &str) -> String {
        link_mac(&self.ns(n), "eth0")
    }

    fn exec(&self, n: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns(n)]).args(args);
        c
    }

    fn arp_owner(&self, ip: &str) -> Option<String> {
        arp_owner(&self.ns("c"), "eth0", ip)
    }

    /// One new connection from the client: the backend's answer or "".
    fn get(&self, ip: &str, timeout: &str) -> String {
        let out = self
            .exec(
                "c",
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    timeout,
                    &format!("http://{ip}/"),
                ],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn admin(&self, n: &str, path: &str) -> String {
        let url = format!("http://127.0.0.1:9901{path}");
        let out = self
            .exec(n, &["curl", "-s", "--max-time", "2", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in ["a", "b", "c", "sw"] {
            let _ = run(&["ip", "netns", "del", &self.ns(n)]);
        }
    }
}

/// One edge node: `portico run` in namespace `n` with the Kubernetes
/// source (through a loopback bridge to the API server) and L2 mode for
/// the LoadBalancer Services' addresses (none listed in its config).
struct Edge {
    name: &'static str,
    dir: TempDir,
    process: Option<Killed>,
    _bridge: LoopbackBridge,
}

impl Edge {
    fn start(lan: &Lan, api: &KubeApiServer, ns: &str, n: &'static str) -> Edge {
        let port: u16 = api
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let bridge = LoopbackBridge::new(&lan.ns(n), port);
        let dir = TempDir::new(&format!("l2-{n}"));
        let kubeconfig = api.kubeconfig(dir.path(), "admin");
        let host = if n == "a" { 1 } else { 2 };
        dir.write(
            "portico.toml",
            &format!(
                "[shutdown]\ngrace_period_seconds = 3\n[l4]\nnode_ports = false\n\
                 [kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nidentity = \"edge-{n}\"\n\
                 namespace = \"{ns}\"\nlease_namespace = \"{ns}\"\n\
                 [announce]\nmode = \"l2\"\ngarp_interval_seconds = 1\n",
                kubeconfig.display()
            ),
        );
        let mut edge = Edge {
            name: n,
            dir,
            process: None,
            _bridge: bridge,
        };
        edge.spawn(lan, &lan.addr(host));
        edge
    }

    fn spawn(&mut self, lan: &Lan, node_address: &str) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("portico.log"))
            .unwrap();
        let child = lan
            .exec(self.name, &[portico_bin().to_str().unwrap(), "run"])
            .arg("--config")
            .arg(self.dir.path().join("portico.toml"))
            .args(["--http", "0.0.0.0:8080", "--https", "0.0.0.0:8443"])
            .args(["--admin", "127.0.0.1:9901", "--node-address", node_address])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.process = Some(Killed(child));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("portico.log")).unwrap_or_default()
    }

    fn signal(&mut self, sig: &str) {
        let pid = self.process.as_ref().unwrap().0.id().to_string();
        // `ip netns exec` runs portico as its own process (exec).
        ok(&["kill", sig, &pid]);
    }

    fn wait_exit(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.0.wait();
        }
    }
}

#[test]
fn one_owner_per_address_fails_over_within_2_s_and_hands_over_on_sigterm() {
    let api = shared();
    let ns = api.namespace("l2");
    let lan = Lan::new();
    let vip = lan.addr(100);
    let _pod = Killed(
        lan.exec(
            "sw",
            &[portico_bin().to_str().unwrap(), "echo", "--name", "pod"],
        )
        .args(["--http", &format!("{}:7001", lan.addr(50))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    api.apply(
        &(yaml::service(
            &ns,
            "lb",
            &format!("  type: LoadBalancer\n  loadBalancerIP: {vip}\n"),
            &[("http", 80)],
        ) + &yaml::slice_at(&ns, "lb-1", "lb", "http", 7001, &[lan.addr(50)])),
    )
    .unwrap();

    let mut a = Edge::start(&lan, api, &ns, "a");
    let mut b = Edge::start(&lan, api, &ns, "b");
    for e in [&a, &b] {
        wait_for(30, "both edge nodes ready", || {
            lan.admin(e.name, "/readyz").contains("ready")
        });
    }
    let macs = [("a", lan.mac("a")), ("b", lan.mac("b"))];
    let owner_of = |mac: &str| macs.iter().find(|(_, m)| m == mac).map(|(n, _)| *n);
    let mut owner = None;
    wait_for(15, "one edge node to answer ARP for the address", || {
        owner = lan.arp_owner(&vip).and_then(|m| owner_of(&m));
        owner.is_some()
    });
    let owner = owner.unwrap();
    assert!(
        lan.get(&vip, "3").contains("\"name\":\"pod\""),
        "{}\n{}",
        a.log(),
        b.log()
    );
    // The Lease says the same, and so does each node's /config.
    let lease_name = format!("portico-l2-{vip}");
    let lease = api
        .get("leases.coordination.k8s.io", &ns, &lease_name)
        .expect("the address's Lease");
    assert_eq!(lease["spec"]["holderIdentity"], format!("edge-{owner}"));
    let standby = if owner == "a" { "b" } else { "a" };
    assert!(lan.admin(owner, "/config").contains("\"owned\": true"));
    assert!(lan.admin(standby, "/config").contains("\"owned\": false"));
    // Each node's /config names the holder, the standby's included.
    for n in [owner, standby] {
        wait_for(5, "the holder in /config", || {
            lan.admin(n, "/config")
                .contains(&format!("\"holder\": \"edge-{owner}\""))
        });
    }
    // Exactly one answers: ARP a few more times.
    for _ in 0..3 {
        assert_eq!(lan.arp_owner(&vip).and_then(|m| owner_of(&m)), Some(owner));
    }

    // A Service with no address of its own gets the status writer's node
    // address; the other edge node, which knows it from the Node objects,
    // must neither announce it nor listen on it (it is another node's).
    let pid = std::process::id();
    let nodes: String = [("a", 1), ("b", 2)]
        .iter()
        .map(|(n, host)| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: pl2-edge-{n}-{pid}}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{}\"}}]}}\n---\n",
                lan.addr(*host)
            )
        })
        .collect();
    api.apply(&nodes).unwrap();
    api.apply(&yaml::service(
        &ns,
        "plain",
        "  type: LoadBalancer\n",
        &[("http", 81)],
    ))
    .unwrap();
    let mut fallback = String::new();
    wait_for(15, "a node address in the plain Service's status", || {
        fallback = api
            .get("services", &ns, "plain")
            .and_then(|s| {
                s["status"]["loadBalancer"]["ingress"][0]["ip"]
                    .as_str()
                    .map(String::from)
            })
            .unwrap_or_default();
        fallback == lan.addr(1) || fallback == lan.addr(2)
    });
    for (n, host) in [("a", 1), ("b", 2)] {
        let own = lan.addr(host);
        wait_for(10, "each node's listeners and announced addresses", || {
            let config: serde_json::Value =
                serde_json::from_str(&lan.admin(n, "/config")).unwrap_or_default();
            let listens = |addr: &str| {
                config["l4_listeners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l["listener"] == format!("tcp:{addr}:81"))
            };
            // The node has translated the status: the owner of the
            // address listens on it; the other listens on its own address
            // instead (never on another node's). Neither announces it.
            let translated = if own == fallback {
                listens(&fallback)
            } else {
                listens(&own) && !listens(&fallback)
            };
            let announced = &config["announced_addresses"];
            translated && announced.get(&vip).is_some() && announced.get(&fallback).is_none()
        });
    }
    assert_eq!(
        lan.arp_owner(&fallback).and_then(|m| owner_of(&m)),
        Some(if fallback == lan.addr(1) { "a" } else { "b" }),
        "only the node itself answers for its address"
    );

    // SIGKILL the owner: time until a new connection succeeds.
    let (killed, survivor) = if owner == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    killed.signal("-KILL");
    let start = Instant::now();
    let mut failover = None;
    while start.elapsed() < Duration::from_secs(10) {
        if lan.get(&vip, "0.3").contains("\"name\":\"pod\"") {
            failover = Some(start.elapsed());
            break;
        }
    }
    killed.wait_exit();
    let failover =
        failover.unwrap_or_else(|| panic!("no failover within 10 s\n{}", survivor.log()));
    eprintln!("L2 failover after SIGKILL: {} ms", failover.as_millis());
    assert!(
        failover <= Duration::from_secs(2),
        "failover took {failover:?}\n{}",
        survivor.log()
    );
    assert_eq!(
        lan.arp_owner(&vip).and_then(|m| owner_of(&m)),
        Some(survivor.name)
    );
    wait_for(10, "the AddressMoved Event on the Service", || {
        api.list("events.events.k8s.io", &ns)
            .iter()
            .any(|e| e["reason"] == "AddressMoved" && e["regarding"]["name"] == "lb")
    });
    assert!(survivor.log().contains("L2 ownership: took the address"));

    // The killed node comes back as a standby: the address stays.
    let host = if killed.name == "a" {
        lan.addr(1)
    } else {
        lan.addr(2)
    };
    killed.spawn(&lan, &host);
    wait_for(30, "the restarted node ready", || {
        lan.admin(killed.name, "/readyz").contains("ready")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lan.arp_owner(&vip).and_then(|m| owner_of(&m)),
        Some(survivor.name)
    );

    // SIGTERM the owner while the client opens a new connection every
    // 50 ms: none fails, and the address ends on the other node.
    let script = format!(
        "for i in $(seq 100); do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 1 http://{vip}/; sleep 0.05; done"
    );
    let client = lan
        .exec("c", &["bash", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    survivor.signal("-TERM");
    let out = client.wait_with_output().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let failed = codes.lines().filter(|c| *c != "200").count();
    survivor.wait_exit();
    assert_eq!(
        failed,
        0,
        "{failed} of {} new connections failed during the hand-over: {codes}\n{}",
        codes.lines().count(),
        survivor.log()
    );
    assert_eq!(
        lan.arp_owner(&vip).and_then(|m| owner_of(&m)),
        Some(killed.name)
    );
    let log = survivor.log();
    assert!(log.contains("handed over"), "{log}");
}
