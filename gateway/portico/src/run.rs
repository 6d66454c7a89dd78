//! `portico run`: load, check, publish the first snapshot, then serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::TlsSettings;
use pingora::prelude::background_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::Config;
use crate::settings::{kube_settings, translate_settings};
use crate::{demo, telemetry, worker_listeners};
use portico_dataplane::l4::{L4Manager, L4Settings};
use portico_dataplane::proxy::http::HttpProxy;
use portico_dataplane::shutdown::DrainingSignalWatch;
use portico_dataplane::tls_accept::SniResolver;
use portico_model::certs as tls;
use portico_model::lb::HealthPolicy;
use portico_model::problems::Problem;
use portico_model::publish::Publisher;
use portico_sources::kube as kube_source;
use portico_sources::manifests;
use portico_sources::pipeline::ManifestPipeline;

/// Problems that stop `run` before it serves: the config and the manifest
/// files themselves. Problems between objects (a missing Service, a
/// certificate that does not cover its host) are served with their
/// documented fallback and reported in logs, metrics and `/config`.
pub fn load_problems(cfg: &Config) -> (manifests::ManifestSet, Vec<Problem>) {
    let (set, mut problems) = manifests::read_dirs(&cfg.sources.manifests);
    for f in set.values() {
        problems.extend(f.problems.iter().filter(|p| p.is_error()).cloned());
    }
    let (_, dup) = manifests::build_store(&set);
    problems.extend(dup);
    (set, problems)
}

fn default_certificate(cfg: &Config) -> Result<tls::Certificate, String> {
    match (&cfg.tls.default_certificate, &cfg.tls.default_key) {
        (Some(c), Some(k)) => {
            let crt = std::fs::read(c)
                .map_err(|e| format!("{}: tls.default_certificate: {e}", c.display()))?;
            let key =
                std::fs::read(k).map_err(|e| format!("{}: tls.default_key: {e}", k.display()))?;
            tls::parse_pem(&crt, &key, &c.display().to_string())
                .map_err(|e| format!("{}: tls.default_certificate: {e}", c.display()))
        }
        _ => tls::generate_default(),
    }
}

/// Pingora's settings for `threads` worker threads.
fn server_conf(cfg: &Config, threads: usize) -> ServerConf {
    ServerConf {
        threads,
        // Plugin instances are per worker thread and a request's phases
        // must run where its contexts live: one single-threaded runtime
        // per worker (also Pingora's faster mode).
        work_stealing: false,
        grace_period_seconds: Some(cfg.shutdown.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// Fails early, with the config key, when a listener address is taken.
fn check_bindable(addrs: &[(SocketAddr, &str)]) -> Result<(), String> {
    for (addr, key) in addrs {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr} ({key}): {e}"))?;
    }
    Ok(())
}

/// The addresses to announce: the configured ones now, and as each
/// snapshot says the LoadBalancer Services' own (`service_addresses`) and
/// the Gateways' from pools open to them.
fn follow_service_addresses(
    cfg: &portico_announce::AnnounceConfig,
    publisher: &Arc<portico_model::publish::Publisher>,
    ownerships: &portico_announce::Ownerships,
) -> Result<(), String> {
    let fixed: std::collections::BTreeSet<std::net::IpAddr> =
        cfg.addresses.iter().copied().collect();
    ownerships.set_candidates(cfg, &fixed);
    if !cfg.service_addresses && !cfg.pools.iter().any(|p| p.gateways) {
        return Ok(());
    }
    let (publisher, ownerships, cfg) = (publisher.clone(), ownerships.clone(), cfg.clone());
    std::thread::Builder::new()
        .name("announce-addresses".into())
        .spawn(move || {
            let mut seen = None;
            loop {
                let snap = publisher.current();
                if seen != Some(snap.generation) {
                    seen = Some(snap.generation);
                    let mut all = fixed.clone();
                    all.extend(
                        snap.load_balancer_addresses
                            .iter()
                            .filter(|(_, owner)| {
                                cfg.service_addresses
                                    || matches!(
                                        owner,
                                        portico_model::snapshot::AddressOwner::Gateway(_)
                                    )
                            })
                            .map(|(ip, _)| *ip),
                    );
                    ownerships.set_candidates(&cfg, &all);
                }
                drop(snap);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the announce-addresses thread: {e}"))
}

/// The Lease elector's hooks into the announcer's ownership.
fn l2_election(
    cfg: &Config,
    serving: &portico_announce::Serving,
    ownership: &portico_announce::Ownership,
) -> kube_source::l2_leases::L2Election {
    let (stopping, publish, handed_over) =
        (ownership.clone(), ownership.clone(), ownership.clone());
    let eligible = serving.clone();
    let candidates = ownership.clone();
    kube_source::l2_leases::L2Election {
        addresses: Arc::new(move || candidates.candidates().into_iter().collect()),
        lease_duration: Duration::from_secs(cfg.announce.lease_duration_seconds),
        eligible: Arc::new(move || eligible()),
        stopping: Arc::new(move || stopping.giving_up()),
        publish: Arc::new(move |owned| publish.set_owned(owned)),
        handed_over: Arc::new(move || handed_over.note_handed_over()),
        holders: Arc::new(portico_announce::status::set_holders),
    }
}

pub fn run(cfg: Config, config_file: Option<PathBuf>) -> Result<(), String> {
    no_transparent_huge_pages();
    set_purge_delay_ms(0);
    telemetry::init_logging(&cfg.log);
    let metrics = telemetry::init_metrics()?;
    telemetry::describe_metrics();

    // The Kubernetes source replaces the manifest folders; its credentials
    // are checked before anything listens, so a bad kubeconfig fails here.
    let kube_config = if cfg.kubernetes.wanted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let kc = rt.block_on(kube_source::client::config(&cfg.kubernetes))?;
        tracing::info!(
            credentials = %kube_source::client::describe_origin(&cfg.kubernetes),
            server = %kc.cluster_url,
            "Kubernetes source enabled; sources.manifests is not read"
        );
        if cfg.ingress.admission.is_none() {
            tracing::warn!(
                "ingress.admission is unset: every Ingress in the cluster is served and its \
                 status written, whatever its class; load the ingress-class plugin to serve \
                 only this controller's IngressClasses"
            );
        }
        Some(kc)
    } else {
        None
    };

    // Taken before reading: a file written during the read counts as changed.
    let loaded_at = std::time::SystemTime::now();
    let (set, problems) = if kube_config.is_some() {
        Default::default()
    } else {
        load_problems(&cfg)
    };
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        return Err(format!(
            "{} problem(s) in the manifests; not serving",
            problems.len()
        ));
    }
    let mut binds: Vec<(SocketAddr, &str)> = vec![(cfg.admin.listen, "admin.listen")];
    binds.extend(cfg.listen.http.iter().map(|a| (*a, "listen.http")));
    binds.extend(cfg.listen.https.iter().map(|a| (*a, "listen.https")));
    check_bindable(&binds)?;
    let default_cert = default_certificate(&cfg)?;

    // Plugins load before anything listens: one that does not compile,
    // check or start stops `run` with the reason.
    let (registry, plugin_errors) = portico_wasm::registry::load_all(&cfg.plugins, None);
    if !plugin_errors.is_empty() {
        for e in &plugin_errors {
            eprintln!("{e}");
        }
        return Err(format!(
            "{} plugin(s) failed to load; not serving",
            plugin_errors.len()
        ));
    }
    for p in registry.plugins.values() {
        tracing::info!(plugin = %p.name, path = %p.path.display(), abi = ?p.info.abi, fail = ?p.fail, "plugin loaded");
    }
    release_freed_memory();
    let registry = Arc::new(arc_swap::ArcSwap::from_pointee(registry));
    portico_wasm::install_control(
        &cfg.ingress,
        cfg.kubernetes.load_balancer_plugin.as_deref(),
        &registry,
    );
    portico_wasm::main_vm::spawn(registry.clone())?;

    let health = HealthPolicy {
        failure_threshold: cfg.lb.failure_threshold,
        cooldown: Duration::from_millis(cfg.lb.cooldown_ms),
    };
    let publisher = Arc::new(Publisher::new(health));
    let snapshots = publisher.handle();
    // Envoy cluster names are read at start (like `applies_to`).
    let clusters = cfg.plugins.clusters.clone();
    portico_wasm::callout::set_resolver(Arc::new(move |name: &str| {
        let backend = portico_wasm::callout::cluster_target(&clusters, name);
        portico_dataplane::proxy::http::pick_backend(&snapshots.load(), &backend).map_err(|e| {
            if backend != name {
                format!("cluster {name:?}: {e}")
            } else {
                e
            }
        })
    }));
    let pipeline = ManifestPipeline::new(
        cfg.sources.manifests.clone(),
        cfg.dns.clone(),
        translate_settings(&cfg),
        publisher.clone(),
        set,
        loaded_at,
    );
    if kube_config.is_none() {
        pipeline.apply();
    }

    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&cfg, threads));
    server.bootstrap();

    let proxy = HttpProxy::new(
        publisher.handle(),
        registry.clone(),
        cfg.proxy.clone(),
        cfg.log.access_log,
    );
    // One service per worker thread, each with listening sockets of its
    // own: see `worker_listeners`.
    let socket_options = worker_listeners::socket_options(threads);
    // A worker's Pingora proxy serves one thread: sized for one, its
    // upstream pool keeps `upstream_keepalive_pool_size` idle connections
    // (Pingora multiplies that by the thread count), so the workers
    // together keep what one proxy for all threads would.
    let worker_conf = Arc::new(server_conf(&cfg, 1));
    for _ in 0..threads {
        // Pingora's proxy serves what the HTTP/1.1 fast path leaves to it
        // (`portico_dataplane::proxy::fast_h1`).
        let mut full = pingora::proxy::http_proxy(&worker_conf, proxy.clone());
        let mut opts = pingora::apps::HttpServerOptions::default();
        opts.h2c = cfg.listen.h2c;
        full.server_options = Some(opts);
        let mut l7 = Service::new(
            "portico-l7".to_string(),
            portico_dataplane::proxy::fast_h1::FastH1::new(full, proxy.clone()),
        );
        for addr in &cfg.listen.http {
            match &socket_options {
                Some(o) => l7.add_tcp_with_settings(&addr.to_string(), o.clone()),
                None => l7.add_tcp(&addr.to_string()),
            }
        }
        if cfg.proxy.proxy_protocol {
            l7.endpoints().set_pre_tls_callback(Arc::new(
                portico_dataplane::proxy::proxy_protocol::BeforeTls {
                    trusted: Arc::new(cfg.proxy.trusted_proxies.clone()),
                },
            ));
        }
        for addr in &cfg.listen.https {
            let mut tls_settings =
                TlsSettings::with_callbacks(Box::new(portico_dataplane::proxy::http::SniRecorder))
                    .map_err(|e| e.to_string())?;
            tls_settings.set_cert_resolver(Arc::new(SniResolver::new(
                publisher.handle(),
                default_cert.clone(),
            )));
            tls_settings.enable_h2();
            l7.add_tls_with_settings(&addr.to_string(), socket_options.clone(), tls_settings);
        }
        server.add_service(worker_listeners::WorkerListeners::new(l7));
    }

    let mut admin = Service::new(
        "portico-admin".to_string(),
        Admin {
            publisher: publisher.clone(),
            metrics,
            l7_listeners: cfg.listen.l7(),
            plugins: registry.clone(),
        },
    );
    admin.add_tcp(&cfg.admin.listen.to_string());
    server.add_service(admin);

    server.add_service(background_service(
        "l4",
        L4Manager::new(
            publisher.handle(),
            registry.clone(),
            publisher.subscribe(),
            L4Settings::from(&cfg.l4),
        ),
    ));
    let kube_mode = kube_config.is_some();
    // Announced while `/readyz` would say ready and the node is not
    // draining: not before the first sync, not to a node on its way out.
    let ready = publisher.clone();
    let serving: portico_announce::Serving =
        Arc::new(move || ready.is_ready() && !portico_dataplane::shutdown::draining());
    // L2 with the Kubernetes source: one owner per address among the edge
    // nodes, by Leases. Otherwise each node owns what its config lists.
    let elected = kube_mode && cfg.announce.uses(portico_announce::AnnounceMode::L2);
    let ownerships = portico_announce::Ownerships {
        l2: if elected {
            portico_announce::Ownership::elected()
        } else {
            portico_announce::Ownership::all()
        },
        bgp: portico_announce::Ownership::all(),
    };
    if cfg.announce.active() {
        follow_service_addresses(&cfg.announce, &publisher, &ownerships)?;
    }
    match kube_config {
        Some(kc) => {
            let mut settings = kube_settings(&cfg);
            settings.l2_election = elected.then(|| l2_election(&cfg, &serving, &ownerships.l2));
            server.add_service(background_service(
                "kubernetes",
                kube_source::KubeSource::new(
                    settings,
                    translate_settings(&cfg),
                    kc,
                    publisher.clone(),
                ),
            ))
        }
        None => server.add_service(background_service("manifests", pipeline)),
    };
    if cfg.plugins.reload && !cfg.plugins.load.is_empty() {
        server.add_service(background_service(
            "plugin-reload",
            portico_wasm::reload::PluginReloader {
                registry: registry.clone(),
                config: cfg.plugins.clone(),
                config_file: config_file.clone().map(|f| {
                    let read: portico_wasm::reload::ReadPluginsConfig =
                        Arc::new(|f| crate::config::load(Some(f)).map(|(c, _)| c.plugins));
                    (f, read)
                }),
            },
        ));
    }
    // Quickstart only: the demo manifests point at these; a cluster's
    // objects never do.
    if !cfg.demo.echo.is_empty() && kube_mode {
        tracing::info!("demo.echo is not started with the Kubernetes source");
    } else if !cfg.demo.echo.is_empty() {
        server.add_service(background_service(
            "demo-echo",
            demo::EchoService::new(cfg.demo.echo.clone()),
        ));
    }

    // Addresses are announced once everything that serves them is set
    // up, and given up first on SIGTERM.
    let announcers = portico_announce::start(&cfg.announce, serving, &ownerships)?;
    if !announcers.is_empty() {
        let announcer = std::sync::Mutex::new(announcers);
        portico_dataplane::shutdown::on_drain(Box::new(move || {
            for a in announcer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter_mut()
            {
                a.release();
            }
        }));
    }

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        http = ?cfg.listen.http,
        https = ?cfg.listen.https,
        admin = %cfg.admin.listen,
        manifests = ?cfg.sources.manifests.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "portico serving"
    );
    trim_after_start();
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingSignalWatch {
            grace: Duration::from_secs(cfg.shutdown.grace_period_seconds),
            on_exit: || {},
        }),
    });
    Ok(())
}

/// `portico check`: every problem in config, manifests and translation.
pub fn check(cfg: &Config) -> Vec<Problem> {
    let (set, mut problems) = manifests::read_dirs(&cfg.sources.manifests);
    for f in set.values() {
        problems.extend(f.problems.iter().cloned());
    }
    let (store, dup) = manifests::build_store(&set);
    problems.extend(dup);
    let spec = portico_translate::translate(&store, &translate_settings(cfg));
    problems.extend(unknown_clusters(cfg, &spec.backends));
    problems.extend(unknown_interfaces(&cfg.announce.interfaces));
    problems.extend(spec.problems);
    // Not an error (other controllers' Ingresses are normal), but never
    // silent.
    problems.extend(
        spec.ignored_ingresses
            .into_iter()
            .map(|i| Problem::warning(i.location, format!("not served: {}", i.reason))),
    );
    problems.sort();
    problems.dedup();
    problems
}

/// `announce.interfaces` this machine does not have: a warning, as
/// `check` may run elsewhere than the edge node (`run` refuses them).
fn unknown_interfaces(names: &[String]) -> Vec<Problem> {
    let here: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names
        .iter()
        .filter(|n| !here.contains(n))
        .map(|n| {
            Problem::warning(
                "config: announce.interfaces",
                format!(
                    "no interface named {n:?} on this machine; `run` refuses to start without it"
                ),
            )
        })
        .collect()
}

/// `[plugins] clusters` entries that name no backend: a plugin's callout
/// targets are only known when it runs, but where the config maps a
/// cluster name, a mapping to nothing can be told now (the callout would
/// get BadArgument).
fn unknown_clusters(
    cfg: &Config,
    backends: &std::collections::BTreeMap<
        portico_model::snapshot::BackendKey,
        portico_model::snapshot::BackendSpec,
    >,
) -> Vec<Problem> {
    cfg.plugins
        .clusters
        .iter()
        .filter(|(_, backend)| {
            !portico_model::snapshot::BackendKey::parse(backend)
                .is_some_and(|k| backends.contains_key(&k))
        })
        .map(|(cluster, backend)| {
            Problem::warning(
                "config [plugins] clusters",
                format!(
                    "cluster {cluster:?} maps to {backend:?}, which no Ingress or L4 listener uses: \
                     callouts to it get BadArgument (callable backends are the routed ones)"
                ),
            )
        })
        .collect()
}

/// Manifest folders: the config's, plus any given on the command line.
pub fn with_manifest_dirs(mut cfg: Config, extra: &[PathBuf]) -> Config {
    if !extra.is_empty() {
        cfg.sources.manifests = extra.to_vec();
    }
    cfg
}

/// Once start-up is over (plugins compiled, the first snapshot built and
/// the services running), gives back what only start-up needed:
///
/// - heap freed since `release_freed_memory`: mimalloc purges freed pages
///   lazily, on a later allocation, so an idle process would keep them;
/// - the pages of the binary's own code that only start-up ran (Cranelift
///   compiling the plugins is most of them): they are clean file pages,
///   handed back with `MADV_PAGEOUT` (Linux 5.4+; older kernels ignore
///   it). Code the proxy runs afterwards faults back in on first use.
///
/// Together about 30 MiB of idle RSS with the default plugins.
fn trim_after_start() {
    let spawned = std::thread::Builder::new()
        .name("portico-trim".into())
        .spawn(|| {
            std::thread::sleep(Duration::from_secs(3));
            release_freed_memory();
            // From now on the proxy's own churn: mimalloc's default delay
            // (purging at once would cost a system call per emptied page).
            set_purge_delay_ms(10);
            page_out_own_code();
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no thread to trim start-up memory");
    }
}

/// `MADV_PAGEOUT` over the executable's code and read-only data, then
/// no read-ahead there (`MADV_RANDOM`).
fn page_out_own_code() {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Code, and read-only data (most of it tables only start-up read).
        if !matches!(perms, "r-xp" | "r--p")
            || fields.nth(3).map(std::path::Path::new) != Some(exe.as_path())
        {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: advice on our own mapped, read-only code; it changes
        // residency and read-ahead only, never contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT);
            // Code that runs later faults back in a page at a time instead
            // of with read-ahead's 128 KiB around it: the serving path is
            // spread thinly over a binary of some 35 MiB of code, and
            // read-ahead made about 10 MiB of it resident under load.
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas (`MADV_HUGEPAGE`), and then a few small allocations
/// in fresh 2 MiB ranges each make 2 MiB resident: at idle with the
/// default config 22 of 29 MiB of heap were huge pages, and RSS rose by
/// 9 MiB seconds after start from a handful of page faults. A proxy's
/// heap is tens of MiB, where huge pages save little TLB work.
fn no_transparent_huge_pages() {
    // SAFETY: a process attribute; no memory is touched.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "transparent huge pages stay on");
    }
}

/// `mi_option_purge_delay` (mimalloc.h; the sys crate names no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc waits before giving freed pages back to the OS. An
/// idle process never gets to a delayed purge, so start-up, which frees
/// much and then waits, purges at once (0) until `trim_after_start`.
fn set_purge_delay_ms(ms: i64) {
    // SAFETY: sets one of mimalloc's own options.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as _) }
}

/// Hands the memory freed so far back to the OS. Compiling the plugins
/// (cranelift) frees some 60 MiB that mimalloc would otherwise keep on
/// this thread, which then only waits for the server: idle RSS with the
/// default plugins was 109 MiB instead of 45.
fn release_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps; with another
    // global allocator it finds nothing to free.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
