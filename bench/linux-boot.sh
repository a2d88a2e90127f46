#!/bin/bash
# Linux boot to the busybox prompt: bt-swmmu (hardware virtualization
# masked: BT32 runs the decompressor, BT64 the kernel and busybox) against
# QEMU TCG (qemu-system-x86_64, one vCPU, same kernel, initramfs, memory and
# command line), in the same run, best of K.  Wall-clock seconds from start to
# the first "modevisor:/# " on the serial console; each run is then ended.
# Not a test: nothing is asserted about the times; a run that never reaches
# the prompt prints FAIL and makes the exit status 1.
#   usage: bench/linux-boot.sh [K] [TIMEOUT_S]      (BUILD_DIR, QEMU override)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
k=${1:-1} limit=${2:-600}
qemu=${QEMU:-qemu-system-x86_64}
guests=$build/guests
kernel=$guests/linux-vmlinuz initrd=$guests/busybox-initramfs.cpio.gz
[ -e "$kernel" ] && [ -f "$initrd" ] || { echo "FAIL: the Linux guest is not built ($guests)"; exit 1; }
vm=$root/configs/vms/linux-busybox.yaml
cmdline=$(sed -n 's/^ *cmdline: *//p' "$vm")
memory=$(sed -n 's/^memory: *\([0-9]*\)MiB.*/\1/p' "$vm")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'name: no-hardware\nplugin_dirs:\n  - %s\nmask:\n  - hardware_virtualization\n' "$build/plugins" >"$work/host.yaml"

# time_to_prompt NAME COMMAND...: seconds until the prompt, or "" (timeout).
time_to_prompt() {
  local name=$1; shift
  local out=$work/$name.out
  : >"$out"
  local start; start=$(date +%s.%N)
  "$@" </dev/null >"$out" 2>&1 &
  local pid=$! t=""
  local deadline=$((SECONDS + limit))
  while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do
    if grep -qF "modevisor:/# " "$out"; then
      t=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
      break
    fi
    sleep 0.1
  done
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  echo "$t"
}

best() { printf '%s\n' "$@" | grep . | sort -g | head -1; }
declare -a bt=() tcg=()
status=0
for i in $(seq "$k"); do
  t=$(MODEVISOR_GUEST_DIR=$guests time_to_prompt bt "$build/bin/modevisor" --host-config "$work/host.yaml" \
        --log-dir "$work/logs" run "$vm")
  [ -n "$t" ] || { echo "FAIL: bt-swmmu did not reach the prompt in ${limit}s"; tail -5 "$work/bt.out"; status=1; }
  bt+=("$t")
  t=$(time_to_prompt tcg "$qemu" -accel tcg -machine pc -cpu qemu64 -m "$memory" -smp 1 -display none \
        -no-reboot -serial stdio -monitor none -kernel "$kernel" -initrd "$initrd" -append "$cmdline")
  [ -n "$t" ] || { echo "FAIL: QEMU TCG did not reach the prompt in ${limit}s"; tail -5 "$work/tcg.out"; status=1; }
  tcg+=("$t")
  echo "run $i: bt-swmmu ${bt[-1]:-FAIL} s, QEMU TCG ${tcg[-1]:-FAIL} s"
done
b=$(best "${bt[@]}") q=$(best "${tcg[@]}")
echo "Linux $(basename "$(readlink -f "$kernel")") to the busybox prompt, best of $k, $(date -u +%F) on $(hostname):"
printf '  bt-swmmu (BT32 -> BT64)  %8s s\n  QEMU TCG (x86_64)        %8s s\n' "${b:-FAIL}" "${q:-FAIL}"
[ -n "$b" ] && [ -n "$q" ] && awk -v b="$b" -v q="$q" 'BEGIN { printf "  bt-swmmu / TCG time      %8.2f\n", b / q }'
exit $status
