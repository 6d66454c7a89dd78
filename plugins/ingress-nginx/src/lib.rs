//! `ingress-nginx`: the `nginx.ingress.kubernetes.io/*` annotations of an
//! Ingress, parsed into typed route policy (`portico_ingress_policy`).
//! Values are checked and typed; nothing is ever pasted into
//! configuration text, which is how ingress-nginx's snippet annotations
//! became remote-code-execution bugs. Snippets are refused outright.
//!
//! Translated today:
//! `ssl-redirect`, `force-ssl-redirect`, `permanent-redirect` (+
//! `permanent-redirect-code`), `temporal-redirect`, `app-root`,
//! `rewrite-target` (with capture groups), `use-regex`, `upstream-vhost`, `proxy-body-size`,
//! `whitelist-source-range` / `allowlist-source-range`,
//! `proxy-connect-timeout`, `proxy-read-timeout`, `proxy-send-timeout`,
//! `enable-cors` with `cors-allow-origin`, `cors-allow-methods`,
//! `cors-allow-headers`, `cors-allow-credentials`, `cors-expose-headers`,
//! `cors-max-age` (ingress-nginx's defaults when unset), `backend-protocol`
//! (`HTTP`, `HTTPS`, `GRPC`, `GRPCS`, `AUTO_HTTP`), `canary` with
//! `canary-weight`, `canary-weight-total`, `canary-by-header`,
//! `canary-by-header-value`, `canary-by-cookie`, `limit-rps`, `limit-rpm`,
//! `limit-connections`, `limit-burst-multiplier`,
//! `limit-whitelist`/`limit-allowlist`, `default-backend`,
//! `custom-http-errors` (with `default-backend`).
//! The affinity annotations are the `session-affinity` plugin's. Every
//! other `nginx.ingress.kubernetes.io/*` annotation gets a warning naming
//! it as not supported, so nothing is silently ignored.

use std::collections::BTreeMap;

use portico_sdk::control::{
    BackendProtocol, Canary, ControlPlugin, Cors, RateLimit, IngressPolicyAnswer, IngressPolicyRequest, PolicyProblem, Redirect,
    RoutePolicy,
};

pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Handled by another plugin (session-affinity), not warned about.
const ELSEWHERE: &[&str] = &[
    "affinity",
    "affinity-mode",
    "session-cookie-name",
    "session-cookie-max-age",
    "session-cookie-path",
    "session-cookie-samesite",
];

const SNIPPETS: &[&str] = &[
    "configuration-snippet",
    "server-snippet",
    "auth-snippet",
    "stream-snippet",
    "modsecurity-snippet",
];

/// `8m`, `512k`, `1g`, `100` (bytes); `0` means no limit.
pub fn parse_size(v: &str) -> Option<Option<u64>> {
    let v = v.trim().to_ascii_lowercase();
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1u64 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (&v[..], 1),
    };
    let n: u64 = num.trim().parse().ok()?;
    Some(if n == 0 { None } else { n.checked_mul(mult) })
}

fn is_cidr(s: &str) -> bool {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, b)) => (ip, Some(b)),
        None => (s, None),
    };
    let addr = match ip.parse::<std::net::IpAddr>() {
        Ok(a) => a,
        Err(_) => return false,
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    bits.map_or(true, |b| b.parse::<u8>().map_or(false, |b| b <= max))
}

/// The decision, apart from the ABI (tested on the host).
pub fn translate(annotations: &BTreeMap<String, String>, tls: bool) -> IngressPolicyAnswer {
    let mut out = IngressPolicyAnswer::default();
    let mut problem = |severity: &str, message: String| {
        out.problems.push(PolicyProblem {
            severity: severity.into(),
            message,
        })
    };
    let mut p = RoutePolicy::default();
    let get = |k: &str| annotations.get(&format!("{PREFIX}{k}")).map(|v| v.trim().to_string());
    let flag = |k: &str, what: &mut dyn FnMut(&str, String)| match get(k).as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            what("warning", format!("annotation {PREFIX}{k}: {other:?} is not true or false; ignored"));
            None
        }
    };
    // ingress-nginx redirects to https by default when the Ingress has TLS.
    let ssl = flag("ssl-redirect", &mut problem).unwrap_or(tls);
    let force = flag("force-ssl-redirect", &mut problem).unwrap_or(false);
    p.ssl_redirect = ssl && tls || force;
    let url_ok = |u: &str| (u.starts_with("https://") || u.starts_with("http://")) && !u.bytes().any(|b| b < 0x21 || b == 0x7f);
    if let Some(url) = get("permanent-redirect") {
        let code = get("permanent-redirect-code").and_then(|c| c.parse().ok()).unwrap_or(301);
        if !url_ok(&url) {
            problem("error", format!("annotation {PREFIX}permanent-redirect: {url:?} is not an http(s) URL; ignored"));
        } else if ![301, 302, 303, 307, 308].contains(&code) {
            problem("error", format!("annotation {PREFIX}permanent-redirect-code: {code} is not a redirect code; ignored"));
        } else {
            p.redirect = Some(Redirect { url, code });
        }
    } else if let Some(url) = get("temporal-redirect") {
        if url_ok(&url) {
            p.redirect = Some(Redirect { url, code: 302 });
        } else {
            problem("error", format!("annotation {PREFIX}temporal-redirect: {url:?} is not an http(s) URL; ignored"));
        }
    }
    let path_ok = |v: &str| v.starts_with('/') && !v.bytes().any(|b| b < 0x21 || b == 0x7f);
    // ingress-nginx matches paths as regular expressions with use-regex,
    // and whenever rewrite-target is set (nginx's `rewrite` replaces the
    // whole path, filling `$n` from the match).
    let use_regex = flag("use-regex", &mut problem).unwrap_or(false);
    for (key, slot) in [("app-root", &mut p.app_root), ("rewrite-target", &mut p.rewrite_target)] {
        if let Some(v) = get(key) {
            if key == "app-root" && v.contains('$') {
                problem("error", format!("annotation {PREFIX}{key}: capture groups ({v:?}) are not supported; ignored"));
            } else if path_ok(&v) {
                *slot = Some(v);
            } else {
                problem("error", format!("annotation {PREFIX}{key}: {v:?} is not a path; ignored"));
            }
        }
    }
    p.regex_paths = use_regex || p.rewrite_target.is_some();
    if let Some(v) = get("upstream-vhost") {
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)) {
            p.upstream_host = Some(v);
        } else {
            problem("error", format!("annotation {PREFIX}upstream-vhost: {v:?} is not a host name; ignored"));
        }
    }
    if let Some(v) = get("proxy-body-size") {
        match parse_size(&v) {
            Some(limit) => p.body_size_limit = limit,
            None => problem("error", format!("annotation {PREFIX}proxy-body-size: {v:?} is not a size (like 8m); ignored")),
        }
    }
    for key in ["whitelist-source-range", "allowlist-source-range"] {
        if let Some(v) = get(key) {
            for r in v.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                if is_cidr(r) {
                    p.allow_source_ranges.push(r.to_string());
                } else {
                    problem("error", format!("annotation {PREFIX}{key}: {r:?} is not a CIDR; ignored"));
                }
            }
        }
    }
    for (key, slot) in [
        ("proxy-connect-timeout", &mut p.connect_timeout_ms),
        ("proxy-read-timeout", &mut p.read_timeout_ms),
        ("proxy-send-timeout", &mut p.write_timeout_ms),
    ] {
        if let Some(v) = get(key) {
            match v.trim_end_matches('s').parse::<u64>() {
                Ok(s) if (1..=3600).contains(&s) => *slot = Some(s * 1000),
                _ => problem("warning", format!("annotation {PREFIX}{key}: {v:?} is not 1..3600 seconds; ignored")),
            }
        }
    }
    if flag("enable-cors", &mut problem) == Some(true) {
        let safe = |v: &str| !v.bytes().any(|b| b < 0x20 || b == 0x7f);
        let origins: Vec<String> = get("cors-allow-origin")
            .unwrap_or_else(|| "*".into())
            .split(',')
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty() && safe(o))
            .collect();
        let text = |k: &str, default: &str| get(k).filter(|v| safe(v)).unwrap_or_else(|| default.to_string());
        p.cors = Some(Cors {
            allow_origins: if origins.is_empty() { vec!["*".into()] } else { origins },
            allow_methods: text("cors-allow-methods", "GET, PUT, POST, DELETE, PATCH, OPTIONS"),
            allow_headers: text(
                "cors-allow-headers",
                "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization",
            ),
            allow_credentials: get("cors-allow-credentials").as_deref() != Some("false"),
            expose_headers: text("cors-expose-headers", ""),
            max_age_seconds: get("cors-max-age").and_then(|v| v.parse().ok()).unwrap_or(1_728_000),
        });
    }
    if let Some(v) = get("backend-protocol") {
        p.backend_protocol = match v.to_ascii_uppercase().as_str() {
            "HTTP" | "AUTO_HTTP" => Some(BackendProtocol::Http),
            "HTTPS" => Some(BackendProtocol::Https),
            "GRPC" | "H2C" => Some(BackendProtocol::Grpc),
            "GRPCS" => Some(BackendProtocol::Grpcs),
            _ => {
                // Serving a FastCGI or unknown backend as HTTP would send it
                // requests it cannot read: refuse instead.
                problem("error", format!(
                    "annotation {PREFIX}backend-protocol: {v:?} is not supported (HTTP, HTTPS, GRPC, GRPCS, AUTO_HTTP); ignored"
                ));
                None
            }
        };
    }
    if flag("canary", &mut problem) == Some(true) {
        let number = |k: &str, default: u32, what: &mut dyn FnMut(&str, String)| match get(k) {
            None => default,
            Some(v) => v.parse::<u32>().unwrap_or_else(|_| {
                what("error", format!("annotation {PREFIX}{k}: {v:?} is not a whole number; {default} used"));
                default
            }),
        };
        let total = number("canary-weight-total", 100, &mut problem).max(1);
        let mut weight = number("canary-weight", 0, &mut problem);
        if weight > total {
            problem("warning", format!("annotation {PREFIX}canary-weight: {weight} is more than the total {total}; every request goes to the canary"));
            weight = total;
        }
        let header = get("canary-by-header").filter(|h| {
            let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !ok {
                problem("error", format!("annotation {PREFIX}canary-by-header: {h:?} is not a header name; ignored"));
            }
            ok
        });
        let header_value = if header.is_some() { get("canary-by-header-value").filter(|v| !v.is_empty() && !v.bytes().any(|b| b < 0x20 || b == 0x7f)) } else { None };
        let cookie = get("canary-by-cookie").filter(|c| {
            let ok = !c.is_empty() && !c.bytes().any(|b| b <= 0x20 || b >= 0x7f || b"=;,".contains(&b));
            if !ok {
                problem("error", format!("annotation {PREFIX}canary-by-cookie: {c:?} is not a cookie name; ignored"));
            }
            ok
        });
        p.canary = Some(Canary { header, header_value, cookie, weight, weight_total: total });
    }
    {
        let mut count = |k: &str| match get(k) {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(0) => None,
                Ok(n) if n <= 1_000_000 => Some(n),
                _ => {
                    problem("error", format!("annotation {PREFIX}{k}: {v:?} is not a number 0..1000000; ignored"));
                    None
                }
            },
        };
        let rps = count("limit-rps");
        let rpm = count("limit-rpm");
        let connections = count("limit-connections");
        let burst = count("limit-burst-multiplier").unwrap_or(5).min(1000);
        if rps.is_some() || rpm.is_some() || connections.is_some() {
            let mut exempt = Vec::new();
            for key in ["limit-whitelist", "limit-allowlist"] {
                for r in get(key).unwrap_or_default().split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    if is_cidr(r) {
                        exempt.push(r.to_string());
                    } else {
                        problem("error", format!("annotation {PREFIX}{key}: {r:?} is not a CIDR; ignored"));
                    }
                }
            }
            p.rate_limit = Some(RateLimit { rps, rpm, burst_multiplier: burst, connections, exempt });
        }
    }
    if let Some(svc) = get("default-backend") {
        let ok = !svc.is_empty() && svc.len() <= 63 && svc.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            p.default_backend = Some(svc);
        } else {
            problem("error", format!("annotation {PREFIX}default-backend: {svc:?} is not a Service name; ignored"));
        }
    }
    if let Some(v) = get("custom-http-errors") {
        for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match c.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => p.custom_http_errors.push(code),
                _ => problem("error", format!("annotation {PREFIX}custom-http-errors: {c:?} is not a code 400..599; ignored")),
            }
        }
        if !p.custom_http_errors.is_empty() && p.default_backend.is_none() {
            // ingress-nginx falls back to its global default backend;
            // Portico has none, so the errors pass through unchanged.
            problem("warning", format!("annotation {PREFIX}custom-http-errors needs {PREFIX}default-backend in Portico; ignored"));
            p.custom_http_errors.clear();
        }
    }
    let handled = [
        "default-backend", "custom-http-errors",
        "limit-rps", "limit-rpm", "limit-connections", "limit-burst-multiplier",
        "limit-whitelist", "limit-allowlist", "use-regex",
        "canary", "canary-weight", "canary-weight-total", "canary-by-header",
        "canary-by-header-value", "canary-by-cookie",
        "backend-protocol",
        "enable-cors", "cors-allow-origin", "cors-allow-methods", "cors-allow-headers",
        "cors-allow-credentials", "cors-expose-headers", "cors-max-age",
        "ssl-redirect", "force-ssl-redirect", "permanent-redirect", "permanent-redirect-code",
        "temporal-redirect", "app-root", "rewrite-target", "upstream-vhost", "proxy-body-size",
        "whitelist-source-range", "allowlist-source-range", "proxy-connect-timeout",
        "proxy-read-timeout", "proxy-send-timeout",
    ];
    for key in annotations.keys().filter_map(|k| k.strip_prefix(PREFIX)) {
        if SNIPPETS.contains(&key) {
            problem("error", format!(
                "annotation {PREFIX}{key} refused: snippets paste raw configuration into the proxy, \
                 which is how ingress-nginx got remote code execution (CVE-2021-25742, CVE-2025-1974); \
                 use typed annotations or a plugin"
            ));
        } else if !handled.contains(&key) && !ELSEWHERE.contains(&key) {
            problem("warning", format!("annotation {PREFIX}{key} is not supported by Portico; ignored"));
        }
    }
    out.policy = p;
    out
}

#[derive(Default)]
pub struct IngressNginx;

impl ControlPlugin for IngressNginx {
    fn ingress_policy(&mut self, req: IngressPolicyRequest) -> Result<IngressPolicyAnswer, String> {
        Ok(translate(&req.ingress.annotations, req.ingress.tls))
    }
}

portico_sdk::control_plugin!(IngressNginx);

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string())).collect()
    }

    #[test]
    fn typed_values_from_annotations() {
        let a = translate(
            &ann(&[
                ("app-root", "/app"),
                ("rewrite-target", "/v2"),
                ("proxy-body-size", "1k"),
                ("whitelist-source-range", "10.0.0.0/8, 192.0.2.7"),
                ("proxy-read-timeout", "30"),
                ("upstream-vhost", "internal.svc"),
            ]),
            false,
        );
        let p = &a.policy;
        assert_eq!(p.app_root.as_deref(), Some("/app"));
        assert_eq!(p.rewrite_target.as_deref(), Some("/v2"));
        assert!(p.regex_paths, "rewrite-target implies regex paths");
        assert_eq!(p.body_size_limit, Some(1024));
        assert_eq!(p.allow_source_ranges, vec!["10.0.0.0/8", "192.0.2.7"]);
        assert_eq!(p.read_timeout_ms, Some(30_000));
        assert_eq!(p.upstream_host.as_deref(), Some("internal.svc"));
        assert!(!p.ssl_redirect);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
    }

    #[test]
    fn cors_with_ingress_nginx_defaults() {
        let c = translate(&ann(&[("enable-cors", "true")]), false).policy.cors.unwrap();
        assert_eq!(c.allow_origins, vec!["*"]);
        assert!(c.allow_credentials);
        assert_eq!(c.max_age_seconds, 1_728_000);
        let c = translate(
            &ann(&[("enable-cors", "true"), ("cors-allow-origin", "https://a.example, https://b.example"), ("cors-allow-credentials", "false")]),
            false,
        )
        .policy
        .cors
        .unwrap();
        assert_eq!(c.allow_origins, vec!["https://a.example", "https://b.example"]);
        assert!(!c.allow_credentials);
        assert!(translate(&ann(&[("enable-cors", "false")]), false).policy.cors.is_none());
    }

    #[test]
    fn custom_errors_need_a_default_backend() {
        let a = translate(&ann(&[("default-backend", "errors"), ("custom-http-errors", "404, 503,200")]), false);
        assert_eq!(a.policy.default_backend.as_deref(), Some("errors"));
        assert_eq!(a.policy.custom_http_errors, vec![404, 503]);
        assert!(a.problems[0].message.contains("\"200\""), "{:?}", a.problems);
        let a = translate(&ann(&[("custom-http-errors", "404")]), false);
        assert!(a.policy.custom_http_errors.is_empty());
        assert!(a.problems[0].message.contains("needs"), "{:?}", a.problems);
    }

    #[test]
    fn rate_limits() {
        let a = translate(
            &ann(&[("limit-rps", "5"), ("limit-connections", "2"), ("limit-whitelist", "10.0.0.0/8, nope")]),
            false,
        );
        assert_eq!(
            a.policy.rate_limit,
            Some(RateLimit {
                rps: Some(5),
                rpm: None,
                burst_multiplier: 5,
                connections: Some(2),
                exempt: vec!["10.0.0.0/8".into()],
            })
        );
        assert!(a.problems[0].message.contains("nope"), "{:?}", a.problems);
        assert_eq!(translate(&ann(&[("limit-rps", "0")]), false).policy.rate_limit, None);
        assert_eq!(translate(&ann(&[("limit-whitelist", "10.0.0.0/8")]), false).policy.rate_limit, None);
    }

    #[test]
    fn canary_annotations() {
        let a = translate(
            &ann(&[
                ("canary", "true"),
                ("canary-weight", "20"),
                ("canary-by-header", "X-Canary"),
                ("canary-by-cookie", "use_canary"),
            ]),
            false,
        );
        assert_eq!(
            a.policy.canary,
            Some(Canary {
                header: Some("X-Canary".into()),
                header_value: None,
                cookie: Some("use_canary".into()),
                weight: 20,
                weight_total: 100,
            })
        );
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        // Not a canary without `canary: "true"`.
        assert_eq!(translate(&ann(&[("canary-weight", "20")]), false).policy.canary, None);
        let a = translate(&ann(&[("canary", "true"), ("canary-weight", "lots"), ("canary-by-header", "a b")]), false);
        let c = a.policy.canary.unwrap();
        assert_eq!((c.weight, c.header), (0, None));
        assert_eq!(a.problems.len(), 2, "{:?}", a.problems);
    }

    #[test]
    fn backend_protocols() {
        for (v, want) in [
            ("HTTPS", BackendProtocol::Https),
            ("grpc", BackendProtocol::Grpc),
            ("GRPCS", BackendProtocol::Grpcs),
            ("AUTO_HTTP", BackendProtocol::Http),
        ] {
            let a = translate(&ann(&[("backend-protocol", v)]), false);
            assert_eq!(a.policy.backend_protocol, Some(want), "{v}");
            assert!(a.problems.is_empty(), "{:?}", a.problems);
        }
        let a = translate(&ann(&[("backend-protocol", "FCGI")]), false);
        assert_eq!(a.policy.backend_protocol, None);
        assert!(a.problems[0].message.contains("FCGI"), "{:?}", a.problems);
    }

    #[test]
    fn ssl_redirect_defaults_follow_tls() {
        assert!(translate(&ann(&[]), true).policy.ssl_redirect);
        assert!(!translate(&ann(&[("ssl-redirect", "false")]), true).policy.ssl_redirect);
        assert!(translate(&ann(&[("force-ssl-redirect", "true")]), false).policy.ssl_redirect);
        let r = translate(&ann(&[("permanent-redirect", "https://new.example/"), ("permanent-redirect-code", "308")]), false);
        assert_eq!(r.policy.redirect, Some(Redirect { url: "https://new.example/".into(), code: 308 }));
    }

    #[test]
    fn snippets_and_bad_values_are_refused_by_name() {
        let a = translate(
            &ann(&[
                ("configuration-snippet", "more_set_headers \"x: y\";"),
                ("proxy-body-size", "lots"),
                ("rewrite-target", "v2"),
                ("whitelist-source-range", "10.0.0.0/99"),
                ("enable-canary-thing", "true"),
                ("affinity", "cookie"),
            ]),
            false,
        );
        let text: Vec<String> = a.problems.iter().map(|p| format!("{} {}", p.severity, p.message)).collect();
        assert!(text.iter().any(|t| t.starts_with("error") && t.contains("configuration-snippet refused")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("proxy-body-size") && t.contains("not a size")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("rewrite-target") && t.contains("not a path")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("10.0.0.0/99")), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with("warning") && t.contains("enable-canary-thing is not supported")), "{text:?}");
        assert!(!text.iter().any(|t| t.contains("affinity")), "{text:?}");
        assert_eq!(a.policy, RoutePolicy::default());
        assert_eq!(parse_size("0"), Some(None));
        assert_eq!(parse_size("8m"), Some(Some(8 << 20)));
    }
}
