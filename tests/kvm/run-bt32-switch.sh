#!/bin/sh
# Inside a host with a usable /dev/kvm: the seed's BT32 switch.  The longmode
# guest starts in 32-bit protected mode under BT32 (bt-swmmu) and, when it
# activates long mode, the VM continues under the hardware mode the selection
# made again for the 64-bit guest allows (hv-hwmmu with nested paging,
# hv-swmmu without), invisibly to the guest: its serial output must be
# QEMU's byte for byte, modevisor's status 1 (guest exit code 0), and the VM
# log must say BT32 (BT where the CPU keeps segment limits in long mode, as the
# test host's emulated EPYC does) at power-on and the switch to HWMMU/HV.  Twice: with
# the default policy (a virtual_exec: software hint makes it BT32) and with
# esx-4.0 (BT32 first for 32-bit guests without APIC virtualization).
#   usage: run-bt32-switch.sh BUILD_DIR SOURCE_DIR
set -u
build=$1 src=$2
expected=$src/tests/guests/expected/longmode.out
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || cat /sys/module/kvm_intel/parameters/ept 2>/dev/null)
case $npt in 1|Y|y) want=HWMMU plugin=hv-hwmmu ;; *) want=HV plugin=hv-swmmu ;; esac
failed=0
for policy in default esx-4.0; do
  hint=""
  [ "$policy" = default ] && hint="monitor:
  virtual_exec: software"
  cat >"$work/vm-$policy.yaml" <<YAML
name: longmode-$policy
guest:
  os: other-32
  kernel: $build/guests/longmode.elf
memory: 128MiB
cpu_model: kvm64
$hint
YAML
  timeout -k 5 "${GUEST_TIMEOUT:-120}" "$build/bin/modevisor" --log-dir "$work/logs" run --policy "$policy" --stats \
    "$work/vm-$policy.yaml" >"$work/out" 2>"$work/err"
  status=$?
  log=$work/logs/longmode-$policy.log
  fail() { echo "FAIL bt32-switch ($policy): $*"; failed=1; }
  grep -E 'MONITOR MODE: (selected|guest entered|switch)|mode switch:|power off|counter vm.mode_switches' "$log"
  grep -Eq "MONITOR MODE: selected +: BT(32)? \(bt-swmmu" "$log" || fail "the VM did not start under BT"
  grep -Eq "MONITOR MODE: switch +: BT(32)? -> $want \($plugin .*switches to hardware virtualization" "$log" ||
    fail "no 'switch : BT(32) -> $want ($plugin ...)' line in the VM log"
  grep -q "counter vm.mode_switches = 1" "$log" || fail "the VM's counters do not count one mode switch"
  if ! diff -u "$expected" "$work/out"; then fail "the serial output differs from QEMU's"; fi
  [ "$status" -eq 1 ] || { fail "modevisor exit status $status, expected 1 (guest exit code 0)"; cat "$work/err"; }
  from=$(sed -n 's/.*MONITOR MODE: switch *: \(BT[0-9]*\) -> .*/\1/p' "$log" | head -1)
  [ $failed -eq 0 ] && echo "PASS bt32-switch ($policy): $from -> $want ($plugin), output identical to QEMU's"
done
exit $failed
