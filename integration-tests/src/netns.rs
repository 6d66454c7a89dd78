//! A network namespace joined to the host by a veth pair: where backends
//! live when they must look like pods.
//!
//! The Kubernetes API (and the double in [`crate::apiserver`]) refuses
//! EndpointSlice addresses in 127.0.0.0/8, so end-to-end tests against the
//! API put their backends on `10.213.K.H` inside a namespace this test
//! creates. Traffic stays on this machine: the host side of the pair is
//! `10.213.K.1`, the namespace side holds `.2` and any added hosts.
//! Needs root (CI runs as root). The namespace and both veth ends go away
//! on drop.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::portico_bin;

pub struct Netns {
    pub name: String,
    inner: String,
    subnet: u8,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn subnet_in_use(k: u8) -> bool {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.contains(&format!(" 10.213.{k}."))
}

impl Netns {
    /// Creates a namespace with its own /24; panics with the reason when it
    /// cannot (not root, no iproute2).
    pub fn new() -> Netns {
        // Serialised: two tests must not pick the same subnet.
        static LOCK: Mutex<u8> = Mutex::new(0);
        let mut next = LOCK.lock().unwrap();
        let pid = std::process::id();
        if *next == 0 {
            *next = (pid % 200) as u8 + 1;
        }
        for _ in 0..250 {
            let k = *next;
            *next = if *next >= 250 { 1 } else { *next + 1 };
            if subnet_in_use(k) {
                continue;
            }
            let name = format!("portico-it-{pid}-{k}");
            let host = format!("pvh{}k{k}", pid % 100_000);
            let inner = format!("pvn{}k{k}", pid % 100_000);
            let _ = ip(&["netns", "del", &name]);
            let setup = || -> Result<(), String> {
                ip(&["netns", "add", &name])?;
                ip(&[
                    "link", "add", &host, "type", "veth", "peer", "name", &inner, "netns", &name,
                ])?;
                ip(&["addr", "add", &format!("10.213.{k}.1/24"), "dev", &host])?;
                ip(&["link", "set", &host, "up"])?;
                ip(&["-n", &name, "link", "set", "lo", "up"])?;
                ip(&[
                    "-n",
                    &name,
                    "addr",
                    "add",
                    &format!("10.213.{k}.2/24"),
                    "dev",
                    &inner,
                ])?;
                ip(&["-n", &name, "link", "set", &inner, "up"])
            };
            if let Err(e) = setup() {
                let _ = ip(&["netns", "del", &name]);
                let _ = ip(&["link", "del", &host]);
                panic!("cannot create the test network namespace: {e}");
            }
            return Netns {
                name,
                inner,
                subnet: k,
            };
        }
        panic!("no free 10.213.K.0/24 subnet for a test network namespace");
    }

    /// `10.213.K.host`; host 2 exists from the start.
    pub fn addr(&self, host: u8) -> String {
        format!("10.213.{}.{host}", self.subnet)
    }

    /// Adds `10.213.K.host` inside the namespace (one more "pod" address).
    pub fn add_host(&self, host: u8) -> String {
        let a = self.addr(host);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &self.inner,
        ])
        .unwrap();
        a
    }

    /// `portico echo --http` on `addr:port` inside the namespace.
    pub fn echo_http(&self, name: &str, addr: &str, port: u16) -> NsEcho {
        self.echo(name, &[("--http", addr, port)])
    }

    /// `portico echo --tcp --udp` on `addr:port` inside the namespace.
    pub fn echo_tcp(&self, name: &str, addr: &str, port: u16) -> NsEcho {
        self.echo(name, &[("--tcp", addr, port), ("--udp", addr, port)])
    }

    /// `portico echo` with these (flag, address, port) listeners, e.g.
    /// `("--https", addr, 8443)` or `("--h2c", addr, 8081)`.
    pub fn echo_with(&self, name: &str, listen: &[(&str, &str, u16)]) -> NsEcho {
        self.echo(name, listen)
    }

    fn echo(&self, name: &str, listen: &[(&str, &str, u16)]) -> NsEcho {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(portico_bin())
            .args(["echo", "--name", name]);
        for (flag, a, p) in listen {
            cmd.arg(flag).arg(format!("{a}:{p}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn echo in the namespace");
        let (_, a, p) = listen[0];
        let target: SocketAddr = format!("{a}:{p}").parse().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < end,
                "echo {name} not listening on {target}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        NsEcho { child }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// An echo backend inside a namespace; killed on drop.
pub struct NsEcho {
    child: Child,
}

impl NsEcho {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsEcho {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command (`ip`, `birdc`, ...) to its end; what it printed.
pub fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed (set-up steps).
pub fn ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process (a daemon in a namespace) killed when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port of this namespace's loopback made reachable on the loopback
/// of another network namespace: a listener on `127.0.0.1:port` inside
/// `netns`, each connection relayed to `127.0.0.1:port` here. So processes
/// in test namespaces reach the API server (which listens on the host's
/// loopback) at the same URL, and no traffic leaves loopback.
///
/// The listener is opened from a thread that enters `netns` with setns(2)
/// and comes back: a socket stays in the namespace it was made in.
pub struct LoopbackBridge {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LoopbackBridge {
    pub fn new(netns: &str, port: u16) -> LoopbackBridge {
        use std::os::fd::AsRawFd;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let netns = netns.to_string();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let enter = |path: &str| -> std::io::Result<()> {
                let f = std::fs::File::open(path)?;
                // SAFETY: a valid namespace fd; setns changes only this thread.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            let own = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
            let listener = enter(&format!("/var/run/netns/{netns}"))
                .and_then(|()| std::net::TcpListener::bind(("127.0.0.1", port)));
            // SAFETY: as above, back to where this thread came from.
            let back = unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(back, 0, "cannot return to the test's network namespace");
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot listen in {netns}: {e}")));
                    return;
                }
            };
            listener.set_nonblocking(true).unwrap();
            let _ = tx.send(Ok(()));
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        inside.set_nonblocking(false).unwrap();
                        let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) else {
                            continue;
                        };
                        relay(inside, outside);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx.recv()
            .expect("bridge thread")
            .unwrap_or_else(|e| panic!("{e}"));
        LoopbackBridge { stop }
    }
}

/// Copies both ways until either side closes.
fn relay(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}

impl Drop for LoopbackBridge {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The MAC address of `dev` in namespace `ns`, in uppercase.
pub fn link_mac(ns: &str, dev: &str) -> String {
    let out = run(&["ip", "-n", ns, "-o", "link", "show", dev]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {text}"))
        .to_ascii_uppercase()
}

/// The MAC that answers ARP for `ip` asked from namespace `ns` on `dev`
/// (its neighbour cache flushed first, so the answer is fresh), or None
/// when nobody answers within a second. Uses iputils' `arping`.
pub fn arp_owner(ns: &str, dev: &str, ip: &str) -> Option<String> {
    let _ = run(&["ip", "-n", ns, "neigh", "flush", "dev", dev]);
    let out = run(&[
        "ip", "netns", "exec", ns, "arping", "-c", "1", "-w", "1", "-I", dev, ip,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "Unicast reply from 10.214.K.100 [AA:BB:..]  0.6ms"
    text.lines()
        .find(|l| l.contains("reply from"))
        .and_then(|l| l.split('[').nth(1))
        .and_then(|s| s.split(']').next())
        .map(|s| s.to_ascii_uppercase())
}
