#!/usr/bin/env bash
# scripts/sanitize.sh [ctest args...]
# Builds the unit and BT tests with AddressSanitizer + UBSan (gcc, build-asan/,
# -DMODEVISOR_SANITIZE=ON) and runs them.  Any sanitizer report fails the test
# that made it (-fno-sanitize-recover, abort_on_error): zero reports is the
# bar.  Not run here: the guest tests (QEMU and the CLI booting guests: they
# exercise the same engine code as bt_tests, at 2-3x the cost under ASan) and
# the KVM tests (no usable /dev/kvm; the nested host boots its own kernel).
#
# What the BT engine needs under ASan (see tests/fuzz/README.md):
#  - ASan must not own SIGSEGV/SIGBUS/SIGFPE/SIGILL for good: the engine
#    installs its own handlers after ASan's (guest faults in translated code
#    are signals) and hands on the ones that are not its own, so ASan still
#    reports a host crash.  allow_user_segv_handler=1 (the default) is needed.
#  - use_sigaltstack=0 is not needed: the engine's handlers run on whatever
#    alternate stack ASan installed (SA_ONSTACK).
#  - The engine leaves a host fault in its own code with siglongjmp; ASan
#    intercepts it and unpoisons the abandoned frames, so no false
#    stack-buffer-overflow follows.
# Environment: ASAN_BUILD (build dir, default build-asan), ASAN_JOBS (ninja -j, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
build=${ASAN_BUILD:-$repo/build-asan}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODEVISOR_SANITIZE=ON \
    $(command -v ccache >/dev/null && echo -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
fi
unit_tests=$(cd tests/unit && ls test_*.cpp | sed 's/\.cpp$//')
# The migration protocol against in-process test guests (wire format, faults
# at every step, loopback hosts) and the KVM state conversions (no /dev/kvm needed).
unit_tests+=" test_migration_wire test_migration_faults test_migration_loopback test_kvm_unit"
# The fuzz targets' seed replays (ctest fuzz_replay_*) run sanitized too.
fuzz_replays=$(cd tests/fuzz && ls fuzz_*.cpp | sed 's/^fuzz_/fuzz_replay_/; s/\.cpp$//')
start=$SECONDS
# shellcheck disable=SC2086
if ! ninja -C "$build" -j "${ASAN_JOBS:-2}" $unit_tests $fuzz_replays bt_tests > "$build/sanitize-build.log" 2>&1; then
  grep -E -A3 'error|FAILED' "$build/sanitize-build.log" | head -40
  echo "sanitize: the tests did not build (whole log: $build/sanitize-build.log)"
  exit 1
fi
echo "sanitize: unit and BT tests built in $((SECONDS - start)) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allow_user_segv_handler=1:detect_stack_use_after_return=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
start=$SECONDS
cd "$build"
# Test names are "Suite.Case" and do not carry their executable's name, so
# select by excluding what is not unit/BT: the guests, KVM and SDK tests.
rc=0
ctest --output-on-failure -j "$(nproc)" --timeout 900 -LE 'guests|kvm' \
  -E '^(guest_|plugin_sdk_out_of_tree|kvm_nested_host)|NOT_BUILT' "$@" || rc=$?
echo "sanitize: tests ran in $((SECONDS - start)) s"
[ "$rc" = 0 ] || python3 "$repo/scripts/lib/failure-digest.py" . || true
exit "$rc"
