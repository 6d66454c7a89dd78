//! Problems found in configuration and manifests, each naming where it is.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object (or part of it) is ignored; `portico check` exits 1.
    Error,
    /// Served, but probably not what the author meant.
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// `file:line` for manifests and config, `namespace/name` (with the kind)
    /// for objects.
    pub location: String,
    pub message: String,
    /// A CamelCase reason for Kubernetes Events (`TLSSecretInvalid`); the
    /// generic one is used when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Problem {
    pub fn error(location: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            location: location.into(),
            message: message.into(),
            reason: None,
        }
    }

    pub fn warning(location: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            location: location.into(),
            message: message.into(),
            reason: None,
        }
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: {}", self.location, self.message)
    }
}

/// Logs (and counts) the problems not in `already`; returns `problems` as
/// the new `already`. Sources call it on every publish so that each problem
/// is logged once, when it appears.
pub fn log_new(problems: &[Problem], already: &[Problem]) -> Vec<Problem> {
    let known: std::collections::BTreeSet<&Problem> = already.iter().collect();
    for p in problems.iter().filter(|p| !known.contains(p)) {
        let sev = if p.is_error() { "error" } else { "warning" };
        metrics::counter!("portico_config_problems_total", "severity" => sev).increment(1);
        if p.is_error() {
            tracing::error!(location = %p.location, "{}", p.message);
        } else {
            tracing::warn!(location = %p.location, "{}", p.message);
        }
    }
    problems.to_vec()
}
