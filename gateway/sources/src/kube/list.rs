//! One-shot reads of the cluster for commands that do not serve
//! (`portico rbac`, `portico convert`): the objects translation needs to
//! decide which Ingresses are admitted and what they name.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::ListParams;
use kube::Api;

use crate::config::KubernetesConfig;
use portico_model::store::{AnyObject, Store};

/// Ingresses and Services (in `kubernetes.namespace`, else all) and
/// IngressClasses, as a store. Errors say which list failed and why.
pub async fn ingresses(cfg: &KubernetesConfig) -> Result<Store, String> {
    let client = super::client::client(super::client::config(cfg).await?)?;
    let ingresses: Api<Ingress> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let services: Api<Service> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let classes: Api<IngressClass> = Api::all(client);
    let lp = ListParams::default();
    let mut store = Store::default();
    for i in ingresses
        .list(&lp)
        .await
        .map_err(|e| format!("cannot list Ingresses: {e}"))?
    {
        store.insert(AnyObject::Ingress(Arc::new(i)), None);
    }
    for c in classes
        .list(&lp)
        .await
        .map_err(|e| format!("cannot list IngressClasses: {e}"))?
    {
        store.insert(AnyObject::IngressClass(Arc::new(c)), None);
    }
    for s in services
        .list(&lp)
        .await
        .map_err(|e| format!("cannot list Services: {e}"))?
    {
        store.insert(AnyObject::Service(Arc::new(s)), None);
    }
    Ok(store)
}
