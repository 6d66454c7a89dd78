//! The `portico` command line.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use portico::config::{self, Config};
use portico::run;

// Per-request allocations dominate the user-space profile; mimalloc's
// thread-local free lists cut their cost (see the benchmark notes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "WebAssembly-extensible L4/L7 edge gateway for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Sources {
    /// Config file (TOML). Without it the embedded conf/portico.toml applies.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder of Kubernetes manifests (repeatable); replaces `sources.manifests`.
    #[arg(long = "manifests", value_name = "DIR")]
    manifests: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic.
    Run {
        #[command(flatten)]
        sources: Sources,
        /// Plain HTTP listener (repeatable); replaces `listen.http`.
        #[arg(long, value_name = "ADDR")]
        http: Vec<SocketAddr>,
        /// HTTPS listener (repeatable); replaces `listen.https`.
        #[arg(long, value_name = "ADDR")]
        https: Vec<SocketAddr>,
        /// Admin listener; replaces `admin.listen`.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// The edge node's own address (repeatable); replaces `node.addresses`.
        #[arg(long = "node-address", value_name = "IP")]
        node_address: Vec<IpAddr>,
        /// Kubeconfig for the Kubernetes source (turns it on; replaces the
        /// manifest folders).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
    },
    /// Validate config and manifests; print every problem; exit 1 on errors.
    Check {
        #[command(flatten)]
        sources: Sources,
        /// A proxy-wasm plugin module to compile and check against the ABI
        /// (repeatable).
        #[arg(long = "plugin", value_name = "FILE")]
        plugins: Vec<PathBuf>,
        /// Configuration each `--plugin` is started with (its
        /// `proxy_on_configure` must accept it).
        #[arg(long = "plugin-config", value_name = "TEXT", default_value = "")]
        plugin_config: String,
        /// The root id each `--plugin` is started with (`plugin_root_id`,
        /// as `root_id` in `[[plugins.load]]`); default: its file name
        /// without `.wasm`.
        #[arg(long = "plugin-root-id", value_name = "ID")]
        plugin_root_id: Option<String>,
    },
    /// Show which route, backend, endpoints and certificate a request gets.
    Explain {
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// An L4 listener port instead of an HTTP request.
        #[arg(long)]
        port: Option<u16>,
        /// Ask the running gateway at this admin address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        /// Evaluate these sources offline instead of asking a running gateway.
        #[command(flatten)]
        sources: Sources,
    },
    /// Print RBAC Roles granting read access to exactly the TLS Secrets
    /// that admitted Ingresses name, one Role and RoleBinding per
    /// namespace (for `kubernetes.secrets = "referenced"`).
    Rbac {
        /// Where the Ingresses are read: these manifest folders, or the
        /// cluster when `--kubeconfig` is given or `kubernetes` is enabled.
        #[command(flatten)]
        sources: Sources,
        /// Read the Ingresses and IngressClasses from this cluster.
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// The ServiceAccount Portico runs as.
        #[arg(
            long,
            value_name = "NAMESPACE/NAME",
            default_value = "portico-system/portico"
        )]
        service_account: String,
        /// Name of the Roles and RoleBindings.
        #[arg(long, default_value = "portico-tls-secrets")]
        role_name: String,
        /// Grant every Secret of each namespace instead of the named ones.
        #[arg(long)]
        namespace_wide: bool,
    },
    /// Print Gateway API objects (GatewayClass, Gateways, HTTPRoutes)
    /// equivalent to the admitted Ingresses, with their ingress-nginx
    /// annotations as filters, and list what cannot be translated.
    Convert {
        /// Where the Ingresses are read: these manifest folders, or the
        /// cluster when `--kubeconfig` is given or `kubernetes` is enabled.
        #[command(flatten)]
        sources: Sources,
        /// Read the Ingresses, IngressClasses and Services from this cluster.
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Name of the GatewayClass to create and use.
        #[arg(long, default_value = "portico")]
        gateway_class: String,
        /// Name of the Gateway made in each namespace.
        #[arg(long, default_value = "portico")]
        gateway: String,
    },
    /// Run a demo echo backend (HTTP, WebSocket, TCP, UDP).
    Echo {
        #[arg(long, default_value = "echo")]
        name: String,
        #[arg(long, value_name = "ADDR")]
        http: Vec<SocketAddr>,
        #[arg(long, value_name = "ADDR")]
        tcp: Vec<SocketAddr>,
        #[arg(long, value_name = "ADDR")]
        udp: Vec<SocketAddr>,
        /// HTTP/1.1 over TLS (a self-signed certificate).
        #[arg(long, value_name = "ADDR")]
        https: Vec<SocketAddr>,
        /// HTTP/2 in clear with prior knowledge (h2c), gRPC trailers included.
        #[arg(long, value_name = "ADDR")]
        h2c: Vec<SocketAddr>,
    },
}

fn load(sources: &Sources) -> Result<Config, String> {
    let (mut cfg, origin) = config::load(sources.config.as_deref())?;
    // The embedded default's echo servers serve its demo manifests: with
    // other manifests they would only take ports nobody asked for.
    if matches!(origin, config::ConfigOrigin::Embedded) && !sources.manifests.is_empty() {
        cfg.demo.echo.clear();
    }
    Ok(run::with_manifest_dirs(cfg, &sources.manifests))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("portico: {msg}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            sources,
            http,
            https,
            admin,
            node_address,
            kubeconfig,
        } => {
            let mut cfg = match load(&sources) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            if let Some(k) = kubeconfig {
                cfg.kubernetes.enabled = Some(true);
                cfg.kubernetes.kubeconfig = Some(k);
            }
            if !http.is_empty() {
                cfg.listen.http = http;
            }
            if !https.is_empty() {
                cfg.listen.https = https;
            }
            if let Some(a) = admin {
                cfg.admin.listen = a;
            }
            if !node_address.is_empty() {
                cfg.node.addresses = node_address;
            }
            match run::run(cfg, sources.config.clone()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Check {
            sources,
            plugins,
            plugin_config,
            plugin_root_id,
        } => {
            let cfg = match load(&sources) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            if !plugins.is_empty() || !cfg.plugins.load.is_empty() {
                // Plugins log while they start.
                portico::telemetry::init_logging(&cfg.log);
            }
            // The configured plugins, as `run` would load them (before
            // translation: an admission plugin takes part in it).
            let (registry, errs) = portico_wasm::registry::load_all(&cfg.plugins, None);
            let registry = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(registry));
            portico_wasm::install_control(
                &cfg.ingress,
                cfg.kubernetes.load_balancer_plugin.as_deref(),
                &registry,
            );
            let problems = run::check(&cfg);
            for p in &problems {
                println!("{p}");
            }
            let mut plugin_errors = match check_plugins(
                &plugins,
                plugin_config.as_bytes(),
                plugin_root_id.as_deref(),
            ) {
                Ok(n) => n,
                Err(e) => return fail(e),
            };
            let registry = registry.load();
            for e in &errs {
                println!("{e}");
            }
            for p in registry.plugins.values() {
                println!(
                    "plugin {} ({}): {}, started with its configuration",
                    p.name,
                    p.path.display(),
                    p.info.describe()
                );
            }
            plugin_errors += errs.len();
            let plugin_count = plugins.len() + cfg.plugins.load.len();
            let manifest_errors = problems.iter().filter(|p| p.is_error()).count();
            let warnings = problems.len() - manifest_errors;
            let errors = manifest_errors + plugin_errors;
            eprintln!(
                "checked {} manifest folder(s) and {} plugin(s): {errors} error(s), {warnings} warning(s)",
                cfg.sources.manifests.len(),
                plugin_count
            );
            if errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Explain {
            host,
            path,
            port,
            admin,
            json,
            sources,
        } => {
            let answer = if sources.config.is_some() || !sources.manifests.is_empty() {
                explain_offline(&sources, &host, &path, port)
            } else {
                explain_online(admin, &host, &path, port)
            };
            match answer {
                Ok(v) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        print!("{}", portico::explain::render(&v));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Rbac {
            sources,
            kubeconfig,
            service_account,
            role_name,
            namespace_wide,
        } => match rbac(
            &sources,
            kubeconfig,
            &service_account,
            &role_name,
            namespace_wide,
        ) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Convert {
            sources,
            kubeconfig,
            gateway_class,
            gateway,
        } => match convert(&sources, kubeconfig, gateway_class, gateway) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Echo {
            name,
            http,
            tcp,
            udp,
            https,
            h2c,
        } => {
            if [&http, &tcp, &udp, &https, &h2c]
                .iter()
                .all(|l| l.is_empty())
            {
                return fail(
                    "echo needs at least one --http, --https, --h2c, --tcp or --udp address",
                );
            }
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            let cfg = portico::demo::echo::EchoConfig {
                name,
                http,
                tcp,
                udp,
                https,
                h2c,
            };
            match rt.block_on(portico::demo::echo::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

/// `portico rbac`: translation decides which Ingresses are admitted and
/// which Secrets they name, exactly as the running gateway would.
fn rbac(
    sources: &Sources,
    kubeconfig: Option<PathBuf>,
    account: &str,
    role_name: &str,
    namespace_wide: bool,
) -> Result<String, String> {
    let account = portico::rbac::parse_account(account)?;
    let (cfg, store) = ingress_store(sources, kubeconfig)?;
    let spec = portico_translate::translate(&store, &portico::settings::translate_settings(&cfg));
    Ok(portico::rbac::secret_roles(
        &spec.referenced_secrets,
        &account,
        role_name,
        namespace_wide,
    ))
}

/// Reads the Ingresses (and Services, for their port numbers) as `rbac`
/// does.
fn ingress_store(
    sources: &Sources,
    kubeconfig: Option<PathBuf>,
) -> Result<(Config, portico_model::store::Store), String> {
    let mut cfg = load(sources)?;
    if let Some(k) = kubeconfig {
        cfg.kubernetes.enabled = Some(true);
        cfg.kubernetes.kubeconfig = Some(k);
    }
    install_admission(&cfg)?;
    let store = if cfg.kubernetes.wanted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        rt.block_on(portico_sources::kube::list::ingresses(&cfg.kubernetes))?
    } else {
        let (set, problems) = portico_sources::manifests::read_dirs(&cfg.sources.manifests);
        if let Some(p) = problems.first() {
            return Err(p.to_string());
        }
        portico_sources::manifests::build_store(&set).0
    };
    Ok((cfg, store))
}

/// `portico convert`: the admitted Ingresses as Gateway API objects.
fn convert(
    sources: &Sources,
    kubeconfig: Option<PathBuf>,
    gateway_class: String,
    gateway: String,
) -> Result<String, String> {
    let (cfg, store) = ingress_store(sources, kubeconfig)?;
    let port = |addrs: &[SocketAddr], default: u16| addrs.first().map_or(default, |a| a.port());
    let opts = portico::convert::Options {
        gateway_class,
        gateway,
        http_port: port(&cfg.listen.http, 80),
        https_port: port(&cfg.listen.https, 443),
    };
    let settings = portico::settings::translate_settings(&cfg);
    let admitted = portico_translate::translate(&store, &settings).admitted_ingresses;
    Ok(portico::convert::convert(&store, &settings, &opts).to_yaml(admitted))
}

/// Loads the admission and policy plugins when configured: they decide
/// which Ingresses translation takes.
fn install_admission(cfg: &Config) -> Result<(), String> {
    if cfg.ingress.admission.is_some() || cfg.ingress.policy_plugin.is_some() {
        let (registry, errs) = portico_wasm::registry::load_all(&cfg.plugins, None);
        if let Some(e) = errs.first() {
            return Err(e.clone());
        }
        let registry = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(registry));
        portico_wasm::install_control(
            &cfg.ingress,
            cfg.kubernetes.load_balancer_plugin.as_deref(),
            &registry,
        );
    }
    Ok(())
}

fn explain_offline(
    sources: &Sources,
    host: &str,
    path: &str,
    port: Option<u16>,
) -> Result<serde_json::Value, String> {
    let cfg = load(sources)?;
    install_admission(&cfg)?;
    let (set, problems) = portico_sources::manifests::read_dirs(&cfg.sources.manifests);
    if let Some(p) = problems.first() {
        return Err(p.to_string());
    }
    let (store, _) = portico_sources::manifests::build_store(&set);
    let spec = portico_translate::translate(&store, &portico::settings::translate_settings(&cfg));
    let publisher = portico_model::publish::Publisher::new(Default::default());
    let snap = publisher.publish(spec);
    Ok(portico::explain::explain(
        &snap,
        host,
        path,
        port,
        &cfg.listen.l7(),
        &portico::explain::ListenerPlugins::from_config(&cfg.plugins),
    ))
}

/// Asks a running gateway: a plain HTTP/1.0 GET to the admin listener.
fn explain_online(
    admin: SocketAddr,
    host: &str,
    path: &str,
    port: Option<u16>,
) -> Result<serde_json::Value, String> {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let mut target = format!("/explain?host={}&path={}", enc(host), enc(path));
    if let Some(p) = port {
        target.push_str(&format!("&port={p}"));
    }
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .map_err(|e| format!("cannot reach the gateway's admin listener at {admin}: {e} (is it running? use --admin, or --config/--manifests to explain offline)"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // Read the head, then exactly Content-Length bytes: do not rely on the
    // server closing the connection.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err("the admin listener closed the connection early".into()),
            Ok(_) => raw.push(byte[0]),
            Err(e) => return Err(format!("reading the admin answer: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .ok_or("admin answer has no Content-Length")?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("reading the admin answer: {e}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "admin answered: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let body = String::from_utf8_lossy(&body);
    serde_json::from_str(&body).map_err(|e| format!("admin answer is not JSON: {e}"))
}

/// Compiles and checks each plugin module; prints one line per problem, or
/// what a good module is. Returns the number of errors.
fn check_plugins(paths: &[PathBuf], config: &[u8], root_id: Option<&str>) -> Result<usize, String> {
    use portico_wasm::{host, sandbox::Limits, vm};
    if paths.is_empty() {
        return Ok(0);
    }
    let engine = portico_wasm::engine()?;
    let linker = host::linker(&engine)?;
    let mut errors = 0;
    for path in paths {
        match portico_wasm::load(&engine, path, None) {
            Ok((module, info)) => {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let start = vm::Start {
                    name: &name,
                    root_id: root_id.unwrap_or(&name),
                    vm_config: b"",
                    plugin_config: config,
                    limits: Limits::default(),
                    queue_notifier: None,
                };
                match vm::Vm::start(&engine, &module, &info, &linker, &start) {
                    Ok(_) => println!(
                        "plugin {}: {}, {} callback(s), {} host function(s) imported; started",
                        path.display(),
                        info.describe(),
                        info.callbacks.len(),
                        info.imports.len()
                    ),
                    Err(e) => {
                        println!("plugin {}: does not start: {e}", path.display());
                        errors += 1;
                    }
                }
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                errors += problems.len();
            }
        }
    }
    Ok(errors)
}
