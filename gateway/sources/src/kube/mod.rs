//! The Kubernetes source: watches the API into the store, translates and
//! publishes; the leader also writes status and Events back.
//!
//! Data flows one way: watchers (`watch`) → `Update`s → `ClusterState` (the
//! store) → the same pure translation as the manifests source → publish.
//! Nothing downstream of the store knows the objects came from an API.

pub mod client;
pub mod events;
pub mod gateway_status;
pub mod l2_leases;
pub mod leader;
pub mod list;
pub mod named;
pub mod node;
pub mod state;
pub mod status;
pub mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher;
use kube::{Api, Client};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::config::{DnsConfig, KubernetesConfig, SecretAccess};
use named::NamedWatches;
use portico_model::control::LoadBalancerAddresses;
use portico_model::problems::Problem;
use portico_model::publish::Publisher;
use portico_model::snapshot::{AddressOwner, SnapshotSpec};
use portico_model::store::{AnyObject, ObjectKey};
use portico_translate::Settings;
use state::{ClusterState, Effect, Kind, Update};
use watch::{Coverage, Lenient, Malformed, Report};

/// Everything the source, the status writer and the event reporter share.
pub struct Shared {
    inner: Mutex<Inner>,
}

pub struct Inner {
    pub cluster: ClusterState,
    pub settings: Settings,
    pub spec: SnapshotSpec,
    logged: Vec<Problem>,
    /// Objects the API sent that could not be decoded, by kind and key.
    malformed: BTreeMap<(&'static str, ObjectKey), Malformed>,
    /// `kubernetes.secrets = "referenced"`: the watches of the Secrets
    /// admitted Ingresses name.
    secret_watches: Option<NamedWatches>,
    /// Whether a snapshot has been published: the first one is always a
    /// full translation and marks the process ready.
    published: bool,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the Kubernetes source needs from the process configuration.
pub struct KubeSettings {
    pub kubernetes: KubernetesConfig,
    pub dns: DnsConfig,
    /// `node.addresses`: when set, the Node's own addresses are not read.
    pub node_addresses: Vec<std::net::IpAddr>,
    /// `kubernetes.load_balancer_plugin`, when one is configured.
    pub load_balancer: Option<Arc<dyn LoadBalancerAddresses>>,
    /// L2 announcement with ownership decided by Leases.
    pub l2_election: Option<l2_leases::L2Election>,
    /// Addresses are announced: watch every Node's addresses, which are
    /// never announced (a Service's status may hold the leader's node
    /// addresses, which other edge nodes must not take).
    pub watch_all_nodes: bool,
}

pub struct KubeSource {
    cfg: KubeSettings,
    /// Taken by the first `start`.
    l2_election: Mutex<Option<l2_leases::L2Election>>,
    client_config: kube::Config,
    publisher: Arc<Publisher>,
    shared: Arc<Shared>,
}

impl KubeSource {
    pub fn new(
        mut cfg: KubeSettings,
        mut settings: Settings,
        client_config: kube::Config,
        publisher: Arc<Publisher>,
    ) -> Self {
        settings.cluster_nodes_known = !cfg.watch_all_nodes;
        let secret_watches = (cfg.kubernetes.secrets == SecretAccess::Referenced)
            .then(|| NamedWatches::new("Secret"));
        let l2_election = Mutex::new(cfg.l2_election.take());
        KubeSource {
            l2_election,
            cfg,
            client_config,
            publisher,
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    cluster: ClusterState::default(),
                    settings,
                    spec: SnapshotSpec::default(),
                    logged: Vec::new(),
                    malformed: BTreeMap::new(),
                    secret_watches,
                    published: false,
                }),
            }),
        }
    }

    fn scope(&self) -> String {
        match &self.cfg.kubernetes.namespace {
            Some(ns) => format!("in namespace {ns}"),
            None => "in all namespaces".into(),
        }
    }

    fn api<K>(&self, client: &Client) -> Api<Lenient<K>>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.cfg.kubernetes.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }

    fn spawn_watchers(&self, client: &Client, tx: &mpsc::UnboundedSender<Report>) {
        let scope = self.scope();
        let wc = watcher::Config::default;
        if self.cfg.kubernetes.gateway_api {
            tokio::spawn(gateway_api_watchers(
                client.clone(),
                self.cfg.kubernetes.namespace.clone(),
                scope.clone(),
                tx.clone(),
            ));
        } else {
            for kind in Kind::GATEWAY_API {
                let _ = tx.send(Report::Update(Update::Reset(kind, Vec::new())));
            }
        }
        tokio::spawn(watch::run::<Service>(
            self.api(client),
            wc(),
            scope.clone(),
            (Kind::Service, Coverage::Kind),
            |o| AnyObject::Service(Arc::new(o)),
            tx.clone(),
        ));
        tokio::spawn(watch::run::<EndpointSlice>(
            self.api(client),
            wc(),
            scope.clone(),
            (Kind::EndpointSlice, Coverage::Kind),
            |o| AnyObject::EndpointSlice(Arc::new(o)),
            tx.clone(),
        ));
        tokio::spawn(watch::run::<Ingress>(
            self.api(client),
            wc(),
            scope.clone(),
            (Kind::Ingress, Coverage::Kind),
            |o| AnyObject::Ingress(Arc::new(o)),
            tx.clone(),
        ));
        tokio::spawn(watch::run::<IngressClass>(
            Api::all(client.clone()),
            wc(),
            "(cluster-scoped)".into(),
            (Kind::IngressClass, Coverage::Kind),
            |o| AnyObject::IngressClass(Arc::new(o)),
            tx.clone(),
        ));
        if self.cfg.kubernetes.secrets == SecretAccess::Referenced {
            // Watched by name once translation says which; the kind as a
            // whole is never listed.
            let _ = tx.send(Report::Update(Update::Reset(Kind::Secret, Vec::new())));
            return;
        }
        // Only TLS Secrets: the others are none of our business, and a
        // cluster's Secrets can be large.
        tokio::spawn(watch::run::<Secret>(
            self.api(client),
            wc().fields("type=kubernetes.io/tls"),
            scope,
            (Kind::Secret, Coverage::Kind),
            |o| AnyObject::Secret(Arc::new(o)),
            tx.clone(),
        ));
    }

    /// Applies a batch of reports; publishes when the store is complete.
    fn apply(
        &self,
        reports: Vec<Report>,
        (node_addresses, all_nodes): (
            Option<Vec<IpAddr>>,
            Option<std::collections::BTreeSet<IpAddr>>,
        ),
        resolved: &crate::dns::Resolved,
        start_secret_watch: &dyn Fn(&ObjectKey) -> tokio::task::AbortHandle,
    ) -> Option<std::collections::BTreeSet<String>> {
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let was_published = inner.published;
        let mut effect = Effect::Nothing;
        if *resolved != inner.settings.resolved_names {
            inner.settings.resolved_names = resolved.clone();
            effect = Effect::Full;
        }
        if let Some(addrs) = node_addresses {
            if addrs != inner.settings.node_addresses {
                tracing::info!(addresses = ?addrs, "edge node addresses");
                inner.settings.node_addresses = addrs;
                effect = Effect::Full;
            }
        }
        // Until every Node's addresses are known, status addresses are not
        // announced (one could be another node's).
        let known = !self.cfg.watch_all_nodes || all_nodes.is_some();
        let all_nodes = all_nodes.unwrap_or_default();
        if all_nodes != inner.settings.cluster_node_addresses
            || known != inner.settings.cluster_nodes_known
        {
            inner.settings.cluster_node_addresses = all_nodes;
            inner.settings.cluster_nodes_known = known;
            effect = Effect::Full;
        }
        for r in reports {
            match r {
                Report::Update(u) => {
                    if let Some(watches) = inner.secret_watches.as_mut() {
                        match named_secret(&u) {
                            Some(key) if !watches.watches(&key) => continue,
                            Some(key) => {
                                if let Update::ResetOne(..) = u {
                                    if watches.listed(&key) == Some(true) {
                                        effect.merge(Effect::Full);
                                    }
                                }
                            }
                            None => {}
                        }
                    }
                    forget_malformed(&mut inner.malformed, &u);
                    effect.merge(inner.cluster.apply(u));
                }
                Report::Failed(_, key, why) => {
                    if let Some(watches) = inner.secret_watches.as_mut() {
                        if watches.failed(&key, why).is_some() {
                            effect.merge(Effect::Full);
                        }
                    }
                }
                Report::Malformed(m) => {
                    let key = ObjectKey::new(
                        m.meta.namespace.clone().unwrap_or_default(),
                        m.meta.name.clone().unwrap_or_default(),
                    );
                    // A late report of a Secret watch that was stopped.
                    if m.kind == Kind::Secret.name()
                        && inner
                            .secret_watches
                            .as_ref()
                            .is_some_and(|w| !w.watches(&key))
                    {
                        continue;
                    }
                    inner.malformed.insert((m.kind, key), m);
                    effect.merge(Effect::Full);
                }
            }
        }
        // Only a Service change can change the names, and every Service
        // change is a full one: endpoint-only batches skip the scan.
        let names = matches!(effect, Effect::Full)
            .then(|| portico_translate::backend::external_names(&inner.cluster.store));
        if !inner.cluster.synced() {
            return names;
        }
        let started = std::time::Instant::now();
        let rebuilt = match effect {
            Effect::Nothing if was_published => return names,
            Effect::Endpoints(services) if was_published => {
                let Inner {
                    spec,
                    cluster,
                    settings,
                    ..
                } = inner;
                Some(portico_translate::refresh_endpoints(
                    spec,
                    &cluster.store,
                    settings,
                    &services,
                ))
            }
            _ => {
                inner.spec = portico_translate::translate(&inner.cluster.store, &inner.settings);
                None
            }
        };
        if let Some(watches) = inner.secret_watches.as_mut() {
            let wanted = &inner.spec.referenced_secrets;
            for key in watches.follow(wanted, |k| Some(start_secret_watch(k))) {
                inner.cluster.forget(Kind::Secret, &key);
                inner.malformed.remove(&(Kind::Secret.name(), key));
            }
            if !watches.settled() {
                // The new watches' answers come back as reports and
                // translate again; publishing now would serve the default
                // certificate (and report a missing Secret) in between.
                return names;
            }
        }
        metrics::histogram!("portico_translate_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let mut problems = inner.spec.problems.clone();
        problems.extend(inner.malformed.values().map(malformed_problem));
        if let Some(watches) = &inner.secret_watches {
            problems.extend(watches.problems());
        }
        problems.sort();
        problems.dedup();
        inner.logged = portico_model::problems::log_new(&problems, &inner.logged);
        let mut spec = inner.spec.clone();
        spec.problems = problems;
        match rebuilt {
            Some(keys) => self.publisher.publish_incremental(spec, &keys),
            None => self.publisher.publish(spec),
        };
        if !inner.published {
            inner.published = true;
            self.publisher.mark_ready();
        }
        names
    }

    /// Starts the watch of one Secret by name (`kubernetes.secrets =
    /// "referenced"`).
    fn watch_secret(
        client: &Client,
        tx: &mpsc::UnboundedSender<Report>,
        key: &ObjectKey,
    ) -> tokio::task::AbortHandle {
        let api: Api<Lenient<Secret>> = Api::namespaced(client.clone(), &key.namespace);
        tokio::spawn(watch::run::<Secret>(
            api,
            watcher::Config::default().fields(&format!("metadata.name={}", key.name)),
            format!("named {key}"),
            (Kind::Secret, Coverage::One(key.clone())),
            |o| AnyObject::Secret(Arc::new(o)),
            tx.clone(),
        ))
        .abort_handle()
    }
}

/// The LoadBalancer Service or Gateway whose address `ip` is, as
/// translation found it (the same map the announcers follow), for Events
/// about the address.
fn owner_of_address(
    inner: &Inner,
    ip: IpAddr,
) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let owner = inner.spec.load_balancer_addresses.get(&ip)?;
    let key = owner.key();
    let (api_version, uid) = match owner {
        AddressOwner::Service(_) => (
            "v1",
            inner
                .cluster
                .store
                .services
                .get(key)
                .and_then(|s| s.object.metadata.uid.clone()),
        ),
        AddressOwner::Gateway(_) => (
            "gateway.networking.k8s.io/v1",
            inner
                .cluster
                .store
                .gateways
                .get(key)
                .and_then(|s| s.object.metadata.uid.clone()),
        ),
    };
    Some(k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(owner.kind().into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        uid,
        ..Default::default()
    })
}

/// The Secret a report of a watch by name is about.
fn named_secret(u: &Update) -> Option<ObjectKey> {
    match u {
        Update::ResetOne(Kind::Secret, key, _) => Some(key.clone()),
        Update::Apply(o @ AnyObject::Secret(_)) | Update::Delete(o @ AnyObject::Secret(_)) => {
            Some(o.key())
        }
        _ => None,
    }
}

/// A good version of a once-malformed object (or its deletion) ends the
/// problem.
fn forget_malformed(malformed: &mut BTreeMap<(&'static str, ObjectKey), Malformed>, u: &Update) {
    if malformed.is_empty() {
        return;
    }
    match u {
        Update::Apply(o) | Update::Delete(o) => {
            malformed.remove(&(o.kind(), o.key()));
        }
        // A relist re-reports the malformed objects that are still there.
        Update::Reset(kind, _) => malformed.retain(|(k, _), _| *k != kind.name()),
        Update::ResetOne(kind, key, _) => {
            malformed.remove(&(kind.name(), key.clone()));
        }
    }
}

pub fn malformed_problem(m: &Malformed) -> Problem {
    let ns = m.meta.namespace.as_deref().unwrap_or_default();
    let name = m.meta.name.as_deref().unwrap_or("<unnamed>");
    let location = if ns.is_empty() {
        format!("{} {name}", m.kind)
    } else {
        format!("{} {ns}/{name}", m.kind)
    };
    Problem::error(
        location,
        format!(
            "cannot be read as {} {}: {}; skipped (its last good version, if any, stays)",
            m.api_version, m.kind, m.error
        ),
    )
    .with_reason(events::REASON_MALFORMED)
}

#[async_trait]
impl BackgroundService for KubeSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match client::client(self.client_config.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        tracing::info!(
            server = %self.client_config.cluster_url,
            scope = %self.scope(),
            secrets = match self.cfg.kubernetes.secrets {
                SecretAccess::All => "all TLS Secrets in scope",
                SecretAccess::Referenced => "only the Secrets admitted Ingresses name, by name",
            },
            "Kubernetes source: listing and watching Services, EndpointSlices, Ingresses, \
             IngressClasses and Secrets"
        );
        let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
        self.spawn_watchers(&client, &tx);
        let (node_tx, mut node_rx) = tokio::sync::watch::channel::<Option<Vec<IpAddr>>>(None);
        let node_name = self
            .cfg
            .kubernetes
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty());
        match node_name {
            Some(name) if self.cfg.node_addresses.is_empty() => {
                tokio::spawn(node::run(client.clone(), name, node_tx.clone()));
            }
            Some(_) => {
                tracing::info!("node.addresses is set; the Node's own addresses are not read")
            }
            None if self.cfg.node_addresses.is_empty() => tracing::warn!(
                "no node name (kubernetes.node_name or NODE_NAME) and no node.addresses: \
                 NodePort listeners and default status addresses are unavailable"
            ),
            None => {}
        }
        let (all_nodes_tx, mut all_nodes_rx) =
            tokio::sync::watch::channel(None::<std::collections::BTreeSet<IpAddr>>);
        if self.cfg.watch_all_nodes {
            tokio::spawn(node::run_all(client.clone(), all_nodes_tx.clone()));
        }
        let election = self
            .l2_election
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(election) = election {
            let k = &self.cfg.kubernetes;
            let shared = self.shared.clone();
            let at = l2_leases::Placement {
                namespace: k
                    .lease_namespace
                    .clone()
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".into()),
                identity: status::identity(k),
                owner_of: Arc::new(move |ip| owner_of_address(&shared.lock(), ip)),
            };
            // A thread and a client of its own: renewals must not wait
            // behind a translation of a large cluster on this runtime.
            let config = self.client_config.clone();
            let spawned = std::thread::Builder::new()
                .name("portico-l2-leases".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime.map_err(|e| e.to_string()).and_then(|rt| {
                        rt.block_on(async move {
                            let client = client::client(config)?;
                            l2_leases::run(client, election, at).await;
                            Ok::<(), String>(())
                        })
                    }) {
                        Ok(()) => {}
                        Err(e) => tracing::error!(error = %e, "L2 ownership: cannot run the Lease elector"),
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "L2 ownership: cannot start the Lease elector thread");
            }
        }
        let writer = status::Writer::new(
            client.clone(),
            &self.cfg.kubernetes,
            self.cfg.load_balancer.clone(),
            self.shared.clone(),
            self.publisher.clone(),
        );
        let mut writer_shutdown = shutdown.clone();
        tokio::spawn(async move { writer.run(&mut writer_shutdown).await });

        let (names_tx, mut resolved_rx) = crate::dns::spawn(&self.cfg.dns);
        let debounce = Duration::from_millis(self.cfg.kubernetes.debounce_ms);
        loop {
            let first = tokio::select! {
                r = rx.recv() => match r { Some(r) => Some(r), None => break },
                // Never closed: `node_tx` lives as long as this loop.
                _ = node_rx.changed() => None,
                // Likewise `all_nodes_tx`.
                _ = all_nodes_rx.changed() => None,
                // Never closed while `names_tx` lives.
                _ = resolved_rx.changed() => None,
                _ = shutdown.changed() => break,
            };
            // A burst (a rollout, a relist) is applied as one publish.
            if !debounce.is_zero() {
                tokio::time::sleep(debounce).await;
            }
            let mut batch: Vec<Report> = first.into_iter().collect();
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            let node = node_rx.borrow_and_update().clone();
            let all_nodes = all_nodes_rx.borrow_and_update().clone();
            let resolved = resolved_rx.borrow_and_update().clone();
            let start = |k: &ObjectKey| Self::watch_secret(&client, &tx, k);
            let Some(names) = self.apply(batch, (node, all_nodes), &resolved, &start) else {
                continue;
            };
            names_tx.send_if_modified(|cur| {
                let changed = *cur != names;
                *cur = names;
                changed
            });
        }
        drop(node_tx);
        drop(all_nodes_tx);
    }
}

/// How often a cluster without the Gateway API CRDs is asked again.
const GATEWAY_API_RECHECK: Duration = Duration::from_secs(30);

/// Watches the Gateway API kinds once their CRDs are installed. Until
/// then each kind counts as listed and empty (so an Ingress-only cluster
/// is served at once), and the API is asked again every 30 s: CRDs
/// installed later are picked up without a restart.
async fn gateway_api_watchers(
    client: Client,
    namespace: Option<String>,
    scope: String,
    tx: mpsc::UnboundedSender<Report>,
) {
    use portico_gateway_api::{
        GRPCRoute, Gateway, GatewayClass, HTTPRoute, ReferenceGrant, TCPRoute, TLSRoute, UDPRoute,
    };
    let api_version = format!("{}/v1", portico_gateway_api::GROUP);
    let mut started: std::collections::BTreeSet<Kind> = Default::default();
    // Kinds already reported empty (not installed): said once, so a
    // cluster without some CRD is not translated again every 30 s.
    let mut empty: std::collections::BTreeSet<Kind> = Default::default();
    let mut told_absent = false;
    let mut told_error = false;
    let mut quick_rechecks = 30;
    let mut retry = Duration::from_secs(1);
    loop {
        let served: Vec<String> = match client.list_api_group_resources(&api_version).await {
            Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
            Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
            Err(e) => {
                // Not known yet: the kinds count as empty so they do not
                // hold readiness (the other watches do while the API is
                // away), and the question is asked again soon.
                if !told_error {
                    told_error = true;
                    tracing::warn!(error = %e, "cannot ask the API server whether the Gateway API is installed; asking again");
                }
                for kind in Kind::GATEWAY_API {
                    if started.contains(&kind) || !empty.insert(kind) {
                        continue;
                    }
                    if tx
                        .send(Report::Update(Update::Reset(kind, Vec::new())))
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(GATEWAY_API_RECHECK);
                continue;
            }
        };
        retry = Duration::from_secs(1);
        for kind in Kind::GATEWAY_API {
            if started.contains(&kind) {
                continue;
            }
            let plural = match kind {
                Kind::GatewayClass => "gatewayclasses",
                Kind::Gateway => "gateways",
                Kind::HTTPRoute => "httproutes",
                Kind::GRPCRoute => "grpcroutes",
                Kind::TCPRoute => "tcproutes",
                Kind::UDPRoute => "udproutes",
                Kind::TLSRoute => "tlsroutes",
                // Watched when Gateways are (see Kind::GATEWAY_API).
                Kind::Namespace => "gateways",
                _ => "referencegrants",
            };
            if !served.iter().any(|r| r == plural) {
                // Not installed: listed, and empty.
                if empty.insert(kind)
                    && tx
                        .send(Report::Update(Update::Reset(kind, Vec::new())))
                        .is_err()
                {
                    return;
                }
                continue;
            }
            started.insert(kind);
            tracing::info!(resource = %format!("{plural}.{}", portico_gateway_api::GROUP), "Gateway API resource served by the cluster; watching it");
            let wc = watcher::Config::default();
            match kind {
                Kind::GatewayClass => tokio::spawn(watch::run::<GatewayClass>(
                    Api::all(client.clone()),
                    wc,
                    "(cluster-scoped)".into(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::GatewayClass(Arc::new(o)),
                    tx.clone(),
                )),
                Kind::Gateway => tokio::spawn(watch::run::<Gateway>(
                    scoped_api(&client, namespace.as_deref()),
                    wc,
                    scope.clone(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::Gateway(Arc::new(o)),
                    tx.clone(),
                )),
                Kind::HTTPRoute => tokio::spawn(watch::run::<HTTPRoute>(
                    scoped_api(&client, namespace.as_deref()),
                    wc,
                    scope.clone(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::HTTPRoute(Arc::new(o)),
                    tx.clone(),
                )),
                Kind::GRPCRoute => tokio::spawn(watch::run::<GRPCRoute>(
                    scoped_api(&client, namespace.as_deref()),
                    wc,
                    scope.clone(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::GRPCRoute(Arc::new(o)),
                    tx.clone(),
                )),
                Kind::TCPRoute => tokio::spawn(watch::run::<TCPRoute>(
                    scoped_api(&client, namespace.as_deref()),
                    wc,
                    scope.clone(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::TCPRoute(Arc::new(o)),
                    tx.clone(),
                )),
                Kind::UDPRoute => tokio::spawn(watch::run::<UDPRoute>(
                    scoped_api(&client, namespace.as_deref()),
                    wc,
                    scope.clone(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::UDPRoute(Arc::new(o)),
                    tx.clone(),
                )),
                Kind::Namespace => tokio::spawn(watch::run::<Namespace>(
                    Api::all(client.clone()),
                    wc,
                    "(cluster-scoped)".into(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::Namespace(Arc::new(o)),
                    tx.clone(),
                )),
                Kind::TLSRoute => tokio::spawn(watch::run::<TLSRoute>(
                    scoped_api(&client, namespace.as_deref()),
                    wc,
                    scope.clone(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::TLSRoute(Arc::new(o)),
                    tx.clone(),
                )),
                _ => tokio::spawn(watch::run::<ReferenceGrant>(
                    scoped_api(&client, namespace.as_deref()),
                    wc,
                    scope.clone(),
                    (kind, Coverage::Kind),
                    |o| AnyObject::ReferenceGrant(Arc::new(o)),
                    tx.clone(),
                )),
            };
        }
        if started.len() == Kind::GATEWAY_API.len() {
            return;
        }
        if !told_absent && started.is_empty() {
            told_absent = true;
            tracing::info!("the Gateway API CRDs (gateway.networking.k8s.io/v1) are not installed; Gateways and routes are not read until they are (asking every 30 s)");
        }
        // Some kinds served and not others: likely an install under way,
        // so asked again soon for a while.
        let pause = if !started.is_empty() && quick_rechecks > 0 {
            quick_rechecks -= 1;
            Duration::from_secs(2)
        } else {
            GATEWAY_API_RECHECK
        };
        tokio::time::sleep(pause).await;
    }
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
