//! What a Gateway API route rule adds to a route beyond host, path and
//! one backend: request conditions (method, headers, query parameters,
//! the listener it arrived on), filters (header edits, redirects,
//! rewrites), weighted backends and a request timeout.
//!
//! Translation builds these once per rule; the data plane only evaluates
//! them. Precedence between rules of one host and path is decided by
//! [`crate::routing::VirtualHost`] from [`RequestConditions::precedence`].

use std::sync::Arc;

use serde::Serialize;

use crate::snapshot::BackendKey;

/// A compiled regular expression of a header or query match, anchored
/// at both ends (the Gateway API matches the whole value).
#[derive(Debug, Clone)]
pub struct ValueRegex(pub Arc<regex::Regex>);

impl ValueRegex {
    pub fn new(pattern: &str) -> Result<ValueRegex, String> {
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map(|r| ValueRegex(Arc::new(r)))
            .map_err(|e| format!("not a regular expression: {e}"))
    }
}

impl PartialEq for ValueRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for ValueRegex {}

impl Serialize for ValueRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueMatch {
    Exact(String),
    Regex(ValueRegex),
}

impl ValueMatch {
    fn holds(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(want) => value == want,
            ValueMatch::Regex(r) => r.0.is_match(value),
        }
    }
}

/// A header or query parameter that must be present with a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedMatch {
    /// Header names lower-cased (they compare case-insensitively); query
    /// parameter names as written (they compare exactly).
    pub name: String,
    pub value: ValueMatch,
}

/// Conditions a request must meet, all of them, for a route to take it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestConditions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NamedMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<NamedMatch>,
    /// Local ports the request must arrive on (the ports of the Gateway
    /// listeners the route attached to); empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Only TLS (`true`) or only plain (`false`) listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

/// What a request offers to [`RequestConditions`].
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The local port the request arrived on.
    pub port: Option<u16>,
    pub tls: bool,
    /// `None` where the request is not parsed into these (the HTTP/1.1
    /// fast path): its conditions then count as met, and the route found
    /// is one the fast path leaves to the full one.
    pub request: Option<RequestParts<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
}

impl RequestConditions {
    pub fn holds(&self, facts: &RequestFacts<'_>) -> bool {
        if self.tls.is_some_and(|t| t != facts.tls) {
            return false;
        }
        if !self.ports.is_empty() && !facts.port.is_some_and(|p| self.ports.contains(&p)) {
            return false;
        }
        let Some(req) = facts.request else {
            return true;
        };
        if self.method.as_deref().is_some_and(|m| m != req.method) {
            return false;
        }
        let header_ok = |m: &NamedMatch| {
            // Several fields of one name count as their comma-joined
            // value (RFC 9110 §5.3).
            let mut values = req.headers.get_all(m.name.as_str()).iter();
            let Some(first) = values.next() else {
                return false;
            };
            match values.next() {
                None => first.to_str().is_ok_and(|v| m.value.holds(v)),
                Some(second) => {
                    let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
                    for v in std::iter::once(second).chain(values) {
                        joined.push_str(", ");
                        joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                    }
                    m.value.holds(&joined)
                }
            }
        };
        if !self.headers.iter().all(header_ok) {
            return false;
        }
        self.query.iter().all(|m| {
            // The first occurrence of a parameter counts.
            req.query.is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == m.name.as_str())
                    .is_some_and(|(_, v)| m.value.holds(&v))
            })
        })
    }

    /// The Gateway API's order between matches of equal path: a method
    /// first, then more header matches, then more query matches. Larger
    /// sorts first.
    pub fn precedence(&self) -> (bool, usize, usize) {
        (self.method.is_some(), self.headers.len(), self.query.len())
    }

    /// Whether the conditions only say which listener the request came
    /// through (which the fast path knows).
    pub fn only_listener(&self) -> bool {
        self.method.is_none() && self.headers.is_empty() && self.query.is_empty()
    }
}

/// Header edits of a `RequestHeaderModifier` or `ResponseHeaderModifier`
/// filter, applied in the spec's order: set, add, remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderEdits {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathChange {
    ReplaceFullPath(String),
    /// Replaces the route's matched `PathPrefix` (element-wise).
    ReplacePrefixMatch(String),
}

impl PathChange {
    /// The new path for `path` (no query) matched by a prefix `matched`.
    pub fn apply(&self, path: &str, matched: &str) -> String {
        match self {
            PathChange::ReplaceFullPath(p) => p.clone(),
            PathChange::ReplacePrefixMatch(with) => {
                let prefix = matched.trim_end_matches('/');
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let with = with.trim_end_matches('/');
                let out = match (with.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_string(),
                    (true, false) => rest.to_string(),
                    (false, _) => format!("{with}{rest}"),
                };
                if out.starts_with('/') {
                    out
                } else {
                    format!("/{out}")
                }
            }
        }
    }
}

/// A `RequestRedirect` filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedirectFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub status: u16,
}

impl RedirectFilter {
    /// The `Location` for a request. `host` without its port; `port` the
    /// listener's; `matched` the route's path prefix.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
        path: &str,
        query: Option<&str>,
        matched: &str,
    ) -> String {
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        // The spec: a port given wins; else a new scheme's well-known
        // port; else the listener's. Well-known ports are left out.
        let port_out = match (self.port, self.scheme.as_deref()) {
            (Some(p), _) => p,
            (None, Some("http")) => 80,
            (None, Some("https")) => 443,
            (None, _) => port,
        };
        let well_known = matches!((scheme_out, port_out), ("http", 80) | ("https", 443));
        let host_out = self.hostname.as_deref().unwrap_or(host);
        let path_out = match &self.path {
            Some(change) => change.apply(path, matched),
            None => path.to_string(),
        };
        let mut out = format!("{scheme_out}://{host_out}");
        if !well_known {
            out.push(':');
            out.push_str(&port_out.to_string());
        }
        out.push_str(&path_out);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// A `URLRewrite` filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RewriteFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathChange>,
}

/// One backend of a rule with its weight; `None` stands for a backend
/// reference that does not resolve, whose share of requests gets 500
/// (as the spec asks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WeightedBackend {
    pub backend: Option<BackendKey>,
    pub weight: u32,
    /// The backendRef's own header filters, applied after the rule's
    /// when this backend is drawn.
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

/// A Gateway API route rule as the data plane applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleAction {
    /// `HTTPRoute namespace/name`, for logs and `/config`.
    pub source: String,
    /// The rule's index in the route.
    pub rule: usize,
    /// The Gateway listener it attached through (`Gateway ns/name
    /// listener L`), for `explain`.
    pub via: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<RequestConditions>,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteFilter>,
    /// More than one backend, or one that does not resolve: the route's
    /// own `backend` is then only the first valid one, for display.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weighted: Vec<WeightedBackend>,
    /// The whole request, to the end of the response (`timeouts.request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// One attempt at a backend (`timeouts.backendRequest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_timeout_ms: Option<u64>,
    /// `RequestMirror` filters whose backend resolved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorFilter>,
}

/// A `RequestMirror` filter: a share of the rule's requests is copied to
/// one endpoint of `backend`, whose answer is read and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorFilter {
    pub backend: BackendKey,
    /// `numerator` of every `denominator` requests are copied (`percent`
    /// is n/100; neither: all).
    pub numerator: u32,
    pub denominator: u32,
}

impl MirrorFilter {
    /// Whether this request is copied; `roll` is uniform in `0..n`.
    pub fn wants(&self, roll: impl FnOnce(u32) -> u32) -> bool {
        self.numerator >= self.denominator
            || (self.numerator > 0 && roll(self.denominator) < self.numerator)
    }
}

/// Which backend a weighted rule sends this request to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightedPick<'a> {
    Backend(&'a BackendKey),
    /// The draw fell on a backend that does not resolve, or every weight
    /// is zero: the request gets 500.
    Invalid,
}

impl RuleAction {
    /// Nothing here acts on a request beyond choosing its listener.
    pub fn is_plain(&self) -> bool {
        self.conditions.as_ref().is_none_or(|c| c.only_listener())
            && self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && self.redirect.is_none()
            && self.rewrite.is_none()
            && self.weighted.is_empty()
            && self.request_timeout_ms.is_none()
            && self.backend_timeout_ms.is_none()
            && self.mirrors.is_empty()
    }

    /// Draws among `weighted`; `roll` is uniform in `0..total` (random
    /// in the data plane, fixed in tests).
    pub fn pick(&self, roll: impl FnOnce(u32) -> u32) -> Option<WeightedPick<'_>> {
        pick_weighted(&self.weighted, roll)
    }
}

/// Draws among weighted backends (an HTTP rule's requests, an L4 route's
/// connections); `None` when there are none. `roll` is uniform in
/// `0..total`.
pub fn pick_weighted(
    weighted: &[WeightedBackend],
    roll: impl FnOnce(u32) -> u32,
) -> Option<WeightedPick<'_>> {
    if weighted.is_empty() {
        return None;
    }
    let total: u32 = weighted
        .iter()
        .fold(0u32, |t, w| t.saturating_add(w.weight));
    if total == 0 {
        return Some(WeightedPick::Invalid);
    }
    let mut at = roll(total);
    for w in weighted {
        if at < w.weight {
            return Some(match &w.backend {
                Some(b) => WeightedPick::Backend(b),
                None => WeightedPick::Invalid,
            });
        }
        at -= w.weight;
    }
    Some(WeightedPick::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(headers: &'a http::HeaderMap, query: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            port: Some(80),
            tls: false,
            request: Some(RequestParts {
                method: "GET",
                headers,
                query,
            }),
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-version", "v2".parse().unwrap());
        let c = RequestConditions {
            method: Some("GET".into()),
            headers: vec![NamedMatch {
                name: "x-version".into(),
                value: ValueMatch::Exact("v2".into()),
            }],
            query: vec![NamedMatch {
                name: "debug".into(),
                value: ValueMatch::Regex(ValueRegex::new("on|yes").unwrap()),
            }],
            ports: vec![80],
            tls: Some(false),
        };
        assert!(c.holds(&facts(&headers, Some("a=1&debug=yes"))));
        assert!(!c.holds(&facts(&headers, Some("debug=yesno"))), "anchored");
        assert!(!c.holds(&facts(&headers, None)));
        assert!(
            c.holds(&facts(&headers, Some("debug=on&debug=no"))),
            "first occurrence"
        );
        let mut other = facts(&headers, Some("debug=on"));
        other.request.as_mut().unwrap().method = "POST";
        assert!(!c.holds(&other));
        // Unparsed: only the listener is checked.
        other.request = None;
        assert!(c.holds(&other));
        other = facts(&headers, Some("debug=on"));
        other.port = Some(8080);
        assert!(!c.holds(&other));
        other.port = Some(80);
        other.tls = true;
        assert!(!c.holds(&other));
        let none = http::HeaderMap::new();
        assert!(!c.holds(&facts(&none, Some("debug=on"))));
        // Percent-encoded query values are decoded before matching.
        assert!(c.holds(&facts(&headers, Some("debug=%79es"))));
    }

    #[test]
    fn repeated_headers_match_as_their_joined_value() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let c = |v: &str| RequestConditions {
            headers: vec![NamedMatch {
                name: "x-a".into(),
                value: ValueMatch::Exact(v.into()),
            }],
            ..Default::default()
        };
        assert!(c("1, 2").holds(&facts(&headers, None)));
        assert!(!c("1").holds(&facts(&headers, None)));
    }

    #[test]
    fn prefix_replacement_follows_path_elements() {
        let p = |with: &str| PathChange::ReplacePrefixMatch(with.into());
        let cases = [
            ("/foo", "/bar", "/foo/x", "/bar/x"),
            ("/foo", "/bar", "/foo", "/bar"),
            ("/foo/", "/bar", "/foo/", "/bar/"),
            ("/foo", "/", "/foo/x", "/x"),
            ("/foo", "/", "/foo", "/"),
            ("/foo", "/bar/", "/foo/x", "/bar/x"),
            ("/", "/api", "/x/y", "/api/x/y"),
            ("/", "/api", "/", "/api/"),
        ];
        for (matched, with, path, want) in cases {
            assert_eq!(
                p(with).apply(path, matched),
                want,
                "{matched} → {with} on {path}"
            );
        }
        assert_eq!(
            PathChange::ReplaceFullPath("/new".into()).apply("/old/x", "/old"),
            "/new"
        );
    }

    #[test]
    fn redirect_locations_follow_the_port_rules() {
        let r = |scheme: Option<&str>, port: Option<u16>| RedirectFilter {
            scheme: scheme.map(Into::into),
            hostname: None,
            path: None,
            port,
            status: 302,
        };
        let loc = |f: &RedirectFilter, listener: u16| {
            f.location("http", "a.test", listener, "/p", Some("q=1"), "/")
        };
        assert_eq!(loc(&r(None, None), 80), "http://a.test/p?q=1");
        assert_eq!(loc(&r(None, None), 8080), "http://a.test:8080/p?q=1");
        assert_eq!(loc(&r(Some("https"), None), 8080), "https://a.test/p?q=1");
        assert_eq!(
            loc(&r(Some("https"), Some(8443)), 80),
            "https://a.test:8443/p?q=1"
        );
        assert_eq!(loc(&r(None, Some(80)), 8080), "http://a.test/p?q=1");
        let full = RedirectFilter {
            hostname: Some("b.test".into()),
            path: Some(PathChange::ReplacePrefixMatch("/new".into())),
            ..r(None, None)
        };
        assert_eq!(
            full.location("http", "a.test", 80, "/old/x", None, "/old"),
            "http://b.test/new/x"
        );
    }

    #[test]
    fn weighted_picks_follow_the_weights() {
        let key = |s: &str| BackendKey {
            namespace: "ns".into(),
            service: s.into(),
            port: "80".into(),
        };
        let a = RuleAction {
            weighted: vec![
                WeightedBackend {
                    backend: Some(key("a")),
                    weight: 3,
                    ..Default::default()
                },
                WeightedBackend {
                    backend: None,
                    weight: 1,
                    ..Default::default()
                },
                WeightedBackend {
                    backend: Some(key("c")),
                    weight: 0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let k = key("a");
        for roll in 0..3 {
            assert_eq!(a.pick(|_| roll), Some(WeightedPick::Backend(&k)));
        }
        assert_eq!(a.pick(|t| t - 1), Some(WeightedPick::Invalid));
        let zero = RuleAction {
            weighted: vec![WeightedBackend {
                backend: Some(key("a")),
                weight: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(zero.pick(|_| 0), Some(WeightedPick::Invalid));
        assert_eq!(RuleAction::default().pick(|_| 0), None);
    }

    #[test]
    fn mirrors_copy_their_share_of_requests() {
        let m = |numerator, denominator| MirrorFilter {
            backend: BackendKey {
                namespace: "ns".into(),
                service: "shadow".into(),
                port: "80".into(),
            },
            numerator,
            denominator,
        };
        // All: no draw at all.
        assert!(m(100, 100).wants(|_| unreachable!()));
        assert!(!m(0, 100).wants(|_| unreachable!()));
        let quarter = m(1, 4);
        let taken = (0..4).filter(|&r| quarter.wants(|n| r % n)).count();
        assert_eq!(taken, 1);
        let a = RuleAction {
            mirrors: vec![m(1, 2)],
            ..Default::default()
        };
        assert!(!a.is_plain());
    }
}
