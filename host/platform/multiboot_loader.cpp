#include "platform/multiboot_loader.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <system_error>

#include "common/bounded_file.hpp"
#include "common/errors.hpp"

namespace modevisor::host {

namespace {

std::uint32_t rd32(std::span<const std::uint8_t> b, std::size_t at) {
  std::uint32_t v;
  std::memcpy(&v, b.data() + at, 4);
  return v;
}
std::uint16_t rd16(std::span<const std::uint8_t> b, std::size_t at) {
  std::uint16_t v;
  std::memcpy(&v, b.data() + at, 2);
  return v;
}

constexpr std::uint64_t page_up(std::uint64_t v) { return (v + 0xfff) & ~0xfffull; }

struct Segment {
  std::uint64_t file_offset, file_size, address, mem_size;
};

class Loader {
 public:
  Loader(api::GuestMemory& ram, const std::filesystem::path& name) : ram_(ram), name_(name) {}

  [[noreturn]] void fail(const std::string& message) const { throw InputError(name_, 0, 0, message); }

  void place(const std::filesystem::path& what, std::uint64_t address, std::uint64_t size, const char* kind) const {
    // Multiboot addresses are 32-bit: everything must also end below 4 GiB.
    if (address + size > std::min<std::uint64_t>(ram_.size(), 1ull << 32) || address + size < address)
      throw InputError(what, 0, 0,
                       fmt::format("{} at {:#x}-{:#x} lies beyond guest RAM ({:#x} bytes)", kind, address,
                                   address + size, ram_.size()));
  }

  void copy(std::uint64_t address, const std::uint8_t* data, std::uint64_t size) {
    if (size == 0) return;
    std::memcpy(ram_.host_base() + address, data, size);
    ram_.mark_dirty(address, size);
  }
  void zero(std::uint64_t address, std::uint64_t size) {
    if (size == 0) return;
    std::memset(ram_.host_base() + address, 0, size);
    ram_.mark_dirty(address, size);
  }

  api::GuestMemory& ram_;
  std::filesystem::path name_;
};

// The information area above everything loaded (`after`, page aligned),
// outside the legacy hole 0x9fc00-0x100000 (reserved in the memory map).
std::uint32_t information_area_after(const Loader& loader, const std::filesystem::path& kernel,
                                     std::uint64_t after) {
  std::uint64_t base = page_up(after);
  if (base < 0x100000 && base + kMultibootInfoSize > 0x9f000) base = 0x100000;
  loader.place(kernel, base, kMultibootInfoSize, "multiboot information (after the kernel and modules)");
  return static_cast<std::uint32_t>(base);
}

}  // namespace

api::VcpuState multiboot_entry_state(std::uint32_t entry, std::uint32_t info_address) {
  api::VcpuState s;
  s.gpr[api::gpr::rax] = kMultibootBootMagic;
  s.gpr[api::gpr::rbx] = info_address;
  s.rip = entry;
  s.rflags = 0x2;
  api::Segment code;
  code.selector = 0x08;
  code.base = 0;
  code.limit = 0xffffffff;
  code.type = 0xb;  // execute/read, accessed
  code.s = true;
  code.present = true;
  code.db = true;
  code.g = true;
  s.cs = code;
  api::Segment data = code;
  data.selector = 0x10;
  data.type = 0x3;  // read/write, accessed
  s.ds = s.es = s.fs = s.gs = s.ss = data;
  api::Segment tr;
  tr.selector = 0;
  tr.base = 0;
  tr.limit = 0xffff;
  tr.type = 0xb;  // busy 32-bit TSS: what VMX entry and KVM insist on
  tr.s = false;
  tr.present = true;
  s.tr = tr;
  api::Segment ldtr;
  ldtr.type = 0x2;
  ldtr.unusable = true;
  s.ldtr = ldtr;
  s.gdtr = {0, 0xffff};  // undefined by the spec; the kernel loads its own
  s.idtr = {0, 0xffff};
  s.cr0 = 0x11;  // PE | ET, paging off
  s.cr3 = s.cr4 = 0;
  s.efer = 0;
  return s;
}

MultibootBoot load_multiboot(api::GuestMemory& ram, const MultibootRequest& request) {
  const std::vector<std::uint8_t> kernel = read_guest_image(request.kernel, ram.size(), "multiboot kernel");
  std::vector<MultibootModuleImage> modules;
  for (const auto& m : request.modules)
    modules.push_back({m.file.string(), m.args, read_guest_image(m.file, ram.size(), "multiboot module")});
  return load_multiboot(ram, request.kernel, kernel, request.args, modules, request.memory_map);
}

MultibootBoot load_multiboot(api::GuestMemory& ram, const std::filesystem::path& kernel_name,
                             std::span<const std::uint8_t> image, const std::string& args,
                             const std::vector<MultibootModuleImage>& modules, MultibootMemoryMap memory_map) {
  Loader loader(ram, kernel_name);
  MultibootBoot boot;
  if (ram.size() <= 0x200000) loader.fail("guest RAM must be larger than 2 MiB for a multiboot kernel");

  // 1. The header: 32-bit aligned, within the first 8192 bytes.
  std::optional<std::size_t> header;
  std::optional<std::size_t> bad_checksum;
  const std::size_t scan = std::min<std::size_t>(image.size(), 8192);
  for (std::size_t at = 0; at + 12 <= scan; at += 4) {
    if (rd32(image, at) != kMultibootHeaderMagic) continue;
    if (rd32(image, at) + rd32(image, at + 4) + rd32(image, at + 8) == 0) {
      header = at;
      break;
    }
    if (!bad_checksum) bad_checksum = at;
  }
  if (!header) {
    if (bad_checksum)
      loader.fail(fmt::format("multiboot header at offset {:#x} has a bad checksum", *bad_checksum));
    loader.fail("not a multiboot image: no multiboot header (magic 0x1BADB002) in the first 8192 bytes");
  }
  const std::uint32_t flags = rd32(image, *header + 4);
  if (flags & 0x4) boot.notes.push_back("the kernel asks for a video mode; ignored (text console only)");
  if (const std::uint32_t unknown = flags & 0xfff8)
    loader.fail(fmt::format("multiboot header requires unsupported features (flags {:#x})", unknown));

  // 2. The image.
  std::vector<Segment> segments;
  std::uint32_t entry = 0;
  const bool elf = image.size() >= 4 && image[0] == 0x7f && image[1] == 'E' && image[2] == 'L' && image[3] == 'F';
  if (flags & 0x10000) {
    if (*header + 32 > image.size()) loader.fail("truncated multiboot header (address fields missing)");
    const std::uint32_t header_addr = rd32(image, *header + 12);
    const std::uint32_t load_addr = rd32(image, *header + 16);
    const std::uint32_t load_end_addr = rd32(image, *header + 20);
    const std::uint32_t bss_end_addr = rd32(image, *header + 24);
    entry = rd32(image, *header + 28);
    if (header_addr < load_addr || header_addr - load_addr > *header)
      loader.fail(fmt::format("multiboot header_addr {:#x} and load_addr {:#x} are inconsistent", header_addr,
                              load_addr));
    const std::uint64_t offset = *header - (header_addr - load_addr);
    std::uint64_t file_size = image.size() - offset;
    if (load_end_addr != 0) {
      if (load_end_addr < load_addr) loader.fail("multiboot load_end_addr is below load_addr");
      if (load_end_addr - load_addr > file_size)
        loader.fail(fmt::format("truncated image: load_end_addr {:#x} needs {} bytes, the file has {}", load_end_addr,
                                load_end_addr - load_addr, file_size));
      file_size = load_end_addr - load_addr;
    }
    std::uint64_t mem_size = file_size;
    if (bss_end_addr != 0) {
      if (bss_end_addr < load_addr + file_size) loader.fail("multiboot bss_end_addr is below the loaded image's end");
      mem_size = bss_end_addr - load_addr;
    }
    segments.push_back({offset, file_size, load_addr, mem_size});
  } else if (elf) {
    if (image.size() < 52) loader.fail("truncated ELF: the file is shorter than an ELF32 header");
    if (image[4] != 1)
      loader.fail("not an ELF32 image (ELF64 multiboot kernels need the a.out kludge, header flag 16)");
    if (image[5] != 1) loader.fail("not a little-endian ELF image");
    if (rd16(image, 18) != 3) loader.fail(fmt::format("ELF machine {} is not i386", rd16(image, 18)));
    if (rd16(image, 16) != 2) loader.fail("ELF image is not an executable (ET_EXEC)");
    entry = rd32(image, 24);
    const std::uint32_t phoff = rd32(image, 28);
    const std::uint16_t phentsize = rd16(image, 42);
    const std::uint16_t phnum = rd16(image, 44);
    if (phnum == 0) loader.fail("ELF image has no program headers");
    if (phentsize < 32) loader.fail("ELF program header entries are too small");
    if (std::uint64_t{phoff} + std::uint64_t{phentsize} * phnum > image.size())
      loader.fail("truncated ELF: program headers extend past the end of the file");
    std::optional<std::uint32_t> physical_entry;
    for (unsigned i = 0; i < phnum; ++i) {
      const std::size_t ph = phoff + std::size_t{phentsize} * i;
      if (rd32(image, ph) != 1) continue;  // PT_LOAD only
      const std::uint32_t offset = rd32(image, ph + 4), vaddr = rd32(image, ph + 8), paddr = rd32(image, ph + 12),
                          filesz = rd32(image, ph + 16), memsz = rd32(image, ph + 20);
      if (memsz == 0) continue;
      if (filesz > memsz) loader.fail(fmt::format("ELF segment {} has p_filesz > p_memsz", i));
      if (std::uint64_t{offset} + filesz > image.size())
        loader.fail(fmt::format("truncated ELF: segment {} needs file bytes {:#x}-{:#x}, the file has {:#x}", i,
                                offset, std::uint64_t{offset} + filesz, image.size()));
      segments.push_back({offset, filesz, paddr, memsz});
      // An entry point given as a virtual address is translated as QEMU does.
      if (entry >= vaddr && entry - vaddr < memsz && vaddr != paddr) physical_entry = entry - vaddr + paddr;
      if (entry >= paddr && entry - paddr < memsz) physical_entry = entry;
    }
    if (segments.empty()) loader.fail("ELF image has no loadable segment");
    if (physical_entry) entry = *physical_entry;
  } else {
    loader.fail("not a supported multiboot image: not ELF and the header has no address fields (flag 16)");
  }

  std::uint64_t low = UINT64_MAX, high = 0;
  for (const auto& seg : segments) {
    loader.place(kernel_name, seg.address, seg.mem_size, "kernel segment");
    low = std::min(low, seg.address);
    high = std::max(high, seg.address + seg.mem_size);
  }
  for (const auto& seg : segments) {
    loader.copy(seg.address, image.data() + seg.file_offset, seg.file_size);
    loader.zero(seg.address + seg.file_size, seg.mem_size - seg.file_size);  // BSS
  }
  boot.kernel_start = static_cast<std::uint32_t>(low);
  boot.kernel_end = static_cast<std::uint32_t>(high);
  boot.entry = entry;

  // 3. Where the information goes: the usual low area unless a kernel segment
  // lies there; then, as QEMU does, after the kernel (and its modules).
  const bool low_area_free = std::none_of(segments.begin(), segments.end(), [](const Segment& seg) {
    return seg.address < kMultibootInfoEnd && kMultibootInfoBase < seg.address + seg.mem_size;
  });

  // 4. Modules, page aligned after the kernel (and after the low area).
  std::uint64_t next = page_up(high);
  for (const auto& m : modules) {
    if (low_area_free) next = std::max<std::uint64_t>(next, kMultibootInfoEnd);
    loader.place(m.name, next, m.bytes.size(), "module");
    loader.copy(next, m.bytes.data(), m.bytes.size());
    boot.modules.emplace_back(static_cast<std::uint32_t>(next), static_cast<std::uint32_t>(next + m.bytes.size()));
    next = page_up(next + m.bytes.size());
  }

  // 5. The information area.
  const std::uint32_t area_base =
      low_area_free ? kMultibootInfoBase : information_area_after(loader, kernel_name, next);
  std::vector<std::uint8_t> area(kMultibootInfoSize, 0);
  std::size_t used = 0;
  auto alloc = [&](std::size_t size, std::size_t align) -> std::uint32_t {
    used = (used + align - 1) & ~(align - 1);
    if (used + size > area.size())
      loader.fail(fmt::format("the multiboot information (command lines, module list) exceeds {} bytes",
                              area.size()));
    const std::size_t at = used;
    used += size;
    return static_cast<std::uint32_t>(area_base + at);
  };
  auto put32 = [&](std::uint32_t address, std::uint32_t value) {
    std::memcpy(&area[address - area_base], &value, 4);
  };
  auto put64 = [&](std::uint32_t address, std::uint64_t value) {
    std::memcpy(&area[address - area_base], &value, 8);
  };
  auto put_string = [&](const std::string& s) {
    const std::uint32_t at = alloc(s.size() + 1, 1);
    std::memcpy(&area[at - area_base], s.data(), s.size());
    return at;
  };

  struct Region {
    std::uint64_t base, length;
    std::uint32_t type;
  };
  const bool qemu = memory_map == MultibootMemoryMap::Qemu;
  const std::uint64_t ram_below_4g = std::min<std::uint64_t>(ram.size(), 0x100000000ull);
  // SeaBIOS keeps its tables in the top 128 KiB of RAM and reports them reserved.
  const std::uint64_t usable_end = qemu ? ram_below_4g - 0x20000 : ram_below_4g;
  std::vector<Region> regions = {{0, 0x9fc00, 1},
                                 {0x9fc00, 0x400, 2},
                                 {0xf0000, 0x10000, 2},
                                 {0x100000, usable_end - 0x100000, 1}};
  if (qemu) {
    regions.push_back({usable_end, ram_below_4g - usable_end, 2});
    regions.push_back({0xfffc0000, 0x40000, 2});
  }

  const std::uint32_t info = alloc(128, 8);  // 116 bytes used by the v1 structure
  const std::uint32_t mmap_length = static_cast<std::uint32_t>(regions.size() * 24);
  const std::uint32_t mmap = alloc(mmap_length, 8);
  const std::uint32_t mods = alloc(modules.size() * 16, 8);
  boot.cmdline = fmt::format("{} {}", kernel_name.string(), args);
  const std::uint32_t cmdline = put_string(boot.cmdline);
  const std::uint32_t loader_name = put_string("modevisor");

  put32(info + 0, 0x1 | 0x4 | 0x8 | 0x40 | 0x200);  // mem, cmdline, mods, mmap, boot_loader_name
  put32(info + 4, qemu ? 639 : 640);
  put32(info + 8, static_cast<std::uint32_t>((usable_end - 0x100000) / 1024));
  put32(info + 16, cmdline);
  put32(info + 20, static_cast<std::uint32_t>(modules.size()));
  put32(info + 24, mods);
  put32(info + 44, mmap_length);
  put32(info + 48, mmap);
  put32(info + 64, loader_name);

  std::uint32_t entry_at = mmap;
  for (const auto& r : regions) {
    put32(entry_at, 20);  // size of the rest of the entry
    put64(entry_at + 4, r.base);
    put64(entry_at + 12, r.length);
    put32(entry_at + 20, r.type);
    entry_at += 24;
  }
  for (std::size_t i = 0; i < modules.size(); ++i) {
    const std::string text = modules[i].args.empty() ? modules[i].name : modules[i].name + " " + modules[i].args;
    const std::uint32_t string = put_string(text);
    put32(mods + static_cast<std::uint32_t>(i) * 16 + 0, boot.modules[i].first);
    put32(mods + static_cast<std::uint32_t>(i) * 16 + 4, boot.modules[i].second);
    put32(mods + static_cast<std::uint32_t>(i) * 16 + 8, string);
    put32(mods + static_cast<std::uint32_t>(i) * 16 + 12, 0);
  }
  loader.copy(area_base, area.data(), area.size());

  boot.info_address = info;
  boot.vcpu = multiboot_entry_state(entry, info);
  return boot;
}

}  // namespace modevisor::host
