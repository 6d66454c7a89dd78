//! Which plugins run where, beside the listener-wide ones:
//! `portico.io/plugins`, the plugins an Ingress (for its routes) or a
//! Service (for every route and L4 listener using it) asks for; and the
//! scoped listener plugins (`applies_to`), matched here once per snapshot
//! so the data plane never calls a plugin that has nothing to do.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;

use portico_model::scope::PluginScope;

/// The listener plugins that have an `applies_to`, in listener order
/// (built from `[plugins]` by the binary).
#[derive(Debug, Clone, Default)]
pub struct ScopedPlugins {
    pub http: Vec<(String, PluginScope)>,
    pub tcp: Vec<(String, PluginScope)>,
}

impl ScopedPlugins {
    /// The HTTP plugins an Ingress's routes get for the Ingress itself.
    pub fn for_ingress(&self, annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
        self.http
            .iter()
            .filter(|(_, s)| matches_annotations(&s.ingress_annotations, annotations))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The HTTP plugins (for routes to it) and TCP plugins (for its L4
    /// listeners) a Service gets.
    pub fn for_service(&self, svc: &Service) -> (Vec<String>, Vec<String>) {
        let matching = |list: &[(String, PluginScope)]| -> Vec<String> {
            list.iter()
                .filter(|(_, s)| service_matches(s, svc))
                .map(|(n, _)| n.clone())
                .collect()
        };
        (matching(&self.http), matching(&self.tcp))
    }
}

fn matches_annotations(keys: &[String], annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations.is_some_and(|a| keys.iter().any(|k| a.contains_key(k)))
}

fn service_matches(scope: &PluginScope, svc: &Service) -> bool {
    let affinity = svc
        .spec
        .as_ref()
        .and_then(|s| s.session_affinity.as_deref());
    matches_annotations(
        &scope.service_annotations,
        svc.metadata.annotations.as_ref(),
    ) || affinity.is_some_and(|a| scope.service_session_affinity.iter().any(|v| v == a))
}

/// The annotation.
pub const PLUGINS_ANNOTATION: &str = "portico.io/plugins";

/// The names in `portico.io/plugins: "a, b"`, in order, without repeats,
/// and a message for each name that is not a configured plugin. Unknown
/// names stay in the list, so what uses them answers 500 (HTTP) or is
/// closed (TCP) rather than run without a plugin it relies on.
pub fn requested(
    annotations: Option<&BTreeMap<String, String>>,
    known: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let Some(v) = annotations.and_then(|a| a.get(PLUGINS_ANNOTATION)) else {
        return (Vec::new(), Vec::new());
    };
    let mut names: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !known.contains(name) {
            let loaded = if known.is_empty() {
                "none".to_string()
            } else {
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            problems.push(format!(
                "annotation {PLUGINS_ANNOTATION}: plugin {name:?} is not loaded (plugins.load has {loaded}); what uses it answers 500 until it is"
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    (names, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(ingress: &[&str], service: &[&str], affinity: &[&str]) -> PluginScope {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PluginScope {
            ingress_annotations: v(ingress),
            service_annotations: v(service),
            service_session_affinity: v(affinity),
        }
    }

    fn service(annotations: &[(&str, &str)], affinity: Option<&str>) -> Service {
        let mut svc = Service::default();
        if !annotations.is_empty() {
            svc.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        svc.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            session_affinity: affinity.map(str::to_string),
            ..Default::default()
        });
        svc
    }

    #[test]
    fn scoped_plugins_match_by_annotation_and_affinity_in_listener_order() {
        let scoped = ScopedPlugins {
            http: vec![
                (
                    "affinity".into(),
                    scope(&["x/affinity"], &[], &["ClientIP"]),
                ),
                ("audit".into(), scope(&[], &["x/audit"], &[])),
            ],
            tcp: vec![("affinity-tcp".into(), scope(&[], &[], &["ClientIP"]))],
        };
        let ann: BTreeMap<String, String> =
            [("x/affinity".to_string(), "cookie".to_string())].into();
        assert_eq!(scoped.for_ingress(Some(&ann)), vec!["affinity"]);
        assert!(scoped.for_ingress(None).is_empty());
        let other: BTreeMap<String, String> = [("x/other".to_string(), String::new())].into();
        assert!(scoped.for_ingress(Some(&other)).is_empty());

        let plain = service(&[], None);
        assert_eq!(scoped.for_service(&plain), (vec![], vec![]));
        let none = service(&[], Some("None"));
        assert_eq!(scoped.for_service(&none), (vec![], vec![]));
        let sticky = service(&[("x/audit", "on")], Some("ClientIP"));
        assert_eq!(
            scoped.for_service(&sticky),
            (
                vec!["affinity".to_string(), "audit".to_string()],
                vec!["affinity-tcp".to_string()]
            )
        );
    }

    #[test]
    fn names_in_order_without_repeats_and_unknown_ones_reported() {
        let known: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let ann: BTreeMap<String, String> =
            [(PLUGINS_ANNOTATION.to_string(), " b, a ,b,, zz".to_string())].into();
        let (names, problems) = requested(Some(&ann), &known);
        assert_eq!(names, vec!["b", "a", "zz"]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("\"zz\" is not loaded (plugins.load has a, b)"),
            "{problems:?}"
        );
        assert_eq!(requested(None, &known), (vec![], vec![]));
    }
}
