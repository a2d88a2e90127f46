#!/bin/sh
# ctest driver: check-guest.sh GUEST.elf EXPECTED.out [cmdline] [cpus]
# Runs QEMU with `cpus` CPUs (default 1).  Passes iff the serial output equals EXPECTED.out exactly and QEMU exits
# with status 1 (guest exit code 0). Exit 77 (= skipped) without QEMU.
set -u
here=$(cd "$(dirname "$0")" && pwd)
elf=$1
expected=$2
cmdline=${3:-}
cpus=${4:-1}
if ! command -v "${QEMU:-qemu-system-i386}" >/dev/null 2>&1; then
  echo "SKIPPED: ${QEMU:-qemu-system-i386} not found in PATH"
  exit 77
fi
if [ ! -f "$elf" ]; then
  echo "FAILED: guest image $elf missing"
  exit 1
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$here/run-qemu.sh" "$elf" "$cmdline" "$cpus" >"$out" 2>&1
status=$?
cat "$out"
rc=0
if ! diff -u "$expected" "$out" >/dev/null; then
  echo "FAILED: serial output differs from $expected:"
  diff -u "$expected" "$out"
  rc=1
fi
if [ "$status" -ne 1 ]; then
  echo "FAILED: QEMU exit status $status, expected 1 (guest exit code 0)"
  rc=1
fi
exit $rc
