//! Typed route policy from a control-plane plugin
//! (`portico_ingress_policy`, control ABI v1), when `ingress.policy_plugin`
//! names one: the plugin reads an Ingress's annotations (for instance
//! ingress-nginx's) and answers with typed values. Nothing is templated
//! into configuration text; the data plane applies the typed fields.
//!
//! Input: `{"ingress": {"namespace", "name", "annotations", "tls": bool}}`.
//! Answer: `{"policy": RoutePolicy, "problems": [{"severity": "warning" |
//! "error", "message"}]}`, checked field by field (unknown fields are
//! refused).

use serde::{Deserialize, Serialize};

/// What the data plane does for the routes of one Ingress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RoutePolicy {
    /// Plain-HTTP requests are redirected (308) to https.
    pub ssl_redirect: bool,
    /// Every request is redirected here.
    pub redirect: Option<Redirect>,
    /// `/` is redirected (302) here.
    pub app_root: Option<String>,
    /// The matched path prefix is replaced by this before proxying.
    pub rewrite_target: Option<String>,
    /// The Host header sent upstream.
    pub upstream_host: Option<String>,
    /// Larger request bodies (by Content-Length) get 413.
    pub body_size_limit: Option<u64>,
    /// Only clients in these CIDRs are served (403 otherwise).
    pub allow_source_ranges: Vec<String>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    /// Cross-origin requests are allowed from these origins.
    pub cors: Option<Cors>,
    /// The protocol spoken to the endpoints; unset: HTTP/1.1 in clear.
    pub backend_protocol: Option<BackendProtocol>,
    /// This Ingress is a canary: its paths do not route on their own but
    /// take a share of the same host and path of another Ingress.
    pub canary: Option<Canary>,
    /// Per-client limits; over them a request gets 503.
    pub rate_limit: Option<RateLimit>,
    /// The Ingress's Prefix and ImplementationSpecific paths are regular
    /// expressions, matched case-insensitively from the start of the path;
    /// `rewrite_target` then replaces the whole path and may use `$1`...
    pub regex_paths: bool,
    /// A Service of the Ingress's namespace (its first port) that serves
    /// when the route's Service has no endpoints, and answers
    /// `custom_http_errors`.
    pub default_backend: Option<String>,
    /// Upstream answers with these codes are replaced by the default
    /// backend's answer to the same request (with `X-Code` and friends).
    pub custom_http_errors: Vec<u16>,
}

impl RoutePolicy {
    /// Whether this policy does anything to a request on a listener
    /// (`tls`) beyond choosing timeouts.
    pub fn acts_on_requests(&self, tls: bool) -> bool {
        let RoutePolicy {
            ssl_redirect,
            redirect,
            app_root,
            rewrite_target,
            upstream_host,
            body_size_limit,
            allow_source_ranges,
            connect_timeout_ms: _,
            read_timeout_ms: _,
            write_timeout_ms: _,
            cors,
            backend_protocol,
            canary,
            rate_limit,
            // How paths match: routing, done before the policy is asked.
            regex_paths: _,
            // Used when the pool is empty, which the fast path leaves
            // to the full one.
            default_backend: _,
            custom_http_errors,
        } = self;
        (*ssl_redirect && !tls)
            || redirect.is_some()
            || app_root.is_some()
            || rewrite_target.is_some()
            || upstream_host.is_some()
            || body_size_limit.is_some()
            || !allow_source_ranges.is_empty()
            || cors.is_some()
            || !matches!(backend_protocol, None | Some(BackendProtocol::Http))
            || canary.is_some()
            || rate_limit.is_some()
            || !custom_http_errors.is_empty()
    }
}

/// Per client IP and Ingress: a token bucket of `rps` (or `rpm`) with a
/// burst of `burst_multiplier` times the rate, and at most `connections`
/// requests in flight. Clients in `exempt` are not limited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(default)]
    pub rps: Option<u32>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default = "five")]
    pub burst_multiplier: u32,
    #[serde(default)]
    pub connections: Option<u32>,
    #[serde(default)]
    pub exempt: Vec<String>,
}

fn five() -> u32 {
    5
}

impl RateLimit {
    /// The refill rate; `rps` wins over `rpm` as in ingress-nginx.
    pub fn per_second(&self) -> Option<f64> {
        self.rps
            .map(f64::from)
            .or(self.rpm.map(|m| f64::from(m) / 60.0))
    }
}

/// When a request goes to the canary backend, in this order: the header
/// (`always`/`never`, or equal to `header_value`), the cookie
/// (`always`/`never`), then `weight` out of `weight_total`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Canary {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub header_value: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub weight: u32,
    #[serde(default = "hundred")]
    pub weight_total: u32,
}

fn hundred() -> u32 {
    100
}

impl Canary {
    /// Whether this request goes to the canary; `roll` is a uniform draw in
    /// `0..weight_total` (random in the data plane, fixed in tests).
    pub fn wants(&self, headers: &http::HeaderMap, roll: impl FnOnce(u32) -> u32) -> bool {
        if let Some(value) = self
            .header
            .as_deref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
        {
            match &self.header_value {
                Some(want) if value == want => return true,
                Some(_) => {}
                None if value == "always" => return true,
                None if value == "never" => return false,
                None => {}
            }
        }
        if let Some(name) = &self.cookie {
            match cookie(headers, name) {
                Some("always") => return true,
                Some("never") => return false,
                _ => {}
            }
        }
        self.weight > 0 && roll(self.weight_total) < self.weight
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// How the data plane talks to a route's endpoints. Upstream TLS does not
/// verify the endpoint's certificate: endpoints are pod IPs, which no
/// certificate names (ingress-nginx's default, `proxy-ssl-verify: off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BackendProtocol {
    Http,
    Https,
    /// HTTP/2 in clear, with prior knowledge (h2c).
    Grpc,
    /// HTTP/2 over TLS.
    Grpcs,
}

/// Cross-origin resource sharing, from ingress-nginx's `enable-cors`
/// annotations or a Gateway API `CORS` filter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cors {
    /// Origins (`https://a.example`, `https://*.example.com`: `*` stands
    /// for one or more labels), or `*` for any.
    pub allow_origins: Vec<String>,
    /// Comma-separated, or `*`: any, answered with the requested method.
    pub allow_methods: String,
    /// Comma-separated, or `*`: any, answered with the requested headers.
    pub allow_headers: String,
    pub allow_credentials: bool,
    #[serde(default)]
    pub expose_headers: String,
    pub max_age_seconds: u64,
    /// What a preflight is answered with: ingress-nginx answers 204; the
    /// Gateway API's conformance suite expects 200.
    #[serde(default = "preflight_no_content")]
    pub preflight_status: u16,
}

fn preflight_no_content() -> u16 {
    204
}

impl Cors {
    /// The `Access-Control-Allow-Origin` for a request from `origin`, if
    /// allowed.
    pub fn allow(&self, origin: &str) -> Option<String> {
        if self
            .allow_origins
            .iter()
            .any(|o| o != "*" && origin_matches(o, origin))
        {
            Some(origin.to_string())
        } else if self.allow_origins.iter().any(|o| o == "*") {
            // With credentials the origin must be echoed, not `*`.
            Some(if self.allow_credentials {
                origin.to_string()
            } else {
                "*".to_string()
            })
        } else {
            None
        }
    }

    /// Whether the answer depends on the request's `Origin` (anything but
    /// `*` without credentials), so responses must say `Vary: Origin`.
    pub fn varies_by_origin(&self) -> bool {
        self.allow_credentials || self.allow_origins.iter().any(|o| o != "*")
    }

    /// `Access-Control-Allow-Methods` for a preflight asking for
    /// `requested` (its `Access-Control-Request-Method`). `*` is answered
    /// with the method asked for: valid with or without credentials,
    /// where `*` itself is not.
    pub fn allow_methods_for<'a>(&'a self, requested: Option<&'a str>) -> Option<&'a str> {
        echo_wildcard(&self.allow_methods, requested)
    }

    /// `Access-Control-Allow-Headers` for a preflight asking for
    /// `requested` (its `Access-Control-Request-Headers`), as for methods.
    pub fn allow_headers_for<'a>(&'a self, requested: Option<&'a str>) -> Option<&'a str> {
        echo_wildcard(&self.allow_headers, requested)
    }

    /// `Access-Control-Expose-Headers`: `*` means every header only for
    /// requests without credentials, so it is not sent with them.
    pub fn exposed(&self) -> Option<&str> {
        let v = self.expose_headers.as_str();
        // `*` with credentials would be read as a header named `*`.
        let refused = v.is_empty() || (self.allow_credentials && v.trim() == "*");
        (!refused).then_some(v)
    }
}

fn echo_wildcard<'a>(configured: &'a str, requested: Option<&'a str>) -> Option<&'a str> {
    if configured.trim() == "*" {
        requested.filter(|r| !r.trim().is_empty())
    } else {
        (!configured.is_empty()).then_some(configured)
    }
}

/// Whether `origin` (`scheme://host[:port]`, from the request) is the
/// configured `pattern`: scheme and host compared case-insensitively, a
/// missing port read as the scheme's default, and a pattern host starting
/// with `*` matching any host that ends with the rest after at least one
/// more character (`https://*.example.com` takes `https://a.b.example.com`,
/// not `https://example.com`).
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    let (Some(p), Some(o)) = (split_origin(pattern), split_origin(origin)) else {
        return false;
    };
    if !p.scheme.eq_ignore_ascii_case(o.scheme) || p.port != o.port {
        return false;
    }
    // `*.` only: `*example.com` is a name, not a pattern that would also
    // take `evilexample.com`.
    match p
        .host
        .strip_prefix('*')
        .filter(|rest| rest.starts_with('.'))
    {
        Some(suffix) => {
            o.host.len() > suffix.len()
                && o.host.as_bytes()[o.host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }
        None => p.host.eq_ignore_ascii_case(o.host),
    }
}

struct OriginParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

fn split_origin(s: &str) -> Option<OriginParts<'_>> {
    let (scheme, rest) = s.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    // An IPv6 literal's colons are inside its brackets.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(rest[i + 1..].parse().ok()?)),
        _ => (rest, default),
    };
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some(OriginParts { scheme, host, port })
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub url: String,
    pub code: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    policy: RoutePolicy,
    #[serde(default)]
    problems: Vec<ProblemOut>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProblemOut {
    severity: String,
    message: String,
}

/// A policy the data plane can apply, with the allowlist parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckedPolicy {
    pub policy: RoutePolicy,
    pub allow: Vec<ipnet::IpNet>,
    /// `rate_limit.exempt`, parsed.
    pub limit_exempt: Vec<ipnet::IpNet>,
}

impl CheckedPolicy {
    /// Whether `ip` may be served.
    pub fn allows(&self, ip: Option<std::net::IpAddr>) -> bool {
        self.allow.is_empty() || ip.is_some_and(|ip| self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// A CIDR, or one address.
fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}

fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 2048 && !s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// Checks an answer: the schema, then each value (redirect codes, URLs
/// and headers without control characters, paths that start with `/`,
/// CIDRs that parse, limits that are sane).
pub fn parse_answer(bytes: &[u8]) -> Result<(CheckedPolicy, Vec<(bool, String)>), String> {
    let a: Answer = serde_json::from_slice(bytes)
        .map_err(|e| format!("answer does not fit the schema: {e}"))?;
    let p = &a.policy;
    if let Some(r) = &p.redirect {
        if ![301, 302, 303, 307, 308].contains(&r.code) {
            return Err(format!("policy.redirect.code {} is not a redirect", r.code));
        }
        if !header_safe(&r.url) {
            return Err("policy.redirect.url is empty or has control characters".into());
        }
    }
    if p.rewrite_target.as_deref().is_some_and(|t| t.contains('$')) && !p.regex_paths {
        return Err(
            "policy.rewriteTarget uses capture groups ($n) without policy.regexPaths".into(),
        );
    }
    for (what, v) in [
        ("appRoot", &p.app_root),
        ("rewriteTarget", &p.rewrite_target),
    ] {
        if let Some(v) = v {
            if !v.starts_with('/') || !header_safe(v) {
                return Err(format!("policy.{what} must be a path starting with /"));
            }
        }
    }
    if let Some(h) = &p.upstream_host {
        if !header_safe(h) || h.contains(' ') {
            return Err("policy.upstreamHost is not a host name".into());
        }
    }
    for (what, v) in [
        ("connectTimeoutMs", p.connect_timeout_ms),
        ("readTimeoutMs", p.read_timeout_ms),
        ("writeTimeoutMs", p.write_timeout_ms),
    ] {
        if v.is_some_and(|ms| ms == 0 || ms > 3_600_000) {
            return Err(format!("policy.{what} must be 1..=3600000"));
        }
    }
    if let Some(c) = &p.cors {
        let values =
            c.allow_origins
                .iter()
                .chain([&c.allow_methods, &c.allow_headers, &c.expose_headers]);
        if c.allow_origins.is_empty()
            || values
                .clone()
                .any(|v| v.bytes().any(|b| b < 0x20 || b == 0x7f))
        {
            return Err("policy.cors has no origins or a value with control characters".into());
        }
        if ![200, 204].contains(&c.preflight_status) {
            return Err(format!(
                "policy.cors.preflightStatus {} is not 200 or 204",
                c.preflight_status
            ));
        }
    }
    if let Some(c) = &p.canary {
        if c.weight_total == 0 || c.weight_total > 1_000_000 || c.weight > c.weight_total {
            return Err(format!(
                "policy.canary: weight {} of weightTotal {} (need 0 <= weight <= weightTotal <= 1000000, weightTotal >= 1)",
                c.weight, c.weight_total
            ));
        }
        if let Some(h) = &c.header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(format!("policy.canary.header {h:?} is not a header name"));
            }
        }
        if c.header_value.is_some() && c.header.is_none() {
            return Err("policy.canary.headerValue needs policy.canary.header".into());
        }
        if let Some(name) = &c.cookie {
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| b <= 0x20 || b >= 0x7f || b"=;,".contains(&b))
            {
                return Err(format!(
                    "policy.canary.cookie {name:?} is not a cookie name"
                ));
            }
        }
    }
    if let Some(svc) = &p.default_backend {
        let dns_label = !svc.is_empty()
            && svc.len() <= 63
            && svc
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !dns_label {
            return Err(format!(
                "policy.defaultBackend {svc:?} is not a Service name"
            ));
        }
    }
    if let Some(code) = p
        .custom_http_errors
        .iter()
        .find(|c| !(400..=599).contains(*c))
    {
        return Err(format!("policy.customHttpErrors: {code} is not 400..=599"));
    }
    if !p.custom_http_errors.is_empty() && p.default_backend.is_none() {
        return Err("policy.customHttpErrors needs policy.defaultBackend".into());
    }
    let mut limit_exempt = Vec::new();
    if let Some(l) = &p.rate_limit {
        let in_range = |v: Option<u32>| v.is_none_or(|v| (1..=1_000_000).contains(&v));
        if l.rps.is_none() && l.rpm.is_none() && l.connections.is_none() {
            return Err("policy.rateLimit sets none of rps, rpm, connections".into());
        }
        if !in_range(l.rps) || !in_range(l.rpm) || !in_range(l.connections) {
            return Err("policy.rateLimit: rps, rpm and connections must be 1..=1000000".into());
        }
        if !(1..=1000).contains(&l.burst_multiplier) {
            return Err("policy.rateLimit.burstMultiplier must be 1..=1000".into());
        }
        for r in &l.exempt {
            limit_exempt.push(
                parse_net(r)
                    .ok_or_else(|| format!("policy.rateLimit.exempt: {r:?} is not a CIDR"))?,
            );
        }
    }
    let mut allow = Vec::new();
    for r in &p.allow_source_ranges {
        let net =
            parse_net(r).ok_or_else(|| format!("policy.allowSourceRanges: {r:?} is not a CIDR"))?;
        allow.push(net);
    }
    let problems = a
        .problems
        .into_iter()
        .map(|p| match p.severity.as_str() {
            "error" => Ok((true, p.message)),
            "warning" => Ok((false, p.message)),
            other => Err(format!(
                "problems[].severity {other:?} is not warning or error"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        CheckedPolicy {
            policy: a.policy,
            allow,
            limit_exempt,
        },
        problems,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], methods: &str, headers: &str, credentials: bool) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_methods: methods.into(),
            allow_headers: headers.into(),
            allow_credentials: credentials,
            expose_headers: String::new(),
            max_age_seconds: 5,
            preflight_status: 200,
        }
    }

    #[test]
    fn cors_origins_match_by_scheme_host_and_port_with_left_wildcards() {
        for (pattern, origin, want) in [
            ("https://www.foo.com", "https://www.foo.com", true),
            ("https://www.foo.com", "HTTPS://WWW.FOO.COM", true),
            ("https://www.foo.com", "http://www.foo.com", false),
            ("https://www.foo.com", "https://www.foo.com.evil", false),
            // A missing port is the scheme's default.
            ("https://www.foo.com", "https://www.foo.com:443", true),
            ("http://a.test:80", "http://a.test", true),
            ("https://www.foo.com", "https://www.foo.com:8443", false),
            ("https://a.test:8443", "https://a.test:8443", true),
            // `*` takes one or more labels to its left, never none.
            ("https://*.bar.com", "https://www.bar.com", true),
            ("https://*.bar.com", "https://xpto.www.bar.com", true),
            ("https://*.bar.com", "https://bar.com", false),
            ("https://*.bar.com", "https://foobar.com", false),
            ("https://*.bar.com", "http://www.bar.com", false),
            ("https://*.bar.com", "https://www.bar.com:444", false),
            ("http://[::1]:8080", "http://[::1]:8080", true),
            ("http://[::1]", "http://[::1]:80", true),
            ("https://a.test", "null", false),
            ("https://*example.com", "https://evilexample.com", false),
            ("https://*", "https://any.test", false),
            ("https://a.test", "https://a.test:x", false),
        ] {
            assert_eq!(
                origin_matches(pattern, origin),
                want,
                "{pattern} vs {origin}"
            );
        }
        let c = cors(
            &["https://www.foo.com", "https://*.bar.com"],
            "GET",
            "",
            true,
        );
        assert_eq!(
            c.allow("https://a.bar.com").as_deref(),
            Some("https://a.bar.com")
        );
        assert_eq!(c.allow("https://foobar.com"), None);
        // Any origin: `*` without credentials, the origin itself with them.
        assert_eq!(
            cors(&["*"], "", "", false)
                .allow("https://x.test")
                .as_deref(),
            Some("*")
        );
        assert_eq!(
            cors(&["*"], "", "", true)
                .allow("https://x.test")
                .as_deref(),
            Some("https://x.test")
        );
        assert!(!cors(&["*"], "", "", false).varies_by_origin());
        assert!(cors(&["*"], "", "", true).varies_by_origin());
        assert!(c.varies_by_origin());
    }

    #[test]
    fn cors_wildcards_answer_with_what_was_asked() {
        let any = cors(&["*"], "*", "*", true);
        assert_eq!(any.allow_methods_for(Some("PUT")), Some("PUT"));
        assert_eq!(any.allow_methods_for(None), None);
        assert_eq!(any.allow_headers_for(Some("x-a, x-b")), Some("x-a, x-b"));
        assert_eq!(any.allow_headers_for(Some(" ")), None);
        let listed = cors(&["*"], "GET, OPTIONS", "x-a", false);
        assert_eq!(listed.allow_methods_for(Some("PUT")), Some("GET, OPTIONS"));
        assert_eq!(listed.allow_headers_for(None), Some("x-a"));
        assert_eq!(
            cors(&["*"], "", "", false).allow_methods_for(Some("GET")),
            None
        );
        let mut c = cors(&["*"], "", "", true);
        c.expose_headers = "*".into();
        assert_eq!(c.exposed(), None);
        c.allow_credentials = false;
        assert_eq!(c.exposed(), Some("*"));
        c.expose_headers = "x-c".into();
        c.allow_credentials = true;
        assert_eq!(c.exposed(), Some("x-c"));
    }

    #[test]
    fn cors_preflight_status_defaults_to_no_content_and_is_checked() {
        let base = r#"{"allowOrigins": ["*"], "allowMethods": "GET", "allowHeaders": "", "allowCredentials": false, "maxAgeSeconds": 5"#;
        let (p, _) =
            parse_answer(format!(r#"{{"policy": {{"cors": {base}}}}}}}"#).as_bytes()).unwrap();
        assert_eq!(p.policy.cors.unwrap().preflight_status, 204);
        let bad = format!(r#"{{"policy": {{"cors": {base}, "preflightStatus": 302}}}}}}"#);
        let err = parse_answer(bad.as_bytes()).unwrap_err();
        assert!(err.contains("preflightStatus 302"), "{err}");
    }

    #[test]
    fn answers_are_checked_field_by_field() {
        let (p, problems) = parse_answer(
            br#"{"policy": {"sslRedirect": true, "appRoot": "/app", "allowSourceRanges": ["10.0.0.0/8", "192.0.2.7"],
                 "bodySizeLimit": 1024, "redirect": {"url": "https://x.example/", "code": 308}},
                 "problems": [{"severity": "error", "message": "snippet refused"}]}"#,
        )
        .unwrap();
        assert!(p.policy.ssl_redirect);
        assert!(p.allows(Some("10.1.2.3".parse().unwrap())));
        assert!(p.allows(Some("192.0.2.7".parse().unwrap())));
        assert!(!p.allows(Some("192.0.2.8".parse().unwrap())));
        assert!(!p.allows(None));
        assert_eq!(problems, vec![(true, "snippet refused".to_string())]);
        for (bad, why) in [
            (&br#"{"policy": {"sslredirect": true}}"#[..], "schema"),
            (
                br#"{"policy": {"redirect": {"url": "https://x/", "code": 200}}}"#,
                "not a redirect",
            ),
            (br#"{"policy": {"appRoot": "app"}}"#, "starting with /"),
            (
                br#"{"policy": {"rewriteTarget": "/a\r\nx: y"}}"#,
                "starting with /",
            ),
            (
                br#"{"policy": {"allowSourceRanges": ["nope"]}}"#,
                "not a CIDR",
            ),
            (br#"{"policy": {"readTimeoutMs": 0}}"#, "1..=3600000"),
            (
                br#"{"policy": {}, "problems": [{"severity": "fatal", "message": "x"}]}"#,
                "severity",
            ),
            (br#"{"policy": {"canary": {"weight": 101}}}"#, "weightTotal"),
            (
                br#"{"policy": {"canary": {"header": "bad header"}}}"#,
                "not a header name",
            ),
            (
                br#"{"policy": {"canary": {"headerValue": "x"}}}"#,
                "needs policy.canary.header",
            ),
            (
                br#"{"policy": {"canary": {"cookie": "a;b"}}}"#,
                "not a cookie name",
            ),
            (br#"{"policy": {"rateLimit": {}}}"#, "sets none"),
            (
                br#"{"policy": {"defaultBackend": "Bad_Name"}}"#,
                "not a Service name",
            ),
            (
                br#"{"policy": {"defaultBackend": "errors", "customHttpErrors": [302]}}"#,
                "400..=599",
            ),
            (
                br#"{"policy": {"customHttpErrors": [404]}}"#,
                "needs policy.defaultBackend",
            ),
            (br#"{"policy": {"rateLimit": {"rps": 0}}}"#, "1..=1000000"),
            (
                br#"{"policy": {"rateLimit": {"rps": 1, "exempt": ["x"]}}}"#,
                "not a CIDR",
            ),
        ] {
            let err = parse_answer(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn canary_decision_order() {
        let c = Canary {
            header: Some("x-canary".into()),
            header_value: None,
            cookie: Some("canary".into()),
            weight: 10,
            weight_total: 100,
        };
        let h = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        let low = |_| 0;
        let high = |total| total - 1;
        assert!(c.wants(&h(&[]), low), "weight: 0 < 10");
        assert!(!c.wants(&h(&[]), high), "weight: 99 >= 10");
        assert!(c.wants(&h(&[("x-canary", "always")]), high));
        assert!(!c.wants(&h(&[("x-canary", "never")]), low));
        // The header wins over the cookie; the cookie over the weight.
        assert!(!c.wants(
            &h(&[("x-canary", "never"), ("cookie", "canary=always")]),
            low
        ));
        assert!(c.wants(&h(&[("cookie", "a=1; canary=always")]), high));
        assert!(!c.wants(&h(&[("cookie", "canary=never")]), low));
        // Other header values fall through to the next rule.
        assert!(c.wants(&h(&[("x-canary", "maybe")]), low));
        let exact = Canary {
            header_value: Some("v2".into()),
            weight: 0,
            ..c
        };
        assert!(exact.wants(&h(&[("x-canary", "v2")]), high));
        assert!(!exact.wants(&h(&[("x-canary", "always")]), low));
    }
}
