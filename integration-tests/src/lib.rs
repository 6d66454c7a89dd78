//! End-to-end test harness: runs the real `portico` binary with real
//! backends (`portico echo`) and real clients, all on 127.0.0.1.
//!
//! Every test owns its ports and its temporary folder, so tests run in
//! parallel. Processes are killed when their handle drops.

pub mod apiserver;
pub mod dns;
pub mod kube_apiserver;
pub mod netns;
pub mod raw_backend;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `portico` binary: `$PORTICO_BIN`, else `target/debug/portico`,
/// built once per test run with `cargo build --workspace --bins` (the
/// same feature set as `cargo test --workspace`, so no rebuild) so that
/// `cargo test --workspace` alone is enough. The shipped plugins are built
/// first too: the embedded default config (`conf/portico.toml`) loads them.
pub fn portico_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        built_plugins();
        if let Ok(p) = std::env::var("PORTICO_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Cargo passes CARGO_* variables to test processes; ring's build
        // script watches CARGO_MANIFEST_DIR, so they must not leak into the
        // nested build or it rebuilds ring and everything above it.
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") && k != "CARGO_TARGET_DIR" && k != "CARGO_HOME" {
                cmd.env_remove(k);
            }
        }
        let status = cmd
            .args(["build", "-q", "--workspace", "--bins"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build -p portico");
        assert!(status.success(), "cargo build -p portico failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        target.join("debug").join("portico")
    })
    .clone()
}

/// A TCP server on 127.0.0.1 that runs `serve` on each connection in a
/// thread of its own, for backends a test scripts byte by byte. Returns
/// its port.
pub fn serve_each(serve: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

/// A port that was free a moment ago (TCP and UDP both), never handed out
/// twice in this test process (tests run in parallel threads).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// A port where nothing listens and nothing will: connections are refused.
pub const REFUSING_PORT: u16 = 1;

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("portico-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        // Write then rename: the watcher never sees half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn wait_port(port: u16, timeout: Duration) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr(port), Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

/// A `portico echo` backend.
pub struct Echo {
    pub name: String,
    pub http: u16,
    child: Child,
}

impl Echo {
    pub fn http(name: &str) -> Echo {
        Self::start(name, &["--http"])
    }

    fn start(name: &str, kinds: &[&str]) -> Echo {
        let port = free_port();
        let mut cmd = Command::new(portico_bin());
        cmd.args(["echo", "--name", name]);
        for k in kinds {
            cmd.arg(k).arg(format!("127.0.0.1:{port}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn echo");
        wait_port(port, Duration::from_secs(10));
        Echo {
            name: name.into(),
            http: port,
            child,
        }
    }

    /// HTTP/1.1 over TLS (self-signed) on `http`'s port.
    pub fn https(name: &str) -> Echo {
        Self::start(name, &["--https"])
    }

    /// HTTP/2 in clear with prior knowledge (h2c) on `http`'s port.
    pub fn h2c(name: &str) -> Echo {
        Self::start(name, &["--h2c"])
    }

    /// TCP echo (`<name>\n`, then echo) and UDP echo on one port number.
    pub fn tcp(name: &str) -> Echo {
        Self::start(name, &["--tcp", "--udp"])
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running gateway with its own ports and folder.
pub struct Gateway {
    pub http: u16,
    pub https: u16,
    pub admin: u16,
    pub dir: TempDir,
    pub manifests: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

pub const BASE_CONFIG: &str = "[shutdown]\ngrace_period_seconds = 5\n";

impl Gateway {
    /// Starts `portico run` on the manifests in `files` (name, YAML) with
    /// extra config TOML appended to a small base.
    pub fn start(files: &[(&str, &str)], extra_config: &str) -> Gateway {
        let g = Self::spawn(files, extra_config);
        g.wait_ready();
        g
    }

    pub fn spawn(files: &[(&str, &str)], extra_config: &str) -> Gateway {
        Self::spawn_in(TempDir::new("gw"), files, extra_config, true)
    }

    /// Starts `portico run` fed by the API-server double (kept for fault
    /// injection; see [`apiserver`]) with the bearer token `token`, so the
    /// double's request log tells processes apart.
    pub fn spawn_kube(api: &apiserver::ApiServer, token: &str, extra_config: &str) -> Gateway {
        Self::spawn_kube_with(api, token, extra_config, true)
    }

    /// [`Gateway::spawn_kube`]; `node_address` false leaves the edge node's
    /// addresses to the Node object named by `kubernetes.node_name`.
    pub fn spawn_kube_with(
        api: &apiserver::ApiServer,
        token: &str,
        extra_config: &str,
        node_address: bool,
    ) -> Gateway {
        let dir = TempDir::new("gwk");
        let kubeconfig = api.kubeconfig(dir.path(), token);
        let config = format!(
            "[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nidentity = \"{token}\"\n{extra_config}",
            kubeconfig.display()
        );
        Self::spawn_in(dir, &[], &config, node_address)
    }

    /// Starts `portico run` against a real kube-apiserver with `kubeconfig`
    /// (see [`kube_apiserver`]), watching only `namespace` and keeping its
    /// Lease there, so tests sharing the server do not meet. `node_address`
    /// false leaves the edge node's addresses to its Node object.
    pub fn spawn_kube_real(
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        extra_config: &str,
        node_address: bool,
    ) -> Gateway {
        let dir = TempDir::new("gwr");
        let config = format!(
            "[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nidentity = \"{identity}\"\n\
             namespace = \"{namespace}\"\nlease_namespace = \"{namespace}\"\n{extra_config}",
            kubeconfig.display()
        );
        Self::spawn_in(dir, &[], &config, node_address)
    }

    fn spawn_in(
        dir: TempDir,
        files: &[(&str, &str)],
        extra_config: &str,
        node_address: bool,
    ) -> Gateway {
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        for (name, text) in files {
            std::fs::write(manifests.join(name), text).unwrap();
        }
        let config = dir.write("portico.toml", &format!("{BASE_CONFIG}{extra_config}"));
        let (http, https, admin) = (free_port(), free_port(), free_port());
        let log = dir.path().join("portico.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(portico_bin());
        cmd.arg("run");
        if node_address {
            cmd.args(["--node-address", "127.0.0.1"]);
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--manifests")
            .arg(&manifests)
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--https", &format!("127.0.0.1:{https}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn portico");
        Gateway {
            http,
            https,
            admin,
            dir,
            manifests,
            child: Some(child),
            log,
        }
    }

    pub fn wait_ready(&self) {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(r) = http_get(self.admin, "admin", "/readyz") {
                if r.status == 200 {
                    wait_port(self.http, Duration::from_secs(5));
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway not ready; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Rewrites a manifest file and waits until the snapshot generation moves.
    pub fn write_manifest(&self, name: &str, text: &str) {
        let before = self.generation();
        let tmp = self.dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests.join(name)).unwrap();
        self.wait_generation_after(before);
    }

    /// Deletes a manifest file and waits until the snapshot generation moves.
    pub fn remove_manifest(&self, name: &str) {
        let before = self.generation();
        std::fs::remove_file(self.manifests.join(name)).unwrap();
        self.wait_generation_after(before);
    }

    fn wait_generation_after(&self, before: u64) {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.generation() > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("manifest change not applied; log:\n{}", self.log());
    }

    pub fn generation(&self) -> u64 {
        self.config_json()["generation"].as_u64().unwrap_or(0)
    }

    pub fn config_json(&self) -> serde_json::Value {
        let r = http_get(self.admin, "admin", "/config").expect("admin /config");
        serde_json::from_slice(&r.body).expect("config is JSON")
    }

    pub fn metrics(&self) -> String {
        String::from_utf8(http_get(self.admin, "admin", "/metrics").unwrap().body).unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failed test shows what the gateway said.
        if std::thread::panicking() {
            eprintln!(
                "--- portico log ---\n{}--- end of portico log ---",
                self.log()
            );
        }
    }
}

/// A bump allocator in WebAssembly text, exported as `name`, for
/// hand-written test plugins (memory from offset 1024 up, never freed).
pub fn wat_bump_allocator(name: &str) -> String {
    format!(
        r#"(global $next (mut i32) (i32.const 1024))
        (func (export "{name}") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $next))
            (global.set $next (i32.add (global.get $next) (local.get $n)))
            (local.get $p))"#
    )
}

/// Builds the plugin workspace, the AssemblyScript filter and the SDK
/// template (`plugins/build.sh`, with whichever wasm32 toolchain is there)
/// once per test process; the folder with the `.wasm` files.
pub fn built_plugins() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(workspace_root().join("plugins/build.sh"))
            .output()
            .expect("run plugins/build.sh");
        assert!(
            out.status.success(),
            "plugins/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        workspace_root().join("plugins/target/wasm")
    })
    .clone()
}

/// Config that loads the shipped `session-affinity` plugin for every L7
/// request and L4 connection (it acts only where a Service or Ingress
/// asks for affinity).
pub fn session_affinity_config() -> String {
    let wasm = built_plugins().join("session_affinity.wasm");
    // Scoped as in conf/portico.toml: the plugin runs only on routes and
    // Services that ask for affinity.
    format!(
        "[plugins]\nhttp = [\"affinity\"]\ntcp = [\"affinity-tcp\"]\n\
         [[plugins.load]]\nname = \"affinity\"\npath = \"{0}\"\n\
         applies_to = {{ ingress_annotations = [\"nginx.ingress.kubernetes.io/affinity\", \"portico.io/session-header\"], service_session_affinity = [\"ClientIP\"] }}\n\
         [[plugins.load]]\nname = \"affinity-tcp\"\npath = \"{0}\"\nconfig = \"tcp\"\n\
         applies_to = {{ service_session_affinity = [\"ClientIP\"] }}\n",
        wasm.display()
    )
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// Whether `host` through the gateway gets a 200 from the echo backend
/// named `backend`.
pub fn routes_to(gw: &Gateway, host: &str, backend: &str) -> bool {
    http_get(gw.http, host, "/")
        .map(|r| r.status == 200 && r.json()["name"] == backend)
        .unwrap_or(false)
}

/// The compatibility filter on the AssemblyScript SDK, built by
/// `plugins/build.sh` too.
pub fn built_assemblyscript_plugin() -> PathBuf {
    built_plugins().join("compat_as.wasm")
}

/// The SDK's template plugin, built by `plugins/build.sh` too.
pub fn built_template() -> PathBuf {
    built_plugins().join("template.wasm")
}

/// `portico check --config CONFIG --manifests DIR`.
pub fn portico_check(config: &Path, manifests: &Path) -> Output {
    portico(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "--manifests",
        manifests.to_str().unwrap(),
    ])
}

/// Runs `portico` with arguments to completion.
pub fn portico(args: &[&str]) -> Output {
    Command::new(portico_bin())
        .args(args)
        .output()
        .expect("run portico")
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one HTTP/1.1 response (Content-Length or until close).
pub fn read_response(s: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            s.read_exact(&mut body)?;
        }
        None if status == 101 || status == 204 || status == 304 => {}
        None => {
            s.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One request on a new connection.
pub fn http_request(port: u16, raw: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr(port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw.as_bytes())?;
    read_response(&mut s)
}

pub fn http_get(port: u16, host: &str, path: &str) -> std::io::Result<Response> {
    http_request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

/// `curl` with the given arguments: (stdout, stderr).
pub fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A self-signed certificate and key (PEM) for the names.
pub fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Manifest builders (YAML text).
pub mod yaml {
    /// A Service with named ports `(name, port)`.
    pub fn service(ns: &str, name: &str, extra_spec: &str, ports: &[(&str, u16)]) -> String {
        let ports: String = ports
            .iter()
            .map(|(n, p)| format!("  - {{name: {n}, port: {p}}}\n"))
            .collect();
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{extra_spec}  ports:\n{ports}---\n")
    }

    /// An EndpointSlice for `service` with endpoints on 127.0.0.1 at the
    /// given ports (each its own endpoint via a distinct slice port is not
    /// possible, so one slice per backend port).
    pub fn slice(
        ns: &str,
        name: &str,
        service: &str,
        port_name: &str,
        port: u16,
        ready: bool,
    ) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: {port_name}, port: {port}}}]\nendpoints:\n- addresses: [127.0.0.1]\n  conditions: {{ready: {ready}}}\n---\n"
        )
    }

    /// An EndpointSlice for `service` with ready endpoints at `addresses`
    /// (non-loopback: the API refuses 127.0.0.0/8), all on `port`.
    pub fn slice_at(
        ns: &str,
        name: &str,
        service: &str,
        port_name: &str,
        port: u16,
        addresses: &[String],
    ) -> String {
        let eps: String = addresses
            .iter()
            .map(|a| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n"))
            .collect();
        let eps = if eps.is_empty() {
            "[]\n".to_string()
        } else {
            format!("\n{eps}")
        };
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: {port_name}, port: {port}}}]\nendpoints: {eps}---\n"
        )
    }

    /// An Ingress with rules `(host, path, pathType, service, port name)`.
    pub fn ingress(
        ns: &str,
        name: &str,
        rules: &[(&str, &str, &str, &str, &str)],
        tls: &str,
    ) -> String {
        let mut out = format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{tls}  rules:\n");
        for (host, path, kind, svc, port) in rules {
            out.push_str(&format!(
                "  - host: \"{host}\"\n    http:\n      paths:\n      - path: {path}\n        pathType: {kind}\n        backend:\n          service: {{name: {svc}, port: {{name: {port}}}}}\n"
            ));
        }
        out.push_str("---\n");
        out
    }

    /// A kubernetes.io/tls Secret from PEM text.
    pub fn tls_secret(ns: &str, name: &str, crt: &str, key: &str) -> String {
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
            indent(crt),
            indent(key)
        )
    }
}
