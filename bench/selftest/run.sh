#!/bin/sh
# Self-test of bench.py's monitor path with a fake modevisor (guests run under
# QEMU, invented counters): the BT columns, counter tables and the per-op
# counter differential must come out.  Quick sizes, a few seconds.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
build=${BUILD_DIR:-$repo/build}
out=$(mktemp)
trap 'rm -f "$out" "$out.json"' EXIT
python3 "$repo/bench/bench.py" --build "$build" --quick --guests sieve,crc32 --nano-count 1000 --nano-trials 1 \
  --counter-count 100 --modevisor "$here/fake-modevisor" --out "$out.json" >"$out" 2>/dev/null || true
cat "$out"
fail=0
grep -q '^sieve .* BT/TCG' "$out" && { echo "selftest: unexpected table"; fail=1; }
grep -Eq '^sieve +n=10000000 r=1 .*[0-9]\.[0-9]{3} +[0-9.]+ +[0-9.]+ +[0-9.]+$' "$out" || { echo "selftest: no BT time/ratios for sieve"; fail=1; }
grep -Eq '^sieve +99\.[0-9]{3}%' "$out" || { echo "selftest: no TC hit rate"; fail=1; }
grep -Eq '^pgfault .*mmu\.guest_faults=1\.00 mmu\.hidden_faults=1\.00' "$out" || { echo "selftest: no per-op counters"; fail=1; }
grep -Eq '^syscall .*bt\.block_entries=5\.00' "$out" || { echo "selftest: wrong syscall counters"; fail=1; }
grep -q 'HV: cannot run on this host (hv-swmmu: fake: no VT-x)' "$out" || { echo "selftest: no HV note"; fail=1; }
[ $fail = 0 ] && echo "selftest: OK"
exit $fail
