#!/usr/bin/env bash
# The quickstart in one command, on Debian 12 with rustup: installs what is
# missing (scripts/deps.sh demo), builds the shipped plugins with whichever
# wasm32 toolchain is present and the release binary, then serves the
# embedded default (conf/portico.toml + conf/examples/) with
# target/release/portico. Arguments go to `portico run`.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/deps.sh demo
bash plugins/build.sh --shipped >/dev/null
cargo build --release -p portico
exec target/release/portico run "$@"
