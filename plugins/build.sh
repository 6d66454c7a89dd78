#!/usr/bin/env bash
# Builds every crate of the wasm32 workspace (plugins/Cargo.toml), the
# AssemblyScript compatibility filter and the SDK's template, and collects
# the modules in plugins/target/wasm/*.wasm; the shipped ones
# (session-affinity, ingress-class, ingress-nginx, cloud-lb) also go to
# plugins/dist/, where conf/portico.toml and the image look for them.
#
#   build.sh [CARGO ARGS]          everything (the tests and the benchmark)
#   build.sh --shipped [CARGO ARGS]  only the shipped plugins (demo.sh)
#   build.sh test [CARGO ARGS]     the plugins' and the SDK's unit tests, on the host
#
# Toolchain: whichever scripts/wasm-toolchain.sh finds (a rustup toolchain
# with wasm32-wasip1, else Debian's rustc 1.63 + libstd-rust-dev-wasm32);
# PORTICO_WASM_TOOLCHAIN=stable|debian forces one.
set -euo pipefail
cd "$(dirname "$0")"
toolchain=$(../scripts/wasm-toolchain.sh) || exit 1
shipped_only=
if [ "${1:-}" = --shipped ]; then
  shipped_only=1
  shift
fi

# `build.sh test`: the unit tests of the plugins and the SDK, on the host
# (their logic apart from the ABI), with the same toolchain.
if [ "${1:-}" = test ]; then
  shift
  if [ "$toolchain" = debian ]; then
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

case "$toolchain" in
  debian)
    for f in /usr/bin/rustc /usr/bin/cargo /usr/lib/rustlib/wasm32-wasi; do
      [ -e "$f" ] || { echo "plugins/build.sh: $f missing; apt-get install rustc cargo libstd-rust-dev-wasm32" >&2; exit 1; }
    done
    # ~/.cargo/bin comes first on PATH; Debian's cargo needs sparse
    # crates.io access (a nightly flag in cargo 1.65, hence RUSTC_BOOTSTRAP).
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo -Z sparse-registry \
      build --release --locked --target wasm32-wasi "$@"
    triple=wasm32-wasi
    ;;
  stable)
    cargo build --release --locked --target wasm32-wasip1 "$@"
    triple=wasm32-wasip1
    ;;
  *)
    echo "plugins/build.sh: PORTICO_WASM_TOOLCHAIN must be debian or stable" >&2
    exit 1
    ;;
esac
out=target/$triple/release
mkdir -p target/wasm dist
cp "$out"/*.wasm target/wasm/
for p in session_affinity ingress_class ingress_nginx cloud_lb; do
  cp "$out/$p.wasm" dist/
done
if [ -z "$shipped_only" ]; then
  # The compatibility filter on the AssemblyScript SDK (npm, pinned).
  bash compat/assemblyscript/build.sh
  cp target/assemblyscript/compat_as.wasm target/wasm/
  # The SDK's template plugin, so it keeps building as the SDK changes.
  PORTICO_WASM_TOOLCHAIN="$toolchain" bash ../sdk/template/build.sh --locked "$@" >/dev/null
  cp ../sdk/template/target/$triple/release/portico_plugin.wasm target/wasm/template.wasm
  ls target/wasm/*.wasm
else
  ls dist/*.wasm
fi
