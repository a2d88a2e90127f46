#!/usr/bin/env python3
"""Writes the binary seed corpora of tests/fuzz/corpus/ (multiboot, bzimage,
bt).  The YAML targets take their seeds from configs/ and tests/fixtures/
directly (scripts/fuzz.sh).  Run again after changing an input format:
  tests/fuzz/make_seeds.py MBKERNEL_ELF
MBKERNEL_ELF: tests/fixtures/platform/mbkernel.elf as the build makes it
(build/tests/fixtures/platform/mbkernel.elf).  Needs GNU as (binutils)."""
import os, struct, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


# --- multiboot: u8 ram, u8 flags, u16 args_len, u8 modules, u16 len each, args, modules, kernel
def multiboot_input(kernel, args=b"", modules=(), ram=0, flags=0):
    head = struct.pack("<BBHB", ram, flags, len(args), len(modules))
    head += b"".join(struct.pack("<H", len(m)) for m in modules)
    return head + args + b"".join(modules) + kernel


def aout_kludge_kernel():
    """A multiboot image with header flag 16: load addresses in the header."""
    load = 0x100000
    code = bytes([0xb0, 0x41, 0xe6, 0xe9, 0xe6, 0xf4, 0xf4])  # mov al,'A'; out 0xe9,al; out 0xf4,al; hlt
    flags = 0x00010003
    header = struct.pack("<III", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xffffffff)
    end = load + 12 + 20 + len(code)
    header += struct.pack("<IIIII", load, load, end, end + 0x1000, load + 32)
    return header + code


# --- bzimage: u8 ram, u16 cmdline_len, u16 initrd_len/16, cmdline, initrd, image
def bzimage(protocol=0x020F, loadflags=0x01, init_size=0x20000, cmdline_size=64, kernel_bytes=4096):
    b = bytearray(3 * 512 + kernel_bytes)
    b[0x1F1] = 2
    struct.pack_into("<H", b, 0x1FE, 0xAA55)
    b[0x200:0x202] = bytes([0xEB, 0x6A])
    b[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", b, 0x206, protocol)
    struct.pack_into("<H", b, 0x20E, 0x100)
    version = b"6.1.0-fuzz (seed) #1\0"
    b[0x300:0x300 + len(version)] = version
    b[0x211] = loadflags
    struct.pack_into("<I", b, 0x214, 0x100000)
    struct.pack_into("<I", b, 0x22C, 0x37FFFFFF)
    struct.pack_into("<H", b, 0x236, 0x1)
    struct.pack_into("<I", b, 0x238, cmdline_size)
    struct.pack_into("<I", b, 0x260, init_size)
    for i in range(3 * 512, len(b)):
        b[i] = (i * 7) & 0xFF
    return bytes(b)


def bzimage_input(image, cmdline=b"", initrd=b"", ram=0):
    assert len(initrd) % 16 == 0
    return struct.pack("<BHH", ram, len(cmdline), len(initrd) // 16) + cmdline + initrd + image


# --- bt: 42-byte header, code, page-table patches
PAGING, PAE, PSE, WP, USER, NXE, IF = 1, 2, 4, 8, 16, 32, 64


def assemble(src):
    with tempfile.TemporaryDirectory() as d:
        s, o, b = (os.path.join(d, n) for n in ("a.s", "a.o", "a.bin"))
        with open(s, "w") as f:
            f.write(".code32\n.intel_syntax noprefix\n" + src + "\n")
        subprocess.run(["as", "--32", "-o", o, s], check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", o, b], check=True)
        return open(b, "rb").read()


def bt_input(src, flags=0, irq=0, handler=0, gpr=(0,) * 8, eflags=0, patches=()):
    code = assemble(src)
    head = struct.pack("<BBHH8II", flags, irq, handler, len(code), *gpr, eflags)
    return head + code + b"".join(struct.pack("<HI", s, v) for s, v in patches)


BT_PROGRAMS = {
    "alu-loop": ("mov ecx, 100\n1: add eax, ecx\nimul ebx, eax, 3\nxor edx, ebx\nloop 1b\nout 0xf4, al", 0),
    "mmio-rw": ("mov eax, [0xf0000000]\nmov dword ptr [0xf0000004], 0x1234\nadd [0xf0000008], eax\n"
                "movzx ecx, word ptr [0xf0000004]\nout 0xf4, al", PAGING),
    "mmio-rep": ("mov esi, 0x200000\nmov edi, 0xf0000000\nmov ecx, 16\nrep movsb\nmov ecx, 8\n"
                 "mov esi, 0xf0000000\nmov edi, 0x200100\nrep movsd\nout 0xf4, al", PAGING | PSE),
    "paging-pae": ("mov eax, cr3\nmov cr3, eax\nmov dword ptr [0x20004], 0\ninvlpg [0x1000]\n"
                   "mov eax, [0x300000]\nmov [0x300004], eax\nout 0xf4, al", PAGING | PAE | NXE),
    "page-table-write": ("mov dword ptr [0x20000 + 4*0x300], 0x100007\nmov eax, [0x300000]\n"
                         "mov dword ptr [0x10000], 0\nmov eax, [0x0]\nout 0xf4, al", PAGING | WP),
    "exceptions": ("jmp 2f\n.org 0x40\niretd_handler: add dword ptr [esp], 2\niretd\n"
                   "2: ud2\nint3\nxor ecx, ecx\nmov eax, 1\nout 0xf4, al", 0),
    "user-mode": ("mov eax, [0x200000]\npushfd\npop ebx\ncli\nout 0xf4, al", PAGING | USER),
    "irq-hlt": ("sti\nhlt\nnop\nout 0xf4, al", IF),
    "descriptors": ("sgdt [0x5000]\nlgdt [0x5000]\nsidt [0x5008]\nmov ax, 0x10\nmov ds, ax\n"
                    "push 0x08\npush offset 3f - 0 + 0x100000\nretf\n3: str ax\nout 0xf4, al", 0),
    "sse-mmio": ("movd xmm0, eax\nmovd [0xf0000010], xmm0\nmovd xmm1, [0xf0000010]\nout 0xf4, al", PAGING),
    "pop-above-ram": ("mov esp, 0x10000000\npop eax\nout 0xf4, al", 0),
}


# Reproducers of issue 11's crash classes, fixed on main (wt-robust): kept
# as regression seeds corpus/<target>/regression-<name>.  A new known crash
# goes to crashes/<target>/ with a line in known-crashes.txt.
BT_CRASHES = {
    # Class 1: a bit test with a register offset whose memory operand is MMIO
    # runs natively on the engine's stand-in buffer; the offset leaves it.
    "class1-bts-mmio-plus-16MiB": "mov ecx, 0x08000000\nbts dword ptr [0xf0000000], ecx\nout 0xf4, al",
    "class1-btr-mmio-minus-1MiB": "mov ecx, -0x00800000\nbtr dword ptr [0xf0000000], ecx\nout 0xf4, al",
}


def write_crash(target, name, data):
    write(target, "regression-" + name, data)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    mb = open(sys.argv[1], "rb").read()
    write("multiboot", "mbkernel", multiboot_input(mb, b"hello world"))
    write("multiboot", "mbkernel-modules", multiboot_input(mb, b"a=1", [b"module-one" * 10, b"\x7fELF" + bytes(60)]))
    write("multiboot", "aout-kludge", multiboot_input(aout_kludge_kernel(), ram=1, flags=1))
    write("bzimage", "protocol-2.15", bzimage_input(bzimage(), b"console=ttyS0 quiet", bytes(64)))
    write("bzimage", "protocol-2.06", bzimage_input(bzimage(protocol=0x0206), b"root=/dev/sda1", ram=1))
    write("bzimage", "small-ram", bzimage_input(bzimage(init_size=0x1000, cmdline_size=0x800), b"x" * 100, ram=3))
    for name, (src, flags) in BT_PROGRAMS.items():
        write("bt", name, bt_input(src, flags=flags, irq=0x30 if "irq" in name else 0, handler=0x40,
                                   gpr=(1, 2, 3, 4, 0, 6, 0x200000, 0x200100)))
    # Class 2: init_size near 4 GiB wraps the kernel's end (1 MiB + init_size,
    # 32-bit) to 0, the RAM check passes, and the 128 KiB image is copied
    # past the end of a 1 MiB + 4 KiB (or 132 KiB) guest RAM.
    write_crash("bzimage", "class2-init-size-wraps",
                bzimage_input(bzimage(init_size=0xFFF00000, kernel_bytes=0x20000), b"quiet", ram=2))
    write_crash("bzimage", "class2-init-size-wraps-tiny-ram",
                bzimage_input(bzimage(init_size=0xFFF00000, cmdline_size=0x10000), b"c" * 0x2000, ram=3))
    for name, src in BT_CRASHES.items():
        write_crash("bt", name, bt_input(src))


if __name__ == "__main__":
    main()
