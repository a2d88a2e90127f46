#include "platform/linux_loader.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/errors.hpp"

namespace modevisor::host {

namespace {

// Offsets into the zero page / the image's first sectors (boot.rst).
constexpr std::size_t kSetupSects = 0x1f1, kBootFlag = 0x1fe, kJump = 0x200, kHeaderMagic = 0x202,
                      kVersion = 0x206, kKernelVersion = 0x20e, kTypeOfLoader = 0x210, kLoadFlags = 0x211,
                      kCode32Start = 0x214, kRamdiskImage = 0x218, kRamdiskSize = 0x21c, kHeapEndPtr = 0x224,
                      kCmdLinePtr = 0x228, kInitrdAddrMax = 0x22c, kXLoadFlags = 0x236, kCmdlineSize = 0x238,
                      kInitSize = 0x260, kE820Entries = 0x1e8, kE820Table = 0x2d0;
constexpr std::uint8_t kLoadedHigh = 0x01, kCanUseHeap = 0x80;
constexpr std::uint16_t kXlfKernel64 = 0x01;
constexpr std::size_t kMaxE820 = 128;
constexpr std::uint64_t kMmioHole = 0xfec00000;  // I/O APIC, local APIC, BIOS ROM above

template <typename T>
T get(std::span<const std::uint8_t> bytes, std::size_t offset) {
  T v{};
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

template <typename T>
void put(std::uint8_t* page, std::size_t offset, T v) {
  std::memcpy(page + offset, &v, sizeof v);
}

class Image {
 public:
  Image(const std::filesystem::path& name, std::span<const std::uint8_t> bytes) : name_(name), bytes_(bytes) {}
  [[noreturn]] void fail(const std::string& message) const { throw InputError(name_, 0, 0, message); }
  std::span<const std::uint8_t> bytes() const { return bytes_; }

 private:
  std::filesystem::path name_;
  std::span<const std::uint8_t> bytes_;
};

std::string header_kernel_version(std::span<const std::uint8_t> image) {
  const std::uint16_t offset = get<std::uint16_t>(image, kKernelVersion);
  if (offset == 0) return {};
  const std::size_t at = std::size_t{offset} + 0x200;
  if (at >= image.size()) return {};
  std::string out;
  for (std::size_t i = at; i < image.size() && image[i] && out.size() < 128; ++i) out.push_back(static_cast<char>(image[i]));
  return out;
}

}  // namespace

bool is_linux_bzimage(std::span<const std::uint8_t> image) {
  return image.size() > 0x264 && get<std::uint16_t>(image, kBootFlag) == 0xaa55 &&
         std::memcmp(image.data() + kHeaderMagic, "HdrS", 4) == 0;
}

std::vector<E820Entry> linux_e820_map(std::uint64_t ram_bytes) {
  std::vector<E820Entry> map = {{0, 0x9fc00, 1}, {0x9fc00, 0x400, 2}, {0xf0000, 0x10000, 2}};
  const std::uint64_t top = std::min(ram_bytes, kMmioHole);
  if (top > 0x100000) map.push_back({0x100000, top - 0x100000, 1});
  return map;
}

api::VcpuState linux_entry_state(std::uint32_t entry, std::uint32_t zero_page) {
  api::VcpuState s;
  s.rip = entry;
  s.rflags = 0x2;
  s.gpr[api::gpr::rsi] = zero_page;
  api::Segment code;
  code.selector = 0x10;  // __BOOT_CS
  code.limit = 0xffffffff;
  code.type = 0xb;
  code.s = code.present = code.db = code.g = true;
  s.cs = code;
  api::Segment data = code;
  data.selector = 0x18;  // __BOOT_DS
  data.type = 0x3;
  s.ds = s.es = s.fs = s.gs = s.ss = data;
  api::Segment tr;
  tr.limit = 0xffff;
  tr.type = 0xb;  // busy 32-bit TSS: what VMX entry and KVM insist on
  tr.present = true;
  s.tr = tr;
  api::Segment ldtr;
  ldtr.type = 0x2;
  ldtr.unusable = true;
  s.ldtr = ldtr;
  s.gdtr = {kLinuxGdtAddress, 4 * 8 - 1};
  s.idtr = {0, 0};
  s.cr0 = 0x11;  // PE | ET
  return s;
}

LinuxBoot load_linux(api::GuestMemory& ram, const std::filesystem::path& kernel_name,
                     std::span<const std::uint8_t> kernel, const std::string& cmdline,
                     const std::filesystem::path& initrd_name, std::span<const std::uint8_t> initrd) {
  const Image image(kernel_name, kernel);
  if (!is_linux_bzimage(kernel)) image.fail("not a Linux bzImage (no boot flag 0xAA55 and \"HdrS\" header)");
  LinuxBoot boot;
  boot.protocol = get<std::uint16_t>(kernel, kVersion);
  if (boot.protocol < 0x0206)
    image.fail(fmt::format("Linux boot protocol {}.{:02} is too old; 2.06 or later is needed (Linux 2.6.22+)",
                           boot.protocol >> 8, boot.protocol & 0xff));
  const std::uint8_t loadflags = kernel[kLoadFlags];
  if (!(loadflags & kLoadedHigh)) image.fail("a zImage (loaded low) is not supported; use a bzImage");
  boot.kernel_64bit = get<std::uint16_t>(kernel, kXLoadFlags) & kXlfKernel64;
  boot.kernel_version = header_kernel_version(kernel);

  const unsigned setup_sects = kernel[kSetupSects] ? kernel[kSetupSects] : 4;
  const std::size_t setup_bytes = (setup_sects + 1) * 512;
  if (setup_bytes >= kernel.size()) image.fail(fmt::format("truncated: {} setup sectors but {} bytes", setup_sects, kernel.size()));
  const auto payload = kernel.subspan(setup_bytes);
  // Every header field below is arithmetic on untrusted 32-bit values: it is
  // done in 64 bits and checked against guest RAM before anything is copied.
  //
  // The kernel needs init_size bytes from its load address while it
  // decompresses (protocol 2.10+); older headers only promise the image.
  const std::uint64_t init_size =
      boot.protocol >= 0x020a ? std::max<std::uint64_t>(get<std::uint32_t>(kernel, kInitSize), payload.size())
                              : std::uint64_t{payload.size()} * 4;
  const std::uint64_t kernel_end = std::uint64_t{kLinuxKernelAddress} + init_size;
  const std::uint64_t usable_top = std::min<std::uint64_t>(ram.size(), kMmioHole);
  if (kernel_end > usable_top)
    image.fail(fmt::format("the kernel needs {} MiB from 1 MiB (init_size {:#x}) but the VM has {} MiB of RAM "
                           "below the MMIO hole",
                           (kernel_end + 0xfffff) >> 20, init_size, usable_top >> 20));
  boot.kernel_start = kLinuxKernelAddress;
  boot.kernel_end = static_cast<std::uint32_t>(kernel_end);  // < kMmioHole: fits

  // Command line: within what the kernel takes (cmdline_size) and within the
  // low memory between its slot and the EBDA (the header's size can be anything).
  const std::uint64_t cmdline_max = get<std::uint32_t>(kernel, kCmdlineSize);
  if (cmdline.size() > cmdline_max)
    image.fail(fmt::format("the command line is {} bytes; this kernel takes at most {}", cmdline.size(), cmdline_max));
  const std::uint64_t cmdline_room = std::min<std::uint64_t>(kLinuxCmdlineEnd, ram.size()) - kLinuxCmdline;
  if (cmdline.size() + 1 > cmdline_room)
    image.fail(fmt::format("the command line is {} bytes; the loader has room for {} (with its NUL)",
                           cmdline.size(), cmdline_room));

  std::uint8_t* mem = ram.host_base();
  std::memcpy(mem + kLinuxKernelAddress, payload.data(), payload.size());
  std::memset(mem + kLinuxCmdline, 0, cmdline.size() + 1);
  std::memcpy(mem + kLinuxCmdline, cmdline.data(), cmdline.size());
  boot.cmdline = cmdline;

  // Zero page: the setup header as the image has it, then the loader's fields.
  std::uint8_t* zp = mem + kLinuxZeroPage;
  std::memset(zp, 0, 4096);
  // The setup header ends where its jump (at 0x200, a short jmp) lands.
  const std::size_t header_end = std::min<std::size_t>(kJump + 2 + kernel[kJump + 1], kernel.size());
  std::memcpy(zp + kSetupSects, kernel.data() + kSetupSects, header_end - kSetupSects);
  zp[kTypeOfLoader] = 0xff;  // "undefined" boot loader: no ID assigned
  zp[kLoadFlags] = loadflags | kCanUseHeap;
  put<std::uint16_t>(zp, kHeapEndPtr, 0xfe00);
  put<std::uint32_t>(zp, kCode32Start, kLinuxKernelAddress);
  put<std::uint32_t>(zp, kCmdLinePtr, kLinuxCmdline);

  if (!initrd.empty()) {
    const std::uint64_t addr_max = std::uint64_t{get<std::uint32_t>(kernel, kInitrdAddrMax)} + 1;
    const std::uint64_t top = std::min(usable_top, addr_max);
    const std::uint64_t start = top > initrd.size() ? ((top - initrd.size()) & ~std::uint64_t{0xfff}) : 0;
    if (start < kernel_end || start + initrd.size() > usable_top)
      throw InputError(initrd_name, 0, 0,
                       fmt::format("the initrd ({} KiB) does not fit between the kernel's end at {:#x} and {:#x}; "
                                   "give the VM more memory",
                                   initrd.size() >> 10, boot.kernel_end, top));
    std::memcpy(mem + start, initrd.data(), initrd.size());
    boot.initrd_start = static_cast<std::uint32_t>(start);
    boot.initrd_end = static_cast<std::uint32_t>(start + initrd.size());
    put<std::uint32_t>(zp, kRamdiskImage, boot.initrd_start);
    put<std::uint32_t>(zp, kRamdiskSize, static_cast<std::uint32_t>(initrd.size()));
  }

  boot.e820 = linux_e820_map(ram.size());
  zp[kE820Entries] = static_cast<std::uint8_t>(std::min(boot.e820.size(), kMaxE820));
  for (std::size_t i = 0; i < boot.e820.size() && i < kMaxE820; ++i) {
    put<std::uint64_t>(zp, kE820Table + i * 20, boot.e820[i].address);
    put<std::uint64_t>(zp, kE820Table + i * 20 + 8, boot.e820[i].length);
    put<std::uint32_t>(zp, kE820Table + i * 20 + 16, boot.e820[i].type);
  }
  boot.zero_page = kLinuxZeroPage;

  // The boot GDT the entry state's selectors refer to.
  const std::uint64_t gdt[4] = {0, 0, 0x00cf9b000000ffffull, 0x00cf93000000ffffull};
  std::memcpy(mem + kLinuxGdtAddress, gdt, sizeof gdt);

  ram.mark_dirty(0, std::max<std::uint64_t>(boot.kernel_end, boot.initrd_end));
  boot.vcpu = linux_entry_state(kLinuxKernelAddress, kLinuxZeroPage);
  return boot;
}

}  // namespace modevisor::host
