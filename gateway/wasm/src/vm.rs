//! Starting a plugin: instantiate under its limits, run the module's
//! initialisers, create the root context, and hand it the VM and plugin
//! configuration (`proxy_on_vm_start`, `proxy_on_configure`).

use wasmtime::{Engine, Linker, Module};

use super::abi::ModuleInfo;
use super::host::{buffer, VmState};
use super::sandbox::{HostState, Limits, Sandbox};

/// The root context's id; stream contexts count up from 2.
pub const ROOT_CONTEXT: i32 = 1;

pub struct Vm {
    pub sandbox: Sandbox<VmState>,
    pub info: ModuleInfo,
}

/// What to start a plugin with.
pub struct Start<'a> {
    pub name: &'a str,
    /// What `plugin_root_id` reads.
    pub root_id: &'a str,
    pub vm_config: &'a [u8],
    pub plugin_config: &'a [u8],
    pub limits: Limits,
    /// Set before start, so queues registered in `proxy_on_vm_start` can
    /// be told about.
    pub queue_notifier: Option<super::host::QueueNotifier>,
}

impl Vm {
    /// Starts one instance. Errors say which step failed and why.
    pub fn start(
        engine: &Engine,
        module: &Module,
        info: &ModuleInfo,
        linker: &Linker<HostState<VmState>>,
        start: &Start<'_>,
    ) -> Result<Vm, String> {
        let mut state = VmState {
            plugin: start.name.to_string(),
            root_id: start.root_id.to_string(),
            queue_notifier: start.queue_notifier.clone(),
            ..VmState::default()
        };
        state
            .buffers
            .insert(buffer::VM_CONFIGURATION, start.vm_config.to_vec().into());
        state.buffers.insert(
            buffer::PLUGIN_CONFIGURATION,
            start.plugin_config.to_vec().into(),
        );
        let mut sandbox = Sandbox::new(start.name, engine, module, linker, start.limits, state)
            .map_err(|e| format!("instantiation {e}"))?;
        // Starting runs once per thread and version, and a plugin may build
        // its tables then: its calls get a longer deadline than a request's,
        // so a loaded machine that delays the thread a few milliseconds does
        // not fail the start. A plugin that loops is still stopped.
        sandbox.set_deadline(start.limits.deadline.max(START_DEADLINE));
        let step = |what: &str, e: super::sandbox::PluginError| format!("{what} {e}");
        // WASI reactors initialise in `_initialize` (then `main`, if any);
        // commands in `_start`.
        if sandbox.has_export("_initialize") {
            sandbox
                .call::<(), ()>("_initialize", ())
                .map_err(|e| step("_initialize", e))?;
            if sandbox.has_export("main") {
                sandbox
                    .call::<(i32, i32), i32>("main", (0, 0))
                    .map_err(|e| step("main", e))?;
            }
        } else if sandbox.has_export("_start") {
            sandbox
                .call::<(), ()>("_start", ())
                .map_err(|e| step("_start", e))?;
        }
        if info.control {
            super::control::configure(&mut sandbox, start.plugin_config)?;
        }
        if info.abi == super::abi::AbiVersion::ControlOnly {
            sandbox.set_deadline(start.limits.deadline);
            let data = sandbox.data_mut();
            data.buffers.remove(&buffer::VM_CONFIGURATION);
            data.buffers.remove(&buffer::PLUGIN_CONFIGURATION);
            return Ok(Vm {
                sandbox,
                info: info.clone(),
            });
        }
        sandbox
            .call::<(i32, i32), ()>("proxy_on_context_create", (ROOT_CONTEXT, 0))
            .map_err(|e| step("proxy_on_context_create", e))?;
        sandbox.data_mut().live_contexts.insert(ROOT_CONTEXT as u32);
        // The spec calls vm_start's first parameter unused, but SDKs (the
        // upstream Rust one among them) look the root context up by it.
        for (callback, id, len) in [
            ("proxy_on_vm_start", ROOT_CONTEXT, start.vm_config.len()),
            (
                "proxy_on_configure",
                ROOT_CONTEXT,
                start.plugin_config.len(),
            ),
        ] {
            if !sandbox.has_export(callback) {
                continue;
            }
            let ok = sandbox
                .call::<(i32, i32), i32>(callback, (id, len as i32))
                .map_err(|e| step(callback, e))?;
            if ok == 0 {
                return Err(format!(
                    "{callback} returned false: the plugin rejected its configuration"
                ));
            }
        }
        sandbox.set_deadline(start.limits.deadline);
        // The configuration buffers are readable only during those calls.
        let data = sandbox.data_mut();
        data.buffers.remove(&buffer::VM_CONFIGURATION);
        data.buffers.remove(&buffer::PLUGIN_CONFIGURATION);
        Ok(Vm {
            sandbox,
            info: info.clone(),
        })
    }
}

/// The shortest deadline of each call that starts an instance
/// (`_initialize`, `proxy_on_vm_start`, `proxy_on_configure`...).
pub const START_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin in WebAssembly text that reads its configuration through
    /// `proxy_get_buffer_bytes`, logs it, and rejects "reject".
    const CONFIGURABLE: &str = r#"(module
        (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 1024))
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $next))
            (global.set $next (i32.add (global.get $next) (local.get $n)))
            (local.get $p))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
            ;; config pointer at 0, length at 4
            (drop (call $get (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)))
            (drop (call $log (i32.const 2) (i32.load (i32.const 0)) (i32.load (i32.const 4))))
            ;; "reject" starts with 'r' (0x72)
            (i32.ne (i32.load8_u (i32.load (i32.const 0))) (i32.const 0x72))))"#;

    fn start(config: &str) -> Result<Vm, String> {
        start_module(CONFIGURABLE, config)
    }

    fn start_module(wat: &str, config: &str) -> Result<Vm, String> {
        start_as(wat, config, "t")
    }

    fn start_as(wat: &str, config: &str, root_id: &str) -> Result<Vm, String> {
        let engine = crate::engine().unwrap();
        let module = Module::new(&engine, wat).unwrap();
        let info = crate::abi::check(&module).unwrap();
        let linker = crate::host::linker(&engine).unwrap();
        Vm::start(
            &engine,
            &module,
            &info,
            &linker,
            &Start {
                name: "t",
                root_id,
                vm_config: b"",
                plugin_config: config.as_bytes(),
                limits: Limits::default(),
                queue_notifier: None,
            },
        )
    }

    /// Accepts its configuration only when `plugin_root_id` reads
    /// "edge_root", as an SDK that looks its root context up by id.
    const ROOT_ID_CHECK: &str = r#"(module
        (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "plugin_root_id")
        (data (i32.const 48) "edge_root")
        (global $next (mut i32) (i32.const 1024))
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $next))
            (global.set $next (i32.add (global.get $next) (local.get $n)))
            (local.get $p))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
            (if (call $prop (i32.const 16) (i32.const 14) (i32.const 0) (i32.const 4))
                (then (return (i32.const 0))))
            (if (i32.ne (i32.load (i32.const 4)) (i32.const 9)) (then (return (i32.const 0))))
            ;; compare the 9 bytes with "edge_root" (8 + 1)
            (i32.and
                (i64.eq (i64.load (i32.load (i32.const 0))) (i64.load (i32.const 48)))
                (i32.eq (i32.load8_u (i32.add (i32.load (i32.const 0)) (i32.const 8)))
                        (i32.load8_u (i32.const 56))))))"#;

    /// Accepts its configuration only if the host answers these calls with
    /// the spec's status codes: `proxy_set_effective_context` Ok for the
    /// root context and BadArgument (2) for an unknown one, `proxy_done`
    /// NotFound (1) with nothing pending.
    const STATUS_CODES: &str = r#"(module
        (import "env" "proxy_set_effective_context" (func $ctx (param i32) (result i32)))
        (import "env" "proxy_done" (func $done (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
            (i32.and
                (i32.and
                    (i32.eq (call $ctx (i32.const 1)) (i32.const 0))
                    (i32.eq (call $ctx (i32.const 4242)) (i32.const 2)))
                (i32.eq (call $done) (i32.const 1)))))"#;

    #[test]
    fn host_calls_answer_the_specs_status_codes() {
        let vm = start_module(STATUS_CODES, "");
        assert!(vm.is_ok(), "{:?}", vm.err());
    }

    #[test]
    fn the_configured_root_id_is_what_the_plugin_reads() {
        assert!(start_as(ROOT_ID_CHECK, "", "edge_root").is_ok());
        let err = start_as(ROOT_ID_CHECK, "", "t")
            .err()
            .expect("other root id");
        assert!(err.contains("rejected its configuration"), "{err}");
    }

    #[test]
    fn configuration_reaches_the_plugin_and_a_refusal_is_reported() {
        let vm = start("accept me").expect("starts");
        assert!(!vm.sandbox.is_poisoned());
        // Readable only during configuration.
        assert!(vm.sandbox.data().buffers.is_empty());
        let err = start("reject me").err().expect("refused");
        assert!(err.contains("proxy_on_configure returned false"), "{err}");
    }

    #[test]
    fn starting_gets_a_longer_deadline_but_a_loop_is_still_stopped() {
        let vm = start("accept me").expect("starts");
        // Back to the per-call deadline once started.
        let mut per_call = vm.sandbox;
        let expected = per_call.deadline_ticks();
        per_call.set_deadline(Limits::default().deadline);
        assert_eq!(per_call.deadline_ticks(), expected);
        let spin = CONFIGURABLE.replace(
            r#"(func (export "proxy_on_context_create") (param i32 i32))"#,
            r#"(func (export "proxy_on_context_create") (param i32 i32) (loop br 0))"#,
        );
        let started = std::time::Instant::now();
        let err = start_module(&spin, "x").err().expect("stopped");
        assert!(err.contains("ran past its deadline"), "{err}");
        let took = started.elapsed();
        assert!(
            took >= START_DEADLINE,
            "stopped after {took:?}, before the start deadline"
        );
        assert!(took < START_DEADLINE * 5, "{took:?}");
    }
}
