//! The plugin host's configuration: `[plugins]` (the modules and where
//! they run) and `[ingress]` (which control plugins decide Ingress
//! admission and policy).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use portico_model::scope::PluginScope;

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
    /// Envoy cluster names plugins pass to `proxy_http_call` (e.g.
    /// `httpbin`), each mapped to a backend `namespace/service:port`. The
    /// Istio form `outbound|PORT||SERVICE.NAMESPACE.svc.cluster.local`
    /// needs no entry.
    pub clusters: std::collections::BTreeMap<String, String>,
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
            clusters: Default::default(),
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
    /// The root id the plugin sees (`plugin_root_id`): SDKs pick the root
    /// context registered under it (the C++ and AssemblyScript SDKs'
    /// `RegisterContextFactory`/`registerRootContext`), as Envoy's
    /// `root_id`. Unset: the plugin's name.
    #[serde(default)]
    pub root_id: Option<String>,
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

pub fn validate_plugins(p: &PluginsConfig) -> Result<(), String> {
    for (cluster, backend) in &p.clusters {
        let ok = backend
            .split_once('/')
            .and_then(|(ns, rest)| rest.rsplit_once(':').map(|(svc, port)| (ns, svc, port)))
            .is_some_and(|(ns, svc, port)| !ns.is_empty() && !svc.is_empty() && !port.is_empty());
        if !ok {
            return Err(format!(
                "plugins.clusters.{cluster:?} = {backend:?}: not a backend name (namespace/service:port)"
            ));
        }
    }
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

    #[test]
    fn a_cluster_must_map_to_a_backend_name() {
        let mut p = PluginsConfig::default();
        p.clusters
            .insert("httpbin".into(), "default/httpbin:http".into());
        assert_eq!(validate_plugins(&p), Ok(()));
        p.clusters.insert("bad".into(), "httpbin".into());
        let err = validate_plugins(&p).unwrap_err();
        assert!(err.contains("plugins.clusters.\"bad\""), "{err}");
        assert!(err.contains("namespace/service:port"), "{err}");
    }
}
