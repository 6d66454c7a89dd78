#!/usr/bin/env bash
# The fuzz targets (fuzz/) in CI's short mode: each replays its corpus
# (fuzz/corpus/TARGET, every input a past find or a seed) and then runs
# bounded mutations of it, at most 20 s or 30,000 inputs per target. A
# panic or a failed check exits non-zero with the input saved under
# $ARTIFACTS.
#
# These binaries are built like the rest of the workspace, without
# coverage instrumentation, so the mutations here are blind and start from
# small inputs (libFuzzer keeps no corpus entry without coverage): the
# corpus replay is the regression check. The coverage-guided fuzzing that
# grows the corpora is
#   cargo install cargo-fuzz
#   cargo fuzz run -s none --dev TARGET       # stable Rust: no sanitizer
# (see README, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p portico-fuzz --bins
artifacts="${ARTIFACTS:-$(mktemp -d)}"
for t in manifests paths control_answers host_abi; do
  # A copy: libFuzzer adds what it finds to the first corpus folder.
  work="$(mktemp -d)"
  cp -r "fuzz/corpus/$t/." "$work/"
  echo "fuzz smoke: $t ($(ls "$work" | wc -l) corpus inputs)"
  status=0
  "target/debug/$t" "$work" -runs=30000 -max_total_time=20 -max_len=8192 \
    -artifact_prefix="$artifacts/$t-" -print_final_stats=1 >"$work.log" 2>&1 || status=$?
  grep -E '^stat::number_of_executed_units|^Done' "$work.log" || true
  rm -rf "$work"
  if [ "$status" -ne 0 ]; then
    tail -40 "$work.log" >&2
    echo "fuzz smoke: $t failed (exit $status); the input is in $artifacts" >&2
    exit 1
  fi
  rm -f "$work.log"
done
