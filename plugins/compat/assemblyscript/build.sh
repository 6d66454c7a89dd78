#!/usr/bin/env bash
# Builds the AssemblyScript compatibility filter to
# plugins/target/assemblyscript/compat_as.wasm with the versions pinned in
# package-lock.json (npm ci), as its users build it for Envoy.
#
# Nothing is done when the module is newer than every input (the test
# binaries each ask for the plugins; npm ci alone takes seconds).
set -euo pipefail
cd "$(dirname "$0")"
out=../../target/assemblyscript/compat_as.wasm
inputs=(build.sh package.json package-lock.json $(find assembly -type f))
if [ -f "$out" ] && [ -d node_modules ]; then
  fresh=1
  for f in "${inputs[@]}"; do
    [ "$f" -nt "$out" ] && fresh=
  done
  [ -n "$fresh" ] && exit 0
fi
command -v npm >/dev/null || {
  echo "plugins/compat/assemblyscript: npm missing; apt-get install npm (or any Node.js with npm)" >&2
  exit 1
}
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
mkdir -p ../../target/assemblyscript
npm run --silent build
