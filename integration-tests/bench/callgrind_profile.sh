#!/usr/bin/env bash
# Per-function instruction profile of one proxy serving HTTP/1.1 keep-alive
# requests: the proxy runs under callgrind with instrumentation off, gets
# 500 warm-up requests, then instrumentation is switched on for N requests
# only (h2load --h1, 8 connections), so start-up, warm-up and shutdown are
# not in the profile. Compare two profiles with callgrind_diff.py.
#
#   callgrind_profile.sh OUT N URL -- PROXY_COMMAND...
#   LOAD=h2c callgrind_profile.sh ...   # h2c instead: 8 connections x 10 streams
#
# The proxy must be listening for URL (its backend started separately, e.g.
# the harness's backend nginx). Needs valgrind and nghttp2-client (h2load).
set -euo pipefail
out=$1 n=$2 url=$3
shift 3
[ "${1:-}" = "--" ] && shift
valgrind --tool=callgrind --instr-atstart=no --dump-instr=no \
  --callgrind-out-file="$out.%p" "$@" >"$out.log" 2>&1 &
vg=$!
trap 'kill $vg 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -s -o /dev/null "$url" && break
  sleep 1
done
if [ "${LOAD:-h1}" = h2c ]; then load=(h2load -c8 -m10 -t1); else load=(h2load --h1 -c8 -t1); fi
"${load[@]}" -n 500 "$url" >/dev/null
callgrind_control -i on "$vg" >/dev/null
"${load[@]}" -n "$n" "$url" | grep -E "^requests|status codes"
callgrind_control -i off "$vg" >/dev/null
callgrind_control -d "$vg" >/dev/null
kill "$vg"
wait "$vg" || true
# The dump taken above is the one with a ".1" suffix.
ls "$out".*.1
