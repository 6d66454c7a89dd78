//! `portico.toml`: the process configuration.
//!
//! Loaded with the `config` crate so that every key can be overridden from the
//! environment as `PORTICO_SECTION__KEY` (e.g. `PORTICO_ADMIN__LISTEN`).
//! Unknown keys are errors: a typo must never silently fall back to a default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lb::PolicyKind;

/// The configuration shipped in `conf/portico.toml`, compiled in so that
/// `portico run` works from any directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../conf/portico.toml");

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    pub node: NodeConfig,
    pub sources: SourcesConfig,
    pub ingress: IngressConfig,
    pub proxy: ProxyConfig,
    pub tls: TlsConfig,
    pub l4: L4Config,
    pub lb: LbConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub demo: DemoConfig,
    pub kubernetes: KubernetesConfig,
    pub dns: DnsConfig,
    pub plugins: PluginsConfig,
}

/// Wasm plugins: which modules to load, and where they apply.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Plugins run on every request of the L7 listeners, in this order,
    /// before the ones an Ingress asks for (`portico.io/plugins`).
    pub http: Vec<String>,
    /// Plugins run on every TCP connection of the L4 listeners (proxy-wasm
    /// stream contexts), before the ones a Service asks for.
    pub tcp: Vec<String>,
    /// Compiled modules are kept here between runs (keyed by content), so
    /// a restart does not compile again. Unset: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Watch plugin files and swap in a changed module without a restart.
    pub reload: bool,
    /// How often the files are checked for changes.
    pub reload_interval_ms: u64,
    /// The modules.
    pub load: Vec<PluginConfig>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            http: Vec::new(),
            tcp: Vec::new(),
            cache_dir: None,
            reload: true,
            reload_interval_ms: 1_000,
            load: Vec::new(),
        }
    }
}

/// One plugin module and how it runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// How routes, listeners, metrics and logs refer to it.
    pub name: String,
    /// The `.wasm` module (relative to the config file).
    pub path: PathBuf,
    /// Handed to the plugin as its configuration (`proxy_on_configure`).
    #[serde(default)]
    pub config: String,
    /// What a request gets when the plugin fails (trap, deadline, memory):
    /// `closed` answers 500, `open` skips the plugin.
    #[serde(default)]
    pub fail: FailPolicy,
    /// Time one call into the plugin may take.
    #[serde(default = "default_plugin_deadline_ms")]
    pub deadline_ms: u64,
    /// Linear memory one instance may grow to.
    #[serde(default = "default_plugin_memory_mib")]
    pub memory_mib: u64,
    /// For a listener plugin (named in `plugins.http` or `plugins.tcp`):
    /// the routes and Services it runs on. Unset: every request or
    /// connection of the listeners. Decided when the snapshot is built, so
    /// a plugin costs nothing where it has nothing to do.
    #[serde(default)]
    pub applies_to: Option<PluginScope>,
}

/// Where a scoped listener plugin runs: on a route whose Ingress, or whose
/// Service, matches any of these (an L4 connection: its Service). A scoped
/// plugin runs after routing, before the plugins the Ingress and the
/// Service ask for (`portico.io/plugins`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PluginScope {
    /// The Ingress has one of these annotations (any value).
    #[serde(default)]
    pub ingress_annotations: Vec<String>,
    /// The Service has one of these annotations (any value).
    #[serde(default)]
    pub service_annotations: Vec<String>,
    /// The Service's `spec.sessionAffinity` is one of these (`ClientIP`).
    #[serde(default)]
    pub service_session_affinity: Vec<String>,
}

impl PluginScope {
    /// Whether the scope names nothing (the plugin would run nowhere).
    pub fn is_empty(&self) -> bool {
        self.ingress_annotations.is_empty()
            && self.service_annotations.is_empty()
            && self.service_session_affinity.is_empty()
    }
}

fn default_plugin_deadline_ms() -> u64 {
    5
}

fn default_plugin_memory_mib() -> u64 {
    64
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailPolicy {
    /// The request is refused (500), the connection closed: a plugin that
    /// enforces something must not be bypassed by crashing it.
    #[default]
    Closed,
    /// The plugin is skipped for this request.
    Open,
}

/// Resolving ExternalName Services' DNS names.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers (`ip:port`, UDP then TCP). Empty: `/etc/resolv.conf`
    /// (with `ClusterFirstWithHostNet`, the cluster DNS).
    pub servers: Vec<SocketAddr>,
    /// A name is re-resolved when its answer's TTL ends, but not sooner
    /// than this (and after a failure, retried this often).
    pub min_ttl_seconds: u64,
    /// ...and not later than this.
    pub max_ttl_seconds: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            min_ttl_seconds: 5,
            max_ttl_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain-text HTTP listeners (HTTP/1.1 and h2c with prior knowledge).
    pub http: Vec<SocketAddr>,
    /// TLS listeners (HTTP/1.1 and h2 via ALPN), certificate chosen by SNI.
    pub https: Vec<SocketAddr>,
    /// Accept h2c with prior knowledge on the `http` listeners. Pingora then
    /// reads 24 bytes before it decides between h2 and HTTP/1.x, so a
    /// shorter request (`GET / HTTP/1.0` with no headers) waits for more.
    pub h2c: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The edge node's own addresses: NodePort listeners, and LoadBalancer
    /// listeners without an address of their own, bind here.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Folders of Kubernetes manifests (YAML or JSON), read recursively and
    /// watched for changes. Relative paths are relative to the config file.
    pub manifests: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// `spec.controller` of the IngressClasses this gateway serves. This
    /// and the next two keys are handed to the admission plugin.
    pub controller: String,
    /// Class names accepted from the legacy `kubernetes.io/ingress.class`
    /// annotation and from `spec.ingressClassName` without an IngressClass
    /// object (e.g. `nginx` while migrating).
    pub accepted_classes: Vec<String>,
    /// Serve Ingresses that name no class when no default IngressClass exists.
    pub watch_without_class: bool,
    /// A control-plane plugin (from `plugins.load`) that decides which
    /// Ingresses are served (`portico_admit_ingress`), e.g. the shipped
    /// `ingress-class`. Unset: every Ingress is served (a warning says so
    /// when reading a cluster).
    pub admission: Option<String>,
    /// A control-plane plugin (from `plugins.load`) that turns Ingress
    /// annotations into typed route policy (`portico_ingress_policy`),
    /// e.g. the shipped `ingress-nginx`.
    pub policy_plugin: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub connect_timeout_ms: u64,
    /// Longest wait for the upstream to send the next bytes.
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// How long an idle upstream keep-alive connection stays in the pool.
    pub upstream_idle_timeout_ms: u64,
    /// How long an idle downstream keep-alive connection is kept open.
    pub downstream_keepalive_timeout_ms: u64,
    /// Request header block larger than this gets 431.
    pub max_request_header_bytes: usize,
    /// Extra connection attempts on other endpoints after a failed connect.
    pub connect_retries: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain served when no Ingress certificate matches the SNI.
    /// Without it a self-signed certificate is generated at start.
    pub default_certificate: Option<PathBuf>,
    pub default_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct L4Config {
    /// Open listeners on `nodePort` for NodePort and LoadBalancer Services.
    /// Off when kube-proxy owns those ports.
    pub node_ports: bool,
    pub tcp_idle_timeout_ms: u64,
    pub udp_idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub connect_retries: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// Policy for Services without a `portico.io/load-balancer` annotation.
    pub default_policy: PolicyKind,
    /// Consecutive connect failures after which an endpoint is skipped.
    pub failure_threshold: u32,
    /// How long a failing endpoint is skipped.
    pub cooldown_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM: stop accepting, then wait at most this long for in-flight
    /// requests and connections before exiting.
    pub grace_period_seconds: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `portico=debug`. `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
    /// One JSON line per request on stdout.
    pub access_log: bool,
}

/// The Kubernetes API source and what the gateway writes back.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Read objects from the Kubernetes API instead of `sources.manifests`.
    /// `--kubeconfig` turns it on too. Unset: on when running in a pod with
    /// a service account, off elsewhere.
    pub enabled: Option<bool>,
    /// Kubeconfig file. Unset: `KUBECONFIG`, then the in-cluster service
    /// account, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (IngressClasses and Nodes stay cluster-wide).
    pub namespace: Option<String>,
    /// This edge node's name, for its addresses; unset: `NODE_NAME`.
    pub node_name: Option<String>,
    /// Addresses written to `status.loadBalancer.ingress` of served Ingresses
    /// (IPs or hostnames). Empty: the edge node's addresses.
    pub publish_addresses: Vec<String>,
    /// Removed: address pools are the `cloud-lb` plugin's. Still parsed so
    /// that an old config gets an error saying where they went.
    #[serde(skip_serializing)]
    pub load_balancer_pool: Option<Vec<IpAddr>>,
    /// A control-plane plugin (from `plugins.load`) that decides the
    /// LoadBalancer Services' addresses (`portico_service_load_balancer`),
    /// e.g. the shipped `cloud-lb`. Unset: a Service gets its
    /// `spec.loadBalancerIP`, else the edge node's addresses.
    pub load_balancer_plugin: Option<String>,
    /// Write status only while holding the Lease (several replicas). Off:
    /// this process always writes.
    pub leader_election: bool,
    pub lease_name: String,
    /// Namespace of the Lease and of nothing else; unset: `POD_NAMESPACE`,
    /// else `default`.
    pub lease_namespace: Option<String>,
    pub lease_duration_seconds: u64,
    /// Who holds the Lease; unset: `POD_NAME`, else the host name and PID.
    pub identity: Option<String>,
    /// Report problems with objects as Kubernetes Events on those objects.
    pub events: bool,
    /// How long a burst of changes is gathered before it is applied.
    pub debounce_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Start built-in echo servers on these addresses (quickstart only; the
    /// example manifests point their EndpointSlices here).
    pub echo: Vec<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            http: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            https: vec![SocketAddr::from(([0, 0, 0, 0], 8443))],
            h2c: true,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            controller: "portico.io/ingress-controller".into(),
            accepted_classes: vec!["portico".into()],
            watch_without_class: true,
            admission: None,
            policy_plugin: None,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout_ms: 2_000,
            read_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            upstream_idle_timeout_ms: 60_000,
            downstream_keepalive_timeout_ms: 75_000,
            max_request_header_bytes: 32 * 1024,
            connect_retries: 2,
        }
    }
}

impl Default for L4Config {
    fn default() -> Self {
        L4Config {
            node_ports: true,
            tcp_idle_timeout_ms: 3_600_000,
            udp_idle_timeout_ms: 60_000,
            connect_timeout_ms: 2_000,
            connect_retries: 2,
        }
    }
}

impl KubernetesConfig {
    /// `enabled`, or when unset, whether this process runs in a pod with a
    /// service account (the DaemonSet case).
    pub fn wanted(&self) -> bool {
        self.enabled.unwrap_or_else(|| {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty())
                && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").is_file()
        })
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: None,
            kubeconfig: None,
            namespace: None,
            node_name: None,
            publish_addresses: Vec::new(),
            load_balancer_pool: None,
            load_balancer_plugin: None,
            leader_election: true,
            lease_name: "portico-leader".into(),
            lease_namespace: None,
            lease_duration_seconds: 15,
            identity: None,
            events: true,
            debounce_ms: 10,
        }
    }
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            default_policy: PolicyKind::RoundRobin,
            failure_threshold: 3,
            cooldown_ms: 10_000,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period_seconds: 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access_log: false,
        }
    }
}

impl ListenConfig {
    /// Every L7 listener as (`http` | `https`, address).
    pub fn l7(&self) -> Vec<(&'static str, SocketAddr)> {
        self.http
            .iter()
            .map(|a| ("http", *a))
            .chain(self.https.iter().map(|a| ("https", *a)))
            .collect()
    }
}

impl ProxyConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Where a configuration came from; relative manifest paths resolve against it.
#[derive(Debug, Clone)]
pub enum ConfigOrigin {
    Embedded,
    File(PathBuf),
}

/// Reads the configuration: the file (or the embedded default), then
/// `PORTICO_*` environment overrides. Errors name the file and the key.
pub fn load(file: Option<&Path>) -> Result<(Config, ConfigOrigin), String> {
    load_with_env(file, std::env::vars())
}

pub fn load_with_env(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, ConfigOrigin), String> {
    let (text, origin, name) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{}: cannot read config file: {e}", path.display()))?;
            (
                text,
                ConfigOrigin::File(path.to_path_buf()),
                path.display().to_string(),
            )
        }
        None => (
            EMBEDDED_DEFAULT.to_string(),
            ConfigOrigin::Embedded,
            "conf/portico.toml (embedded)".to_string(),
        ),
    };
    // Parse the file alone first so that its errors carry line numbers.
    let _: Config = toml_check(&text).map_err(|e| format!("{name}: {e}"))?;

    let env_map: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PORTICO_") && k.contains("__"))
        .collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("PORTICO")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("listen.http")
                .with_list_parse_key("listen.https")
                .with_list_parse_key("node.addresses")
                .with_list_parse_key("dns.servers")
                .with_list_parse_key("sources.manifests")
                .with_list_parse_key("ingress.accepted_classes")
                .with_list_parse_key("demo.echo")
                .with_list_parse_key("kubernetes.publish_addresses")
                .with_list_parse_key("plugins.http")
                .with_list_parse_key("plugins.tcp")
                .try_parsing(true)
                .source(Some(env_map)),
        )
        .build()
        .map_err(|e| format!("{name}: {e}"))?;
    let mut cfg: Config = built
        .try_deserialize()
        .map_err(|e| format!("{name} (with PORTICO_* environment overrides): {e}"))?;
    let base = match &origin {
        ConfigOrigin::File(path) => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ConfigOrigin::Embedded => embedded_base(),
    };
    for dir in &mut cfg.sources.manifests {
        if dir.is_relative() {
            *dir = base.join(&*dir);
        }
    }
    for p in &mut cfg.plugins.load {
        if p.path.is_relative() {
            p.path = base.join(&p.path);
        }
    }
    if let Some(dir) = cfg.plugins.cache_dir.as_mut().filter(|d| d.is_relative()) {
        *dir = base.join(&*dir);
    }
    validate(&cfg).map_err(|e| format!("{name}: {e}"))?;
    Ok((cfg, origin))
}

/// Relative paths in the embedded default resolve against `conf/` in the
/// current folder, else against the `conf/` of the source tree it was built
/// from (so `cargo run -p portico -- run` works from anywhere in the repo).
fn embedded_base() -> PathBuf {
    let here = Path::new("conf");
    if here.join("portico.toml").is_file() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("conf")
}

fn toml_check(text: &str) -> Result<Config, String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Config>())
        .map_err(|e| e.to_string())
}

fn validate(cfg: &Config) -> Result<(), String> {
    if cfg.tls.default_certificate.is_some() != cfg.tls.default_key.is_some() {
        return Err("tls.default_certificate and tls.default_key must be set together".into());
    }
    if cfg.lb.failure_threshold == 0 {
        return Err("lb.failure_threshold must be at least 1".into());
    }
    if cfg.dns.min_ttl_seconds == 0 || cfg.dns.min_ttl_seconds > cfg.dns.max_ttl_seconds {
        return Err(format!(
            "dns.min_ttl_seconds must be at least 1 and at most dns.max_ttl_seconds ({})",
            cfg.dns.max_ttl_seconds
        ));
    }
    if cfg.kubernetes.lease_duration_seconds < 3 {
        return Err("kubernetes.lease_duration_seconds must be at least 3".into());
    }
    if cfg.kubernetes.namespace.as_deref() == Some("") {
        return Err(
            "kubernetes.namespace must not be empty (leave it unset for all namespaces)".into(),
        );
    }
    if cfg.kubernetes.load_balancer_pool.is_some() {
        return Err("kubernetes.load_balancer_pool was removed: address pools are the cloud-lb plugin's. \
             Load plugins/dist/cloud_lb.wasm in plugins.load with \
             config = '{\"pools\": {\"default\": [...]}}' and set kubernetes.load_balancer_plugin to its name"
            .into());
    }
    validate_plugins(&cfg.plugins)?;
    if let Some(name) = &cfg.kubernetes.load_balancer_plugin {
        if !cfg.plugins.load.iter().any(|p| &p.name == name) {
            return Err(format!(
                "kubernetes.load_balancer_plugin: {name:?} is not a loaded plugin (add it to plugins.load)"
            ));
        }
    }
    for (key, name) in [
        ("ingress.admission", &cfg.ingress.admission),
        ("ingress.policy_plugin", &cfg.ingress.policy_plugin),
    ] {
        if let Some(name) = name {
            if !cfg.plugins.load.iter().any(|p| &p.name == name) {
                return Err(format!(
                    "{key}: {name:?} is not a loaded plugin (add it to plugins.load)"
                ));
            }
        }
    }
    if cfg.proxy.max_request_header_bytes < 1024 {
        return Err("proxy.max_request_header_bytes must be at least 1024".into());
    }
    Ok(())
}

fn validate_plugins(p: &PluginsConfig) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, plugin) in p.load.iter().enumerate() {
        let at = format!("plugins.load[{i}] ({:?})", plugin.name);
        if plugin.name.is_empty()
            || !plugin
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{at}: name must be non-empty letters, digits, '-' or '_'"
            ));
        }
        if !seen.insert(plugin.name.as_str()) {
            return Err(format!("{at}: a plugin of this name is already loaded"));
        }
        if !(1..=60_000).contains(&plugin.deadline_ms) {
            return Err(format!("{at}: deadline_ms must be 1..=60000"));
        }
        if !(1..=4096).contains(&plugin.memory_mib) {
            return Err(format!("{at}: memory_mib must be 1..=4096"));
        }
        if let Some(scope) = &plugin.applies_to {
            if scope.is_empty() {
                return Err(format!(
                    "{at}: applies_to names no annotation and no session affinity, so the plugin would run nowhere; remove applies_to to run it on every request"
                ));
            }
            let listed = p.http.contains(&plugin.name) || p.tcp.contains(&plugin.name);
            if !listed {
                return Err(format!(
                    "{at}: applies_to scopes a listener plugin, but {:?} is in neither plugins.http nor plugins.tcp",
                    plugin.name
                ));
            }
            if scope
                .ingress_annotations
                .iter()
                .chain(&scope.service_annotations)
                .any(|a| a.is_empty())
            {
                return Err(format!("{at}: applies_to: an annotation name is empty"));
            }
            if !scope.ingress_annotations.is_empty() && !p.http.contains(&plugin.name) {
                return Err(format!(
                    "{at}: applies_to.ingress_annotations scopes HTTP routes, but {:?} is not in plugins.http (L4 connections have no Ingress)",
                    plugin.name
                ));
            }
        }
    }
    for (key, name) in p
        .http
        .iter()
        .map(|n| ("http", n))
        .chain(p.tcp.iter().map(|n| ("tcp", n)))
    {
        if !seen.contains(name.as_str()) {
            return Err(format!(
                "plugins.{key}: {name:?} is not a loaded plugin (plugins.load has {})",
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.iter().copied().collect::<Vec<_>>().join(", ")
                }
            ));
        }
    }
    if p.reload_interval_ms < 100 {
        return Err("plugins.reload_interval_ms must be at least 100".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_default_parses() {
        let (cfg, _) = load_with_env(None, env(&[])).unwrap();
        assert_eq!(cfg.admin.listen, "127.0.0.1:9901".parse().unwrap());
        assert!(!cfg.sources.manifests.is_empty());
    }

    #[test]
    fn embedded_default_loads_the_shipped_plugins() {
        let (cfg, _) = load_with_env(None, env(&[])).unwrap();
        let names: Vec<&str> = cfg.plugins.load.iter().map(|p| p.name.as_str()).collect();
        for want in [
            "session-affinity",
            "ingress-class",
            "ingress-nginx",
            "cloud-lb",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(cfg.plugins.load.iter().all(|p| p
            .path
            .parent()
            .unwrap()
            .ends_with("plugins/dist")));
        assert_eq!(cfg.ingress.admission.as_deref(), Some("ingress-class"));
        assert_eq!(cfg.ingress.policy_plugin.as_deref(), Some("ingress-nginx"));
        assert_eq!(
            cfg.kubernetes.load_balancer_plugin.as_deref(),
            Some("cloud-lb")
        );
    }

    #[test]
    fn the_shipped_affinity_plugins_are_scoped() {
        let (cfg, _) = load_with_env(None, env(&[])).unwrap();
        let scope = |n: &str| {
            cfg.plugins
                .load
                .iter()
                .find(|p| p.name == n)
                .and_then(|p| p.applies_to.clone())
                .unwrap()
        };
        assert_eq!(
            scope("session-affinity").service_session_affinity,
            ["ClientIP"]
        );
        assert_eq!(
            scope("session-affinity").ingress_annotations,
            ["nginx.ingress.kubernetes.io/affinity"]
        );
        assert_eq!(
            scope("session-affinity-tcp").service_session_affinity,
            ["ClientIP"]
        );
    }

    #[test]
    fn applies_to_errors_name_the_plugin_and_what_is_wrong() {
        let base = |scope: &str, lists: &str| {
            toml_plugins(&format!(
                "{lists}\n[[load]]\nname = \"p\"\npath = \"p.wasm\"\napplies_to = {scope}\n"
            ))
        };
        let ok = base(
            "{ service_session_affinity = [\"ClientIP\"] }",
            "tcp = [\"p\"]",
        );
        assert_eq!(validate_plugins(&ok), Ok(()));
        for (scope, lists, want) in [
            ("{}", "http = [\"p\"]", "would run nowhere"),
            (
                "{ service_annotations = [\"a\"] }",
                "",
                "in neither plugins.http nor plugins.tcp",
            ),
            (
                "{ ingress_annotations = [\"\"] }",
                "http = [\"p\"]",
                "annotation name is empty",
            ),
            (
                "{ ingress_annotations = [\"a\"] }",
                "tcp = [\"p\"]",
                "not in plugins.http",
            ),
        ] {
            let err = validate_plugins(&base(scope, lists)).unwrap_err();
            assert!(err.contains("plugins.load[0] (\"p\")"), "{err}");
            assert!(err.contains(want), "{scope}: {err}");
        }
    }

    fn toml_plugins(text: &str) -> PluginsConfig {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn the_removed_load_balancer_pool_says_where_pools_went() {
        let dir = std::env::temp_dir().join(format!("portico-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("old.toml");
        std::fs::write(
            &file,
            "[kubernetes]\nload_balancer_pool = [\"192.0.2.1\"]\n",
        )
        .unwrap();
        let err = load_with_env(Some(&file), env(&[])).unwrap_err();
        assert!(
            err.contains("kubernetes.load_balancer_pool was removed"),
            "{err}"
        );
        assert!(err.contains("cloud-lb"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("portico-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[proxy]\nconect_timeout_ms = 5\n").unwrap();
        let err = load_with_env(Some(&file), env(&[])).unwrap_err();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("conect_timeout_ms"), "{err}");
    }

    #[test]
    fn env_overrides_nested_keys() {
        let (cfg, _) = load_with_env(
            None,
            env(&[
                ("PORTICO_ADMIN__LISTEN", "127.0.0.1:9999"),
                ("PORTICO_PROXY__CONNECT_RETRIES", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.admin.listen.port(), 9999);
        assert_eq!(cfg.proxy.connect_retries, 5);
    }

    #[test]
    fn half_a_default_certificate_is_rejected() {
        let mut cfg = Config::default();
        cfg.tls.default_certificate = Some("x.pem".into());
        assert!(validate(&cfg).unwrap_err().contains("default_key"));
    }
}
