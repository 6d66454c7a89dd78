#!/usr/bin/env bash
# Builds every crate of the wasm32 workspace (plugins/Cargo.toml) to
# plugins/target/wasm32-wasi/release/*.wasm, and copies the shipped ones
# (session-affinity, ingress-class, ingress-nginx, cloud-lb) to plugins/dist/.
#
# Toolchain: Debian's rustc 1.63 + libstd-rust-dev-wasm32 (apt; the MSRV,
# and what this machine has), or with PORTICO_WASM_TOOLCHAIN=stable a
# rustup toolchain that has the wasm32-wasip1 target (what users have).
# CI and the tests call this script.
set -euo pipefail
cd "$(dirname "$0")"

# `build.sh test`: the unit tests of the plugins and the SDK, on the host
# (their logic apart from the ABI), with the same toolchain.
if [ "${1:-}" = test ]; then
  shift
  if [ "${PORTICO_WASM_TOOLCHAIN:-debian}" = debian ]; then
    for what in --workspace "-p portico-sdk"; do
      # shellcheck disable=SC2086
      RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 /usr/bin/cargo -Z sparse-registry \
        test --locked --lib $what "$@"
    done
  else
    cargo test --locked --lib --workspace "$@"
    cargo test --locked --lib -p portico-sdk "$@"
  fi
  exit
fi

case "${PORTICO_WASM_TOOLCHAIN:-debian}" in
  debian)
    for f in /usr/bin/rustc /usr/bin/cargo /usr/lib/rustlib/wasm32-wasi; do
      [ -e "$f" ] || { echo "plugins/build.sh: $f missing; apt-get install rustc cargo libstd-rust-dev-wasm32" >&2; exit 1; }
    done
    # ~/.cargo/bin comes first on PATH; Debian's cargo needs sparse
    # crates.io access (a nightly flag in cargo 1.65, hence RUSTC_BOOTSTRAP).
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo -Z sparse-registry \
      build --release --locked --target wasm32-wasi "$@"
    out=target/wasm32-wasi/release
    ;;
  stable)
    cargo build --release --locked --target wasm32-wasip1 "$@"
    out=target/wasm32-wasip1/release
    ;;
  *)
    echo "plugins/build.sh: PORTICO_WASM_TOOLCHAIN must be debian or stable" >&2
    exit 1
    ;;
esac
ls "$out"/*.wasm
# The shipped plugins, where conf/portico.toml and the image look for them
# whichever toolchain built them.
mkdir -p dist
for p in session_affinity ingress_class ingress_nginx cloud_lb; do
  cp "$out/$p.wasm" dist/
done
# The compatibility filter on the AssemblyScript SDK (npm, pinned).
bash compat/assemblyscript/build.sh
# The SDK's template plugin, so it keeps building as the SDK changes.
PORTICO_WASM_TOOLCHAIN="${PORTICO_WASM_TOOLCHAIN:-debian}" bash ../sdk/template/build.sh --locked "$@"
