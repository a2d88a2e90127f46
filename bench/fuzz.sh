#!/usr/bin/env bash
# bench/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# The long fuzzing run: every libFuzzer target of tests/fuzz for
# SECONDS_PER_TARGET (default 600), one after the other (the YAML files,
# the loaders, the BT engine, snapshot files, encoded machine states, the
# control protocol and the migration protocol: scripts/fuzz.sh's
# all_targets), with the corpora
# that earlier runs grew in build-fuzz/fuzz-work/ (CI runs each for 20 s,
# .ci/run).  Prints executions, exec/s, corpus size and crashes per target;
# the summary is also written to bench/results/fuzz-<date>.txt.
# Exit status 1 when a target found a crash that is not a known issue
# (tests/fuzz/known-crashes.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-600}
shift || true
mkdir -p "$here/results"
out="$here/results/fuzz-$(date -u +%Y%m%dT%H%M%SZ).txt"
set +e
"$here/../scripts/fuzz.sh" "$seconds" "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
echo "bench/fuzz.sh: summary in $out"
exit "$status"
