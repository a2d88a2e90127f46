#!/usr/bin/env bash
# Set up (install, build) and run every test.  Tests of a mode the host
# cannot run are reported as skipped, with the reason in their output.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@"
