//! Portico's control-plane plugin ABI, version 1: hooks the gateway calls
//! while it turns Kubernetes objects into configuration. JSON in, JSON
//! out; the gateway checks every answer against the hook's schema.
//!
//! Implement [`ControlPlugin`] and export it with [`control_plugin!`]:
//!
//! ```ignore
//! use portico_sdk::control::{Admit, AdmitRequest, ControlPlugin};
//!
//! #[derive(Default)]
//! struct OnlyProduction;
//!
//! impl ControlPlugin for OnlyProduction {
//!     fn admit_ingress(&mut self, req: AdmitRequest) -> Result<Admit, String> {
//!         let ok = req.ingress.namespace.starts_with("prod-");
//!         Ok(Admit { admit: ok, reason: format!("namespace {}", req.ingress.namespace) })
//!     }
//! }
//!
//! portico_sdk::control_plugin!(OnlyProduction::default());
//! ```
//!
//! On the wire: the module exports `portico_control_abi_v1()`,
//! `portico_alloc(len) -> ptr`, and per hook `portico_<hook>(ptr, len) ->
//! i32`. The gateway writes the input at `ptr` (memory from
//! `portico_alloc`, the plugin's to free); the hook answers through the
//! host function `env.portico_return(ptr, len)` and returns 0, or returns
//! non-zero with an error message passed the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `portico_admit_ingress` input: an Ingress, the cluster's
/// IngressClasses, and the gateway's `[ingress]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct AdmitRequest {
    pub ingress: IngressRef,
    pub classes: Vec<ClassInfo>,
    pub settings: AdmissionSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRef {
    pub namespace: String,
    pub name: String,
    /// `spec.ingressClassName`.
    pub ingress_class_name: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassInfo {
    pub name: String,
    /// `spec.controller`.
    pub controller: String,
    /// Annotated `ingressclass.kubernetes.io/is-default-class: "true"`.
    pub is_default: bool,
}

/// The gateway's `[ingress]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionSettings {
    pub controller: String,
    pub accepted_classes: Vec<String>,
    pub watch_without_class: bool,
}

/// `portico_admit_ingress` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admit {
    pub admit: bool,
    /// Why (shown by `portico explain` and in logs); must not be empty.
    pub reason: String,
}

/// `portico_service_load_balancer` input: every LoadBalancer Service the
/// gateway implements, oldest first, the edge node's addresses, and the
/// Gateways that need an address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerRequest {
    pub services: Vec<LoadBalancerService>,
    pub node_addresses: Vec<String>,
    /// Gateways (of Portico's classes), oldest first, as Services
    /// (`loadBalancerIP`: the address one asks for, which is then taken;
    /// `current`: their status addresses). Answer in `gateways` with IP
    /// addresses; a plugin that does not leaves them at Portico's own.
    #[serde(default)]
    pub gateways: Vec<LoadBalancerService>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerService {
    pub namespace: String,
    pub name: String,
    /// `spec.loadBalancerIP`.
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The addresses in its status now.
    #[serde(default)]
    pub current: Vec<String>,
}

/// `portico_service_load_balancer` answer. A Service left out keeps its
/// status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerAnswer {
    #[serde(default)]
    pub services: Vec<LoadBalancerAssignment>,
    #[serde(default)]
    pub problems: Vec<LoadBalancerProblem>,
    /// Addresses for the request's `gateways` (IP addresses only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<LoadBalancerAssignment>,
    #[serde(default, rename = "gatewayProblems", skip_serializing_if = "Vec::is_empty")]
    pub gateway_problems: Vec<LoadBalancerProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerAssignment {
    pub namespace: String,
    pub name: String,
    /// IPs or DNS names, at most 16.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerProblem {
    pub namespace: String,
    pub name: String,
    pub message: String,
}

/// `portico_ingress_policy` input: one Ingress.
#[derive(Debug, Clone, Deserialize)]
pub struct IngressPolicyRequest {
    pub ingress: PolicyIngress,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PolicyIngress {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The Ingress has a `tls` section.
    #[serde(default)]
    pub tls: bool,
}

/// `portico_ingress_policy` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngressPolicyAnswer {
    pub policy: RoutePolicy,
    pub problems: Vec<PolicyProblem>,
}

/// What the gateway does for the Ingress's routes. Unset fields change
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutePolicy {
    /// Plain-HTTP requests get 308 to https.
    pub ssl_redirect: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// `/` gets 302 to this path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_root: Option<String>,
    /// Replaces the matched path prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_target: Option<String>,
    /// The Host header sent upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    /// Larger request bodies get 413.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_size_limit: Option<u64>,
    /// Only these client CIDRs are served.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_source_ranges: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_timeout_ms: Option<u64>,
    /// Cross-origin requests allowed (preflights answered by the gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// How the gateway talks to the endpoints; unset: HTTP/1.1 in clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<BackendProtocol>,
    /// This Ingress is a canary: its paths take a share of the same host
    /// and path routed by another Ingress instead of routing on their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Per-client limits; over them a request gets 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The Ingress's Prefix and ImplementationSpecific paths are regular
    /// expressions (matched case-insensitively from the start of the
    /// path); `rewrite_target` then replaces the whole path and may use
    /// `$1`... (`${1}` before a letter or digit).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub regex_paths: bool,
    /// A Service of the Ingress's namespace (its first port) that serves
    /// when the route's Service has no endpoints, and answers
    /// `custom_http_errors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<String>,
    /// Upstream answers with these codes (400..=599) are replaced by the
    /// default backend's answer to the same request, which gets `X-Code`,
    /// `X-Format`, `X-Original-URI`, `X-Namespace`, `X-Ingress-Name`,
    /// `X-Service-Name`, `X-Service-Port` and `X-Request-ID`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_http_errors: Vec<u16>,
}

/// Per client IP and Ingress: a token bucket refilled at `rps` (or `rpm`)
/// holding `burst_multiplier` times the rate, and at most `connections`
/// requests in flight. Clients in `exempt` (CIDRs) are not limited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    pub burst_multiplier: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<String>,
}

/// When a request goes to a canary Ingress's backend, in this order: the
/// header (`always`/`never`, or equal to `header_value`), the cookie
/// (`always`/`never`), then `weight` out of `weight_total` at random.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    pub weight: u32,
    /// At least 1; the host checks `weight <= weight_total`.
    pub weight_total: u32,
}

/// The protocol spoken to a route's endpoints. Upstream TLS is encrypted,
/// not authenticated: endpoints are pod addresses with no name a
/// certificate could carry (ingress-nginx does the same by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BackendProtocol {
    /// HTTP/1.1 in clear.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 in clear (h2c with prior knowledge), e.g. gRPC.
    Grpc,
    /// HTTP/2 over TLS, e.g. gRPC.
    Grpcs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins, or `*`.
    pub allow_origins: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub allow_credentials: bool,
    pub expose_headers: String,
    pub max_age_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub url: String,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyProblem {
    /// `warning` or `error`.
    pub severity: String,
    pub message: String,
}

/// A control-plane plugin. Every hook has a default that says it is not
/// implemented, so a plugin implements only what it is for.
pub trait ControlPlugin {
    /// The plugin's configuration from `portico.toml` (`config`), once at
    /// start. An error refuses it (the plugin does not load).
    fn configure(&mut self, _config: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// Whether this gateway serves the Ingress.
    fn admit_ingress(&mut self, _req: AdmitRequest) -> Result<Admit, String> {
        Err("this plugin does not implement admit_ingress".into())
    }

    /// Typed route policy from an Ingress's annotations.
    fn ingress_policy(&mut self, _req: IngressPolicyRequest) -> Result<IngressPolicyAnswer, String> {
        Err("this plugin does not implement ingress_policy".into())
    }

    /// The addresses of the LoadBalancer Services.
    fn service_load_balancer(
        &mut self,
        _req: LoadBalancerRequest,
    ) -> Result<LoadBalancerAnswer, String> {
        Err("this plugin does not implement service_load_balancer".into())
    }
}

#[cfg(target_arch = "wasm32")]
extern "C" {
    fn portico_return(ptr: *const u8, len: usize) -> u32;
    fn portico_http_call(
        ptr: *const u8,
        len: usize,
        ret_ptr: *mut *mut u8,
        ret_len: *mut usize,
    ) -> u32;
}

/// An HTTP/1.1 request for [`http_call`].
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequest {
    /// `GET` when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// `http://host[:port]/path` or `https://...`.
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// At most 10 000; 2 000 when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
    /// For `https://`: the CA certificates (PEM) to trust instead of the
    /// gateway host's system roots. The server's certificate and name are
    /// always verified.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_pem: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The answer to an [`HttpRequest`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

#[derive(Deserialize)]
struct HttpAnswer {
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
    error: Option<String>,
}

/// Makes an HTTP request and waits for the answer. Only hooks the gateway
/// lets wait may call it: `service_load_balancer` (the gateway asks it
/// from a blocking task). Elsewhere, and outside Portico, it is an error.
///
/// ```ignore
/// let answer = portico_sdk::control::http_call(&HttpRequest {
///     method: "POST".into(),
///     url: "http://ipam.example:8080/allocate".into(),
///     body: serde_json::to_string(&req).unwrap(),
///     ..HttpRequest::default()
/// })?;
/// if answer.status != 200 { return Err(format!("IPAM answered {}", answer.status)); }
/// ```
pub fn http_call(req: &HttpRequest) -> Result<HttpResponse, String> {
    let input = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let raw = http_call_raw(&input)?;
    let a: HttpAnswer = serde_json::from_slice(&raw)
        .map_err(|e| format!("portico_http_call answer does not decode: {e}"))?;
    if let Some(e) = a.error {
        return Err(e);
    }
    Ok(HttpResponse {
        status: a.status.unwrap_or(0),
        headers: a.headers,
        body: a.body,
    })
}

#[cfg(target_arch = "wasm32")]
fn http_call_raw(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host reads `input` during the call and writes the
    // answer into memory it got from `portico_alloc`, which is ours.
    let status = unsafe { portico_http_call(input.as_ptr(), input.len(), &mut ptr, &mut len) };
    if status != 0 {
        return Err(format!(
            "portico_http_call is not available to this hook (status {status})"
        ));
    }
    if ptr.is_null() {
        return Err("portico_http_call gave no answer".into());
    }
    // SAFETY: allocated by `alloc` with a capacity of `max(len, 1)`.
    Ok(unsafe { take_input(ptr, len) })
}

#[cfg(not(target_arch = "wasm32"))]
fn http_call_raw(_input: &[u8]) -> Result<Vec<u8>, String> {
    Err("portico_http_call is only available inside Portico".into())
}

/// Hands `bytes` to the host (it copies them).
pub fn give(bytes: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `len` bytes at `ptr` during the call.
    unsafe {
        portico_return(bytes.as_ptr(), bytes.len());
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = bytes;
}

/// `portico_alloc`: memory the host writes an input into.
pub fn alloc(len: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(len.max(1));
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

/// Takes back an input the host wrote at `ptr` (from [`alloc`]).
///
/// # Safety
/// `ptr` must come from [`alloc`] with a capacity of `max(len, 1)`.
pub unsafe fn take_input(ptr: *mut u8, len: usize) -> Vec<u8> {
    Vec::from_raw_parts(ptr, len, len.max(1))
}

/// Runs a typed hook: decode the input, call, encode the answer. Returns
/// the hook's status (0 ok, 1 bad input, 2 the plugin's error).
pub fn run_hook<I, O>(input: &[u8], hook: impl FnOnce(I) -> Result<O, String>) -> i32
where
    I: for<'de> Deserialize<'de>,
    O: Serialize,
{
    let parsed: I = match serde_json::from_slice(input) {
        Ok(i) => i,
        Err(e) => {
            give(format!("input does not decode: {e}").as_bytes());
            return 1;
        }
    };
    match hook(parsed).map(|o| serde_json::to_vec(&o)) {
        Ok(Ok(bytes)) => {
            give(&bytes);
            0
        }
        Ok(Err(e)) => {
            give(format!("answer does not encode: {e}").as_bytes());
            2
        }
        Err(e) => {
            give(e.as_bytes());
            2
        }
    }
}

/// Exports a [`ControlPlugin`] made by `$make` (evaluated once, at the
/// first hook) as a control-plane module.
#[macro_export]
macro_rules! control_plugin {
    ($make:expr) => {
        thread_local! {
            static PORTICO_PLUGIN: ::std::cell::RefCell<Option<Box<dyn $crate::control::ControlPlugin>>> =
                ::std::cell::RefCell::new(None);
        }

        fn __portico_with<R>(f: impl FnOnce(&mut dyn $crate::control::ControlPlugin) -> R) -> R {
            PORTICO_PLUGIN.with(|p| {
                let mut p = p.borrow_mut();
                let plugin = p.get_or_insert_with(|| Box::new($make));
                f(plugin.as_mut())
            })
        }

        #[no_mangle]
        pub extern "C" fn portico_control_abi_v1() {}

        #[no_mangle]
        pub extern "C" fn portico_alloc(len: usize) -> *mut u8 {
            $crate::control::alloc(len)
        }

        #[no_mangle]
        pub unsafe extern "C" fn portico_configure(ptr: *mut u8, len: usize) -> i32 {
            let input = $crate::control::take_input(ptr, len);
            match __portico_with(|p| p.configure(&input)) {
                Ok(()) => 0,
                Err(e) => {
                    $crate::control::give(e.as_bytes());
                    2
                }
            }
        }

        #[no_mangle]
        pub unsafe extern "C" fn portico_admit_ingress(ptr: *mut u8, len: usize) -> i32 {
            let input = $crate::control::take_input(ptr, len);
            __portico_with(|p| $crate::control::run_hook(&input, |req| p.admit_ingress(req)))
        }

        #[no_mangle]
        pub unsafe extern "C" fn portico_ingress_policy(ptr: *mut u8, len: usize) -> i32 {
            let input = $crate::control::take_input(ptr, len);
            __portico_with(|p| $crate::control::run_hook(&input, |req| p.ingress_policy(req)))
        }

        #[no_mangle]
        pub unsafe extern "C" fn portico_service_load_balancer(ptr: *mut u8, len: usize) -> i32 {
            let input = $crate::control::take_input(ptr, len);
            __portico_with(|p| {
                $crate::control::run_hook(&input, |req| p.service_load_balancer(req))
            })
        }
    };
}
