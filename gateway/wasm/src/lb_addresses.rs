//! LoadBalancer Service and Gateway addresses from a control-plane plugin
//! (`portico_service_load_balancer`, control ABI v1), in place of the
//! built-in pool (`kubernetes.load_balancer_pool`) when
//! `kubernetes.load_balancer_plugin` names a plugin.
//!
//! Input (JSON), every LoadBalancer Service this gateway implements and
//! every Gateway of its classes (with the address it asks for, if any, as
//! `loadBalancerIP`), oldest first, so an allocator can keep addresses
//! stable:
//! `{"services": [{"namespace", "name", "loadBalancerIP", "annotations",
//!   "current": ["ip or hostname", ...]}], "nodeAddresses": ["ip", ...],
//!   "gateways": [{"namespace", "name", "loadBalancerIP", "annotations",
//!   "current": ["ip", ...]}]}`
//!
//! Answer: `{"services": [{"namespace", "name", "addresses": [...]}],
//! "problems": [{"namespace", "name", "message"}], "gateways": [...],
//! "gatewayProblems": [...]}` (the last two optional, shaped like the
//! first two). Every Service or Gateway named must be one of the input's,
//! each address an IP or a DNS name (at most 16 each; for a Gateway an
//! IP), nothing else. One the answer leaves out keeps the status it has.
//! An answer that does not fit is refused as a whole (logged, counted);
//! no status changes then.

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

fn text(e: &Value, k: &str, at: &str) -> Result<String, String> {
    e.get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{at}.{k} must be a string"))
}

/// (namespace, name) and the addresses an answer gives it.
type Assignment = ((String, String), Vec<String>);

/// The `field` list of assignments, each asked about and valid.
fn assignments(
    obj: &serde_json::Map<String, Value>,
    field: &str,
    kind: &str,
    asked: &[LbService],
    valid: fn(&str) -> bool,
) -> Result<Vec<Assignment>, String> {
    let list = match obj.get(field) {
        // Gateways are optional: a plugin may not allocate for them.
        None if field == "gateways" => return Ok(Vec::new()),
        v => v
            .and_then(Value::as_array)
            .ok_or_else(|| format!("answer.{field} must be an array"))?,
    };
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let at = format!("answer.{field}[{i}]");
        let (ns, name) = (text(e, "namespace", &at)?, text(e, "name", &at)?);
        if !asked.iter().any(|s| s.namespace == ns && s.name == name) {
            return Err(format!("{at}: {kind} {ns}/{name} was not asked about"));
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
        if let Some(bad) = addrs.iter().find(|a| !valid(a)) {
            return Err(format!("{at}: {bad:?} is not an address a {kind} can have"));
        }
        out.push(((ns, name), addrs));
    }
    Ok(out)
}

fn problems(
    obj: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Vec<(String, String, String)>, String> {
    obj.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("answer.{field}[{i}]");
            Ok((
                text(e, "namespace", &at)?,
                text(e, "name", &at)?,
                text(e, "message", &at)?,
            ))
        })
        .collect()
}

/// Checks an answer against the schema and the input.
pub fn parse_answer(
    bytes: &[u8],
    asked: &[LbService],
    gateways: &[LbService],
) -> Result<LbAnswer, String> {
    const FIELDS: [&str; 4] = ["services", "problems", "gateways", "gatewayProblems"];
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("answer is not a JSON object")?;
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "answer has unknown field {k:?} (expected {})",
            FIELDS.join(", ")
        ));
    }
    let mut out = LbAnswer {
        addresses: assignments(obj, "services", "Service", asked, valid_address)?
            .into_iter()
            .collect(),
        problems: problems(obj, "problems")?,
        gateway_problems: problems(obj, "gatewayProblems")?,
        ..LbAnswer::default()
    };
    let is_ip = |a: &str| a.parse::<IpAddr>().is_ok();
    for (key, addrs) in assignments(obj, "gateways", "Gateway", gateways, is_ip)? {
        let ips = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        out.gateway_addresses.insert(key, ips);
    }
    Ok(out)
}

impl LoadBalancerAddresses for WasmLbAddresses {
    fn name(&self) -> &str {
        &self.client.plugin
    }

    /// Asks the plugin; `Err` (logged and counted) when the call fails or
    /// the answer does not fit.
    fn allocate(
        &self,
        services: &[LbService],
        gateways: &[LbService],
        node: &[IpAddr],
    ) -> Result<LbAnswer, String> {
        let each = |list: &[LbService]| {
            list.iter()
                .map(|s| {
                    json!({
                        "namespace": s.namespace,
                        "name": s.name,
                        "loadBalancerIP": s.load_balancer_ip,
                        "annotations": s.annotations,
                        "current": s.current,
                    })
                })
                .collect::<Vec<_>>()
        };
        let input = json!({
            "services": each(services),
            "nodeAddresses": node.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "gateways": each(gateways),
        })
        .to_string();
        let answer = self
            .client
            .ask(HOOK, input.as_bytes())
            .and_then(|out| parse_answer(&out, services, gateways));
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
            &[],
        )
        .unwrap();
        assert_eq!(
            ok.addresses[&("ns".to_string(), "a".to_string())],
            vec!["192.0.2.1", "lb.example.com"]
        );
        assert_eq!(ok.problems.len(), 1);
        assert!(ok.gateway_addresses.is_empty());
        for (bad, why) in [
            (
                &br#"{"services": [{"namespace": "ns", "name": "zz", "addresses": []}]}"#[..],
                "not asked about",
            ),
            (
                br#"{"services": [{"namespace": "ns", "name": "a", "addresses": ["a b"]}]}"#,
                "is not an address a Service can have",
            ),
            (
                br#"{"services": [{"namespace": "ns", "name": "a", "addresses": [1]}]}"#,
                "must be strings",
            ),
            (br#"{"services": {}}"#, "must be an array"),
            (br#"{"services": [], "extra": 1}"#, "unknown field"),
        ] {
            let err = parse_answer(bad, &asked, &[]).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn gateway_answers_are_ip_addresses_for_gateways_asked_about() {
        let (asked, gateways) = ([svc("a")], [svc("gw")]);
        let ok = parse_answer(
            br#"{"services": [], "gateways": [{"namespace": "ns", "name": "gw", "addresses": ["192.0.2.9"]}],
                 "gatewayProblems": [{"namespace": "ns", "name": "gw", "message": "m"}]}"#,
            &asked,
            &gateways,
        )
        .unwrap();
        assert_eq!(
            ok.gateway_addresses[&("ns".to_string(), "gw".to_string())],
            ["192.0.2.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(ok.gateway_problems.len(), 1);
        for (bad, why) in [
            (
                &br#"{"services": [], "gateways": [{"namespace": "ns", "name": "gw", "addresses": ["lb.example.com"]}]}"#[..],
                "\"lb.example.com\" is not an address a Gateway can have",
            ),
            // A Service's name is not a Gateway's.
            (
                br#"{"services": [], "gateways": [{"namespace": "ns", "name": "a", "addresses": ["192.0.2.9"]}]}"#,
                "Gateway ns/a was not asked about",
            ),
            (br#"{"services": [], "gateways": {}}"#, "answer.gateways must be an array"),
        ] {
            let err = parse_answer(bad, &asked, &gateways).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
