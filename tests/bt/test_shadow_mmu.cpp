// The shadow MMU on its own, over a memfd of guest RAM holding real 32-bit
// and 4-level page tables: which shadow mappings a page-table write drops,
// that a table that stays traced keeps a bounded list of what was derived
// from it, and one region per 4 GiB range of a long-mode linear space.
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
  void w64(std::uint64_t a, std::uint64_t v) { std::memcpy(base + a, &v, 8); }
  std::uint64_t r64(std::uint64_t a) const {
    std::uint64_t v;
    std::memcpy(&v, base + a, 8);
    return v;
  }
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

// Long mode (CR4.PAE, EFER.LME|LMA|NXE, CR0.PG) over 4-level tables at
// kPml4: a kernel's 2 MiB page, a direct-map 4 KiB page (and an NX one
// beside it) and a low 4 KiB page at the same offset in its range as the
// direct-map one.
constexpr std::uint64_t kPml4 = 0x20000, kPdptK = 0x21000, kPdK = 0x22000;
constexpr std::uint64_t kPdptD = 0x23000, kPdD = 0x24000, kPtD = 0x25000;
constexpr std::uint64_t kPdptL = 0x26000, kPdL = 0x27000, kPtL = 0x28000;
constexpr std::uint64_t kKernel = 0xffffffff80000000ull;  // -> 0x200000, 2 MiB
constexpr std::uint64_t kDirect = 0xffff888000001000ull;  // -> 0x5000
constexpr std::uint64_t kDirectNx = 0xffff888000002000ull;  // -> 0x7000, execute-disable
constexpr std::uint64_t kLow = 0x1000;                     // -> 0x6000
constexpr std::uint64_t kNx = 1ull << 63;

unsigned index_at(std::uint64_t la, int level) { return static_cast<unsigned>((la >> (12 + 9 * (level - 1))) & 0x1ff); }

struct LongModeShadow {
  Ram ram;
  ShadowMmu mmu{ram.base, kRam, ram.fd};
  PagingRegs regs;
  LongModeShadow() {
    ram.w64(kPml4 + 8 * index_at(kKernel, 4), kPdptK | 3);
    ram.w64(kPdptK + 8 * index_at(kKernel, 3), kPdK | 3);
    ram.w64(kPdK + 8 * index_at(kKernel, 2), 0x200000 | 0x83);
    ram.w64(kPml4 + 8 * index_at(kDirect, 4), kPdptD | 3);
    ram.w64(kPdptD + 8 * index_at(kDirect, 3), kPdD | 3);
    ram.w64(kPdD + 8 * index_at(kDirect, 2), kPtD | 3);
    ram.w64(kPtD + 8 * index_at(kDirect, 1), 0x5000 | 3);
    ram.w64(kPtD + 8 * index_at(kDirectNx, 1), kNx | 0x7000 | 3);
    ram.w64(kPml4 + 8 * index_at(kLow, 4), kPdptL | 3);
    ram.w64(kPdptL + 8 * index_at(kLow, 3), kPdL | 3);
    ram.w64(kPdL + 8 * index_at(kLow, 2), kPtL | 3);
    ram.w64(kPtL + 8 * index_at(kLow, 1), 0x6000 | 3);
    for (std::uint64_t a = 0; a < 4096; ++a) {
      ram.base[0x200000 + a] = static_cast<std::uint8_t>(a * 7 + 1);
      ram.base[0x5000 + a] = static_cast<std::uint8_t>(a * 11 + 2);
      ram.base[0x6000 + a] = static_cast<std::uint8_t>(a * 13 + 3);
    }
    regs.cr0 = 0x80000011u;
    regs.cr4 = 0x20;                   // PAE
    regs.efer = 0x100 | 0x400 | 0x800;  // LME, LMA, NXE
    regs.cr3 = kPml4;
  }
  Region* region(std::uint64_t la) {
    return mmu.activate(make_region_key(regs, false, static_cast<std::uint32_t>(la >> 32)));
  }
  FillResult fill(Region* r, std::uint64_t la, bool write = false) {
    EXPECT_EQ(r->key.la_high, la >> 32);
    std::uint64_t out = 0;
    return mmu.fill(r, regs, static_cast<std::uint32_t>(la), write, &out);
  }
  // The host bytes the region maps at `la` are guest RAM's at `gpa`.
  bool maps_ram(Region* r, std::uint64_t la, std::uint64_t gpa) const {
    return std::memcmp(r->base + static_cast<std::uint32_t>(la), ram.base + gpa, 4096) == 0;
  }
};

TEST(BtShadowMmuLongMode, EachFourGigabyteRangeHasItsRegion) {
  LongModeShadow p;
  Region* kernel = p.region(kKernel);
  Region* direct = p.region(kDirect);
  Region* low = p.region(kLow);
  EXPECT_NE(kernel, direct);
  EXPECT_NE(direct, low);
  EXPECT_EQ(p.region(kDirect), direct) << "found again by its range";
  EXPECT_EQ(kernel->linear(0x80000000u), kKernel);
  ASSERT_EQ(p.fill(kernel, kKernel + 0x1234), FillResult::Mapped);
  ASSERT_EQ(p.fill(direct, kDirect), FillResult::Mapped);
  ASSERT_EQ(p.fill(low, kLow), FillResult::Mapped);
  EXPECT_TRUE(p.maps_ram(kernel, kKernel + 0x1000, 0x201000));
  EXPECT_TRUE(p.maps_ram(direct, kDirect, 0x5000));
  EXPECT_TRUE(p.maps_ram(low, kLow, 0x6000)) << "the same offset as the direct-map page, another page";
  EXPECT_FALSE(direct->maps.count(0x1000) && direct->maps.at(0x1000).gpa_page == 0x6000);
  // A guest store is seen through the mapping (it is guest RAM, not a copy).
  p.ram.base[0x5000 + 8] = 0xab;
  EXPECT_EQ(direct->base[0x1000 + 8], 0xab);
  // The walks set A on every entry used; a write sets D on the 2 MiB page.
  EXPECT_TRUE(p.ram.r64(kPml4 + 8 * index_at(kKernel, 4)) & 0x20);
  EXPECT_TRUE(p.ram.r64(kPtD + 8 * index_at(kDirect, 1)) & 0x20);
  EXPECT_FALSE(p.ram.r64(kPdK + 8 * index_at(kKernel, 2)) & 0x40);
  ASSERT_EQ(p.fill(kernel, kKernel + 0x1234, true), FillResult::Mapped);
  EXPECT_TRUE(p.ram.r64(kPdK + 8 * index_at(kKernel, 2)) & 0x40);
  kernel->base[0x80001000u] = 0x5a;
  EXPECT_EQ(p.ram.base[0x201000], 0x5a);
  // An unmapped address in a range faults like any other.
  std::uint64_t out = 0;
  EXPECT_EQ(p.mmu.fill(direct, p.regs, 0x40000000u, false, &out), FillResult::GuestFault);
  EXPECT_EQ(out, 0u) << "not present, supervisor read";
  // contains answers the offset; the region says the rest.
  Region* found = nullptr;
  std::uint32_t la32 = 0;
  ASSERT_TRUE(p.mmu.contains(direct->base + 0x1008, &found, &la32));
  EXPECT_EQ(found, direct);
  EXPECT_EQ(found->linear(la32), kDirect + 8);
}

TEST(BtShadowMmuLongMode, TableWritesDropOnlyTheMappingsDerivedFromThem) {
  LongModeShadow p;
  Region* kernel = p.region(kKernel);
  Region* direct = p.region(kDirect);
  Region* low = p.region(kLow);
  ASSERT_EQ(p.fill(kernel, kKernel), FillResult::Mapped);
  ASSERT_EQ(p.fill(direct, kDirect), FillResult::Mapped);
  ASSERT_EQ(p.fill(low, kLow), FillResult::Mapped);
  ASSERT_TRUE(p.mmu.is_pt_page(kPml4));
  ASSERT_TRUE(p.mmu.is_pt_page(kPtD));
  // Another entry of the direct map's table: its mapping stays.
  p.mmu.pt_entries_written(kPtD, 8 * 100, 8);
  EXPECT_TRUE(direct->maps.count(0x1000));
  // Its own entry (the NX bit's half is enough).
  p.mmu.pt_entries_written(kPtD, 8 * index_at(kDirect, 1) + 4, 4);
  EXPECT_FALSE(direct->maps.count(0x1000));
  EXPECT_TRUE(low->maps.count(0x1000)) << "the same offset in another range";
  EXPECT_TRUE(kernel->maps.count(0x80000000u));
  // The kernel's PML4 entry: only the kernel's mapping goes, the root stays traced.
  ASSERT_EQ(p.fill(direct, kDirect), FillResult::Mapped);
  p.mmu.pt_entries_written(kPml4, 8 * index_at(kKernel, 4), 8);
  EXPECT_FALSE(kernel->maps.count(0x80000000u));
  EXPECT_TRUE(direct->maps.count(0x1000));
  EXPECT_TRUE(low->maps.count(0x1000));
  EXPECT_TRUE(p.mmu.is_pt_page(kPml4));
  // A guest write to the kernel's page directory drops what came from it.
  ASSERT_EQ(p.fill(kernel, kKernel), FillResult::Mapped);
  ASSERT_TRUE(p.mmu.is_pt_page(kPdK));
  p.mmu.release_pt_page(kPdK);
  EXPECT_FALSE(kernel->maps.count(0x80000000u));
  EXPECT_TRUE(direct->maps.count(0x1000));
  // A remapped entry is seen on the next fill.
  p.ram.w64(kPtD + 8 * index_at(kDirect, 1), 0x6000 | 3);
  p.mmu.pt_entries_written(kPtD, 8 * index_at(kDirect, 1), 8);
  ASSERT_EQ(p.fill(direct, kDirect), FillResult::Mapped);
  EXPECT_TRUE(p.maps_ram(direct, kDirect, 0x6000));
}

TEST(BtShadowMmuLongMode, InvlpgAndWatchedPagesReachOnlyTheirRange) {
  LongModeShadow p;
  Region* direct = p.region(kDirect);
  Region* low = p.region(kLow);
  ASSERT_EQ(p.fill(direct, kDirect), FillResult::Mapped);
  ASSERT_EQ(p.fill(low, kLow), FillResult::Mapped);
  p.mmu.invlpg(kDirect + 0x10);
  EXPECT_FALSE(direct->maps.count(0x1000));
  EXPECT_TRUE(low->maps.count(0x1000));
  ASSERT_EQ(p.fill(direct, kDirect), FillResult::Mapped);
  p.mmu.invlpg(static_cast<std::uint32_t>(kLow));  // BT32's 32-bit address
  EXPECT_TRUE(direct->maps.count(0x1000));
  EXPECT_FALSE(low->maps.count(0x1000));
  // A data breakpoint on the direct-map page: unmapped there, left to the monitor.
  ASSERT_EQ(p.fill(low, kLow), FillResult::Mapped);
  const std::uint64_t page = kDirect;
  p.mmu.set_watched_pages(&page, 1);
  EXPECT_FALSE(direct->maps.count(0x1000));
  EXPECT_TRUE(low->maps.count(0x1000));
  std::uint64_t out = 0;
  EXPECT_EQ(p.mmu.fill(direct, p.regs, 0x1000, false, &out), FillResult::Mmio);
  EXPECT_EQ(out, 0x5000u);
  p.mmu.invlpg(kLow);
  EXPECT_EQ(p.fill(low, kLow), FillResult::Mapped);
  p.mmu.set_watched_pages(&page, 0);
  EXPECT_EQ(p.fill(direct, kDirect), FillResult::Mapped);
}

TEST(BtShadowMmuLongMode, LongModeAndThirtyTwoBitViewsOfOneRootDiffer) {
  LongModeShadow p;
  PagingRegs pae = p.regs;
  pae.efer = 0x800;  // PAE paging, same CR3
  const RegionKey k64 = make_region_key(p.regs, false);
  const RegionKey k32 = make_region_key(pae, false);
  EXPECT_FALSE(k64 == k32);
  EXPECT_EQ(k32.la_high, 0u);
  EXPECT_TRUE(make_region_key(pae, false, 0xffff8880u) == k32) << "no upper half outside long mode";
  EXPECT_TRUE(make_region_key(p.regs, false, 0xffff8880u).la_high == 0xffff8880u);
  // The PCID in CR3's low bits does not change the tables.
  PagingRegs pcid = p.regs;
  pcid.cr3 |= 0x5;
  EXPECT_TRUE(make_region_key(pcid, false) == k64);
  Region* r64 = p.mmu.activate(k64);
  Region* r32 = p.mmu.activate(k32);
  EXPECT_NE(r64, r32);
  EXPECT_TRUE(r64->long_mode());
  EXPECT_FALSE(r32->long_mode());
}

TEST(BtShadowMmuLongMode, ExecuteDisableFaultsAFetchOnly) {
  LongModeShadow p;
  Region* direct = p.region(kDirectNx);
  ASSERT_EQ(p.fill(direct, kDirectNx), FillResult::Mapped) << "reads are allowed";
  WalkResult w = walk(p.mmu.phys(), p.regs, kDirectNx, Access{false, false, true}, true);
  ASSERT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfP | kPfI);
  w = walk(p.mmu.phys(), p.regs, kDirect, Access{false, false, true}, true);
  EXPECT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x5000u);
  EXPECT_EQ(w.n_pt, 4);
}

TEST(BtShadowMmuLongMode, GuardsGiveTheAddressBeyondTheRange) {
  LongModeShadow p;
  Region* direct = p.region(kDirect);
  std::uint64_t la = 0;
  ASSERT_TRUE(ShadowMmu::in_guard(direct, direct->base + ShadowMmu::kRegionSize + 8, &la));
  EXPECT_EQ(la, 0xffff888100000008ull) << "the next range, not a wrap";
  ASSERT_TRUE(ShadowMmu::in_guard(direct, direct->base - 8, &la));
  EXPECT_EQ(la, 0xffff887ffffffff8ull);
  std::uint32_t la32 = 0;
  ASSERT_TRUE(ShadowMmu::in_guard(direct, direct->base - 8, &la32));
  EXPECT_EQ(la32, 0xfffffff8u);
  PagingRegs pae = p.regs;
  pae.efer = 0x800;
  Region* r32 = p.mmu.activate(make_region_key(pae, false));
  ASSERT_TRUE(ShadowMmu::in_guard(r32, r32->base + ShadowMmu::kRegionSize + 8, &la));
  EXPECT_EQ(la, 8u) << "a 32-bit sum wraps";
}

}  // namespace
}  // namespace modevisor::bt
