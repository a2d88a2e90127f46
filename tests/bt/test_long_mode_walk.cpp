// The guest page-table walker in long mode (IA-32e, 4-level paging), checked
// against the Intel SDM vol. 3 ch. 4.5-4.8 on tables built in a RAM buffer:
// 4 KiB, 2 MiB and 1 GiB pages, low and upper-half addresses, not-present
// and reserved-bit faults at each level, U/S, R/W, XD accumulated over all
// four levels, WP, SMEP/SMAP, A/D bits and the I/D bit.  Also that the 32-bit
// and PAE walks do not notice the long-mode additions.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "shadow.hpp"

namespace modevisor::bt {
namespace {

constexpr std::uint64_t kP = 1, kRW = 2, kUS = 4, kA = 0x20, kD = 0x40, kPS = 0x80, kG = 0x100, kPat = 0x1000;
constexpr std::uint64_t kXD = 1ull << 63;
constexpr std::uint64_t kAll = kP | kRW | kUS;  // present, writable, user
constexpr std::uint64_t kPml4 = 0x1000;
constexpr std::uint64_t kCr4Smep = 1u << 20, kCr4Smap = 1u << 21;

constexpr Access kRead{false, false, false}, kWrite{true, false, false}, kFetch{false, false, true};
constexpr Access kUserRead{false, true, false}, kUserWrite{true, true, false}, kUserFetch{false, true, true};

// Guest RAM holding a PML4 at kPml4 and the tables under it, handed out from 0x10000.
struct LongModeTables {
  std::vector<std::uint8_t> bytes = std::vector<std::uint8_t>(4u << 20);
  PhysMem pm{bytes.data(), bytes.size()};
  std::uint64_t next_table = 0x10000;

  void w64(std::uint64_t a, std::uint64_t v) { std::memcpy(&bytes[a], &v, 8); }
  std::uint64_t r64(std::uint64_t a) const {
    std::uint64_t v;
    std::memcpy(&v, &bytes[a], 8);
    return v;
  }
  // The address of `la`'s entry at `level` (4: PML4E ... 1: PTE); missing
  // tables above it are made present, writable and user on the way.
  std::uint64_t entry(std::uint64_t la, int level) {
    std::uint64_t table = kPml4;
    for (int l = 4;; --l) {
      const std::uint64_t addr = table + (((la >> (12 + 9 * (l - 1))) & 511) << 3);
      if (l == level) return addr;
      if (!(r64(addr) & kP)) {
        w64(addr, next_table | kAll);
        next_table += 0x1000;
      }
      table = r64(addr) & 0x000ffffffffff000ull;
    }
  }
  void set(std::uint64_t la, int level, std::uint64_t value) { w64(entry(la, level), value); }
  void add(std::uint64_t la, int level, std::uint64_t bits) { w64(entry(la, level), r64(entry(la, level)) | bits); }
  void clear(std::uint64_t la, int level, std::uint64_t bits) {
    w64(entry(la, level), r64(entry(la, level)) & ~bits);
  }
  std::uint64_t get(std::uint64_t la, int level) { return r64(entry(la, level)); }
};

// Long mode as the architecture requires it: CR0.PG|PE, CR4.PAE, EFER.LME|LMA.
PagingRegs long_mode(bool nxe = true, bool wp = false) {
  PagingRegs r;
  r.cr0 = 0x80000011u | (wp ? 1u << 16 : 0);
  r.cr3 = kPml4;
  r.cr4 = 0x20;
  r.efer = 0x500 | (nxe ? 0x800 : 0);
  return r;
}

constexpr std::uint64_t kLow = 0x0000000000401234;   // PML4 0, PDPT 0, PD 2, PT 1
constexpr std::uint64_t kHalf = 0xffff800000001234;  // PML4 256, PDPT 0, PD 0, PT 1
constexpr std::uint64_t kTop = 0xffffffff80000000;   // PML4 511, PDPT 510, PD 0, PT 0

TEST(BtLongModeWalk, LongModeNeedsPagingAndLma) {
  PagingRegs r = long_mode();
  EXPECT_TRUE(r.long_mode());
  r.efer = 0x100 | 0x800;  // LME without LMA: not active
  EXPECT_FALSE(r.long_mode());
  r = long_mode();
  r.cr0 = 0x11;
  EXPECT_FALSE(r.long_mode());
  EXPECT_FALSE(PagingRegs{}.pages_1g);
}

TEST(BtLongModeWalk, Canonical48) {
  EXPECT_TRUE(canonical48(0));
  EXPECT_TRUE(canonical48(0x00007fffffffffff));
  EXPECT_FALSE(canonical48(0x0000800000000000));
  EXPECT_FALSE(canonical48(0xffff7fffffffffff));
  EXPECT_TRUE(canonical48(0xffff800000000000));
  EXPECT_TRUE(canonical48(~0ull));
  EXPECT_FALSE(canonical48(0x0001000000000000));
}

TEST(BtLongModeWalk, FourKilobytePagesLowAndUpperHalf) {
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kAll);
  t.set(kHalf, 1, 0xa000 | kAll);
  t.set(kTop, 1, 0x0000000123456000 | kAll);  // a frame above 4 GiB
  WalkResult w = walk(t.pm, long_mode(), kLow, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x9234u);
  EXPECT_FALSE(w.large);
  ASSERT_EQ(w.n_pt, 4);
  EXPECT_EQ(w.pt_pages[0], kPml4);
  EXPECT_EQ(w.pt_pages[1], t.get(kLow, 4) & ~0xfffull);
  EXPECT_EQ(w.pt_pages[2], t.get(kLow, 3) & ~0xfffull);
  EXPECT_EQ(w.pt_pages[3], t.get(kLow, 2) & ~0xfffull);

  w = walk(t.pm, long_mode(), kHalf, kRead, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0xa234u);
  EXPECT_TRUE(t.r64(kPml4 + 256 * 8) & kA) << "0xffff8000_00000000 is PML4 entry 256";

  w = walk(t.pm, long_mode(), kTop + 0xabc, kRead, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x0000000123456abcu);
  EXPECT_TRUE(t.r64(kPml4 + 511 * 8) & kA) << "-2 GiB is PML4 entry 511 ...";
  const std::uint64_t pdpt = t.r64(kPml4 + 511 * 8) & ~0xfffull;
  EXPECT_TRUE(t.r64(pdpt + 510 * 8) & kA) << "... and PDPT entry 510";
}

TEST(BtLongModeWalk, CallerChecksCanonicalForm) {
  // Bits 63:48 take no part in the walk: a non-canonical address is the
  // caller's #GP/#SS, and the walker translates bits 47:0.
  LongModeTables t;
  t.set(kHalf, 1, 0xa000 | kAll);
  const WalkResult w = walk(t.pm, long_mode(), 0x0000800000001234, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0xa234u);
}

TEST(BtLongModeWalk, TwoMegabytePages) {
  LongModeTables t;
  t.set(kTop, 2, 0x00600000 | kPS | kAll);
  WalkResult w = walk(t.pm, long_mode(), kTop + 0x12345, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x00612345u);
  EXPECT_TRUE(w.large);
  EXPECT_EQ(w.n_pt, 3);
  // Bit 12 of a large-page entry is PAT, not part of the frame address.
  t.add(kTop, 2, kPat);
  w = walk(t.pm, long_mode(), kTop + 0x1fffff, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x007fffffu);
}

TEST(BtLongModeWalk, OneGigabytePagesOnlyWhenOffered) {
  LongModeTables t;
  const std::uint64_t la = 0xffff80004abcdef0;  // PML4 256, PDPT 1, offset 0x0abcdef0
  t.set(la, 3, 0x80000000 | kPS | kPat | kAll);
  PagingRegs r = long_mode();
  r.pages_1g = true;
  WalkResult w = walk(t.pm, r, la, kWrite, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x8abcdef0u);
  EXPECT_TRUE(w.large);
  EXPECT_EQ(w.n_pt, 2);
  EXPECT_EQ(t.get(la, 3) & (kA | kD), kA | kD);

  // Without Page1GB, PS in a PDPTE is a reserved bit.
  t.clear(la, 3, kA | kD);
  t.clear(la, 4, kA);
  r.pages_1g = false;
  w = walk(t.pm, r, la, kRead, true);
  ASSERT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfP | kPfRsvd);
  EXPECT_EQ(t.get(la, 3) & kA, 0u);
  EXPECT_EQ(t.get(la, 4) & kA, 0u);

  // Bits 29:13 of a 1 GiB page's entry are reserved.
  r.pages_1g = true;
  for (const unsigned bit : {13u, 20u, 29u}) {
    t.set(la, 3, 0x80000000 | (1ull << bit) | kPS | kAll);
    w = walk(t.pm, r, la, kRead, false);
    EXPECT_FALSE(w.ok) << bit;
    EXPECT_EQ(w.error, kPfP | kPfRsvd) << bit;
  }
}

TEST(BtLongModeWalk, NotPresentAtEachLevel) {
  for (int level = 4; level >= 1; --level) {
    LongModeTables t;
    t.set(kLow, 1, 0x9000 | kAll);
    t.clear(kLow, level, kP);
    WalkResult w = walk(t.pm, long_mode(), kLow, kRead, true);
    ASSERT_FALSE(w.ok) << level;
    EXPECT_EQ(w.error, 0u) << level;
    w = walk(t.pm, long_mode(), kLow, kUserWrite, true);
    EXPECT_EQ(w.error, kPfW | kPfU) << level;
    w = walk(t.pm, long_mode(), kLow, kFetch, true);
    EXPECT_EQ(w.error, kPfI) << level << ": a fetch under EFER.NXE reports I/D";
    for (int l = 4; l >= level; --l) EXPECT_EQ(t.get(kLow, l) & kA, 0u) << level << " " << l;
  }
}

TEST(BtLongModeWalk, ReservedBitsOfANotPresentEntryDoNotMatter) {
  LongModeTables t;
  PagingRegs r = long_mode();
  r.max_phys_bits = 40;
  t.set(kLow, 2, (1ull << 51) | kPS | 0x1fe000);  // P clear: everything else is the OS's
  const WalkResult w = walk(t.pm, r, kLow, kRead, false);
  ASSERT_FALSE(w.ok);
  EXPECT_EQ(w.error, 0u);
}

TEST(BtLongModeWalk, UserSupervisorAccumulatesOverAllLevels) {
  for (int level = 4; level >= 1; --level) {
    LongModeTables t;
    t.set(kLow, 1, 0x9000 | kAll);
    t.clear(kLow, level, kUS);
    WalkResult w = walk(t.pm, long_mode(), kLow, kUserRead, true);
    ASSERT_FALSE(w.ok) << level;
    EXPECT_EQ(w.error, kPfP | kPfU) << level;
    EXPECT_EQ(walk(t.pm, long_mode(), kLow, kUserFetch, false).error, kPfP | kPfU | kPfI) << level;
    w = walk(t.pm, long_mode(), kLow, kRead, false);
    ASSERT_TRUE(w.ok) << level;
    EXPECT_FALSE(w.user) << level;
  }
}

TEST(BtLongModeWalk, ReadWriteAccumulatesOverAllLevelsAndWpGuardsSupervisorWrites) {
  for (int level = 4; level >= 1; --level) {
    LongModeTables t;
    t.set(kLow, 1, 0x9000 | kAll);
    t.clear(kLow, level, kRW);
    WalkResult w = walk(t.pm, long_mode(), kLow, kUserWrite, false);
    ASSERT_FALSE(w.ok) << level;
    EXPECT_EQ(w.error, kPfP | kPfW | kPfU) << level;
    EXPECT_TRUE(walk(t.pm, long_mode(), kLow, kUserRead, false).ok) << level;
    w = walk(t.pm, long_mode(/*nxe=*/true, /*wp=*/false), kLow, kWrite, false);
    ASSERT_TRUE(w.ok) << level << ": CR0.WP=0 lets the supervisor write";
    EXPECT_FALSE(w.writable) << level;
    w = walk(t.pm, long_mode(true, /*wp=*/true), kLow, kWrite, false);
    ASSERT_FALSE(w.ok) << level;
    EXPECT_EQ(w.error, kPfP | kPfW) << level;
  }
  // CR0.WP applies to supervisor writes to user pages as well.
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kP | kUS);
  EXPECT_EQ(walk(t.pm, long_mode(true, true), kLow, kWrite, false).error, kPfP | kPfW);
}

TEST(BtLongModeWalk, ExecuteDisableAtAnyLevelStopsFetchesOnly) {
  for (int level = 4; level >= 1; --level) {
    LongModeTables t;
    t.set(kLow, 1, 0x9000 | kAll);
    t.add(kLow, level, kXD);
    WalkResult w = walk(t.pm, long_mode(), kLow, kFetch, true);
    ASSERT_FALSE(w.ok) << level;
    EXPECT_EQ(w.error, kPfP | kPfI) << level;
    EXPECT_EQ(walk(t.pm, long_mode(), kLow, kUserFetch, false).error, kPfP | kPfU | kPfI) << level;
    EXPECT_EQ(t.get(kLow, 1) & kA, 0u) << level << ": a faulting walk sets no A";
    w = walk(t.pm, long_mode(), kLow, kUserWrite, false);
    ASSERT_TRUE(w.ok) << level << ": data accesses are unaffected";
    EXPECT_TRUE(w.nx) << level;
  }
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kAll);
  WalkResult w = walk(t.pm, long_mode(), kLow, kFetch, false);
  ASSERT_TRUE(w.ok);
  EXPECT_FALSE(w.nx);
  // A 2 MiB page's own XD.
  t.set(kTop, 2, 0x00600000 | kPS | kAll | kXD);
  EXPECT_EQ(walk(t.pm, long_mode(), kTop, kFetch, false).error, kPfP | kPfI);
}

TEST(BtLongModeWalk, ExecuteDisableBitIsReservedWithoutNxe) {
  for (int level = 4; level >= 1; --level) {
    LongModeTables t;
    t.set(kLow, 1, 0x9000 | kAll);
    t.add(kLow, level, kXD);
    WalkResult w = walk(t.pm, long_mode(/*nxe=*/false), kLow, kRead, true);
    ASSERT_FALSE(w.ok) << level;
    EXPECT_EQ(w.error, kPfP | kPfRsvd) << level;
    // Without NXE (and SMEP) a fetch's fault has no I/D bit.
    EXPECT_EQ(walk(t.pm, long_mode(false), kLow, kUserFetch, false).error, kPfP | kPfRsvd | kPfU) << level;
    EXPECT_EQ(walk(t.pm, long_mode(false), kLow, kUserWrite, false).error, kPfP | kPfRsvd | kPfW | kPfU) << level;
    EXPECT_EQ(t.get(kLow, 4) & kA, 0u) << level;
  }
  LongModeTables t;
  EXPECT_EQ(walk(t.pm, long_mode(false), kLow, kFetch, false).error, 0u) << "not present, no NXE/SMEP: no I/D";
}

TEST(BtLongModeWalk, PageSizeBitInAPml4eIsReserved) {
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kAll);
  t.add(kLow, 4, kPS);
  EXPECT_EQ(walk(t.pm, long_mode(), kLow, kRead, true).error, kPfP | kPfRsvd);
  EXPECT_EQ(walk(t.pm, long_mode(), kLow, kUserWrite, true).error, kPfP | kPfRsvd | kPfW | kPfU);
  EXPECT_EQ(walk(t.pm, long_mode(), kLow, kFetch, true).error, kPfP | kPfRsvd | kPfI);
  EXPECT_EQ(t.get(kLow, 4) & kA, 0u);
  // Not a 512 GiB page either: a PDPT at physical 0 leaves no address bit
  // that a large page's alignment would reject.
  const std::uint64_t la = 0x0000008000001000;  // PML4 entry 1
  t.w64(kPml4 + 1 * 8, 0x0 | kAll);
  t.set(la, 1, 0x9000 | kAll);
  ASSERT_TRUE(walk(t.pm, long_mode(), la, kRead, false).ok);
  t.add(la, 4, kPS);
  EXPECT_EQ(walk(t.pm, long_mode(), la, kRead, false).error, kPfP | kPfRsvd);
}

TEST(BtLongModeWalk, ReservedBitsOfATwoMegabytePage) {
  LongModeTables t;
  for (const unsigned bit : {13u, 16u, 20u}) {
    t.set(kTop, 2, 0x00600000 | (1ull << bit) | kPS | kAll);
    const WalkResult w = walk(t.pm, long_mode(), kTop, kRead, false);
    EXPECT_FALSE(w.ok) << bit;
    EXPECT_EQ(w.error, kPfP | kPfRsvd) << bit;
  }
  // Bit 13 of an entry that refers to a page table is an address bit.
  t.set(kLow, 2, 0x2000 | kAll);
  t.w64(0x2000 + 1 * 8, 0x9000 | kAll);
  const WalkResult w = walk(t.pm, long_mode(), kLow, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x9234u);
}

TEST(BtLongModeWalk, AddressBitsAboveMaxPhyAddrAreReserved) {
  PagingRegs r = long_mode();
  r.max_phys_bits = 40;
  for (int level = 4; level >= 1; --level) {
    for (const unsigned bit : {40u, 51u}) {
      LongModeTables t;
      t.set(kLow, 1, 0x9000 | kAll);
      t.add(kLow, level, 1ull << bit);
      const WalkResult w = walk(t.pm, r, kLow, kRead, true);
      ASSERT_FALSE(w.ok) << level << " bit " << bit;
      EXPECT_EQ(w.error, kPfP | kPfRsvd) << level << " bit " << bit;
      EXPECT_EQ(t.get(kLow, 4) & kA, 0u);
    }
  }
  LongModeTables t;
  t.set(kLow, 1, (1ull << 39) | 0x9000 | kAll);
  WalkResult w = walk(t.pm, r, kLow, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, (1ull << 39) | 0x9234) << "bit 39 is below MAXPHYADDR 40";
  // The default is the PAE walk's 52 bits: bit 51 is part of the address.
  t.set(kLow, 1, (1ull << 51) | 0x9000 | kAll);
  w = walk(t.pm, long_mode(), kLow, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, (1ull << 51) | 0x9234);
  // A 2 MiB page's frame too.
  t.set(kTop, 2, (1ull << 45) | 0x00600000 | kPS | kAll);
  EXPECT_EQ(walk(t.pm, r, kTop, kRead, false).error, kPfP | kPfRsvd);
}

TEST(BtLongModeWalk, IgnoredHighBitsAreIgnored) {
  // Bits 62:52 are ignored in every entry (62:59 would be the protection key
  // under CR4.PKE, which is not offered).
  LongModeTables t;
  PagingRegs r = long_mode();
  r.max_phys_bits = 40;
  t.set(kLow, 1, 0x9000 | kAll | (0x7ffull << 52));
  for (int level = 4; level >= 2; --level) t.add(kLow, level, 0x7ffull << 52);
  const WalkResult w = walk(t.pm, r, kLow, kRead, false);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x9234u);
}

TEST(BtLongModeWalk, AccessedInEveryEntryDirtyInTheLeafOnly) {
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kAll);
  auto flags = [&](std::uint64_t la, int level) { return t.get(la, level) & (kA | kD); };
  WalkResult w = walk(t.pm, long_mode(), kLow, kRead, true);
  ASSERT_TRUE(w.ok);
  EXPECT_FALSE(w.accessed) << "A was clear before this walk";
  EXPECT_FALSE(w.dirty);
  for (int l = 4; l >= 1; --l) EXPECT_EQ(flags(kLow, l), kA) << l;
  w = walk(t.pm, long_mode(), kLow, kWrite, true);
  ASSERT_TRUE(w.ok);
  EXPECT_TRUE(w.accessed);
  EXPECT_TRUE(w.dirty);
  EXPECT_EQ(flags(kLow, 1), kA | kD);
  for (int l = 4; l >= 2; --l) EXPECT_EQ(flags(kLow, l), kA) << l << ": no D above the leaf";
  EXPECT_EQ(t.get(kLow, 1), 0x9000 | kAll | kA | kD) << "nothing else changed";

  // Without set_ad nothing is written; w.accessed tells whether it would be.
  t.set(kHalf, 1, 0xa000 | kAll);
  w = walk(t.pm, long_mode(), kHalf, kWrite, false);
  ASSERT_TRUE(w.ok);
  EXPECT_FALSE(w.dirty);
  for (int l = 4; l >= 1; --l) EXPECT_EQ(flags(kHalf, l), 0u) << l;

  // A large page's leaf gets D.
  t.set(kTop, 2, 0x00600000 | kPS | kAll);
  ASSERT_TRUE(walk(t.pm, long_mode(), kTop, kWrite, true).ok);
  EXPECT_EQ(flags(kTop, 2), kA | kD);
  EXPECT_EQ(flags(kTop, 3), kA);
  EXPECT_EQ(flags(kTop, 4), kA);
}

TEST(BtLongModeWalk, FaultingWalksSetNoAccessedOrDirtyBits) {
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kP | kUS);  // read-only
  EXPECT_FALSE(walk(t.pm, long_mode(), kLow, kUserWrite, true).ok);
  for (int l = 4; l >= 1; --l) EXPECT_EQ(t.get(kLow, l) & (kA | kD), 0u) << l;
  t.set(kHalf, 1, 0xa000 | kP | kRW);  // supervisor
  EXPECT_FALSE(walk(t.pm, long_mode(), kHalf, kUserRead, true).ok);
  for (int l = 4; l >= 1; --l) EXPECT_EQ(t.get(kHalf, l) & (kA | kD), 0u) << l;
}

TEST(BtLongModeWalk, SmepAndSmap) {
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kAll);                // user page
  t.set(kTop, 1, 0xa000 | kAll);
  t.clear(kTop, 4, kUS);                         // supervisor page: U/S clear in the PML4E only
  PagingRegs r = long_mode();
  EXPECT_TRUE(walk(t.pm, r, kLow, kFetch, false).ok) << "no SMEP";
  EXPECT_TRUE(walk(t.pm, r, kLow, kWrite, false).ok) << "no SMAP";
  r.cr4 |= kCr4Smep;
  EXPECT_EQ(walk(t.pm, r, kLow, kFetch, true).error, kPfP | kPfI);
  EXPECT_EQ(t.get(kLow, 1) & kA, 0u);
  EXPECT_TRUE(walk(t.pm, r, kLow, kRead, false).ok) << "SMEP does not restrict data";
  EXPECT_TRUE(walk(t.pm, r, kLow, kUserFetch, false).ok);
  EXPECT_TRUE(walk(t.pm, r, kTop, kFetch, false).ok) << "supervisor page";
  r.cr4 |= kCr4Smap;
  EXPECT_EQ(walk(t.pm, r, kLow, kRead, false).error, kPfP);
  EXPECT_EQ(walk(t.pm, r, kLow, kWrite, false).error, kPfP | kPfW);
  EXPECT_TRUE(walk(t.pm, r, kLow, kUserWrite, false).ok);
  EXPECT_TRUE(walk(t.pm, r, kTop, kWrite, false).ok) << "supervisor page";
  r.smap_suspended = true;  // EFLAGS.AC at CPL < 3
  EXPECT_TRUE(walk(t.pm, r, kLow, kWrite, false).ok);
  EXPECT_EQ(walk(t.pm, r, kLow, kFetch, false).error, kPfP | kPfI) << "AC does not lift SMEP";
  // SMEP alone makes a fetch's fault report I/D, without NXE.
  PagingRegs no_nx = long_mode(false);
  no_nx.cr4 |= kCr4Smep;
  EXPECT_EQ(walk(t.pm, no_nx, kHalf, kFetch, false).error, kPfI);
}

TEST(BtLongModeWalk, GlobalIsTheLeafsGBit) {
  LongModeTables t;
  t.set(kLow, 1, 0x9000 | kAll | kG);
  t.set(kHalf, 1, 0xa000 | kAll);
  t.add(kHalf, 2, kG);  // ignored in an entry that refers to a table
  t.add(kHalf, 4, kG);
  t.set(kTop, 2, 0x00600000 | kPS | kAll | kG);
  EXPECT_TRUE(walk(t.pm, long_mode(), kLow, kRead, false).global);
  EXPECT_FALSE(walk(t.pm, long_mode(), kHalf, kRead, false).global);
  EXPECT_TRUE(walk(t.pm, long_mode(), kTop, kRead, false).global);
  PagingRegs r = long_mode();
  r.pages_1g = true;
  t.set(0x40000000, 3, 0x40000000 | kPS | kAll | kG);
  EXPECT_TRUE(walk(t.pm, r, 0x40000000, kRead, false).global);
}

// ------------------------------------------------------ legacy walks unchanged

struct LegacyRam {
  std::vector<std::uint8_t> bytes = std::vector<std::uint8_t>(16u << 20);
  PhysMem pm{bytes.data(), bytes.size()};
  void w32(std::uint64_t a, std::uint32_t v) { std::memcpy(&bytes[a], &v, 4); }
  void w64(std::uint64_t a, std::uint64_t v) { std::memcpy(&bytes[a], &v, 8); }
  std::uint32_t r32(std::uint64_t a) const {
    std::uint32_t v;
    std::memcpy(&v, &bytes[a], 4);
    return v;
  }
};

TEST(BtLongModeWalk, LegacyWalksIgnoreTheLongModeAdditions) {
  LegacyRam m;
  m.w32(0x1000, 0x2000 | 7);
  m.w32(0x2000 + 5 * 4, 0x9000 | 7 | 0x100);     // 0x5000: 4 KiB, global
  m.w32(0x1000 + 2 * 4, 0x00c00000 | 0x87 | (3u << 13));  // 0x800000: 4 MiB, PSE-36 bits 33:32 = 3
  PagingRegs r;
  r.cr0 = 0x80000011u;
  r.cr3 = 0x1000;
  r.cr4 = 0x10;  // PSE
  PagingRegs odd = r;
  odd.pages_1g = true;
  odd.max_phys_bits = 32;
  odd.efer = 0x100;  // LME without LMA: still 2-level paging
  for (const PagingRegs& regs : {r, odd}) {
    ASSERT_FALSE(regs.long_mode());
    WalkResult w = walk(m.pm, regs, 0x5123, kUserRead, false);
    ASSERT_TRUE(w.ok);
    EXPECT_EQ(w.pa, 0x9123u);
    EXPECT_EQ(w.n_pt, 2);
    EXPECT_TRUE(w.global);
    EXPECT_FALSE(w.large);
    // A linear address has 32 bits outside long mode.
    EXPECT_EQ(walk(m.pm, regs, 0xabcd00005123ull, kUserRead, false).pa, 0x9123u);
    w = walk(m.pm, regs, 0x812345, kWrite, true);
    ASSERT_TRUE(w.ok);
    EXPECT_EQ(w.pa, 0x300c12345u);
    EXPECT_TRUE(w.large);
    EXPECT_EQ(w.n_pt, 1);
    EXPECT_FALSE(w.nx);
  }
  EXPECT_EQ(m.r32(0x1008) & 0x60, 0x60u);

  // PAE: 3 levels, XD under NXE, n_pt 3.
  LegacyRam p;
  PagingRegs pae;
  pae.cr0 = 0x80000011u;
  pae.cr3 = 0x3000;
  pae.cr4 = 0x20;
  pae.efer = 0x800;
  p.w64(0x3000, 0x4000 | 1);
  p.w64(0x4000, 0x5000 | 7);
  p.w64(0x5000 + 8, 0x6000 | 7 | (1ull << 63));
  PagingRegs pae_odd = pae;
  pae_odd.pages_1g = true;
  pae_odd.max_phys_bits = 36;
  for (const PagingRegs& regs : {pae, pae_odd}) {
    ASSERT_FALSE(regs.long_mode());
    WalkResult w = walk(p.pm, regs, 0x1010, kRead, false);
    ASSERT_TRUE(w.ok);
    EXPECT_EQ(w.pa, 0x6010u);
    EXPECT_EQ(w.n_pt, 3);
    EXPECT_TRUE(w.nx);
    EXPECT_FALSE(w.global);
    EXPECT_EQ(walk(p.pm, regs, 0x1010, kFetch, false).error, kPfP | kPfI);
    EXPECT_EQ(walk(p.pm, regs, 0x7fff00001010ull, kRead, false).pa, 0x6010u);
  }
}

}  // namespace
}  // namespace modevisor::bt
