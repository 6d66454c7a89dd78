//! Ingress v1 → route table and certificates.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use super::backend::{Backends, PortRef};
use portico_model::certs as tls;
use portico_model::problems::Problem;
use portico_model::routing::{CanaryRoute, PathKind, Route};
use portico_model::snapshot::{IgnoredIngress, SnapshotSpec};
use portico_model::store::{ObjectKey, Store};

/// A path of a canary Ingress, to be given to the route of another
/// Ingress once every Ingress is in the table.
pub struct PendingCanary {
    /// Where problems are reported: the canary Ingress.
    pub here: String,
    pub what: String,
    pub host: Option<String>,
    pub kind: PathKind,
    pub path: String,
    pub canary: CanaryRoute,
}

/// An Ingress the admission left out, with the hosts it names (so
/// `explain` can say why a request for one of them is not routed).
pub fn ignored(key: &ObjectKey, ing: &Ingress, location: String, reason: String) -> IgnoredIngress {
    let spec = ing.spec.as_ref();
    let mut hosts: Vec<String> = spec
        .and_then(|s| s.rules.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.host.clone().unwrap_or_else(|| "*".into()))
        .collect();
    if spec.is_some_and(|s| s.default_backend.is_some()) {
        hosts.push("*".into());
    }
    hosts.sort();
    hosts.dedup();
    IgnoredIngress {
        ingress: key.to_string(),
        location,
        reason,
        hosts,
    }
}

/// Adds one admitted Ingress to the table. Problems name the Ingress. A
/// canary Ingress adds no route; its paths come back to be attached.
pub fn add_ingress(
    key: &ObjectKey,
    ing: &Ingress,
    store: &Store,
    settings: &super::Settings,
    backends: &mut Backends<'_>,
    out: &mut SnapshotSpec,
) -> Vec<PendingCanary> {
    let mut pending = Vec::new();
    let SnapshotSpec {
        routes,
        certs,
        problems,
        referenced_secrets,
        ..
    } = out;
    let here = Store::locate(&store.ingresses, "Ingress", key);
    let Some(spec) = ing.spec.as_ref() else {
        problems.push(Problem::warning(&here, "has no spec; nothing to serve"));
        return pending;
    };
    let ingress_name = key.to_string();
    // Plugins read annotations as properties; kubectl's copy of the whole
    // object is not one a plugin needs.
    let annotations: std::sync::Arc<portico_model::routing::Annotations> = std::sync::Arc::new(
        ing.metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| !k.ends_with("last-applied-configuration"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into(),
    );
    let known_plugins = &settings.plugins;
    let (plugins, unknown) =
        super::plugins::requested(ing.metadata.annotations.as_ref(), known_plugins);
    let scoped_plugins = settings
        .scoped
        .for_ingress(ing.metadata.annotations.as_ref());
    // Typed policy from the policy plugin; an Ingress it cannot describe
    // is not served (serving it without its policy could open what the
    // annotations close).
    let policy = match &settings.policy {
        None => None,
        Some(Err(e)) => {
            problems.push(Problem::error(&here, format!("{e}; not served")));
            return pending;
        }
        Some(Ok(p)) => {
            let tls = spec.tls.as_ref().is_some_and(|t| !t.is_empty());
            match p.policy(&key.namespace, &key.name, &annotations, tls) {
                Ok((policy, notes)) => {
                    for (error, m) in notes {
                        problems.push(if error {
                            Problem::error(&here, m)
                        } else {
                            Problem::warning(&here, m)
                        });
                    }
                    (policy != Default::default()).then(|| std::sync::Arc::new(policy))
                }
                Err(e) => {
                    problems.push(Problem::error(
                        &here,
                        format!("policy plugin: {e}; not served"),
                    ));
                    return pending;
                }
            }
        }
    };
    problems.extend(unknown.into_iter().map(|m| Problem::error(&here, m)));
    let canary = policy.as_ref().and_then(|p| p.policy.canary.clone());
    let regex_paths = policy.as_ref().is_some_and(|p| p.policy.regex_paths);
    // The policy's default backend: a Service of this namespace, first port.
    let fallback = policy
        .as_ref()
        .and_then(|p| p.policy.default_backend.as_deref())
        .and_then(|svc| {
            let port = store
                .services
                .get(&ObjectKey::new(key.namespace.clone(), svc.to_string()))
                .and_then(|s| s.object.spec.as_ref())
                .and_then(|s| s.ports.as_ref())
                .and_then(|ports| ports.first())
                .map(|p| p.port);
            let Some(port) = port else {
                problems.push(Problem::warning(
                    &here,
                    format!(
                        "default backend Service {}/{svc} does not exist or has no port; not used",
                        key.namespace
                    ),
                ));
                return None;
            };
            Some(
                backends
                    .resolve(&key.namespace, svc, &PortRef::Number(port))
                    .0,
            )
        });

    let mut resolve = |b: &IngressBackend, what: &str, problems: &mut Vec<Problem>| {
        let Some(svc) = b.service.as_ref() else {
            problems.push(Problem::error(
                &here,
                format!("{what}: only service backends are supported (resource backends are not)"),
            ));
            return None;
        };
        let port = match svc.port.as_ref() {
            Some(p) => match (p.number, p.name.as_deref()) {
                (Some(n), _) => PortRef::Number(n),
                (None, Some(name)) if !name.is_empty() => PortRef::Name(name.to_string()),
                _ => {
                    problems.push(Problem::error(
                        &here,
                        format!("{what}: service {} port needs a number or a name", svc.name),
                    ));
                    return None;
                }
            },
            None => {
                problems.push(Problem::error(
                    &here,
                    format!("{what}: service {} has no port", svc.name),
                ));
                return None;
            }
        };
        let (bk, why) = backends.resolve(&key.namespace, &svc.name, &port);
        if let Some(why) = why {
            problems.push(Problem::warning(
                &here,
                format!("{what}: {why}; requests get 503 until it exists"),
            ));
        }
        Some(bk)
    };

    if let (Some(_), Some(_)) = (&canary, spec.default_backend.as_ref()) {
        problems.push(Problem::warning(
            &here,
            "defaultBackend of a canary Ingress is ignored (only its rules take a share)",
        ));
    } else if let Some(db) = spec.default_backend.as_ref() {
        if let Some(bk) = resolve(db, "defaultBackend", problems) {
            let route = Route {
                ingress: ingress_name.clone(),
                host: "*".into(),
                path: "/".into(),
                kind: PathKind::Prefix,
                backend: bk,
                plugins: plugins.clone(),
                scoped_plugins: scoped_plugins.clone(),
                annotations: annotations.clone(),
                policy: policy.clone(),
                canary: None,
                path_regex: None,
                fallback: fallback.clone(),
                rule: None,
                metrics: Default::default(),
            };
            if let Err(kept) = routes.set_default_backend(route) {
                problems.push(Problem::warning(
                    &here,
                    format!(
                        "defaultBackend ignored: Ingress {} already sets one",
                        kept.ingress
                    ),
                ));
            }
        }
    }

    for (ri, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.as_deref().filter(|h| !h.is_empty());
        if let Some(h) = host {
            if let Err(e) = validate_host(h) {
                problems.push(Problem::error(
                    &here,
                    format!("spec.rules[{ri}].host {h:?}: {e}; rule skipped"),
                ));
                continue;
            }
        }
        let Some(http) = rule.http.as_ref() else {
            continue;
        };
        for (pi, p) in http.paths.iter().enumerate() {
            let what = format!("spec.rules[{ri}].http.paths[{pi}]");
            let path = p.path.as_deref().unwrap_or("/");
            let kind = match p.path_type.as_str() {
                "Exact" => PathKind::Exact,
                "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                other => {
                    problems.push(Problem::error(
                        &here,
                        format!("{what}.pathType {other:?} is not Exact, Prefix or ImplementationSpecific; path skipped"),
                    ));
                    continue;
                }
            };
            if !path.starts_with('/') {
                problems.push(Problem::error(
                    &here,
                    format!("{what}.path {path:?} must start with '/'; path skipped"),
                ));
                continue;
            }
            // Regex paths (ingress-nginx `use-regex`, or a rewrite with
            // capture groups): Prefix and ImplementationSpecific paths.
            let (kind, path_regex) = match (kind, regex_paths) {
                (PathKind::Prefix, true) => match portico_model::routing::PathRegex::new(path) {
                    Ok(r) => (PathKind::Regex, Some(r)),
                    Err(e) => {
                        problems.push(Problem::error(
                            &here,
                            format!("{what}.path {path:?}: {e}; path skipped"),
                        ));
                        continue;
                    }
                },
                (kind, _) => (kind, None),
            };
            let Some(bk) = resolve(&p.backend, &what, problems) else {
                continue;
            };
            if let Some(rule) = &canary {
                pending.push(PendingCanary {
                    here: here.clone(),
                    what,
                    host: host.map(str::to_string),
                    kind,
                    path: path.to_string(),
                    canary: CanaryRoute {
                        ingress: ingress_name.clone(),
                        backend: bk,
                        rule: rule.clone(),
                    },
                });
                continue;
            }
            let route = Route {
                ingress: ingress_name.clone(),
                host: host.unwrap_or("*").to_string(),
                path: path.to_string(),
                kind,
                backend: bk,
                plugins: plugins.clone(),
                scoped_plugins: scoped_plugins.clone(),
                annotations: annotations.clone(),
                policy: policy.clone(),
                canary: None,
                path_regex,
                fallback: fallback.clone(),
                rule: None,
                metrics: Default::default(),
            };
            if let Err(kept) = routes.host_mut(host).add(kind, path, route) {
                if kept.ingress != ingress_name {
                    problems.push(Problem::warning(
                        &here,
                        format!(
                            "{what}: {} {path} is already routed by Ingress {}, which is older; ignored",
                            host.unwrap_or("*"),
                            kept.ingress
                        ),
                    ));
                }
            }
        }
    }

    for (ti, t) in spec.tls.iter().flatten().enumerate() {
        // TLS hosts default to the hosts of the rules.
        let hosts: Vec<String> = match t.hosts.as_ref().filter(|h| !h.is_empty()) {
            Some(h) => h.clone(),
            None => spec
                .rules
                .iter()
                .flatten()
                .filter_map(|r| r.host.clone())
                .collect(),
        };
        let Some(secret_name) = t.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            for h in &hosts {
                certs.note_fallback(
                    h,
                    format!("Ingress {ingress_name} spec.tls[{ti}] names no secretName"),
                );
            }
            continue;
        };
        let secret_key = ObjectKey::new(key.namespace.clone(), secret_name);
        referenced_secrets.insert(secret_key.clone());
        let cert = match store.secrets.get(&secret_key) {
            None => Err(format!("TLS Secret {secret_key} not found")),
            Some(s) => secret_certificate(&s.object, &secret_key.to_string())
                .map_err(|e| format!("TLS Secret {secret_key}: {e}")),
        };
        match cert {
            Err(reason) => {
                problems.push(
                    Problem::error(
                        &here,
                        format!(
                            "spec.tls[{ti}]: {reason}; hosts {hosts:?} get the default certificate"
                        ),
                    )
                    .with_reason(TLS_SECRET_INVALID),
                );
                for h in &hosts {
                    certs.note_fallback(h, reason.clone());
                }
            }
            Ok(cert) => {
                for h in &hosts {
                    if !tls::covers(&cert, h) {
                        let reason =
                            format!("certificate in TLS Secret {secret_key} does not cover {h}");
                        problems.push(
                            Problem::error(
                                &here,
                                format!(
                                    "spec.tls[{ti}]: {reason}; it gets the default certificate"
                                ),
                            )
                            .with_reason(TLS_SECRET_INVALID),
                        );
                        certs.note_fallback(h, reason);
                        continue;
                    }
                    certs.insert(h, cert.clone());
                }
            }
        }
    }
    pending
}

/// Event reason for an Ingress whose TLS Secret cannot be served.
pub const TLS_SECRET_INVALID: &str = "TLSSecretInvalid";

/// A `kubernetes.io/tls` Secret's certificate (`data` or `stringData`).
pub fn secret_certificate(secret: &Secret, name: &str) -> Result<tls::Certificate, String> {
    if let Some(t) = secret.type_.as_deref() {
        if t != "kubernetes.io/tls" {
            return Err(format!("type is {t:?}, not kubernetes.io/tls"));
        }
    }
    let get = |k: &str| -> Option<Vec<u8>> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|s| s.as_bytes().to_vec())
            })
    };
    let crt = get("tls.crt").ok_or("has no tls.crt")?;
    let key = get("tls.key").ok_or("has no tls.key")?;
    tls::parse_pem(&crt, &key, name)
}

/// A host as Ingress and Gateway API hostnames allow it: a DNS name,
/// optionally with a whole first label `*`.
pub(crate) fn validate_host(h: &str) -> Result<(), &'static str> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.contains('*') {
        return Err("a wildcard may only be the whole first label (*.example.com)");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address is not allowed as a host");
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err("not a valid DNS name")
    }
}
