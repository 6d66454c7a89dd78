//! `portico.toml`: the process configuration.
//!
//! Loaded with the `config` crate so that every key can be overridden from the
//! environment as `PORTICO_SECTION__KEY` (e.g. `PORTICO_ADMIN__LISTEN`).
//! Unknown keys are errors: a typo must never silently fall back to a default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

// Each layer owns its section; this file composes them, loads the file
// and the environment, and checks what spans sections.
pub use portico_announce::AnnounceConfig;
pub use portico_dataplane::config::{L4Config, ProxyConfig};
pub use portico_model::lb::LbConfig;
pub use portico_sources::config::{DnsConfig, KubernetesConfig, SourcesConfig};
pub use portico_wasm::config::{
    validate_plugins, FailPolicy, IngressConfig, PluginConfig, PluginScope, PluginsConfig,
};

/// The configuration shipped in `conf/portico.toml`, compiled in so that
/// `portico run` works from any directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../conf/portico.toml");

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
    pub announce: AnnounceConfig,
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
pub struct TlsConfig {
    /// PEM certificate chain served when no Ingress certificate matches the SNI.
    /// Without it a self-signed certificate is generated at start.
    pub default_certificate: Option<PathBuf>,
    pub default_key: Option<PathBuf>,
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
        .join("../..")
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
    let announce = cfg.announce.validate();
    if !announce.is_empty() {
        // Every problem of the section at once: BGP settings come in sets.
        return Err(announce.join("\n"));
    }
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
            [
                "nginx.ingress.kubernetes.io/affinity",
                "portico.io/session-header"
            ]
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
