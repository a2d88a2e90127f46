#!/usr/bin/env bash
# Install what modevisor needs to build and test on Debian 12, then configure
# and build it in build/.  Safe to run again: installed packages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libboost-dev libboost-filesystem-dev      # Boost.DLL plugin loading
  libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev                 # unit tests
  libzydis-dev                              # x86 decoder for the translator
  libzstd-dev libxxhash-dev                 # snapshot files: compression and checksums
  libsystemd-dev prometheus-cpp-dev         # modevisord: sd_notify, metrics endpoint
  libseccomp-dev                            # modevisor-vmm: the seccomp filter that confines each VM
  gcc-multilib                              # -m32 freestanding guest kernels
  qemu-system-x86                           # the oracle the guests are checked against
  qemu-user                                 # qemu-i386: the BT differential tests' oracle where 32-bit code cannot run natively
  # KVM test host (scripts/kvm-host, ctest label kvm): a QEMU TCG guest with
  # nested SVM running Debian's kernel and kvm_amd
  linux-image-amd64 busybox-static cpio
  # robustness checks: libFuzzer targets (scripts/fuzz.sh, clang with its
  # fuzzer/ASan/UBSan runtimes); gcc's ASan/UBSan (scripts/sanitize.sh) come
  # with build-essential
  clang libclang-rt-14-dev
  libssl-dev                                # live migration: HMAC-SHA256 proofs, random nonces (OpenSSL)
  etcd-server                               # the fleet (host/fleet, ctest label fleet): a real three-member etcd on loopback
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
echo "setup: built in $(pwd)/build"
