#!/usr/bin/env bash
# Prints the toolchain that builds the plugins for wasm32, and exits 1 when
# there is none:
#   stable  a rustup toolchain with the wasm32-wasip1 target (what users have)
#   debian  Debian's rustc/cargo 1.63 with libstd-rust-dev-wasm32 (the
#           plugins' minimum Rust version; what CI uses)
# PORTICO_WASM_TOOLCHAIN (stable or debian) overrides the choice.
set -euo pipefail
if [ -n "${PORTICO_WASM_TOOLCHAIN:-}" ]; then
  echo "$PORTICO_WASM_TOOLCHAIN"
elif command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo stable
elif [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/wasm32-wasi ]; then
  echo debian
else
  echo "no wasm32 Rust toolchain: run 'rustup target add wasm32-wasip1', or 'apt-get install rustc cargo libstd-rust-dev-wasm32 lld' (scripts/deps.sh demo installs them)" >&2
  exit 1
fi
