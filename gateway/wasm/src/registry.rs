//! The configured plugins: compiled, checked, started once to prove they
//! accept their configuration, and published as one immutable `Registry`
//! that the data plane reads. A reload builds a new registry; a plugin
//! that fails to load keeps its previous version.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wasmtime::{Engine, Linker, Module};

use super::abi::ModuleInfo;
use super::host::{self, VmState};
use super::sandbox::{HostState, Limits};
use super::vm::{Start, Vm};
use crate::config::{FailPolicy, PluginConfig, PluginsConfig};

/// One loaded plugin. Immutable: a change makes a new `Plugin` with a new
/// `generation`, and instances of the old one finish what they started.
pub struct Plugin {
    pub name: String,
    /// `plugin_root_id`: the configured root id, else the name.
    pub root_id: String,
    pub path: PathBuf,
    pub module: Module,
    pub info: ModuleInfo,
    pub config: Vec<u8>,
    pub limits: Limits,
    pub fail: FailPolicy,
    /// Unique per load, across all plugins.
    pub generation: u64,
    /// Module file's modification time when it was read (reload checks).
    pub modified: Option<SystemTime>,
    /// What the plugin exports, looked up once.
    pub exports: Exports,
    /// Set when a reload replaced this version: its instances go once
    /// their last stream ends.
    pub superseded: std::sync::atomic::AtomicBool,
    /// Stops calling a plugin that keeps failing (per version).
    pub breaker: super::breaker::Breaker,
}

/// The callbacks the data plane may call, so it skips the ones a plugin
/// does not have without asking wasmtime per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exports {
    pub new_connection: bool,
    pub downstream_data: bool,
    pub upstream_data: bool,
    pub downstream_close: bool,
    pub upstream_close: bool,
    pub request_headers: bool,
    pub request_body: bool,
    pub request_trailers: bool,
    pub response_headers: bool,
    pub response_body: bool,
    pub response_trailers: bool,
    pub log: bool,
    pub done: bool,
    pub delete: bool,
    pub tick: bool,
    pub queue_ready: bool,
}

impl Exports {
    fn of(info: &ModuleInfo) -> Self {
        let has = |n: &str| info.callbacks.iter().any(|c| c == n);
        Exports {
            new_connection: has("proxy_on_new_connection"),
            downstream_data: has("proxy_on_downstream_data"),
            upstream_data: has("proxy_on_upstream_data"),
            downstream_close: has("proxy_on_downstream_connection_close"),
            upstream_close: has("proxy_on_upstream_connection_close"),
            request_headers: has("proxy_on_request_headers"),
            request_body: has("proxy_on_request_body"),
            request_trailers: has("proxy_on_request_trailers"),
            response_headers: has("proxy_on_response_headers"),
            response_body: has("proxy_on_response_body"),
            response_trailers: has("proxy_on_response_trailers"),
            log: has("proxy_on_log"),
            done: has("proxy_on_done"),
            delete: has("proxy_on_delete"),
            tick: has("proxy_on_tick"),
            queue_ready: has("proxy_on_queue_ready"),
        }
    }
}

impl Plugin {
    /// Starts one instance (per worker thread, and once at load).
    pub fn start(&self, linker: &Linker<HostState<VmState>>) -> Result<Vm, String> {
        self.start_with(linker, None)
    }

    /// Starts one instance that can be told about queues it registers.
    pub fn start_with(
        &self,
        linker: &Linker<HostState<VmState>>,
        queue_notifier: Option<super::host::QueueNotifier>,
    ) -> Result<Vm, String> {
        Vm::start(
            self.module.engine(),
            &self.module,
            &self.info,
            linker,
            &Start {
                name: &self.name,
                root_id: &self.root_id,
                vm_config: b"",
                plugin_config: &self.config,
                limits: self.limits,
                queue_notifier,
            },
        )
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("generation", &self.generation)
            .finish()
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Every plugin, by name, and the listener-wide chain.
#[derive(Debug, Default)]
pub struct Registry {
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    /// `plugins.http` without the scoped plugins (`applies_to`), resolved.
    pub http: Vec<Arc<Plugin>>,
    /// `plugins.tcp` without the scoped plugins (`applies_to`), resolved.
    pub tcp: Vec<Arc<Plugin>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

/// Compiles, checks and test-starts one configured plugin. Errors name the
/// plugin, its file, and what is wrong.
pub fn load_one(
    engine: &Engine,
    linker: &Linker<HostState<VmState>>,
    cfg: &PluginConfig,
    cache: Option<&std::path::Path>,
) -> Result<Arc<Plugin>, String> {
    load_sharing(engine, linker, cfg, cache, None)
}

/// `load_one`, reusing the compiled module of `same_file` (a plugin of
/// this load read from the same unchanged file, e.g. the shipped
/// session-affinity loaded once for HTTP and once for TCP): its code is
/// then in memory once.
fn load_sharing(
    engine: &Engine,
    linker: &Linker<HostState<VmState>>,
    cfg: &PluginConfig,
    cache: Option<&std::path::Path>,
    same_file: Option<&Plugin>,
) -> Result<Arc<Plugin>, String> {
    let modified = std::fs::metadata(&cfg.path).and_then(|m| m.modified()).ok();
    let (module, info) = match same_file
        .filter(|q| q.path == cfg.path && q.modified.is_some() && q.modified == modified)
    {
        Some(q) => (q.module.clone(), q.info.clone()),
        None => super::load(engine, &cfg.path, cache)
            .map_err(|errs| format!("plugin {:?}: {}", cfg.name, errs.join("; ")))?,
    };
    let plugin = Plugin {
        name: cfg.name.clone(),
        root_id: cfg.root_id.clone().unwrap_or_else(|| cfg.name.clone()),
        path: cfg.path.clone(),
        exports: Exports::of(&info),
        module,
        info,
        config: cfg.config.clone().into_bytes(),
        limits: Limits {
            deadline: Duration::from_millis(cfg.deadline_ms),
            memory_bytes: (cfg.memory_mib as usize) << 20,
        },
        fail: cfg.fail,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        modified,
        superseded: Default::default(),
        breaker: Default::default(),
    };
    // Starting once proves the module instantiates under its limits and
    // accepts its configuration before any request depends on it.
    plugin.start(linker).map_err(|e| {
        format!(
            "plugin {:?} ({}): does not start: {e}",
            cfg.name,
            cfg.path.display()
        )
    })?;
    Ok(Arc::new(plugin))
}

/// Loads every configured plugin. With `previous`, a plugin that fails
/// keeps its previous version (reload); without, any failure is an error
/// list (startup and `portico check`).
pub fn load_all(cfg: &PluginsConfig, previous: Option<&Registry>) -> (Registry, Vec<String>) {
    let mut errors = Vec::new();
    let mut reg = Registry::default();
    if cfg.load.is_empty() {
        return (reg, errors);
    }
    let (engine, linker) = match super::engine().and_then(|e| Ok((e.clone(), host::linker(&e)?))) {
        Ok(x) => x,
        Err(e) => return (reg, vec![e]),
    };
    for p in &cfg.load {
        let unchanged = previous.and_then(|r| r.get(&p.name)).filter(|old| {
            old.path == p.path
                && old.config == p.config.as_bytes()
                && old.fail == p.fail
                && old.limits.deadline == Duration::from_millis(p.deadline_ms)
                && old.limits.memory_bytes == (p.memory_mib as usize) << 20
                && old.modified.is_some()
                && old.modified == std::fs::metadata(&p.path).and_then(|m| m.modified()).ok()
        });
        if let Some(old) = unchanged {
            reg.plugins.insert(p.name.clone(), old.clone());
            continue;
        }
        let same_file = reg.plugins.values().find(|q| q.path == p.path).cloned();
        match load_sharing(
            &engine,
            &linker,
            p,
            cfg.cache_dir.as_deref(),
            same_file.as_deref(),
        ) {
            Ok(plugin) => {
                reg.plugins.insert(p.name.clone(), plugin);
            }
            Err(e) => {
                if let Some(old) = previous.and_then(|r| r.get(&p.name)) {
                    reg.plugins.insert(p.name.clone(), old.clone());
                    errors.push(format!("{e}; the previous version keeps serving"));
                } else {
                    errors.push(e);
                }
            }
        }
    }
    // Scoped plugins (`applies_to`) are not listener-wide: translation
    // attaches them to the routes and Services they match.
    let scoped = |name: &String| {
        cfg.load
            .iter()
            .any(|p| &p.name == name && p.applies_to.is_some())
    };
    let resolve = |names: &[String]| -> Vec<Arc<Plugin>> {
        names
            .iter()
            .filter(|n| !scoped(n))
            .filter_map(|n| reg.plugins.get(n).cloned())
            .collect()
    };
    let (http, tcp) = (resolve(&cfg.http), resolve(&cfg.tcp));
    reg.http = http;
    reg.tcp = tcp;
    (reg, errors)
}
