// Shadow paging: the guest page-table walker (A/D bits, permissions, error
// codes, 4K/4M/2M pages, PAE, NX) and whole-VM paging scenarios (hidden and
// true faults, #PF delivery with CR2/error code, traced page-table writes,
// user/supervisor separation).
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <chrono>
#include <thread>
#include <vector>

#include "bt_test_machine.hpp"
#include "shadow.hpp"

using namespace modevisor::bt;
using namespace bttest;

namespace {

struct Phys {
  std::vector<std::uint8_t> ram = std::vector<std::uint8_t>(16u << 20);
  PhysMem pm{ram.data(), ram.size()};
  void w32(std::uint64_t a, std::uint32_t v) { std::memcpy(&ram[a], &v, 4); }
  void w64(std::uint64_t a, std::uint64_t v) { std::memcpy(&ram[a], &v, 8); }
  std::uint32_t r32(std::uint64_t a) const {
    std::uint32_t v;
    std::memcpy(&v, &ram[a], 4);
    return v;
  }
  std::uint64_t r64(std::uint64_t a) const {
    std::uint64_t v;
    std::memcpy(&v, &ram[a], 8);
    return v;
  }
};

PagingRegs regs32(std::uint32_t cr3, bool pse = false, bool wp = false) {
  PagingRegs r;
  r.cr0 = 0x80000011u | (wp ? 0x10000u : 0);
  r.cr3 = cr3;
  r.cr4 = pse ? 0x10 : 0;
  return r;
}

}  // namespace

TEST(BtWalker, PagingOffIsIdentity) {
  Phys p;
  PagingRegs r;
  r.cr0 = 0x11;
  WalkResult w = walk(p.pm, r, 0x123456, Access{true, true, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x123456u);
}

TEST(BtWalker, FourKPageSetsAccessedThenDirty) {
  Phys p;
  p.w32(0x1000, 0x2000 | 7);
  p.w32(0x2000 + 5 * 4, 0x9000 | 7);
  WalkResult w = walk(p.pm, regs32(0x1000), 0x5123, Access{false, false, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x9123u);
  EXPECT_FALSE(w.dirty);
  EXPECT_EQ(p.r32(0x1000) & 0x60, 0x20u);  // PDE: A
  EXPECT_EQ(p.r32(0x2014) & 0x60, 0x20u);  // PTE: A, not D
  EXPECT_EQ(w.n_pt, 2);
  EXPECT_EQ(w.pt_pages[0], 0x1000u);
  EXPECT_EQ(w.pt_pages[1], 0x2000u);
  w = walk(p.pm, regs32(0x1000), 0x5123, Access{true, false, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_TRUE(w.dirty);
  EXPECT_EQ(p.r32(0x2014) & 0x60, 0x60u);  // PTE: A and D
  EXPECT_EQ(p.r32(0x1000) & 0x40, 0x00u);  // PDE never gets D
}

TEST(BtWalker, WalkWithoutSetAdLeavesTablesAlone) {
  Phys p;
  p.w32(0x1000, 0x2000 | 7);
  p.w32(0x2000, 0x9000 | 7);
  ASSERT_TRUE(walk(p.pm, regs32(0x1000), 0x10, Access{true, false, false}, false).ok);
  EXPECT_EQ(p.r32(0x2000), 0x9007u);
}

TEST(BtWalker, NotPresentErrorCodes) {
  Phys p;
  p.w32(0x1000, 0x2000 | 7);
  WalkResult w = walk(p.pm, regs32(0x1000), 0x400000, Access{false, false, false}, true);
  EXPECT_FALSE(w.ok);
  EXPECT_EQ(w.error, 0u);
  w = walk(p.pm, regs32(0x1000), 0x3000, Access{true, true, false}, true);
  EXPECT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfW | kPfU);
}

TEST(BtWalker, ProtectionUserSupervisorAndWriteProtect) {
  Phys p;
  p.w32(0x1000, 0x2000 | 7);
  p.w32(0x2000 + 1 * 4, 0x9000 | 5);  // user, read-only
  p.w32(0x2000 + 2 * 4, 0xa000 | 3);  // supervisor, writable
  EXPECT_EQ(walk(p.pm, regs32(0x1000), 0x1000, Access{true, true, false}, true).error, kPfP | kPfW | kPfU);
  EXPECT_TRUE(walk(p.pm, regs32(0x1000), 0x1000, Access{true, false, false}, true).ok);  // CR0.WP=0
  EXPECT_EQ(walk(p.pm, regs32(0x1000, false, true), 0x1000, Access{true, false, false}, true).error, kPfP | kPfW);
  EXPECT_EQ(walk(p.pm, regs32(0x1000), 0x2000, Access{false, true, false}, true).error, kPfP | kPfU);
  WalkResult w = walk(p.pm, regs32(0x1000), 0x2000, Access{false, false, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_FALSE(w.user);
  EXPECT_TRUE(w.writable);
}

// SMEP and SMAP (CR4 bits 20 and 21): supervisor fetches from user pages and
// supervisor data accesses to them fault with the plain protection error
// code (I/D on fetches whenever SMEP is on, even without PAE/NX); EFLAGS.AC
// at CPL < 3 suspends SMAP; user accesses and supervisor pages are unaffected.
TEST(BtWalker, SmepAndSmapFaultSupervisorAccessesToUserPages) {
  Phys p;
  p.w32(0x1000, 0x2000 | 7);
  p.w32(0x2000, 0x9000 | 7);         // 0x0000: user page
  p.w32(0x2004, 0xa000 | 3);         // 0x1000: supervisor page
  PagingRegs r = regs32(0x1000);
  const Access sup_fetch{false, false, true}, sup_read{false, false, false}, sup_write{true, false, false};
  EXPECT_TRUE(walk(p.pm, r, 0x0010, sup_fetch, false).ok) << "no SMEP: allowed";
  EXPECT_TRUE(walk(p.pm, r, 0x0010, sup_write, false).ok) << "no SMAP: allowed";
  r.cr4 |= 1u << 20;  // SMEP
  WalkResult w = walk(p.pm, r, 0x0010, sup_fetch, true);
  ASSERT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfP | kPfI);
  EXPECT_EQ(p.r32(0x2000) & 0x20, 0u) << "a faulting walk sets no accessed bit";
  w = walk(p.pm, r, 0x3000, sup_fetch, false);  // not present
  ASSERT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfI) << "I/D with SMEP even without PAE/NX";
  EXPECT_TRUE(walk(p.pm, r, 0x1010, sup_fetch, false).ok) << "supervisor page";
  EXPECT_TRUE(walk(p.pm, r, 0x0010, Access{false, true, true}, false).ok) << "user fetch";
  EXPECT_TRUE(walk(p.pm, r, 0x0010, sup_read, false).ok) << "SMEP does not restrict data";
  r.cr4 |= 1u << 21;  // SMAP
  w = walk(p.pm, r, 0x0010, sup_read, false);
  ASSERT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfP);
  w = walk(p.pm, r, 0x0010, sup_write, false);
  ASSERT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfP | kPfW);
  EXPECT_TRUE(walk(p.pm, r, 0x1010, sup_write, false).ok) << "supervisor page";
  EXPECT_TRUE(walk(p.pm, r, 0x0010, Access{true, true, false}, false).ok) << "user write";
  r.smap_suspended = true;  // EFLAGS.AC at CPL < 3
  EXPECT_TRUE(walk(p.pm, r, 0x0010, sup_write, false).ok);
  EXPECT_FALSE(walk(p.pm, r, 0x0010, sup_fetch, false).ok) << "AC does not lift SMEP";
}

// The shadow view of the supervisor differs with SMEP and with SMAP in force
// (a supervisor region under SMAP maps no user page); the user view does not.
TEST(BtWalker, RegionKeysTellSmepAndSmapViewsApart) {
  PagingRegs r = regs32(0x1000);
  const RegionKey plain = make_region_key(r, false);
  r.cr4 |= 1u << 20;
  const RegionKey smep = make_region_key(r, false);
  r.cr4 |= 1u << 21;
  const RegionKey smap = make_region_key(r, false);
  r.smap_suspended = true;
  const RegionKey ac = make_region_key(r, false);
  EXPECT_FALSE(plain == smep);
  EXPECT_FALSE(smep == smap);
  EXPECT_TRUE(ac == smep) << "AC set: the SMEP-only view";
  EXPECT_TRUE(make_region_key(r, true) == make_region_key(regs32(0x1000), true));
  PagingRegs off;
  off.cr0 = 0x11;
  off.cr4 = 3u << 20;
  EXPECT_TRUE(make_region_key(off, false) == make_region_key(PagingRegs{0x11}, false)) << "no paging: no SMEP/SMAP";
}

TEST(BtWalker, FourMegabytePagesNeedPse) {
  Phys p;
  p.w32(0x1000 + 1 * 4, 0x00c00000 | 0x83);  // 4M page -> 0xc00000
  WalkResult w = walk(p.pm, regs32(0x1000, true), 0x401234, Access{true, false, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0xc01234u);
  EXPECT_EQ(w.n_pt, 1);
  EXPECT_EQ(p.r32(0x1004) & 0x60, 0x60u);
  // Without CR4.PSE the PS bit is ignored: the entry points at a page table at 0xc00000.
  p.w32(0xc00000 + 1 * 4, 0x7000 | 3);
  w = walk(p.pm, regs32(0x1000, false), 0x401234, Access{false, false, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x7234u);
}

TEST(BtWalker, PaeTwoMegabytePagesAndNx) {
  Phys p;
  PagingRegs r;
  r.cr0 = 0x80000011u;
  r.cr3 = 0x3000;
  r.cr4 = 0x20;
  r.efer = 0x800;  // NXE
  p.w64(0x3000, 0x4000 | 1);
  p.w64(0x4000, 0x5000 | 7);                                   // PD[0] -> PT
  p.w64(0x4000 + 8, 0x200000 | 0x83);                          // PD[1]: 2M page
  p.w64(0x5000 + 8, 0x6000 | 7 | (1ull << 63));                // PT[1]: NX
  WalkResult w = walk(p.pm, r, 0x201000, Access{false, false, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x201000u);
  w = walk(p.pm, r, 0x1010, Access{false, false, false}, true);
  ASSERT_TRUE(w.ok);
  EXPECT_EQ(w.pa, 0x6010u);
  EXPECT_EQ(p.r64(0x5008) >> 63, 1u);
  w = walk(p.pm, r, 0x1010, Access{false, false, true}, true);
  EXPECT_FALSE(w.ok);
  EXPECT_EQ(w.error, kPfP | kPfI);
  // Reserved bits in a PDPTE.
  p.w64(0x3008, 0x7000 | 1 | 0x2);
  w = walk(p.pm, r, 0x40000000, Access{false, false, false}, true);
  EXPECT_FALSE(w.ok);
  EXPECT_TRUE(w.error & kPfRsvd);
}

// ---------------------------------------------------------------- VM level

namespace {

// The test machine with the GDT/TSS and these page tables in guest RAM.
struct PagedMachine : Machine {
  PagedMachine() {
    tables();
    // Page directory at 0x10000; PT0 at 0x11000 identity-maps 0-4 MiB, user+writable;
    // PT1 at 0x12000 identity-maps 4-8 MiB (installed by the guest's #PF handler).
    mem.w32(0x10000, 0x11000 | 7);
    for (std::uint32_t i = 0; i < 1024; ++i) {
      mem.w32(0x11000 + 4 * i, (i << 12) | 7);
      mem.w32(0x12000 + 4 * i, ((1024 + i) << 12) | 7);
    }
    mem.w32(0x11000 + 4 * 7, 0x7000 | 3);  // page 7: supervisor only
    mem.w32(0x10000 + 4 * 2, 0x00400000 | 0x83);  // 8-12 MiB: 4M page onto 4-8 MiB
  }
};

}  // namespace

BT_GUEST_PROGRAM(pg, 0x100000,
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr4\n"
  "  or eax, 0x10\n"
  "  mov cr4, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80000000\n"
  "  mov cr0, eax\n"
  "  mov dword ptr [0x5000], 0x11111111\n"
  "  mov eax, [0x6000]\n"
  "  mov dword ptr [0x800010], 0x22222222\n"
  "  mov eax, [0x400010]\n"
  "  out 0x80, eax\n"
  "  mov eax, [0x7000]\n"
  "  out 0xf4, al\n"
  ".globl pg_pf\n"
  "pg_pf: push eax\n"
  "  mov eax, cr2\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp+4]\n"
  "  out 0x80, eax\n"
  "  mov dword ptr [0x10004], 0x12007\n"
  "  pop eax\n"
  "  add esp, 4\n"
  "  iretd\n")
extern "C" const unsigned char pg_pf[];

TEST(BtPaging, HiddenAndTrueFaultsAccessedDirtyAndTracedTableWrites) {
  PagedMachine m;
  m.mem.load(kBase, pg_start, static_cast<std::size_t>(pg_end - pg_start));
  m.gate(14, pg_pf, pg_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 0x400010u);  // CR2
  EXPECT_EQ(m.plat.post[1], 0u);         // not present, read, supervisor
  EXPECT_EQ(m.plat.post[2], 0x22222222u);  // written through the 4M mapping, read through PT1
  EXPECT_EQ(m.mem.r32(0x11000 + 5 * 4) & 0x60, 0x60u);  // A+D
  EXPECT_EQ(m.mem.r32(0x11000 + 6 * 4) & 0x60, 0x20u);  // A only
  EXPECT_EQ(m.mem.r32(0x10000 + 2 * 4) & 0x60, 0x60u);  // 4M page dirty
  EXPECT_EQ(m.state.cr2, 0x400010u);
  EXPECT_EQ(m.counter("swmmu.true_faults"), 1u);
  EXPECT_GE(m.counter("swmmu.traced_pt_writes"), 1u);
  EXPECT_GT(m.counter("swmmu.hidden_faults"), 3u);
}

BT_GUEST_PROGRAM(usr, 0x100000,
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80010000\n"
  "  mov cr0, eax\n"
  "  push 0x23\n"
  "  push 0x90000\n"
  "  push 0x202\n"
  "  push 0x1b\n"
  "  push BASE + user - usr_start\n"
  "  iretd\n"
  "user: mov ax, 0x23\n"   // the IRET to ring 3 nulled DS (DPL 0); a null DS faults
  "  mov ds, ax\n"
  "  mov eax, 42\n"
  "  int 0x80\n"
  "  mov eax, [0x7000]\n"
  "  out 0xf4, al\n"
  ".globl usr_sys\n"
  "usr_sys: out 0x80, eax\n"
  "  mov eax, [esp+4]\n"
  "  out 0x80, eax\n"
  "  mov eax, esp\n"
  "  out 0x80, eax\n"
  "  mov eax, [0x7000]\n"
  "  iretd\n"
  ".globl usr_pf\n"
  "usr_pf: mov eax, cr2\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp]\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp+8]\n"
  "  out 0x80, eax\n"
  "  mov al, 7\n"
  "  out 0xf4, al\n")
extern "C" const unsigned char usr_sys[], usr_pf[];

TEST(BtPaging, UserModeSystemCallAndSupervisorPageProtection) {
  PagedMachine m;
  m.mem.load(kBase, usr_start, static_cast<std::size_t>(usr_end - usr_start));
  m.gate(0x80, usr_sys, usr_start, 3);
  m.gate(14, usr_pf, usr_start);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 6u);
  EXPECT_EQ(m.plat.post[0], 42u);            // EAX from user mode
  EXPECT_EQ(m.plat.post[1], 0x1bu);          // user CS pushed by the CPU
  EXPECT_EQ(m.plat.post[2], 0x70000u - 20);  // ring-0 stack from the TSS, 5 dwords pushed
  EXPECT_EQ(m.plat.post[3], 0x7000u);        // CR2 of the user access to a supervisor page
  EXPECT_EQ(m.plat.post[4], kPfP | kPfU);    // error code: present, read, user
  EXPECT_EQ(m.plat.post[5], 0x1bu);          // faulting CS
  EXPECT_EQ(m.plat.exit_code, 7);
  EXPECT_GE(m.counter("swmmu.space_switches"), 2u);
}

// Paging on, a hidden fault maps the faulting page's aligned 64 KiB
// neighbours whose entries the guest has used (A set), read-only unless D is
// set: the guest sees no A bit it did not cause, the first write to a clean
// prefetched page still sets D, and a changed entry of a prefetched page
// takes effect.  LA 0x200000 + k pages -> PA 0x300000 + k pages.
BT_GUEST_PROGRAM(ahead_pg, 0x100000,
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80000000\n"
  "  mov cr0, eax\n"
  "  mov eax, [0x200000]\n"          // k=0 (A clear): the hidden fault
  "  mov eax, [0x201000]\n"          // k=1 (A): prefetched, read-only
  "  out 0x80, eax\n"
  "  mov eax, [0x202000]\n"          // k=2 (A, D): prefetched, writable
  "  out 0x80, eax\n"
  "  mov dword ptr [0x201000], 0x55\n"
  "  mov dword ptr [0x202000], 0x66\n"
  "  mov eax, [0x204000]\n"          // k=4 (A clear): not prefetched, so this sets A
  "  mov dword ptr [0x11000 + 0x203 * 4], 0x400027\n"  // k=3 -> PA 0x400000
  "  invlpg [0x203000]\n"
  "  mov eax, [0x203000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtPaging, AHiddenFaultMapsTheNeighboursTheGuestHasUsedWithoutTouchingTheirBits) {
  PagedMachine m;
  m.mem.load(kBase, ahead_pg_start, static_cast<std::size_t>(ahead_pg_end - ahead_pg_start));
  auto pte = [](unsigned k) { return 0x11000u + (0x200u + k) * 4; };
  std::uint32_t flags[16];
  for (unsigned k = 0; k < 16; ++k) {
    flags[k] = k == 0 ? 0x07 : (k % 4 == 0) ? 0x07 : (k % 4 == 2) ? 0x67 : 0x27;
    m.mem.w32(pte(k), ((0x300u + k) << 12) | flags[k]);
    m.mem.w32((0x300u + k) << 12, 0x1000 + k);
  }
  m.mem.w32(0x400000, 0xabcd);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(m.plat.post, (std::vector<std::uint32_t>{0x1001, 0x1002, 0xabcd}));
  EXPECT_EQ(m.mem.r32(0x301000), 0x55u);
  EXPECT_EQ(m.mem.r32(0x302000), 0x66u);
  EXPECT_EQ(m.mem.r32(pte(0)) & 0x60, 0x20u);  // read: A
  EXPECT_EQ(m.mem.r32(pte(1)) & 0x60, 0x60u);  // written after its prefetch: D set then
  EXPECT_EQ(m.mem.r32(pte(4)) & 0x60, 0x20u);  // read after the prefetch: A set then
  for (unsigned k = 5; k < 16; ++k)            // untouched: exactly as the guest left them
    EXPECT_EQ(m.mem.r32(pte(k)) & 0xfff, flags[k]) << "k=" << k;
  EXPECT_GE(m.counter("swmmu.prefilled_pages"), 12u);  // 15 neighbours, 3 with A clear
}

// A kernel rewriting one PTE again and again (the store becomes a monitor
// site after its second traced fault): the monitor drops only the mapping
// derived from that entry, and the pages other entries of the same table
// map stay mapped.  LA 0x200000 alternates between PA 0x300000 and
// 0x301000; LA 0x240000, 0x250000, 0x260000, 0x270000 (each in a 64 KiB
// span of its own, so no fill-ahead maps them back) are read every round.
BT_GUEST_PROGRAM(pte_rw, 0x100000,
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80000000\n"
  "  mov cr0, eax\n"
  "  mov ecx, 64\n"
  "  xor ebx, ebx\n"
  "1: mov eax, ecx\n"
  "  and eax, 1\n"
  "  shl eax, 12\n"
  "  add eax, 0x300007\n"
  "  mov [0x11000 + 0x200 * 4], eax\n"
  "  invlpg [0x200000]\n"
  "  add ebx, [0x200000]\n"
  "  add ebx, [0x240000]\n"
  "  add ebx, [0x250000]\n"
  "  add ebx, [0x260000]\n"
  "  add ebx, [0x270000]\n"
  "  loop 1b\n"
  "  mov eax, ebx\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtPaging, AWriteToOnePageTableEntryKeepsTheMappingsOfTheOthers) {
  PagedMachine m;
  m.mem.load(kBase, pte_rw_start, static_cast<std::size_t>(pte_rw_end - pte_rw_start));
  m.mem.w32(0x300000, 0xa);
  m.mem.w32(0x301000, 0xb);
  for (std::uint32_t k = 0; k < 4; ++k) m.mem.w32(0x240000 + k * 0x10000, 0x100 * (k + 1));
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(m.plat.post, (std::vector<std::uint32_t>{32 * 0xa + 32 * 0xb + 64 * 0xa00}));
  EXPECT_EQ(m.mem.r32(0x11000 + 0x200 * 4) & ~0x60u, 0x301007u);  // the last round (ECX = 1): PA 0x301000
  // One hidden fault a round for the rewritten page (and a few to start);
  // dropping the whole table at each write costs four more a round.
  EXPECT_LT(m.counter("swmmu.hidden_faults"), 2u * 64);
  EXPECT_GE(m.counter("swmmu.traced_pt_writes"), 60u);
}

BT_GUEST_PROGRAM(sw, 0x100000,
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80000000\n"
  "  mov cr0, eax\n"
  "  mov dword ptr [0x9000], 0x1111\n"
  "  mov ecx, 100\n"
  "  xor ebx, ebx\n"
  "1: mov eax, 0x13000\n"
  "  mov cr3, eax\n"
  "  add ebx, [0x9000]\n"
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  add ebx, [0x9000]\n"
  "  loop 1b\n"
  "  mov eax, ebx\n"
  "  out 0x80, eax\n"
  "  invlpg [0x9000]\n"
  "  mov dword ptr [0x11000 + 9*4], 0xb007\n"
  "  invlpg [0x9000]\n"
  "  mov eax, [0x9000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtPaging, Cr3SwitchesReuseCachedShadowSpaces) {
  PagedMachine m;
  m.mem.load(kBase, sw_start, static_cast<std::size_t>(sw_end - sw_start));
  // Second address space: same as the first except LA 0x9000 -> PA 0xa000.
  m.mem.w32(0x13000, 0x14000 | 7);
  for (std::uint32_t i = 0; i < 1024; ++i) m.mem.w32(0x14000 + 4 * i, m.mem.r32(0x11000 + 4 * i));
  m.mem.w32(0x14000 + 9 * 4, 0xa000 | 7);
  m.mem.w32(0xa000, 0x2222);
  m.mem.w32(0xb000, 0x3333);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 100u * (0x1111 + 0x2222));
  EXPECT_EQ(m.plat.post[1], 0x3333u);  // remapped PTE seen after the traced write
  EXPECT_GE(m.counter("swmmu.space_switch_hits"), 190u);
  EXPECT_LE(m.counter("swmmu.space_rebuilds"), 4u);
}

BT_GUEST_PROGRAM(pae, 0x100000,
  "  mov ecx, 0xc0000080\n"
  "  rdmsr\n"
  "  or eax, 0x800\n"
  "  wrmsr\n"
  "  mov eax, cr4\n"
  "  or eax, 0x20\n"
  "  mov cr4, eax\n"
  "  mov eax, 0x15000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80000000\n"
  "  mov cr0, eax\n"
  "  mov eax, [0x200010]\n"
  "  out 0x80, eax\n"
  "  mov eax, 0x8000\n"
  "  call eax\n"
  "  out 0xf4, al\n"
  ".globl pae_pf\n"
  "pae_pf: mov eax, cr2\n"
  "  out 0x80, eax\n"
  "  mov eax, [esp]\n"
  "  out 0x80, eax\n"
  "  mov al, 5\n"
  "  out 0xf4, al\n")
extern "C" const unsigned char pae_pf[];

TEST(BtPaging, PaeTwoMegabytePagesAndNoExecute) {
  PagedMachine m;
  m.mem.load(kBase, pae_start, static_cast<std::size_t>(pae_end - pae_start));
  m.gate(14, pae_pf, pae_start);
  auto w64 = [&](std::uint64_t a, std::uint64_t v) { m.mem.load(a, &v, 8); };
  w64(0x15000, 0x16000 | 1);
  w64(0x16000, 0x17000 | 7);
  w64(0x16008, 0x600000 | 0x83);  // LA 2-4 MiB -> PA 6-8 MiB
  for (std::uint64_t i = 0; i < 512; ++i) w64(0x17000 + 8 * i, (i << 12) | 7);
  w64(0x17000 + 8 * 8, 0x8000 | 7 | (1ull << 63));  // NX
  m.mem.w32(0x600010, 0x5a5a);
  m.mem.w32(0x8000, 0xc3);  // ret
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 0x5a5au);
  EXPECT_EQ(m.plat.post[1], 0x8000u);
  EXPECT_EQ(m.plat.post[2], kPfP | kPfI);
  EXPECT_EQ(m.plat.exit_code, 5);
}

BT_GUEST_PROGRAM(many, 0x100000,
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80000000\n"
  "  mov cr0, eax\n"
  "  xor ebx, ebx\n"
  "  mov esi, 3\n"
  "2: mov ecx, 80\n"
  "  mov edx, 0x800000\n"
  "1: mov cr3, edx\n"
  "  add ebx, [0x9000]\n"
  "  inc dword ptr [0x9004]\n"
  "  add edx, 0x1000\n"
  "  loop 1b\n"
  "  dec esi\n"
  "  jnz 2b\n"
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, ebx\n"
  "  out 0x80, eax\n"
  "  mov eax, [0x9004]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n")

TEST(BtPaging, MoreAddressSpacesThanTheCacheHoldsAreEvictedAndRebuilt) {
  PagedMachine m;
  m.mem.load(kBase, many_start, static_cast<std::size_t>(many_end - many_start));
  // 80 page directories at 8 MiB.., all sharing PT0 (identity 0-4 MiB).
  for (std::uint32_t i = 0; i < 80; ++i) m.mem.w32(0x800000 + i * 0x1000, 0x11000 | 7);
  m.mem.w32(0x9000, 5);
  RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 2u);
  EXPECT_EQ(m.plat.post[0], 3u * 80u * 5u);
  EXPECT_EQ(m.plat.post[1], 240u);
  EXPECT_GT(m.counter("swmmu.space_evictions"), 0u);
  EXPECT_GT(m.counter("swmmu.space_rebuilds"), 64u);
}

// A miniature OS: a kernel enables paging, enters a user process that touches
// 16 demand-paged pages (the #PF handler allocates frames and writes PTEs),
// makes an INT 0x80 system call, spins until timer interrupts (raised
// asynchronously by another thread, taken from user mode through the TSS)
// have counted three ticks, then leaves through SYSENTER.
BT_GUEST_PROGRAM(os, 0x100000,
  "  mov ecx, 0x174\n"
  "  mov eax, 0x08\n"
  "  xor edx, edx\n"
  "  wrmsr\n"
  "  mov ecx, 0x175\n"
  "  mov eax, 0x6f000\n"
  "  wrmsr\n"
  "  mov ecx, 0x176\n"
  "  mov eax, BASE + os_sysenter - os_start\n"
  "  wrmsr\n"
  "  mov eax, 0x10000\n"
  "  mov cr3, eax\n"
  "  mov eax, cr0\n"
  "  or eax, 0x80010000\n"
  "  mov cr0, eax\n"
  "  mov ax, 0x23\n"   // user data in DS/ES: an IRET to ring 3 would null DPL-0 ones
  "  mov ds, ax\n"
  "  mov es, ax\n"
  "  push 0x23\n"
  "  push 0x402000 - 16\n"
  "  push 0x202\n"
  "  push 0x1b\n"
  "  push 0x400000\n"
  "  iretd\n"
  ".globl os_pf\n"
  "os_pf: push eax\n"
  "  push ebx\n"
  "  mov eax, cr2\n"
  "  mov ebx, [BASE + os_next - os_start]\n"
  "  add dword ptr [BASE + os_next - os_start], 0x1000\n"
  "  or ebx, 7\n"
  "  shr eax, 12\n"
  "  and eax, 0x3ff\n"
  "  mov [0x14000 + eax*4], ebx\n"
  "  pop ebx\n"
  "  pop eax\n"
  "  add esp, 4\n"
  "  iretd\n"
  ".globl os_timer\n"
  "os_timer: inc dword ptr [0x401000]\n"
  "  iretd\n"
  ".globl os_syscall\n"
  "os_syscall: out 0x80, eax\n"
  "  iretd\n"
  "os_sysenter: out 0x80, eax\n"
  "  mov eax, [0x401000]\n"
  "  out 0x80, eax\n"
  "  out 0xf4, al\n"
  "os_next: .long 0x510000\n"
  ".globl os_user\n"
  "os_user: xor ecx, ecx\n"
  "1: mov eax, [0x402000 + ecx*4]\n"
  "  add eax, ecx\n"
  "  mov [0x402000 + ecx*4], eax\n"
  "  inc ecx\n"
  "  cmp ecx, 16384\n"
  "  jne 1b\n"
  "  mov eax, [0x402000 + 4*100]\n"
  "  int 0x80\n"
  "2: cmp dword ptr [0x401000], 3\n"
  "  jb 2b\n"
  "  mov eax, 0xdead\n"
  "  sysenter\n"
  ".globl os_user_end\n"
  "os_user_end:\n")
extern "C" const unsigned char os_pf[], os_timer[], os_syscall[], os_user[], os_user_end[];

TEST(BtPaging, MiniatureOsWithDemandPagingSyscallsAndTimerInterrupts) {
  PagedMachine m;
  m.mem.load(kBase, os_start, static_cast<std::size_t>(os_user - os_start));
  m.mem.load(0x500000, os_user, static_cast<std::size_t>(os_user_end - os_user));
  m.gate(14, os_pf, os_start);
  m.gate(0x20, os_timer, os_start);
  m.gate(0x80, os_syscall, os_start, 3);
  // Kernel: 0-4 MiB supervisor-only.  User: PDE 1 -> PT at 0x14000.
  for (std::uint32_t i = 0; i < 1024; ++i) m.mem.w32(0x11000 + 4 * i, (i << 12) | 3);
  m.mem.w32(0x10000 + 4 * 1, 0x14000 | 7);
  m.mem.w32(0x10000 + 4 * 2, 0);
  m.mem.w32(0x14000 + 0, 0x500000 | 7);  // user code
  m.mem.w32(0x14000 + 4, 0x501000 | 7);  // tick page, also the user stack (below 0x402000)
  std::atomic<bool> done{false};
  std::thread timer([&] {
    while (!done) {
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
      m.plat.async_irq = 0x20;
    }
  });
  RunExit r = m.run();
  done = true;
  timer.join();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_EQ(m.plat.post.size(), 3u);
  EXPECT_EQ(m.plat.post[0], 100u);
  EXPECT_EQ(m.plat.post[1], 0xdeadu);
  EXPECT_GE(m.plat.post[2], 3u);
  EXPECT_GE(m.counter("swmmu.true_faults"), 16u);
  EXPECT_GE(m.counter("swmmu.traced_pt_writes"), 1u);
  EXPECT_GE(m.counter("bt.interrupts_delivered"), 3u);
  // The user's data really landed in the allocated frames.
  EXPECT_EQ(m.mem.r32(0x510000 + 4 * 100), 100u);
}

BT_GUEST_PROGRAM(dirt, 0x100000,
  "1: mov eax, [0x5000]\n"
  "  inc dword ptr [0x6000]\n"
  "  mov edx, ecx\n"
  "  shl edx, 12\n"
  "  mov dword ptr [0x7000 + edx], 1\n"
  "  inc ecx\n"
  "  and ecx, 3\n"
  "  jmp 1b\n")

// Dirty logging while the guest runs: pages written by translated code show
// up in the next collection; pages only read do not.
TEST(BtPaging, DirtyPagesAreCollectedWhileRunning) {
  PagedMachine m;
  m.mem.load(kBase, dirt_start, static_cast<std::size_t>(dirt_end - dirt_start));
  m.state.cr0 = 0x80000011;
  m.state.cr3 = 0x10000;
  m.mem.w32(0x11000 + 4 * 7, 0x7000 | 7);  // user+writable again
  std::vector<std::uint64_t> first, second;
  std::thread collector([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m.cpu->collect_dirty_pages(first);   // starts logging
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m.cpu->collect_dirty_pages(second);
    m.cpu->kick();
  });
  RunExit r = m.run();
  collector.join();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(first[0], ~0ull);
  ASSERT_EQ(second.size(), first.size());
  auto bit = [&](std::uint64_t gpa) { return (second[gpa >> 18] >> ((gpa >> 12) & 63)) & 1; };
  EXPECT_EQ(bit(0x5000), 0u);  // only read
  EXPECT_EQ(bit(0x6000), 1u);
  for (std::uint64_t p = 0x7000; p < 0xb000; p += 0x1000) EXPECT_EQ(bit(p), 1u) << std::hex << p;
  EXPECT_EQ(bit(0x100000), 0u);  // code
  EXPECT_GE(m.counter("swmmu.dirty_log_faults"), 5u);
}

BT_GUEST_PROGRAM(stop2, 0x100000, "  out 0xf4, al\n")
extern "C" const unsigned char stop2_start[];

// Random bytes run in user mode under paging (kernel pages supervisor-only):
// every exception goes to a ring-0 handler that stops the VM; the host must
// survive, and no user access may reach supervisor pages.
TEST(BtPaging, RandomUserModeGarbageStaysInside) {
  std::mt19937 rng(11);
  int stopped = 0;
  for (int round = 0; round < 40; ++round) {
    PagedMachine m;
    for (std::uint32_t i = 0; i < 1024; ++i) m.mem.w32(0x11000 + 4 * i, (i << 12) | 3);  // supervisor
    m.mem.w32(0x11000 + 4 * 0x200, 0x200000 | 7);  // user code page at 0x200000
    m.mem.w32(0x11000 + 4 * 0x201, 0x201000 | 7);  // user data/stack page
    m.mem.load(0x180000, stop2_start, 2);
    for (unsigned v = 0; v < 256; ++v) {
      const std::uint32_t off = 0x180000;
      const std::uint64_t g = (off & 0xffff) | (0x08ull << 16) | (0xeeull << 40) | (static_cast<std::uint64_t>(off >> 16) << 48);
      m.mem.load(0x2000 + v * 8, &g, 8);
    }
    std::vector<std::uint8_t> junk(4096);
    for (auto& b : junk) b = static_cast<std::uint8_t>(rng());
    m.mem.load(0x200000, junk.data(), junk.size());
    m.mem.w32(0x7000, 0x5a5a5a5a);  // a supervisor page the user must not change
    m.state.cr0 = 0x80010011;
    m.state.cr3 = 0x10000;
    m.state.rip = 0x200000;
    m.state.cs = flat_segment(0x1b, true, 3);
    m.state.ss = m.state.ds = m.state.es = flat_segment(0x23, false, 3);
    m.state.gpr[gpr::rsp] = 0x202000;
    m.state.rflags = 0x202;
    RunExit r = m.run_bounded(std::chrono::milliseconds(100));
    EXPECT_EQ(r.diagnostic.find("host signal"), std::string::npos) << "round " << round << ": " << r.diagnostic;
    EXPECT_EQ(m.mem.r32(0x7000), 0x5a5a5a5au) << "round " << round;
    EXPECT_EQ(m.mem.r32(0x10000), 0x11000u | 7 | 0x20) << "round " << round;  // page directory intact
    stopped += r.kind == ExitKind::Stopped;
  }
  EXPECT_GT(stopped, 30);
}

// A guest that never stops writing: each round stamps the round number into
// 1024 pages at 2-6 MiB, a second word into the 4-6 MiB ones through the 4 MiB
// alias at 8 MiB (two shadow mappings of one page), and first clears the
// Accessed bit of 64 of its own PTEs so the walker sets it again (a RAM write
// by the monitor itself) while the round goes on.
BT_GUEST_PROGRAM(stamp, 0x100000,
  "  xor ebx, ebx\n"
  "1: inc ebx\n"
  "  xor ecx, ecx\n"
  "4: and dword ptr [0x11800 + ecx*4], 0xffffffdf\n"
  "  inc ecx\n"
  "  cmp ecx, 64\n"
  "  jne 4b\n"
  "  xor ecx, ecx\n"
  "2: mov edx, ecx\n"
  "  shl edx, 12\n"
  "  mov [0x200000 + edx], ebx\n"
  "  mov [0x200804 + edx], ecx\n"
  "  inc ecx\n"
  "  cmp ecx, 1024\n"
  "  jne 2b\n"
  "  xor ecx, ecx\n"
  "3: mov edx, ecx\n"
  "  shl edx, 12\n"
  "  mov [0x800008 + edx], ebx\n"
  "  add ecx, 3\n"
  "  cmp ecx, 512\n"
  "  jb 3b\n"
  "  jmp 1b\n")

// Live-migration invariant: copy all RAM after the first collection, then
// only the pages each later collection reports, while the guest keeps
// writing; after the vCPU stops and a last collection, the copy must equal
// guest RAM page for page.  A page written after its collection but never
// reported again is a mismatch.
TEST(BtPaging, DirtyCollectionsWhileTheGuestWritesLoseNoPage) {
  PagedMachine m;
  m.mem.load(kBase, stamp_start, static_cast<std::size_t>(stamp_end - stamp_start));
  m.mem.w32(0x10000 + 4 * 1, 0x12000 | 7);  // 4-8 MiB through PT1
  m.state.cr0 = 0x80000011;
  m.state.cr3 = 0x10000;
  m.state.cr4 = 0x10;  // PSE for the 4 MiB alias
  const std::uint64_t size = m.mem.size();
  std::uint8_t* ram = m.mem.host_base();
  std::vector<std::uint8_t> copy(size);
  auto copy_reported = [&](const std::vector<std::uint64_t>& bitmap) {
    std::uint64_t pages = 0;
    for (std::uint64_t p = 0; p < size / 4096; ++p) {
      if (p / 64 < bitmap.size() && ((bitmap[p / 64] >> (p % 64)) & 1)) {
        std::memcpy(&copy[p * 4096], ram + p * 4096, 4096);
        ++pages;
      }
    }
    return pages;
  };
  std::atomic<std::uint64_t> rounds{0}, reported{0};
  std::vector<std::uint64_t> bitmap;
  std::thread collector([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    m.cpu->collect_dirty_pages(bitmap);  // starts logging: every page
    copy_reported(bitmap);
    for (int i = 0; i < 300; ++i) {
      m.cpu->collect_dirty_pages(bitmap);
      reported += copy_reported(bitmap);
      ++rounds;
      if (i % 3 == 0) std::this_thread::yield();
    }
    m.cpu->kick();
  });
  RunExit r = m.run();
  collector.join();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  m.cpu->collect_dirty_pages(bitmap);  // the vCPU does not run: the last round
  copy_reported(bitmap);
  std::vector<std::uint64_t> lost;
  for (std::uint64_t p = 0; p < size / 4096; ++p)
    if (std::memcmp(&copy[p * 4096], ram + p * 4096, 4096) != 0) lost.push_back(p << 12);
  std::string first;
  for (std::size_t i = 0; i < lost.size() && i < 8; ++i) first += " " + std::to_string(lost[i]);
  EXPECT_TRUE(lost.empty()) << lost.size() << " pages differ from the copy, e.g. at" << first;
  EXPECT_EQ(rounds.load(), 300u);
  EXPECT_GT(reported.load(), 0u);
  EXPECT_GE(m.mem.r32(0x200000), 1u);  // the guest ran
  std::printf("[ dirty ] %llu collections, %llu pages reported, guest round %u, lost %zu\n",
              static_cast<unsigned long long>(rounds.load()), static_cast<unsigned long long>(reported.load()),
              m.mem.r32(0x200000), lost.size());
}
