//! LoadBalancer Service addresses from a control-plane plugin
//! (`portico_service_load_balancer`, control ABI v1), in place of the
//! built-in pool (`kubernetes.load_balancer_pool`) when
//! `kubernetes.load_balancer_plugin` names a plugin.
//!
//! Input (JSON), every LoadBalancer Service this gateway implements,
//! oldest first, so an allocator can keep addresses stable:
//! `{"services": [{"namespace", "name", "loadBalancerIP", "annotations",
//!   "current": ["ip or hostname", ...]}], "nodeAddresses": ["ip", ...]}`
//!
//! Answer: `{"services": [{"namespace", "name", "addresses": [...]}],
//! "problems": [{"namespace", "name", "message"}]}`. Every Service named
//! must be one of the input's, each address an IP or a DNS name (at most
//! 16 per Service), nothing else. A Service the answer leaves out keeps
//! the status it has. An answer that does not fit is refused as a whole
//! (logged, counted); no status changes then.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use super::control::ControlClient;
use super::reload::RegistryHandle;

pub const HOOK: &str = "portico_service_load_balancer";

pub use portico_model::control::{LbAnswer, LbService, LoadBalancerAddresses};

pub struct WasmLbAddresses {
    client: ControlClient,
}

static INSTALLED: OnceLock<Arc<WasmLbAddresses>> = OnceLock::new();

/// Makes the named plugin this process's LoadBalancer address allocator.
pub fn install(plugin: &str, registry: RegistryHandle) {
    let _ = INSTALLED.set(Arc::new(WasmLbAddresses {
        // Called from a blocking task, so the allocator may ask an
        // external load-balancer API.
        client: ControlClient::new(plugin.to_string(), registry).allow_blocking_calls(),
    }));
}

pub fn installed() -> Option<Arc<WasmLbAddresses>> {
    INSTALLED.get().cloned()
}

fn valid_address(a: &str) -> bool {
    a.parse::<IpAddr>().is_ok()
        || (!a.is_empty()
            && a.len() <= 253
            && a.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }))
}

/// Checks an answer against the schema and the input.
pub fn parse_answer(bytes: &[u8], asked: &[LbService]) -> Result<LbAnswer, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("answer is not a JSON object")?;
    if let Some(k) = obj.keys().find(|k| *k != "services" && *k != "problems") {
        return Err(format!(
            "answer has unknown field {k:?} (expected services, problems)"
        ));
    }
    let known = |ns: &str, name: &str| asked.iter().any(|s| s.namespace == ns && s.name == name);
    let text = |e: &Value, k: &str, at: &str| -> Result<String, String> {
        e.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{at}.{k} must be a string"))
    };
    let mut out = LbAnswer::default();
    for (i, e) in obj
        .get("services")
        .and_then(Value::as_array)
        .ok_or("answer.services must be an array")?
        .iter()
        .enumerate()
    {
        let at = format!("answer.services[{i}]");
        let (ns, name) = (text(e, "namespace", &at)?, text(e, "name", &at)?);
        if !known(&ns, &name) {
            return Err(format!("{at}: Service {ns}/{name} was not asked about"));
        }
        let addrs: Vec<String> = e
            .get("addresses")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{at}.addresses must be an array"))?
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{at}.addresses must be strings"))?;
        if addrs.len() > 16 {
            return Err(format!("{at}: more than 16 addresses"));
        }
        if let Some(bad) = addrs.iter().find(|a| !valid_address(a)) {
            return Err(format!(
                "{at}: {bad:?} is neither an IP address nor a DNS name"
            ));
        }
        out.addresses.insert((ns, name), addrs);
    }
    for (i, e) in obj
        .get("problems")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let at = format!("answer.problems[{i}]");
        out.problems.push((
            text(e, "namespace", &at)?,
            text(e, "name", &at)?,
            text(e, "message", &at)?,
        ));
    }
    Ok(out)
}

impl LoadBalancerAddresses for WasmLbAddresses {
    fn name(&self) -> &str {
        &self.client.plugin
    }

    /// Asks the plugin; `Err` (logged and counted) when the call fails or
    /// the answer does not fit.
    fn allocate(&self, services: &[LbService], node: &[IpAddr]) -> Result<LbAnswer, String> {
        let input = json!({
            "services": services.iter().map(|s| json!({
                "namespace": s.namespace,
                "name": s.name,
                "loadBalancerIP": s.load_balancer_ip,
                "annotations": s.annotations,
                "current": s.current,
            })).collect::<Vec<_>>(),
            "nodeAddresses": node.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
        .to_string();
        let answer = self
            .client
            .ask(HOOK, input.as_bytes())
            .and_then(|out| parse_answer(&out, services));
        if let Err(e) = &answer {
            self.client.count_error(HOOK);
            tracing::error!(plugin = %self.name(), error = %e, "load-balancer plugin gave no usable answer; LoadBalancer status unchanged");
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn svc(name: &str) -> LbService {
        LbService {
            namespace: "ns".into(),
            name: name.into(),
            load_balancer_ip: None,
            annotations: BTreeMap::new(),
            current: Vec::new(),
        }
    }

    #[test]
    fn answers_are_checked_against_the_schema_and_the_question() {
        let asked = [svc("a"), svc("b")];
        let ok = parse_answer(
            br#"{"services": [{"namespace": "ns", "name": "a", "addresses": ["192.0.2.1", "lb.example.com"]}],
                 "problems": [{"namespace": "ns", "name": "b", "message": "pool empty"}]}"#,
            &asked,
        )
        .unwrap();
        assert_eq!(
            ok.addresses[&("ns".to_string(), "a".to_string())],
            vec!["192.0.2.1", "lb.example.com"]
        );
        assert_eq!(ok.problems.len(), 1);
        for (bad, why) in [
            (
                &br#"{"services": [{"namespace": "ns", "name": "zz", "addresses": []}]}"#[..],
                "not asked about",
            ),
            (
                br#"{"services": [{"namespace": "ns", "name": "a", "addresses": ["a b"]}]}"#,
                "neither an IP",
            ),
            (
                br#"{"services": [{"namespace": "ns", "name": "a", "addresses": [1]}]}"#,
                "must be strings",
            ),
            (br#"{"services": {}}"#, "must be an array"),
            (br#"{"services": [], "extra": 1}"#, "unknown field"),
        ] {
            let err = parse_answer(bad, &asked).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
