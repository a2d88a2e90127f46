#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from a Debian bzImage (xz payload).

The ELF carries a PVH entry note, so QEMU boots it directly with -kernel and
skips the in-guest decompression, which is slow under TCG."""
import lzma
import sys

src, dst = sys.argv[1], sys.argv[2]
image = open(src, 'rb').read()
start = image.find(b'\xfd7zXZ\x00')
if start < 0:
    sys.exit(f'{src}: no xz stream (not an xz-compressed bzImage)')
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(image[start:])
if not elf.startswith(b'\x7fELF'):
    sys.exit(f'{src}: the xz payload is not an ELF image')
with open(dst, 'wb') as out:
    out.write(elf)
