//! Wasm plugin modules end to end: real modules compiled from source by
//! `plugins/build.sh` (rustc 1.63 for wasm32-wasi, or wasm32-wasip1), checked by the
//! real binary. Hostile modules are written here as WebAssembly text.

use portico_integration_tests::*;

fn check(plugins: &[&std::path::Path]) -> (Option<i32>, String) {
    check_with(plugins, "")
}

/// `portico check --plugin ...` against an empty config, so that only
/// these modules are counted (the embedded default loads the shipped ones).
fn check_with(plugins: &[&std::path::Path], config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("check-plugins");
    let empty = dir.write("portico.toml", "");
    let mut args = vec![
        "check".to_string(),
        "--config".to_string(),
        empty.display().to_string(),
        "--plugin-config".to_string(),
        config.to_string(),
    ];
    for p in plugins {
        args.push("--plugin".into());
        args.push(p.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = portico(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_plugin_built_with_the_upstream_proxy_wasm_sdk_passes_the_abi_check() {
    let wasm = built_plugins().join("compat_http_headers.wasm");
    let (code, out) = check_with(&[&wasm], "blue");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("proxy-wasm ABI 0.2.1"), "{out}");
    assert!(out.contains("; started"), "{out}");
    // Its on_configure read the configuration and logged through proxy_log.
    assert!(
        out.contains("compat-http-headers configured with tag \"blue\""),
        "{out}"
    );
    assert!(out.contains("and 1 plugin(s): 0 error(s)"), "{out}");
}

#[test]
fn bad_modules_are_refused_naming_the_file_and_symbol() {
    let dir = TempDir::new("bad-plugins");
    let garbage = dir.write("garbage.wasm", "this is not wasm");
    let unknown = dir.write(
        "unknown.wat",
        r#"(module
            (import "env" "proxy_open_raw_socket" (func (param i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)
            (func (export "proxy_on_context_create") (param i32 i32)))"#,
    );
    let no_abi = dir.write(
        "no-abi.wat",
        r#"(module (memory (export "memory") 1) (func (export "proxy_on_context_create") (param i32 i32)))"#,
    );
    // A binary that starts right but does not validate.
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, b"\0asm\x01\0\0\0\x01\x05").unwrap();
    let (code, out) = check(&[&garbage, &unknown, &no_abi, &truncated]);
    assert_eq!(code, Some(1), "{out}");
    let expected = [
        (&garbage, "not a WebAssembly binary"),
        (
            &unknown,
            "imports unknown function `env.proxy_open_raw_socket`",
        ),
        (&no_abi, "exports neither `proxy_abi_version_0_2_1`"),
        (&no_abi, "exports no allocator"),
        (&truncated, "not a valid WebAssembly module"),
    ];
    for (file, problem) in expected {
        let line = format!("plugin {}: {problem}", file.display());
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains("and 4 plugin(s): 5 error(s)"), "{out}");
}

#[test]
fn the_sdk_template_builds_and_starts() {
    let wasm = built_template();
    let (code, out) = check_with(&[&wasm], "hello");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("template plugin configured: greeting \"hello\""),
        "{out}"
    );
}
