//! Which Ingresses this gateway serves (IngressClass selection).
//!
//! Behind a trait because it is a control-plane extension point: the Wasm
//! `ingress-class` plugin implements the same decision.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::config::IngressConfig;

pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
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

/// The built-in selection rules, in the order Kubernetes defines them:
/// `spec.ingressClassName`, then the legacy annotation, then the default
/// IngressClass, then (when no default exists) `watch_without_class`.
pub struct NativeClassAdmission {
    pub config: IngressConfig,
}

impl NativeClassAdmission {
    fn ours(&self, class: &IngressClass) -> bool {
        class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(&self.config.controller)
    }

    fn by_name(&self, name: &str, classes: &[&IngressClass], via: &str) -> Admission {
        if let Some(class) = classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
        {
            return if self.ours(class) {
                Admission::Admit(format!(
                    "{via} {name} is an IngressClass of {}",
                    self.config.controller
                ))
            } else {
                Admission::Ignore(format!("{via} {name} belongs to another controller"))
            };
        }
        if self.config.accepted_classes.iter().any(|c| c == name) {
            Admission::Admit(format!("{via} {name} is in ingress.accepted_classes"))
        } else {
            Admission::Ignore(format!(
                "{via} {name} is neither an IngressClass of {} nor in ingress.accepted_classes",
                self.config.controller
            ))
        }
    }
}

impl IngressAdmission for NativeClassAdmission {
    fn admit(&self, ingress: &Ingress, classes: &[&IngressClass]) -> Admission {
        if let Some(name) = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
        {
            return self.by_name(name, classes, "spec.ingressClassName");
        }
        let annotations = ingress.metadata.annotations.as_ref();
        if let Some(name) = annotations.and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)) {
            return self.by_name(name, classes, LEGACY_CLASS_ANNOTATION);
        }
        let defaults: Vec<&&IngressClass> = classes
            .iter()
            .filter(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .map(String::as_str)
                    == Some("true")
            })
            .collect();
        if !defaults.is_empty() {
            return if defaults.iter().any(|c| self.ours(c)) {
                Admission::Admit("no class named; the default IngressClass is ours".into())
            } else {
                Admission::Ignore(
                    "no class named; the default IngressClass is another controller's".into(),
                )
            };
        }
        if self.config.watch_without_class {
            Admission::Admit(
                "no class named and no default IngressClass; ingress.watch_without_class is on"
                    .into(),
            )
        } else {
            Admission::Ignore("no class named and ingress.watch_without_class is off".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressClassSpec, IngressSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn class(name: &str, controller: &str, default: bool) -> IngressClass {
        IngressClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: default
                    .then(|| [(DEFAULT_CLASS_ANNOTATION.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(controller.into()),
                parameters: None,
            }),
        }
    }

    fn ingress(class_name: Option<&str>, annotation: Option<&str>) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("i".into()),
                annotations: annotation
                    .map(|a| [(LEGACY_CLASS_ANNOTATION.to_string(), a.to_string())].into()),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: class_name.map(Into::into),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn admitted(adm: &NativeClassAdmission, ing: &Ingress, classes: &[&IngressClass]) -> bool {
        matches!(adm.admit(ing, classes), Admission::Admit(_))
    }

    #[test]
    fn class_selection_rules() {
        let cfg = IngressConfig {
            accepted_classes: vec!["portico".into(), "nginx".into()],
            ..Default::default()
        };
        let adm = NativeClassAdmission {
            config: cfg.clone(),
        };
        let ours = class("edge", "portico.io/ingress-controller", false);
        let theirs = class("other", "example.com/other", false);
        let classes = [&ours, &theirs];
        assert!(admitted(&adm, &ingress(Some("edge"), None), &classes));
        assert!(!admitted(&adm, &ingress(Some("other"), None), &classes));
        // No IngressClass object, but the name is accepted (migration).
        assert!(admitted(&adm, &ingress(Some("nginx"), None), &classes));
        assert!(!admitted(&adm, &ingress(Some("traefik"), None), &classes));
        // Legacy annotation.
        assert!(admitted(&adm, &ingress(None, Some("nginx")), &classes));
        assert!(admitted(&adm, &ingress(None, Some("edge")), &classes));
        assert!(!admitted(&adm, &ingress(None, Some("other")), &classes));
        // spec wins over the annotation.
        assert!(!admitted(
            &adm,
            &ingress(Some("other"), Some("nginx")),
            &classes
        ));
        // No class: no default → watch_without_class decides.
        assert!(admitted(&adm, &ingress(None, None), &classes));
        let strict = NativeClassAdmission {
            config: IngressConfig {
                watch_without_class: false,
                ..cfg
            },
        };
        assert!(!admitted(&strict, &ingress(None, None), &classes));
        // A default class decides for class-less Ingresses.
        let default_ours = class("edge", "portico.io/ingress-controller", true);
        assert!(admitted(&strict, &ingress(None, None), &[&default_ours]));
        let default_theirs = class("other", "example.com/other", true);
        assert!(!admitted(
            &adm,
            &ingress(None, None),
            &[&default_theirs, &ours]
        ));
    }
}
