// The Linux boot protocol loader (bzImage, initrd, zero page, e820) and the
// MP tables: images built byte by byte here, and Debian's own kernel when the
// machine has one in /boot (the project's setup installs linux-image-amd64).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "guarded_guest_memory.hpp"
#include "platform/guest_ram.hpp"
#include "platform/linux_loader.hpp"
#include "platform/mptable.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
using Bytes = std::vector<std::uint8_t>;

template <typename T>
void put(Bytes& b, std::size_t at, T v) {
  std::memcpy(&b[at], &v, sizeof v);
}
template <typename T>
T get(const std::uint8_t* p, std::size_t at) {
  T v;
  std::memcpy(&v, p + at, sizeof v);
  return v;
}

// A bzImage with 2 setup sectors + boot sector and a 4 KiB "kernel".
Bytes make_bzimage(std::uint16_t protocol = 0x020f, std::uint8_t loadflags = 0x01, std::uint32_t init_size = 0x20000) {
  Bytes b(3 * 512 + 4096);
  b[0x1f1] = 2;
  put<std::uint16_t>(b, 0x1fe, 0xaa55);
  b[0x200] = 0xeb;
  b[0x201] = 0x6a;  // header ends at 0x26c
  std::memcpy(&b[0x202], "HdrS", 4);
  put<std::uint16_t>(b, 0x206, protocol);
  put<std::uint16_t>(b, 0x20e, 0x100);  // kernel_version string at 0x300
  std::strcpy(reinterpret_cast<char*>(&b[0x300]), "6.1.0-test (builder@example) #1");
  b[0x211] = loadflags;
  put<std::uint32_t>(b, 0x214, 0x100000);
  put<std::uint32_t>(b, 0x22c, 0x37ffffff);  // initrd_addr_max
  put<std::uint16_t>(b, 0x236, 0x1);         // XLF_KERNEL_64
  put<std::uint32_t>(b, 0x238, 64);          // cmdline_size
  put<std::uint32_t>(b, 0x260, init_size);
  for (std::size_t i = 3 * 512; i < b.size(); ++i) b[i] = static_cast<std::uint8_t>(i * 7);
  return b;
}

std::string error_of(GuestRam& ram, const Bytes& image, const std::string& cmdline = "", const Bytes& initrd = {}) {
  try {
    load_linux(ram, "/vm/bzImage", image, cmdline, "/vm/initrd", initrd);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(LinuxLoader, LoadsKernelCmdlineInitrdAndZeroPage) {
  GuestRam ram(64 << 20);
  const Bytes image = make_bzimage();
  const Bytes initrd(10000, 0x5a);
  const LinuxBoot boot = load_linux(ram, "/vm/bzImage", image, "console=ttyS0 quiet", "/vm/initrd", initrd);
  const std::uint8_t* mem = ram.host_base();
  EXPECT_EQ(boot.protocol, 0x020f);
  EXPECT_TRUE(boot.kernel_64bit);
  EXPECT_EQ(boot.kernel_version, "6.1.0-test (builder@example) #1");
  EXPECT_EQ(std::memcmp(mem + 0x100000, image.data() + 3 * 512, 4096), 0) << "protected-mode code at 1 MiB";
  EXPECT_EQ(boot.kernel_end, 0x100000u + 0x20000u) << "init_size is reserved";
  EXPECT_STREQ(reinterpret_cast<const char*>(mem + kLinuxCmdline), "console=ttyS0 quiet");

  // The initrd sits page aligned at the top of RAM.
  EXPECT_EQ(boot.initrd_end - boot.initrd_start, 10000u);
  EXPECT_EQ(boot.initrd_start % 4096, 0u);
  EXPECT_LE(boot.initrd_end, 64u << 20);
  EXPECT_GT(boot.initrd_start + 4096 + 10000, 64u << 20);
  EXPECT_EQ(mem[boot.initrd_start], 0x5a);

  const std::uint8_t* zp = mem + kLinuxZeroPage;
  EXPECT_EQ(std::memcmp(zp + 0x202, "HdrS", 4), 0) << "the setup header is copied";
  EXPECT_EQ(zp[0x1f1], 2);
  EXPECT_EQ(zp[0x210], 0xff) << "type_of_loader";
  EXPECT_EQ(zp[0x211], 0x81) << "LOADED_HIGH | CAN_USE_HEAP";
  EXPECT_EQ(get<std::uint32_t>(zp, 0x228), kLinuxCmdline);
  EXPECT_EQ(get<std::uint32_t>(zp, 0x218), boot.initrd_start);
  EXPECT_EQ(get<std::uint32_t>(zp, 0x21c), 10000u);
  EXPECT_EQ(zp[0x1ef], 0) << "sentinel";
  EXPECT_EQ(zp[0x26c], 0) << "nothing beyond the header is copied";

  // e820 in the zero page.
  ASSERT_EQ(zp[0x1e8], 4);
  EXPECT_EQ(get<std::uint64_t>(zp, 0x2d0 + 3 * 20), 0x100000u);
  EXPECT_EQ(get<std::uint64_t>(zp, 0x2d0 + 3 * 20 + 8), (64u << 20) - 0x100000u);
  EXPECT_EQ(get<std::uint32_t>(zp, 0x2d0 + 3 * 20 + 16), 1u);
  EXPECT_EQ(get<std::uint32_t>(zp, 0x2d0 + 2 * 20 + 16), 2u) << "the BIOS area is reserved";

  // The 32-bit entry state and the GDT its selectors refer to.
  const api::VcpuState& s = boot.vcpu;
  EXPECT_EQ(s.rip, 0x100000u);
  EXPECT_EQ(s.gpr[api::gpr::rsi], kLinuxZeroPage);
  EXPECT_EQ(s.cs.selector, 0x10);
  EXPECT_EQ(s.ds.selector, 0x18);
  EXPECT_EQ(s.cr0, 0x11u);
  EXPECT_EQ(s.rflags & 0x200, 0u) << "interrupts off";
  EXPECT_EQ(get<std::uint64_t>(mem, kLinuxGdtAddress + 0x10), 0x00cf9b000000ffffull);
  EXPECT_EQ(get<std::uint64_t>(mem, kLinuxGdtAddress + 0x18), 0x00cf93000000ffffull);
}

TEST(LinuxLoader, InitrdStaysBelowInitrdAddrMax) {
  GuestRam ram(2048ull << 20);
  Bytes image = make_bzimage();
  put<std::uint32_t>(image, 0x22c, 0x0fffffff);  // 256 MiB
  const LinuxBoot boot = load_linux(ram, "/vm/bzImage", image, "", "/vm/initrd", Bytes(5000, 1));
  EXPECT_LE(boot.initrd_end, 0x10000000u);
  EXPECT_GE(boot.initrd_start, 0x10000000u - 8192);
}

TEST(LinuxLoader, RefusesWhatItCannotBootNamingTheFile) {
  GuestRam ram(16 << 20);
  Bytes junk(8192, 0);
  EXPECT_THAT(error_of(ram, junk), HasSubstr("/vm/bzImage: not a Linux bzImage"));
  EXPECT_THAT(error_of(ram, make_bzimage(0x0204)), HasSubstr("boot protocol 2.04 is too old"));
  EXPECT_THAT(error_of(ram, make_bzimage(0x020f, 0x00)), HasSubstr("zImage"));
  EXPECT_THAT(error_of(ram, make_bzimage(), std::string(65, 'x')), HasSubstr("at most 64"));
  EXPECT_THAT(error_of(ram, make_bzimage(0x020f, 0x01, 32u << 20)), HasSubstr("needs 33 MiB"));
  EXPECT_THAT(error_of(ram, make_bzimage(), "", Bytes(15 << 20, 1)),
              HasSubstr("/vm/initrd: the initrd (15360 KiB) does not fit"));
}

// Header fields are untrusted 32-bit numbers: arithmetic on them must not
// wrap, and nothing may be written outside guest RAM (the guard after it
// turns such a write into a crash of this test).
TEST(LinuxLoader, HeaderArithmeticThatWouldWrapIsRefused) {
  GuardedGuestMemory ram(16 << 20);
  auto error = [&](const Bytes& image, const std::string& cmdline = "") {
    try {
      load_linux(ram, "/vm/bzImage", image, cmdline, "/vm/initrd", {});
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // 1 MiB + init_size wraps below 1 MiB in 32 bits (and to exactly 0).
  for (std::uint32_t init_size : {0xffffffffu, 0xfff00000u, 0xfff00001u, 0x80000000u})
    EXPECT_THAT(error(make_bzimage(0x020f, 0x01, init_size)), HasSubstr("/vm/bzImage: the kernel needs"))
        << std::hex << init_size;
  // The crash: a payload larger than the RAM above 1 MiB, with an
  // init_size that makes 32-bit "1 MiB + init_size" wrap below the RAM's end.
  Bytes big = make_bzimage(0x020f, 0x01, 0xffffffff);
  big.resize(3 * 512 + (16u << 20), 0x90);
  EXPECT_THAT(error(big), HasSubstr("/vm/bzImage: the kernel needs"));
  // cmdline_size says "anything goes"; guest RAM and low memory do not.
  Bytes open_ended = make_bzimage();
  put<std::uint32_t>(open_ended, 0x238, 0xffffffff);
  EXPECT_EQ(error(open_ended, std::string(1000, 'x')), "no error");
  EXPECT_THAT(error(open_ended, std::string(0x9fc00 - kLinuxCmdline, 'x')),
              HasSubstr("the loader has room for 523264"));
}

TEST(LinuxLoader, CommandLineIsCheckedAgainstGuestRam) {
  // Just enough RAM for the kernel: the command line must still fit below the EBDA.
  GuardedGuestMemory ram(0x100000 + 0x20000);
  Bytes image = make_bzimage();
  put<std::uint32_t>(image, 0x238, 0xffffffff);
  EXPECT_THROW(load_linux(ram, "/vm/bzImage", image, std::string(2u << 20, 'x'), "", {}), InputError);
  EXPECT_NO_THROW(load_linux(ram, "/vm/bzImage", image, "console=ttyS0", "", {}));
}

// Every header field the loader reads, set to values at the edges of its
// width: each load either succeeds within guest RAM or is an InputError.
TEST(LinuxLoader, EveryHeaderFieldAtItsEdgesNeverEscapesGuestRam) {
  struct Field {
    std::size_t offset, width;
  };
  const Field fields[] = {{0x1f1, 1}, {0x201, 1}, {0x206, 2}, {0x20e, 2}, {0x211, 1}, {0x22c, 4},
                          {0x236, 2}, {0x238, 4}, {0x260, 4}};
  const std::uint64_t edges[] = {0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x100000, 0x7fffffff,
                                 0x80000000, 0xfff00000, 0xfffff000, 0xffffffff};
  int loaded = 0, refused = 0;
  for (const auto& field : fields) {
    for (std::uint64_t value : edges) {
      Bytes image = make_bzimage();
      std::memcpy(&image[field.offset], &value, field.width);
      GuardedGuestMemory ram(8 << 20);
      try {
        const LinuxBoot boot = load_linux(ram, "/vm/bzImage", image, std::string(60, 'c'), "/vm/initrd",
                                          Bytes(4096, 7));
        EXPECT_LE(boot.kernel_end, ram.size());
        EXPECT_LE(boot.initrd_end, ram.size());
        EXPECT_GE(boot.kernel_end, boot.kernel_start);
        ++loaded;
      } catch (const InputError& e) {
        EXPECT_THAT(e.what(), ::testing::StartsWith("/vm/")) << e.what();
        ++refused;
      }
    }
  }
  EXPECT_GT(loaded, 0);
  EXPECT_GT(refused, 0);
}

TEST(LinuxLoader, E820LeavesTheMmioHole) {
  const auto map = linux_e820_map(6ull << 30);
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[3].address + map[3].length, 0xfec00000u);
}

// Debian's kernel, as the Linux guest VM boots it.
TEST(LinuxLoader, LoadsDebiansKernel) {
  std::filesystem::path kernel;
  if (std::filesystem::exists("/boot"))
    for (const auto& e : std::filesystem::directory_iterator("/boot"))
      if (e.path().filename().string().rfind("vmlinuz-", 0) == 0) kernel = e.path();
  if (kernel.empty()) GTEST_SKIP() << "no /boot/vmlinuz-* (scripts/setup.sh installs linux-image-amd64)";
  std::ifstream in(kernel, std::ios::binary);
  const Bytes image{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  ASSERT_TRUE(is_linux_bzimage(image)) << kernel;
  GuestRam ram(256 << 20);
  const LinuxBoot boot = load_linux(ram, kernel, image, "console=ttyS0", "", {});
  EXPECT_GE(boot.protocol, 0x020c);
  EXPECT_TRUE(boot.kernel_64bit);
  EXPECT_THAT(boot.kernel_version, HasSubstr(kernel.filename().string().substr(8))) << "vmlinuz-<version>";
}

// --- MP tables ------------------------------------------------------------

unsigned sum(const std::uint8_t* p, std::size_t n) {
  unsigned s = 0;
  for (std::size_t i = 0; i < n; ++i) s += p[i];
  return s & 0xff;
}

TEST(MpTable, FloatingPointerAndTableAreWellFormed) {
  GuestRam ram(16 << 20);
  write_mp_table(ram, MpTableConfig{4});
  const std::uint8_t* fp = ram.host_base() + kMpTableAddress;
  ASSERT_EQ(std::memcmp(fp, "_MP_", 4), 0);
  EXPECT_EQ(sum(fp, 16), 0u) << "floating pointer checksum";
  EXPECT_EQ(fp[8], 1) << "16 bytes";
  EXPECT_EQ(fp[9], 4) << "spec 1.4";
  EXPECT_EQ(fp[11], 0) << "a configuration table, not a default configuration";
  const std::uint32_t table_at = get<std::uint32_t>(fp, 4);
  const std::uint8_t* t = ram.host_base() + table_at;
  ASSERT_EQ(std::memcmp(t, "PCMP", 4), 0);
  const std::uint16_t length = get<std::uint16_t>(t, 4);
  EXPECT_EQ(sum(t, length), 0u) << "table checksum";
  EXPECT_EQ(get<std::uint32_t>(t, 36), 0xfee00000u);

  // Walk the entries.
  unsigned processors = 0, bsp = 0, ioapics = 0, io_ints = 0, local_ints = 0;
  std::uint8_t ioapic_id = 0xff;
  bool irq0_to_pin2 = false;
  const std::uint16_t count = get<std::uint16_t>(t, 34);
  std::size_t at = 44;
  for (unsigned i = 0; i < count; ++i) {
    ASSERT_LT(at, length);
    switch (t[at]) {
      case 0:
        EXPECT_EQ(t[at + 1], processors) << "APIC ID = vCPU index";
        if (t[at + 3] & 2) ++bsp;
        ++processors;
        at += 20;
        break;
      case 1:
        EXPECT_EQ(std::memcmp(t + at + 2, "ISA   ", 6), 0);
        at += 8;
        break;
      case 2:
        ioapic_id = t[at + 1];
        EXPECT_EQ(get<std::uint32_t>(t, at + 4), 0xfec00000u);
        ++ioapics;
        at += 8;
        break;
      case 3:
        EXPECT_EQ(t[at + 6], ioapic_id);
        if (t[at + 1] == 0 && t[at + 5] == 0) irq0_to_pin2 = t[at + 7] == 2;
        ++io_ints;
        at += 8;
        break;
      case 4:
        ++local_ints;
        at += 8;
        break;
      default:
        FAIL() << "unknown entry type " << int(t[at]);
    }
  }
  EXPECT_EQ(at, length);
  EXPECT_EQ(processors, 4u);
  EXPECT_EQ(bsp, 1u);
  EXPECT_EQ(ioapics, 1u);
  EXPECT_EQ(ioapic_id, 4u);
  EXPECT_EQ(io_ints, 16u) << "ExtINT on pin 0 and ISA IRQs 0, 1, 3-15";
  EXPECT_TRUE(irq0_to_pin2);
  EXPECT_EQ(local_ints, 2u);
}

TEST(MpTable, RefusesImpossibleCpuCounts) {
  EXPECT_THROW(build_mp_table(MpTableConfig{0}), std::invalid_argument);
  EXPECT_THROW(build_mp_table(MpTableConfig{255}), std::invalid_argument);
}

}  // namespace
}  // namespace modevisor::host
