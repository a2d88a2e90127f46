// Linux x86 boot protocol loader (Documentation/arch/x86/boot.rst): what a
// boot loader does for a bzImage, onto GuestRam, plus the initial vCPU state
// of the protocol's 32-bit entry.
//
// The image is a bzImage (boot sector flag 0xAA55, "HdrS", protocol >= 2.06,
// loaded high).  The real-mode setup code is not run: the loader fills the
// zero page (struct boot_params) itself, as the 32-bit protocol allows, and
// enters the protected-mode kernel at code32_start with flat 4 GiB segments
// (__BOOT_CS 0x10, __BOOT_DS 0x18), paging and interrupts off and ESI
// pointing at the zero page.  A 64-bit kernel switches to long mode itself.
//
// Guest physical layout:
//   0x500    the boot GDT (null, null, code 0x10, data 0x18)
//   0x7000   the zero page: a copy of the image's setup header plus what the
//            loader fills in (loader type, heap, cmd_line_ptr, ramdisk, e820)
//   0x20000  the kernel command line (up to the header's cmdline_size, and
//            below the EBDA at 0x9fc00 and the end of RAM)
//   0x100000 the protected-mode kernel (code32_start); init_size bytes from
//            here belong to the kernel while it decompresses and runs
//   top      the initrd, page aligned, as high as initrd_addr_max and RAM
//            allow (QEMU and GRUB put it there too)
// The e820 map is the Multiboot/QEMU one: usable 0-0x9fc00, reserved EBDA
// 0x9fc00-0xa0000, reserved BIOS area 0xf0000-1 MiB (where the platform's MP
// table lives), usable 1 MiB-end of RAM (below the 0xfec00000 MMIO hole).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <modevisor/api/arch_state.hpp>
#include <modevisor/api/guest_memory.hpp>

namespace modevisor::host {

struct E820Entry {
  std::uint64_t address = 0, length = 0;
  std::uint32_t type = 1;  // 1 usable, 2 reserved
};

struct LinuxBoot {
  api::VcpuState vcpu;                 // the 32-bit boot protocol entry state
  std::uint16_t protocol = 0;          // boot protocol version, e.g. 0x020f
  std::string kernel_version;          // the header's kernel_version string, when present
  bool kernel_64bit = false;           // XLF_KERNEL_64: a 64-bit kernel
  std::uint32_t kernel_start = 0, kernel_end = 0;  // protected-mode image [start, start + init_size)
  std::uint32_t initrd_start = 0, initrd_end = 0;  // [start, end), 0/0 without an initrd
  std::uint32_t zero_page = 0;
  std::string cmdline;
  std::vector<E820Entry> e820;
};

inline constexpr std::uint32_t kLinuxGdtAddress = 0x500;
inline constexpr std::uint32_t kLinuxZeroPage = 0x7000;
inline constexpr std::uint32_t kLinuxCmdline = 0x20000;
inline constexpr std::uint32_t kLinuxCmdlineEnd = 0x9fc00;  // the EBDA starts here
inline constexpr std::uint32_t kLinuxKernelAddress = 0x100000;

// Whether `image` looks like a Linux bzImage (boot flag and "HdrS").
bool is_linux_bzimage(std::span<const std::uint8_t> image);

// The e820 map the loader reports for `ram_bytes` of guest RAM.
std::vector<E820Entry> linux_e820_map(std::uint64_t ram_bytes);

// Throws InputError naming `kernel_name` (or `initrd_name`) when the image is
// not a usable bzImage or the kernel, command line or initrd do not fit.
LinuxBoot load_linux(api::GuestMemory& ram, const std::filesystem::path& kernel_name,
                     std::span<const std::uint8_t> kernel, const std::string& cmdline,
                     const std::filesystem::path& initrd_name, std::span<const std::uint8_t> initrd);

// The protocol's 32-bit entry state: CS 0x10 / data 0x18 flat, CR0.PE|ET,
// paging off, EFLAGS 0x2 (IF clear), ESI = zero page, EBX/EBP/EDI = 0.
api::VcpuState linux_entry_state(std::uint32_t entry, std::uint32_t zero_page);

}  // namespace modevisor::host
