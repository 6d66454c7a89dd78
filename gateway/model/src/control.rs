//! The control-plane extension points, as traits: translation and the
//! status writer call them, the Wasm plugin host implements them, and the
//! binary wires one to the other. So translation stays pure and testable
//! with tables, and no layer below the binary knows about Wasm.
//!
//! - [`IngressAdmission`]: which Ingresses this gateway serves. The
//!   shipped `ingress-class` plugin implements the Kubernetes IngressClass
//!   rules (`ingress.admission`). Without one every Ingress is served:
//!   right for a folder of manifests, and announced with a warning when
//!   reading a cluster shared with other controllers.
//! - [`IngressPolicy`]: an Ingress's typed route policy from its
//!   annotations (`ingress.policy_plugin`).
//! - [`LoadBalancerAddresses`]: the addresses of LoadBalancer Services
//!   and of Gateways that ask for none of their own
//!   (`kubernetes.load_balancer_plugin`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::policy::CheckedPolicy;

/// An Ingress's typed route policy.
pub trait IngressPolicy: Send + Sync {
    /// The policy for an Ingress, and the problems with it (error?,
    /// message). `Err` when no policy could be had.
    fn policy(
        &self,
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
        tls: bool,
    ) -> Result<(CheckedPolicy, Vec<(bool, String)>), String>;
}

/// One Service (or Gateway), as the allocator sees it.
#[derive(Debug, Clone)]
pub struct LbService {
    pub namespace: String,
    pub name: String,
    pub load_balancer_ip: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub current: Vec<String>,
}

/// What the allocator decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbAnswer {
    /// Services: (namespace, name) → addresses.
    pub addresses: BTreeMap<(String, String), Vec<String>>,
    /// (namespace, name, message).
    pub problems: Vec<(String, String, String)>,
    /// Gateways: (namespace, name) → IP addresses. A Gateway left out
    /// keeps what it has.
    pub gateway_addresses: BTreeMap<(String, String), Vec<IpAddr>>,
    pub gateway_problems: Vec<(String, String, String)>,
}

/// The addresses of LoadBalancer Services and of Gateways that ask for
/// none of their own (no `spec.addresses` value). May wait (an external
/// API).
pub trait LoadBalancerAddresses: Send + Sync {
    /// Who decides, for logs.
    fn name(&self) -> &str;
    /// `Err` (already logged and counted) when there is no usable answer.
    fn allocate(
        &self,
        services: &[LbService],
        gateways: &[LbService],
        node: &[IpAddr],
    ) -> Result<LbAnswer, String>;
}

pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admit(String),
    Ignore(String),
}

pub trait IngressAdmission: Send + Sync {
    fn admit(&self, ingress: &Ingress, classes: &[&IngressClass]) -> Admission;
}

impl<T: IngressAdmission + ?Sized> IngressAdmission for std::sync::Arc<T> {
    fn admit(&self, ingress: &Ingress, classes: &[&IngressClass]) -> Admission {
        (**self).admit(ingress, classes)
    }
}

/// `ingress.admission` unset: every Ingress is ours.
pub struct AdmitAll;

impl IngressAdmission for AdmitAll {
    fn admit(&self, _: &Ingress, _: &[&IngressClass]) -> Admission {
        Admission::Admit("ingress.admission is unset: every Ingress is served".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_plugin_every_ingress_is_admitted() {
        let ing = Ingress {
            spec: Some(k8s_openapi::api::networking::v1::IngressSpec {
                ingress_class_name: Some("someone-else".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(AdmitAll.admit(&ing, &[]), Admission::Admit(_)));
    }
}
