#!/bin/sh
# QEMU oracle: run-qemu.sh GUEST.elf [cmdline] [cpus]
# Runs the guest under qemu-system-i386 (TCG) with `cpus` CPUs (-smp,
# default 1), serial output on stdout,
# exits with QEMU's exit status: (guest_code << 1) | 1 via isa-debug-exit,
# 124 on timeout (GUEST_TIMEOUT seconds, default 60).  The CPU model is
# qemu32 with NX (modevisor's monitors offer 32-bit guests NX, as PAE
# kernels expect; QEMU_CPU overrides it).  Extra QEMU options can be given in
# QEMU_EXTRA_ARGS (word-split).
#
# QEMU passes "<kernel path> <-append string>" as the multiboot cmdline, so we
# run from the ELF's directory with a bare file name: the guest then sees
# "<name>.elf <cmdline>" independent of the build directory.
set -u
if [ $# -lt 1 ]; then
  echo "usage: $0 GUEST.elf [cmdline] [cpus]" >&2
  exit 2
fi
QEMU=${QEMU:-qemu-system-i386}
elf=$1
cmdline=${2:-}
cpus=${3:-1}
dir=$(cd "$(dirname "$elf")" && pwd)
base=$(basename "$elf")
cd "$dir" || exit 2
exec timeout "${GUEST_TIMEOUT:-60}" "$QEMU" -accel tcg -machine pc -m 128 -display none -no-reboot \
  -cpu "${QEMU_CPU:-qemu32,+nx}" -smp "$cpus" -serial stdio -monitor none -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  ${QEMU_EXTRA_ARGS:-} -kernel "$base" -append "$cmdline" </dev/null
