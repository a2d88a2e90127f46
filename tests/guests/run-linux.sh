#!/bin/bash
# Boot the Linux guest VM (configs/vms/linux-busybox.yaml: Debian's kernel,
# busybox initramfs; or another VM of configs/vms, e.g. linux-busybox-smp
# with 2 vCPUs) with `modevisor run`, under the mode the selection picks on
# this host (an HV plugin in the KVM test host; bt-swmmu's BT64 where there
# is no hardware virtualization: ctest linux_busybox_bt), wait
# for its shell prompt on the serial console, type a command and check its
# answer and that the kernel has as many CPUs online as the VM has vCPUs,
# then end it and require the VM to stop with status 0 and the reason:
#   reboot   `reboot -f`: the 8042 reset pulse, reason "reset"
#   poweroff `poweroff -f`: without ACPI the kernel halts every CPU with
#            interrupts off, so nothing can wake the VM: reason "halted"
# Prints the console transcript and the exit counters.
# EXPECT_MODE (e.g. BT): the selected mode must start with it.
#   usage: run-linux.sh BUILD_DIR SOURCE_DIR [BOOT_TIMEOUT_S] [VM_NAME] [reboot|poweroff] [EXPECT_MODE]
set -u
build=$1 src=$2 boot_timeout=${3:-240} vm=${4:-linux-busybox} ending=${5:-reboot} expect_mode=${6:-}
case $ending in
  reboot) reason=reset ;;
  poweroff) reason=halted ;;
  *) echo "usage: run-linux.sh BUILD SRC [TIMEOUT] [VM] [reboot|poweroff]"; exit 2 ;;
esac
vcpus=$(sed -n 's/^vcpus: *\([0-9]*\).*/\1/p' "$src/configs/vms/$vm.yaml")
vcpus=${vcpus:-1}
[ "$vcpus" -gt 1 ] && online="0-$((vcpus - 1))" || online=0
export MODEVISOR_GUEST_DIR=$build/guests
[ -f "$build/guests/busybox-initramfs.cpio.gz" ] && [ -e "$build/guests/linux-vmlinuz" ] || {
  echo "FAIL linux: the Linux guest is not built (needs linux-image-amd64 and busybox-static; see tests/guests/linux)"
  exit 1
}
# The serial console's input is a FIFO, which needs a filesystem that has
# FIFOs: TMPDIR (the KVM test host keeps it on its own tmpfs; a 9p share may
# refuse them), else /dev/shm.  Logs and transcripts are plain files beside it.
pid=""
work=$(mktemp -d)
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
if ! mkfifo "$work/console" 2>"$work/mkfifo.err"; then
  echo "note: no FIFO in $work ($(stat -f -c %T "$work" 2>/dev/null): $(cat "$work/mkfifo.err")); trying /dev/shm"
  rm -rf "$work"
  work=$(mktemp -d -p /dev/shm 2>/dev/null) && mkfifo "$work/console" ||
    { echo "FAIL linux: cannot create the console FIFO in TMPDIR (${TMPDIR:-/tmp}) nor in /dev/shm"; exit 1; }
fi
# BT expected: hardware virtualization masked, as on a host without it.
host_config=()
if [ "$expect_mode" = BT ]; then
  printf 'name: no-hardware\nplugin_dirs:\n  - %s\nmask:\n  - hardware_virtualization\n' \
    "${MODEVISOR_PLUGIN_DIR:-$build/plugins}" >"$work/host.yaml"
  host_config=(--host-config "$work/host.yaml")
fi
"$build/bin/modevisor" "${host_config[@]}" --log-dir "$work/logs" run --stats "$src/configs/vms/$vm.yaml" \
  <"$work/console" >"$work/out" 2>"$work/err" &
pid=$!
exec 3>"$work/console"

# wait_for TEXT SECONDS: until the console shows TEXT (or the VM dies).
# (Wall-clock deadline: under an emulated host each poll itself is slow.)
wait_for() {
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    grep -qF -- "$1" "$work/out" && return 0
    kill -0 $pid 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
fail() {
  echo "FAIL linux: $*"
  echo "--- console"; cat "$work/out"; echo "--- stderr"; cat "$work/err"
  echo "--- VM log (tail)"; tail -20 "$work/logs/$vm.log" 2>/dev/null
  exit 1
}

start=$(date +%s)
wait_for "modevisor:/# " "$boot_timeout" || fail "no shell prompt within ${boot_timeout}s"
booted=$(( $(date +%s) - start ))
# The answer is computed by the guest's shell, so it cannot be the echo of the command line.
printf 'echo "answer: $((6 * 7)) from $(uname -s) on $(uname -m)"\n' >&3
wait_for "answer: 42 from Linux on x86_64" 180 || fail "the command sent over the serial console did not answer"
printf 'echo "cpus online: $(cat /sys/devices/system/cpu/online)."\n' >&3
wait_for "cpus online: $online." 180 || fail "the kernel does not have CPUs $online online (the VM has $vcpus vCPUs)"
if grep -q "^cpu_model: kvm64" "$src/configs/vms/$vm.yaml"; then
  printf 'echo "cpu: $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2)."\n' >&3
  wait_for "cpu:  Common KVM processor." 60 || fail "the kernel does not see the VM's CPU model (kvm64)"
fi
printf '%s -f\n' "$ending" >&3
deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
kill -0 $pid 2>/dev/null && fail "the VM did not stop after $ending -f"
wait $pid; status=$?
exec 3>&-
mode=$(sed -n 's/.*MONITOR MODE: selected *: //p' "$work/logs/$vm.log" | tail -1)
cat "$work/out"
echo "--- modevisor: $mode; prompt after ${booted}s; exit status $status"
grep -E "kvm.exits|kvm.exit.(io|mmio|hlt)|interrupts_(injected|held)|^ *ipi |bt64\\.(dispatches|blocks_translated|monitor_steps)" "$work/err" | head -20
grep -E "vCPU [0-9]+: (INIT|STARTUP)" "$work/logs/$vm.log" | sed 's/.*| //' 
case "$mode" in "$expect_mode"*) ;; *) fail "selected mode '$mode', expected $expect_mode" ;; esac
[ "$status" = 0 ] || fail "exit status $status after $ending -f (expected 0)"
grep -q "power off: stopped ($reason" "$work/logs/$vm.log" || fail "the VM log does not give the reason '$reason'"
echo "PASS $vm under $mode ($vcpus vCPU$([ "$vcpus" -gt 1 ] && echo s), CPUs $online online)"
