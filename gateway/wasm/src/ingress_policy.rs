//! The route-policy control hook (`portico_ingress_policy`): asks the
//! plugin named by `ingress.policy_plugin` for an Ingress's typed policy.
//! The types and the answer's checks are the model's
//! (`portico_model::policy`).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use portico_model::control::IngressPolicy;
use portico_model::policy::{parse_answer, CheckedPolicy};
use serde_json::json;

use super::control::ControlClient;
use super::reload::RegistryHandle;

pub const HOOK: &str = "portico_ingress_policy";

pub struct WasmPolicy {
    client: ControlClient,
}

static INSTALLED: OnceLock<Arc<WasmPolicy>> = OnceLock::new();

pub fn install(plugin: &str, registry: RegistryHandle) {
    let _ = INSTALLED.set(Arc::new(WasmPolicy {
        client: ControlClient::new(plugin.to_string(), registry),
    }));
}

pub fn installed() -> Option<Arc<WasmPolicy>> {
    INSTALLED.get().cloned()
}

impl IngressPolicy for WasmPolicy {
    /// The policy for an Ingress, and the plugin's problems with it
    /// (error?, message). `Err` when the call fails or the answer does
    /// not fit (counted).
    fn policy(
        &self,
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
        tls: bool,
    ) -> Result<(CheckedPolicy, Vec<(bool, String)>), String> {
        let input = json!({"ingress": {
            "namespace": namespace, "name": name, "annotations": annotations, "tls": tls,
        }})
        .to_string();
        let r = self
            .client
            .ask(HOOK, input.as_bytes())
            .and_then(|out| parse_answer(&out));
        if r.is_err() {
            self.client.count_error(HOOK);
        }
        r
    }
}
