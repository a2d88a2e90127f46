#!/bin/sh
# ctest driver: check-modevisor.sh MODEVISOR PLUGIN GUEST.elf EXPECTED.out [cmdline] [cpus]
# Boots the guest with `modevisor run` (a VM declared on the fly, with `cpus`
# vCPUs, default 1, and the hints that select PLUGIN) and passes iff its
# serial output equals
# EXPECTED.out (recorded from QEMU, the oracle) exactly, modevisor returns 1
# (guest exit code 0, QEMU's convention), and PLUGIN is the one that ran it.
# Exit 77 (skipped) when this host cannot run PLUGIN (or this VM), saying why
# (the selection's "not allowed" line for PLUGIN's mode); also for a
# guest listed in MODEVISOR_KNOWN_GAPS ("plugin:guest=reason;..."), whose
# reason is printed.
set -u
modevisor=$1 plugin=$2 elf=$3 expected=$4 cmdline=${5:-} cpus=${6:-1}
guest=$(basename "$elf" .elf)
case ";${MODEVISOR_KNOWN_GAPS:-};" in
  *";$plugin:$guest="*)
    reason=$(printf '%s\n' "${MODEVISOR_KNOWN_GAPS}" | tr ';' '\n' | sed -n "s/^$plugin:$guest=//p")
    echo "SKIPPED: known gap of $plugin with $guest: $reason"
    exit 77 ;;
esac
case $plugin in
  bt-swmmu) exec_hint=software mmu_hint=software mode='BT(32)?' ;;
  hv-swmmu) exec_hint=hardware mmu_hint=software mode=HV ;;
  hv-hwmmu) exec_hint=hardware mmu_hint=hardware mode=HWMMU ;;
  *) echo "FAILED: unknown plugin $plugin"; exit 1 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/vm.yaml" <<YAML
name: $guest
guest:
  os: other-32
  kernel: $elf
  cmdline: "$cmdline"
memory: 128MiB
vcpus: $cpus
monitor:
  virtual_exec: $exec_hint
  virtual_mmu: $mmu_hint
YAML
"$modevisor" --log-dir "$work/logs" run "$work/vm.yaml" >"$work/out" 2>"$work/err"
status=$?
selected=$(sed -n 's/.*MONITOR MODE: selected *: //p' "$work/logs/$guest.log" 2>/dev/null | tail -1)
case $selected in
  *"($plugin "*) ;;
  *) why=$(grep -E "MONITOR MODE: not allowed +: $mode " "$work/logs/$guest.log" 2>/dev/null | tail -1 | sed 's/.*MONITOR MODE: //')
     echo "SKIPPED: this host does not run $plugin for this VM ($cpus vCPUs; selected: ${selected:-nothing})${why:+; $why}; $(cat "$work/err")"
     exit 77 ;;
esac
cat "$work/out"
rc=0
if ! diff -u "$expected" "$work/out" >/dev/null; then
  echo "FAILED: serial output under $plugin differs from QEMU's ($expected):"
  diff -u "$expected" "$work/out"
  rc=1
fi
if [ "$status" -ne 1 ]; then
  echo "FAILED: modevisor exit status $status, expected 1 (guest exit code 0); stderr:"
  cat "$work/err"
  grep -E 'power off|error' "$work/logs/$guest.log" | tail -5
  rc=1
fi
exit $rc
