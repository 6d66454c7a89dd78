#!/usr/bin/env bash
# Builds the AssemblyScript compatibility filter to
# plugins/target/assemblyscript/compat_as.wasm with the versions pinned in
# package-lock.json (npm ci), as its users build it for Envoy.
set -euo pipefail
cd "$(dirname "$0")"
command -v npm >/dev/null || {
  echo "plugins/compat/assemblyscript: npm missing; apt-get install npm (or any Node.js with npm)" >&2
  exit 1
}
npm ci --no-audit --no-fund --loglevel=error >/dev/null
mkdir -p ../../target/assemblyscript
npm run --silent build
