//! The API client: credentials from a kubeconfig or the in-cluster
//! service account, in the order kubectl users expect.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::config::KubernetesConfig;

/// Where the credentials came from, for the start-up log line.
pub fn describe_origin(cfg: &KubernetesConfig) -> String {
    match (&cfg.kubeconfig, std::env::var_os("KUBECONFIG")) {
        (Some(p), _) => format!("kubeconfig {}", p.display()),
        (None, Some(p)) => format!("kubeconfig {} (KUBECONFIG)", p.to_string_lossy()),
        (None, None) => "in-cluster service account, else ~/.kube/config".into(),
    }
}

/// Builds the client config: `kubernetes.kubeconfig`, else `KUBECONFIG`,
/// else in-cluster, else `~/.kube/config` (kube's inference). Errors name
/// the file and what is wrong with it.
pub async fn config(cfg: &KubernetesConfig) -> Result<Config, String> {
    let config = match &cfg.kubeconfig {
        Some(path) => from_file(path).await?,
        None => Config::infer().await.map_err(|e| {
            format!(
                "no Kubernetes credentials: {e} (set --kubeconfig, KUBECONFIG, or run in a pod \
                 with a service account)"
            )
        })?,
    };
    Ok(config)
}

async fn from_file(path: &Path) -> Result<Config, String> {
    let kubeconfig = Kubeconfig::read_from(path)
        .map_err(|e| format!("{}: cannot read kubeconfig: {e}", path.display()))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{}: unusable kubeconfig: {e}", path.display()))
}

pub fn client(config: Config) -> Result<Client, String> {
    Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn missing_kubeconfig_names_the_file() {
        let cfg = KubernetesConfig {
            kubeconfig: Some("/nonexistent/portico-kubeconfig".into()),
            ..KubernetesConfig::default()
        };
        let err = rt().block_on(config(&cfg)).unwrap_err();
        assert!(err.contains("/nonexistent/portico-kubeconfig"), "{err}");
        assert!(err.contains("cannot read kubeconfig"), "{err}");
    }

    #[test]
    fn kubeconfig_with_plain_http_server_is_accepted() {
        let dir = std::env::temp_dir().join(format!("portico-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kubeconfig");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:1\"}}]\n\
             users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
             current-context: x\n",
        )
        .unwrap();
        let cfg = KubernetesConfig {
            kubeconfig: Some(file),
            ..KubernetesConfig::default()
        };
        let c = rt().block_on(config(&cfg)).unwrap();
        assert_eq!(c.cluster_url.to_string(), "http://127.0.0.1:1/");
        std::fs::remove_dir_all(&dir).ok();
    }
}
