#!/bin/sh
# bench/run.sh [--quick] [bench.py options...]
# Builds the tree if needed (ninja -j2; BENCH_NO_BUILD=1 skips it), then runs
# the benchmark driver.  BUILD_DIR selects the build tree (default <repo>/build).
# See bench/README.md; `bench/run.sh --help` lists the driver's options.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
build=${BUILD_DIR:-$repo/build}
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  if [ ! -f "$build/build.ninja" ]; then
    cmake -G Ninja -S "$repo" -B "$build" >/dev/null
  fi
  ninja -j2 -C "$build" >/dev/null
fi
exec python3 "$here/bench.py" --build "$build" "$@"
