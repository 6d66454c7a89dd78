//! `ingress-class`: which Ingresses this gateway serves, in the order
//! Kubernetes defines it:
//!
//! 1. `spec.ingressClassName`, then the legacy annotation
//!    `kubernetes.io/ingress.class`: served when that IngressClass has our
//!    controller (`[ingress] controller`), or, with no such IngressClass,
//!    when the name is in `[ingress] accepted_classes` (e.g. `nginx` while
//!    migrating);
//! 2. no class named: served when the default IngressClass is ours;
//! 3. no class named and no default IngressClass: served when
//!    `[ingress] watch_without_class` is on.
//!
//! Set `[ingress] admission = "ingress-class"` to use it.

use portico_sdk::control::{Admit, AdmitRequest, ClassInfo, ControlPlugin};

pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

#[derive(Default)]
pub struct IngressClass;

fn by_name(req: &AdmitRequest, name: &str, via: &str) -> Admit {
    let s = &req.settings;
    let class: Option<&ClassInfo> = req.classes.iter().find(|c| c.name == name);
    let (admit, reason) = match class {
        Some(c) if c.controller == s.controller => (
            true,
            format!("{via} {name} is an IngressClass of {}", s.controller),
        ),
        Some(c) => (
            false,
            format!(
                "{via} {name} belongs to controller {}, not {}",
                c.controller, s.controller
            ),
        ),
        None if s.accepted_classes.iter().any(|c| c == name) => (
            true,
            format!("{via} {name} is in ingress.accepted_classes"),
        ),
        None => (
            false,
            format!(
                "{via} {name} is neither an IngressClass of {} nor in ingress.accepted_classes",
                s.controller
            ),
        ),
    };
    Admit { admit, reason }
}

/// The decision, apart from the ABI (tested on the host).
pub fn decide(req: &AdmitRequest) -> Admit {
    if let Some(name) = req.ingress.ingress_class_name.as_deref() {
        return by_name(req, name, "spec.ingressClassName");
    }
    if let Some(name) = req.ingress.annotations.get(LEGACY_CLASS_ANNOTATION) {
        return by_name(req, name, LEGACY_CLASS_ANNOTATION);
    }
    let defaults: Vec<&ClassInfo> = req.classes.iter().filter(|c| c.is_default).collect();
    let s = &req.settings;
    let (admit, reason) = if !defaults.is_empty() {
        if defaults.iter().any(|c| c.controller == s.controller) {
            (true, "no class named; the default IngressClass is ours".to_string())
        } else {
            (
                false,
                "no class named; the default IngressClass is another controller's".to_string(),
            )
        }
    } else if s.watch_without_class {
        (
            true,
            "no class named and no default IngressClass; ingress.watch_without_class is on"
                .to_string(),
        )
    } else {
        (
            false,
            "no class named and ingress.watch_without_class is off".to_string(),
        )
    };
    Admit { admit, reason }
}

impl ControlPlugin for IngressClass {
    fn admit_ingress(&mut self, req: AdmitRequest) -> Result<Admit, String> {
        Ok(decide(&req))
    }
}

portico_sdk::control_plugin!(IngressClass);

#[cfg(test)]
mod tests {
    use super::*;
    use portico_sdk::control::{AdmissionSettings, IngressRef};

    fn class(name: &str, controller: &str, default: bool) -> ClassInfo {
        ClassInfo {
            name: name.into(),
            controller: controller.into(),
            is_default: default,
        }
    }

    fn req(class_name: Option<&str>, legacy: Option<&str>, classes: Vec<ClassInfo>, watch: bool) -> AdmitRequest {
        AdmitRequest {
            ingress: IngressRef {
                namespace: "default".into(),
                name: "web".into(),
                ingress_class_name: class_name.map(Into::into),
                annotations: legacy
                    .map(|l| [(LEGACY_CLASS_ANNOTATION.to_string(), l.to_string())].into())
                    .unwrap_or_default(),
            },
            classes,
            settings: AdmissionSettings {
                controller: "portico.io/ingress-controller".into(),
                accepted_classes: vec!["portico".into(), "nginx".into()],
                watch_without_class: watch,
            },
        }
    }

    const OURS: &str = "portico.io/ingress-controller";

    #[test]
    fn the_kubernetes_order() {
        let classes = || vec![class("portico", OURS, false), class("other", "x.io/c", true)];
        // By name: our class, another's, accepted without an object, unknown.
        assert!(decide(&req(Some("portico"), None, classes(), false)).admit);
        assert!(!decide(&req(Some("other"), None, classes(), true)).admit);
        assert!(decide(&req(Some("nginx"), None, classes(), false)).admit);
        assert!(!decide(&req(Some("zzz"), None, classes(), true)).admit);
        // The spec field wins over the legacy annotation.
        assert!(!decide(&req(Some("other"), Some("portico"), classes(), true)).admit);
        assert!(decide(&req(None, Some("portico"), classes(), false)).admit);
        // No class: the default decides, then watch_without_class.
        assert!(!decide(&req(None, None, classes(), true)).admit);
        let ours_default = vec![class("portico", OURS, true)];
        assert!(decide(&req(None, None, ours_default, false)).admit);
        assert!(decide(&req(None, None, vec![], true)).admit);
        let no = decide(&req(None, None, vec![], false));
        assert!(!no.admit && no.reason.contains("watch_without_class is off"));
    }
}
