//! Compiled plugin modules cached on disk, keyed by the module's content
//! hash and the engine's compatibility hash, so a restart (or a hot reload
//! of an unchanged file) skips Cranelift.
//!
//! A cached artefact is native code that wasmtime loads without
//! re-validating it, so the cache folder must be writable by Portico
//! alone: it is created with mode 0700, and an entry that fails to load
//! is recompiled and replaced rather than trusted.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use wasmtime::{Engine, Module};

/// Where the compiled form of `bytes` lives in `dir`.
pub fn entry(engine: &Engine, dir: &Path, bytes: &[u8]) -> PathBuf {
    let content = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let hex: String = content
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("{hex}-{:016x}.cwasm", h.finish()))
}

/// Whether the module came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
}

/// Loads the compiled module for `bytes` from `dir`, or compiles it with
/// `compile` and stores the result. Cache failures are logged and never
/// fail the load.
pub fn load_or_compile(
    engine: &Engine,
    dir: &Path,
    bytes: &[u8],
    compile: impl FnOnce() -> wasmtime::Result<Module>,
) -> wasmtime::Result<(Module, Outcome)> {
    let path = entry(engine, dir, bytes);
    // Read into memory rather than mapped: a file changed under a mapping
    // would kill the process with SIGBUS.
    if let Ok(compiled) = std::fs::read(&path) {
        // SAFETY: the entry was written by `Module::serialize` of this
        // engine into a folder only Portico can write (see the module
        // docs); wasmtime checks the header and version, so a damaged
        // or foreign entry is an error here.
        match unsafe { Module::deserialize(engine, &compiled) } {
            Ok(m) => {
                metrics::counter!("portico_plugin_compile_cache_total", "result" => "hit")
                    .increment(1);
                return Ok((m, Outcome::Hit));
            }
            Err(e) => {
                tracing::warn!(entry = %path.display(), error = %e, "unusable compiled-plugin cache entry; recompiling")
            }
        }
    }
    let module = compile()?;
    metrics::counter!("portico_plugin_compile_cache_total", "result" => "miss").increment(1);
    if let Err(e) = store(dir, &path, &module) {
        tracing::warn!(folder = %dir.display(), error = %e, "cannot write the compiled-plugin cache");
    }
    Ok((module, Outcome::Miss))
}

fn store(dir: &Path, path: &Path, module: &Module) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| e.to_string())?;
    let bytes = module.serialize().map_err(|e| e.to_string())?;
    // Write then rename: a reader never sees half an entry.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (func (export "seven") (result i32) i32.const 7))"#;

    fn seven(engine: &Engine, m: &Module) -> i32 {
        let mut store = wasmtime::Store::new(engine, ());
        // Deadlines are on for this engine; give the call room.
        store.set_epoch_deadline(u64::MAX / 2);
        let i = wasmtime::Instance::new(&mut store, m, &[]).unwrap();
        i.get_typed_func::<(), i32>(&mut store, "seven")
            .unwrap()
            .call(&mut store, ())
            .unwrap()
    }

    #[test]
    fn second_load_is_a_hit_and_a_damaged_entry_is_recompiled() {
        let engine = crate::engine().unwrap();
        let dir = std::env::temp_dir().join(format!("portico-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // WebAssembly text is a valid module source too.
        let bytes = WAT.as_bytes().to_vec();
        let compile = || Module::new(&engine, &bytes);

        let (m, o) = load_or_compile(&engine, &dir, &bytes, compile).unwrap();
        assert_eq!(o, Outcome::Miss);
        assert_eq!(seven(&engine, &m), 7);
        let (m, o) = load_or_compile(&engine, &dir, &bytes, compile).unwrap();
        assert_eq!(o, Outcome::Hit);
        assert_eq!(seven(&engine, &m), 7);

        // A different module has a different entry.
        let other = WAT.replace("i32.const 7", "i32.const 8").into_bytes();
        assert_ne!(entry(&engine, &dir, &bytes), entry(&engine, &dir, &other));

        // Damaged: recompiled, replaced, and served correctly.
        std::fs::write(entry(&engine, &dir, &bytes), b"garbage").unwrap();
        let (m, o) = load_or_compile(&engine, &dir, &bytes, compile).unwrap();
        assert_eq!(o, Outcome::Miss);
        assert_eq!(seven(&engine, &m), 7);
        let (_, o) = load_or_compile(&engine, &dir, &bytes, compile).unwrap();
        assert_eq!(o, Outcome::Hit);

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
