//! Kubernetes label selectors (`matchLabels`, `matchExpressions`), as a
//! Gateway listener's `allowedRoutes.namespaces.selector` uses them to
//! pick the namespaces whose routes may attach.

use std::collections::BTreeMap;

/// A selector checked once, at translation: operators and values are
/// known good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    labels: BTreeMap<String, String>,
    expressions: Vec<Expression>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    /// `expressions` are (key, operator, values). Errors name the
    /// expression at fault, as the API server's validation would.
    pub fn new(
        labels: BTreeMap<String, String>,
        expressions: &[(String, String, Vec<String>)],
    ) -> Result<Self, String> {
        let mut checked = Vec::with_capacity(expressions.len());
        for (i, (key, op, values)) in expressions.iter().enumerate() {
            let at = format!("matchExpressions[{i}]");
            let e = match op.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!("{at}: operator {op} needs values"))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!("{at}: operator {op} takes no values"))
                }
                "In" => Expression::In(key.clone(), values.clone()),
                "NotIn" => Expression::NotIn(key.clone(), values.clone()),
                "Exists" => Expression::Exists(key.clone()),
                "DoesNotExist" => Expression::DoesNotExist(key.clone()),
                other => {
                    return Err(format!(
                        "{at}: unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"
                    ))
                }
            };
            checked.push(e);
        }
        Ok(LabelSelector {
            labels,
            expressions: checked,
        })
    }

    /// Whether an object with `labels` is selected. An empty selector
    /// selects everything, as in Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Expression::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> (String, String, Vec<String>) {
        (
            key.into(),
            op.into(),
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let s = LabelSelector::new(
            labels(&[("team", "shop")]),
            &[
                expr("env", "In", &["prod", "staging"]),
                expr("legacy", "DoesNotExist", &[]),
                expr("tier", "NotIn", &["internal"]),
                expr("owner", "Exists", &[]),
            ],
        )
        .unwrap();
        let base = [("team", "shop"), ("env", "prod"), ("owner", "x")];
        assert!(s.matches(&labels(&base)));
        // NotIn holds for a missing key, as in Kubernetes.
        let mut with = base.to_vec();
        with.push(("tier", "public"));
        assert!(s.matches(&labels(&with)));
        for bad in [
            vec![("team", "other"), ("env", "prod"), ("owner", "x")],
            vec![("team", "shop"), ("env", "dev"), ("owner", "x")],
            vec![("team", "shop"), ("owner", "x")],
            vec![("team", "shop"), ("env", "prod")],
            vec![
                ("team", "shop"),
                ("env", "prod"),
                ("owner", "x"),
                ("legacy", ""),
            ],
            vec![
                ("team", "shop"),
                ("env", "prod"),
                ("owner", "x"),
                ("tier", "internal"),
            ],
        ] {
            assert!(!s.matches(&labels(&bad)), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_selector_selects_everything_and_bad_ones_are_named() {
        let all = LabelSelector::new(BTreeMap::new(), &[]).unwrap();
        assert!(all.matches(&BTreeMap::new()));
        assert_eq!(
            LabelSelector::new(BTreeMap::new(), &[expr("a", "In", &[])]).unwrap_err(),
            "matchExpressions[0]: operator In needs values"
        );
        assert_eq!(
            LabelSelector::new(
                BTreeMap::new(),
                &[expr("a", "Exists", &[]), expr("b", "Gt", &["1"])]
            )
            .unwrap_err(),
            "matchExpressions[1]: unknown operator \"Gt\" (In, NotIn, Exists, DoesNotExist)"
        );
        assert!(LabelSelector::new(BTreeMap::new(), &[expr("a", "Exists", &["x"])]).is_err());
    }
}
