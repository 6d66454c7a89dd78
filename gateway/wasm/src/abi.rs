//! The proxy-wasm ABI as a table, and the check a module must pass before
//! it is loaded: the ABI marker export, memory and allocator exports, and
//! every import a function the spec defines, with the spec's signature.
//!
//! Source: proxy-wasm spec `abi-versions/v0.2.1` (functions exposed by the
//! host, including the WASI functions it lists). ABI 0.2.0 modules import
//! the same names; older SDKs still emit `proxy_abi_version_0_2_0`.

use std::collections::BTreeSet;
use std::fmt;

use wasmtime::{ExternType, FuncType, Module, ValType};

/// Which marker the module exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    V0_2_0,
    V0_2_1,
    /// Only Portico's control-plane ABI (`portico_control_abi_v1`), no
    /// proxy-wasm contexts.
    ControlOnly,
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbiVersion::V0_2_0 => "proxy-wasm ABI 0.2.0",
            AbiVersion::V0_2_1 => "proxy-wasm ABI 0.2.1",
            AbiVersion::ControlOnly => "Portico control ABI v1",
        })
    }
}

/// The export that marks a control-plane plugin.
pub const CONTROL_ABI_V1: &str = "portico_control_abi_v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    I32,
    I64,
}

/// One function the host exposes: module, name, parameters, result
/// (every proxy-wasm and listed WASI function returns one i32, except
/// `proc_exit`).
struct HostFn(&'static str, &'static str, &'static [T], Option<T>);

use T::{I32, I64};

const ENV: &str = "env";

/// The module names WASI functions are imported under: preview 1, and the
/// older `wasi_unstable` (snapshot 0) that the AssemblyScript SDK and older
/// toolchains emit. Envoy's host registers every WASI function under both.
pub const WASI_MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

#[rustfmt::skip]
const HOST_FUNCTIONS: &[HostFn] = &[
    // Context lifecycle.
    HostFn(ENV, "proxy_done", &[], Some(I32)),
    HostFn(ENV, "proxy_set_effective_context", &[I32], Some(I32)),
    // Logging, clocks, timers.
    HostFn(ENV, "proxy_log", &[I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_get_log_level", &[I32], Some(I32)),
    HostFn(ENV, "proxy_get_current_time_nanoseconds", &[I32], Some(I32)),
    HostFn(ENV, "proxy_set_tick_period_milliseconds", &[I32], Some(I32)),
    // Buffers.
    HostFn(ENV, "proxy_set_buffer_bytes", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_get_buffer_bytes", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_get_buffer_status", &[I32, I32, I32], Some(I32)),
    // HTTP fields.
    HostFn(ENV, "proxy_get_header_map_size", &[I32, I32], Some(I32)),
    HostFn(ENV, "proxy_get_header_map_pairs", &[I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_set_header_map_pairs", &[I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_get_header_map_value", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_add_header_map_value", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_replace_header_map_value", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_remove_header_map_value", &[I32, I32, I32], Some(I32)),
    // Streams.
    HostFn(ENV, "proxy_continue_stream", &[I32], Some(I32)),
    HostFn(ENV, "proxy_close_stream", &[I32], Some(I32)),
    HostFn(ENV, "proxy_get_status", &[I32, I32, I32], Some(I32)),
    // HTTP.
    HostFn(ENV, "proxy_send_local_response", &[I32, I32, I32, I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_http_call", &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32], Some(I32)),
    // Upstream choice: Portico's extension, named after Higress's.
    HostFn(ENV, "proxy_get_upstream_hosts", &[I32, I32], Some(I32)),
    HostFn(ENV, "proxy_set_upstream_override_host", &[I32, I32], Some(I32)),
    // Portico's control-plane ABI: a hook hands back its JSON answer.
    HostFn(ENV, "portico_return", &[I32, I32], Some(I32)),
    // ...and may wait for an HTTP answer (allowed instances only).
    HostFn(ENV, "portico_http_call", &[I32, I32, I32, I32], Some(I32)),
    // gRPC (answered with UNIMPLEMENTED, but linkable).
    HostFn(ENV, "proxy_grpc_call", &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_grpc_stream", &[I32, I32, I32, I32, I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_grpc_send", &[I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_grpc_cancel", &[I32], Some(I32)),
    HostFn(ENV, "proxy_grpc_close", &[I32], Some(I32)),
    // Shared data and queues.
    HostFn(ENV, "proxy_set_shared_data", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_get_shared_data", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_register_shared_queue", &[I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_resolve_shared_queue", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_enqueue_shared_queue", &[I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_dequeue_shared_queue", &[I32, I32, I32], Some(I32)),
    // Metrics.
    HostFn(ENV, "proxy_define_metric", &[I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_record_metric", &[I32, I64], Some(I32)),
    HostFn(ENV, "proxy_increment_metric", &[I32, I64], Some(I32)),
    HostFn(ENV, "proxy_get_metric", &[I32, I32], Some(I32)),
    // Properties and foreign functions.
    HostFn(ENV, "proxy_get_property", &[I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_set_property", &[I32, I32, I32, I32], Some(I32)),
    HostFn(ENV, "proxy_call_foreign_function", &[I32, I32, I32, I32, I32, I32], Some(I32)),
];

/// The WASI preview 1 functions, with their preview 1 signatures (snapshot
/// 0 has the same ones for these). The set is the one Envoy's host
/// registers: the spec lists only a few, but wasi-libc's start-up and stdio
/// (C++ SDK), Go's runtime (TinyGo SDK) and AssemblyScript's `abort` reach
/// for the others. The module name in each entry is filled in per module.
#[rustfmt::skip]
const WASI_FUNCTIONS: &[HostFn] = &[
    HostFn("", "args_get", &[I32, I32], Some(I32)),
    HostFn("", "args_sizes_get", &[I32, I32], Some(I32)),
    HostFn("", "environ_get", &[I32, I32], Some(I32)),
    HostFn("", "environ_sizes_get", &[I32, I32], Some(I32)),
    HostFn("", "clock_res_get", &[I32, I32], Some(I32)),
    HostFn("", "clock_time_get", &[I32, I64, I32], Some(I32)),
    HostFn("", "fd_advise", &[I32, I64, I64, I32], Some(I32)),
    HostFn("", "fd_allocate", &[I32, I64, I64], Some(I32)),
    HostFn("", "fd_close", &[I32], Some(I32)),
    HostFn("", "fd_datasync", &[I32], Some(I32)),
    HostFn("", "fd_fdstat_get", &[I32, I32], Some(I32)),
    HostFn("", "fd_fdstat_set_flags", &[I32, I32], Some(I32)),
    HostFn("", "fd_fdstat_set_rights", &[I32, I64, I64], Some(I32)),
    HostFn("", "fd_filestat_get", &[I32, I32], Some(I32)),
    HostFn("", "fd_filestat_set_size", &[I32, I64], Some(I32)),
    HostFn("", "fd_filestat_set_times", &[I32, I64, I64, I32], Some(I32)),
    HostFn("", "fd_pread", &[I32, I32, I32, I64, I32], Some(I32)),
    HostFn("", "fd_prestat_get", &[I32, I32], Some(I32)),
    HostFn("", "fd_prestat_dir_name", &[I32, I32, I32], Some(I32)),
    HostFn("", "fd_pwrite", &[I32, I32, I32, I64, I32], Some(I32)),
    HostFn("", "fd_read", &[I32, I32, I32, I32], Some(I32)),
    HostFn("", "fd_readdir", &[I32, I32, I32, I64, I32], Some(I32)),
    HostFn("", "fd_renumber", &[I32, I32], Some(I32)),
    HostFn("", "fd_seek", &[I32, I64, I32, I32], Some(I32)),
    HostFn("", "fd_sync", &[I32], Some(I32)),
    HostFn("", "fd_tell", &[I32, I32], Some(I32)),
    HostFn("", "fd_write", &[I32, I32, I32, I32], Some(I32)),
    HostFn("", "path_create_directory", &[I32, I32, I32], Some(I32)),
    HostFn("", "path_filestat_get", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn("", "path_filestat_set_times", &[I32, I32, I32, I32, I64, I64, I32], Some(I32)),
    HostFn("", "path_link", &[I32, I32, I32, I32, I32, I32, I32], Some(I32)),
    HostFn("", "path_open", &[I32, I32, I32, I32, I32, I64, I64, I32, I32], Some(I32)),
    HostFn("", "path_readlink", &[I32, I32, I32, I32, I32, I32], Some(I32)),
    HostFn("", "path_remove_directory", &[I32, I32, I32], Some(I32)),
    HostFn("", "path_rename", &[I32, I32, I32, I32, I32, I32], Some(I32)),
    HostFn("", "path_symlink", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn("", "path_unlink_file", &[I32, I32, I32], Some(I32)),
    HostFn("", "poll_oneoff", &[I32, I32, I32, I32], Some(I32)),
    HostFn("", "proc_exit", &[I32], None),
    HostFn("", "random_get", &[I32, I32], Some(I32)),
    HostFn("", "sched_yield", &[], Some(I32)),
    HostFn("", "sock_accept", &[I32, I32, I32], Some(I32)),
    HostFn("", "sock_recv", &[I32, I32, I32, I32, I32, I32], Some(I32)),
    HostFn("", "sock_send", &[I32, I32, I32, I32, I32], Some(I32)),
    HostFn("", "sock_shutdown", &[I32, I32], Some(I32)),
];

fn spec_of(module: &str, name: &str) -> Option<&'static HostFn> {
    if WASI_MODULES.contains(&module) {
        return WASI_FUNCTIONS.iter().find(|f| f.1 == name);
    }
    HOST_FUNCTIONS.iter().find(|f| f.0 == module && f.1 == name)
}

/// `(module, name)` of every function the host must provide.
pub fn host_function_names() -> impl Iterator<Item = (&'static str, &'static str)> {
    HOST_FUNCTIONS.iter().map(|f| (f.0, f.1)).chain(
        WASI_MODULES
            .iter()
            .flat_map(|m| WASI_FUNCTIONS.iter().map(move |f| (*m, f.1))),
    )
}

/// Whether `f` has the signature the spec gives `module.name`.
pub fn signature_matches(module: &str, name: &str, f: &FuncType) -> bool {
    spec_of(module, name).is_some_and(|spec| matches(spec, f))
}

/// The spec's type of `module.name`, for host functions defined
/// dynamically.
pub fn func_type(engine: &wasmtime::Engine, module: &str, name: &str) -> Option<FuncType> {
    let spec = spec_of(module, name)?;
    let v = |t: &T| match t {
        T::I32 => ValType::I32,
        T::I64 => ValType::I64,
    };
    Some(FuncType::new(
        engine,
        spec.2.iter().map(v),
        spec.3.iter().map(v),
    ))
}

fn t_of(v: &ValType) -> Option<T> {
    match v {
        ValType::I32 => Some(T::I32),
        ValType::I64 => Some(T::I64),
        _ => None,
    }
}

fn show(params: &[T], result: Option<T>) -> String {
    let name = |t: &T| match t {
        T::I32 => "i32",
        T::I64 => "i64",
    };
    let p: Vec<&str> = params.iter().map(name).collect();
    match result {
        Some(r) => format!("({}) -> {}", p.join(", "), name(&r)),
        None => format!("({})", p.join(", ")),
    }
}

fn show_func(f: &FuncType) -> String {
    let p: Vec<String> = f.params().map(|t| t.to_string()).collect();
    let r: Vec<String> = f.results().map(|t| t.to_string()).collect();
    match r.len() {
        0 => format!("({})", p.join(", ")),
        1 => format!("({}) -> {}", p.join(", "), r[0]),
        _ => format!("({}) -> ({})", p.join(", "), r.join(", ")),
    }
}

fn matches(spec: &HostFn, f: &FuncType) -> bool {
    let params: Option<Vec<T>> = f.params().map(|t| t_of(&t)).collect();
    let results: Option<Vec<T>> = f.results().map(|t| t_of(&t)).collect();
    params.as_deref() == Some(spec.2) && results == Some(spec.3.into_iter().collect())
}

/// What the host needs to know about a module that passed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    pub abi: AbiVersion,
    /// `proxy_on_memory_allocate`, or the deprecated `malloc`.
    pub allocator: &'static str,
    /// Exported `proxy_on_*` callbacks.
    pub callbacks: BTreeSet<String>,
    /// `env`/`wasi_snapshot_preview1` functions it imports.
    pub imports: BTreeSet<String>,
    /// Exports `portico_control_abi_v1` (control-plane hooks).
    pub control: bool,
    /// The control-plane hooks it exports (`portico_admit_ingress`...).
    pub hooks: BTreeSet<String>,
}

impl ModuleInfo {
    /// The ABIs it speaks, for `portico check` and logs.
    pub fn describe(&self) -> String {
        let hooks: Vec<&str> = self
            .hooks
            .iter()
            .filter(|h| *h != "portico_alloc" && *h != "portico_configure")
            .map(|h| h.trim_start_matches("portico_"))
            .collect();
        if !self.control {
            return self.abi.to_string();
        }
        let control = format!("Portico control ABI v1 (hooks: {})", hooks.join(", "));
        if self.abi == AbiVersion::ControlOnly {
            control
        } else {
            format!("{} and {control}", self.abi)
        }
    }
}

/// Checks a compiled module against the ABI. Every problem is reported,
/// each naming the symbol, so one `portico check` shows them all.
pub fn check(module: &Module) -> Result<ModuleInfo, Vec<String>> {
    let mut errors = Vec::new();
    let export_fn = |name: &str| match module.get_export(name) {
        Some(ExternType::Func(f)) => Some(f),
        _ => None,
    };
    let control = export_fn(CONTROL_ABI_V1).is_some();
    let abi = if export_fn("proxy_abi_version_0_2_1").is_some() {
        Some(AbiVersion::V0_2_1)
    } else if export_fn("proxy_abi_version_0_2_0").is_some() {
        Some(AbiVersion::V0_2_0)
    } else if control {
        Some(AbiVersion::ControlOnly)
    } else {
        errors.push(format!(
            "exports neither `proxy_abi_version_0_2_1` nor `proxy_abi_version_0_2_0` nor \
             `{CONTROL_ABI_V1}`: not a proxy-wasm 0.2.x or Portico control-plane module"
        ));
        None
    };
    let hooks: BTreeSet<String> = module
        .exports()
        .filter(|e| e.name().starts_with("portico_") && e.name() != CONTROL_ABI_V1)
        .filter(|e| matches!(e.ty(), ExternType::Func(_)))
        .map(|e| e.name().to_string())
        .collect();
    let hook_type = FuncTypeShape {
        params: &[T::I32, T::I32],
        result: Some(T::I32),
    };
    for h in &hooks {
        if h == "portico_alloc" {
            continue;
        }
        let f = export_fn(h).expect("listed above");
        if !hook_type.matches(&f) {
            errors.push(format!(
                "exports `{h}` as {} but the control ABI defines {}",
                show_func(&f),
                show(hook_type.params, hook_type.result)
            ));
        }
    }
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        errors.push("does not export its linear memory as `memory`".into());
    }
    let alloc_type = FuncTypeShape {
        params: &[T::I32],
        result: Some(T::I32),
    };
    let allocator = ["proxy_on_memory_allocate", "portico_alloc", "malloc"]
        .into_iter()
        .find(|n| export_fn(n).is_some());
    match allocator {
        None => errors.push(
            "exports no allocator (`proxy_on_memory_allocate`, `portico_alloc`, or the \
             deprecated `malloc`): the host cannot hand it data"
                .into(),
        ),
        Some(n) => {
            let f = export_fn(n).expect("found above");
            if !alloc_type.matches(&f) {
                errors.push(format!(
                    "exports `{n}` as {} but the ABI defines {}",
                    show_func(&f),
                    show(alloc_type.params, alloc_type.result)
                ));
            }
        }
    }
    if abi != Some(AbiVersion::ControlOnly) && export_fn("proxy_on_context_create").is_none() {
        errors
            .push("does not export `proxy_on_context_create`: no context could be created".into());
    }
    let mut imports = BTreeSet::new();
    for imp in module.imports() {
        let what = format!("{}.{}", imp.module(), imp.name());
        let ExternType::Func(f) = imp.ty() else {
            errors.push(format!(
                "imports `{what}`, which is not a function: the host provides only functions"
            ));
            continue;
        };
        match spec_of(imp.module(), imp.name()) {
            None => errors.push(format!(
                "imports unknown function `{what}`: not part of proxy-wasm 0.2.1 or WASI \
                 preview 1 (`wasi_snapshot_preview1`, `wasi_unstable`)"
            )),
            Some(spec) if !matches(spec, &f) => errors.push(format!(
                "imports `{what}` as {} but {} defines {}",
                show_func(&f),
                if WASI_MODULES.contains(&imp.module()) {
                    "WASI preview 1"
                } else {
                    "proxy-wasm 0.2.1"
                },
                show(spec.2, spec.3)
            )),
            Some(_) => {
                imports.insert(what);
            }
        }
    }
    let callbacks = module
        .exports()
        .filter(|e| e.name().starts_with("proxy_on_") && matches!(e.ty(), ExternType::Func(_)))
        .map(|e| e.name().to_string())
        .collect();
    match (abi, allocator) {
        (Some(abi), Some(allocator)) if errors.is_empty() => Ok(ModuleInfo {
            abi,
            allocator,
            callbacks,
            imports,
            control,
            hooks,
        }),
        _ => Err(errors),
    }
}

struct FuncTypeShape {
    params: &'static [T],
    result: Option<T>,
}

impl FuncTypeShape {
    fn matches(&self, f: &FuncType) -> bool {
        matches(&HostFn("", "", self.params, self.result), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Engine;

    fn module(wat: &str) -> Module {
        Module::new(&Engine::default(), wat).expect("test module compiles")
    }

    const GOOD: &str = r#"(module
        (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
        (import "env" "proxy_record_metric" (func (param i32 i64) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0))"#;

    #[test]
    fn a_complete_module_passes_and_is_described() {
        let info = check(&module(GOOD)).unwrap();
        assert_eq!(info.abi, AbiVersion::V0_2_1);
        assert_eq!(info.allocator, "proxy_on_memory_allocate");
        assert!(info.callbacks.contains("proxy_on_request_headers"));
        assert_eq!(info.imports.len(), 3);
    }

    #[test]
    fn abi_0_2_0_and_malloc_are_accepted() {
        let wat = GOOD
            .replace("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0")
            .replace("proxy_on_memory_allocate", "malloc");
        let info = check(&module(&wat)).unwrap();
        assert_eq!(info.abi, AbiVersion::V0_2_0);
        assert_eq!(info.allocator, "malloc");
    }

    #[test]
    fn each_problem_names_its_symbol() {
        let wat = GOOD
            .replace("proxy_abi_version_0_2_1", "something_else")
            .replace(
                r#"(import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))"#,
                r#"(import "env" "proxy_log" (func (param i32) (result i32)))
                   (import "env" "proxy_open_socket" (func (result i32)))"#,
            );
        let errors = check(&module(&wat)).unwrap_err();
        let all = errors.join("\n");
        assert!(all.contains("proxy_abi_version_0_2_1"), "{all}");
        assert!(
            all.contains("unknown function `env.proxy_open_socket`"),
            "{all}"
        );
        assert!(
            all.contains("imports `env.proxy_log` as (i32) -> i32 but proxy-wasm 0.2.1 defines (i32, i32, i32) -> i32"),
            "{all}"
        );
        assert_eq!(errors.len(), 3, "{all}");
    }

    #[test]
    fn missing_memory_allocator_and_context_create_are_reported() {
        let errors = check(&module(
            r#"(module (func (export "proxy_abi_version_0_2_1")))"#,
        ))
        .unwrap_err()
        .join("\n");
        assert!(errors.contains("`memory`"), "{errors}");
        assert!(errors.contains("no allocator"), "{errors}");
        assert!(errors.contains("proxy_on_context_create"), "{errors}");
    }

    #[test]
    fn table_has_no_duplicates() {
        let mut seen = BTreeSet::new();
        for f in host_function_names() {
            assert!(seen.insert(f), "{}.{} twice", f.0, f.1);
        }
        assert_eq!(seen.len(), HOST_FUNCTIONS.len() + 2 * WASI_FUNCTIONS.len());
    }

    #[test]
    fn wasi_is_accepted_under_both_module_names_with_its_signatures() {
        let wat = GOOD.replace(
            r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#,
            r#"(import "wasi_unstable" "proc_exit" (func (param i32)))
               (import "wasi_unstable" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "fd_close" (func (param i32) (result i32)))
               (import "wasi_snapshot_preview1" "fd_seek" (func (param i32 i64 i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "fd_fdstat_get" (func (param i32 i32) (result i32)))"#,
        );
        let info = check(&module(&wat)).unwrap();
        assert!(info.imports.contains("wasi_unstable.proc_exit"));
        assert!(info.imports.contains("wasi_snapshot_preview1.fd_seek"));
        let wrong = GOOD.replace(
            r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#,
            r#"(import "wasi_unstable" "fd_seek" (func (param i32 i32 i32 i32) (result i32)))
               (import "wasi_snapshot_preview2" "fd_close" (func (param i32) (result i32)))"#,
        );
        let errors = check(&module(&wrong)).unwrap_err().join("\n");
        assert!(
            errors.contains("imports `wasi_unstable.fd_seek` as (i32, i32, i32, i32) -> i32"),
            "{errors}"
        );
        assert!(
            errors.contains("unknown function `wasi_snapshot_preview2.fd_close`"),
            "{errors}"
        );
    }
}
