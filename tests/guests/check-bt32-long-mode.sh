#!/bin/sh
# ctest driver: check-bt32-long-mode.sh MODEVISOR GUEST.elf EXPECTED.out
# (longmode and the lm64* guests: each prints "entering long mode" just before
# it activates long mode)
# The seed's BT32 with no hardware mode to switch to: the guest runs
# under bt-swmmu (BT32, on a host whose hardware virtualization is masked)
# until it activates long mode; then the VM must stop with the reason its
# policy gives (default: it would continue under BT64, which is not
# implemented yet; esx-4.0: the seed's reason, BT64 could not virtualize the
# 64-bit architecture efficiently), with modevisor's monitor-failed status
# (4), never a crash, and the guest's output up to that point must be QEMU's.
set -u
modevisor=$1 elf=$(cd "$(dirname "$2")" && pwd)/$(basename "$2") expected=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/vm.yaml" <<YAML
name: longmode
guest:
  os: other-32
  kernel: $elf
memory: 128MiB
cpu_model: kvm64
YAML
# QEMU's transcript up to the long-mode switch.
sed -n '1,/^entering long mode$/p' "$expected" >"$work/expected-32"
rc=0
for policy in default esx-4.0; do
  cat >"$work/host-$policy.yaml" <<YAML
name: no-hardware
plugin_dirs:
  - \${MODEVISOR_PLUGIN_DIR}
policy: $policy
mask:
  - hardware_virtualization
YAML
  "$modevisor" --host-config "$work/host-$policy.yaml" --log-dir "$work/logs-$policy" run "$work/vm.yaml" \
    >"$work/out-$policy" 2>"$work/err-$policy"
  status=$?
  log=$work/logs-$policy/longmode.log
  case $policy in
    default) want='continues under BT64, which is not implemented yet' ;;
    esx-4.0) want='BT64 could not virtualize the 64-bit architecture efficiently' ;;
  esac
  echo "--- policy $policy: exit status $status"
  grep -E 'MONITOR MODE: (selected|guest entered|switch)' "$log" 2>/dev/null
  cat "$work/err-$policy"
  if [ "$status" -ne 4 ]; then
    echo "FAILED: policy $policy: exit status $status, expected 4 (monitor failed, with the reason)"; rc=1
  fi
  if ! grep -Eq 'MONITOR MODE: selected +: BT(32)? \(bt-swmmu' "$log"; then
    echo "FAILED: policy $policy: the VM did not start under BT"; rc=1
  fi
  if ! grep -q "MONITOR MODE: switch  *: none, the VM stops under BT32: .*$want" "$log"; then
    echo "FAILED: policy $policy: no switch line with '$want' in the VM log"; rc=1
  fi
  if ! grep -q "$want" "$work/err-$policy"; then
    echo "FAILED: policy $policy: stderr does not say '$want'"; rc=1
  fi
  if ! diff -u "$work/expected-32" "$work/out-$policy"; then
    echo "FAILED: policy $policy: the output before long mode differs from QEMU's"; rc=1
  fi
done
exit $rc
