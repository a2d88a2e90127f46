#!/usr/bin/env bash
# bench/bt-diff.sh [bt_diff_bench options]
# Differential testing at scale: a million random instruction sequences (by
# default) through the BT translator against this host's CPU, reporting the
# count and every divergence (tests/bt/diff_bench.cpp).  Needs 32-bit user
# code on the host (the native side is a 32-bit process).  Examples:
#   bench/bt-diff.sh                              # 1,000,000 sequences, BCD included
#   bench/bt-diff.sh --no-bcd --seed 7            # without the emulated BCD instructions
#   bench/bt-diff.sh --sequences 50000 --show 20  # shorter, print more divergences
# BUILD_DIR selects the build tree (default <repo>/build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
build=${BUILD_DIR:-$repo/build}
if [ ! -f "$build/build.ninja" ]; then
  cmake -G Ninja -S "$repo" -B "$build" >/dev/null
fi
ninja -j2 -C "$build" bt_diff_bench >/dev/null
have_sequences=0
for a in "$@"; do [ "$a" = --sequences ] && have_sequences=1; done
if ((have_sequences)); then
  exec "$build/bin/bt_diff_bench" "$@"
fi
exec "$build/bin/bt_diff_bench" --sequences 1000000 "$@"
