//! One watcher per kind: lists, then watches, and reports `Update`s.
//!
//! kube-runtime's `watcher` does the protocol (list, watch from the list's
//! resourceVersion, relist on 410 Gone, bookmarks); this module adds what an
//! operator needs around it: retry with backoff, a log line per kind of
//! failure rather than per retry, a plain-words line for RBAC refusals, and
//! objects that fail to decode skipped one by one instead of failing the
//! whole list.

use std::borrow::Cow;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedSender;

use super::state::{Kind, Update};
use portico_model::store::{AnyObject, ObjectKey};

/// An object as received: decoded, or kept as its metadata and the decode
/// error so it can be skipped and reported without losing its neighbours.
#[derive(Clone, Debug)]
pub enum Lenient<K> {
    Ok(K),
    Bad {
        meta: Box<ObjectMeta>,
        error: String,
    },
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Lenient::Ok(k) => k.meta(),
            Lenient::Bad { meta, .. } => meta,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Lenient::Ok(k) => k.meta_mut(),
            Lenient::Bad { meta, .. } => meta,
        }
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        match K::deserialize(&value) {
            Ok(k) => Ok(Lenient::Ok(k)),
            Err(e) => Ok(Lenient::Bad {
                meta: Box::new(
                    value
                        .get("metadata")
                        .and_then(|m| ObjectMeta::deserialize(m).ok())
                        .unwrap_or_default(),
                ),
                error: e.to_string(),
            }),
        }
    }
}

/// An object that could not be decoded: reported, never stored.
#[derive(Debug, Clone)]
pub struct Malformed {
    pub kind: &'static str,
    pub api_version: String,
    pub meta: Box<ObjectMeta>,
    pub error: String,
}

/// What the watchers send to the source.
#[derive(Debug)]
pub enum Report {
    Update(Update),
    Malformed(Malformed),
    /// A watch of one object by name failed (refused, or the API is
    /// unreachable): the source stops waiting for it and reports why.
    Failed(Kind, ObjectKey, String),
}

/// What one watcher covers: every object of its kind in scope, or one
/// object by name.
#[derive(Debug, Clone)]
pub enum Coverage {
    Kind,
    One(ObjectKey),
}

/// `resource.group` as RBAC rules name it (`services`, `ingresses.networking.k8s.io`).
fn resource_name<K: Resource<DynamicType = ()>>() -> String {
    let group = K::group(&());
    if group.is_empty() {
        K::plural(&()).into_owned()
    } else {
        format!("{}.{}", K::plural(&()), group)
    }
}

/// The annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the store never reads but a real API server sends with every
/// object: `managedFields` (server-side apply bookkeeping) and `kubectl
/// apply`'s copy of the object. At the scale benchmark's size through a
/// real API server they took 59 MiB of 214 MiB RSS (integration-tests/bench/SCALE.md).
fn trim_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Runs until the channel closes: list, watch, and on failure back off and
/// start again. Never gives up: a cluster that comes back is followed.
pub async fn run<K>(
    api: Api<Lenient<K>>,
    config: watcher::Config,
    scope: String,
    (kind, coverage): (Kind, Coverage),
    wrap: fn(K) -> AnyObject,
    tx: UnboundedSender<Report>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let resource = resource_name::<K>();
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut initial: Vec<AnyObject> = Vec::new();
    let mut failing: Option<String> = None;
    // Listed at least once, or counted as empty.
    let mut listed = false;
    // Malformed objects of a list are reported after its Reset (which
    // forgets the kind's earlier ones).
    let mut initial_bad: Vec<Malformed> = Vec::new();
    let split = |lk: Lenient<K>| -> Result<AnyObject, Malformed> {
        match lk {
            Lenient::Ok(mut k) => {
                trim_metadata(k.meta_mut());
                Ok(wrap(k))
            }
            Lenient::Bad { meta, error } => Err(Malformed {
                kind: kind.name(),
                api_version: K::api_version(&()).into_owned(),
                meta,
                error,
            }),
        }
    };
    let send_one = |lk: Lenient<K>, delete: bool| -> bool {
        let report = match split(lk) {
            Ok(o) if delete => Report::Update(Update::Delete(o)),
            Ok(o) => Report::Update(Update::Apply(o)),
            Err(m) => Report::Malformed(m),
        };
        tx.send(report).is_ok()
    };
    while let Some(event) = stream.next().await {
        let sent = match event {
            Ok(Event::Init) => {
                initial.clear();
                initial_bad.clear();
                true
            }
            Ok(Event::InitApply(k)) => {
                match split(k) {
                    Ok(o) => initial.push(o),
                    Err(m) => initial_bad.push(m),
                }
                true
            }
            Ok(Event::InitDone) => {
                listed = true;
                if failing.take().is_some() {
                    tracing::info!(resource = %resource, "Kubernetes watch recovered; state resynced");
                }
                let objects = std::mem::take(&mut initial);
                tracing::debug!(resource = %resource, objects = objects.len(), "listed");
                let update = match &coverage {
                    Coverage::Kind => {
                        metrics::gauge!("portico_kubernetes_objects", "resource" => resource.clone())
                            .set(objects.len() as f64);
                        Update::Reset(kind, objects)
                    }
                    Coverage::One(key) => Update::ResetOne(kind, key.clone(), objects),
                };
                tx.send(Report::Update(update)).is_ok()
                    && initial_bad
                        .drain(..)
                        .all(|m| tx.send(Report::Malformed(m)).is_ok())
            }
            Ok(Event::Apply(k)) => send_one(k, false),
            // A deleted malformed object is reported as malformed once more;
            // its problem ends at the next relist.
            Ok(Event::Delete(k)) => send_one(k, true),
            Err(e) => {
                let first = failing.is_none();
                let message = report_error(&resource, &scope, &coverage, &e, &mut failing);
                match &coverage {
                    Coverage::One(key) if first => {
                        tx.send(Report::Failed(kind, key.clone(), message)).is_ok()
                    }
                    // A Gateway API kind (or Namespaces, which only refine
                    // listener selectors) that the ServiceAccount may not
                    // read, say with a ClusterRole older than the image,
                    // counts as empty until it can be listed: the rest is
                    // served meanwhile. The watch keeps retrying, and the
                    // error above says which grant is missing.
                    Coverage::Kind
                        if !listed && forbidden(&e) && Kind::GATEWAY_API.contains(&kind) =>
                    {
                        listed = true;
                        tx.send(Report::Update(Update::Reset(kind, Vec::new())))
                            .is_ok()
                    }
                    _ => true,
                }
            }
        };
        if !sent {
            return;
        }
    }
}

/// How a watch failure is told to the operator: one line when the failure
/// starts or changes character, debug lines while it repeats.
pub fn describe(
    resource: &str,
    scope: &str,
    coverage: &Coverage,
    e: &watcher::Error,
) -> (String, String) {
    use watcher::Error as W;
    let grant = match coverage {
        Coverage::Kind => format!(
            "Grant the ServiceAccount the verbs list and watch on {resource} (deploy/rbac.yaml \
             has the rules)"
        ),
        Coverage::One(key) => format!(
            "Grant the ServiceAccount list and watch on {resource} named {} in namespace {} \
             (`portico rbac` prints Roles for every referenced Secret)",
            key.name, key.namespace
        ),
    };
    let forbidden = |verb: &str, err: &kube::Error| -> Option<String> {
        match err {
            kube::Error::Api(s) if s.is_forbidden() => Some(format!(
                "RBAC: the API server forbids `{verb}` on {resource} {scope}: {}. {grant}; \
                 serving the last known state and retrying",
                s.message
            )),
            _ => None,
        }
    };
    match e {
        W::InitialListFailed(err) => match forbidden("list", err) {
            Some(m) => ("forbidden:list".into(), m),
            None => (
                "list".into(),
                format!(
                    "cannot list {resource} {scope}: {err}; serving the last known state and \
                     retrying with backoff"
                ),
            ),
        },
        W::WatchStartFailed(err) => match forbidden("watch", err) {
            Some(m) => ("forbidden:watch".into(), m),
            None => (
                "watch".into(),
                format!(
                    "cannot watch {resource} {scope}: {err}; serving the last known state and \
                     retrying with backoff"
                ),
            ),
        },
        W::WatchError(status) if status.code == 410 => (
            "gone".into(),
            format!("watch of {resource} expired (410 Gone); relisting"),
        ),
        W::WatchError(status) => (
            "watch-error".into(),
            format!(
                "API server ended the watch of {resource}: {} ({}); retrying",
                status.message, status.code
            ),
        ),
        W::WatchFailed(err) => (
            "watch".into(),
            format!("watch of {resource} failed: {err}; serving the last known state and retrying"),
        ),
        W::NoResourceVersion => (
            "rv".into(),
            format!("the API server sent {resource} without metadata.resourceVersion; retrying"),
        ),
    }
}

fn report_error(
    resource: &str,
    scope: &str,
    coverage: &Coverage,
    e: &watcher::Error,
    failing: &mut Option<String>,
) -> String {
    let (class, message) = describe(resource, scope, coverage, e);
    metrics::counter!("portico_kubernetes_watch_errors_total", "resource" => resource.to_string())
        .increment(1);
    if failing.as_deref() == Some(class.as_str()) {
        tracing::debug!(resource, "{message}");
        return message;
    }
    if class == "gone" {
        tracing::info!(resource, "{message}");
    } else if class.starts_with("forbidden") {
        tracing::error!(resource, "{message}");
    } else {
        tracing::warn!(resource, "{message}");
    }
    *failing = Some(class);
    message
}

/// Whether a watch failed because RBAC refuses the list or the watch.
fn forbidden(e: &watcher::Error) -> bool {
    use watcher::Error as W;
    match e {
        W::InitialListFailed(kube::Error::Api(s)) | W::WatchStartFailed(kube::Error::Api(s)) => {
            s.is_forbidden()
        }
        W::WatchError(s) => s.is_forbidden(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_fields_and_the_last_applied_copy_are_dropped() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut meta = ObjectMeta {
            name: Some("web".into()),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                ..Default::default()
            }]),
            annotations: Some(
                [
                    (LAST_APPLIED.to_string(), "{...}".to_string()),
                    (
                        "nginx.ingress.kubernetes.io/affinity".to_string(),
                        "cookie".to_string(),
                    ),
                ]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        };
        trim_metadata(&mut meta);
        assert_eq!(meta.managed_fields, None);
        let annotations = meta.annotations.unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/affinity"],
            "cookie"
        );
        assert_eq!(meta.name.as_deref(), Some("web"));
    }
    use k8s_openapi::api::core::v1::Service;

    #[test]
    fn a_malformed_object_keeps_its_name_and_error() {
        let list = r#"[
            {"metadata": {"name": "good", "namespace": "a"}, "spec": {"ports": [{"port": 80}]}},
            {"metadata": {"name": "bad", "namespace": "b"}, "spec": {"ports": [{"port": "eighty"}]}}
        ]"#;
        let parsed: Vec<Lenient<Service>> = serde_json::from_str(list).unwrap();
        assert!(matches!(&parsed[0], Lenient::Ok(s) if s.metadata.name.as_deref() == Some("good")));
        match &parsed[1] {
            Lenient::Bad { meta, error } => {
                assert_eq!(meta.name.as_deref(), Some("bad"));
                assert_eq!(meta.namespace.as_deref(), Some("b"));
                assert!(
                    error.contains("eighty") || error.contains("invalid type"),
                    "{error}"
                );
            }
            Lenient::Ok(_) => panic!("decoded a malformed Service"),
        }
    }

    #[test]
    fn forbidden_names_verb_and_resource_in_plain_words() {
        let status = kube::core::Status::failure(
            "secrets is forbidden: User \"system:serviceaccount:p:p\" cannot list resource \"secrets\"",
            "Forbidden",
        )
        .with_code(403);
        let e = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)));
        let (class, msg) = describe("secrets", "in all namespaces", &Coverage::Kind, &e);
        let (_, named) = describe(
            "secrets",
            "named shop/web-tls",
            &Coverage::One(ObjectKey::new("shop", "web-tls")),
            &e,
        );
        assert!(
            named.contains("secrets named web-tls in namespace shop"),
            "{named}"
        );
        assert!(named.contains("portico rbac"), "{named}");
        assert_eq!(class, "forbidden:list");
        assert!(msg.contains("`list` on secrets in all namespaces"), "{msg}");
        assert!(msg.contains("cannot list resource"), "{msg}");
        assert_eq!(resource_name::<Service>(), "services");
        assert_eq!(
            resource_name::<k8s_openapi::api::networking::v1::Ingress>(),
            "ingresses.networking.k8s.io"
        );
    }
}
