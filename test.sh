#!/usr/bin/env bash
# The whole test suite in one command, on Debian 12 with rustup: installs
# what is missing (scripts/deps.sh test), then runs
#   - the workspace's unit tests and the end-to-end tests (the real binary,
#     real backends and clients on 127.0.0.1 and in network namespaces, a
#     real kube-apiserver; they build the binary and the plugins themselves);
#   - the plugins' and the SDK's unit tests (plugins/build.sh test);
#   - the fuzz targets over their corpora plus a bounded run of mutations
#     (scripts/fuzz_smoke.sh);
#   - the benchmark harness in quick mode and the scale benchmarks at a
#     small size: they prove the harnesses run and time nothing that could
#     fail.
# CI (.ci/run) runs this after cargo fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/deps.sh test

cargo test --workspace
bash plugins/build.sh test
bash scripts/fuzz_smoke.sh

integration-tests/bench/run.sh --quick

scale_dir="$(mktemp -d)"
trap 'rm -rf "$scale_dir"' EXIT
python3 integration-tests/bench/gen_cluster.py generate --out "$scale_dir" --services 200 --ingresses 100
target/debug/kube_scale --portico target/debug/portico --cluster "$scale_dir" --changes 5
target/debug/kube_scale --portico target/debug/portico --cluster "$scale_dir" --changes 5 --real
python3 integration-tests/bench/gen_cluster.py measure --portico target/debug/portico \
  --services 200 --ingresses 100 --changes 5
