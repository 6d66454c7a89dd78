//! `portico.io/plugins`: the plugins an Ingress (for its routes) or a
//! Service (for every route and L4 listener using it) asks for.

use std::collections::{BTreeMap, BTreeSet};

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
