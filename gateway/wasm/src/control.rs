//! Portico's control-plane plugin ABI, version 1: JSON in, JSON out.
//!
//! A module that exports `portico_control_abi_v1` (a function with no
//! parameters) may export these hooks, each
//! `(input_ptr: i32, input_len: i32) -> i32`:
//!
//! - `portico_configure`: the plugin's configuration (raw bytes), at start;
//! - `portico_admit_ingress`: whether this gateway serves an Ingress
//!   (IngressClass selection); see [`admission`](super::admission);
//! - `portico_service_load_balancer`: the addresses of the LoadBalancer
//!   Services; see [`lb_addresses`](super::lb_addresses).
//!
//! The host writes the input into memory from the module's allocator
//! (`portico_alloc(len) -> ptr`, or `proxy_on_memory_allocate`); the input
//! is the plugin's to free. The hook answers by calling the host function
//! `env.portico_return(ptr, len)` with its JSON (the host copies it) and
//! returns 0, or returns non-zero with an error message passed the same
//! way. Every answer is checked against the hook's schema before use.
//!
//! A hook its caller allows to wait (the LoadBalancer allocator) may also
//! make HTTP requests with `env.portico_http_call(req_ptr, req_len,
//! ret_ptr, ret_len)`; see [`control_http`](super::control_http).

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::host::VmState;
use super::reload::RegistryHandle;
use super::sandbox::{PluginError, Sandbox};
use super::vm::Vm;

/// Calls one control plugin of the current registry by name. Control
/// calls are few (once per object per change), so they share one
/// instance, started on first use and replaced after a failure or a
/// reload. Between changes there is nothing to ask: an instance unused
/// for `KEEP_IDLE` is dropped (its linear memory goes back to the OS) and
/// the next call starts a new one.
pub struct ControlClient {
    pub plugin: String,
    registry: RegistryHandle,
    instance: Arc<Mutex<Option<Kept>>>,
    /// The plugin may wait for HTTP answers (`portico_http_call`): only
    /// for hooks called off the translation path.
    blocking_calls: bool,
}

/// The instance, the plugin generation it runs, and when it last
/// answered.
struct Kept {
    generation: u64,
    vm: Vm,
    used: Instant,
}

/// How long an instance outlives its last call. Translation asks once
/// per object, back to back, so a whole translation uses one instance.
pub const KEEP_IDLE: Duration = Duration::from_secs(5);

/// The instances of every client, for the thread that drops idle ones.
static KEPT: Mutex<Vec<Weak<Mutex<Option<Kept>>>>> = Mutex::new(Vec::new());

/// Every second, drops the instances idle for `KEEP_IDLE` (one thread
/// for the process, started with the first client).
fn start_idle_release() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("portico-control-idle".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                release_idle(KEEP_IDLE);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to release idle control-plugin instances; they are kept");
        }
    });
}

/// Drops the instances unused for `idle`; how many.
pub fn release_idle(idle: Duration) -> usize {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.retain(|w| w.strong_count() > 0);
    let mut released = 0;
    for slot in kept.iter().filter_map(Weak::upgrade) {
        // A client in a call is in use: skip it rather than wait.
        let Ok(mut slot) = slot.try_lock() else {
            continue;
        };
        if slot.as_ref().is_some_and(|k| k.used.elapsed() >= idle) {
            *slot = None;
            released += 1;
        }
    }
    released
}

impl ControlClient {
    pub fn new(plugin: String, registry: RegistryHandle) -> Self {
        let instance = Arc::new(Mutex::new(None));
        KEPT.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&instance));
        start_idle_release();
        ControlClient {
            plugin,
            registry,
            instance,
            blocking_calls: false,
        }
    }

    /// Whether an instance is running now (tests).
    pub fn has_instance(&self) -> bool {
        self.instance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Lets the plugin call `portico_http_call`; its caller must not mind
    /// waiting (up to `control_http::MAX_TIMEOUT` per request).
    pub fn allow_blocking_calls(mut self) -> Self {
        self.blocking_calls = true;
        self
    }

    /// Calls `hook` with `input`; what the plugin returned when it
    /// succeeded, or why not.
    pub fn ask(&self, hook: &'static str, input: &[u8]) -> Result<Vec<u8>, String> {
        let registry = self.registry.load();
        let plugin = registry
            .get(&self.plugin)
            .ok_or_else(|| format!("plugin {:?} is not loaded", self.plugin))?;
        if !plugin.info.hooks.contains(hook) {
            return Err(format!("plugin {:?} does not export {hook}", self.plugin));
        }
        let mut slot = self.instance.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().map(|k| k.generation) != Some(plugin.generation) {
            let mut vm = plugin.start(super::instances::linker()?)?;
            if self.blocking_calls {
                let ticks = vm.sandbox.deadline_ticks();
                vm.sandbox.data_mut().blocking_calls = Some(ticks);
            }
            *slot = Some(Kept {
                generation: plugin.generation,
                vm,
                used: Instant::now(),
            });
        }
        let kept = slot.as_mut().expect("set above");
        let result = call_hook(&mut kept.vm.sandbox, hook, input);
        kept.used = Instant::now();
        if kept.vm.sandbox.is_poisoned() {
            *slot = None;
        }
        match result {
            Ok((0, out)) => Ok(out),
            Ok((status, why)) => Err(format!(
                "{hook} failed (status {status}): {}",
                String::from_utf8_lossy(&why)
            )),
            Err(e) => Err(format!("{hook} {e}")),
        }
    }

    /// Counts a failed call or an answer that did not fit its schema.
    pub fn count_error(&self, hook: &'static str) {
        metrics::counter!("portico_plugin_control_errors_total", "plugin" => self.plugin.clone(), "hook" => hook)
            .increment(1);
    }
}

/// Calls `hook` with `input`; the status and what the plugin returned.
pub fn call_hook(
    sandbox: &mut Sandbox<VmState>,
    hook: &'static str,
    input: &[u8],
) -> Result<(i32, Vec<u8>), PluginError> {
    let alloc = ["portico_alloc", "proxy_on_memory_allocate", "malloc"]
        .into_iter()
        .find(|n| sandbox.has_export(n))
        .ok_or_else(|| PluginError::Setup("exports no allocator".into()))?;
    let len = i32::try_from(input.len())
        .map_err(|_| PluginError::Setup("input larger than 2 GiB".into()))?;
    let ptr = sandbox.call::<i32, i32>(alloc, len.max(1))?;
    if ptr == 0 || !sandbox.write_memory(ptr as u32 as usize, input) {
        return Err(PluginError::Setup(format!(
            "`{alloc}` gave no usable memory for {} bytes",
            input.len()
        )));
    }
    sandbox.data_mut().returned = None;
    let status = sandbox.call::<(i32, i32), i32>(hook, (ptr, len))?;
    let out = sandbox.data_mut().returned.take().unwrap_or_default();
    Ok((status, out))
}

/// Hands the plugin its configuration (`portico_configure`), if it takes
/// one. A non-zero status refuses the configuration, with the plugin's
/// reason.
pub fn configure(sandbox: &mut Sandbox<VmState>, config: &[u8]) -> Result<(), String> {
    if !sandbox.has_export("portico_configure") {
        return Ok(());
    }
    match call_hook(sandbox, "portico_configure", config) {
        Ok((0, _)) => Ok(()),
        Ok((_, why)) => Err(format!(
            "portico_configure refused the configuration: {}",
            String::from_utf8_lossy(&why)
        )),
        Err(e) => Err(format!("portico_configure {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plugin answering `portico_admit_ingress` with `{}`, with
    /// a bump allocator.
    const MODULE: &str = r#"(module
        (import "env" "portico_return" (func $ret (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 1024))
        (data (i32.const 16) "{}")
        (func (export "portico_control_abi_v1"))
        (func (export "portico_alloc") (param i32) (result i32)
            (local i32)
            (local.set 1 (global.get $next))
            (global.set $next (i32.add (global.get $next) (local.get 0)))
            (local.get 1))
        (func (export "portico_admit_ingress") (param i32 i32) (result i32)
            (drop (call $ret (i32.const 16) (i32.const 2)))
            (i32.const 0)))"#;

    #[test]
    fn an_idle_instance_is_dropped_and_the_next_call_starts_one() {
        let dir = std::env::temp_dir().join(format!("portico-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.wat");
        std::fs::write(&path, MODULE).unwrap();
        let plugin: crate::config::PluginConfig =
            serde_json::from_value(serde_json::json!({"name": "c", "path": path})).unwrap();
        let cfg = crate::config::PluginsConfig {
            load: vec![plugin],
            ..Default::default()
        };
        let (registry, errors) = crate::registry::load_all(&cfg, None);
        assert!(errors.is_empty(), "{errors:?}");
        let client = ControlClient::new(
            "c".into(),
            Arc::new(arc_swap::ArcSwap::from_pointee(registry)),
        );
        assert!(!client.has_instance(), "started before it was asked");
        assert_eq!(client.ask("portico_admit_ingress", b"{}").unwrap(), b"{}");
        assert!(client.has_instance());
        // Used just now: kept.
        release_idle(Duration::from_secs(60));
        assert!(client.has_instance());
        assert!(release_idle(Duration::ZERO) >= 1);
        assert!(!client.has_instance());
        assert_eq!(client.ask("portico_admit_ingress", b"{}").unwrap(), b"{}");
        assert!(client.has_instance());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two plugins from one unchanged file (the shipped session-affinity,
    /// once for HTTP and once for TCP) share one compiled module.
    #[test]
    fn plugins_from_the_same_file_share_their_compiled_code() {
        let dir = std::env::temp_dir().join(format!("portico-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.wat");
        std::fs::write(&path, MODULE).unwrap();
        let other = dir.join("d.wat");
        std::fs::write(&other, MODULE).unwrap();
        let entry = |name: &str, path: &std::path::Path| -> crate::config::PluginConfig {
            serde_json::from_value(serde_json::json!({"name": name, "path": path})).unwrap()
        };
        let cfg = crate::config::PluginsConfig {
            load: vec![entry("a", &path), entry("b", &path), entry("c", &other)],
            ..Default::default()
        };
        let (registry, errors) = crate::registry::load_all(&cfg, None);
        assert!(errors.is_empty(), "{errors:?}");
        let module = |n: &str| registry.get(n).unwrap().module.clone();
        assert!(wasmtime::Module::same(&module("a"), &module("b")));
        assert!(!wasmtime::Module::same(&module("a"), &module("c")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
