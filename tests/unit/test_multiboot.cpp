// The multiboot v1 loader: images built byte by byte here, and a real kernel
// compiled with gcc -m32 at build time (tests/fixtures/platform).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "guarded_guest_memory.hpp"
#include "platform/guest_ram.hpp"
#include "platform/multiboot_loader.hpp"

namespace modevisor::host {
namespace {

using ::testing::HasSubstr;
using Bytes = std::vector<std::uint8_t>;

void put32(Bytes& b, std::size_t at, std::uint32_t v) {
  if (b.size() < at + 4) b.resize(at + 4);
  std::memcpy(&b[at], &v, 4);
}
void put16(Bytes& b, std::size_t at, std::uint16_t v) {
  if (b.size() < at + 2) b.resize(at + 2);
  std::memcpy(&b[at], &v, 2);
}

struct ElfSegment {
  std::uint32_t paddr, vaddr;
  Bytes data;
  std::uint32_t memsz;
};

// An ELF32 i386 executable: header, program headers, then each segment's bytes
// (the first segment starts with a multiboot header unless `header_flags` is empty).
Bytes make_elf(std::uint32_t entry, const std::vector<ElfSegment>& segments, std::uint32_t header_flags = 0x3,
               bool good_checksum = true) {
  Bytes b(52 + 32 * segments.size(), 0);
  b[0] = 0x7f, b[1] = 'E', b[2] = 'L', b[3] = 'F', b[4] = 1, b[5] = 1, b[6] = 1;
  put16(b, 16, 2);  // ET_EXEC
  put16(b, 18, 3);  // EM_386
  put32(b, 20, 1);
  put32(b, 24, entry);
  put32(b, 28, 52);  // phoff
  put16(b, 40, 52);
  put16(b, 42, 32);
  put16(b, 44, static_cast<std::uint16_t>(segments.size()));
  std::size_t offset = 0x100;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const std::size_t ph = 52 + 32 * i;
    put32(b, ph + 0, 1);
    put32(b, ph + 4, static_cast<std::uint32_t>(offset));
    put32(b, ph + 8, segments[i].vaddr);
    put32(b, ph + 12, segments[i].paddr);
    put32(b, ph + 16, static_cast<std::uint32_t>(segments[i].data.size()));
    put32(b, ph + 20, segments[i].memsz);
    put32(b, ph + 24, 7);
    b.resize(offset + segments[i].data.size());
    std::memcpy(&b[offset], segments[i].data.data(), segments[i].data.size());
    offset += segments[i].data.size();
  }
  // The multiboot header at the start of the first segment.
  put32(b, 0x100, 0x1BADB002);
  put32(b, 0x104, header_flags);
  put32(b, 0x108, static_cast<std::uint32_t>(-(0x1BADB002 + header_flags)) + (good_checksum ? 0 : 1));
  return b;
}

Bytes code_bytes(std::size_t n, std::uint8_t fill = 0x90) {
  Bytes b(n, fill);
  return b;
}

struct Ram {
  GuestRam ram{64ull << 20};
  std::uint32_t u32(std::uint64_t gpa) {
    std::uint32_t v;
    std::memcpy(&v, ram.host_base() + gpa, 4);
    return v;
  }
  std::uint64_t u64(std::uint64_t gpa) {
    std::uint64_t v;
    std::memcpy(&v, ram.host_base() + gpa, 8);
    return v;
  }
  std::string str(std::uint64_t gpa) { return reinterpret_cast<const char*>(ram.host_base() + gpa); }
};

MultibootBoot load(Ram& r, const Bytes& image, const std::string& args = "",
                   const std::vector<MultibootModuleImage>& modules = {}) {
  return load_multiboot(r.ram, "/boot/kernel.elf", image, args, modules);
}

TEST(MultibootTest, LoadsElfSegmentsAndZeroesBss) {
  Ram r;
  std::memset(r.ram.host_base() + 0x100000, 0xcc, 0x3000);  // garbage where BSS goes
  Bytes text = code_bytes(0x200);
  const Bytes image = make_elf(0x100010, {{0x100000, 0x100000, text, 0x2000}});
  const MultibootBoot boot = load(r, image);
  EXPECT_EQ(boot.entry, 0x100010u);
  EXPECT_EQ(boot.kernel_start, 0x100000u);
  EXPECT_EQ(boot.kernel_end, 0x102000u);
  EXPECT_EQ(r.u32(0x100000), 0x1BADB002u) << "segment bytes copied";
  EXPECT_EQ(r.ram.host_base()[0x1001ff], 0x90);
  for (std::uint64_t a = 0x100200; a < 0x102000; ++a) ASSERT_EQ(r.ram.host_base()[a], 0) << std::hex << a;
  EXPECT_EQ(r.ram.host_base()[0x102000], 0xcc) << "nothing beyond memsz touched";
}

TEST(MultibootTest, InfoStructureByteByByte) {
  Ram r;
  const Bytes image = make_elf(0x100000, {{0x100000, 0x100000, code_bytes(0x1000), 0x1800}});
  const std::vector<MultibootModuleImage> modules = {{"initrd.img", "root=/dev/ram", Bytes(5000, 0xab)},
                                                     {"extra.bin", "", Bytes(10, 0xcd)}};
  const MultibootBoot boot = load(r, image, "console=ttyS0 quiet", modules);
  const std::uint32_t mbi = boot.info_address;
  EXPECT_EQ(mbi, kMultibootInfoBase);
  EXPECT_EQ(r.u32(mbi + 0), 0x1u | 0x4 | 0x8 | 0x40 | 0x200) << "mem, cmdline, mods, mmap, loader name";
  EXPECT_EQ(r.u32(mbi + 4), 639u) << "mem_lower as QEMU reports it";
  EXPECT_EQ(r.u32(mbi + 8), (64u << 10) - 1024 - 128) << "mem_upper: KiB above 1 MiB, below SeaBIOS' 128 KiB";
  EXPECT_EQ(r.u32(mbi + 12), 0u) << "boot_device absent";
  EXPECT_EQ(r.str(r.u32(mbi + 16)), "/boot/kernel.elf console=ttyS0 quiet");
  ASSERT_EQ(r.u32(mbi + 20), 2u);
  const std::uint32_t mods = r.u32(mbi + 24);
  EXPECT_EQ(r.u32(mods + 0), 0x102000u) << "first module page aligned after kernel + BSS";
  EXPECT_EQ(r.u32(mods + 4), 0x102000u + 5000);
  EXPECT_EQ(r.str(r.u32(mods + 8)), "initrd.img root=/dev/ram");
  EXPECT_EQ(r.u32(mods + 12), 0u);
  EXPECT_EQ(r.u32(mods + 16), 0x104000u);
  EXPECT_EQ(r.u32(mods + 20), 0x104000u + 10);
  EXPECT_EQ(r.str(r.u32(mods + 24)), "extra.bin");
  EXPECT_EQ(r.ram.host_base()[0x102000], 0xab);
  EXPECT_EQ(r.ram.host_base()[0x104009], 0xcd);
  for (unsigned off = 28; off < 44; off += 4) EXPECT_EQ(r.u32(mbi + off), 0u) << "syms at " << off;
  ASSERT_EQ(r.u32(mbi + 44), 6u * 24) << "mmap_length";
  const std::uint32_t mmap = r.u32(mbi + 48);
  // What qemu-system-i386 7.2 -m 64 reports (checked with tests/fixtures/platform/mbkernel.c).
  const struct {
    std::uint64_t base, length;
    std::uint32_t type;
  } expected[] = {{0, 0x9fc00, 1},           {0x9fc00, 0x400, 2},     {0xf0000, 0x10000, 2},
                  {0x100000, 0x3ee0000, 1},  {0x3fe0000, 0x20000, 2}, {0xfffc0000, 0x40000, 2}};
  for (unsigned i = 0; i < 6; ++i) {
    const std::uint32_t e = mmap + 24 * i;
    EXPECT_EQ(r.u32(e), 20u) << i;
    EXPECT_EQ(r.u64(e + 4), expected[i].base) << i;
    EXPECT_EQ(r.u64(e + 12), expected[i].length) << i;
    EXPECT_EQ(r.u32(e + 20), expected[i].type) << i;
  }
  for (unsigned off = 52; off < 64; off += 4) EXPECT_EQ(r.u32(mbi + off), 0u) << off;
  EXPECT_EQ(r.str(r.u32(mbi + 64)), "modevisor");
  EXPECT_EQ(r.u32(mbi + 68), 0u) << "no APM table";
  EXPECT_GE(r.u32(mods), kMultibootInfoEnd);
  EXPECT_GE(mmap, kMultibootInfoBase);
  EXPECT_LT(mmap, kMultibootInfoEnd);
}

// Everything the information structure points to, as [start, end) ranges.
std::vector<std::pair<std::uint32_t, std::uint32_t>> information_ranges(Ram& r, std::uint32_t mbi) {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> ranges = {{mbi, mbi + 116}};
  auto string_at = [&](std::uint32_t a) { ranges.emplace_back(a, a + r.str(a).size() + 1); };
  string_at(r.u32(mbi + 16));
  string_at(r.u32(mbi + 64));
  ranges.emplace_back(r.u32(mbi + 48), r.u32(mbi + 48) + r.u32(mbi + 44));
  const std::uint32_t mods = r.u32(mbi + 24), count = r.u32(mbi + 20);
  ranges.emplace_back(mods, mods + 16 * count);
  for (std::uint32_t i = 0; i < count; ++i) string_at(r.u32(mods + 16 * i + 8));
  return ranges;
}

bool overlaps(std::pair<std::uint32_t, std::uint32_t> a, std::uint32_t start, std::uint32_t end) {
  return a.first < end && start < a.second;
}

// A kernel whose segments cover the low information area (0x8000-0x10000):
// the information moves after the kernel and its modules, and the kernel's
// bytes stay as the image gave them.
TEST(MultibootTest, InformationMovesClearOfAKernelInTheLowArea) {
  Ram r;
  Bytes text(0x3000);
  for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<std::uint8_t>(i * 7 + 1);
  const Bytes image = make_elf(0x8000, {{0x8000, 0x8000, text, 0x5000}});
  const std::vector<MultibootModuleImage> modules = {{"initrd.img", "x=1", Bytes(5000, 0xab)}};
  const MultibootBoot boot = load(r, image, "n=42", modules);
  EXPECT_EQ(boot.kernel_start, 0x8000u);
  EXPECT_EQ(boot.kernel_end, 0xd000u);
  ASSERT_EQ(boot.modules.size(), 1u);
  EXPECT_EQ(boot.modules[0].first, 0xd000u) << "the module right after the kernel";
  EXPECT_EQ(boot.info_address, 0xf000u) << "the information page aligned after the module";
  EXPECT_EQ(boot.vcpu.gpr[modevisor::api::gpr::rbx], boot.info_address);
  for (const auto& range : information_ranges(r, boot.info_address)) {
    EXPECT_FALSE(overlaps(range, 0x8000, 0xd000)) << std::hex << range.first << "-" << range.second;
    EXPECT_FALSE(overlaps(range, 0xd000, 0xd000 + 5000)) << std::hex << range.first << "-" << range.second;
  }
  EXPECT_EQ(r.str(r.u32(boot.info_address + 16)), "/boot/kernel.elf n=42");
  EXPECT_EQ(r.str(r.u32(r.u32(boot.info_address + 24) + 8)), "initrd.img x=1");
  EXPECT_EQ(r.u32(r.u32(boot.info_address + 48) + 4), 0u) << "the memory map's first entry: base 0";
  EXPECT_EQ(r.u32(0x8000), 0x1BADB002u);
  for (std::size_t i = 0x200; i < text.size(); ++i) ASSERT_EQ(r.ram.host_base()[0x8000 + i], text[i]) << i;
  for (std::uint64_t a = 0xb000; a < 0xd000; ++a) ASSERT_EQ(r.ram.host_base()[a], 0) << "BSS " << std::hex << a;
}

// After a kernel ending just below the legacy hole the information would
// reach into it (reserved in the memory map): it goes to 1 MiB instead.
TEST(MultibootTest, InformationSkipsTheLegacyHole) {
  Ram r;
  const Bytes image = make_elf(0x8000, {{0x8000, 0x8000, code_bytes(0x1000), 0x9c000 - 0x8000}});
  const MultibootBoot boot = load(r, image);
  EXPECT_EQ(boot.info_address, 0x100000u);
  EXPECT_EQ(r.str(r.u32(boot.info_address + 16)), "/boot/kernel.elf ");
}

// A kernel that ends at the top of RAM leaves no room after it: an error
// naming the kernel, not a write beyond guest RAM.
TEST(MultibootTest, NoRoomForTheInformationIsAnError) {
  GuestRam ram(64ull << 20);
  try {
    load_multiboot(ram, "/boot/kernel.elf",
                   make_elf(0x8000, {{0x8000, 0x8000, code_bytes(64), (64u << 20) - 0x8000 - 0x4000}}), "", {});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.file(), "/boot/kernel.elf");
    EXPECT_THAT(e.message(), HasSubstr("multiboot information"));
    EXPECT_THAT(e.message(), HasSubstr("beyond guest RAM"));
  }
}

TEST(MultibootTest, QemuMemoryValuesFor128MiB) {
  // tests/guests/expected/hello.out (QEMU -m 128): mem_lower 639, mem_upper 129920.
  GuestRam ram(128ull << 20);
  const MultibootBoot boot =
      load_multiboot(ram, "hello.elf", make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}}), "", {});
  std::uint32_t lower, upper;
  std::memcpy(&lower, ram.host_base() + boot.info_address + 4, 4);
  std::memcpy(&upper, ram.host_base() + boot.info_address + 8, 4);
  EXPECT_EQ(lower, 639u);
  EXPECT_EQ(upper, 129920u);
}

TEST(MultibootTest, PlainMemoryMap) {
  Ram r;
  const MultibootBoot boot = load_multiboot(r.ram, "k", make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}}),
                                            "", {}, MultibootMemoryMap::Plain);
  const std::uint32_t mbi = boot.info_address;
  EXPECT_EQ(r.u32(mbi + 4), 640u);
  EXPECT_EQ(r.u32(mbi + 8), (64u << 10) - 1024);
  ASSERT_EQ(r.u32(mbi + 44), 4u * 24);
  const std::uint32_t last = r.u32(mbi + 48) + 3 * 24;
  EXPECT_EQ(r.u64(last + 4), 0x100000u);
  EXPECT_EQ(r.u64(last + 12), (64ull << 20) - 0x100000);
  EXPECT_EQ(r.u32(last + 20), 1u);
}

TEST(MultibootTest, CmdlineWithoutArgsKeepsQemusTrailingSpace) {
  Ram r;
  const MultibootBoot boot = load(r, make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}}));
  EXPECT_EQ(boot.cmdline, "/boot/kernel.elf ");
  EXPECT_EQ(r.str(r.u32(boot.info_address + 16)), "/boot/kernel.elf ");
}

TEST(MultibootTest, EntryStateIsTheSpecs) {
  Ram r;
  const MultibootBoot boot = load(r, make_elf(0x100020, {{0x100000, 0x100000, code_bytes(64), 64}}));
  const api::VcpuState& s = boot.vcpu;
  EXPECT_EQ(s.gpr[api::gpr::rax], 0x2BADB002u);
  EXPECT_EQ(s.gpr[api::gpr::rbx], boot.info_address);
  EXPECT_EQ(s.rip, 0x100020u);
  EXPECT_EQ(s.rflags, 0x2u);
  EXPECT_EQ(s.cr0 & 0x80000001u, 0x1u) << "PE set, PG clear";
  EXPECT_TRUE(s.cr0 & 0x10) << "ET";
  EXPECT_EQ(s.efer, 0u);
  EXPECT_EQ(s.cs.base, 0u);
  EXPECT_EQ(s.cs.limit, 0xffffffffu);
  EXPECT_EQ(s.cs.type, 0xb);
  EXPECT_TRUE(s.cs.s && s.cs.present && s.cs.db && s.cs.g);
  EXPECT_EQ(s.cs.dpl, 0);
  for (const api::Segment* seg : {&s.ds, &s.es, &s.fs, &s.gs, &s.ss}) {
    EXPECT_EQ(seg->type, 0x3);
    EXPECT_EQ(seg->base, 0u);
    EXPECT_EQ(seg->limit, 0xffffffffu);
    EXPECT_TRUE(seg->present && seg->s && seg->db && seg->g);
    EXPECT_FALSE(seg->unusable);
  }
  EXPECT_EQ(s.tr.type, 0xb);
  EXPECT_FALSE(s.tr.s);
  EXPECT_TRUE(s.tr.present);
  EXPECT_TRUE(s.ldtr.unusable);
}

TEST(MultibootTest, VirtualEntryIsTranslatedToPhysical) {
  Ram r;
  const MultibootBoot boot = load(r, make_elf(0xc0100010, {{0x100000, 0xc0100000, code_bytes(64), 64}}));
  EXPECT_EQ(boot.entry, 0x100010u);
}

TEST(MultibootTest, AoutKludge) {
  Ram r;
  // A flat binary: header at offset 0x40, loaded at 0x200000.
  Bytes b(0x400, 0x90);
  const std::uint32_t flags = 0x10003;
  put32(b, 0x40, 0x1BADB002);
  put32(b, 0x44, flags);
  put32(b, 0x48, static_cast<std::uint32_t>(-(0x1BADB002 + flags)));
  put32(b, 0x4c, 0x200040);  // header_addr
  put32(b, 0x50, 0x200000);  // load_addr
  put32(b, 0x54, 0x200300);  // load_end_addr
  put32(b, 0x58, 0x201000);  // bss_end_addr
  put32(b, 0x5c, 0x200080);  // entry
  std::memset(r.ram.host_base() + 0x200000, 0xee, 0x2000);
  const MultibootBoot boot = load(r, b);
  EXPECT_EQ(boot.entry, 0x200080u);
  EXPECT_EQ(r.ram.host_base()[0x2002ff], 0x90);
  EXPECT_EQ(r.ram.host_base()[0x200300], 0x00) << "BSS zeroed";
  EXPECT_EQ(r.ram.host_base()[0x200fff], 0x00);
  EXPECT_EQ(r.ram.host_base()[0x201000], 0xee);
  EXPECT_EQ(boot.kernel_end, 0x201000u);
}

TEST(MultibootTest, VideoModeRequestIsIgnoredWithANote) {
  Ram r;
  const MultibootBoot boot = load(r, make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}}, 0x7));
  ASSERT_EQ(boot.notes.size(), 1u);
  EXPECT_THAT(boot.notes[0], HasSubstr("video"));
}

void expect_error(const Bytes& image, const std::string& what, std::uint64_t ram = 64ull << 20) {
  GuestRam gram(ram);
  try {
    load_multiboot(gram, "/boot/kernel.elf", image, "", {});
    ADD_FAILURE() << "no error for " << what;
  } catch (const InputError& e) {
    EXPECT_EQ(e.file(), "/boot/kernel.elf");
    EXPECT_THAT(e.what(), HasSubstr("/boot/kernel.elf"));
    EXPECT_THAT(e.message(), HasSubstr(what));
  }
}

TEST(MultibootTest, Errors) {
  expect_error(Bytes(4096, 0), "not a multiboot image");
  expect_error(make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}}, 0x3, false), "bad checksum");
  expect_error(make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}}, 0x8), "unsupported");
  expect_error(make_elf(0x3fff000, {{0x3fff000, 0x3fff000, code_bytes(64), 0x2000}}), "beyond guest RAM");
  Bytes truncated = make_elf(0x100000, {{0x100000, 0x100000, code_bytes(0x400), 0x400}});
  truncated.resize(0x200);
  expect_error(truncated, "truncated ELF");
  Bytes elf64 = make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}});
  elf64[4] = 2;
  expect_error(elf64, "ELF32");
  // A multiboot header but neither ELF nor address fields.
  Bytes flat(0x100, 0);
  put32(flat, 0x10, 0x1BADB002);
  put32(flat, 0x14, 0);
  put32(flat, 0x18, static_cast<std::uint32_t>(-0x1BADB002));
  expect_error(flat, "not ELF");
}

TEST(MultibootTest, HeaderBeyond8KiBIsNotFound) {
  Bytes image = make_elf(0x100000, {{0x100000, 0x100000, code_bytes(0x3000), 0x3000}});
  // Move the header to offset 0x2100 (past 8192 bytes).
  std::memset(&image[0x100], 0, 12);
  put32(image, 0x2100, 0x1BADB002);
  put32(image, 0x2104, 0);
  put32(image, 0x2108, static_cast<std::uint32_t>(-0x1BADB002));
  expect_error(image, "not a multiboot image");
}

TEST(MultibootTest, ModuleBeyondRamIsAnError) {
  Ram r;
  const Bytes image = make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 64}});
  try {
    load(r, image, "", {{"huge.img", "", Bytes(70u << 20, 0)}});
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.file(), "huge.img");
    EXPECT_THAT(e.message(), HasSubstr("beyond guest RAM"));
  }
}

TEST(MultibootTest, LoadsTheGccBuiltKernel) {
  GuestRam ram(64ull << 20);
  const MultibootBoot boot = load_multiboot(ram, MultibootRequest{MODEVISOR_MBKERNEL, "hello world", {}});
  std::ifstream in(MODEVISOR_MBKERNEL, std::ios::binary);
  const Bytes file((std::istreambuf_iterator<char>(in)), {});
  // _start follows the 12-byte multiboot header at 1 MiB (see mbkernel.ld).
  EXPECT_EQ(boot.entry, 0x10000cu);
  EXPECT_EQ(boot.kernel_start, 0x100000u);
  EXPECT_GT(boot.kernel_end, 0x102000u) << "the 8 KiB stack is BSS";
  std::uint32_t magic;
  std::memcpy(&magic, ram.host_base() + 0x100000, 4);
  EXPECT_EQ(magic, 0x1BADB002u);
  EXPECT_EQ(boot.cmdline, std::string(MODEVISOR_MBKERNEL) + " hello world");
  EXPECT_EQ(boot.vcpu.rip, 0x10000cu);
}

// The oracle: boot the fixture kernel under qemu-system-i386 (when installed)
// and compare what it saw with what our loader builds for the same image,
// file name, command line and RAM size.
TEST(MultibootTest, QemuAgreesWithTheLoader) {
  if (std::system("command -v qemu-system-i386 >/dev/null 2>&1") != 0) GTEST_SKIP() << "qemu-system-i386 not installed";
  const std::filesystem::path kernel(MODEVISOR_MBKERNEL);
  const std::string command = "cd '" + kernel.parent_path().string() +
                              "' && timeout 60 qemu-system-i386 -display none -m 64 -serial stdio -monitor none "
                              "-device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel mbkernel.elf "
                              "-append 'a b=c  d' 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string qemu;
  char buf[512];
  while (std::fgets(buf, sizeof buf, pipe)) qemu += buf;
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 33) << "debug-exit 0x10 => (0x10 << 1) | 1\n" << qemu;

  GuestRam ram(64ull << 20);
  std::ifstream in(kernel, std::ios::binary);
  const Bytes image((std::istreambuf_iterator<char>(in)), {});
  const MultibootBoot boot = load_multiboot(ram, "mbkernel.elf", image, "a b=c  d", {});
  auto u32 = [&](std::uint64_t gpa) {
    std::uint32_t v;
    std::memcpy(&v, ram.host_base() + gpa, 4);
    return v;
  };
  auto hex = [](std::uint32_t v) {
    char out[16];
    std::snprintf(out, sizeof out, "0x%08x", v);
    return std::string(out);
  };
  const std::uint32_t mbi = boot.info_address;
  std::ostringstream ours;
  ours << "magic=0x2badb002 mem_upper=" << hex(u32(mbi + 8)) << " bss=0x00000000 data=0x12345678 cmdline=["
       << boot.cmdline << "]\n";
  // QEMU also reports a boot device (flag bit 1); we leave it out.
  ours << "flags=" << hex(u32(mbi) | 0x2) << " mem_lower=" << hex(u32(mbi + 4)) << "\n";
  for (std::uint32_t e = u32(mbi + 48); e < u32(mbi + 48) + u32(mbi + 44); e += 24)
    ours << "mmap " << hex(u32(e + 8)) << hex(u32(e + 4)) << " len " << hex(u32(e + 16)) << hex(u32(e + 12))
         << " type " << hex(u32(e + 20)) << "\n";
  EXPECT_EQ(qemu, ours.str());
}

// The a.out kludge's address fields and the ELF program header fields are
// untrusted 32-bit numbers: at the edges of their width each load either
// stays inside guest RAM (the guard after it would crash this test) or is an
// InputError naming the kernel.
TEST(MultibootTest, EveryAddressFieldAtItsEdgesNeverEscapesGuestRam) {
  const std::uint32_t edges[] = {0, 1, 0xfff, 0x1000, 0x100000, 0x1ffffff, 0x2000000, 0x7fffffff, 0x80000000,
                                 0xfffff000, 0xfffffffc, 0xffffffff};
  int loaded = 0, refused = 0;
  auto attempt = [&](const Bytes& image) {
    GuardedGuestMemory ram(32 << 20);
    try {
      const MultibootBoot boot = load_multiboot(ram, "/boot/kernel.elf", image, "x", {{"mod", "", Bytes(5000, 1)}});
      EXPECT_LE(boot.kernel_end, ram.size());
      for (const auto& [start, end] : boot.modules) EXPECT_LE(end, ram.size());
      ++loaded;
    } catch (const InputError& e) {
      EXPECT_THAT(e.what(), ::testing::AnyOf(::testing::StartsWith("/boot/kernel.elf: "), ::testing::StartsWith("mod: ")))
          << e.what();
      ++refused;
    }
  };
  // a.out kludge: header_addr, load_addr, load_end_addr, bss_end_addr.
  for (std::size_t field = 0; field < 4; ++field)
    for (std::uint32_t value : edges) {
      Bytes b(0x400, 0x90);
      const std::uint32_t flags = 0x10003;
      put32(b, 0x40, 0x1BADB002);
      put32(b, 0x44, flags);
      put32(b, 0x48, static_cast<std::uint32_t>(-(0x1BADB002 + flags)));
      const std::uint32_t fields[4] = {0x200040, 0x200000, 0x200300, 0x201000};
      for (std::size_t i = 0; i < 4; ++i) put32(b, 0x4c + 4 * i, i == field ? value : fields[i]);
      put32(b, 0x5c, 0x200080);
      attempt(b);
    }
  // ELF: p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, then e_phoff.
  for (std::size_t field = 0; field < 6; ++field)
    for (std::uint32_t value : edges) {
      Bytes b = make_elf(0x100000, {{0x100000, 0x100000, code_bytes(64), 4096}});
      if (field < 5) put32(b, 52 + 4 + 4 * field, value);
      else put32(b, 28, value);
      attempt(b);
    }
  EXPECT_GT(loaded, 0);
  EXPECT_GT(refused, 0);
}

TEST(MultibootTest, AFileLargerThanGuestRamIsNotRead) {
  const std::filesystem::path sparse = std::filesystem::temp_directory_path() / "modevisor-sparse-kernel.elf";
  {
    std::ofstream out(sparse, std::ios::binary);
  }
  std::filesystem::resize_file(sparse, 8ull << 30);  // 8 GiB, sparse: no disk used
  GuestRam ram(64ull << 20);
  try {
    load_multiboot(ram, MultibootRequest{sparse, "", {}});
    ADD_FAILURE() << "an 8 GiB kernel was accepted";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("multiboot kernel: the file is 8589934592 bytes; at most 64 MiB are accepted"));
  }
  std::filesystem::remove(sparse);
}

TEST(MultibootTest, MissingFileIsAnInputErrorNamingIt) {
  GuestRam ram(64ull << 20);
  EXPECT_THROW(load_multiboot(ram, MultibootRequest{"/nonexistent/kernel", "", {}}), InputError);
}

}  // namespace
}  // namespace modevisor::host
