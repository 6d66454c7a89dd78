//! IngressClass selection by a control-plane plugin
//! (`portico_admit_ingress`, control ABI v1), in place of the built-in
//! rules when `ingress.admission` names a plugin.
//!
//! Input (JSON):
//! `{"ingress": {"namespace", "name", "ingressClassName", "annotations"},
//!   "classes": [{"name", "controller", "isDefault"}],
//!   "settings": {"controller", "acceptedClasses", "watchWithoutClass"}}`
//! (`settings` is the `[ingress]` config section).
//!
//! Answer: `{"admit": <bool>, "reason": <non-empty string>}`, nothing
//! else. An answer that does not fit, a failed call or a plugin that is
//! not loaded leaves the Ingress unserved, with the reason logged and
//! counted (`portico_plugin_control_errors_total`).

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{json, Value};

use super::control::ControlClient;
use super::reload::RegistryHandle;
use crate::config::IngressConfig;
use portico_model::control::{Admission, IngressAdmission, DEFAULT_CLASS_ANNOTATION};

pub const HOOK: &str = "portico_admit_ingress";

/// Asks the named plugin of the current registry.
pub struct WasmAdmission {
    client: ControlClient,
    pub settings: IngressConfig,
}

impl WasmAdmission {
    pub fn new(plugin: String, registry: RegistryHandle, settings: IngressConfig) -> Self {
        WasmAdmission {
            client: ControlClient::new(plugin, registry),
            settings,
        }
    }

    pub fn plugin(&self) -> &str {
        &self.client.plugin
    }

    fn input(&self, ingress: &Ingress, classes: &[&IngressClass]) -> Value {
        let meta = &ingress.metadata;
        json!({
            "ingress": {
                "namespace": meta.namespace.as_deref().unwrap_or("default"),
                "name": meta.name.as_deref().unwrap_or(""),
                "ingressClassName": ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()),
                "annotations": meta.annotations.clone().unwrap_or_default(),
            },
            "classes": classes.iter().map(|c| json!({
                "name": c.metadata.name.as_deref().unwrap_or(""),
                "controller": c.spec.as_ref().and_then(|s| s.controller.as_deref()).unwrap_or(""),
                "isDefault": c.metadata.annotations.as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true"),
            })).collect::<Vec<_>>(),
            "settings": {
                "controller": self.settings.controller,
                "acceptedClasses": self.settings.accepted_classes,
                "watchWithoutClass": self.settings.watch_without_class,
            },
        })
    }

    fn ask(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        self.client.ask(HOOK, input)
    }
}

/// Checks an answer against the schema: `{"admit": bool, "reason":
/// non-empty string}`, no other keys.
pub fn parse_answer(bytes: &[u8]) -> Result<(bool, String), String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("answer is not a JSON object")?;
    if let Some(k) = obj.keys().find(|k| *k != "admit" && *k != "reason") {
        return Err(format!(
            "answer has unknown field {k:?} (expected admit, reason)"
        ));
    }
    let admit = obj
        .get("admit")
        .and_then(Value::as_bool)
        .ok_or("answer.admit must be true or false")?;
    let reason = obj
        .get("reason")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty() && r.len() <= 1024)
        .ok_or("answer.reason must be a non-empty string of at most 1024 bytes")?;
    Ok((admit, reason.to_string()))
}

impl IngressAdmission for WasmAdmission {
    fn admit(&self, ingress: &Ingress, classes: &[&IngressClass]) -> Admission {
        let input = self.input(ingress, classes).to_string();
        let answer = self
            .ask(input.as_bytes())
            .and_then(|out| parse_answer(&out));
        match answer {
            Ok((true, reason)) => Admission::Admit(reason),
            Ok((false, reason)) => Admission::Ignore(reason),
            Err(e) => {
                self.client.count_error(HOOK);
                let who = format!(
                    "{}/{}",
                    ingress.metadata.namespace.as_deref().unwrap_or("default"),
                    ingress.metadata.name.as_deref().unwrap_or("")
                );
                tracing::error!(plugin = %self.plugin(), ingress = %who, error = %e, "admission plugin gave no usable answer; Ingress not served");
                Admission::Ignore(format!("admission plugin {}: {e}", self.plugin()))
            }
        }
    }
}

static INSTALLED: std::sync::OnceLock<Arc<WasmAdmission>> = std::sync::OnceLock::new();

/// Makes the named plugin this process's admission (`ingress.admission`):
/// every `Settings` built afterwards asks it.
pub fn install(plugin: &str, registry: RegistryHandle, settings: IngressConfig) {
    let _ = INSTALLED.set(Arc::new(WasmAdmission::new(
        plugin.to_string(),
        registry,
        settings,
    )));
}

/// The admission for `ingress.admission = plugin`: the installed one, or,
/// if this process did not load plugins, one that serves nothing and
/// says why.
pub fn for_plugin(plugin: &str) -> Box<dyn IngressAdmission> {
    match INSTALLED.get() {
        Some(a) if a.plugin() == plugin => Box::new(a.clone()),
        _ => Box::new(NotLoaded(plugin.to_string())),
    }
}

struct NotLoaded(String);

impl IngressAdmission for NotLoaded {
    fn admit(&self, _: &Ingress, _: &[&IngressClass]) -> Admission {
        Admission::Ignore(format!("admission plugin {} is not loaded", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_against_the_schema() {
        assert_eq!(
            parse_answer(br#"{"admit": true, "reason": "ours"}"#),
            Ok((true, "ours".to_string()))
        );
        for (bad, why) in [
            (&b"nope"[..], "not JSON"),
            (br#"[1]"#, "not a JSON object"),
            (br#"{"admit": "yes", "reason": "x"}"#, "admit must be"),
            (br#"{"admit": true}"#, "reason must be"),
            (br#"{"admit": true, "reason": "  "}"#, "reason must be"),
            (
                br#"{"admit": true, "reason": "x", "class": "y"}"#,
                "unknown field \"class\"",
            ),
        ] {
            let err = parse_answer(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
