//! A Kubernetes API-server **double** for end-to-end tests.
//!
//! The Kubernetes end-to-end tests run against a real kube-apiserver
//! ([`crate::kube_apiserver`]); this double stays for what only a double can
//! do: outages, a forced `410 Gone`, injected 403s, objects a real server
//! refuses, and the scale benchmark's figures. It serves the HTTP shapes
//! kube-rs uses, over plain HTTP on 127.0.0.1:
//!
//! - list (`GET` collection) with `metadata.resourceVersion`, `limit` /
//!   `continue` paging, `fieldSelector` (`a.b=value`) and `labelSelector`
//!   (`k=v`, comma-separated);
//! - `watch=true` streams of JSON events from a resourceVersion, `BOOKMARK`
//!   events when asked for, and an `ERROR` event with a `410 Gone` Status
//!   for a compacted resourceVersion (the client must relist);
//! - get, create (with `generateName`), replace (optimistic concurrency on
//!   `metadata.resourceVersion`, `409 Conflict`), merge patch, delete, and
//!   the `status` subresource (PUT/PATCH touch only `status`, and the main
//!   resource ignores `status`), for Services, EndpointSlices, Ingresses,
//!   IngressClasses, Secrets, Nodes, Leases and Events (core and
//!   events.k8s.io);
//! - validation that matters to a gateway: EndpointSlice addresses in
//!   127.0.0.0/8 or `::1` are refused with `422 Invalid`, as the real
//!   server refuses them; NodePort/LoadBalancer Services get `nodePort`s;
//!   a Secret's `stringData` is merged into `data` base64-encoded;
//! - RBAC-style `403 Forbidden` for a verb on a resource, on demand, or
//!   for everything a set of Role/ClusterRole rules does not allow;
//! - an outage switch that closes the listener and every connection.
//!
//! It does **not** model: authentication (any bearer token is accepted and
//! only recorded), admission webhooks, most field validation, strategic
//! merge patch semantics (treated as JSON merge patch), server-side apply
//! (treated as merge patch), consistent snapshots across list pages (later
//! pages see later state; the watch from the first page's resourceVersion
//! replays what changed), protobuf, HTTP/2, or watch-list streaming.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// A resource type the double serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource.
    pub status: bool,
}

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const TYPES: &[ResourceType] = &[
    rt("", "v1", "services", "Service", true, true),
    rt("", "v1", "secrets", "Secret", true, false),
    rt("", "v1", "nodes", "Node", false, true),
    rt("", "v1", "events", "Event", true, false),
    rt("", "v1", "namespaces", "Namespace", false, true),
    rt(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    rt(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        true,
        true,
    ),
    rt(
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        "IngressClass",
        false,
        false,
    ),
    rt("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    rt("events.k8s.io", "v1", "events", "Event", true, false),
];

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        status,
    }
}

/// The type of an object by its `apiVersion` and `kind`.
pub fn type_of(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    TYPES
        .iter()
        .find(|t| t.kind == kind && t.api_version() == api_version)
}

fn type_by_plural(group: &str, plural: &str) -> Option<&'static ResourceType> {
    TYPES
        .iter()
        .find(|t| t.group == group && t.plural == plural)
}

/// One RBAC rule: a ClusterRole rule (`namespace` None) or a Role rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    pub namespace: Option<String>,
}

impl Rule {
    /// The rules of every ClusterRole and Role in `yaml` (bindings are
    /// assumed to grant them all to the one client).
    pub fn from_manifests(yaml: &str) -> Vec<Rule> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for o in parse_objects(yaml) {
            let namespace = match o["kind"].as_str() {
                Some("ClusterRole") => None,
                Some("Role") => o["metadata"]["namespace"].as_str().map(String::from),
                _ => continue,
            };
            for r in o["rules"].as_array().into_iter().flatten() {
                out.push(Rule {
                    groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    verbs: strings(&r["verbs"]),
                    namespace: namespace.clone(),
                });
            }
        }
        out
    }
}

/// One request as the double saw it (for assertions on who wrote what).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The bearer token, which tests use to tell clients apart.
    pub token: Option<String>,
    /// The RBAC verb (`list`, `watch`, `patch`…).
    pub verb: &'static str,
    /// `group/resource[/subresource]` (`/services`, `networking.k8s.io/ingresses/status`).
    pub resource: String,
}

struct WatchEvent {
    rv: u64,
    plural: &'static str,
    group: &'static str,
    kind: &'static str,
    object: Value,
}

type Key = (String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(&'static str, &'static str), BTreeMap<Key, Value>>,
    log: Vec<WatchEvent>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest_rv: u64,
    forbidden: HashSet<(String, String)>,
    /// RBAC rules in force (`None`: everything allowed).
    rules: Option<Vec<Rule>>,
    /// `verb group/resource` of every request refused with 403.
    refused: Vec<String>,
    requests: Vec<Request>,
    next_node_port: i64,
    next_uid: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    down: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An API error: HTTP code, reason and message, sent as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message,
            "reason": self.reason, "code": self.code,
        })
    }
}

pub struct ApiServer {
    port: u16,
    shared: Arc<Shared>,
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .expect("the clock is within jiff's range")
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn is_loopback(addr: &str) -> bool {
    match addr.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn lookup<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |v, k| v.get(k))
}

fn selector_matches(obj: &Value, field: Option<&str>, label: Option<&str>) -> bool {
    let pairs = |s: &str| -> Vec<(String, String)> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim_end_matches('=').to_string(), v.to_string()))
            .collect()
    };
    if let Some(f) = field {
        for (k, v) in pairs(f) {
            if lookup(obj, &k).and_then(Value::as_str) != Some(v.as_str()) {
                return false;
            }
        }
    }
    if let Some(l) = label {
        for (k, v) in pairs(l) {
            let got = obj
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get(&k))
                .and_then(Value::as_str);
            if got != Some(v.as_str()) {
                return false;
            }
        }
    }
    true
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// What a URL path names.
struct Target {
    ty: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("no route for {path}"),
            ))
        }
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(ns.to_string()), more),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("no route for {path}"),
            ))
        }
    };
    let ty = type_by_plural(group, plural).ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({group}/{plural})"),
        )
    })?;
    Ok(Target {
        ty,
        namespace,
        name,
        subresource: sub,
    })
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, ty: &'static ResourceType, event: &str, object: &Value) {
        let rv = self.rv;
        let wrapped = json!({"type": event, "object": object});
        self.log.push(WatchEvent {
            rv,
            plural: ty.plural,
            group: ty.group,
            kind: ty.kind,
            object: wrapped,
        });
    }

    fn map(&mut self, ty: &'static ResourceType) -> &mut BTreeMap<Key, Value> {
        self.objects.entry((ty.group, ty.plural)).or_default()
    }

    fn validate(&mut self, ty: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if ty.kind == "EndpointSlice" {
            let empty = vec![];
            let eps = obj["endpoints"].as_array().unwrap_or(&empty);
            for (i, ep) in eps.iter().enumerate() {
                for (j, a) in ep["addresses"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .enumerate()
                {
                    let a = a.as_str().unwrap_or("");
                    if is_loopback(a) {
                        return Err(ApiError::new(
                            422,
                            "Invalid",
                            format!(
                                "EndpointSlice.discovery.k8s.io \"{name}\" is invalid: \
                                 endpoints[{i}].addresses[{j}]: Invalid value: \"{a}\": may not be \
                                 in the loopback range (127.0.0.0/8, ::1/128)"
                            ),
                        ));
                    }
                }
            }
        }
        if ty.kind == "Secret" {
            // As the real API server: `stringData` is write-only, merged
            // into `data` base64-encoded.
            if let Some(Value::Object(plain)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                for (k, v) in plain {
                    let text = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
        if ty.kind == "Service" {
            let kind = obj["spec"]["type"]
                .as_str()
                .unwrap_or("ClusterIP")
                .to_string();
            if kind == "NodePort" || kind == "LoadBalancer" {
                if let Some(ports) = obj["spec"]["ports"].as_array_mut() {
                    for p in ports {
                        if p.get("nodePort").is_none() {
                            if self.next_node_port == 0 {
                                self.next_node_port = 30000;
                            }
                            p["nodePort"] = json!(self.next_node_port);
                            self.next_node_port += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn create(
        &mut self,
        ty: &'static ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "body is not a JSON object",
            ));
        }
        if obj["metadata"].is_null() {
            obj["metadata"] = json!({});
        }
        let name = match obj["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match obj["metadata"]["generateName"].as_str() {
                Some(g) => {
                    self.next_uid += 1;
                    format!("{g}{:05x}", self.next_uid)
                }
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("{} is invalid: metadata.name: Required value", ty.kind),
                    ))
                }
            },
        };
        let ns = if ty.namespaced {
            namespace
                .map(String::from)
                .or_else(|| obj["metadata"]["namespace"].as_str().map(String::from))
                .unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        if self.map(ty).contains_key(&(ns.clone(), name.clone())) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}s \"{name}\" already exists", ty.kind.to_lowercase()),
            ));
        }
        self.validate(ty, &mut obj)?;
        let rv = self.bump();
        self.next_uid += 1;
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if ty.namespaced {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.next_uid));
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["generation"] = json!(1);
        obj["apiVersion"] = json!(ty.api_version());
        obj["kind"] = json!(ty.kind);
        self.map(ty).insert((ns, name), obj.clone());
        self.record(ty, "ADDED", &obj);
        Ok(obj)
    }

    /// Replace (`PUT`): the whole object, or only `status` for the
    /// subresource. `check_rv`: refuse a stale `metadata.resourceVersion`.
    fn replace(
        &mut self,
        ty: &'static ResourceType,
        key: Key,
        mut obj: Value,
        status_only: bool,
        check_rv: bool,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.map(ty).get(&key).cloned() else {
            return Err(not_found(ty, &key.1));
        };
        if check_rv {
            if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
                if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {}.{} \"{}\": the object has been \
                             modified; please apply your changes to the latest version and try again",
                            ty.plural, ty.group, key.1
                        ),
                    ));
                }
            }
        }
        let mut new = if status_only {
            let mut n = old.clone();
            n["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
            n
        } else {
            if ty.status {
                obj["status"] = old.get("status").cloned().unwrap_or(Value::Null);
                if obj["status"].is_null() {
                    obj.as_object_mut().map(|o| o.remove("status"));
                }
            }
            self.validate(ty, &mut obj)?;
            obj
        };
        let meta = &mut new["metadata"];
        for k in ["name", "namespace", "uid", "creationTimestamp"] {
            if let Some(v) = old["metadata"].get(k) {
                meta[k] = v.clone();
            }
        }
        let spec_changed = !status_only && old.get("spec") != new.get("spec");
        let generation =
            old["metadata"]["generation"].as_i64().unwrap_or(1) + i64::from(spec_changed);
        new["metadata"]["generation"] = json!(generation);
        new["apiVersion"] = json!(ty.api_version());
        new["kind"] = json!(ty.kind);
        let rv = self.bump();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.map(ty).insert(key, new.clone());
        self.record(ty, "MODIFIED", &new);
        Ok(new)
    }

    fn patch(
        &mut self,
        ty: &'static ResourceType,
        key: Key,
        patch: &Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.map(ty).get(&key).cloned() else {
            return Err(not_found(ty, &key.1));
        };
        let mut new = old.clone();
        if status_only {
            if let Some(s) = patch.get("status") {
                merge_patch(&mut new["status"], s);
            }
        } else {
            let mut p = patch.clone();
            if ty.status {
                p.as_object_mut().map(|o| o.remove("status"));
            }
            merge_patch(&mut new, &p);
        }
        self.replace(ty, key, new, status_only, false)
    }

    fn delete(&mut self, ty: &'static ResourceType, key: &Key) -> Result<Value, ApiError> {
        let Some(mut old) = self.map(ty).remove(key) else {
            return Err(not_found(ty, &key.1));
        };
        let rv = self.bump();
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(ty, "DELETED", &old);
        Ok(old)
    }
}

fn not_found(ty: &ResourceType, name: &str) -> ApiError {
    let what = if ty.group.is_empty() {
        ty.plural.to_string()
    } else {
        format!("{}.{}", ty.plural, ty.group)
    };
    ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found"))
}

/// Parses YAML (one or many documents) or JSON into objects. Panics on
/// text that does not parse: a test's own input is wrong.
pub fn parse_objects(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap_or_else(|e| {
                panic!("the double was given YAML that does not parse: {e}\n{text}")
            });
            if v.is_null() {
                return None;
            }
            Some(serde_json::to_value(v).expect("YAML to JSON"))
        })
        .collect()
}

impl ApiServer {
    /// Starts the double on a free port of 127.0.0.1.
    pub fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the API-server double");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(Some(listener), port, s));
        ApiServer { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig pointing at the double; the token identifies the client
    /// in `requests()`.
    pub fn kubeconfig(&self, dir: &std::path::Path, token: &str) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{token}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
                 users:\n- name: {token}\n  user:\n    token: {token}\ncontexts:\n- name: double\n  context:\n    \
                 cluster: double\n    user: {token}\ncurrent-context: double\n",
                self.url()
            ),
        )
        .expect("write kubeconfig");
        path
    }

    fn modify<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.shared.lock());
        self.shared.changed.notify_all();
        out
    }

    /// Creates or replaces every object in `text` (YAML or JSON), like
    /// `kubectl apply` without the three-way merge. Stops at the first
    /// refused object.
    pub fn apply(&self, text: &str) -> Result<Vec<Value>, ApiError> {
        self.apply_objects(parse_objects(text))
    }

    /// [`ApiServer::apply`] for objects already parsed.
    pub fn apply_objects(&self, objects: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        for obj in objects {
            let av = obj["apiVersion"].as_str().unwrap_or("");
            let kind = obj["kind"].as_str().unwrap_or("");
            let ty = type_of(av, kind).ok_or_else(|| {
                ApiError::new(404, "NotFound", format!("no resource type for {av} {kind}"))
            })?;
            let ns = ty.namespaced.then(|| {
                obj["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            });
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let key = (ns.clone().unwrap_or_default(), name);
            let status = obj.get("status").cloned();
            let created = self.modify(|st| {
                let exists = st.map(ty).contains_key(&key);
                let mut o = if exists {
                    st.replace(ty, key.clone(), obj.clone(), false, false)?
                } else {
                    st.create(ty, ns.as_deref(), obj.clone())?
                };
                // Tests may set status directly (as a controller would).
                if let (Some(s), true) = (status, ty.status) {
                    o = st.replace(ty, key.clone(), json!({ "status": s }), true, false)?;
                }
                Ok::<Value, ApiError>(o)
            })?;
            out.push(created);
        }
        Ok(out)
    }

    /// Merge-patches an object (`status_only`: the status subresource).
    pub fn patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let ty = type_of(api_version, kind).expect("known type");
        let key = (namespace.to_string(), name.to_string());
        self.modify(|st| st.patch(ty, key, &patch, status_only))
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let ty = type_of(api_version, kind).expect("known type");
        let key = (namespace.to_string(), name.to_string());
        self.modify(|st| st.delete(ty, &key).is_ok())
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let ty = type_of(api_version, kind).expect("known type");
        let key = (namespace.to_string(), name.to_string());
        self.shared.lock().map(ty).get(&key).cloned()
    }

    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let ty = type_of(api_version, kind).expect("known type");
        self.shared.lock().map(ty).values().cloned().collect()
    }

    /// Answers `verb` (`list`, `watch`, `get`, `create`, `update`, `patch`,
    /// `delete`) on `resource` (`secrets`, `ingresses/status`) with 403.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .forbidden
            .insert((verb.to_string(), resource.to_string()));
    }

    pub fn allow(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .forbidden
            .remove(&(verb.to_string(), resource.to_string()));
    }

    /// Enforces RBAC `rules` from then on: a request no rule allows gets
    /// 403, as the real server answers a ServiceAccount.
    pub fn enforce_rbac(&self, rules: Vec<Rule>) {
        self.shared.lock().rules = Some(rules);
    }

    /// `verb group/resource` of each request refused with 403 so far.
    pub fn refused(&self) -> Vec<String> {
        self.shared.lock().refused.clone()
    }

    /// Outage: the listener closes and every connection drops; `false`
    /// listens again on the same port.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }

    /// Forgets the event history: a watch resuming from an older
    /// resourceVersion gets 410 Gone and must relist.
    pub fn compact(&self) {
        self.modify(|st| {
            st.log.clear();
            st.oldest_rv = st.rv + 1;
        });
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }
}

fn accept_loop(mut listener: Option<TcpListener>, port: u16, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.down.load(Ordering::SeqCst) {
            listener = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).ok();
                    listener.insert(l)
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        l.set_nonblocking(true).ok();
        match l.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok();
                let s = shared.clone();
                std::thread::spawn(move || serve_connection(stream, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

struct HttpRequest {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<HttpRequest> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(HttpRequest {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn write_json(w: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        422 => "Unprocessable Entity",
        _ => "Error",
    };
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        text.len()
    )?;
    w.write_all(&text)?;
    w.flush()
}

fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    // A read timeout lets an idle keep-alive connection notice an outage.
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok();
    loop {
        if shared.down.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            writer.shutdown(Shutdown::Both).ok();
            return;
        }
        // Wait for the next request without holding a partial read.
        match reader.fill_buf() {
            Ok([]) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return,
        }
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok();
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok();
        let close = req
            .headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let keep = handle(&req, &mut writer, &shared) && !close;
        if !keep {
            writer.shutdown(Shutdown::Both).ok();
            return;
        }
    }
}

fn verb_of(req: &HttpRequest, t: &Target, q: &BTreeMap<String, String>) -> &'static str {
    match (req.method.as_str(), t.name.is_some()) {
        ("GET", false) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "unknown",
    }
}

/// Handles one request; false closes the connection.
fn handle(req: &HttpRequest, w: &mut TcpStream, shared: &Arc<Shared>) -> bool {
    let q = parse_query(&req.query);
    let token = req
        .headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(String::from);
    let mut record = Request {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        token,
        verb: "unknown",
        resource: String::new(),
    };
    let t = match parse_path(&req.path) {
        Ok(t) => t,
        Err(e) => {
            shared.lock().requests.push(record);
            return write_json(w, e.code, &e.status()).is_ok();
        }
    };
    let verb = verb_of(req, &t, &q);
    let resource = match &t.subresource {
        Some(s) => format!("{}/{s}", t.ty.plural),
        None => t.ty.plural.to_string(),
    };
    record.verb = verb;
    record.resource = format!("{}/{resource}", t.ty.group);
    shared.lock().requests.push(record);
    let denied = {
        let mut st = shared.lock();
        let by_rule = st.rules.as_ref().is_some_and(|rules| {
            !rules.iter().any(|r| {
                r.groups.iter().any(|g| g == t.ty.group)
                    && r.resources.contains(&resource)
                    && r.verbs.iter().any(|v| v == verb)
                    && r.namespace
                        .as_ref()
                        .is_none_or(|ns| t.namespace.as_ref() == Some(ns))
            })
        });
        let denied = by_rule || st.forbidden.contains(&(verb.to_string(), resource.clone()));
        if denied {
            st.refused.push(format!("{verb} {}/{resource}", t.ty.group));
        }
        denied
    };
    if denied {
        let scope = match &t.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".into(),
        };
        let e = ApiError::new(
            403,
            "Forbidden",
            format!(
                "{resource} is forbidden: User \"system:serviceaccount:portico-system:portico\" \
                 cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                t.ty.group
            ),
        );
        return write_json(w, 403, &e.status()).is_ok();
    }
    if verb == "watch" {
        return watch(&t, &q, w, shared);
    }
    let body: Value = if req.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                let err = ApiError::new(400, "BadRequest", format!("cannot decode body: {e}"));
                return write_json(w, 400, &err.status()).is_ok();
            }
        }
    };
    let key = || {
        (
            t.namespace.clone().unwrap_or_default(),
            t.name.clone().unwrap_or_default(),
        )
    };
    let status_only = t.subresource.as_deref() == Some("status");
    let result: Result<(u16, Value), ApiError> = {
        let mut st = shared.lock();
        let r = match verb {
            "list" => list(&mut st, &t, &q).map(|v| (200, v)),
            "get" => st
                .map(t.ty)
                .get(&key())
                .cloned()
                .map(|v| (200, v))
                .ok_or_else(|| not_found(t.ty, &key().1)),
            "create" => st
                .create(t.ty, t.namespace.as_deref(), body)
                .map(|v| (201, v)),
            "update" => st
                .replace(t.ty, key(), body, status_only, true)
                .map(|v| (200, v)),
            "patch" => st.patch(t.ty, key(), &body, status_only).map(|v| (200, v)),
            "delete" => st.delete(t.ty, &key()).map(|v| (200, v)),
            _ => Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
        };
        r
    };
    shared.changed.notify_all();
    match result {
        Ok((code, v)) => write_json(w, code, &v).is_ok(),
        Err(e) => write_json(w, e.code, &e.status()).is_ok(),
    }
}

fn in_scope(t: &Target, key: &Key) -> bool {
    t.namespace.as_ref().is_none_or(|ns| *ns == key.0)
}

fn list(st: &mut State, t: &Target, q: &BTreeMap<String, String>) -> Result<Value, ApiError> {
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rv, key) = c
                .split_once('|')
                .ok_or_else(|| ApiError::new(400, "BadRequest", "bad continue token"))?;
            let rv: u64 = rv.parse().unwrap_or(0);
            if rv < st.oldest_rv {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                ));
            }
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            (rv, Some((ns.to_string(), name.to_string())))
        }
        None => (st.rv, None),
    };
    let field = q.get("fieldSelector").map(String::as_str);
    let label = q.get("labelSelector").map(String::as_str);
    let map = st.map(t.ty);
    let range: Box<dyn Iterator<Item = (&Key, &Value)>> = match &after {
        Some(k) => Box::new(map.range::<Key, _>((
            std::ops::Bound::Excluded(k.clone()),
            std::ops::Bound::Unbounded,
        ))),
        None => Box::new(map.iter()),
    };
    let mut items = Vec::new();
    let mut next = None;
    for (k, v) in range {
        if !in_scope(t, k) || !selector_matches(v, field, label) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            next = Some(format!("{rv}|{}/{}", k.0, k.1));
            break;
        }
        items.push(v.clone());
    }
    // The token names the last item returned; the next page starts after it.
    let token = next.map(|_| {
        let last = items.last().expect("a full page");
        format!(
            "{rv}|{}/{}",
            last["metadata"]["namespace"].as_str().unwrap_or(""),
            last["metadata"]["name"].as_str().unwrap_or("")
        )
    });
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = token {
        meta["continue"] = json!(c);
    }
    Ok(json!({
        "kind": format!("{}List", t.ty.kind),
        "apiVersion": t.ty.api_version(),
        "metadata": meta,
        "items": items,
    }))
}

fn chunk(w: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    write!(w, "{:x}\r\n", line.len())?;
    w.write_all(&line)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

fn watch(
    t: &Target,
    q: &BTreeMap<String, String>,
    w: &mut TcpStream,
    shared: &Arc<Shared>,
) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let field = q.get("fieldSelector").cloned();
    let label = q.get("labelSelector").cloned();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let started = Instant::now();
    let mut last_bookmark = Instant::now();
    let mut from: u64 = {
        let st = shared.lock();
        match q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()) {
            Some(0) | None => st.rv,
            Some(rv) if rv + 1 < st.oldest_rv => {
                drop(st);
                let e = ApiError::new(410, "Expired", format!("too old resource version: {rv}"));
                let _ = chunk(w, &json!({"type": "ERROR", "object": e.status()}));
                let _ = w.write_all(b"0\r\n\r\n");
                return false;
            }
            Some(rv) => rv,
        }
    };
    loop {
        let mut out: Vec<Value> = Vec::new();
        {
            let st = shared.lock();
            let st = if st.rv <= from {
                shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(500))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0)
            } else {
                st
            };
            if shared.down.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
                drop(st);
                w.shutdown(Shutdown::Both).ok();
                return false;
            }
            let start = st.log.partition_point(|e| e.rv <= from);
            for e in &st.log[start..] {
                if e.plural != t.ty.plural || e.group != t.ty.group {
                    continue;
                }
                let obj = &e.object["object"];
                let ns = obj["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                if !in_scope(t, &(ns, name))
                    || !selector_matches(obj, field.as_deref(), label.as_deref())
                {
                    continue;
                }
                let _ = e.kind;
                out.push(e.object.clone());
            }
            from = st.rv;
        }
        for v in &out {
            if chunk(w, v).is_err() {
                return false;
            }
        }
        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(2) {
            last_bookmark = Instant::now();
            let bm = json!({"type": "BOOKMARK", "object": {
                "kind": t.ty.kind, "apiVersion": t.ty.api_version(),
                "metadata": {"resourceVersion": from.to_string()}
            }});
            if chunk(w, &bm).is_err() {
                return false;
            }
        }
        if started.elapsed() >= timeout {
            let _ = w.write_all(b"0\r\n\r\n");
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/merge-patch+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (code, body)
    }

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [\"ADDR\"]}]\nports: [{port: 80}]\n";

    #[test]
    fn loopback_endpoint_addresses_are_refused_with_422() {
        let api = ApiServer::start();
        let err = api.apply(&SLICE.replace("ADDR", "127.0.0.1")).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("loopback"), "{}", err.message);
        assert!(api.apply(&SLICE.replace("ADDR", "10.0.0.5")).is_ok());
        // Over HTTP too.
        let body = serde_json::to_string(
            &parse_objects(&SLICE.replace("ADDR", "::1").replace("web-1", "web-2"))[0],
        )
        .unwrap();
        let (code, text) = http(
            api.port(),
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
            &body,
        );
        assert_eq!(code, 422, "{text}");
    }

    #[test]
    fn list_pages_and_selects() {
        let api = ApiServer::start();
        for i in 0..5 {
            api.apply(&format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: s{i}, namespace: ns}}\ntype: {}\n",
                if i % 2 == 0 {
                    "kubernetes.io/tls"
                } else {
                    "Opaque"
                }
            ))
            .unwrap();
        }
        let (code, text) = http(
            api.port(),
            "GET",
            "/api/v1/secrets?limit=2&fieldSelector=type%3Dkubernetes.io%2Ftls",
            "",
        );
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&text).unwrap();
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["s0", "s2"]);
        let cont = v["metadata"]["continue"].as_str().unwrap().to_string();
        let (_, text) = http(
            api.port(),
            "GET",
            &format!(
                "/api/v1/secrets?limit=2&fieldSelector=type%3Dkubernetes.io%2Ftls&continue={}",
                cont.replace('|', "%7C").replace('/', "%2F")
            ),
            "",
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["items"][0]["metadata"]["name"], "s4");
        assert!(v["metadata"].get("continue").is_none());
    }

    #[test]
    fn watch_streams_changes_and_expires_after_compaction() {
        let api = ApiServer::start();
        api.apply(&SLICE.replace("ADDR", "10.0.0.5")).unwrap();
        let rv = api.resource_version();
        let port = api.port();
        let reader = std::thread::spawn(move || {
            http(port, "GET", &format!("/apis/discovery.k8s.io/v1/endpointslices?watch=true&resourceVersion={rv}&timeoutSeconds=1"), "")
        });
        std::thread::sleep(Duration::from_millis(200));
        api.apply(&SLICE.replace("ADDR", "10.0.0.6")).unwrap();
        let (code, text) = reader.join().unwrap();
        assert_eq!(code, 200);
        assert!(
            text.contains("\"MODIFIED\"") && text.contains("10.0.0.6"),
            "{text}"
        );
        api.compact();
        api.apply(&SLICE.replace("ADDR", "10.0.0.7")).unwrap();
        let (_, text) = http(
            port,
            "GET",
            &format!("/apis/discovery.k8s.io/v1/endpointslices?watch=true&resourceVersion={rv}"),
            "",
        );
        assert!(text.contains("\"ERROR\"") && text.contains("410"), "{text}");
    }

    #[test]
    fn status_subresource_and_conflicts() {
        let api = ApiServer::start();
        api.apply("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i, namespace: ns}\nspec: {}\n").unwrap();
        let (code, _) = http(
            api.port(),
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/ns/ingresses/i/status",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.1"}]}},"spec":{"x":1}}"#,
        );
        assert_eq!(code, 200);
        let i = api
            .get("networking.k8s.io/v1", "Ingress", "ns", "i")
            .unwrap();
        assert_eq!(i["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
        assert!(
            i["spec"].get("x").is_none(),
            "the status subresource changed spec"
        );
        let (code, text) = http(
            api.port(),
            "PUT",
            "/apis/networking.k8s.io/v1/namespaces/ns/ingresses/i",
            r#"{"metadata":{"name":"i","resourceVersion":"1"},"spec":{}}"#,
        );
        assert_eq!(code, 409, "{text}");
    }

    #[test]
    fn forbidden_on_demand_and_outage() {
        let api = ApiServer::start();
        api.forbid("list", "secrets");
        let (code, text) = http(api.port(), "GET", "/api/v1/secrets", "");
        assert_eq!(code, 403);
        assert!(
            text.contains("cannot list resource \\\"secrets\\\""),
            "{text}"
        );
        api.set_down(true);
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(("127.0.0.1", api.port())).is_err());
        api.set_down(false);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(http(api.port(), "GET", "/api/v1/services", "").0, 200);
    }
}
