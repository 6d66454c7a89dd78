//! The sources' configuration: `[sources]` (manifest folders),
//! `[kubernetes]` (the API source and what is written back) and `[dns]`
//! (ExternalName resolution).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Folders of Kubernetes manifests (YAML or JSON), read recursively and
    /// watched for changes. Relative paths are relative to the config file.
    pub manifests: Vec<PathBuf>,
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
    /// Which TLS Secrets are read: `all` (list and watch every
    /// `kubernetes.io/tls` Secret in scope) or `referenced` (only the ones
    /// admitted Ingresses name, each watched by name; RBAC can then grant
    /// exactly those, see `portico rbac`).
    pub secrets: SecretAccess,
    /// Read the Gateway API (GatewayClasses, Gateways, HTTPRoutes,
    /// ReferenceGrants) where its CRDs are installed. Off: never asked
    /// for, so a ServiceAccount without those grants is not held up.
    pub gateway_api: bool,
}

/// `kubernetes.secrets`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecretAccess {
    /// One list and watch of every TLS Secret in scope: needs `list` and
    /// `watch` on all Secrets, as ingress-nginx does.
    #[default]
    All,
    /// A watch per Secret that an admitted Ingress names
    /// (`fieldSelector=metadata.name=...`), so a Role with `resourceNames`
    /// suffices.
    Referenced,
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
            secrets: SecretAccess::All,
            gateway_api: true,
        }
    }
}
