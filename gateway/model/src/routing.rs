//! Host and path matching with the Ingress v1 rules.
//!
//! Hosts: exact names first, then `*.suffix` wildcards (which cover exactly one
//! more DNS label), then rules without a host. A host whose paths do not match
//! falls through to the wildcard and host-less rules, then to the
//! `defaultBackend`. Paths: the longest matching path wins; at equal length
//! `Exact` beats `Prefix`. `Prefix` matches element-wise (`/foo` matches
//! `/foo/bar`, not `/foobar`) and ignores a trailing slash.
//! `ImplementationSpecific` is treated as `Prefix`. `Regex` paths (an
//! Ingress whose policy asks for them, ingress-nginx `use-regex`) match
//! case-insensitively from the start of the path, ordered by length with
//! the others.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::route_rule::{RequestFacts, RuleAction, WeightedPick};
use crate::snapshot::BackendKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PathKind {
    Exact,
    Prefix,
    Regex,
}

/// A compiled `Regex` path: `(?i)^` + the path as written.
#[derive(Debug, Clone)]
pub struct PathRegex(pub Arc<regex::Regex>);

impl PathRegex {
    /// Compiles a path; the size limit keeps a hostile pattern from
    /// costing the gateway memory or time.
    pub fn new(path: &str) -> Result<PathRegex, String> {
        regex::RegexBuilder::new(&format!("^{path}"))
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map(|r| PathRegex(Arc::new(r)))
            .map_err(|e| format!("not a regular expression: {e}"))
    }
}

impl PathRegex {
    /// A Gateway API `RegularExpression` path: the whole path must match,
    /// case-sensitively.
    pub fn whole(pattern: &str) -> Result<PathRegex, String> {
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map(|r| PathRegex(Arc::new(r)))
            .map_err(|e| format!("not a regular expression: {e}"))
    }
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for PathRegex {}

/// An Ingress's (or a route's) annotations as plugins read them. Reads
/// go to the map (it derefs to it); the proxy-wasm encoding of the whole
/// map, which a plugin may ask for on every request, is made once for the
/// snapshot, on first use.
#[derive(Debug, Default)]
pub struct Annotations {
    map: std::collections::BTreeMap<String, String>,
    encoded: std::sync::OnceLock<Box<[u8]>>,
}

impl Annotations {
    /// The map encoded by `encode`, made the first time it is asked for.
    pub fn encoded_with(
        &self,
        encode: impl FnOnce(&std::collections::BTreeMap<String, String>) -> Vec<u8>,
    ) -> &[u8] {
        self.encoded
            .get_or_init(|| encode(&self.map).into_boxed_slice())
    }
}

impl std::ops::Deref for Annotations {
    type Target = std::collections::BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl From<std::collections::BTreeMap<String, String>> for Annotations {
    fn from(map: std::collections::BTreeMap<String, String>) -> Self {
        Annotations {
            map,
            encoded: std::sync::OnceLock::new(),
        }
    }
}

/// Equal when the maps are (the encoding is derived from the map).
impl PartialEq for Annotations {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for Annotations {}

/// Where a matched request goes and which object said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// `namespace/name` of the Ingress, used as the metrics label.
    pub ingress: String,
    /// The rule's host as written (`*` when the rule has none).
    pub host: String,
    /// The path as written (`/` for a defaultBackend).
    pub path: String,
    pub kind: PathKind,
    pub backend: BackendKey,
    /// Plugins the Ingress asks for (`portico.io/plugins`), in order.
    pub plugins: Vec<String>,
    /// Scoped listener plugins (`applies_to`) whose scope the Ingress
    /// matches, in listener order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scoped_plugins: Vec<String>,
    /// The Ingress's annotations, for plugins
    /// (`portico.ingress.annotations.<key>`); shared by its routes.
    #[serde(skip)]
    pub annotations: Arc<Annotations>,
    /// Typed policy from the policy plugin (`ingress.policy_plugin`).
    #[serde(skip)]
    pub policy: Option<Arc<crate::policy::CheckedPolicy>>,
    /// A canary Ingress's share of this host and path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRoute>,
    /// The compiled path of a `Regex` route.
    #[serde(skip)]
    pub path_regex: Option<PathRegex>,
    /// Serves when `backend` has no endpoints, and answers the policy's
    /// custom HTTP errors (ingress-nginx `default-backend`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<BackendKey>,
    /// This route's request metrics, resolved on first use.
    #[serde(skip)]
    pub metrics: crate::route_metrics::RouteMetrics,
    /// A Gateway API rule's conditions, filters and weights.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared_rule"
    )]
    pub rule: Option<Arc<RuleAction>>,
}

fn shared_rule<S: serde::Serializer>(
    rule: &Option<Arc<RuleAction>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    rule.as_deref().serialize(s)
}

/// The other backend of a route, from a canary Ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryRoute {
    /// `namespace/name` of the canary Ingress.
    pub ingress: String,
    pub backend: BackendKey,
    pub rule: crate::policy::Canary,
}

impl Route {
    /// Nothing about this route acts on a request but routing and
    /// forwarding to its own backend over HTTP/1.1: no plugin, no canary,
    /// no request policy (timeouts aside). Such routes may take the data
    /// plane's fast path; `tls` is the listener's (an `sslRedirect`
    /// policy acts on plain HTTP only).
    pub fn forwards_plainly(&self, tls: bool) -> bool {
        self.plugins.is_empty()
            && self.scoped_plugins.is_empty()
            && self.canary.is_none()
            && self.rule.as_ref().is_none_or(|r| r.is_plain())
            && self
                .policy
                .as_ref()
                .is_none_or(|p| !p.policy.acts_on_requests(tls))
    }

    /// The backend this request goes to: the canary's when its rule says
    /// so, else the route's own.
    pub fn backend_for(&self, headers: &http::HeaderMap) -> (&BackendKey, bool) {
        match &self.canary {
            Some(c) if c.rule.wants(headers, |total| fastrand::u32(0..total)) => (&c.backend, true),
            _ => (&self.backend, false),
        }
    }

    /// A Gateway API rule's draw among its weighted backends; `None` when
    /// the rule has one backend (the route's own).
    pub fn weighted_pick(&self) -> Option<WeightedPick<'_>> {
        self.rule.as_ref()?.pick(|total| fastrand::u32(0..total))
    }

    /// Whether the request meets the route's conditions (always, for a
    /// route without any).
    fn admits(&self, facts: Option<&RequestFacts<'_>>) -> bool {
        match (
            facts,
            self.rule.as_ref().and_then(|r| r.conditions.as_ref()),
        ) {
            (Some(facts), Some(c)) => c.holds(facts),
            _ => true,
        }
    }

    fn conditions(&self) -> Option<&crate::route_rule::RequestConditions> {
        self.rule.as_ref().and_then(|r| r.conditions.as_ref())
    }
}

#[derive(Debug, Clone)]
struct PathRule {
    /// Normalised: `Prefix` without the trailing slash (`/` becomes empty).
    path: String,
    kind: PathKind,
    route: Arc<Route>,
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => {
                self.path.is_empty()
                    || (path.starts_with(&self.path)
                        && matches!(path.as_bytes().get(self.path.len()), None | Some(b'/')))
            }
            PathKind::Regex => self
                .route
                .path_regex
                .as_ref()
                .is_some_and(|r| r.0.is_match(path)),
        }
    }
}

/// The paths of one host, ordered by precedence.
#[derive(Debug, Clone, Default)]
pub struct VirtualHost {
    rules: Vec<PathRule>,
}

impl VirtualHost {
    /// Adds a path unless an equal one is already there (the first Ingress
    /// wins, as translation orders them). Returns the route kept.
    pub fn add(&mut self, kind: PathKind, path: &str, route: Route) -> Result<(), Arc<Route>> {
        let norm = match kind {
            PathKind::Exact | PathKind::Regex => path.to_string(),
            PathKind::Prefix => path.trim_end_matches('/').to_string(),
        };
        // The same path with the same conditions, or one without any
        // conditions (an Ingress's), already takes every request this
        // route would: it could never serve.
        if let Some(existing) = self.rules.iter().find(|r| {
            r.kind == kind
                && r.path == norm
                && (r.route.conditions() == route.conditions() || r.route.conditions().is_none())
        }) {
            return Err(existing.route.clone());
        }
        self.rules.push(PathRule {
            path: norm,
            kind,
            route: Arc::new(route),
        });
        // Exact paths first (one matches only the path itself, so for
        // Prefix paths this is the Ingress rule "longest wins, Exact at a
        // tie", and it keeps nginx's order for Regex paths); then longest
        // first; then the Gateway API's order of conditions (method,
        // more headers, more query parameters). The sort is stable, so
        // rules equal so far keep the order translation added them in
        // (oldest route first).
        let precedence = |r: &PathRule| {
            r.route
                .conditions()
                .map_or((false, 0, 0), |c| c.precedence())
        };
        self.rules.sort_by(|a, b| {
            (a.kind != PathKind::Exact)
                .cmp(&(b.kind != PathKind::Exact))
                .then_with(|| b.path.len().cmp(&a.path.len()))
                .then_with(|| precedence(b).cmp(&precedence(a)))
        });
        Ok(())
    }

    /// Gives the route of exactly this path a canary. `false` when no
    /// Ingress routes this path (or it already has a canary).
    pub fn attach_canary(&mut self, kind: PathKind, path: &str, canary: CanaryRoute) -> bool {
        let norm = match kind {
            PathKind::Exact | PathKind::Regex => path.to_string(),
            PathKind::Prefix => path.trim_end_matches('/').to_string(),
        };
        let Some(rule) = self
            .rules
            .iter_mut()
            .find(|r| r.kind == kind && r.path == norm && r.route.canary.is_none())
        else {
            return false;
        };
        let mut route = (*rule.route).clone();
        route.canary = Some(canary);
        rule.route = Arc::new(route);
        true
    }

    /// The first route whose path matches and whose conditions `facts`
    /// meet; without facts, conditions are not checked (see
    /// [`RouteTable::find`]).
    pub fn find(&self, path: &str, facts: Option<&RequestFacts<'_>>) -> Option<&Arc<Route>> {
        self.rules
            .iter()
            .find(|r| r.matches(path) && r.route.admits(facts))
            .map(|r| &r.route)
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.rules.iter().map(|r| &r.route)
    }
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: HashMap<String, VirtualHost>,
    /// Keyed by the suffix after `*.`, e.g. `foo.com` for `*.foo.com`.
    wildcard: HashMap<String, VirtualHost>,
    /// Gateway API wildcards, by suffix: `*.foo.com` covers any number
    /// of labels before `foo.com`; the longest suffix wins.
    suffix_wildcard: HashMap<String, VirtualHost>,
    any_host: VirtualHost,
    default_backend: Option<Arc<Route>>,
}

/// Which host entry a request host selected, for `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostMatch {
    Exact,
    Wildcard,
    AnyHost,
    DefaultBackend,
}

impl RouteTable {
    /// The virtual host for a rule host: `None`/empty for host-less rules.
    pub fn host_mut(&mut self, host: Option<&str>) -> &mut VirtualHost {
        match host {
            None | Some("") => &mut self.any_host,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self
                    .wildcard
                    .entry(suffix.to_ascii_lowercase())
                    .or_default(),
                None => self.exact.entry(h.to_ascii_lowercase()).or_default(),
            },
        }
    }

    /// The virtual host for a Gateway API hostname: as [`Self::host_mut`],
    /// but a wildcard covers one label or more.
    pub fn gateway_host_mut(&mut self, host: Option<&str>) -> &mut VirtualHost {
        match host.and_then(|h| h.strip_prefix("*.")) {
            Some(suffix) => self
                .suffix_wildcard
                .entry(suffix.to_ascii_lowercase())
                .or_default(),
            None => self.host_mut(host),
        }
    }

    /// Gives the route of exactly this host and path a canary (see
    /// [`VirtualHost::attach_canary`]); never creates a host.
    pub fn attach_canary(
        &mut self,
        host: Option<&str>,
        kind: PathKind,
        path: &str,
        canary: CanaryRoute,
    ) -> bool {
        let vh = match host {
            None | Some("") => Some(&mut self.any_host),
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.wildcard.get_mut(&suffix.to_ascii_lowercase()),
                None => self.exact.get_mut(&h.to_ascii_lowercase()),
            },
        };
        vh.is_some_and(|vh| vh.attach_canary(kind, path, canary))
    }

    /// Sets the defaultBackend unless one is set; returns the one kept.
    pub fn set_default_backend(&mut self, route: Route) -> Result<(), Arc<Route>> {
        match &self.default_backend {
            Some(existing) => Err(existing.clone()),
            None => {
                self.default_backend = Some(Arc::new(route));
                Ok(())
            }
        }
    }

    /// Routes a request by host and path alone. `host` may carry a port
    /// and any case; `path` may carry a query string. A route with
    /// conditions (method, headers, ...) is returned as the first whose
    /// path matches, unchecked: a caller that gets one must route again
    /// with [`RouteTable::find_request`] (its `forwards_plainly` is false).
    pub fn find(&self, host: &str, path: &str) -> Option<(&Arc<Route>, HostMatch)> {
        self.find_with(host, path, None)
    }

    /// Routes a request, its conditions checked against `facts`.
    pub fn find_request(
        &self,
        host: &str,
        path: &str,
        facts: &RequestFacts<'_>,
    ) -> Option<(&Arc<Route>, HostMatch)> {
        self.find_with(host, path, Some(facts))
    }

    fn find_with(
        &self,
        host: &str,
        path: &str,
        facts: Option<&RequestFacts<'_>>,
    ) -> Option<(&Arc<Route>, HostMatch)> {
        let host = normalize_host(host);
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = if path.is_empty() { "/" } else { path };
        let host = host.as_ref();
        if let Some(vh) = self.exact.get(host) {
            if let Some(r) = vh.find(path, facts) {
                return Some((r, HostMatch::Exact));
            }
        }
        if let Some((_, suffix)) = host.split_once('.') {
            if let Some(r) = self
                .wildcard
                .get(suffix)
                .and_then(|vh| vh.find(path, facts))
            {
                return Some((r, HostMatch::Wildcard));
            }
        }
        if !self.suffix_wildcard.is_empty() {
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(r) = self
                    .suffix_wildcard
                    .get(suffix)
                    .and_then(|vh| vh.find(path, facts))
                {
                    return Some((r, HostMatch::Wildcard));
                }
                rest = suffix;
            }
        }
        if let Some(r) = self.any_host.find(path, facts) {
            return Some((r, HostMatch::AnyHost));
        }
        self.default_backend
            .as_ref()
            .map(|r| (r, HostMatch::DefaultBackend))
    }

    /// Every route, for `/config` and explain.
    pub fn all_routes(&self) -> Vec<Arc<Route>> {
        let mut out: Vec<Arc<Route>> = Vec::new();
        for vh in self
            .exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.suffix_wildcard.values())
            .chain(std::iter::once(&self.any_host))
        {
            out.extend(vh.routes().cloned());
        }
        out.extend(self.default_backend.iter().cloned());
        out.sort_by(|a, b| (&a.host, &a.path).cmp(&(&b.host, &b.path)));
        out
    }
}

/// Lower-cases a Host header value and strips its port (IPv6 brackets kept).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.trim_end_matches('.');
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(without_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> Route {
        Route {
            ingress: format!("default/{name}"),
            host: String::new(),
            path: String::new(),
            kind: PathKind::Prefix,
            backend: BackendKey {
                namespace: "default".into(),
                service: name.into(),
                port: "80".into(),
            },
            plugins: Vec::new(),
            scoped_plugins: Vec::new(),
            annotations: Arc::default(),
            policy: None,
            canary: None,
            path_regex: None,
            fallback: None,
            metrics: Default::default(),
            rule: None,
        }
    }

    fn vhost(paths: &[(PathKind, &str)]) -> VirtualHost {
        let mut vh = VirtualHost::default();
        for (kind, p) in paths {
            vh.add(*kind, p, route(&format!("{kind:?}{p}"))).unwrap();
        }
        vh
    }

    use PathKind::{Exact, Prefix, Regex};

    #[test]
    fn regex_paths_match_from_the_start_case_insensitively_by_length() {
        let mut vh = VirtualHost::default();
        for (kind, p) in [
            (Regex, "/api/v[0-9]+"),
            (Prefix, "/api"),
            (Exact, "/api/v1"),
        ] {
            let mut r = route(&format!("{kind:?}{p}"));
            if kind == Regex {
                r.path_regex = Some(PathRegex::new(p).unwrap());
            }
            vh.add(kind, p, r).unwrap();
        }
        let found = |path: &str| vh.find(path, None).map(|r| r.ingress.clone());
        assert_eq!(found("/api/v1").as_deref(), Some("default/Exact/api/v1"));
        assert_eq!(
            found("/API/V2/x").as_deref(),
            Some("default/Regex/api/v[0-9]+")
        );
        assert_eq!(found("/api/vx").as_deref(), Some("default/Prefix/api"));
        assert_eq!(found("/x/api/v2"), None);
        assert!(PathRegex::new("/(unclosed").is_err());
    }

    #[test]
    fn a_canary_attaches_to_exactly_its_host_and_path_once() {
        let mut t = RouteTable::default();
        t.host_mut(Some("a.test"))
            .add(Prefix, "/api/", route("main"))
            .unwrap();
        let canary = |w| CanaryRoute {
            ingress: "default/canary".into(),
            backend: route("v2").backend,
            rule: crate::policy::Canary {
                header: None,
                header_value: None,
                cookie: None,
                weight: w,
                weight_total: 100,
            },
        };
        // Not another path, kind or host; no host is created for it.
        assert!(!t.attach_canary(Some("a.test"), Prefix, "/", canary(100)));
        assert!(!t.attach_canary(Some("a.test"), Exact, "/api", canary(100)));
        assert!(!t.attach_canary(Some("b.test"), Prefix, "/api", canary(100)));
        assert!(t.find("b.test", "/api").is_none());
        // The same path, trailing slash or not; then only once.
        assert!(t.attach_canary(Some("A.test"), Prefix, "/api", canary(100)));
        assert!(!t.attach_canary(Some("a.test"), Prefix, "/api", canary(0)));
        let (r, _) = t.find("a.test", "/api/x").unwrap();
        let headers = http::HeaderMap::new();
        assert_eq!(r.backend_for(&headers), (&route("v2").backend, true));
        assert_eq!(r.backend, route("main").backend);
    }

    /// Every row of the path-matching examples table in the Kubernetes
    /// Ingress documentation, plus the precedence rows.
    #[test]
    fn kubernetes_docs_path_examples() {
        type Case<'a> = (&'a [(PathKind, &'a str)], &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            (&[(Prefix, "/")], "/", Some("Prefix/")),
            (&[(Prefix, "/")], "/anything/at/all", Some("Prefix/")),
            (&[(Exact, "/foo")], "/foo", Some("Exact/foo")),
            (&[(Exact, "/foo")], "/bar", None),
            (&[(Exact, "/foo")], "/foo/", None),
            (&[(Exact, "/foo/")], "/foo", None),
            (&[(Prefix, "/foo")], "/foo", Some("Prefix/foo")),
            (&[(Prefix, "/foo")], "/foo/", Some("Prefix/foo")),
            (&[(Prefix, "/foo/")], "/foo", Some("Prefix/foo/")),
            (&[(Prefix, "/foo/")], "/foo/", Some("Prefix/foo/")),
            (&[(Prefix, "/aaa/bb")], "/aaa/bbb", None),
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbb", Some("Prefix/aaa/bbb")),
            (
                &[(Prefix, "/aaa/bbb/")],
                "/aaa/bbb",
                Some("Prefix/aaa/bbb/"),
            ),
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbb/", Some("Prefix/aaa/bbb")),
            (
                &[(Prefix, "/aaa/bbb")],
                "/aaa/bbb/ccc",
                Some("Prefix/aaa/bbb"),
            ),
            (&[(Prefix, "/aaa/bbb")], "/aaa/bbbxyz", None),
            (
                &[(Prefix, "/"), (Prefix, "/aaa")],
                "/aaa/ccc",
                Some("Prefix/aaa"),
            ),
            (
                &[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")],
                "/aaa/bbb",
                Some("Prefix/aaa/bbb"),
            ),
            (
                &[(Prefix, "/"), (Prefix, "/aaa"), (Prefix, "/aaa/bbb")],
                "/ccc",
                Some("Prefix/"),
            ),
            (&[(Prefix, "/aaa")], "/ccc", None),
            (
                &[(Prefix, "/foo"), (Exact, "/foo")],
                "/foo",
                Some("Exact/foo"),
            ),
            (
                &[(Exact, "/foo"), (Prefix, "/foo")],
                "/foo",
                Some("Exact/foo"),
            ),
            (
                &[(Exact, "/foo"), (Prefix, "/foo")],
                "/foo/x",
                Some("Prefix/foo"),
            ),
            // Longest match beats kind.
            (
                &[(Exact, "/a"), (Prefix, "/a/b")],
                "/a/b",
                Some("Prefix/a/b"),
            ),
        ];
        for (paths, req, want) in cases {
            let vh = vhost(paths);
            let got = vh.find(req, None).map(|r| r.backend.service.clone());
            assert_eq!(got.as_deref(), *want, "paths {paths:?} request {req}");
        }
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.host_mut(Some("foo.bar.com"))
            .add(Prefix, "/", route("exact-host"))
            .unwrap();
        t.host_mut(Some("*.bar.com"))
            .add(Prefix, "/", route("wildcard"))
            .unwrap();
        t.host_mut(Some("only-api.com"))
            .add(Prefix, "/api", route("api"))
            .unwrap();
        t.host_mut(None)
            .add(Prefix, "/open", route("hostless"))
            .unwrap();
        t
    }

    #[test]
    fn host_matching() {
        let t = table();
        let cases = [
            ("foo.bar.com", "/", Some(("exact-host", HostMatch::Exact))),
            (
                "FOO.Bar.com:8080",
                "/x",
                Some(("exact-host", HostMatch::Exact)),
            ),
            ("baz.bar.com", "/", Some(("wildcard", HostMatch::Wildcard))),
            // A wildcard covers exactly one label.
            ("a.baz.bar.com", "/", None),
            ("bar.com", "/", None),
            ("only-api.com", "/api/v1", Some(("api", HostMatch::Exact))),
            // No path of the host matches: fall through to host-less rules.
            (
                "only-api.com",
                "/open/x",
                Some(("hostless", HostMatch::AnyHost)),
            ),
            ("only-api.com", "/other", None),
            (
                "unknown.org",
                "/open",
                Some(("hostless", HostMatch::AnyHost)),
            ),
            (
                "unknown.org",
                "/open?x=1",
                Some(("hostless", HostMatch::AnyHost)),
            ),
        ];
        for (host, path, want) in cases {
            let got = t
                .find(host, path)
                .map(|(r, m)| (r.backend.service.as_str(), m));
            assert_eq!(got, want, "{host}{path}");
        }
    }

    #[test]
    fn default_backend_catches_the_rest() {
        let mut t = table();
        t.set_default_backend(route("default")).unwrap();
        let (r, m) = t.find("unknown.org", "/nothing").unwrap();
        assert_eq!(
            (r.backend.service.as_str(), m),
            ("default", HostMatch::DefaultBackend)
        );
        // Rules still win over the default backend.
        assert_eq!(t.find("baz.bar.com", "/").unwrap().1, HostMatch::Wildcard);
        assert!(t.set_default_backend(route("second")).is_err());
    }

    #[test]
    fn duplicate_path_keeps_the_first() {
        let mut vh = VirtualHost::default();
        vh.add(Prefix, "/a", route("first")).unwrap();
        let kept = vh.add(Prefix, "/a/", route("second")).unwrap_err();
        assert_eq!(kept.backend.service, "first");
        // Same path with another kind is a different rule.
        vh.add(Exact, "/a", route("exact")).unwrap();
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("plain"), "plain");
    }
}
