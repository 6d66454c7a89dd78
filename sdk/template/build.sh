#!/usr/bin/env bash
# One command: builds this plugin to target/<target>/release/portico_plugin.wasm.
# With a rustup toolchain that has wasm32-wasip1 (the default), or, with
# PORTICO_WASM_TOOLCHAIN=debian, Debian's rustc 1.63 + libstd-rust-dev-wasm32.
set -euo pipefail
cd "$(dirname "$0")"
case "${PORTICO_WASM_TOOLCHAIN:-stable}" in
  stable)
    cargo build --release --target wasm32-wasip1 "$@"
    ls target/wasm32-wasip1/release/*.wasm
    ;;
  debian)
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo -Z sparse-registry \
      build --release --target wasm32-wasi "$@"
    ls target/wasm32-wasi/release/*.wasm
    ;;
  *)
    echo "build.sh: PORTICO_WASM_TOOLCHAIN must be stable or debian" >&2
    exit 1
    ;;
esac
