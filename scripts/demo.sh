#!/usr/bin/env bash
# Set up (install, build) and show what modevisor does today.  First the main
# act: a running VM live-migrated between two host daemons and back, each host
# choosing its monitor mode (scripts/demo-migration.sh).  Then this host's
# capabilities and plugins, which monitor mode each example VM gets here and
# on the seed paper's CPUs under ESX 3.5 and ESX 4.0 rules, VMs run here, and
# the hardware modes inside the nested KVM test host.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
MV=build/bin/modevisor
export MODEVISOR_LOG_DIR=${MODEVISOR_LOG_DIR:-$(pwd)/build/demo-logs}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || printf '(exit status %d)\n' "$?"; }

say "Live migration: two host daemons on this machine, a VM moved from one to the other and back"
./scripts/demo-migration.sh build || printf '(the migration demo ended with exit status %d)\n' "$?"

say "A fleet on etcd: three host daemons, VM ownership moving with the VM, a silent host's VM paused by itself"
./scripts/demo-fleet.sh build || printf '(the fleet demo ended with exit status %d)\n' "$?"

say "This host"
run $MV --log-dir "$MODEVISOR_LOG_DIR" host
say "Installed mode plugins"
run $MV --log-dir "$MODEVISOR_LOG_DIR" plugins
say "CPU profiles shipped in configs/cpus"
run $MV --log-dir "$MODEVISOR_LOG_DIR" cpus

say "Example VMs on this host (policy: default)"
for vm in configs/vms/*.yaml; do run $MV --log-dir "$MODEVISOR_LOG_DIR" explain "$vm"; echo; done

say "The seed's examples (\"Choice of Monitor Mode\")"
run $MV --log-dir "$MODEVISOR_LOG_DIR" explain configs/vms/seed-linux-64.yaml --cpu amd-shanghai --policy esx-3.5; echo
run $MV --log-dir "$MODEVISOR_LOG_DIR" explain configs/vms/seed-linux-64.yaml --cpu intel-nehalem --policy esx-3.5; echo
run $MV --log-dir "$MODEVISOR_LOG_DIR" explain configs/vms/seed-linux-64.yaml --cpu amd-shanghai --policy esx-4.0; echo
run $MV --log-dir "$MODEVISOR_LOG_DIR" explain configs/vms/seed-linux-64.yaml --cpu amd-opteron-revf --policy esx-4.0; echo
run $MV --log-dir "$MODEVISOR_LOG_DIR" explain configs/vms/seed-linux-64.yaml --cpu intel-nehalem --policy esx-4.0; echo
run $MV --log-dir "$MODEVISOR_LOG_DIR" explain configs/vms/ft-64.yaml --cpu intel-nehalem --policy esx-4.0; echo
run $MV --log-dir "$MODEVISOR_LOG_DIR" explain configs/vms/bt-requested-32.yaml --cpu amd-shanghai --policy esx-4.0; echo

say "Running VMs on this host (each under the mode selected for it here)"
run $MV --log-dir "$MODEVISOR_LOG_DIR" run --stats configs/vms/hello-32.yaml
echo "VM log: $MODEVISOR_LOG_DIR/hello-32.log"
grep -E 'MONITOR MODE|loader|power' "$MODEVISOR_LOG_DIR/hello-32.log" | tail -9 || true
run $MV --log-dir "$MODEVISOR_LOG_DIR" run configs/vms/procs-32.yaml
echo "A VM that declares a CPU model (cpu_model: portable-32) sees the same CPUID under every mode:"
run $MV --log-dir "$MODEVISOR_LOG_DIR" run configs/vms/portable-32.yaml
run $MV --log-dir "$MODEVISOR_LOG_DIR" run configs/vms/linux-64.yaml

say "The hardware modes on a real KVM: the nested test host (QEMU TCG emulating an AMD EPYC with SVM)"
echo "This machine has no usable KVM (\`modevisor host\` says why), so the demo boots the test host of"
echo "scripts/kvm-host/ twice: kvm_amd npt=1 (nested paging: HWMMU) and npt=0 (shadow paging: HV)."
echo "In each, the selection for the Linux VM is explained, then Debian's kernel boots to a"
echo "busybox prompt, answers a command typed on its serial console, and is rebooted (about 2 minutes)."
ROOT=$(pwd)
if command -v qemu-system-x86_64 >/dev/null && scripts/kvm-host/build.sh "$ROOT/build/kvm-host" >/dev/null 2>&1; then
  mkdir -p "$ROOT/build/kvm-host/demo"
  run scripts/kvm-host/run.sh -o "$ROOT/build/kvm-host" -w "$ROOT/build/kvm-host/demo" -- sh -c \
    "'$ROOT/$MV' --log-dir '$ROOT/build/kvm-host/demo/logs' explain '$ROOT/configs/vms/linux-busybox.yaml'; '$ROOT/tests/guests/run-linux.sh' '$ROOT/build' '$ROOT'"
else
  echo "(the KVM test host cannot be built here: see scripts/kvm-host/README.md)"
fi
