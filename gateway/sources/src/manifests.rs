//! The manifests source: folders of Kubernetes YAML/JSON read into the store.
//!
//! Multi-document files are split on `---` lines so every object and every
//! error can be quoted as `file:line`. Kinds the gateway does not use (say a
//! Deployment kept in the same folder) are ignored with a warning. Legacy
//! `extensions/v1beta1` and `networking.k8s.io/v1beta1` Ingresses are
//! converted to v1 with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_yaml::Value;

use portico_model::problems::Problem;
use portico_model::store::{AnyObject, Store};

/// One parsed manifest file.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    pub objects: Vec<(AnyObject, String)>,
    pub problems: Vec<Problem>,
}

impl ParsedFile {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }
}

/// The manifest files of all folders, by path.
pub type ManifestSet = BTreeMap<PathBuf, ParsedFile>;

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Lists manifest files below `dir`, sorted, skipping hidden entries (editor
/// swap files, `..data` symlink farms of mounted ConfigMaps).
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, Problem> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            Problem::error(d.display().to_string(), format!("cannot read folder: {e}"))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if is_manifest(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and parses one manifest file.
pub fn read_file(path: &Path) -> ParsedFile {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_file(&path.display().to_string(), &text),
        Err(e) => ParsedFile {
            objects: vec![],
            problems: vec![Problem::error(
                path.display().to_string(),
                format!("cannot read: {e}"),
            )],
        },
    }
}

/// Is this path one `list_files` would pick up (a visible manifest file)?
pub fn is_visible_manifest(path: &Path) -> bool {
    is_manifest(path)
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Reads and parses every manifest file in `dirs`.
pub fn read_dirs(dirs: &[PathBuf]) -> (ManifestSet, Vec<Problem>) {
    let mut set = ManifestSet::new();
    let mut problems = Vec::new();
    for dir in dirs {
        match list_files(dir) {
            Ok(files) => {
                for f in files {
                    let parsed = read_file(&f);
                    set.insert(f, parsed);
                }
            }
            Err(p) => problems.push(p),
        }
    }
    (set, problems)
}

/// Splits a YAML stream into documents with the 1-based line each starts on.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            // Content after `--- ` on the marker line belongs to the document.
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
                current.push('\n');
                start = i + 1;
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

/// Parses one file's text; `name` is how problems quote the file.
pub fn parse_file(name: &str, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    for (start, doc) in split_documents(text) {
        let location = |line: usize| format!("{name}:{}", start + line.saturating_sub(1));
        let value: Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| l.line()).unwrap_or(1);
                out.problems
                    .push(Problem::error(location(line), format!("invalid YAML: {e}")));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let first_line = doc
            .lines()
            .position(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
            .map(|p| p + 1)
            .unwrap_or(1);
        let here = location(first_line);
        match parse_document(&doc, value) {
            Ok(Parsed::Object(mut obj, warnings)) => {
                obj.set_namespace_default();
                for w in warnings {
                    out.problems.push(Problem::warning(&here, w));
                }
                out.objects.push((obj, here));
            }
            Ok(Parsed::Ignored(why)) => out.problems.push(Problem::warning(&here, why)),
            Err((line, msg)) => out.problems.push(Problem::error(
                line.map(location).unwrap_or_else(|| here.clone()),
                msg,
            )),
        }
    }
    out
}

enum Parsed {
    Object(AnyObject, Vec<String>),
    Ignored(String),
}

type DocError = (Option<usize>, String);

fn parse_document(doc: &str, value: Value) -> Result<Parsed, DocError> {
    let field = |f: &str| value.get(f).and_then(Value::as_str).map(str::to_string);
    let api_version = field("apiVersion").ok_or((None, "missing apiVersion".to_string()))?;
    let kind = field("kind").ok_or((None, "missing kind".to_string()))?;
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    if name.is_none_or(str::is_empty) {
        return Err((None, format!("{kind} has no metadata.name")));
    }

    fn typed<T: serde::de::DeserializeOwned>(doc: &str, kind: &str) -> Result<T, DocError> {
        serde_yaml::from_str::<T>(doc).map_err(|e| {
            (
                e.location().map(|l| l.line()),
                format!("invalid {kind}: {e}"),
            )
        })
    }

    let obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => AnyObject::Service(Arc::new(typed(doc, &kind)?)),
        ("v1", "Secret") => AnyObject::Secret(Arc::new(typed(doc, &kind)?)),
        ("v1", "Namespace") => AnyObject::Namespace(Arc::new(typed(doc, &kind)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            AnyObject::EndpointSlice(Arc::new(typed(doc, &kind)?))
        }
        ("networking.k8s.io/v1", "Ingress") => AnyObject::Ingress(Arc::new(typed(doc, &kind)?)),
        ("networking.k8s.io/v1", "IngressClass") => {
            AnyObject::IngressClass(Arc::new(typed(doc, &kind)?))
        }
        ("extensions/v1beta1" | "networking.k8s.io/v1beta1", "Ingress") => {
            let converted = convert_legacy_ingress(value.clone());
            let ing = serde_yaml::from_value(converted)
                .map_err(|e| (None, format!("invalid {api_version} Ingress: {e}")))?;
            return Ok(Parsed::Object(
                AnyObject::Ingress(Arc::new(ing)),
                vec![format!(
                    "{api_version} Ingress is deprecated (removed in Kubernetes 1.22); \
                     converted to networking.k8s.io/v1"
                )],
            ));
        }
        (
            "gateway.networking.k8s.io/v1"
            | "gateway.networking.k8s.io/v1beta1"
            | "gateway.networking.k8s.io/v1alpha2"
            | "gateway.networking.k8s.io/v1alpha3",
            "GatewayClass" | "Gateway" | "HTTPRoute" | "GRPCRoute" | "ReferenceGrant" | "TCPRoute"
            | "UDPRoute" | "TLSRoute",
        ) => {
            let obj = match kind.as_str() {
                "GatewayClass" => AnyObject::GatewayClass(Arc::new(typed(doc, &kind)?)),
                "Gateway" => AnyObject::Gateway(Arc::new(typed(doc, &kind)?)),
                "HTTPRoute" => AnyObject::HTTPRoute(Arc::new(typed(doc, &kind)?)),
                "GRPCRoute" => AnyObject::GRPCRoute(Arc::new(typed(doc, &kind)?)),
                "TCPRoute" => AnyObject::TCPRoute(Arc::new(typed(doc, &kind)?)),
                "UDPRoute" => AnyObject::UDPRoute(Arc::new(typed(doc, &kind)?)),
                "TLSRoute" => AnyObject::TLSRoute(Arc::new(typed(doc, &kind)?)),
                _ => AnyObject::ReferenceGrant(Arc::new(typed(doc, &kind)?)),
            };
            // v1beta1 is the same schema, still served by the API server.
            let notes = if !api_version.ends_with("/v1") {
                vec![format!(
                    "{api_version} {kind} is deprecated; read as gateway.networking.k8s.io/v1"
                )]
            } else {
                Vec::new()
            };
            return Ok(Parsed::Object(obj, notes));
        }
        (
            _,
            "Service" | "Secret" | "EndpointSlice" | "Ingress" | "IngressClass" | "GatewayClass"
            | "Gateway" | "HTTPRoute" | "GRPCRoute" | "ReferenceGrant" | "TCPRoute" | "UDPRoute"
            | "TLSRoute",
        ) => {
            return Err((
                None,
                format!("unsupported apiVersion {api_version} for {kind}"),
            ))
        }
        _ => {
            return Ok(Parsed::Ignored(format!(
                "{api_version} {kind} is not used by portico; ignored"
            )))
        }
    };
    Ok(Parsed::Object(obj, Vec::new()))
}

/// Rewrites a v1beta1 Ingress into the v1 shape: `backend` →
/// `defaultBackend`, `serviceName`/`servicePort` → `service.name`/`port`,
/// missing `pathType` → `ImplementationSpecific`.
fn convert_legacy_ingress(mut v: Value) -> Value {
    fn convert_backend(b: &mut Value) {
        let Some(map) = b.as_mapping_mut() else {
            return;
        };
        let name = map.remove("serviceName");
        let port = map.remove("servicePort");
        if let Some(name) = name {
            let mut port_map = serde_yaml::Mapping::new();
            match port {
                Some(Value::Number(n)) => {
                    port_map.insert("number".into(), Value::Number(n));
                }
                Some(Value::String(s)) => match s.parse::<i64>() {
                    Ok(n) => {
                        port_map.insert("number".into(), n.into());
                    }
                    Err(_) => {
                        port_map.insert("name".into(), Value::String(s));
                    }
                },
                _ => {}
            }
            let mut svc = serde_yaml::Mapping::new();
            svc.insert("name".into(), name);
            svc.insert("port".into(), Value::Mapping(port_map));
            map.insert("service".into(), Value::Mapping(svc));
        }
    }
    v["apiVersion"] = "networking.k8s.io/v1".into();
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_mapping_mut) {
        if let Some(mut backend) = spec.remove("backend") {
            convert_backend(&mut backend);
            spec.insert("defaultBackend".into(), backend);
        }
        if let Some(rules) = spec.get_mut("rules").and_then(Value::as_sequence_mut) {
            for rule in rules {
                let Some(paths) = rule
                    .get_mut("http")
                    .and_then(|h| h.get_mut("paths"))
                    .and_then(Value::as_sequence_mut)
                else {
                    continue;
                };
                for p in paths {
                    if let Some(b) = p.get_mut("backend") {
                        convert_backend(b);
                    }
                    if let Some(m) = p.as_mapping_mut() {
                        if !m.contains_key("pathType") {
                            m.insert("pathType".into(), "ImplementationSpecific".into());
                        }
                    }
                }
            }
        }
    }
    v
}

/// Builds a store from parsed files. Two definitions of the same object are
/// an error naming both places; the first one read is kept.
pub fn build_store(set: &ManifestSet) -> (Store, Vec<Problem>) {
    let mut store = Store::default();
    let mut problems = Vec::new();
    for file in set.values() {
        for (obj, origin) in &file.objects {
            let kind = obj.kind();
            let key = obj.key();
            if let Some(Some(first)) = store.insert(obj.clone(), Some(origin.clone())) {
                problems.push(Problem::error(
                    origin.clone(),
                    format!(
                        "{kind} {key} is already defined at {first}; this definition is ignored"
                    ),
                ));
                // Put the first definition back.
                let original = set
                    .values()
                    .flat_map(|f| f.objects.iter())
                    .find(|(o, at)| *at == first && o.kind() == kind && o.key() == key);
                if let Some((o, at)) = original {
                    store.insert(o.clone(), Some(at.clone()));
                }
            }
        }
    }
    (store, problems)
}

/// Keeps serving what worked: for each file that now has errors, the
/// previous good version of that file is kept instead (its problems are
/// still reported).
pub fn merge_keep_last_good(previous: &ManifestSet, mut next: ManifestSet) -> ManifestSet {
    for (path, parsed) in next.iter_mut() {
        if parsed.has_errors() {
            if let Some(prev) = previous.get(path) {
                parsed.objects = prev.objects.clone();
                parsed.problems.push(Problem::warning(
                    path.display().to_string(),
                    "file has errors; its previous version keeps serving",
                ));
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# leading comment
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
---
apiVersion: extensions/v1beta1
kind: Ingress
metadata:
  name: old
  namespace: legacy
spec:
  backend:
    serviceName: web
    servicePort: 80
  rules:
  - host: a.example.com
    http:
      paths:
      - path: /x
        backend:
          serviceName: web
          servicePort: http
";

    #[test]
    fn parses_multi_document_with_lines() {
        let p = parse_file("m.yaml", GOOD);
        assert_eq!(p.objects.len(), 2, "{:?}", p.problems);
        assert_eq!(p.objects[0].1, "m.yaml:2");
        assert_eq!(p.objects[0].0.key().to_string(), "default/web");
        assert_eq!(p.objects[1].1, "m.yaml:15");
        let warnings: Vec<String> = p.problems.iter().map(|x| x.to_string()).collect();
        assert!(
            warnings[0].starts_with("m.yaml:10: warning: apps/v1 Deployment"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("deprecated"), "{warnings:?}");
        let AnyObject::Ingress(ing) = &p.objects[1].0 else {
            panic!()
        };
        let spec = ing.spec.as_ref().unwrap();
        let db = spec
            .default_backend
            .as_ref()
            .unwrap()
            .service
            .as_ref()
            .unwrap();
        assert_eq!(db.name, "web");
        assert_eq!(db.port.as_ref().unwrap().number, Some(80));
        let path = &spec.rules.as_ref().unwrap()[0].http.as_ref().unwrap().paths[0];
        assert_eq!(path.path_type, "ImplementationSpecific");
        let port = path
            .backend
            .service
            .as_ref()
            .unwrap()
            .port
            .as_ref()
            .unwrap();
        assert_eq!(port.name.as_deref(), Some("http"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\nspec:\n  ports: 12\n---\nkind: Service\n---\n: : bad\n  - x\n";
        let p = parse_file("bad.yaml", text);
        assert_eq!(p.objects.len(), 1);
        let msgs: Vec<String> = p.problems.iter().map(|x| x.to_string()).collect();
        assert!(
            msgs[0].starts_with("bad.yaml:11: error: invalid Service"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("bad.yaml:13: error: missing apiVersion"),
            "{msgs:?}"
        );
        assert!(
            msgs[2].starts_with("bad.yaml:1") && msgs[2].contains("invalid YAML"),
            "{msgs:?}"
        );
        assert!(p.has_errors());
    }

    #[test]
    fn missing_name_and_bad_api_version() {
        let p = parse_file("x.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {}\n");
        assert!(p.problems[0]
            .to_string()
            .contains("Secret has no metadata.name"));
        let p = parse_file(
            "x.yaml",
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a}\n",
        );
        assert!(p.problems[0].message.contains("unsupported apiVersion"));
    }

    #[test]
    fn duplicates_are_errors_naming_both() {
        let mut set = ManifestSet::new();
        set.insert("a.yaml".into(), parse_file("a.yaml", GOOD));
        set.insert("b.yaml".into(), parse_file("b.yaml", GOOD));
        let (store, problems) = build_store(&set);
        assert_eq!(store.services.len(), 1);
        assert_eq!(
            store.services.values().next().unwrap().origin.as_deref(),
            Some("a.yaml:2")
        );
        assert!(
            problems[0]
                .to_string()
                .contains("already defined at a.yaml:2"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_version() {
        let mut prev = ManifestSet::new();
        prev.insert("a.yaml".into(), parse_file("a.yaml", GOOD));
        let mut next = ManifestSet::new();
        next.insert("a.yaml".into(), parse_file("a.yaml", "kind: [unclosed\n"));
        let merged = merge_keep_last_good(&prev, next);
        assert_eq!(merged["a.yaml".as_ref() as &Path].objects.len(), 2);
    }
}
