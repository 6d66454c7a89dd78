#!/usr/bin/env bash
# Benchmark harness entry point: installs the tools (apt), builds Portico and
# the load generator, then runs bench.py (Portico vs nginx vs HAProxy on
# 127.0.0.1). Arguments go to bench.py: --quick, --rounds N, --duration S.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in nginx libnginx-mod-stream haproxy wrk nghttp2-client iperf3 openssl util-linux; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  # Do not let the packages start their own nginx/haproxy services: the
  # harness runs its own instances. policy-rc.d exists only for the install.
  added_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
# A distribution nginx/haproxy service started earlier is not ours: make sure
# it is not holding CPU during the run.
for svc in nginx haproxy; do
  service "$svc" stop >/dev/null 2>&1 || true
done
# The plugin-overhead scenario runs plugins compiled from source.
bash plugins/build.sh >/dev/null
profile=release
for a in "$@"; do [ "$a" = "--quick" ] && profile=dev; done
# One cargo invocation over the whole workspace: features then unify as in
# `cargo test --workspace`, so nothing is compiled twice. --bins as well:
# naming an example alone builds only that example, and the binaries
# measured would be whatever an earlier build left.
if [ "$profile" = release ]; then
  # The fuzz targets are not measured: not built here.
  cargo build --release --workspace --exclude portico-fuzz --bins --example plugin_overhead
  exec python3 integration-tests/bench/bench.py "$@"
else
  # Quick mode proves the harness works; a debug build keeps CI short.
  cargo build --workspace --bins --example plugin_overhead
  exec python3 integration-tests/bench/bench.py --portico target/debug/portico --load target/debug/portico-load \
    --floor target/debug/pingora-floor "$@"
fi
