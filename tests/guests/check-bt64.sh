#!/bin/sh
# ctest driver: check-bt64.sh MODEVISOR GUEST.elf EXPECTED.out
# (longmode and the lm64* guests: each prints "entering long mode" just before
# it activates long mode)
# The seed's BT32 with no hardware mode to switch to (hardware
# virtualization masked): the guest starts under bt-swmmu's BT32 and
# activates long mode; then
#  - policy default: it continues under BT64 (the same plugin, software
#    address checks), with a "switch: BT32 -> BT64" line, and its whole
#    output must be QEMU's (qemu-system-x86_64), guest exit status 0;
#  - policy esx-4.0: the VM stops with the seed's reason (BT64 only where
#    long mode keeps segment limits; this CPU has none), modevisor's
#    monitor-failed status (4), and the output up to long mode is QEMU's.
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
  echo "--- policy $policy: exit status $status"
  grep -E 'MONITOR MODE: (selected|guest entered|switch)' "$log" 2>/dev/null
  cat "$work/err-$policy"
  if ! grep -Eq 'MONITOR MODE: selected +: BT(32)? \(bt-swmmu' "$log"; then
    echo "FAILED: policy $policy: the VM did not start under BT"; rc=1
  fi
  case $policy in
    default)
      if [ "$status" -ne 1 ]; then
        echo "FAILED: policy default: exit status $status, expected 1 (guest exit code 0)"; rc=1
      fi
      if ! grep -q "MONITOR MODE: switch  *: BT32 -> BT64 (bt-swmmu .*continues under BT64" "$log"; then
        echo "FAILED: policy default: no 'BT32 -> BT64' switch line in the VM log"; rc=1
      fi
      if ! diff -u "$expected" "$work/out-$policy"; then
        echo "FAILED: policy default: the output differs from QEMU's"; rc=1
      fi
      ;;
    esx-4.0)
      want='BT64 could not virtualize the 64-bit architecture efficiently'
      if [ "$status" -ne 4 ]; then
        echo "FAILED: policy esx-4.0: exit status $status, expected 4 (monitor failed, with the reason)"; rc=1
      fi
      if ! grep -q "MONITOR MODE: switch  *: none, the VM stops under BT32: .*$want" "$log"; then
        echo "FAILED: policy esx-4.0: no switch line with '$want' in the VM log"; rc=1
      fi
      if ! diff -u "$work/expected-32" "$work/out-$policy"; then
        echo "FAILED: policy esx-4.0: the output before long mode differs from QEMU's"; rc=1
      fi
      ;;
  esac
done
exit $rc
