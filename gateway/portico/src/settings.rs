//! What each layer gets from the composed configuration, and the control
//! plugins wired into translation and the Kubernetes source (the layers
//! see them only as `portico_model::control` traits).

use std::sync::Arc;

use portico_model::control::{AdmitAll, IngressPolicy, LoadBalancerAddresses};
use portico_sources::kube::KubeSettings;
use portico_translate::plugins::ScopedPlugins;
use portico_translate::Settings;

use crate::config::{Config, PluginsConfig};

/// Translation's settings. The control plugins named by the config must
/// have been installed (`portico_wasm::install_control`) first.
pub fn translate_settings(cfg: &Config) -> Settings {
    let mut s = Settings::new(cfg.node.addresses.clone());
    s.node_ports = cfg.l4.node_ports;
    s.default_policy = cfg.lb.default_policy;
    s.admission = match &cfg.ingress.admission {
        Some(plugin) => portico_wasm::admission::for_plugin(plugin),
        None => Box::new(AdmitAll),
    };
    s.plugins = cfg.plugins.load.iter().map(|p| p.name.clone()).collect();
    s.scoped = scoped_plugins(&cfg.plugins);
    // Gateway listeners are served on these ports.
    let ports = |addrs: &[std::net::SocketAddr]| {
        let mut p: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    s.http_ports = ports(&cfg.listen.http);
    s.https_ports = ports(&cfg.listen.https);
    s.gateway_addresses = cfg
        .kubernetes
        .publish_addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    s.gateway_pools = cfg
        .announce
        .pools
        .iter()
        .filter(|p| p.gateways)
        .map(|p| (p.name.clone(), p.valid_networks()))
        .collect();
    s.gateway_load_balancer = cfg.kubernetes.load_balancer_plugin.is_some();
    s.policy = cfg.ingress.policy_plugin.as_ref().map(|name| {
        portico_wasm::ingress_policy::installed()
            .map(|p| p as Arc<dyn IngressPolicy>)
            .ok_or_else(|| format!("policy plugin {name} is not loaded"))
    });
    s
}

/// The listener plugins that have an `applies_to`, in listener order.
pub fn scoped_plugins(cfg: &PluginsConfig) -> ScopedPlugins {
    let scoped = |names: &[String]| {
        names
            .iter()
            .filter_map(|n| {
                let scope = cfg.load.iter().find(|p| &p.name == n)?.applies_to.clone()?;
                Some((n.clone(), scope))
            })
            .collect()
    };
    ScopedPlugins {
        http: scoped(&cfg.http),
        tcp: scoped(&cfg.tcp),
    }
}

/// The Kubernetes source's settings.
pub fn kube_settings(cfg: &Config) -> KubeSettings {
    KubeSettings {
        kubernetes: cfg.kubernetes.clone(),
        dns: cfg.dns.clone(),
        node_addresses: cfg.node.addresses.clone(),
        load_balancer: cfg
            .kubernetes
            .load_balancer_plugin
            .as_ref()
            .and_then(|_| portico_wasm::lb_addresses::installed())
            .map(|p| p as Arc<dyn LoadBalancerAddresses>),
        l2_election: None,
        watch_all_nodes: cfg.announce.active(),
    }
}
