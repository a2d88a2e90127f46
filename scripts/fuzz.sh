#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET...]
# Builds the libFuzzer targets (clang, ASan+UBSan, build-fuzz/) and fuzzes each
# for SECONDS (default 20) of wall time, bounded.  Prints executions, exec/s,
# corpus size and the outcome per target.  Exit status 1 when any target found
# a crash, a leak, a timeout or an out-of-memory that is not a known issue.
#
# Corpora: tests/fuzz/corpus/<target>/ (binary seeds, see make_seeds.py) and,
# for the YAML targets, the shipped configs and fixtures themselves.  What a
# run discovers goes to build-fuzz/fuzz-work/<target>/corpus/ (kept between
# local runs, never committed); crash inputs to .../artifacts/.
#
# Known issues: tests/fuzz/known-crashes.txt lists "TARGET PATTERN" lines.  A
# crash whose report matches PATTERN (grep -E) is reported as known and the
# target goes on fuzzing for the rest of its time; the reproducers in
# tests/fuzz/crashes/<target>/ are replayed first and each is reported as
# still crashing or fixed.  Environment: FUZZ_BUILD (build dir, default
# build-fuzz), FUZZ_JOBS (ninja -j, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
seconds=${1:-20}
shift || true
build=${FUZZ_BUILD:-$repo/build-fuzz}
all_targets=(vm_yaml host_yaml policy cpu_profile guest_os multiboot bzimage bt snapshot machine_state control migration)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMODEVISOR_FUZZ=ON \
    $(command -v ccache >/dev/null && echo -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
fi
build_start=$SECONDS
if ! ninja -C "$build" -j "${FUZZ_JOBS:-2}" fuzz_targets > "$build/fuzz-build.log" 2>&1; then
  grep -E -A3 'error|FAILED' "$build/fuzz-build.log" | head -40
  echo "fuzz: the targets did not build (whole log: $build/fuzz-build.log)"
  exit 1
fi
echo "fuzz: targets built in $((SECONDS - build_start)) s"

# Extra seed folders per target (read-only; libFuzzer only reads them).
seeds_for() {
  [ -d "$repo/tests/fuzz/corpus/$1" ] && echo "$repo/tests/fuzz/corpus/$1"
  case $1 in
    vm_yaml) echo "$repo/configs/vms $repo/tests/fixtures/vms" ;;
    host_yaml) echo "$repo/configs/hosts" ;;
    policy) echo "$repo/configs/policies" ;;
    cpu_profile) echo "$repo/configs/cpus" ;;
    guest_os) echo "$repo/configs" ;;
  esac
}

known_patterns() {  # the patterns listed for target $1
  [ -f tests/fuzz/known-crashes.txt ] || return 0
  grep -v '^\s*#' tests/fuzz/known-crashes.txt | awk -v t="$1" '$1 == t { $1 = ""; sub(/^ /, ""); print }'
}
is_known() {  # target, log file
  local p
  while IFS= read -r p; do
    [ -n "$p" ] && grep -qE -- "$p" "$2" && return 0
  done < <(known_patterns "$1")
  return 1
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
summary=()
for t in "${targets[@]}"; do
  bin="$build/bin/fuzz_$t"
  work="$build/fuzz-work/$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  # Known reproducers: replayed, reported, never failing the run.
  for r in tests/fuzz/crashes/"$t"/*; do
    [ -f "$r" ] || continue
    if "$bin" -timeout=10 "$r" >"$work/replay.log" 2>&1; then
      echo "fuzz: $t: known reproducer $r: FIXED (runs clean now; move it to the corpus)"
    elif is_known "$t" "$work/replay.log"; then
      echo "fuzz: $t: known reproducer $r: still crashes (listed in tests/fuzz/known-crashes.txt)"
    else
      echo "fuzz: $t: known reproducer $r: crashes in an UNLISTED way:"
      grep -E "ERROR|SUMMARY|fuzz_|terminate" "$work/replay.log" | head -5 | sed 's/^/    /'
      failed=1
    fi
  done
  # Fuzz for the time given; after a known crash, go on for what is left.
  execs=0 known=0 outcome=ok start=$SECONDS
  while :; do
    left=$((seconds - (SECONDS - start)))
    ((left > 0)) || break
    log="$work/run.log"
    set +e
    # shellcheck disable=SC2046
    "$bin" -max_total_time="$left" -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/" "$work/corpus" $(seeds_for "$t") >"$log" 2>&1
    status=$?
    set -e
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ -z "$n" ]; then  # stopped by a crash: the last status line counts
      n=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    fi
    execs=$((execs + ${n:-0}))
    ((status == 0)) && break
    if is_known "$t" "$log"; then
      known=$((known + 1))
      cp "$log" "$work/known-crash-$known.log"
      # A known crash kept in the corpus would stop every restart at once.
      art=$(ls -t "$work"/artifacts/{crash,timeout,oom,leak}-* 2>/dev/null | head -1 || true)
      if [ -n "$art" ]; then
        for f in "$work"/corpus/*; do cmp -s "$f" "$art" && rm -f "$f"; done
      fi
      continue
    fi
    outcome="CRASH (log $log)"
    grep -E "ERROR|SUMMARY|fuzz_|terminate|Test unit written" "$log" | head -8 | sed 's/^/    /'
    failed=1
    break
  done
  elapsed=$((SECONDS - start))
  corpus=$(find "$work/corpus" -type f | wc -l)
  line=$(printf '%-12s %10d execs %7d exec/s %6d corpus  %s' "$t" "$execs" "$((execs / (elapsed > 0 ? elapsed : 1)))" \
    "$corpus" "$outcome")
  ((known)) && line+=" ($known known crash(es) hit, see tests/fuzz/known-crashes.txt)"
  echo "fuzz: $line"
  summary+=("$line")
done
echo "fuzz: summary (${seconds} s per target)"
printf '  %s\n' "${summary[@]}"
exit $failed
