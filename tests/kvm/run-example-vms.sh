#!/bin/bash
# Inside a host with a usable /dev/kvm (the nested test host runs it with
# kvm_amd npt=1 and npt=0): what an operator sees there.
#  1. `explain` offers the hardware mode this KVM allows, says why the other
#     one is not offered (naming the module parameter), and selects as the
#     policy says: HWMMU with nested paging, HV with shadow paging.
#  2. `modevisor run` of every example VM in configs/vms (except the Linux
#     guests: run-linux.sh) uses the mode `explain` selected and
#     reaches the guest's PASS line (exit status 1, the guest's exit code 0),
#     or, when `explain` finds no mode, refuses with status 8 (no monitor mode; every host status is even, a guest's odd).
#   usage: run-example-vms.sh BUILD_DIR SOURCE_DIR
set -u
build=$1 src=$2
mv=$build/bin/modevisor
export MODEVISOR_GUEST_DIR=$build/guests
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
fail() { echo "FAIL $*"; failed=1; }

npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || cat /sys/module/kvm_intel/parameters/ept 2>/dev/null)
case $npt in
  1|Y|y) want=HWMMU other=HV param="npt=1\|ept=1" ;;
  *) want=HV other=HWMMU param="npt=0\|ept=0" ;;
esac

"$mv" --log-dir "$work/logs" explain "$src/configs/vms/linux-64.yaml" >"$work/explain" 2>&1
cat "$work/explain"
grep -q "allowed modes *:.* $want\b" "$work/explain" || fail "explain: $want is not among the allowed modes"
grep -q "not allowed *: $other (.*\($param\)" "$work/explain" ||
  fail "explain: does not say $other is impossible because of the host-wide KVM MMU setting"
grep -q "selected *: $want " "$work/explain" || fail "explain: did not select $want for a 64-bit Linux VM"

for vm in "$src"/configs/vms/*.yaml; do
  name=$(basename "$vm" .yaml)
  case $name in linux-busybox*) continue ;; esac
  "$mv" --log-dir "$work/logs" explain "$vm" >"$work/$name.explain" 2>&1
  explain_status=$?
  expected=$(sed -n 's/.*MONITOR MODE: selected *: //p' "$work/$name.explain" | tail -1)
  timeout 120 "$mv" --log-dir "$work/logs" run "$vm" </dev/null >"$work/$name.out" 2>&1
  status=$?
  used=$(sed -n 's/.*MONITOR MODE: selected *: //p' "$work/logs/$name.log" | tail -1)
  if [ "$explain_status" = 8 ]; then
    [ "$status" = 8 ] && echo "PASS $name: no mode on this host, as explain says" ||
      fail "$name: explain finds no mode, run exited $status"
    continue
  fi
  vcpus=$(sed -n 's/^vcpus: *\([0-9]*\).*/\1/p' "$vm"); vcpus=${vcpus:-1}
  if [ "$vcpus" -gt 1 ] && ! grep -q "vCPUs: $vcpus; vCPU 0 (the BSP) runs the kernel" "$work/logs/$name.log"; then
    fail "$name: the log does not name its $vcpus vCPUs"
  elif [ "$status" = 1 ] && [ "$used" = "$expected" ] && grep -q "RESULT: PASS" "$work/$name.out"; then
    echo "PASS $name under $used ($vcpus vCPUs)"
  else
    fail "$name: run exited $status under '${used:-nothing}' (explain selected '$expected')"
    tail -5 "$work/$name.out"
    grep -E "power off|error|refused" "$work/logs/$name.log" | tail -3
  fi
done
# The CPU model travels with the VM: portable-32's guest must see the same
# CPUID under this host's HV plugin as under BT (it checks the model), and,
# to show the check can fail, not with the VM's `cpu_model: host`.
case $want in HWMMU) mmu=hardware ;; *) mmu=software ;; esac
for model in portable-32 host; do
  sed "s/^cpu_model:.*/cpu_model: $model/" "$src/configs/vms/portable-32.yaml" >"$work/cpu-$model.yaml"
  printf 'monitor:\n  virtual_exec: hardware\n  virtual_mmu: %s\n' "$mmu" >>"$work/cpu-$model.yaml"
  timeout 60 "$mv" --log-dir "$work/logs-$model" run "$work/cpu-$model.yaml" </dev/null >"$work/cpu-$model.out" 2>&1
  status=$?
  used=$(sed -n 's/.*MONITOR MODE: selected *: //p' "$work/logs-$model/portable-32.log" | tail -1)
  grep -q "^RESULT: FAIL" "$work/cpu-$model.out" && guest=fail || guest=pass
  case "$model:$status:$guest:$used" in
    "portable-32:1:pass:$want "*) echo "PASS cpu_model portable-32 under $used: $(grep '^cpuid 0x1:' "$work/cpu-$model.out")" ;;
    "host:"*":fail:$want "*) echo "PASS cpu_model host under $used: the guest sees this host's CPU ($(grep '^cpuid 0x0:' "$work/cpu-$model.out"))" ;;
    *) fail "cpu_model $model: exit $status under '${used:-nothing}'"; cat "$work/cpu-$model.out" ;;
  esac
done

# A guest that triple-faults stops with status 6 and a register dump in its
# log, and the next VM on this host runs normally.
cat >"$work/triple.yaml" <<YAML
name: triple
guest:
  os: other-32
  kernel: $build/guests/triple.elf
memory: 16MiB
YAML
timeout 60 "$mv" --log-dir "$work/logs" run "$work/triple.yaml" </dev/null >"$work/triple.out" 2>&1
status=$?
if [ "$status" = 6 ] && grep -q "power off: shutdown" "$work/logs/triple.log" && grep -qE "(RIP|rip|EIP|eip)=" "$work/logs/triple.log"; then
  echo "PASS triple: exit 6 under $(sed -n 's/.*MONITOR MODE: selected *: //p' "$work/logs/triple.log" | tail -1), register dump in the log"
else
  fail "triple: exit $status"; tail -5 "$work/logs/triple.log"
fi
timeout 60 "$mv" --log-dir "$work/logs" run "$src/configs/vms/hello-32.yaml" </dev/null >"$work/after.out" 2>&1
[ $? = 1 ] && echo "PASS the next VM after the triple fault runs" || fail "the VM after the triple fault did not run"
exit $failed
