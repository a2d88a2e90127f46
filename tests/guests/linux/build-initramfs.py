#!/usr/bin/env python3
"""Builds the busybox guest's initramfs (a gzip'd "newc" cpio) from Debian's
busybox-static, without root: /dev/console is written as a device entry in
the archive, never created on disk.

    build-initramfs.py BUSYBOX INIT OUT.cpio.gz
"""
import gzip
import os
import subprocess
import sys


class Cpio:
    def __init__(self):
        self.out = bytearray()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_bytes = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0]
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08x" % f for f in fields) + name_bytes
        self.out += b"\0" * (-len(self.out) % 4) + data
        self.out += b"\0" * (-len(self.out) % 4)

    def dir(self, name):
        self._entry(name, 0o040755, nlink=2)

    def file(self, name, data, mode=0o755):
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return bytes(self.out)


def is_static_elf(path):
    """No PT_INTERP program header: runs without a dynamic loader."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    busybox, init, out = sys.argv[1:]
    if not is_static_elf(busybox):
        sys.exit(f"build-initramfs: {busybox} is not a static x86-64 executable; install busybox-static")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    a = Cpio()
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc"]:
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.chardev("dev/ttyS0", 4, 64)
    a.chardev("dev/null", 1, 3, 0o666)
    with open(busybox, "rb") as f:
        a.file("bin/busybox", f.read())
    for applet in sorted(set(applets) - {"busybox"}):
        a.symlink("bin/" + applet, "busybox")
    a.symlink("sbin/init", "../init")
    with open(init, "rb") as f:
        a.file("init", f.read())
    a.file("etc/hostname", b"modevisor-guest\n", 0o644)
    tmp = out + ".tmp"
    with gzip.open(tmp, "wb", compresslevel=6) as f:
        f.write(a.finish())
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
