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

use std::sync::Mutex;

use super::host::VmState;
use super::reload::RegistryHandle;
use super::sandbox::{PluginError, Sandbox};
use super::vm::Vm;

/// Calls one control plugin of the current registry by name. Control
/// calls are few (once per object per change), so they share one
/// instance, started on first use and replaced after a failure or a
/// reload.
pub struct ControlClient {
    pub plugin: String,
    registry: RegistryHandle,
    instance: Mutex<Option<(u64, Vm)>>,
    /// The plugin may wait for HTTP answers (`portico_http_call`): only
    /// for hooks called off the translation path.
    blocking_calls: bool,
}

impl ControlClient {
    pub fn new(plugin: String, registry: RegistryHandle) -> Self {
        ControlClient {
            plugin,
            registry,
            instance: Mutex::new(None),
            blocking_calls: false,
        }
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
        if slot.as_ref().map(|(g, _)| *g) != Some(plugin.generation) {
            let mut vm = plugin.start(super::instances::linker()?)?;
            if self.blocking_calls {
                let ticks = vm.sandbox.deadline_ticks();
                vm.sandbox.data_mut().blocking_calls = Some(ticks);
            }
            *slot = Some((plugin.generation, vm));
        }
        let (_, vm) = slot.as_mut().expect("set above");
        let result = call_hook(&mut vm.sandbox, hook, input);
        if vm.sandbox.is_poisoned() {
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
