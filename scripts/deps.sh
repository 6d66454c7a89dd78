#!/usr/bin/env bash
# Installs what Portico needs for PURPOSE, on Debian 12 with rustup:
#
#   scripts/deps.sh demo    build and run the quickstart (demo.sh)
#   scripts/deps.sh test    the whole test suite (test.sh, CI)
#
# Only missing packages are installed: with apt-get as root, or through
# `sudo -n`. Where neither works (or this is not Debian), it prints the
# exact command to run and exits 1. Distribution services that come with
# the packages (etcd, nginx, haproxy, prometheus) are kept from starting:
# the tests run their own instances.
set -euo pipefail
purpose=${1:?usage: scripts/deps.sh demo|test}

need=()
want() { dpkg -s "$1" >/dev/null 2>&1 || need+=("$1"); }
# Packages installed without their recommends (prometheus would pull in
# its web assets and exporters).
lean=()
want_lean() { dpkg -s "$1" >/dev/null 2>&1 || lean+=("$1"); }

if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
  echo "scripts/deps.sh: not a Debian system; install by hand: a C compiler, cmake, pkg-config," >&2
  echo "  and a wasm32 Rust target (rustup target add wasm32-wasip1); for tests also curl, openssl," >&2
  echo "  iproute2, arping, tcpdump, bird2, python3-h2, etcd, xz, npm, promtool, nginx (with its stream module), haproxy, wrk, h2load, iperf3" >&2
  exit 1
fi

# Building the gateway: a C toolchain (rustup's linker), cmake for
# Pingora's zlib-ng.
want build-essential
want cmake
want pkg-config
# The plugins: a rustup toolchain with the wasm32-wasip1 target if there is
# one, else Debian's rustc 1.63 with its wasm32 standard library (the
# choice scripts/wasm-toolchain.sh makes for plugins/build.sh).
if ! "$(dirname "$0")/wasm-toolchain.sh" >/dev/null 2>&1; then
  for p in rustc cargo libstd-rust-dev-wasm32 lld; do want "$p"; done
fi

case "$purpose" in
  demo) ;;
  test)
    # Clients the end-to-end tests drive, the network namespaces of the
    # Kubernetes and L4 tests, the real kube-apiserver's etcd and unpacking.
    for p in curl openssl iproute2 etcd-server xz-utils python3; do want "$p"; done
    # The bare-metal address tests look at ARP from a client namespace.
    for p in iputils-arping tcpdump; do want "$p"; done
    # The BGP mode test peers with a real router (BIRD 2).
    want bird2
    # The HTTP/2 rows of the defence table send hostile requests with
    # python3-h2 (run by /usr/bin/python3, Debian's, whatever python3 is
    # first on PATH).
    want python3-h2
    # The AssemblyScript compatibility plugin (any Node.js with npm will do).
    command -v npm >/dev/null || want npm
    # promtool checks /metrics.
    command -v promtool >/dev/null || want_lean prometheus
    # The benchmark harness's quick mode.
    for p in nginx libnginx-mod-stream haproxy wrk nghttp2-client iperf3 util-linux; do want "$p"; done
    ;;
  *)
    echo "scripts/deps.sh: unknown purpose '$purpose' (demo or test)" >&2
    exit 1
    ;;
esac

[ ${#need[@]} -eq 0 ] && [ ${#lean[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "scripts/deps.sh: missing Debian packages; install them with:" >&2
  [ ${#need[@]} -gt 0 ] && echo "  sudo apt-get install ${need[*]}" >&2
  [ ${#lean[@]} -gt 0 ] && echo "  sudo apt-get install --no-install-recommends ${lean[*]}" >&2
  exit 1
fi

echo "scripts/deps.sh: installing ${need[*]} ${lean[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
added_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
cleanup() { if [ -n "$added_policy" ]; then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
"${sudo[@]}" apt-get update -qq
[ ${#need[@]} -gt 0 ] && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
[ ${#lean[@]} -gt 0 ] && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
exit 0
