//! A real kube-apiserver for tests, the envtest way: etcd and the API
//! server on loopback with certificates made here, one pair per test binary
//! run, a fresh namespace per test.
//!
//! Binaries: `KUBEBUILDER_ASSETS` (a folder with `kube-apiserver`, `kubectl`
//! and optionally `etcd`, the envtest convention), else the xz archives in
//! `../shared/k8s/` beside the repository, unpacked once into a cache folder
//! outside it (`$XDG_CACHE_HOME` or `~/.cache`, `portico-test-k8s/`) and
//! checked against their `SHA256SUMS`. etcd: Debian's `etcd-server`
//! (`/usr/bin/etcd`) unless the assets folder has one.
//!
//! Both processes outlive nothing: each runs under a small shell guard that
//! stops it when the test process is gone, since statics are never dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, workspace_root, TempDir};

/// The shared server of this test binary, started on first use.
pub fn shared() -> &'static KubeApiServer {
    static SERVER: OnceLock<KubeApiServer> = OnceLock::new();
    SERVER.get_or_init(KubeApiServer::start)
}

pub struct KubeApiServer {
    dir: TempDir,
    pub url: String,
    kubectl: PathBuf,
    admin_kubeconfig: PathBuf,
    ca_pem: String,
    admin_crt: String,
    admin_key: String,
}

/// Where the binaries are: (kube-apiserver, kubectl, etcd).
fn binaries() -> (PathBuf, PathBuf, PathBuf) {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) {
        let etcd = dir.join("etcd");
        let etcd = if etcd.exists() {
            etcd
        } else {
            PathBuf::from("/usr/bin/etcd")
        };
        return (dir.join("kube-apiserver"), dir.join("kubectl"), etcd);
    }
    let shared = workspace_root().join("../shared/k8s");
    let sums = std::fs::read_to_string(shared.join("SHA256SUMS")).unwrap_or_else(|e| {
        panic!(
            "no KUBEBUILDER_ASSETS and no {}: {e}",
            shared.join("SHA256SUMS").display()
        )
    });
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("portico-test-k8s");
    let mut out = Vec::new();
    for name in ["kube-apiserver", "kubectl"] {
        let sum = sums
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .nth(1)
                    .map(|f| f.trim_start_matches('*'))
                    == Some(name)
            })
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name} is not in {}/SHA256SUMS", shared.display()))
            .to_string();
        // One folder per content hash: a newer archive never meets an
        // older unpacked binary.
        let dir = cache.join(&sum[..16]);
        let bin = dir.join(name);
        if !bin.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let tmp = dir.join(format!("{name}.{}", std::process::id()));
            let xz = shared.join(format!("{name}.xz"));
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "xz -dc '{}' > '{}' && chmod +x '{}'",
                    xz.display(),
                    tmp.display(),
                    tmp.display()
                ))
                .status()
                .expect("run xz");
            assert!(status.success(), "unpacking {} failed", xz.display());
            let got = Command::new("sha256sum")
                .arg(&tmp)
                .output()
                .expect("sha256sum");
            let got = String::from_utf8_lossy(&got.stdout);
            assert!(
                got.starts_with(&sum),
                "{} does not match SHA256SUMS ({got})",
                xz.display()
            );
            std::fs::rename(&tmp, &bin).unwrap();
        }
        out.push(bin);
    }
    (
        out[0].clone(),
        out[1].clone(),
        PathBuf::from("/usr/bin/etcd"),
    )
}

/// Runs `cmd` under a shell guard that stops it once this test process
/// has exited (polled every half second): SIGTERM, then SIGKILL after 3 s,
/// since an API server whose etcd is already gone never finishes its
/// graceful shutdown.
fn spawn_guarded(cmd: &[String], log: &Path) -> std::process::Child {
    let quoted: Vec<String> = cmd.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "{} >'{}' 2>&1 & child=$!; while kill -0 {} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.5; done; \
         kill $child 2>/dev/null; for i in 1 2 3 4 5 6; do kill -0 $child 2>/dev/null || break; sleep 0.5; done; \
         kill -9 $child 2>/dev/null; wait $child",
        quoted.join(" "),
        log.display(),
        std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn guard shell")
}

struct Pki {
    ca_pem: String,
    server: (String, String),
    admin: (String, String),
    /// The service-account signing key and its public half.
    service_account: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "portico-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>, cn: &str, org: Option<&str>, usage| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        admin: leaf(
            vec![],
            "portico-test-admin",
            Some("system:masters"),
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        service_account: {
            let key = KeyPair::generate().unwrap();
            (key.serialize_pem(), key.public_key_pem())
        },
        ca_pem,
    }
}

impl KubeApiServer {
    fn start() -> KubeApiServer {
        let (apiserver, kubectl, etcd) = binaries();
        let dir = TempDir::new("kube-apiserver");
        let pki = pki();
        let ca = dir.write("ca.crt", &pki.ca_pem);
        let server_crt = dir.write("server.crt", &pki.server.0);
        let server_key = dir.write("server.key", &pki.server.1);
        let sa_key = dir.write("sa.key", &pki.service_account.0);
        let sa_pub = dir.write("sa.pub", &pki.service_account.1);
        // Every request at Metadata level, once (when answered): tests read
        // who did what, as the double's request log told them.
        let audit_policy = dir.write(
            "audit-policy.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        );
        let (client_port, peer_port, port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let s = |p: &Path| p.display().to_string();
        let mut etcd_guard = spawn_guarded(
            &[
                s(&etcd),
                "--name=portico-test".into(),
                format!("--data-dir={}", s(&dir.path().join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=portico-test={peer_url}"),
            ],
            &dir.path().join("etcd.log"),
        );
        let mut guard = spawn_guarded(
            &[
                s(&apiserver),
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--advertise-address=127.0.0.1".into(),
                // It cannot publish 127.0.0.1 as the `kubernetes` Service.
                "--endpoint-reconciler-type=none".into(),
                format!("--tls-cert-file={}", s(&server_crt)),
                format!("--tls-private-key-file={}", s(&server_key)),
                format!("--client-ca-file={}", s(&ca)),
                "--authorization-mode=RBAC".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", s(&sa_pub)),
                format!("--service-account-signing-key-file={}", s(&sa_key)),
                format!("--cert-dir={}", s(&dir.path().join("certs"))),
                format!("--audit-policy-file={}", s(&audit_policy)),
                format!("--audit-log-path={}", s(&dir.path().join("audit.log"))),
            ],
            &dir.path().join("kube-apiserver.log"),
        );
        let url = format!("https://127.0.0.1:{port}");
        let mut server = KubeApiServer {
            admin_kubeconfig: PathBuf::new(),
            dir,
            url,
            kubectl,
            ca_pem: pki.ca_pem.clone(),
            admin_crt: pki.admin.0,
            admin_key: pki.admin.1,
        };
        let admin = server.kubeconfig(server.dir.path(), "admin");
        server.admin_kubeconfig = admin;
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let exited = guard.try_wait().ok().flatten().is_some()
                || etcd_guard.try_wait().ok().flatten().is_some();
            if server
                .kubectl(&["get", "--raw", "/readyz"], None)
                .is_ok_and(|o| o.trim() == "ok")
            {
                break;
            }
            assert!(
                Instant::now() < end && !exited,
                "kube-apiserver or etcd exited, or not ready after 90 s; the API server's log:\n{}\netcd's log:\n{}",
                tail(&server.dir.path().join("kube-apiserver.log")),
                tail(&server.dir.path().join("etcd.log")),
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    /// A kubeconfig as the cluster admin (client certificate in
    /// `system:masters`), written to `dir`.
    pub fn kubeconfig(&self, dir: &Path, name: &str) -> PathBuf {
        self.write_kubeconfig(
            dir,
            name,
            &format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&self.admin_crt),
                b64(&self.admin_key)
            ),
        )
    }

    /// A kubeconfig that authenticates with a bearer token (a
    /// ServiceAccount's, from [`KubeApiServer::token`]).
    pub fn token_kubeconfig(&self, dir: &Path, name: &str, token: &str) -> PathBuf {
        self.write_kubeconfig(dir, name, &format!("    token: {token}\n"))
    }

    fn write_kubeconfig(&self, dir: &Path, name: &str, user: &str) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
                 certificate-authority-data: {}\nusers:\n- name: {name}\n  user:\n{user}contexts:\n- name: test\n  \
                 context:\n    cluster: test\n    user: {name}\ncurrent-context: test\n",
                self.url,
                b64(&self.ca_pem)
            ),
        )
        .expect("write kubeconfig");
        path
    }

    /// `kubectl ARGS` as the admin, with `stdin`; its stdout, or its
    /// stderr as the error.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new namespace for one test, named after `tag`.
    pub fn namespace(&self, tag: &str) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = format!("{tag}-{}-{n}", std::process::id());
        self.kubectl(&["create", "namespace", &ns], None)
            .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
        ns
    }

    /// `kubectl apply` of every object in `text` (YAML); the server
    /// validates and defaults them as it would a user's.
    pub fn apply(&self, text: &str) -> Result<(), String> {
        self.kubectl(&["apply", "-f", "-"], Some(text)).map(|_| ())
    }

    /// Replaces an object's status through the status subresource, as the
    /// controller that owns it would.
    pub fn set_status(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        status: &Value,
    ) -> Result<(), String> {
        let patch = serde_json::json!({ "status": status }).to_string();
        self.kubectl(
            &[
                "patch",
                resource,
                name,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        )
        .map(|_| ())
    }

    /// `kubectl get RESOURCE NAME -n NS -o json` (e.g. `ingresses`,
    /// `leases.coordination.k8s.io`); `None` when it does not exist.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let out = self
            .kubectl(&["get", resource, name, "-n", ns, "-o", "json"], None)
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    /// Every item of `resource` in `ns`.
    pub fn list(&self, resource: &str, ns: &str) -> Vec<Value> {
        self.kubectl(&["get", resource, "-n", ns, "-o", "json"], None)
            .ok()
            .and_then(|o| serde_json::from_str::<Value>(&o).ok())
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    pub fn delete(&self, resource: &str, ns: &str, name: &str) -> Result<(), String> {
        self.kubectl(&["delete", resource, name, "-n", ns, "--wait=false"], None)
            .map(|_| ())
    }

    /// A token of ServiceAccount `ns/name` (the TokenRequest API).
    pub fn token(&self, ns: &str, name: &str) -> String {
        self.kubectl(&["create", "token", name, "-n", ns, "--duration=1h"], None)
            .unwrap_or_else(|e| panic!("token for {ns}/{name}: {e}"))
            .trim()
            .to_string()
    }
}

impl KubeApiServer {
    /// Installs CustomResourceDefinitions for the Gateway API kinds Portico
    /// reads (`gateway.networking.k8s.io/v1`), once per process, and waits
    /// until they are served. Their schemas keep every field
    /// (`x-kubernetes-preserve-unknown-fields`): the server stores what a
    /// test applies without the release's validation and defaults, so
    /// Portico's own defaulting is what is tested.
    pub fn install_gateway_api_crds(&self) {
        static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        let kinds = [
            ("GatewayClass", "gatewayclasses", "Cluster"),
            ("Gateway", "gateways", "Namespaced"),
            ("HTTPRoute", "httproutes", "Namespaced"),
            ("ReferenceGrant", "referencegrants", "Namespaced"),
            ("GRPCRoute", "grpcroutes", "Namespaced"),
            ("TCPRoute", "tcproutes", "Namespaced"),
            ("UDPRoute", "udproutes", "Namespaced"),
            ("TLSRoute", "tlsroutes", "Namespaced"),
        ];
        let mut text = String::new();
        for (kind, plural, scope) in kinds {
            text.push_str(&format!(
                "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.gateway.networking.k8s.io
  # A *.k8s.io group needs this; \"unapproved\" is what a copy may say.
  annotations: {{api-approved.kubernetes.io: \"unapproved, a test copy of the Gateway API kinds\"}}
spec:
  group: gateway.networking.k8s.io
  names: {{kind: {kind}, listKind: {kind}List, plural: {plural}, singular: {singular}}}
  scope: {scope}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
          status: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
---
",
                singular = kind.to_ascii_lowercase()
            ));
        }
        self.apply(&text).expect("install the Gateway API CRDs");
        for (_, plural, _) in kinds {
            self.kubectl(
                &[
                    "wait",
                    "--for=condition=established",
                    "--timeout=30s",
                    &format!("crd/{plural}.gateway.networking.k8s.io"),
                ],
                None,
            )
            .unwrap_or_else(|e| panic!("CRD {plural} not established: {e}"));
        }
        // Established is not yet in discovery, which is what Portico asks.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let listed = self
                .kubectl(
                    &[
                        "api-resources",
                        "--api-group=gateway.networking.k8s.io",
                        "-o",
                        "name",
                    ],
                    None,
                )
                .unwrap_or_default();
            if kinds.iter().all(|(_, plural, _)| {
                listed
                    .lines()
                    .any(|l| l == format!("{plural}.gateway.networking.k8s.io"))
            }) {
                break;
            }
            assert!(
                std::time::Instant::now() < end,
                "Gateway API CRDs not in discovery: {listed}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        *done = true;
    }

    /// The audit log's entries for requests by `username` (e.g.
    /// `system:serviceaccount:NS:NAME`), oldest first.
    pub fn audit(&self, username: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user"]["username"] == username)
            .collect()
    }
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
