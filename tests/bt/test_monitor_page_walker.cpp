// The monitor's page walker on a RAM buffer holding real 32-bit page tables:
// translations, #PF as a value, and when a remembered walk is forgotten.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "monitor_page_walker.hpp"

namespace modevisor::bt {
namespace {

struct GuestRam {
  std::vector<std::uint8_t> bytes = std::vector<std::uint8_t>(4u << 20);
  PhysMem pm{bytes.data(), bytes.size()};
  void w32(std::uint64_t a, std::uint32_t v) { std::memcpy(&bytes[a], &v, 4); }
  std::uint32_t r32(std::uint64_t a) const {
    std::uint32_t v;
    std::memcpy(&v, &bytes[a], 4);
    return v;
  }
};

constexpr std::uint32_t kDir = 0x1000, kTable = 0x2000;
constexpr std::uint32_t kLa = 0x00403000;  // directory entry 1, table entry 3

PagingRegs paging_on() {
  PagingRegs r;
  r.cr0 = 0x80000011u;
  r.cr3 = kDir;
  return r;
}

// la 0x00403xxx -> pa `frame`, supervisor read/write.
void map(GuestRam& ram, std::uint32_t frame, std::uint32_t flags = 3) {
  ram.w32(kDir + 1 * 4, kTable | 3);
  ram.w32(kTable + 3 * 4, frame | flags);
}

TEST(BtMonitorPageWalker, TranslatesAndSetsAccessed) {
  GuestRam ram;
  map(ram, 0x9000);
  MonitorPageWalker walker;
  auto pa = walker.translate(ram.pm, paging_on(), kLa + 0x123, Access{false, false, false});
  ASSERT_TRUE(pa.ok());
  EXPECT_EQ(pa.value(), 0x9123u);
  EXPECT_TRUE(ram.r32(kTable + 3 * 4) & 0x20);  // Accessed
  EXPECT_FALSE(ram.r32(kTable + 3 * 4) & 0x40);  // not Dirty after a read
  auto w = walker.translate(ram.pm, paging_on(), kLa, Access{true, false, false});
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(ram.r32(kTable + 3 * 4) & 0x40);  // Dirty after a write
}

TEST(BtMonitorPageWalker, FaultsAreValuesWithThePageFaultErrorCode) {
  GuestRam ram;
  MonitorPageWalker walker;
  // Not present at the directory: #PF, error "write".
  auto np = walker.translate(ram.pm, paging_on(), kLa, Access{true, false, false});
  ASSERT_FALSE(np.ok());
  EXPECT_EQ(np.fault(), (Fault{14, true, kPfW}));
  // A supervisor page touched from CPL 3: present | user.
  map(ram, 0x9000);
  auto user = walker.translate(ram.pm, paging_on(), kLa, Access{false, true, false});
  ASSERT_FALSE(user.ok());
  EXPECT_EQ(user.fault(), (Fault{14, true, kPfP | kPfU}));
}

TEST(BtMonitorPageWalker, RemembersAWalkUntilItsTableIsWrittenOrFlushed) {
  GuestRam ram;
  map(ram, 0x9000);
  MonitorPageWalker walker;
  ASSERT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}).value(), 0x9000u);
  // The guest remaps the page behind the walker's back: the remembered walk
  // stands (as a TLB would) ...
  map(ram, 0xa000);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}).value(), 0x9000u);
  // ... until the monitor says it wrote that table ...
  walker.drop_table(kTable);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}).value(), 0xa000u);
  // ... or the iteration ends.
  map(ram, 0xb000);
  walker.drop_table(0x5000);  // a page that is no table of this walk changes nothing
  walker.drop_table(kTable + 64 * 4096);  // nor one that shares its filter bit with a table
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}).value(), 0xa000u);
  walker.flush();
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}).value(), 0xb000u);
}

TEST(BtMonitorPageWalker, AccessKindsAreRememberedSeparately) {
  GuestRam ram;
  map(ram, 0x9000, 1);  // present, read-only, supervisor
  PagingRegs regs = paging_on();
  regs.cr0 |= 0x10000;  // CR0.WP: supervisor writes honour R/W
  MonitorPageWalker walker;
  ASSERT_TRUE(walker.translate(ram.pm, regs, kLa, Access{false, false, false}).ok());
  // A read was remembered; a write to the same page still walks and faults.
  auto w = walker.translate(ram.pm, regs, kLa, Access{true, false, false});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.fault(), (Fault{14, true, kPfP | kPfW}));
}

TEST(BtMonitorPageWalker, AWriteWalkAlsoServesReadsButNotFetches) {
  GuestRam ram;
  map(ram, 0x9000);
  MonitorPageWalker walker;
  // A stack page: pushes (a write walk, setting A and D) ...
  ASSERT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{true, false, false}).value(), 0x9000u);
  EXPECT_TRUE(ram.r32(kTable + 3 * 4) & 0x40);
  // ... then pops: the write's walk serves the read (the table is changed
  // behind the walker's back to show it is not walked again) ...
  map(ram, 0xa000);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{false, false, false}).value(), 0x9000u);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{true, false, false}).value(), 0x9000u);
  // ... but neither a fetch (NX, SMEP) nor a user access (U/S) of that page.
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{false, false, true}).value(), 0xa000u);
  map(ram, 0xb000, 7);
  ram.w32(kDir + 1 * 4, kTable | 7);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{false, true, false}).value(), 0xb000u);
}

TEST(BtMonitorPageWalker, AWalkThroughUntracedTablesLastsOneIteration) {
  GuestRam ram;
  map(ram, 0x9000);
  MonitorPageWalker walker;
  walker.next_iteration(0);
  auto none = [](std::uint64_t) { return false; };
  ASSERT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}, none).value(), 0x9000u);
  map(ram, 0xa000);  // the guest could have written an untraced table unseen
  walker.next_iteration(0);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}, none).value(), 0xa000u);
}

TEST(BtMonitorPageWalker, AWalkThroughTracedTablesLastsUntilATableIsReleased) {
  GuestRam ram;
  map(ram, 0x9000);
  MonitorPageWalker walker;
  auto traced = [](std::uint64_t page) { return page == kDir || page == kTable; };
  walker.next_iteration(7);
  ASSERT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}, traced).value(), 0x9000u);
  // Nothing released: the walk is still exact in the next iteration (here
  // the table is changed behind its back to show the walk is not redone).
  map(ram, 0xa000);
  walker.next_iteration(7);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}, traced).value(), 0x9000u);
  // A traced table was released (a guest write to it was seen): walk again.
  walker.next_iteration(8);
  EXPECT_EQ(walker.translate(ram.pm, paging_on(), kLa, Access{}, traced).value(), 0xa000u);
  // Other paging registers (another CR3) never reuse a walk.
  map(ram, 0xb000);
  PagingRegs other = paging_on();
  other.cr0 |= 0x10000;
  EXPECT_EQ(walker.translate(ram.pm, other, kLa, Access{}, traced).value(), 0xb000u);
  // Nor does one after an explicit flush (CR write, INVLPG).
  map(ram, 0xc000);
  walker.flush();
  EXPECT_EQ(walker.translate(ram.pm, other, kLa, Access{}, traced).value(), 0xc000u);
}

// Long mode: addresses above 4 GiB are remembered apart from their low
// halves, and a walk through four tables is forgotten when the last of them
// (the page table) is written.
TEST(BtMonitorPageWalker, LongModeAddressesAndFourLevelWalks) {
  GuestRam ram;
  auto w64 = [&](std::uint64_t a, std::uint64_t v) { std::memcpy(&ram.bytes[a], &v, 8); };
  constexpr std::uint64_t kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000, kLow = 0x5000, kHigh = 0x6000;
  constexpr std::uint64_t kLaLow = 0x0000000000003000, kLaHigh = 0x0000000100003000;  // same slot, PDPT 0 and 4
  w64(kPml4, kPdpt | 3);
  w64(kPdpt + 0 * 8, kPd | 3);
  w64(kPd, kLow | 3);
  w64(kLow + 3 * 8, 0x9000 | 3);
  w64(kPdpt + 4 * 8, 0x4000 | 3);
  w64(0x4000, kHigh | 3);
  w64(kHigh + 3 * 8, 0xa000 | 3);
  PagingRegs regs;
  regs.cr0 = 0x80000011u;
  regs.cr3 = kPml4;
  regs.cr4 = 0x20;
  regs.efer = 0xd00;  // LME, LMA, NXE
  MonitorPageWalker walker;
  EXPECT_EQ(walker.translate(ram.pm, regs, kLaLow + 8, Access{}).value(), 0x9008u);
  EXPECT_EQ(walker.translate(ram.pm, regs, kLaHigh + 8, Access{}).value(), 0xa008u);
  EXPECT_EQ(walker.translate(ram.pm, regs, kLaLow, Access{}).value(), 0x9000u);
  EXPECT_TRUE(walker.allows(regs, kLaLow, Access{}));
  EXPECT_FALSE(walker.allows(regs, kLaHigh, Access{})) << "the low address's walk took the slot";
  // Remapped behind the walker's back: the remembered walk stands until its
  // fourth-level table is written.
  w64(kLow + 3 * 8, 0xb000 | 3);
  EXPECT_EQ(walker.translate(ram.pm, regs, kLaLow, Access{}).value(), 0x9000u);
  walker.drop_table(kLow);
  EXPECT_EQ(walker.translate(ram.pm, regs, kLaLow, Access{}).value(), 0xb000u);
}

}  // namespace
}  // namespace modevisor::bt
