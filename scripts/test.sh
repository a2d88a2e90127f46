#!/usr/bin/env bash
# Set up (install, build) and run every test.  Tests of a mode the host
# cannot run are reported as skipped, with the reason in their output.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cd build
rc=0
ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@" || rc=$?
# A long log's end names each failed test; say why there too.
[ "$rc" = 0 ] || python3 ../scripts/lib/failure-digest.py . || true
exit "$rc"
