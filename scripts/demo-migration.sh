#!/bin/bash
# Live migration between two modevisord daemons on this machine: a VM prints
# "tick N" lines continuously, moves to host B and back to host A, and each
# host's VM log shows the MONITOR MODE lines its own selector wrote.  All
# traffic stays on loopback.  Part 2, where the KVM test host can be booted
# (scripts/kvm-host): the same kind of VM moves from bt-swmmu on this machine
# to hv-hwmmu inside that host and back, over QEMU's user-mode port
# forwarding (tests/kvm/run-cross-mode-migration.sh; a few minutes under TCG;
# SKIP_CROSS_MODE=1 leaves it out).  Usage: scripts/demo-migration.sh [BUILD_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
bin=$build/bin
. "$root/scripts/lib/migration-host.sh"
work=$(mktemp -d /tmp/modevisor-migration-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# The cluster's secret: the same file for both hosts, readable by its owner only.
new_cluster_secret "$work/cluster.secret"
port_a=$(free_port); port_b=$(free_port)
for h in a b; do
  mkdir -p "$work/$h"
  other=$([ $h = a ] && echo b || echo a)
  other_port=$([ $h = a ] && echo "$port_b" || echo "$port_a")
  my_port=$([ $h = a ] && echo "$port_a" || echo "$port_b")
  write_migration_host_yaml "$work/$h" "host-$h" "127.0.0.1:$my_port" "$work/cluster.secret" "$build/plugins" \
    "host-$other" "127.0.0.1:$other_port"
  "$bin/modevisord" --config "$work/$h/host.yaml" > "$work/$h/daemon.out" 2>&1 &
  pids+=($!)
done
a() { "$bin/modevisor" --socket "$work/a/control.sock" "$@"; }
b() { "$bin/modevisor" --socket "$work/b/control.sock" "$@"; }
for _ in $(seq 100); do a host >/dev/null 2>&1 && b host >/dev/null 2>&1 && break; sleep 0.1; done

write_ticker_vm_yaml "$work/ticker.yaml" "$build" 32 8 2

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "host A starts the VM"
a vm start "$work/ticker.yaml" | grep -E '^(name|state|mode|plugin):'
sleep 1.5
step "migrate ticker from host A to host B"
a migrate ticker --to host-b
step "vm list on A, then on B"
a vm list; b vm list
sleep 1.5
step "and back from B to A"
b migrate ticker --to host-a
sleep 1
step "host B's log of the VM (its own MONITOR MODE lines)"
b vm log ticker | grep -E 'MONITOR MODE|migration in|migration out' || true
step "host A's log of the VM"
a vm log ticker | grep -E 'MONITOR MODE|migration in|migration out' || true
step "the console, A then B then A again"
{ a vm console --no-follow ticker 2>/dev/null || true; } | head -c 100000 > "$work/console-a"
echo "A now: $(grep -c tick "$work/console-a") tick lines, last: $(grep tick "$work/console-a" | tail -1)"
step "when each host ran the VM (CLOCK_MONOTONIC ns)"
cat "$work/a/state/run-intervals.log" "$work/b/state/run-intervals.log" | sort -k4 -n
a vm stop ticker >/dev/null

step "part 2: across hosts and monitor modes (this machine <-> the KVM test host)"
if [ -n "${SKIP_CROSS_MODE:-}" ]; then
  echo "skipped: SKIP_CROSS_MODE is set"
  exit 0
fi
set +e
"$root/tests/kvm/run-cross-mode-migration.sh" "$build" "$root" | tee "$work/cross-mode.out"
rc=${PIPESTATUS[0]}
set -e
case $rc in
  0) echo "part 2 done: bt-swmmu -> hv-hwmmu -> bt-swmmu, output unbroken" ;;
  77) echo "part 2 skipped: $(grep -m1 '^SKIPPED: ' "$work/cross-mode.out" | cut -c10-)" ;;
  *) echo "part 2 FAILED (exit status $rc, see above)"; exit 1 ;;
esac
