#!/usr/bin/env bash
# Live migration of a 256 MiB VM over loopback TCP (bench/migration_bench.cpp):
# the stamper guest under bt-swmmu with its RAM filled, idle and then stamping
# ~50 MB/s, moved between two Vms in one process.  Prints the JSON records and
# a table: total time, downtime (measured), rounds, bytes, and the goal of
# total time within 1.5x memory size over the measured loopback bandwidth.
#   bench/migration.sh [BUILD_DIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
runs=${2:-3}
ninja -C "$build" -j2 migration_bench >/dev/null
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for check in "" --trust-tracking; do  # the final all-pages check on, then off
  for rate in 0 12; do                # pages per ms: 0 = idle, 12 = ~50 MB/s
    "$build/bin/migration_bench" --memory-mib 256 --rate "$rate" --runs "$runs" $check 2>/dev/null >>"$out" || true
  done
done
python3 - "$out" <<'PY'
import json, sys, statistics
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bw = statistics.median(r["loopback_bytes_per_s"] for r in records if "loopback_bytes_per_s" in r)
runs = [r for r in records if "outcome" in r]
print(f"loopback TCP bandwidth (framed, 1 MiB frames): {bw/1e6:.0f} MB/s; 256 MiB over it: {256*2**20/bw*1000:.0f} ms")
print("| guest | final check | outcome | total ms | downtime ms | rounds | MB sent | pages missed by tracking | output continues | total / (1.5 x RAM/bw) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    guest = "idle" if r["rate_pages_per_ms"] == 0 else f"dirtying {r['dirty_mb_per_s_declared']:.0f} MB/s"
    goal = 1.5 * r["ram_bytes"] / bw * 1000
    dt = r["downtime_ms"]
    check = "all pages" if r["verify_all_pages"] else "trusts tracking"
    print(f"| {guest} | {check} | {r['outcome']} | {r['total_ms']:.0f} | {dt:.0f} | {r['rounds']} | {r['bytes_sent']/1e6:.1f} | "
          f"{r['pages_missed_by_tracking']} | {r['output_continues']} | {r['total_ms']/goal:.2f} |" if dt is not None else
          f"| {guest} | {check} | {r['outcome']} | {r['total_ms']:.0f} | - | {r['rounds']} | {r['bytes_sent']/1e6:.1f} | - | - | - |")
for r in runs:
    phases = ", ".join(f"{k} {v:.0f}" for k, v in r["downtime_phases_ms"].items())
    print(f"  {'idle' if r['rate_pages_per_ms'] == 0 else 'dirtying'}{'' if r['verify_all_pages'] else ' (trusts tracking)'} run {r['run']}: downtime phases (ms): {phases}")
PY
