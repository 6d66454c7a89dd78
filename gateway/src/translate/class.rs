//! Which Ingresses this gateway serves.
//!
//! The decision is a control-plane extension point: the shipped Wasm
//! `ingress-class` plugin implements the Kubernetes IngressClass rules
//! (`ingress.admission`). Without an admission plugin every Ingress is
//! served: right for a folder of manifests, and announced with a warning
//! when reading a cluster shared with other controllers.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

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
