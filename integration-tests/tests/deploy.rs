//! Every manifest in `deploy/` parses into its k8s-openapi type, the
//! kustomization lists them all, and the DaemonSet keeps the security and
//! lifecycle settings the deployment depends on. The embedded config in the
//! ConfigMap must also be a valid `portico.toml` (checked with `portico check`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use portico_integration_tests::{portico, workspace_root, TempDir};

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// (file, kind, document text) for every YAML document in deploy/.
fn documents() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in text.split("\n---\n") {
            let v: serde_yaml::Value =
                serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let kind = v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", f.display()))
                .to_string();
            out.push((
                f.file_name().unwrap().to_string_lossy().into_owned(),
                kind,
                doc.to_string(),
            ));
        }
    }
    out
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, doc: &str) -> T {
    serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn every_manifest_parses_into_its_type() {
    let docs = documents();
    let mut kinds = BTreeSet::new();
    for (file, kind, doc) in &docs {
        match kind.as_str() {
            "Namespace" => drop(parse::<Namespace>(file, doc)),
            "ServiceAccount" => drop(parse::<ServiceAccount>(file, doc)),
            "ClusterRole" => drop(parse::<ClusterRole>(file, doc)),
            "ClusterRoleBinding" => drop(parse::<ClusterRoleBinding>(file, doc)),
            "Role" => drop(parse::<Role>(file, doc)),
            "RoleBinding" => drop(parse::<RoleBinding>(file, doc)),
            "IngressClass" => drop(parse::<IngressClass>(file, doc)),
            "ConfigMap" => drop(parse::<ConfigMap>(file, doc)),
            "DaemonSet" => drop(parse::<DaemonSet>(file, doc)),
            other => panic!("{file}: unexpected kind {other}"),
        }
        kinds.insert(kind.clone());
    }
    for want in [
        "DaemonSet",
        "ClusterRole",
        "ConfigMap",
        "IngressClass",
        "ServiceAccount",
    ] {
        assert!(kinds.contains(want), "deploy/ has no {want}");
    }
    // The kustomization lists every file.
    let kustomization: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = docs.iter().map(|(f, _, _)| f.clone()).collect();
    assert_eq!(listed, files);
}

#[test]
fn daemonset_is_hostnetwork_nonroot_and_drains() {
    let (file, _, doc) = documents()
        .into_iter()
        .find(|(_, k, _)| k == "DaemonSet")
        .unwrap();
    let ds: DaemonSet = parse(&file, &doc);
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert!(pod.node_selector.is_some() && pod.tolerations.is_some());
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let grace = pod.termination_grace_period_seconds.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_BIND_SERVICE".to_string()][..])
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let sleep = pre_stop.sleep.as_ref().unwrap().seconds;

    // The drain fits: preStop sleep + the gateway's grace period < the pod's.
    let (file, _, doc) = documents()
        .into_iter()
        .find(|(_, k, _)| k == "ConfigMap")
        .unwrap();
    let cm: ConfigMap = parse(&file, &doc);
    let toml = cm.data.unwrap()["portico.toml"].clone();
    let gw_grace: i64 = toml
        .lines()
        .find_map(|l| l.strip_prefix("grace_period_seconds = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        sleep + gw_grace < grace,
        "preStop {sleep}s + grace {gw_grace}s must be < {grace}s"
    );
}

#[test]
fn configmap_holds_a_valid_portico_toml() {
    let (file, _, doc) = documents()
        .into_iter()
        .find(|(_, k, _)| k == "ConfigMap")
        .unwrap();
    let cm: ConfigMap = parse(&file, &doc);
    let dir = TempDir::new("deploy");
    // The image carries plugins/dist/ as /usr/lib/portico/plugins.
    let toml = cm.data.unwrap()["portico.toml"].replace(
        "/usr/lib/portico/plugins/",
        &format!("{}/", workspace_root().join("plugins/dist").display()),
    );
    assert!(toml.contains("plugins/dist/ingress_class.wasm"), "{toml}");
    // The deployed config, like conf/portico.toml, attaches the affinity
    // plugins only where affinity is asked for: elsewhere they cost nothing.
    for entry in toml.split("[[plugins.load]]").skip(1) {
        if entry.contains("name = \"session-affinity") {
            assert!(entry.contains("applies_to = {"), "unscoped: {entry}");
        }
    }
    portico_integration_tests::built_plugins();
    let cfg = dir.write("portico.toml", &toml);
    let manifests = dir.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    let out = portico(&[
        "check",
        "--config",
        cfg.to_str().unwrap(),
        "--manifests",
        manifests.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
