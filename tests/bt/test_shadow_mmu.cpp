// The shadow MMU on its own, over a memfd of guest RAM holding real 32-bit
// page tables: which shadow mappings a page-table write drops, and that a
// table that stays traced keeps a bounded list of what was derived from it.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "shadow.hpp"

namespace modevisor::bt {
namespace {

constexpr std::uint64_t kRam = 8u << 20;
constexpr std::uint32_t kDir = 0x10000, kTable = 0x11000;  // the table maps LA 0-4 MiB

struct Ram {
  int fd = memfd_create("shadow-test", 0);
  std::uint8_t* base = nullptr;
  Ram() {
    EXPECT_EQ(ftruncate(fd, kRam), 0);
    base = static_cast<std::uint8_t*>(mmap(nullptr, kRam, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  }
  ~Ram() {
    munmap(base, kRam);
    close(fd);
  }
  void w32(std::uint64_t a, std::uint32_t v) { std::memcpy(base + a, &v, 4); }
};

// Paging on over a directory at kDir whose one table maps LA page n to PA
// 0x400000 + n pages (user, writable, A and D clear); the supervisor view's
// region active.
struct PagedShadow {
  Ram ram;
  ShadowMmu mmu{ram.base, kRam, ram.fd};
  PagingRegs regs;
  Region* r = nullptr;
  PagedShadow() {
    ram.w32(kDir, kTable | 7);
    for (std::uint32_t n = 0; n < 1024; ++n) ram.w32(kTable + 4 * n, (0x400000 + n * 4096) | 7);
    regs.cr0 = 0x80000011u;
    regs.cr3 = kDir;
    r = mmu.activate(make_region_key(regs, false));
  }
  FillResult fill(std::uint32_t la) {
    std::uint64_t out = 0;
    return mmu.fill(r, regs, la, false, &out);
  }
};

TEST(BtShadowMmu, AWrittenEntryDropsOnlyItsOwnMapping) {
  PagedShadow p;
  ShadowMmu& mmu = p.mmu;
  Region* r = p.r;
  ASSERT_EQ(p.fill(0x5000), FillResult::Mapped);
  ASSERT_EQ(p.fill(0x90000), FillResult::Mapped);
  ASSERT_TRUE(mmu.is_pt_page(kTable));
  // The monitor writes the entry of LA 0x5000 for the guest.
  mmu.pt_entries_written(kTable, 5 * 4, 4);
  EXPECT_FALSE(r->maps.count(0x5000));
  EXPECT_TRUE(r->maps.count(0x90000));
  EXPECT_TRUE(mmu.is_pt_page(kTable));  // still traced for the other entries
  // A write to the directory entry that maps the whole table drops both
  // (and, every mapping gone, releases the table's tracing too).
  ASSERT_EQ(p.fill(0x5000), FillResult::Mapped);
  mmu.pt_entries_written(kDir, 0, 4);
  EXPECT_FALSE(r->maps.count(0x5000));
  EXPECT_FALSE(r->maps.count(0x90000));
  EXPECT_FALSE(mmu.is_pt_page(kDir));
}

TEST(BtShadowMmu, ADirectoryThatStaysTracedKeepsItsDerivationListSmall) {
  PagedShadow p;
  ShadowMmu& mmu = p.mmu;
  ASSERT_EQ(p.fill(0x90000), FillResult::Mapped);  // keeps the table traced
  // A kernel demand-paging one page over and over: each round its PTE is
  // rewritten (dropping the mapping through the table) and the page faults
  // back in (listed again under the directory).
  for (int round = 0; round < 5000; ++round) {
    mmu.pt_entries_written(kTable, 5 * 4, 4);
    ASSERT_EQ(p.fill(0x5000), FillResult::Mapped) << round;
  }
  EXPECT_LE(mmu.derivations(kDir), 128u);
  EXPECT_LE(mmu.derivations(kTable), 128u);
  EXPECT_TRUE(p.r->maps.count(0x90000));
}

}  // namespace
}  // namespace modevisor::bt
