#!/bin/bash
# A fleet of three modevisord hosts on etcd, all on this machine: a real
# three-member etcd on loopback ports (Debian's etcd-server), the hosts
# registered under leases, a VM's ownership record moving with it, a start
# refused where another host owns the VM, `migrate --to auto` choosing a host
# and saying why, and a host whose daemon stops answering: its VM pauses by
# itself before its record can expire.  Usage: scripts/demo-fleet.sh [BUILD_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
bin=$build/bin
. "$root/scripts/lib/migration-host.sh"
command -v etcd >/dev/null || { echo "skipped: etcd is not installed (scripts/setup.sh installs etcd-server)"; exit 0; }
work=$(mktemp -d /tmp/modevisor-fleet-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a three-member etcd on loopback"
members=(m1 m2 m3); client=(); peer=(); cluster=""
for i in 0 1 2; do client[$i]=$(free_port); peer[$i]=$(free_port); done
for i in 0 1 2; do cluster+="${cluster:+,}${members[$i]}=http://127.0.0.1:${peer[$i]}"; done
for i in 0 1 2; do
  etcd --name "${members[$i]}" --data-dir "$work/etcd-${members[$i]}" \
    --listen-client-urls "http://127.0.0.1:${client[$i]}" --advertise-client-urls "http://127.0.0.1:${client[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peer[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-state new > "$work/etcd-${members[$i]}.log" 2>&1 &
  pids+=($!)
done
endpoints="127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"
echo "members: $endpoints"

new_cluster_secret "$work/cluster.secret"
for h in a b c; do
  mkdir -p "$work/$h"
  cat > "$work/$h/host.yaml" <<YAML
name: host-$h
control_socket: $work/$h/control.sock
state_dir: $work/$h/state
log_dir: $work/$h/logs
plugin_dirs: [$build/plugins]
migration:
  listen: 127.0.0.1:$(free_port)
  secret_file: $work/cluster.secret
fleet:
  etcd: [${endpoints//,/, }]
  prefix: /demo
  lease_ttl: 4
YAML
done
fleet() { "$bin/modevisor" --etcd "$endpoints" --etcd-prefix /demo "$@"; }
on() { local h=$1; shift; "$bin/modevisor" --socket "$work/$h/control.sock" "$@"; }
for _ in $(seq 100); do fleet hosts >/dev/null 2>&1 && break; sleep 0.2; done
for h in a b c; do
  "$bin/modevisord" --config "$work/$h/host.yaml" > "$work/$h/daemon.out" 2>&1 &
  pids+=($!)
  eval "daemon_$h=$!"
done
for _ in $(seq 150); do [ "$(fleet hosts 2>/dev/null | grep -c alive)" -ge 3 ] && break; sleep 0.2; done

step "modevisor --etcd ... hosts"
fleet hosts
write_ticker_vm_yaml "$work/ticker.yaml" "$build" 16 4 1
step "explain ticker.yaml --fleet (each host's selector, on what it published)"
fleet explain "$work/ticker.yaml" --fleet
step "host-a starts the VM; its ownership record"
on a vm start "$work/ticker.yaml" | grep -E '^(name|state|mode):'
fleet vm list --fleet
step "host-b may not start it: host-a owns it"
on b vm start "$work/ticker.yaml" || true
step "migrate ticker --to auto (from host-a)"
on a migrate ticker --to auto
fleet vm list --fleet
owner=$(fleet --json vm list --fleet | python3 -c 'import json,sys; print([v["owner"] for v in json.load(sys.stdin)["vms"] if v["vm"]=="ticker"][0])')
h=${owner#host-}
step "$owner's daemon stops answering (SIGSTOP): its monitor process pauses the VM before the lease can expire"
pid_var=daemon_$h; kill -STOP "${!pid_var}"
sleep 6
echo "run intervals on $owner (the VM's run ended by itself):"; cat "$work/$h/state/run-intervals.log"
for _ in $(seq 50); do fleet vm list --fleet | grep -q ticker || break; sleep 0.2; done
fleet vm list --fleet
kill -CONT "${!pid_var}"
sleep 1
echo "$owner wakes: its copy stays paused:"
on "$h" vm status ticker | grep -E '^(state|reason):'
