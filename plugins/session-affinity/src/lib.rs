//! `session-affinity`: keeps a client on the endpoint it first got.
//!
//! - **ClientIP** (the Service's `spec.sessionAffinity: ClientIP`, with
//!   `sessionAffinityConfig.clientIP.timeoutSeconds`): HTTP requests and
//!   TCP connections from one client IP go to the same endpoint until the
//!   client has been quiet for the timeout. The table lives in shared data
//!   (`session-affinity/<service>/<ip>`), so every worker sees it.
//! - **Cookie** (ingress-nginx annotations on the Ingress):
//!   `nginx.ingress.kubernetes.io/affinity: cookie`, with
//!   `session-cookie-name` (default `INGRESSCOOKIE`),
//!   `session-cookie-max-age` (seconds; default: a session cookie),
//!   `session-cookie-path` (default `/`), `session-cookie-samesite`
//!   (`None`, `Lax`, `Strict`), `session-cookie-secure` (`true`: the
//!   cookie is only sent over HTTPS; always so with `SameSite=None`) and
//!   `affinity-mode`: `balanced` (default: stick while the endpoint is
//!   ready) or `persistent` (stick while it serves at all).
//!
//!   An HTTPRoute rule's `sessionPersistence` (Gateway API) reaches this
//!   plugin the same way: Portico's translation sets these annotations on
//!   the rule's routes (cookie name, the matched path, `Max-Age` for a
//!   Permanent cookie, `Secure` on HTTPS listeners).
//! - **Header** (`sessionPersistence` of type Header, which translation
//!   turns into `portico.io/session-header: NAME`): the first response
//!   carries header NAME with the endpoint's token; requests that send it
//!   back go to that endpoint while it is ready.
//!
//! proxy-wasm decides a root's context kind (HTTP or TCP) once, so the
//! plugin is loaded once per kind: with configuration `tcp` it serves L4
//! connections (`plugins.tcp`), otherwise HTTP requests.
//!
//! A client's first HTTP request goes where the Service's policy sends it;
//! the plugin records that endpoint (`upstream.address`, at the response)
//! and chooses it afterwards (`upstream::choose`). A new TCP connection
//! is not connected yet when the plugin runs, so for TCP the plugin picks
//! among the ready endpoints itself and pins at once; it then asks for no
//! data callbacks (`portico.stream.passthrough`), so the bytes are still
//! spliced. An endpoint that is gone, or not eligible, is replaced.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use portico_sdk::proxy_wasm::hostcalls;
use portico_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use portico_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};
use portico_sdk::upstream::{self, HostState, UpstreamHost};

portico_sdk::proxy_wasm::main! {{
    portico_sdk::proxy_wasm::set_log_level(LogLevel::Info);
    portico_sdk::proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { tcp: false }) });
}}

const ANNOTATION: &str = "nginx.ingress.kubernetes.io/";
/// Header persistence (HTTPRoute `sessionPersistence` of type Header):
/// the header that carries the endpoint's token both ways.
const SESSION_HEADER: &str = "portico.io/session-header";

/// Headers the session header must never replace: framing, hop-by-hop
/// fields, Host, and cookies (the backend's own sessions). The same list
/// as `RESERVED_HEADERS` in Portico's translation, which refuses them
/// first.
const RESERVED: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
    "cookie",
    "set-cookie",
    "content-type",
];

/// A header name Portico sets and reads (an HTTP token, not a reserved
/// one), lower-cased.
pub fn header_name(v: &str) -> Option<String> {
    let v = v.trim().to_ascii_lowercase();
    if !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !RESERVED.contains(&v.as_str())
    {
        Some(v)
    } else {
        None
    }
}

/// Cookie affinity settings, from the Ingress's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    pub name: String,
    pub max_age: Option<u64>,
    pub path: String,
    pub same_site: Option<String>,
    pub secure: bool,
    pub persistent: bool,
}

impl CookieSettings {
    /// `None` unless `affinity: cookie`. `get` reads one annotation (the
    /// part after `nginx.ingress.kubernetes.io/`).
    pub fn from(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        if get("affinity").as_deref() != Some("cookie") {
            return None;
        }
        let same_site = get("session-cookie-samesite").and_then(|v| {
            ["None", "Lax", "Strict"]
                .iter()
                .find(|s| s.eq_ignore_ascii_case(v.trim()))
                .map(|s| s.to_string())
        });
        let secure = same_site.as_deref() == Some("None")
            || get("session-cookie-secure").map_or(false, |v| v.trim().eq_ignore_ascii_case("true"));
        Some(CookieSettings {
            name: get("session-cookie-name")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
                .unwrap_or_else(|| "INGRESSCOOKIE".into()),
            max_age: get("session-cookie-max-age").and_then(|v| v.trim().parse().ok()),
            path: get("session-cookie-path")
                .filter(|p| p.starts_with('/') && !p.contains(';'))
                .unwrap_or_else(|| "/".into()),
            same_site,
            secure,
            persistent: get("affinity-mode").as_deref() == Some("persistent"),
        })
    }

    /// The `Set-Cookie` value for `endpoint`.
    pub fn set_cookie(&self, endpoint: &str) -> String {
        let mut c = format!("{}={}; Path={}; HttpOnly", self.name, token(endpoint), self.path);
        if let Some(age) = self.max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        if let Some(s) = &self.same_site {
            c.push_str(&format!("; SameSite={s}"));
        }
        if self.secure {
            c.push_str("; Secure");
        }
        c
    }
}

/// An endpoint's cookie value: FNV-1a of its address, so the address is
/// not disclosed.
pub fn token(endpoint: &str) -> String {
    format!("{:016x}", token_bits(endpoint))
}

/// The number a [`token`] spells: tokens are compared as numbers, so a
/// request's cookie is checked without formatting every endpoint's.
pub fn token_bits(endpoint: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A token as a client sent it back; `None` unless 16 hex digits.
pub fn parse_token(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.len() != 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(v, 16).ok()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether the pinned endpoint may take this stream.
pub fn eligible(hosts: &[UpstreamHost], address: &str, persistent: bool) -> bool {
    hosts.iter().any(|h| {
        h.address == address && (h.state == HostState::Ready || (persistent && h.state != HostState::CoolingDown))
    })
}

fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn text(path: Vec<&str>) -> Option<String> {
    hostcalls::get_property(path)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// ClientIP affinity of the stream's Service: (table key, timeout).
fn client_ip_key() -> Option<(String, u64)> {
    if text(vec!["portico", "service", "session_affinity"]).as_deref() != Some("ClientIP") {
        return None;
    }
    let timeout = hostcalls::get_property(vec!["portico", "service", "session_affinity_timeout"])
        .ok()
        .flatten()
        .filter(|b| b.len() == 8)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            i64::from_le_bytes(a).max(1) as u64
        })
        .unwrap_or(10_800);
    let service = text(vec!["portico", "service"])?;
    let ip = portico_sdk::properties::source_ip()?;
    Some((format!("session-affinity/{service}/{ip}"), timeout))
}

/// The endpoint pinned under `key`, if not expired.
fn pinned(key: &str) -> Option<String> {
    let (value, _) = hostcalls::get_shared_data(key).ok()?;
    let value = String::from_utf8(value?).ok()?;
    let (addr, expires) = value.split_once(' ')?;
    (expires.parse::<u64>().ok()? > now_secs()).then(|| addr.to_string())
}

fn pin(key: &str, addr: &str, timeout: u64) {
    let value = format!("{addr} {}", now_secs() + timeout);
    // Last writer wins: two first requests racing both land somewhere valid.
    let _ = hostcalls::set_shared_data(key, Some(value.as_bytes()), None);
}

struct Root {
    tcp: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match String::from_utf8_lossy(&config).trim() {
            "" | "http" => self.tcp = false,
            "tcp" => self.tcp = true,
            other => {
                log::error!("session-affinity: configuration must be \"http\" or \"tcp\", not {other:?}");
                return false;
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::default()))
    }

    fn create_stream_context(&self, _id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Tcp::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.tcp {
            ContextType::StreamContext
        } else {
            ContextType::HttpContext
        })
    }
}

/// What a route's annotations ask of this plugin.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteSettings {
    pub cookie: Option<CookieSettings>,
    /// Header persistence: the header's name (lower case).
    pub header: Option<String>,
}

impl RouteSettings {
    /// From the Ingress's annotations as the host encodes them (pairs).
    pub fn from_encoded(encoded: &[u8]) -> Self {
        let annotations = portico_sdk::pairs::decode(encoded).unwrap_or_default();
        let cookie = CookieSettings::from(|key: &str| {
            annotations
                .iter()
                .find(|(k, _)| k.len() == ANNOTATION.len() + key.len() && k.starts_with(ANNOTATION) && k.ends_with(key))
                .map(|(_, v)| v.clone())
        });
        let header = if cookie.is_none() {
            annotations
                .iter()
                .find(|(k, _)| k == SESSION_HEADER)
                .and_then(|(_, v)| header_name(v))
        } else {
            None
        };
        RouteSettings { cookie, header }
    }
}

thread_local! {
    /// The settings of the last annotations seen, with their encoding: a
    /// route's requests come with the same annotations, and comparing the
    /// bytes costs far less than decoding and parsing them again. (An
    /// instance serves one worker thread.)
    static LAST_SETTINGS: std::cell::RefCell<Option<(Vec<u8>, Rc<RouteSettings>)>> =
        std::cell::RefCell::new(None);
}

/// The settings for these encoded annotations, parsed once per distinct
/// encoding in a row.
fn route_settings(encoded: Vec<u8>) -> Rc<RouteSettings> {
    LAST_SETTINGS.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((bytes, settings)) = last.as_ref() {
            if *bytes == encoded {
                return settings.clone();
            }
        }
        let settings = Rc::new(RouteSettings::from_encoded(&encoded));
        *last = Some((encoded, settings.clone()));
        settings
    })
}

#[derive(Default)]
struct Http {
    client_ip: Option<(String, u64)>,
    settings: Rc<RouteSettings>,
    /// The cookie or header named an eligible endpoint (nothing to set).
    held: bool,
}

impl Context for Http {}

impl Http {
    /// Chooses the endpoint whose token the client sent, if it may take
    /// the request.
    fn hold(&mut self, hosts: &[UpstreamHost], wanted: Option<u64>, persistent: bool) {
        if let Some(t) = wanted {
            if let Some(h) = hosts.iter().find(|h| token_bits(&h.address) == t) {
                if eligible(hosts, &h.address, persistent) && upstream::choose(&h.address).is_ok() {
                    self.held = true;
                }
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        // All of the Ingress's annotations in one host call.
        let encoded = hostcalls::get_property(vec!["portico", "ingress", "annotations"])
            .ok()
            .flatten()
            .unwrap_or_default();
        self.settings = route_settings(encoded);
        let settings = self.settings.clone();
        if settings.cookie.is_none() && settings.header.is_none() {
            self.client_ip = client_ip_key();
            if self.client_ip.is_none() {
                return Action::Continue;
            }
        }
        if let Some(c) = &settings.cookie {
            let wanted = self
                .get_http_request_header("cookie")
                .and_then(|h| cookie_value(&h, &c.name).and_then(parse_token));
            if wanted.is_some() {
                let hosts = upstream::hosts().unwrap_or_default();
                self.hold(&hosts, wanted, c.persistent);
            }
            return Action::Continue;
        }
        if let Some(name) = &settings.header {
            let wanted = self.get_http_request_header(name).and_then(|v| parse_token(&v));
            if wanted.is_some() {
                let hosts = upstream::hosts().unwrap_or_default();
                self.hold(&hosts, wanted, false);
            }
            return Action::Continue;
        }
        let hosts = upstream::hosts().unwrap_or_default();
        if let Some((key, _)) = &self.client_ip {
            if let Some(addr) = pinned(key) {
                if eligible(&hosts, &addr, false) {
                    let _ = upstream::choose(&addr);
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let settings = self.settings.clone();
        if self.held || (settings.cookie.is_none() && settings.header.is_none() && self.client_ip.is_none()) {
            return Action::Continue;
        }
        // (No let-else: the MSRV is 1.63.)
        let addr = match text(vec!["upstream", "address"]) {
            Some(a) => a,
            None => return Action::Continue,
        };
        if let Some(c) = &settings.cookie {
            self.add_http_response_header("set-cookie", &c.set_cookie(&addr));
        } else if let Some(name) = &settings.header {
            // The client sends it back with its next requests.
            self.set_http_response_header(name, Some(&token(&addr)));
        } else if let Some((key, timeout)) = &self.client_ip {
            pin(key, &addr, *timeout);
        }
        Action::Continue
    }
}

#[derive(Default)]
struct Tcp;

impl Context for Tcp {}

/// A pseudo-random index below `n` (the first choice of a new client is
/// spread; it needs no cryptographic randomness).
fn spread(n: usize) -> usize {
    let nanos = hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = nanos ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % n.max(1) as u64) as usize
}

impl StreamContext for Tcp {
    fn on_new_connection(&mut self) -> Action {
        // This plugin never needs the bytes: let the gateway splice them.
        let _ = hostcalls::set_property(vec!["portico", "stream", "passthrough"], Some(b"1"));
        let (key, timeout) = match client_ip_key() {
            Some(k) => k,
            None => return Action::Continue,
        };
        let hosts = upstream::hosts().unwrap_or_default();
        let addr = match pinned(&key).filter(|a| eligible(&hosts, a, false)) {
            Some(a) => a,
            None => {
                // The connection is not connected yet, so the plugin picks
                // (among ready endpoints) and pins at once.
                let ready: Vec<&UpstreamHost> = hosts.iter().filter(|h| h.state == HostState::Ready).collect();
                match ready.get(spread(ready.len())) {
                    Some(h) => h.address.clone(),
                    None => return Action::Continue,
                }
            }
        };
        if upstream::choose(&addr).is_ok() {
            pin(&key, &addr, timeout);
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(pairs: &[(&str, &str)]) -> Option<CookieSettings> {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CookieSettings::from(|k| m.get(k).cloned())
    }

    #[test]
    fn cookie_settings_from_the_ingress_nginx_annotations() {
        assert_eq!(settings(&[]), None);
        assert_eq!(settings(&[("affinity", "none")]), None);
        let d = settings(&[("affinity", "cookie")]).unwrap();
        assert_eq!((d.name.as_str(), d.path.as_str(), d.max_age, d.persistent), ("INGRESSCOOKIE", "/", None, false));
        let c = settings(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "route"),
            ("session-cookie-max-age", "3600"),
            ("session-cookie-path", "/app"),
            ("session-cookie-samesite", "none"),
            ("affinity-mode", "persistent"),
        ])
        .unwrap();
        let header = c.set_cookie("10.0.0.1:80");
        assert!(header.starts_with(&format!("route={}; Path=/app; HttpOnly", token("10.0.0.1:80"))), "{header}");
        assert!(header.contains("; Max-Age=3600; SameSite=None; Secure"), "{header}");
        assert!(c.persistent);
        // Values that would break the header are refused.
        let bad = settings(&[("affinity", "cookie"), ("session-cookie-name", "a;b"), ("session-cookie-path", "/x; Domain=evil")]).unwrap();
        assert_eq!((bad.name.as_str(), bad.path.as_str()), ("INGRESSCOOKIE", "/"));
    }

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            b.extend_from_slice(&(k.len() as u32).to_le_bytes());
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn route_settings_from_the_encoded_annotations_and_reused_while_they_repeat() {
        let cookie = encode(&[
            ("nginx.ingress.kubernetes.io/affinity", "cookie"),
            ("nginx.ingress.kubernetes.io/session-cookie-name", "route"),
        ]);
        let header = encode(&[("portico.io/session-header", "X-Session")]);
        let a = route_settings(cookie.clone());
        assert_eq!(a.cookie.as_ref().map(|c| c.name.as_str()), Some("route"));
        assert_eq!(a.header, None);
        assert!(Rc::ptr_eq(&a, &route_settings(cookie.clone())), "same annotations, parsed again");
        let h = route_settings(header);
        assert_eq!((h.cookie.is_none(), h.header.as_deref()), (true, Some("x-session")));
        // Other annotations are parsed afresh, never served from the cache.
        let back = route_settings(cookie);
        assert!(!Rc::ptr_eq(&a, &back));
        assert_eq!(*a, *back);
        assert_eq!(*route_settings(Vec::new()), RouteSettings::default());
        // Cookie settings win over a header on the same route.
        let both = RouteSettings::from_encoded(&encode(&[
            ("nginx.ingress.kubernetes.io/affinity", "cookie"),
            ("portico.io/session-header", "x-session"),
        ]));
        assert!(both.cookie.is_some() && both.header.is_none());
    }

    #[test]
    fn session_header_names_are_tokens() {
        assert_eq!(header_name(" X-Session "), Some("x-session".to_string()));
        assert_eq!(header_name("a b"), None);
        assert_eq!(header_name("x:y"), None);
        assert_eq!(header_name(""), None);
        assert_eq!(header_name("Content-Length"), None);
        assert_eq!(header_name("set-cookie"), None);
    }

    #[test]
    fn secure_cookies() {
        let plain = settings(&[("affinity", "cookie")]).unwrap();
        assert!(!plain.set_cookie("10.0.0.1:80").contains("Secure"));
        let s = settings(&[("affinity", "cookie"), ("session-cookie-secure", "true"), ("session-cookie-samesite", "Lax")]).unwrap();
        assert!(s.set_cookie("10.0.0.1:80").ends_with("; SameSite=Lax; Secure"), "{}", s.set_cookie("10.0.0.1:80"));
        // SameSite=None needs Secure; it is not added twice.
        let n = settings(&[("affinity", "cookie"), ("session-cookie-secure", "true"), ("session-cookie-samesite", "None")]).unwrap();
        assert_eq!(n.set_cookie("10.0.0.1:80").matches("Secure").count(), 1);
        let f = settings(&[("affinity", "cookie"), ("session-cookie-secure", "false")]).unwrap();
        assert!(!f.secure);
    }

    #[test]
    fn cookies_and_eligibility() {
        assert_eq!(cookie_value("a=1; route=abc; b=2", "route"), Some("abc"));
        assert_eq!(cookie_value("a=1", "route"), None);
        assert_ne!(token("10.0.0.1:80"), token("10.0.0.2:80"));
        // A token read back is the number it spells; anything else is none.
        assert_eq!(parse_token(&token("10.0.0.1:80")), Some(token_bits("10.0.0.1:80")));
        assert_eq!(parse_token(&format!(" {} ", token("10.0.0.1:80"))), Some(token_bits("10.0.0.1:80")));
        assert_eq!(parse_token("abc"), None);
        assert_eq!(parse_token("+123456789abcdef"), None);
        assert_eq!(parse_token("zz23456789abcdef"), None);
        let hosts = vec![
            UpstreamHost { address: "10.0.0.1:80".into(), state: HostState::Ready },
            UpstreamHost { address: "10.0.0.2:80".into(), state: HostState::Serving },
        ];
        assert!(eligible(&hosts, "10.0.0.1:80", false));
        assert!(!eligible(&hosts, "10.0.0.2:80", false));
        assert!(eligible(&hosts, "10.0.0.2:80", true));
        assert!(!eligible(&hosts, "10.0.0.9:80", true));
    }
}
