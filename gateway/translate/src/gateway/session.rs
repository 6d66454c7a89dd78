//! HTTPRoute and GRPCRoute `sessionPersistence` (GEP-1619), carried out
//! by the `session-affinity` plugin: a rule with cookie persistence gets
//! the ingress-nginx cookie-affinity annotations that plugin reads, one
//! with header persistence `portico.io/session-header`, so the plugin is
//! scoped to exactly those routes when the snapshot is built and the same
//! code serves Ingress and Gateway users.

use std::collections::BTreeMap;

use portico_gateway_api::httproutes::{
    HttpRouteRulesSessionPersistence, HttpRouteRulesSessionPersistenceCookieConfigLifetimeType,
    HttpRouteRulesSessionPersistenceType,
};
use portico_model::routing::PathKind;

/// The annotation that scopes the plugin to a route with cookie
/// persistence.
pub const AFFINITY: &str = "nginx.ingress.kubernetes.io/affinity";
/// The annotation that names the header of header persistence (and
/// scopes the plugin to the route).
pub const SESSION_HEADER: &str = "portico.io/session-header";
const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Headers a session header must not replace: message framing,
/// hop-by-hop fields, Host, and cookies (the backend's own sessions).
const RESERVED_HEADERS: [&str; 12] = [
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

/// The cookie a rule's session persistence asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCookie {
    pub name: String,
    /// `Some` for a `Permanent` cookie: its `Max-Age` in seconds.
    pub max_age: Option<u64>,
}

/// How a rule keeps its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    Cookie(SessionCookie),
    /// The header's name (lower case).
    Header(String),
}

impl Persistence {
    /// The annotation the plugin is scoped by (`applies_to`).
    pub fn scope_annotation(&self) -> &'static str {
        match self {
            Persistence::Cookie(_) => AFFINITY,
            Persistence::Header(_) => SESSION_HEADER,
        }
    }
}

/// The persistence `sp` asks for, with warnings about what is accepted
/// but not carried out; `Err` names what cannot be served (the rule then
/// serves without persistence). `route` and `rule` make the default name
/// unique per rule, as the GEP asks when `sessionName` is not given.
pub fn persistence(
    sp: &HttpRouteRulesSessionPersistence,
    route: &str,
    rule: usize,
    what: &str,
) -> Result<(Persistence, Vec<String>), String> {
    let mut warnings = Vec::new();
    let name = match sp.session_name.as_deref() {
        None | Some("") => format!("portico-session-{:08x}", fnv32(&format!("{route}/{rule}"))),
        Some(n) if n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {
            n.to_string()
        }
        Some(n) => {
            return Err(format!(
                "{what}.sessionName {n:?} is not a cookie or header name Portico sets (letters, digits, '-' and '_')"
            ))
        }
    };
    let timeout_secs = match sp.absolute_timeout.as_deref() {
        None => None,
        Some(t) => match super::parse_duration_ms(t) {
            Some(ms) => Some(ms.div_ceil(1000)),
            None => {
                return Err(format!(
                    "{what}.absoluteTimeout {t:?} is not a Gateway API duration (e.g. 1h, 30m, 90s)"
                ))
            }
        },
    };
    if sp.r#type == Some(HttpRouteRulesSessionPersistenceType::Header) {
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{what}.sessionName {name:?} is a header the proxy or the backend owns (framing, hop-by-hop, Host, cookies); pick another"
            ));
        }
        if timeout_secs.is_some() {
            warnings.push(format!(
                "{what}.absoluteTimeout is not enforced for Header persistence (a session lasts while the client sends the header)"
            ));
        }
        return Ok((Persistence::Header(name.to_ascii_lowercase()), warnings));
    }
    let permanent = sp
        .cookie_config
        .as_ref()
        .and_then(|c| c.lifetime_type.as_ref())
        == Some(&HttpRouteRulesSessionPersistenceCookieConfigLifetimeType::Permanent);
    let max_age = if permanent {
        match timeout_secs {
            Some(s) => Some(s),
            None => {
                return Err(format!(
                    "{what}: a Permanent cookie needs absoluteTimeout (its Max-Age)"
                ))
            }
        }
    } else {
        if timeout_secs.is_some() {
            warnings.push(format!(
                "{what}.absoluteTimeout on a Session cookie is not enforced (the session lasts until the browser ends it); use lifetimeType Permanent for a cookie that expires"
            ));
        }
        None
    };
    Ok((
        Persistence::Cookie(SessionCookie { name, max_age }),
        warnings,
    ))
}

/// The cookie's `Path` for a match (GEP-1619): the matched path; for a
/// regular expression, its longest literal prefix, cut back to a `/`.
pub fn cookie_path(kind: PathKind, path: &str) -> String {
    let literal = match kind {
        PathKind::Regex => {
            let end = path
                .find(|c: char| ".^$*+?()[]{}|\\".contains(c))
                .unwrap_or(path.len());
            let lit = &path[..end];
            if end == path.len() {
                lit
            } else {
                &lit[..lit.rfind('/').map_or(0, |i| i)]
            }
        }
        PathKind::Exact | PathKind::Prefix => path,
    };
    let trimmed = literal.trim_end_matches('/');
    if trimmed.is_empty() || !trimmed.starts_with('/') || trimmed.contains(';') {
        "/".into()
    } else {
        trimmed.to_string()
    }
}

/// The route's annotations with those of `p` set, replacing any
/// affinity settings the route carried itself.
pub fn annotations(
    route: &BTreeMap<String, String>,
    p: &Persistence,
    path: &str,
    secure: bool,
) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = route
        .iter()
        .filter(|(k, _)| {
            k.as_str() != SESSION_HEADER
                && (!k.starts_with(PREFIX) || !is_affinity_key(&k[PREFIX.len()..]))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let cookie = match p {
        Persistence::Header(name) => {
            a.insert(SESSION_HEADER.into(), name.clone());
            return a;
        }
        Persistence::Cookie(c) => c,
    };
    let mut set = |k: &str, v: String| {
        a.insert(format!("{PREFIX}{k}"), v);
    };
    set("affinity", "cookie".into());
    set("session-cookie-name", cookie.name.clone());
    set("session-cookie-path", path.into());
    set("session-cookie-samesite", "Lax".into());
    if secure {
        set("session-cookie-secure", "true".into());
    }
    if let Some(age) = cookie.max_age {
        set("session-cookie-max-age", age.to_string());
    }
    a
}

fn is_affinity_key(k: &str) -> bool {
    k == "affinity" || k == "affinity-mode" || k.starts_with("session-cookie-")
}

/// FNV-1a, 32 bits: a short, stable default cookie name.
fn fnv32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session-affinity plugin refuses the same header names (it is
    /// built apart, for wasm32 with rustc 1.63, so it keeps its own copy).
    #[test]
    fn the_plugin_reserves_the_same_headers() {
        let plugin = include_str!("../../../../plugins/session-affinity/src/lib.rs");
        let start = plugin
            .find("const RESERVED: [&str; ")
            .expect("the plugin's RESERVED list");
        let list = &plugin[start..start + plugin[start..].find("];").unwrap()];
        let names: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
        assert_eq!(names, RESERVED_HEADERS, "plugins/session-affinity RESERVED");
    }
    use portico_gateway_api::httproutes::HttpRouteRulesSessionPersistenceCookieConfig;
    use HttpRouteRulesSessionPersistenceCookieConfigLifetimeType as L;

    fn sp(
        ty: Option<HttpRouteRulesSessionPersistenceType>,
        name: Option<&str>,
        timeout: Option<&str>,
        lifetime: Option<L>,
    ) -> HttpRouteRulesSessionPersistence {
        HttpRouteRulesSessionPersistence {
            r#type: ty,
            session_name: name.map(Into::into),
            absolute_timeout: timeout.map(Into::into),
            cookie_config: lifetime.map(|l| HttpRouteRulesSessionPersistenceCookieConfig {
                lifetime_type: Some(l),
            }),
        }
    }

    /// `persistence`, expecting a cookie.
    fn cookie(
        sp: &HttpRouteRulesSessionPersistence,
        route: &str,
        rule: usize,
    ) -> Result<(SessionCookie, Vec<String>), String> {
        persistence(sp, route, rule, "x").map(|(p, w)| match p {
            Persistence::Cookie(c) => (c, w),
            Persistence::Header(h) => panic!("a header, {h}"),
        })
    }

    #[test]
    fn cookie_names_default_per_rule_and_are_checked() {
        let (a, w) = cookie(&sp(None, None, None, None), "ns/r", 0).unwrap();
        let (b, _) = cookie(&sp(None, None, None, None), "ns/r", 1).unwrap();
        assert!(
            a.name.starts_with("portico-session-") && a.name.len() == 24,
            "{a:?}"
        );
        assert_ne!(a.name, b.name);
        assert_eq!(a.max_age, None);
        assert!(w.is_empty());
        let (c, _) = cookie(&sp(None, Some("JSESSIONID"), None, None), "ns/r", 0).unwrap();
        assert_eq!(c.name, "JSESSIONID");
        let e = cookie(&sp(None, Some("a;b"), None, None), "ns/r", 0).unwrap_err();
        assert!(
            e.contains("x.sessionName \"a;b\" is not a cookie or header name"),
            "{e}"
        );
    }

    #[test]
    fn lifetimes_and_timeouts() {
        let (c, w) = cookie(&sp(None, None, Some("1h30m"), Some(L::Permanent)), "r", 0).unwrap();
        assert_eq!(c.max_age, Some(5400));
        assert!(w.is_empty());
        // Rounded up: a cookie must not expire before the session does.
        let (c, _) = cookie(&sp(None, None, Some("1500ms"), Some(L::Permanent)), "r", 0).unwrap();
        assert_eq!(c.max_age, Some(2));
        let e = cookie(&sp(None, None, None, Some(L::Permanent)), "r", 0).unwrap_err();
        assert!(e.contains("Permanent cookie needs absoluteTimeout"), "{e}");
        let (c, w) = cookie(&sp(None, None, Some("10m"), Some(L::Session)), "r", 0).unwrap();
        assert_eq!(c.max_age, None);
        assert!(
            w[0].contains("x.absoluteTimeout on a Session cookie is not enforced"),
            "{w:?}"
        );
        let e = cookie(&sp(None, None, Some("ten"), None), "r", 0).unwrap_err();
        assert!(e.contains("x.absoluteTimeout \"ten\""), "{e}");
    }

    #[test]
    fn header_persistence_names_a_header() {
        let header = || Some(HttpRouteRulesSessionPersistenceType::Header);
        let (p, w) =
            persistence(&sp(header(), Some("X-Session"), None, None), "r", 0, "x").unwrap();
        assert_eq!(p, Persistence::Header("x-session".into()));
        assert_eq!(p.scope_annotation(), SESSION_HEADER);
        assert!(w.is_empty());
        let (p, w) = persistence(&sp(header(), None, Some("1h"), None), "r", 0, "x").unwrap();
        assert!(matches!(p, Persistence::Header(n) if n.starts_with("portico-session-")));
        assert!(
            w[0].contains("x.absoluteTimeout is not enforced for Header persistence"),
            "{w:?}"
        );
        for reserved in ["Content-Length", "set-cookie", "Connection"] {
            let e =
                persistence(&sp(header(), Some(reserved), None, None), "r", 0, "x").unwrap_err();
            assert!(e.contains("a header the proxy or the backend owns"), "{e}");
        }
        let e = persistence(&sp(header(), Some("a b"), None, None), "r", 0, "x").unwrap_err();
        assert!(
            e.contains("x.sessionName \"a b\" is not a cookie or header name"),
            "{e}"
        );
        // Replacing the route's own affinity settings.
        let route = BTreeMap::from([(format!("{PREFIX}affinity"), "cookie".to_string())]);
        let a = annotations(&route, &Persistence::Header("x-s".into()), "/", true);
        assert_eq!(
            a,
            BTreeMap::from([(SESSION_HEADER.to_string(), "x-s".to_string())])
        );
    }

    #[test]
    fn cookie_paths_follow_the_matched_path() {
        assert_eq!(cookie_path(PathKind::Prefix, "/"), "/");
        assert_eq!(cookie_path(PathKind::Prefix, "/app/"), "/app");
        assert_eq!(cookie_path(PathKind::Exact, "/app/login"), "/app/login");
        // The GEP's example: the longest literal prefix, to a '/'.
        assert_eq!(cookie_path(PathKind::Regex, "/p1/p2/.*/p3"), "/p1/p2");
        assert_eq!(cookie_path(PathKind::Regex, "/p1/p2[0-9]+"), "/p1");
        assert_eq!(cookie_path(PathKind::Regex, "/lit/only"), "/lit/only");
        assert_eq!(cookie_path(PathKind::Regex, ".*"), "/");
        assert_eq!(cookie_path(PathKind::Prefix, "/a;b"), "/");
    }

    #[test]
    fn annotations_replace_the_routes_own_affinity_settings() {
        let route = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            (format!("{PREFIX}session-cookie-name"), "OLD".to_string()),
            (format!("{PREFIX}affinity-mode"), "persistent".to_string()),
            (SESSION_HEADER.to_string(), "x-old".to_string()),
        ]);
        let c = |max_age| {
            Persistence::Cookie(SessionCookie {
                name: "S".into(),
                max_age,
            })
        };
        let a = annotations(&route, &c(Some(60)), "/app", true);
        let get = |k: &str| a.get(&format!("{PREFIX}{k}")).map(String::as_str);
        assert_eq!(a.get("team").map(String::as_str), Some("a"));
        assert_eq!(get("affinity"), Some("cookie"));
        assert_eq!(get("session-cookie-name"), Some("S"));
        assert_eq!(get("session-cookie-path"), Some("/app"));
        assert_eq!(get("session-cookie-max-age"), Some("60"));
        assert_eq!(get("session-cookie-secure"), Some("true"));
        assert_eq!(get("affinity-mode"), None);
        assert_eq!(a.get(SESSION_HEADER), None);
        let a = annotations(&route, &c(None), "/", false);
        assert_eq!(a.get(&format!("{PREFIX}session-cookie-max-age")), None);
        assert_eq!(a.get(&format!("{PREFIX}session-cookie-secure")), None);
    }
}
