#!/bin/bash
# Build the KVM test host into OUT (default: ./out): a QEMU TCG guest with
# nested AMD SVM that runs host-built binaries against its own /dev/kvm.
#   vmlinux                  ELF kernel with PVH entry, extracted from /boot/vmlinuz-<KVER>
#   initramfs.cpio.gz        busybox-static + kvm, kvm-amd, virtio-pci, virtio-net and 9p modules + init
# Needs (Debian): linux-image-amd64, busybox-static, cpio, python3.  KVER:
# the newest /boot/vmlinuz-* unless set.  Exit 2 with the reason when a piece
# is missing (callers report the test as skipped).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mkdir -p "${1:-$HERE/out}" && cd "${1:-$HERE/out}" && pwd)
missing() { echo "kvm-host: cannot build: $*" >&2; exit 2; }

# Debian's kernel version differs between machines and over time: take the
# newest /boot/vmlinuz-<version> whose modules are installed, skipping names
# that are no installed kernel (vmlinuz-<v>.old, .dpkg-*, backups).
if [ -z "${KVER:-}" ]; then
  for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -rV); do
    v=${k#/boot/vmlinuz-}
    case $v in *.old|*.bak|*.dpkg-*|*~) continue ;; esac
    if [ -r "$k" ] && [ -d "/lib/modules/$v/kernel" ]; then KVER=$v; break; fi
  done
  [ -n "${KVER:-}" ] || missing "no /boot/vmlinuz-<version> with modules in /lib/modules/<version> (install linux-image-amd64)"
fi
KERNEL=/boot/vmlinuz-$KVER
MODS=/lib/modules/$KVER/kernel
[ -r "$KERNEL" ] || missing "$KERNEL not readable"
[ -d "$MODS" ] || missing "no $MODS (install linux-image-$KVER)"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || missing "no /bin/busybox (install busybox-static)"
case $(ldd "$BUSYBOX" 2>&1 || true) in
  *"not a dynamic"*) ;;
  *) missing "/bin/busybox is dynamically linked (install busybox-static)" ;;
esac
command -v cpio >/dev/null || missing "no cpio (install cpio)"
command -v python3 >/dev/null || missing "no python3"

STAMP="$KVER $(stat -c %Y "$KERNEL") $(sha1sum "$HERE/init" "$HERE/build.sh" | cut -c1-12 | tr '\n' ' ')"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] && [ -f "$OUT/vmlinux" ] && [ -f "$OUT/initramfs.cpio.gz" ]; then
  echo "kvm-host: up to date in $OUT (kernel $KVER)"
  exit 0
fi

if ! python3 "$HERE/extract-vmlinux.py" "$KERNEL" "$OUT/vmlinux.tmp"; then
  echo "kvm-host: booting the bzImage itself instead (slower under TCG)" >&2
  cp "$KERNEL" "$OUT/vmlinux.tmp"
fi
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"

R=$OUT/initramfs
rm -rf "$R" && mkdir -p "$R"/{bin,proc,sys,dev,tmp,newroot,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
# Load order (modinfo depends): irqbypass -> ccp -> kvm -> kvm-amd; virtio-pci; failover -> virtio_net
# (the NIC of run.sh's KVM_HOST_NET); netfs/fscache -> 9p.
# A module built into this kernel (modules.builtin) needs no file; the ones
# marked opt: exist only in some kernel versions (ccp only with SEV support,
# fscache was merged into netfs).  init loads them in the order of load-order;
# kvm-amd it loads itself, once per npt setting.
: > "$R/lib/modules/load-order"
for f in virt/lib/irqbypass opt:drivers/crypto/ccp/ccp arch/x86/kvm/kvm arch/x86/kvm/kvm-amd \
         drivers/virtio/virtio_ring drivers/virtio/virtio opt:drivers/virtio/virtio_pci_legacy_dev \
         opt:drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci opt:net/core/failover opt:drivers/net/net_failover opt:drivers/net/virtio_net \
         opt:fs/netfs/netfs opt:fs/fscache/fscache \
         net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p; do
  optional=0
  case $f in opt:*) optional=1; f=${f#opt:} ;; esac
  src=""
  for ext in ko ko.xz ko.zst; do [ -f "$MODS/$f.$ext" ] && src="$MODS/$f.$ext" && break; done
  if [ -z "$src" ]; then
    grep -q "^kernel/$f.ko" "/lib/modules/$KVER/modules.builtin" 2>/dev/null && continue
    [ "$optional" = 1 ] && continue
    missing "module $f not found under $MODS (nor built in)"
  fi
  name=$(basename "$f")
  case $src in
    *.xz) xz -dc "$src" > "$R/lib/modules/$name.ko" ;;
    *.zst) zstd -qdc "$src" > "$R/lib/modules/$name.ko" ;;
    *) cp "$src" "$R/lib/modules/" ;;
  esac
  [ "$name" = kvm-amd ] || echo "$name" >> "$R/lib/modules/load-order"
done
cp "$HERE/init" "$R/init" && chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$OUT/initramfs.cpio.gz")
rm -rf "$R"
echo "$STAMP" > "$OUT/stamp"
echo "kvm-host: built in $OUT (kernel $KVER): $(ls -s --block-size=K "$OUT/vmlinux" "$OUT/initramfs.cpio.gz" | tr '\n' ' ')"
