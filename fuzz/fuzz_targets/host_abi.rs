//! A guest that makes any sequence of proxy-wasm and WASI host calls with
//! any arguments (pointers and lengths anywhere, in or far outside its
//! memory, and an allocator that hands out such pointers): the host
//! answers with status codes or traps the guest, and never panics or
//! touches memory outside the guest's.
#![no_main]

use std::fmt::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portico_wasm::host::{linker, VmState};
use portico_wasm::sandbox::{Limits, Sandbox};
use wasmtime::{Engine, Linker, ValType};

struct Host {
    engine: Engine,
    linker: Linker<portico_wasm::sandbox::HostState<VmState>>,
    /// (module, name, parameter types, has a result).
    functions: Vec<(&'static str, &'static str, Vec<ValType>, bool)>,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let engine = portico_wasm::engine().expect("engine");
        let linker = linker(&engine).expect("linker");
        let functions = portico_wasm::abi::host_function_names()
            .filter_map(|(module, name)| {
                let ty = portico_wasm::abi::func_type(&engine, module, name)?;
                let has_result = ty.results().len() > 0;
                Some((module, name, ty.params().collect(), has_result))
            })
            .collect();
        Host {
            engine,
            linker,
            functions,
        }
    })
}

/// Reads the input as calls: a byte picks the function, then each
/// argument is a byte choosing the kind of value, followed by the value.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn i32(&mut self) -> i32 {
        let interesting = [
            0,
            1,
            8,
            16,
            1024,
            65_535,
            65_536,
            65_537,
            -1,
            i32::MAX,
            i32::MIN,
        ];
        match self.byte().unwrap_or(0) % 4 {
            0 => interesting[usize::from(self.byte().unwrap_or(0)) % interesting.len()],
            1 => i32::from(self.byte().unwrap_or(0)),
            2 => i32::from(self.byte().unwrap_or(0)) * 256,
            _ => {
                let mut b = [0u8; 4];
                for x in &mut b {
                    *x = self.byte().unwrap_or(0);
                }
                i32::from_le_bytes(b)
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let h = host();
    let mut r = Reader(data);
    let mut imports = String::new();
    let mut body = String::new();
    let mut used = std::collections::BTreeMap::new();
    for _ in 0..16 {
        let Some(pick) = r.byte() else { break };
        let (module, name, params, result) = &h.functions[usize::from(pick) % h.functions.len()];
        let next = used.len();
        let id = *used.entry((*module, *name)).or_insert_with(|| {
            let params: Vec<&str> = params
                .iter()
                .map(|p| {
                    if matches!(p, ValType::I64) {
                        "i64"
                    } else {
                        "i32"
                    }
                })
                .collect();
            let _ = writeln!(
                imports,
                "(import \"{module}\" \"{name}\" (func $f{next} (param {}) {}))",
                params.join(" "),
                if *result { "(result i32)" } else { "" }
            );
            next
        });
        let mut call = format!("(call $f{id}");
        for p in params {
            let v = r.i32();
            if matches!(p, ValType::I64) {
                let _ = write!(call, " (i64.const {v})");
            } else {
                let _ = write!(call, " (i32.const {v})");
            }
        }
        call.push(')');
        if *result {
            call = format!("(drop {call})");
        }
        body.push_str(&call);
        body.push('\n');
    }
    let wat = format!(
        "(module\n{imports}\
         (memory (export \"memory\") 1)\n\
         (global $next (mut i32) (i32.const 1024))\n\
         (func (export \"proxy_on_memory_allocate\") (param i32) (result i32)\n\
           (global.get $next)\n\
           (global.set $next (i32.add (global.get $next) (local.get 0))))\n\
         (func (export \"run\")\n{body}))"
    );
    let module = wasmtime::Module::new(&h.engine, &wat).expect("a valid module");
    let limits = Limits {
        deadline: std::time::Duration::from_millis(200),
        memory_bytes: 4 << 20,
    };
    let Ok(mut sandbox) = Sandbox::new(
        "fuzz",
        &h.engine,
        &module,
        &h.linker,
        limits,
        VmState::default(),
    ) else {
        return;
    };
    // A trap (the guest's fault) is an answer; a panic is a host bug.
    let _ = sandbox.call::<(), ()>("run", ());
});
