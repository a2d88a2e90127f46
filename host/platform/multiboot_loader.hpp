// Multiboot (version 1) kernel loader: what QEMU's -kernel/-append/-initrd do
// for a multiboot image, onto GuestRam, plus the initial vCPU state.
//
// Supported images: ELF32 (little-endian, EM_386, ET_EXEC) whose PT_LOAD
// segments are loaded at their physical addresses (p_paddr), BSS zero-filled;
// and, when header flag 16 is set, the a.out kludge (header_addr, load_addr,
// load_end_addr, bss_end_addr, entry_addr from the header), used for any image
// format, as GRUB and QEMU do.  ELF64 images are refused unless they use the
// kludge.  Header flags: bit 0 (page-align modules) and bit 1 (memory info)
// are always honoured; bit 2 (video mode) is ignored with a note; any other
// bit in 0-15 is an unsupported requirement and refused.
//
// The multiboot information goes in the low-memory area [kInfoBase, kInfoEnd)
// unless a kernel segment lies there; then (as QEMU does) in an area of the
// same size after the kernel and its modules (page aligned, moved to 1 MiB if
// it would reach into the legacy hole below 1 MiB): the info structure (flags
// mem, cmdline, mods, mmap, boot_loader_name; no boot_device; memory as
// QEMU reports it unless MultibootMemoryMap::Plain is asked for), then the
// memory map, the module list and the strings.  The kernel command line is
// "<kernel file name> <args>" as QEMU builds it ("%s %s": a trailing space
// when there are no args).  Modules are loaded page-aligned after the
// kernel's highest byte; a module's string is "<file> <args>" (just "<file>"
// without args).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <modevisor/api/arch_state.hpp>
#include <modevisor/api/guest_memory.hpp>

namespace modevisor::host {

struct MultibootModule {
  std::filesystem::path file;
  std::string args;
};

// How memory is reported in the multiboot information.
//   Qemu:  exactly what QEMU 7.2 (-machine pc, SeaBIOS) reports, so guest
//          transcripts match the QEMU oracle: mem_lower 639 KiB, mem_upper up
//          to the 128 KiB SeaBIOS reserves at the top of RAM, and the map
//          usable 0-0x9fc00, reserved 0x9fc00-0xa0000, reserved 0xf0000-
//          0x100000, usable 1 MiB-(RAM end - 128 KiB), reserved (RAM end -
//          128 KiB)-RAM end, reserved 0xfffc0000-4 GiB (the BIOS ROM).
//   Plain: mem_lower 640, mem_upper = RAM end - 1 MiB, the map without the
//          top-of-RAM and ROM entries.
enum class MultibootMemoryMap { Qemu, Plain };

struct MultibootRequest {
  std::filesystem::path kernel;
  std::string args;  // -append
  std::vector<MultibootModule> modules;
  MultibootMemoryMap memory_map = MultibootMemoryMap::Qemu;
};

// A module already in memory (for callers and tests that have the bytes).
struct MultibootModuleImage {
  std::string name;  // as it appears in the module string
  std::string args;
  std::vector<std::uint8_t> bytes;
};

struct MultibootBoot {
  api::VcpuState vcpu;          // the state the multiboot spec defines at entry
  std::uint32_t entry = 0;
  std::uint32_t info_address = 0;
  std::uint32_t kernel_start = 0, kernel_end = 0;  // physical, end exclusive (incl. BSS)
  std::vector<std::pair<std::uint32_t, std::uint32_t>> modules;  // [start, end)
  std::string cmdline;
  std::vector<std::string> notes;  // ignored requests (video mode) for the VM log
};

inline constexpr std::uint32_t kMultibootHeaderMagic = 0x1BADB002;
inline constexpr std::uint32_t kMultibootBootMagic = 0x2BADB002;
inline constexpr std::uint32_t kMultibootInfoBase = 0x8000;
inline constexpr std::uint32_t kMultibootInfoEnd = 0x10000;
inline constexpr std::uint32_t kMultibootInfoSize = kMultibootInfoEnd - kMultibootInfoBase;

// Throws InputError (naming the kernel or module file) on a bad image or a
// file that cannot be read or is larger than guest RAM.
MultibootBoot load_multiboot(api::GuestMemory& ram, const MultibootRequest& request);
MultibootBoot load_multiboot(api::GuestMemory& ram, const std::filesystem::path& kernel_name,
                             std::span<const std::uint8_t> kernel, const std::string& args,
                             const std::vector<MultibootModuleImage>& modules,
                             MultibootMemoryMap memory_map = MultibootMemoryMap::Qemu);

// The multiboot entry state: EAX magic, EBX info, flat 32-bit segments,
// CR0.PE|ET, paging off, EFLAGS 0x2, TR a busy 32-bit TSS, LDTR unusable.
api::VcpuState multiboot_entry_state(std::uint32_t entry, std::uint32_t info_address);

}  // namespace modevisor::host
