//! `cloud-lb`: addresses for LoadBalancer Services on bare metal.
//!
//! Configuration (JSON, the `config` of its `[[plugins.load]]` entry):
//!
//! ```json
//! {"pools": {"default": ["198.51.100.10", "198.51.100.11"],
//!            "internal": ["10.0.0.10"]}}
//! ```
//!
//! For each Service, oldest first:
//!
//! 1. `spec.loadBalancerIP`, when set, is the address (it is the user's);
//! 2. otherwise the pool is `internal` when the Service asks for an
//!    internal load balancer the way a cloud would have it, else
//!    `default`:
//!    - AWS: `service.beta.kubernetes.io/aws-load-balancer-internal: "true"`
//!      or `service.beta.kubernetes.io/aws-load-balancer-scheme: internal`;
//!    - Azure: `service.beta.kubernetes.io/azure-load-balancer-internal: "true"`;
//!    - GCP: `networking.gke.io/load-balancer-type: Internal` (or the older
//!      `cloud.google.com/load-balancer-type: Internal`);
//!    - Alibaba: `service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type: intranet`;
//! 3. an address the Service already has from that pool stays with it, so
//!    addresses never move while their Service exists;
//! 4. otherwise the first free address of the pool; a pool with no free
//!    address is reported (the Service keeps its status);
//! 5. with no pools configured at all, the edge node's addresses.
//!
//! Gateways (`gateways` in the request) get addresses the same way, after
//! the Services (the same annotations choose the `internal` pool), so a
//! Service and a Gateway never share one; a Gateway that asks for an
//! address has it as `loadBalancerIP`, which is then taken. With no pools
//! they get none: Portico serves them at its own addresses.
//!
//! With `api`, an external load-balancer API (a cloud's, or an IPAM)
//! decides instead of the pools:
//!
//! ```json
//! {"api": {"url": "https://ipam.example:8443/v1/allocate",
//!          "headers": {"authorization": "Bearer ..."}, "timeoutMs": 3000,
//!          "caPem": "-----BEGIN CERTIFICATE-----\n..."}}
//! ```
//!
//! `https://` URLs are verified against the gateway host's trusted CAs,
//! or only against `caPem` when it is set; `http://` works too.
//!
//! Each time statuses are reconciled, the plugin POSTs the whole request
//! as JSON (every Service with its `namespace`, `name`, `loadBalancerIP`,
//! `annotations`, `current` addresses and the `pool` it would get here:
//! `default` or `internal`; and `nodeAddresses`), and the API answers
//! with a 2xx and `{"services": [{"namespace", "name", "addresses"}],
//! "problems": [{"namespace", "name", "message"}]}`, which the gateway
//! checks like any answer. Any other answer, or none within the timeout,
//! is an error: statuses stay as they are and the error is logged.

use std::collections::{BTreeMap, BTreeSet};

use portico_sdk::control::{
    ControlPlugin, HttpRequest, LoadBalancerAnswer, LoadBalancerAssignment, LoadBalancerProblem,
    LoadBalancerRequest, LoadBalancerService,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub pools: BTreeMap<String, Vec<String>>,
    /// An external API that allocates instead of the pools.
    #[serde(default)]
    pub api: Option<Api>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Api {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: u64,
    /// CA certificates (PEM) an `https://` API's certificate must chain to.
    #[serde(default)]
    pub ca_pem: String,
}

/// The body POSTed to the API: the request, each Service with its pool.
pub fn api_request(req: &LoadBalancerRequest) -> serde_json::Value {
    let with_pools = |list: &[LoadBalancerService]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["pool"] = pool_of(s).into();
                v
            })
            .collect()
    };
    serde_json::json!({
        "services": with_pools(&req.services),
        "nodeAddresses": req.node_addresses,
        "gateways": with_pools(&req.gateways),
    })
}

/// The API's answer, checked for status and shape (the gateway checks
/// the addresses).
pub fn api_answer(api: &Api, status: u16, body: &str) -> Result<LoadBalancerAnswer, String> {
    if !(200..300).contains(&status) {
        let excerpt: String = body.chars().take(200).collect();
        return Err(format!(
            "load-balancer API {} answered {status}: {excerpt}",
            api.url
        ));
    }
    serde_json::from_str(body)
        .map_err(|e| format!("load-balancer API {}: answer does not decode: {e}", api.url))
}

fn ask_api(api: &Api, req: &LoadBalancerRequest) -> Result<LoadBalancerAnswer, String> {
    let mut headers = api.headers.clone();
    headers.insert("content-type".into(), "application/json".into());
    let answer = portico_sdk::control::http_call(&HttpRequest {
        method: "POST".into(),
        url: api.url.clone(),
        headers,
        body: api_request(req).to_string(),
        timeout_ms: api.timeout_ms,
        ca_pem: api.ca_pem.clone(),
    })
    .map_err(|e| format!("load-balancer API {}: {e}", api.url))?;
    api_answer(api, answer.status, &answer.body)
}

#[derive(Default)]
pub struct CloudLb {
    pub config: Config,
}

/// Whether the Service asks for an internal load balancer, in any of the
/// clouds' spellings.
pub fn wants_internal(annotations: &BTreeMap<String, String>) -> bool {
    let is = |k: &str, v: &str| {
        annotations
            .get(k)
            .map_or(false, |x| x.trim().eq_ignore_ascii_case(v))
    };
    is("service.beta.kubernetes.io/aws-load-balancer-internal", "true")
        || is("service.beta.kubernetes.io/aws-load-balancer-scheme", "internal")
        || is("service.beta.kubernetes.io/azure-load-balancer-internal", "true")
        || is("networking.gke.io/load-balancer-type", "internal")
        || is("cloud.google.com/load-balancer-type", "internal")
        || is(
            "service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type",
            "intranet",
        )
}

fn pool_of(s: &LoadBalancerService) -> &'static str {
    if wants_internal(&s.annotations) {
        "internal"
    } else {
        "default"
    }
}

/// The decision, apart from the ABI (tested on the host).
pub fn allocate(config: &Config, req: &LoadBalancerRequest) -> LoadBalancerAnswer {
    let mut out = LoadBalancerAnswer::default();
    let assign = |out: &mut LoadBalancerAnswer, gateway: bool, s: &LoadBalancerService, addresses: Vec<String>| {
        let a = LoadBalancerAssignment {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            addresses,
        };
        if gateway {
            out.gateways.push(a)
        } else {
            out.services.push(a)
        }
    };
    if config.pools.values().all(Vec::is_empty) {
        for s in &req.services {
            let a = match &s.load_balancer_ip {
                Some(ip) => vec![ip.clone()],
                None => req.node_addresses.clone(),
            };
            assign(&mut out, false, s, a);
        }
        return out;
    }
    // Services first, then Gateways, each oldest first.
    let all: Vec<(bool, &LoadBalancerService)> = req
        .services
        .iter()
        .map(|s| (false, s))
        .chain(req.gateways.iter().map(|g| (true, g)))
        .collect();
    // Addresses are taken by loadBalancerIP first (a Gateway's: the
    // address it asks for), then by what Services and Gateways already
    // hold (oldest first), then handed out.
    let mut taken: BTreeSet<String> = all
        .iter()
        .filter_map(|(_, s)| s.load_balancer_ip.clone())
        .collect();
    let mut kept: BTreeMap<usize, String> = BTreeMap::new();
    for (i, (_, s)) in all.iter().enumerate() {
        if s.load_balancer_ip.is_some() {
            continue;
        }
        let pool = config.pools.get(pool_of(s)).map(Vec::as_slice).unwrap_or_default();
        if let Some(a) = s
            .current
            .iter()
            .find(|a| pool.contains(a) && !taken.contains(*a))
        {
            taken.insert(a.clone());
            kept.insert(i, a.clone());
        }
    }
    for (i, (gateway, s)) in all.iter().enumerate() {
        let gateway = *gateway;
        if let Some(ip) = &s.load_balancer_ip {
            assign(&mut out, gateway, s, vec![ip.clone()]);
            continue;
        }
        if let Some(a) = kept.get(&i) {
            assign(&mut out, gateway, s, vec![a.clone()]);
            continue;
        }
        let name = pool_of(s);
        let pool = config.pools.get(name).map(Vec::as_slice).unwrap_or_default();
        match pool.iter().find(|a| !taken.contains(*a)) {
            Some(a) => {
                taken.insert(a.clone());
                assign(&mut out, gateway, s, vec![a.clone()]);
            }
            None => {
                let p = LoadBalancerProblem {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    message: format!("the {name} address pool has no free address ({} in it)", pool.len()),
                };
                if gateway {
                    out.gateway_problems.push(p)
                } else {
                    out.problems.push(p)
                }
            }
        }
    }
    out
}

impl ControlPlugin for CloudLb {
    fn configure(&mut self, config: &[u8]) -> Result<(), String> {
        if config.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let c: Config =
            serde_json::from_slice(config).map_err(|e| format!("cloud-lb configuration: {e}"))?;
        for (name, addrs) in &c.pools {
            if let Some(bad) = addrs.iter().find(|a| a.parse::<std::net::IpAddr>().is_err()) {
                return Err(format!("cloud-lb configuration: pools.{name}: {bad:?} is not an IP address"));
            }
        }
        if let Some(api) = &c.api {
            if !api.url.starts_with("http://") && !api.url.starts_with("https://") {
                return Err(format!(
                    "cloud-lb configuration: api.url {:?}: must start with http:// or https://",
                    api.url
                ));
            }
            if !api.ca_pem.is_empty() && !api.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err("cloud-lb configuration: api.caPem holds no PEM certificate".into());
            }
            if api.timeout_ms > 10_000 {
                return Err("cloud-lb configuration: api.timeoutMs is at most 10000".into());
            }
        }
        self.config = c;
        Ok(())
    }

    fn service_load_balancer(&mut self, req: LoadBalancerRequest) -> Result<LoadBalancerAnswer, String> {
        match &self.config.api {
            Some(api) => ask_api(api, &req),
            None => Ok(allocate(&self.config, &req)),
        }
    }
}

portico_sdk::control_plugin!(CloudLb::default());

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, lb_ip: Option<&str>, ann: &[(&str, &str)], current: &[&str]) -> LoadBalancerService {
        LoadBalancerService {
            namespace: "ns".into(),
            name: name.into(),
            load_balancer_ip: lb_ip.map(Into::into),
            annotations: ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            current: current.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn config(default: &[&str], internal: &[&str]) -> Config {
        let mut pools = BTreeMap::new();
        pools.insert("default".to_string(), default.iter().map(|a| a.to_string()).collect());
        pools.insert("internal".to_string(), internal.iter().map(|a| a.to_string()).collect());
        Config { pools, api: None }
    }

    fn got(a: &LoadBalancerAnswer, name: &str) -> Option<Vec<String>> {
        a.services.iter().find(|s| s.name == name).map(|s| s.addresses.clone())
    }

    #[test]
    fn pools_internal_annotations_and_stable_addresses() {
        let c = config(&["198.51.100.1", "198.51.100.2"], &["10.0.0.1"]);
        let req = LoadBalancerRequest {
            services: vec![
                svc("old", None, &[], &["198.51.100.2"]),
                svc("pinned", Some("203.0.113.5"), &[], &[]),
                svc("aws", None, &[("service.beta.kubernetes.io/aws-load-balancer-internal", "true")], &[]),
                svc("new", None, &[], &[]),
                svc("gke", None, &[("networking.gke.io/load-balancer-type", "Internal")], &[]),
                svc("late", None, &[], &[]),
            ],
            node_addresses: vec!["192.0.2.1".into()],
            gateways: vec![],
        };
        let a = allocate(&c, &req);
        assert_eq!(got(&a, "old").unwrap(), ["198.51.100.2"], "kept");
        assert_eq!(got(&a, "pinned").unwrap(), ["203.0.113.5"]);
        assert_eq!(got(&a, "aws").unwrap(), ["10.0.0.1"]);
        assert_eq!(got(&a, "new").unwrap(), ["198.51.100.1"]);
        // Both pools are used up now.
        assert_eq!(got(&a, "gke"), None);
        assert_eq!(got(&a, "late"), None);
        assert_eq!(a.problems.len(), 2);
        assert!(a.problems[0].message.contains("internal address pool has no free address"));
    }

    #[test]
    fn gateways_get_addresses_after_services_and_keep_them() {
        let c = config(&["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"], &[]);
        let req = LoadBalancerRequest {
            services: vec![svc("web", None, &[], &[]), svc("pinned", Some("198.51.100.3"), &[], &[])],
            node_addresses: vec!["192.0.2.1".into()],
            gateways: vec![
                // Holds the address a new Service would otherwise get.
                svc("edge", None, &[], &["198.51.100.1"]),
                // Asks for one: taken (no Service gets it), answered with it.
                svc("asks", Some("198.51.100.2"), &[], &[]),
                svc("more", None, &[], &[]),
                svc("inner", None, &[("networking.gke.io/load-balancer-type", "Internal")], &[]),
            ],
        };
        let a = allocate(&c, &req);
        let gw = |name: &str| a.gateways.iter().find(|g| g.name == name).map(|g| g.addresses.clone());
        assert_eq!(gw("edge").unwrap(), ["198.51.100.1"], "kept");
        assert_eq!(gw("asks").unwrap(), ["198.51.100.2"]);
        assert_eq!(got(&a, "web").unwrap(), ["198.51.100.4"]);
        assert_eq!(got(&a, "pinned").unwrap(), ["198.51.100.3"]);
        // The pool is used up: reported as the Gateway's problem.
        assert_eq!(gw("more"), None);
        assert_eq!(a.gateway_problems.len(), 2);
        assert!(a.gateway_problems[1].message.contains("internal address pool has no free address"));
        assert!(a.problems.is_empty());
        // Without pools Gateways get nothing: Portico's own addresses.
        assert!(allocate(&Config::default(), &req).gateways.is_empty());
        // The API sees them with their pools.
        let body = api_request(&req);
        assert_eq!(body["gateways"][3]["pool"], "internal");
    }

    #[test]
    fn every_cloud_spelling_of_internal() {
        for (k, v) in [
            ("service.beta.kubernetes.io/aws-load-balancer-scheme", "internal"),
            ("service.beta.kubernetes.io/azure-load-balancer-internal", "true"),
            ("cloud.google.com/load-balancer-type", "Internal"),
            ("service.beta.kubernetes.io/alibaba-cloud-loadbalancer-address-type", "intranet"),
        ] {
            assert!(wants_internal(&[(k.to_string(), v.to_string())].into()), "{k}");
        }
        assert!(!wants_internal(&BTreeMap::new()));
    }

    #[test]
    fn without_pools_the_node_addresses() {
        let req = LoadBalancerRequest {
            services: vec![svc("a", None, &[], &[])],
            node_addresses: vec!["192.0.2.1".into()],
            gateways: vec![],
        };
        assert_eq!(got(&allocate(&Config::default(), &req), "a").unwrap(), ["192.0.2.1"]);
    }

    #[test]
    fn the_api_gets_each_service_with_its_pool_and_its_answer_is_checked() {
        let req = LoadBalancerRequest {
            services: vec![
                svc("a", None, &[], &["198.51.100.9"]),
                svc("b", None, &[("networking.gke.io/load-balancer-type", "Internal")], &[]),
            ],
            node_addresses: vec!["192.0.2.1".into()],
            gateways: vec![],
        };
        let body = api_request(&req);
        assert_eq!(body["services"][0]["name"], "a");
        assert_eq!(body["services"][0]["pool"], "default");
        assert_eq!(body["services"][0]["current"][0], "198.51.100.9");
        assert_eq!(body["services"][1]["pool"], "internal");
        assert_eq!(body["nodeAddresses"][0], "192.0.2.1");
        let api = Api {
            url: "http://ipam.test/".into(),
            headers: BTreeMap::new(),
            timeout_ms: 0,
            ca_pem: String::new(),
        };
        let a = api_answer(
            &api,
            200,
            r#"{"services": [{"namespace": "ns", "name": "a", "addresses": ["203.0.113.1"]}]}"#,
        )
        .unwrap();
        assert_eq!(got(&a, "a").unwrap(), ["203.0.113.1"]);
        assert!(api_answer(&api, 503, "busy").unwrap_err().contains("answered 503: busy"));
        assert!(api_answer(&api, 200, "nope").unwrap_err().contains("does not decode"));
        // Outside Portico there is no HTTP call to make.
        assert!(ask_api(&api, &req).unwrap_err().contains("only available inside Portico"));
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(CloudLb::default()
            .configure(br#"{"api": {"url": "ftp://x.test/"}}"#)
            .unwrap_err()
            .contains("must start with http:// or https://"));
        assert!(CloudLb::default()
            .configure(br#"{"api": {"url": "https://x.test/", "caPem": "nope"}}"#)
            .unwrap_err()
            .contains("api.caPem holds no PEM certificate"));
        assert!(CloudLb::default()
            .configure(br#"{"api": {"url": "https://x.test/"}}"#)
            .is_ok());
        assert!(CloudLb::default()
            .configure(br#"{"api": {"url": "http://x.test/", "timeoutMs": 60000}}"#)
            .is_err());
        assert!(CloudLb::default()
            .configure(br#"{"api": {"url": "http://x.test/", "timeoutMs": 3000}}"#)
            .is_ok());
        let mut p = CloudLb::default();
        assert!(p.configure(br#"{"pools": {"default": ["nope"]}}"#).unwrap_err().contains("not an IP"));
        assert!(p.configure(br#"{"pool": {}}"#).is_err());
        assert!(p.configure(b"").is_ok());
    }
}
