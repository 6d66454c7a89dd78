//! Scale benchmark of the Kubernetes source (a benchmark, not a test).
//!
//! Loads a large generated cluster into the API-server **double** (the
//! figures are Portico's: the double loads the cluster in about a second and
//! adds no API-server latency of its own), starts `portico run` against
//! it, then changes one EndpointSlice at a time (one endpoint added) and
//! polls the admin `/explain` answer for a host routed to that Service until
//! the new endpoint shows up. Prints propagation p50/p99/max and the
//! gateway's RSS as JSON.
//!
//!     kube_scale --portico target/release/portico --cluster DIR [--changes 40] [--real]
//!
//! `--real` loads the cluster through a real kube-apiserver and etcd instead
//! (`portico_integration_tests::kube_apiserver`, with `kubectl create` of
//! 500-object lists, four at a time), so the figures include the API server's own watch delivery:
//! a change is timed from when the API server has stored it (`kubectl`
//! returned) until `/explain` shows it.
//!
//! `DIR` is what `integration-tests/bench/gen_cluster.py generate` writes
//! (the same generator feeds the manifests-source benchmark): Services
//! `svc-S` in `ns-(S % 100)` with one slice `svc-S-1`, and Ingresses
//! `ing-I` for `host-I.example.com` routed to `svc-(2I % services)`.
//! Endpoint addresses are in 10.0.0.0/8 and are never contacted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portico_integration_tests::apiserver::{parse_objects, ApiServer};
use portico_integration_tests::kube_apiserver::{self, KubeApiServer};
use portico_integration_tests::{free_port, http_get, TempDir};
use serde_json::{json, Value};

struct Args {
    portico: PathBuf,
    cluster: PathBuf,
    changes: usize,
    real: bool,
}

/// Where the cluster lives: the double, or a real API server.
enum Api {
    Double(ApiServer),
    Real(&'static KubeApiServer),
}

impl Api {
    /// Stores every object; the time it took.
    fn load(&self, objects: Vec<Value>) -> f64 {
        let t0 = Instant::now();
        match self {
            Api::Double(api) => {
                api.apply_objects(objects).unwrap_or_else(|e| {
                    die(&format!("the double refused an object: {}", e.message))
                });
            }
            Api::Real(api) => {
                let api: &'static KubeApiServer = api;
                let namespaces: std::collections::BTreeSet<String> = objects
                    .iter()
                    .filter_map(|o| o["metadata"]["namespace"].as_str().map(String::from))
                    .collect();
                let ns_yaml: String = namespaces
                    .iter()
                    .map(|n| {
                        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n---\n")
                    })
                    .collect();
                api.kubectl(&["create", "-f", "-"], Some(&ns_yaml))
                    .unwrap_or_else(|e| die(&format!("creating namespaces: {e}")));
                // Lists of 500 objects, four kubectl processes at a time.
                let lists: Vec<String> = objects
                    .chunks(500)
                    .map(|c| json!({"apiVersion": "v1", "kind": "List", "items": c}).to_string())
                    .collect();
                for four in lists.chunks(4) {
                    let handles: Vec<_> = four
                        .iter()
                        .cloned()
                        .map(|list| {
                            std::thread::spawn(move || {
                                api.kubectl(&["create", "-f", "-"], Some(&list))
                            })
                        })
                        .collect();
                    for h in handles {
                        if let Err(e) = h.join().unwrap() {
                            die(&format!("the API server refused: {e}"));
                        }
                    }
                }
            }
        }
        t0.elapsed().as_secs_f64()
    }

    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        match self {
            Api::Double(api) => api.kubeconfig(dir, "bench"),
            Api::Real(api) => api.kubeconfig(dir, "bench"),
        }
    }

    fn slice(&self, ns: &str, name: &str) -> Option<Value> {
        match self {
            Api::Double(api) => api.get("discovery.k8s.io/v1", "EndpointSlice", ns, name),
            Api::Real(api) => api.get("endpointslices.discovery.k8s.io", ns, name),
        }
    }

    /// Replaces a slice; returns once the API server has stored it.
    fn replace(&self, mut slice: Value) {
        match self {
            Api::Double(api) => {
                api.apply_objects(vec![slice]).unwrap();
            }
            Api::Real(api) => {
                if let Some(m) = slice["metadata"].as_object_mut() {
                    for k in [
                        "resourceVersion",
                        "managedFields",
                        "uid",
                        "creationTimestamp",
                        "generation",
                    ] {
                        m.remove(k);
                    }
                }
                api.kubectl(&["replace", "-f", "-"], Some(&slice.to_string()))
                    .unwrap_or_else(|e| die(&format!("replace: {e}")));
            }
        }
    }

    fn source(&self) -> &'static str {
        match self {
            Api::Double(_) => "kubernetes (API-server double)",
            Api::Real(_) => "kubernetes (real kube-apiserver + etcd)",
        }
    }
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut portico = None;
    let mut cluster = None;
    let mut changes = 40;
    let mut real = false;
    while let Some(k) = a.next() {
        if k == "--real" {
            real = true;
            continue;
        }
        let mut v = || {
            a.next()
                .unwrap_or_else(|| die(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--portico" => portico = Some(PathBuf::from(v())),
            "--cluster" => cluster = Some(PathBuf::from(v())),
            "--changes" => changes = v().parse().unwrap_or_else(|_| die("--changes: a number")),
            _ => die(&format!("unknown argument {k}")),
        }
    }
    Args {
        portico: portico.unwrap_or_else(|| die("--portico PATH is required")),
        cluster: cluster.unwrap_or_else(|| die("--cluster DIR is required")),
        changes,
        real,
    }
}

fn die(msg: &str) -> ! {
    eprintln!("kube_scale: {msg}");
    std::process::exit(2)
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| die(&format!("{}: {e}", dir.display())))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args = args();
    let api = if args.real {
        Api::Real(kube_apiserver::shared())
    } else {
        Api::Double(ApiServer::start())
    };
    let mut paths = Vec::new();
    files(&args.cluster, &mut paths);
    let mut objects = Vec::new();
    for p in &paths {
        objects.extend(parse_objects(&std::fs::read_to_string(p).unwrap()));
    }
    let services = objects.iter().filter(|o| o["kind"] == "Service").count();
    let endpoints: usize = objects
        .iter()
        .filter(|o| o["kind"] == "EndpointSlice")
        .map(|o| o["endpoints"].as_array().map_or(0, Vec::len))
        .sum();
    let ingresses = objects.iter().filter(|o| o["kind"] == "Ingress").count();
    if services == 0 || ingresses == 0 {
        die("the cluster folder has no Services or Ingresses (run gen_cluster.py generate)");
    }
    let load_s = api.load(objects);

    let dir = TempDir::new("kube-scale");
    let kubeconfig = api.kubeconfig(dir.path());
    let config = dir.write(
        "portico.toml",
        &format!(
            "[log]\nlevel = \"warn\"\n[shutdown]\ngrace_period_seconds = 1\n[l4]\nnode_ports = false\n\
             [kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nevents = false\n",
            kubeconfig.display()
        ),
    );
    let (admin, http, https) = (free_port(), free_port(), free_port());
    let t0 = Instant::now();
    let mut child = Command::new(&args.portico)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--https", &format!("127.0.0.1:{https}")])
        .args(["--node-address", "127.0.0.1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start {}: {e}", args.portico.display())));
    loop {
        if http_get(admin, "admin", "/readyz").is_ok_and(|r| r.status == 200) {
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            die("portico exited during start");
        }
        if t0.elapsed() > Duration::from_secs(300) {
            die("portico not ready after 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let start_s = t0.elapsed().as_secs_f64();
    let idle_rss = rss_kib(child.id());

    let mut lat = Vec::new();
    for c in 0..args.changes {
        let i = (c * 37) % ingresses;
        let s = (i * 2) % services;
        let ns = format!("ns-{}", s % 100);
        let name = format!("svc-{s}-1");
        let original = api
            .slice(&ns, &name)
            .unwrap_or_else(|| die(&format!("no EndpointSlice {ns}/{name}")));
        let added = format!("10.254.{}.{}", c / 250, c % 250 + 1);
        let mut changed = original.clone();
        changed["endpoints"]
            .as_array_mut()
            .unwrap()
            .push(json!({"addresses": [added], "conditions": {"ready": true}}));
        api.replace(changed);
        let t = Instant::now();
        let path = format!("/explain?host=host-{i}.example.com&path=/");
        loop {
            let v: Value = http_get(admin, "admin", &path)
                .ok()
                .and_then(|r| serde_json::from_slice(&r.body).ok())
                .unwrap_or(Value::Null);
            let seen = v["pool"]["endpoints"].as_array().is_some_and(|eps| {
                eps.iter().any(|e| {
                    e["address"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&format!("{added}:")))
                })
            });
            if seen {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                die(&format!("change {c} did not propagate in 60 s"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        // Back to the original so the next change is a change again.
        let mut back = original;
        back["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        api.replace(back);
        std::thread::sleep(Duration::from_millis(300));
    }
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |x: f64| lat[((lat.len() - 1) as f64 * x).round() as usize];
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({
            "source": api.source(),
            "services": services, "endpoints": endpoints, "ingresses": ingresses,
            "load_s": r1(load_s), "start_to_ready_s": r1(start_s),
            "changes": lat.len(),
            "propagation_ms_p50": r1(q(0.5)), "propagation_ms_p99": r1(q(0.99)),
            "propagation_ms_max": r1(lat[lat.len() - 1]),
            "rss_mib_idle": r1(idle_rss as f64 / 1024.0), "rss_mib_after_changes": r1(rss as f64 / 1024.0),
        })
    );
}
