//! Changes while serving and process lifecycle: endpoint removal under load,
//! manifest edits (good and bad), bad config and manifests, `check`,
//! `explain`, admin endpoints, SIGTERM drain.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_integration_tests::*;

fn web(slices: &[(&str, u16)]) -> String {
    let mut m = yaml::service("default", "web", "", &[("http", 80)]);
    for (name, port) in slices {
        m += &yaml::slice("default", name, "web", "http", *port, true);
    }
    m
}

fn slices(slices: &[(&str, u16)]) -> String {
    slices
        .iter()
        .map(|(name, port)| yaml::slice("default", name, "web", "http", *port, true))
        .collect()
}

/// A gateway serving Service `web` (one endpoint, `a`) on web.test `paths`.
fn web_gateway(a: &Echo, paths: &[&str], extra_config: &str) -> Gateway {
    Gateway::start(
        &[
            ("svc.yaml", &web(&[("web-a", a.http)])),
            ("ing.yaml", &web_ingress(paths)),
        ],
        extra_config,
    )
}

fn web_ingress(paths: &[&str]) -> String {
    let rules: Vec<(&str, &str, &str, &str, &str)> = paths
        .iter()
        .map(|p| ("web.test", *p, "Prefix", "web", "http"))
        .collect();
    yaml::ingress("default", "web", &rules, "")
}

#[test]
fn endpoint_removal_under_load_fails_no_request() {
    let a = Echo::http("a");
    let mut b = Echo::http("b");
    // The slices live in their own file, as a controller would write them:
    // changing it takes the incremental (endpoints-only) path.
    let gw = Gateway::start(
        &[
            ("svc.yaml", &web(&[])),
            (
                "slices.yaml",
                &slices(&[("web-a", a.http), ("web-b", b.http)]),
            ),
            ("ing.yaml", &web_ingress(&["/"])),
        ],
        "",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let removed_at = Arc::new(Mutex::new(None::<Instant>));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let late_b = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failures, removed_at, late_b) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                removed_at.clone(),
                late_b.clone(),
            );
            let port = gw.http;
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut conn: Option<TcpStream> = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let s = match conn.as_mut() {
                        Some(s) => s,
                        None => {
                            let s = TcpStream::connect(addr(port)).unwrap();
                            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            conn.insert(s)
                        }
                    };
                    let sent = Instant::now();
                    let res = s
                        .write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
                        .and_then(|_| read_response(s));
                    match res {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let name = r.json()["name"].as_str().unwrap().to_string();
                            // Sent well after the removal was applied, yet answered by b?
                            let after = removed_at
                                .lock()
                                .unwrap()
                                .is_some_and(|t| sent > t + Duration::from_millis(100));
                            if after && name == "b" {
                                late_b.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => failures.lock().unwrap().push(format!(
                            "status {}: {}",
                            r.status,
                            r.text()
                        )),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("io: {e}"));
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(800));
    let before = ok.load(Ordering::Relaxed);
    // Remove b from the EndpointSlices, then stop b itself.
    gw.write_manifest("slices.yaml", &slices(&[("web-a", a.http)]));
    *removed_at.lock().unwrap() = Some(Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    b.kill();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = ok.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        before > 50,
        "load was running before the change ({before} requests)"
    );
    assert!(
        total > before + 50,
        "load kept running after the change ({total} total)"
    );
    assert_eq!(
        late_b.load(Ordering::Relaxed),
        0,
        "removed endpoint got new requests"
    );
    // The slice-only edit took the endpoints-only path, and it took effect.
    let log = gw.log();
    assert!(
        log.contains("EndpointSlices changed; backends refreshed"),
        "incremental path not taken:\n{log}"
    );
    let cfg = gw.config_json();
    let endpoints = cfg["backends"][0]["endpoints"].as_array().unwrap().len();
    assert_eq!(endpoints, 1, "{cfg}");
}

#[test]
fn manifest_edits_apply_and_broken_files_keep_the_last_good_version() {
    let a = Echo::http("a");
    let gw = web_gateway(&a, &["/one"], "");
    assert_eq!(http_get(gw.http, "web.test", "/one").unwrap().status, 200);
    assert_eq!(http_get(gw.http, "web.test", "/two").unwrap().status, 404);

    gw.write_manifest("ing.yaml", &web_ingress(&["/one", "/two"]));
    assert_eq!(http_get(gw.http, "web.test", "/two").unwrap().status, 200);

    // A broken edit: the file keeps its last good version; others still apply.
    gw.write_manifest(
        "ing.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web\n",
    );
    assert_eq!(http_get(gw.http, "web.test", "/two").unwrap().status, 200);
    let log = gw.log();
    assert!(log.contains("ing.yaml"), "the error names the file: {log}");
    assert!(log.contains("previous version keeps serving"), "{log}");
    let problems = gw.config_json()["problems"].to_string();
    assert!(problems.contains("ing.yaml:"), "{problems}");

    // A new valid object in another file still applies.
    let extra = yaml::ingress(
        "default",
        "extra",
        &[("extra.test", "/", "Prefix", "web", "http")],
        "",
    );
    gw.write_manifest("extra.yaml", &extra);
    assert_eq!(http_get(gw.http, "extra.test", "/").unwrap().status, 200);

    // Deleting a file removes its objects.
    gw.remove_manifest("extra.yaml");
    assert_eq!(http_get(gw.http, "extra.test", "/").unwrap().status, 404);
}

#[test]
fn bad_config_and_manifests_are_refused_with_locations() {
    let dir = TempDir::new("bad");
    let cfg = dir.write("bad.toml", "[proxy]\nconect_timeout_ms = 5\n");
    let out = portico(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("conect_timeout_ms"),
        "{err}"
    );

    let good_cfg = dir.write("good.toml", BASE_CONFIG);
    let mdir = dir.path().join("m");
    std::fs::create_dir_all(&mdir).unwrap();
    std::fs::write(
        mdir.join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  ports: 7\n",
    )
    .unwrap();
    std::fs::write(
        mdir.join("dangling.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: d, namespace: x}\nspec:\n  defaultBackend: {service: {name: nope, port: {number: 80}}}\n",
    )
    .unwrap();

    // check: every problem, with file:line, exit 1.
    let out = portico(&[
        "check",
        "--config",
        good_cfg.to_str().unwrap(),
        "--manifests",
        mdir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.yaml:9: error: invalid Service"),
        "{text}"
    );
    assert!(
        text.contains("dangling.yaml:1: Ingress x/d: warning:")
            && text.contains("Service x/nope not found"),
        "{text}"
    );

    // run: refuses before serving, same messages.
    let admin = free_port();
    let out = portico(&[
        "run",
        "--config",
        good_cfg.to_str().unwrap(),
        "--manifests",
        mdir.to_str().unwrap(),
        "--admin",
        &format!("127.0.0.1:{admin}"),
        "--http",
        &format!("127.0.0.1:{}", free_port()),
        "--https",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:9: error: invalid Service"), "{err}");
    assert!(
        TcpStream::connect(addr(admin)).is_err(),
        "nothing may be serving"
    );

    // A valid folder checks clean.
    std::fs::remove_file(mdir.join("bad.yaml")).unwrap();
    std::fs::remove_file(mdir.join("dangling.yaml")).unwrap();
    let out = portico(&[
        "check",
        "--config",
        good_cfg.to_str().unwrap(),
        "--manifests",
        mdir.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn admin_endpoints_and_explain() {
    let a = Echo::http("a");
    let gw = web_gateway(&a, &["/api"], "[log]\naccess_log = true\n");
    assert_eq!(http_get(gw.admin, "admin", "/healthz").unwrap().status, 200);
    // The JSON access log: one line per request on stdout.
    let r = http_get(gw.http, "web.test", "/api/logged").unwrap();
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let line: serde_json::Value = gw
        .log()
        .lines()
        .find(|l| l.contains("/api/logged"))
        .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
        .expect("an access log line");
    assert_eq!(line["status"], 200);
    assert_eq!(line["backend"], "default/web:http");
    assert_eq!(line["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(http_get(gw.admin, "admin", "/readyz").unwrap().status, 200);
    let cfg = gw.config_json();
    assert_eq!(cfg["routes"][0]["backend"], "default/web:http");
    assert_eq!(
        cfg["backends"][0]["endpoints"][0]["address"],
        format!("127.0.0.1:{}", a.http)
    );
    let m = gw.metrics();
    let generation = m
        .lines()
        .find_map(|l| l.strip_prefix("portico_snapshot_generation "))
        .unwrap_or_else(|| panic!("{m}"));
    assert_eq!(generation.parse::<u64>().unwrap(), gw.generation());

    // The CLI asks the running gateway...
    let out = portico(&[
        "explain",
        "--admin",
        &format!("127.0.0.1:{}", gw.admin),
        "--host",
        "web.test",
        "--path",
        "/api/x",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("route:       Ingress default/web host web.test path /api"),
        "{text}"
    );
    assert!(
        text.contains(&format!("endpoint:    127.0.0.1:{} ready", a.http)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "listener:    http 127.0.0.1:{}, https 127.0.0.1:{}",
            gw.http, gw.https
        )),
        "{text}"
    );
    // ...or evaluates the same manifests offline.
    let out = portico(&[
        "explain",
        "--manifests",
        gw.manifests.to_str().unwrap(),
        "--host",
        "web.test",
        "--path",
        "/other",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["route"].is_null());
    assert!(v["why"].as_str().unwrap().contains("404"));
    // No gateway at that address: a clear error.
    let out = portico(&[
        "explain",
        "--admin",
        &format!("127.0.0.1:{}", free_port()),
        "--host",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the gateway's admin listener")
    );
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let a = Echo::http("a");
    let mut gw = web_gateway(&a, &["/"], "");
    let port = gw.http;
    let slow = std::thread::spawn(move || http_get(port, "web.test", "/delay/1500"));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    gw.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // No new connections once draining.
    assert!(
        TcpStream::connect(addr(port)).is_err(),
        "listener still accepting after SIGTERM"
    );
    let r = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!(r.status, 200, "{}", r.text());
    let code = gw.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "log:\n{}", gw.log());
    // Exits when drained, not after the whole 5 s grace period.
    assert!(
        signalled.elapsed() < Duration::from_millis(4000),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(gw.log().contains("drained; exiting"));
}

/// `portico run --manifests DIR` with the embedded default config serves
/// the user's manifests: the quickstart's demo echo servers (which only
/// the demo manifests point at) do not start and take no ports.
#[test]
fn the_default_config_with_other_manifests_starts_no_demo_servers() {
    let backend = Echo::http("mine");
    let dir = TempDir::new("default-cfg");
    dir.write(
        "app.yaml",
        &(web(&[("web-1", backend.http)])
            + &yaml::ingress(
                "default",
                "web",
                &[("mine.test", "/", "Prefix", "web", "http")],
                "",
            )),
    );
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let mut child = std::process::Command::new(portico_bin())
        .args(["run", "--manifests", dir.path().to_str().unwrap()])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--https", &format!("127.0.0.1:{https}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env("PORTICO_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        match http_get(admin, "admin", "/readyz") {
            Ok(r) if r.status == 200 => break true,
            _ if Instant::now() > end => break false,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let served = ready && http_get(http, "mine.test", "/").is_ok_and(|r| r.status == 200);
    let demo_ports: Vec<bool> = [18081, 18082]
        .iter()
        .map(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready,
        "portico did not become ready with the embedded config"
    );
    assert!(served, "the user's Ingress is served");
    assert_eq!(
        demo_ports,
        [false, false],
        "demo echo servers took their ports"
    );
}

/// How many TCP sockets in LISTEN state on 127.0.0.1:`port` process `pid`
/// holds.
fn listening_sockets(pid: u32, port: u16) -> usize {
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the gateway's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("its TCP table");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // local address, state 0A (LISTEN), inode
        .filter(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
        .filter(|f| held.contains(&format!("socket:[{}]", f[9])))
        .count()
}

#[test]
fn each_worker_thread_listens_on_sockets_of_its_own() {
    // The gateway runs one worker per CPU it may use, as this test does.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let a = Echo::http("a");
    let gw = web_gateway(&a, &["/"], "");
    assert_eq!(
        listening_sockets(gw.pid(), gw.http),
        workers,
        "one HTTP listening socket per worker"
    );
    assert_eq!(
        listening_sockets(gw.pid(), gw.https),
        workers,
        "one HTTPS listening socket per worker"
    );
    let l7_threads = std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "portico-l7")
        .count();
    assert_eq!(l7_threads, workers, "one L7 thread per worker");
    // Connections spread over the sockets by the kernel are all served,
    // keep-alive requests included.
    let mut conns: Vec<TcpStream> = (0..16)
        .map(|_| {
            let s = TcpStream::connect(addr(gw.http)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    for round in 0..3 {
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
                .unwrap();
            let r =
                read_response(c).unwrap_or_else(|e| panic!("connection {i}, round {round}: {e}"));
            assert_eq!(r.status, 200, "connection {i}, round {round}");
        }
    }
}
