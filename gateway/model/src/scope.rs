//! Where a scoped listener plugin applies (`plugins.load[].applies_to`):
//! matched against Ingresses and Services when the snapshot is built.

use serde::{Deserialize, Serialize};

/// Where a scoped listener plugin runs: on a route whose Ingress, or whose
/// Service, matches any of these (an L4 connection: its Service). A scoped
/// plugin runs after routing, before the plugins the Ingress and the
/// Service ask for (`portico.io/plugins`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PluginScope {
    /// The Ingress has one of these annotations (any value).
    #[serde(default)]
    pub ingress_annotations: Vec<String>,
    /// The Service has one of these annotations (any value).
    #[serde(default)]
    pub service_annotations: Vec<String>,
    /// The Service's `spec.sessionAffinity` is one of these (`ClientIP`).
    #[serde(default)]
    pub service_session_affinity: Vec<String>,
}

impl PluginScope {
    /// Whether the scope names nothing (the plugin would run nowhere).
    pub fn is_empty(&self) -> bool {
        self.ingress_annotations.is_empty()
            && self.service_annotations.is_empty()
            && self.service_session_affinity.is_empty()
    }
}
