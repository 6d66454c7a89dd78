//! Where the memory of loaded plugins goes: for each module given, the
//! resident memory that compiling it adds, then what one started instance
//! (the VM a worker thread holds) adds, read from /proc/self/statm after
//! each step, with mimalloc (the binary's allocator) returning freed
//! memory at once.
//!
//!     cargo run --release -p portico-wasm --example plugin_memory -- a.wasm b.wasm ...

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident KiB once mimalloc has returned what is free, as the binary
/// does after start-up.
fn rss_kib() -> i64 {
    // SAFETY: a plain call into the allocator in use.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn main() {
    // As `portico run` does: no transparent huge pages (see run.rs).
    // SAFETY: a process attribute; no memory is touched.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let paths: Vec<std::path::PathBuf> = std::env::args().skip(1).map(Into::into).collect();
    assert!(!paths.is_empty(), "usage: plugin_memory PLUGIN.wasm...");
    let engine = portico_wasm::engine().expect("engine");
    let linker = portico_wasm::host::linker(&engine).expect("linker");
    let base = rss_kib();
    println!(
        "{:<28} {:>12} {:>14}",
        "module", "compiled KiB", "+instance KiB"
    );
    let mut keep = Vec::new();
    let mut total = (0, 0);
    for path in &paths {
        let before = rss_kib();
        let cfg = portico_wasm::config::PluginConfig {
            name: "m".into(),
            path: path.clone(),
            ..toml_default()
        };
        let plugin = portico_wasm::registry::load_one(&engine, &linker, &cfg, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let compiled = rss_kib() - before;
        let vm = plugin.start(&linker).expect("start");
        let instance = rss_kib() - before - compiled;
        total.0 += compiled;
        total.1 += instance;
        println!(
            "{:<28} {compiled:>12} {instance:>14}",
            path.file_name().unwrap().to_string_lossy()
        );
        keep.push((plugin, vm));
    }
    println!("{:<28} {:>12} {:>14}", "total", total.0, total.1);
    println!(
        "process RSS before loading: {base} KiB, after: {} KiB",
        rss_kib()
    );
}

/// A plugin entry as `[[plugins.load]]` with only name and path would be.
fn toml_default() -> portico_wasm::config::PluginConfig {
    serde_json::from_str(r#"{"name": "m", "path": "m.wasm"}"#).expect("defaults")
}
