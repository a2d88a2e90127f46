#!/bin/bash
# Host B of the cross-mode migration, run inside the KVM test host (by
# run-cross-mode-migration.sh through scripts/kvm-host/run.sh, cwd = the work
# dir on the 9p share, TMPDIR on the test host's tmpfs).  A modevisord that
# listens on 0.0.0.0:PORT_B (QEMU's hostfwd brings this machine's
# 127.0.0.1:PORT_B here) and knows host-a at 10.0.2.2:PORT_A (slirp's
# address for this machine's loopback).  It waits for VM NAME to arrive, lets
# it run, saves its console, log and status into the work dir, and migrates it
# back to host-a.  The files it writes (b-*) are what the outer side checks.
#   usage: cross-mode-host-b.sh BUILD_DIR WORK_DIR PORT_B PORT_A NAME [TICKS]
set -uo pipefail
BUILD=$1; W=$2; PORT_B=$3; PORT_A=$4; NAME=$5; TICKS=${6:-20}
bin=$BUILD/bin
. "$(dirname "$0")/../../scripts/lib/migration-host.sh"
d=${TMPDIR:-/tmp}/host-b
mkdir -p "$d"
say() { echo "host-b: $*"; }
fail() { say "FAIL: $*"; echo "$*" > "$W/b-failed"; exit 1; }

# The secret may not keep its owner-only bits on the 9p share: a private copy.
cp "$W/cluster.secret" "$d/cluster.secret" && chmod 600 "$d/cluster.secret" || fail "no cluster secret in $W"
write_migration_host_yaml "$d" host-b "0.0.0.0:$PORT_B" "$d/cluster.secret" "$BUILD/plugins" host-a "10.0.2.2:$PORT_A"
{ ip -4 addr 2>&1 || ifconfig 2>&1; ip route 2>&1 || route -n 2>&1; } > "$W/b-network.txt"
"$bin/modevisord" --config "$d/host.yaml" > "$W/b-daemon.out" 2>&1 &
daemon=$!
stop_daemon() { kill -TERM "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; }
trap stop_daemon EXIT
b() { "$bin/modevisor" --socket "$d/control.sock" "$@"; }
# Polls until "$@" succeeds, for at most $1 seconds.
within() {
  local limit=$1; shift
  local end=$(( $(date +%s) + limit ))
  until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.5; done
}
within 120 b host >/dev/null 2>&1 || fail "modevisord did not come up: $(tail -5 "$W/b-daemon.out")"
b host > "$W/b-host.txt" 2>&1
b plugins >> "$W/b-host.txt" 2>&1
say "daemon up, migration listener on 0.0.0.0:$PORT_B, peer host-a at 10.0.2.2:$PORT_A"
touch "$W/b-ready"

running() { [ "$(b --json vm status "$NAME" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("state",""))' 2>/dev/null)" = running ]; }
within 600 running || fail "VM $NAME did not arrive (daemon: $(tail -5 "$W/b-daemon.out"))"
say "VM $NAME arrived and runs"
ticks() { [ "$(b vm console --no-follow "$NAME" 2>/dev/null | grep -c '^tick ')" -ge "$TICKS" ]; }
within 300 ticks || say "fewer than $TICKS tick lines after 300 s; migrating back anyway"
b --json vm status "$NAME" > "$W/b-status.json" 2>&1

b --json migrate "$NAME" --to host-a > "$W/b-migrate.json" 2> "$W/b-migrate.err"
rc=$?
say "migrate $NAME --to host-a: exit status $rc"
b vm console --no-follow "$NAME" > "$W/b-console.txt" 2>&1
b vm log "$NAME" > "$W/b-log.txt" 2>&1
b --json vm status "$NAME" > "$W/b-status-after.json" 2>&1
cp "$d/state/run-intervals.log" "$W/b-run-intervals.log" 2>/dev/null
exit $rc
