#!/bin/bash
# ctest "kvm_nested_host" (label kvm): run the KVM integration tests where KVM
# is real, then boot every guest of tests/guests with `modevisor run` under the
# HV plugin that KVM allows and compare with QEMU (run-guests-under-hv.sh),
# start the longmode guest under BT32 and switch it to that plugin when it
# enters long mode (run-bt32-switch.sh, the seed's BT32),
# check `explain` and run every example VM (run-example-vms.sh),
# then boot Debian's kernel with a busybox initramfs to its shell prompt and
# run a command over the serial console (run-linux.sh), with 1 vCPU
# and with 2 (linux-busybox-smp: the kernel starts its second CPU).
#   - /dev/kvm on this machine usable (per `modevisor host`): run them here.
#   - otherwise: build the KVM test host (scripts/kvm-host: QEMU TCG, AMD EPYC
#     with SVM, Debian's kernel and kvm_amd) and run them inside it, with
#     kvm_amd npt=1 (hv-hwmmu) and then npt=0 (hv-swmmu).  Special files
#     (the Linux console's FIFO) go to TMPDIR, which must be the test host's
#     own tmpfs: the 9p work share of some hosts has no FIFOs.
# Exit 77 (ctest SKIP_RETURN_CODE) with the reason when neither is possible
# (or the test host itself hangs: QEMU's timeout); tests that skip inside the
# test host count as failures (MODEVISOR_KVM_REQUIRED), and so does a test
# binary that hangs inside it (timeout 150 there, exit 124).
#   usage: run-kvm-tests.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
BUILD=$(cd "$1" && pwd); SRC=$(cd "$2" && pwd)
TESTS=$BUILD/bin/test_kvm_guests
skip() { echo "SKIPPED: $*"; exit 77; }
[ -x "$TESTS" ] || { echo "no $TESTS"; exit 1; }

usable=$("$BUILD/bin/modevisor" --json host 2>/dev/null |
         python3 -c 'import json,sys; d=json.load(sys.stdin)["driver"]; print("yes" if d["usable"] else "no: " + d["name"] + ": " + d["detail"])' 2>&1)
if [ "$usable" = yes ]; then
  echo "this machine's /dev/kvm is usable: running the KVM tests here"
  MODEVISOR_KVM_REQUIRED=1 "$TESTS" --gtest_color=no || exit 1
  "$SRC/tests/kvm/run-guests-under-hv.sh" "$BUILD" "$SRC" || exit 1
  "$SRC/tests/kvm/run-bt32-switch.sh" "$BUILD" "$SRC" || exit 1
  "$SRC/tests/kvm/run-example-vms.sh" "$BUILD" "$SRC" || exit 1
  "$SRC/tests/guests/run-linux.sh" "$BUILD" "$SRC" || exit 1
  "$SRC/tests/guests/run-linux.sh" "$BUILD" "$SRC" 420 linux-busybox-smp poweroff
  exit $?
fi
echo "this machine's KVM is not usable ($usable); using the nested-SVM test host"

command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 to boot the KVM test host (apt-get install qemu-system-x86)"
OUT=$BUILD/kvm-host
if ! "$SRC/scripts/kvm-host/build.sh" "$OUT" 2>&1; then
  skip "the KVM test host cannot be built (see above; scripts/setup.sh installs linux-image-amd64, busybox-static, cpio)"
fi

start=$(date +%s)
NPTS="1 0" "$SRC/scripts/kvm-host/run.sh" -o "$OUT" -w "$OUT/work" -t "${KVM_HOST_TIMEOUT:-1500}" -- \
  sh -c "stat -f -c 'test host: TMPDIR %n is %T' \"\$TMPDIR\"; [ \"\$(stat -f -c %T \"\$TMPDIR\")\" = tmpfs ] || { echo 'FAIL: TMPDIR is not on the test host tmpfs'; exit 1; }; '$BUILD/bin/modevisor' plugins; MODEVISOR_KVM_REQUIRED=1 MODEVISOR_KVM_HANDOFF_DIR=$OUT/work timeout 150 '$TESTS' --gtest_color=no && timeout 600 '$SRC/tests/kvm/run-guests-under-hv.sh' '$BUILD' '$SRC' && timeout 240 '$SRC/tests/kvm/run-bt32-switch.sh' '$BUILD' '$SRC' && timeout 300 '$SRC/tests/kvm/run-example-vms.sh' '$BUILD' '$SRC' && timeout 480 '$SRC/tests/guests/run-linux.sh' '$BUILD' '$SRC' 420 && timeout 480 '$SRC/tests/guests/run-linux.sh' '$BUILD' '$SRC' 420 linux-busybox-smp poweroff"
rc=$?
echo "test host: $(( $(date +%s) - start ))s wall"
case $rc in
  0) exit 0 ;;
  2) skip "the KVM test host did not boot or did not report back (see above)" ;;
  *) exit 1 ;;
esac
