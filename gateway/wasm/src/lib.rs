//! Wasm plugins (proxy-wasm 0.2.1 data plane).
//!
//! `abi` checks a module against the ABI so a bad one is refused with the
//! symbol named; `host` is the host side of the ABI; `sandbox` the limits;
//! `vm` starts an instance; `registry` holds the configured plugins;
//! `instances` keeps one instance per plugin per worker thread;
//! `http_filter` runs a request through a chain of HTTP contexts;
//! `reload` swaps changed plugins in. Control-plane plugins (control ABI
//! v1: `control`, `admission`, `ingress_policy`, `lb_addresses`) implement
//! the traits of `portico_model::control`.
//!
//! Must not: read Kubernetes objects, translate, or own listeners; the
//! data plane calls in here per stream, translation through the traits.

pub mod abi;
pub mod admission;
pub mod body;
pub mod breaker;
pub mod cache;
pub mod callout;
pub mod config;
pub mod control;
pub mod control_http;
pub mod headers;
pub mod host;
pub mod http_client;
pub mod http_filter;
pub mod ingress_policy;
pub mod instances;
pub mod lb_addresses;
pub mod main_vm;
pub mod properties;
pub mod registry;
pub mod reload;
pub mod sandbox;
pub mod tcp_filter;
pub mod vm;

use std::path::Path;
use std::sync::OnceLock;

use wasmtime::{Config, Engine, Module};

/// Makes the control-plane plugins the config names (`ingress.admission`,
/// `ingress.policy_plugin`, `kubernetes.load_balancer_plugin`) this
/// process's, reading `registry`.
pub fn install_control(
    ingress: &config::IngressConfig,
    load_balancer_plugin: Option<&str>,
    registry: &reload::RegistryHandle,
) {
    if let Some(name) = &ingress.admission {
        admission::install(name, registry.clone(), ingress.clone());
    }
    if let Some(name) = &ingress.policy_plugin {
        ingress_policy::install(name, registry.clone());
    }
    if let Some(name) = load_balancer_plugin {
        lb_addresses::install(name, registry.clone());
    }
}

/// The process's one engine (cheap to clone): epoch interruption on, so a
/// per-call deadline can stop a plugin that loops, and one epoch ticker
/// serves every plugin.
pub fn engine() -> Result<Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::new(&engine_config()).map_err(|e| format!("cannot start the Wasm engine: {e}"))
        })
        .clone()
}

fn engine_config() -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg
}

/// Compiles on an engine of its own, dropped once the code is moved to
/// `engine`: Cranelift keeps its working memory per engine for the next
/// compile, about 10 MiB resident for the rest of the process when the
/// serving engine compiles (`examples/plugin_memory.rs` measures it).
fn compile_apart(engine: &Engine, bytes: &[u8], text: bool) -> wasmtime::Result<Module> {
    let scratch = Engine::new(&engine_config())?;
    let module = if text {
        Module::new(&scratch, bytes)?
    } else {
        Module::from_binary(&scratch, bytes)?
    };
    let compiled = module.serialize()?;
    drop(module);
    drop(scratch);
    // SAFETY: `compiled` was just produced by `Module::serialize` in this
    // process, by an engine with the same configuration, and not changed.
    unsafe { Module::deserialize(engine, &compiled) }
}

/// Reads, compiles and checks one plugin module. Errors name the file and
/// each problem.
/// With `cache`, compiled modules are kept there between runs (see
/// `cache`).
pub fn load(
    engine: &Engine,
    path: &Path,
    cache: Option<&Path>,
) -> Result<(Module, abi::ModuleInfo), Vec<String>> {
    let at = |msg: String| format!("plugin {}: {msg}", path.display());
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound
            && path.parent().is_some_and(|d| d.ends_with("plugins/dist"))
        {
            " (the shipped plugins are built into plugins/dist/ by plugins/build.sh)"
        } else {
            ""
        };
        vec![at(format!("cannot read: {e}{hint}"))]
    })?;
    // `.wat` files are WebAssembly text (tests, hand-written plugins);
    // anything else must be a binary module.
    let text = path.extension().is_some_and(|e| e == "wat");
    if !text && !bytes.starts_with(b"\0asm") {
        return Err(vec![at(
            "not a WebAssembly binary (no `\\0asm` header)".into()
        )]);
    }
    let compile = || compile_apart(engine, &bytes, text);
    let compiled = match cache {
        Some(dir) => cache::load_or_compile(engine, dir, &bytes, compile).map(|(m, _)| m),
        None => compile(),
    };
    // wasmtime's error chain says where the module is invalid.
    let module =
        compiled.map_err(|e| vec![at(format!("not a valid WebAssembly module: {e:#}"))])?;
    let info = abi::check(&module).map_err(|errs| errs.into_iter().map(at).collect::<Vec<_>>())?;
    Ok((module, info))
}
