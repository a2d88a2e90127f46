// BT64's long-mode events without a VM: delivery through the 64-bit IDT,
// IRET in 64-bit mode, SYSCALL/SYSRET and SWAPGS on an api::VcpuState over a
// sparse guest memory.  The machine is laid out as the lm64* guests' runtime
// lays out theirs (tests/guests/lm64.h: the same GDT selectors), and the cases
// lm64exc and lm64syscall print are here with the values QEMU recorded.
#include <gtest/gtest.h>

#include <array>
#include <map>
#include <set>
#include <vector>

#include "bt64/long_mode_events.hpp"
#include "segment_descriptor.hpp"

namespace modevisor::bt::bt64 {
namespace {

using namespace eflags_bits;

// Guest-linear memory of zero-filled pages made on first touch, except pages
// that are not present (any access: #PF) or supervisor-only (a user access:
// #PF with P set).  It keeps the last fault's address (the caller's CR2) and
// who made each write.
class SparseMemory final : public LinearMemory {
 public:
  std::set<std::uint64_t> not_present;      // page numbers
  std::set<std::uint64_t> supervisor_only;  // page numbers
  std::uint64_t fault_address = 0;
  std::vector<Privilege> write_privileges;
  std::vector<Privilege> read_privileges;

  Outcome<std::uint64_t> read(std::uint64_t la, unsigned size, Privilege who) override {
    read_privileges.push_back(who);
    if (Check f = check(la, size, who, false)) return *f;
    return peek(la, size);
  }
  Check write(std::uint64_t la, unsigned size, std::uint64_t value, Privilege who) override {
    write_privileges.push_back(who);
    if (Check f = check(la, size, who, true)) return f;
    poke(la, value, size);
    return std::nullopt;
  }
  // The test's own view: no checks, nothing recorded.
  std::uint64_t peek(std::uint64_t la, unsigned size = 8) {
    std::uint64_t v = 0;
    for (unsigned i = 0; i < size; ++i) v |= std::uint64_t{byte(la + i)} << (8 * i);
    return v;
  }
  void poke(std::uint64_t la, std::uint64_t v, unsigned size = 8) {
    for (unsigned i = 0; i < size; ++i) byte(la + i) = static_cast<std::uint8_t>(v >> (8 * i));
  }

 private:
  Check check(std::uint64_t la, unsigned size, Privilege who, bool writing) {
    for (std::uint64_t page : {la >> 12, (la + size - 1) >> 12}) {
      const bool user = who == Privilege::User;
      const bool absent = not_present.count(page) != 0;
      if (absent || (user && supervisor_only.count(page))) {
        fault_address = std::max(la, page << 12);
        return Fault{14, true, (absent ? 0u : 1u) | (writing ? 2u : 0u) | (user ? 4u : 0u)};
      }
    }
    return std::nullopt;
  }
  std::uint8_t& byte(std::uint64_t la) { return pages_[la >> 12][la & 0xfff]; }
  std::map<std::uint64_t, std::array<std::uint8_t, 4096>> pages_;
};

// The lm64 runtime's GDT (lm64.h), with a few broken entries after it.
constexpr std::uint16_t kKcode32 = 0x08, kKdata = 0x10, kKcode64 = 0x18, kKdataSyscall = 0x20, kUcode32 = 0x2b,
                        kUdata = 0x33, kUcode64 = 0x3b, kTss = 0x40;
constexpr std::uint16_t kCode64NotPresent = 0x50, kCodeLongAndDefault32 = 0x58, kDataNotPresent = 0x60,
                        kConformingCode64 = 0x68;
constexpr std::uint64_t kGdt = 0x1000, kIdt = 0x2000, kTssBase = 0x3000;
constexpr std::uint64_t kRsp0 = 0x9000, kIst1 = 0xa000, kIst2 = 0xb000;
constexpr std::uint64_t kHandlers = 0xffffffff81000000ull;  // 64-bit, canonical, in the upper half

const std::map<std::uint16_t, std::uint64_t> kDescriptors = {
    {kKcode32, 0x00cf9a000000ffffull},  // compatibility-mode code (L=0, D=1)
    {kKdata, 0x00cf92000000ffffull},
    {kKcode64, 0x00af9a000000ffffull},  // L=1
    {kKdataSyscall, 0x00cf92000000ffffull},
    {kUcode32 & ~3, 0x00cffa000000ffffull},
    {kUdata & ~3, 0x00cff2000000ffffull},
    {kUcode64 & ~3, 0x00affa000000ffffull},
    {kCode64NotPresent, 0x00af1a000000ffffull},
    {kCodeLongAndDefault32, 0x00ef9a000000ffffull},
    {kDataNotPresent, 0x00cf12000000ffffull},
    {kConformingCode64, 0x00af9e000000ffffull},
};

api::Segment segment(std::uint16_t sel) {
  api::Segment s = decode_segment_descriptor(kDescriptors.at(sel & ~3), sel);
  s.type |= 1;
  return s;
}

constexpr std::uint64_t gate_offset(unsigned vector) { return kHandlers + vector * 0x100u; }

class BtLongModeEvents : public ::testing::Test {
 protected:
  SparseMemory mem;

  void SetUp() override {
    for (const auto& [sel, raw] : kDescriptors) mem.poke(kGdt + sel, raw);
    mem.poke(kTssBase + Tss64::rsp(0), kRsp0);
    mem.poke(kTssBase + Tss64::ist(1), kIst1);
    mem.poke(kTssBase + Tss64::ist(2), kIst2);
    for (unsigned v = 0; v < 256; ++v) gate(v, 0x8e);
  }

  // An IDT entry as lm64_gate/lm64_gate_access write it: access = P, DPL, type.
  void gate(unsigned vector, std::uint8_t access, unsigned ist = 0, std::uint16_t selector = kKcode64,
            std::uint64_t offset = 0) {
    if (offset == 0) offset = gate_offset(vector);
    const std::uint64_t low = (offset & 0xffff) | std::uint64_t{selector} << 16 | std::uint64_t{ist} << 32 |
                              std::uint64_t{access} << 40 | (offset >> 16 & 0xffff) << 48;
    mem.poke(kIdt + 16 * vector, low);
    mem.poke(kIdt + 16 * vector + 8, offset >> 32);
  }

  static api::VcpuState kernel64() {
    api::VcpuState s;
    s.efer = 0x501;  // SCE, LME, LMA
    s.cr0 = 0x80000011;
    s.cr4 = 0x20;
    s.cs = segment(kKcode64);
    s.ss = s.ds = s.es = segment(kKdata);
    s.fs = s.gs = null_stack_segment(0, 0);  // null selectors, as a 64-bit kernel runs
    s.gdtr = {kGdt, 0x6f};
    s.idtr = {kIdt, 0xfff};
    s.tr.selector = kTss;
    s.tr.base = kTssBase;
    s.tr.limit = 0x67;
    s.tr.type = 0xb;
    s.tr.present = true;
    s.ldtr.unusable = true;
    s.rip = 0x401000;
    s.gpr[api::gpr::rsp] = 0x8000;
    s.rflags = 0x202;
    return s;
  }
  static api::VcpuState user64() {
    api::VcpuState s = kernel64();
    s.cs = segment(kUcode64);
    s.ss = s.ds = s.es = segment(kUdata);
    s.gpr[api::gpr::rsp] = 0x5008;
    return s;
  }

  // The frame below `top`: SS RSP RFLAGS CS RIP [error], from the top down.
  std::vector<std::uint64_t> frame_below(std::uint64_t top, unsigned count) {
    std::vector<std::uint64_t> f;
    for (unsigned i = 1; i <= count; ++i) f.push_back(mem.peek(top - 8 * i));
    return f;
  }
  // An IRET frame at `rsp`: RIP, CS, RFLAGS, RSP, SS in `slot`-byte slots.
  void iret_frame(std::uint64_t rsp, std::array<std::uint64_t, 5> values, unsigned slot = 8) {
    for (unsigned i = 0; i < 5; ++i) mem.poke(rsp + i * slot, values[i], slot);
  }
};

void expect_same_registers(const api::VcpuState& a, const api::VcpuState& b) {
  EXPECT_EQ(a.rip, b.rip);
  EXPECT_EQ(a.rflags, b.rflags);
  EXPECT_EQ(a.gpr, b.gpr);
  EXPECT_EQ(a.cs.selector, b.cs.selector);
  EXPECT_EQ(a.cs.l, b.cs.l);
  EXPECT_EQ(a.ss.selector, b.ss.selector);
  EXPECT_EQ(a.ss.unusable, b.ss.unusable);
  EXPECT_EQ(a.ss.dpl, b.ss.dpl);
  EXPECT_EQ(a.dr, b.dr);
}

// ------------------------------------------------------------------ pure parts

TEST(BtLongModeEventParts, CanonicalAddresses) {
  EXPECT_TRUE(is_canonical(0x00007fffffffffffull));
  EXPECT_TRUE(is_canonical(0xffff800000000000ull));
  EXPECT_FALSE(is_canonical(0x0000800000000000ull));  // lm64exc's non-canonical address
  EXPECT_FALSE(is_canonical(0xfff0000000000000ull));
}

TEST(BtLongModeEventParts, GateDecodesSixtyFourBitOffsetAndIst) {
  const Gate64 g = decode_gate64(0x81008e0300180123ull, 0xffffffffull);
  EXPECT_EQ(g.offset, 0xffffffff81000123ull);
  EXPECT_EQ(g.selector, 0x18);
  EXPECT_EQ(g.ist, 3u);
  EXPECT_EQ(g.type, 0x0eu);
  EXPECT_TRUE(g.present);
  EXPECT_TRUE(g.interrupt_gate());
  EXPECT_FALSE(decode_gate64(0x0000860000180000ull, 0).valid_in_long_mode());  // a 16-bit interrupt gate
  EXPECT_FALSE(decode_gate64(0x0000850000180000ull, 0).valid_in_long_mode());  // a task gate
}

TEST(BtLongModeEventParts, FrameAlwaysHoldsSsRspAndClearsTheEntryFlags) {
  const EventFrame64 f = build_event_frame64(
      EventFrame64Input{0x202 | kTF | kNT | kRF, 0x3b, 0x400123, 0x33, 0x7ff8, true, 5, true});
  ASSERT_EQ(f.count, 6u);
  const std::array<std::uint64_t, 6> expected{0x33, 0x7ff8, 0x202 | kTF | kNT | kRF, 0x3b, 0x400123, 5};
  EXPECT_EQ(f.slots, expected);
  EXPECT_EQ(f.new_rflags, 0x2u);
  EXPECT_EQ(frame_top(0x7ff8), 0x7ff0u);
  EXPECT_EQ(frame_top(0x7ff0), 0x7ff0u);
}

// ------------------------------------------------------------------ delivery

// lm64exc: "#GP mov to %fs of selector 0x1f8: vector 13 error 0x1f8, RIP at
// it, CS 0x18, SS 0x10, RSP as before, frame below it, 16-byte aligned".
TEST_F(BtLongModeEvents, ExceptionAtTheSamePrivilegeAlignsTheStackAndPushesSsRsp) {
  api::VcpuState s = kernel64();
  s.gpr[api::gpr::rsp] = 0x7ff8;
  ASSERT_FALSE(deliver(s, mem, 13, true, 0x1f8, EventKind::Exception));
  const std::uint64_t top = 0x7ff0;
  EXPECT_EQ(frame_below(top, 6), (std::vector<std::uint64_t>{kKdata, 0x7ff8, 0x202, kKcode64, 0x401000, 0x1f8}));
  EXPECT_EQ(s.gpr[api::gpr::rsp], top - 48);
  EXPECT_EQ(s.rip, gate_offset(13));
  EXPECT_EQ(s.cs.selector, kKcode64);
  EXPECT_EQ(s.ss.selector, kKdata);  // no privilege change: SS stays
  EXPECT_FALSE(s.ss.unusable);
  EXPECT_EQ(s.rflags, 0x2u);  // an interrupt gate clears IF
  for (Privilege p : mem.write_privileges) EXPECT_EQ(p, Privilege::Supervisor);
}

// lm64exc: "#BP int3, RSP 16-byte aligned / 8 off alignment: ... RIP after it,
// SS:RSP 0x10:as before, frame at (RSP & ~15) - 40".
TEST_F(BtLongModeEvents, Int3FrameSitsAtTheAlignedTopMinus40) {
  for (std::uint64_t rsp : {0x8000ull, 0x7ff8ull}) {
    api::VcpuState s = kernel64();
    s.gpr[api::gpr::rsp] = rsp;
    s.rip = 0x401001;  // after the int3
    ASSERT_FALSE(deliver(s, mem, 3, false, 0, EventKind::SoftwareInterrupt));
    EXPECT_EQ(s.gpr[api::gpr::rsp], (rsp & ~15ull) - 40) << rsp;
    EXPECT_EQ(mem.peek(s.gpr[api::gpr::rsp]), 0x401001u);  // the RIP slot
    EXPECT_EQ(mem.peek(s.gpr[api::gpr::rsp] + 24), rsp);   // the RSP slot: as before
  }
}

// lm64exc: "int $0x50, gate not present: #NP: vector 11, IDT bit 1, EXT 0".
// The SDM's error code is vector * 8 + 2; QEMU 7.2 pushes vector * 16 + 2
// (the gate's byte offset: the guest prints only the low bits, which agree).
TEST_F(BtLongModeEvents, NotPresentGateIsNpNamingTheVector) {
  gate(0x50, 0x0e);
  api::VcpuState s = kernel64();
  const api::VcpuState before = s;
  EXPECT_EQ(deliver(s, mem, 0x50, false, 0, EventKind::SoftwareInterrupt), Fault::np(0x50 * 8 + 2));
  EXPECT_EQ(deliver(s, mem, 0x50, false, 0, EventKind::HardwareInterrupt), Fault::np(0x50 * 8 + 3));  // EXT
  expect_same_registers(s, before);
}

// lm64exc: "int $0x51, 16-bit gate type: #GP: vector 13, IDT bit 1, EXT 0".
TEST_F(BtLongModeEvents, OnlySixtyFourBitInterruptAndTrapGatesAreValid) {
  gate(0x51, 0x86);  // 16-bit interrupt gate
  gate(0x54, 0x85);  // task gate
  gate(0x55, 0x8c);  // call gate
  api::VcpuState s = kernel64();
  EXPECT_EQ(deliver(s, mem, 0x51, false, 0, EventKind::SoftwareInterrupt), Fault::gp(0x51 * 8 + 2));
  EXPECT_EQ(deliver(s, mem, 0x54, false, 0, EventKind::Exception), Fault::gp(0x54 * 8 + 3));
  EXPECT_EQ(deliver(s, mem, 0x55, false, 0, EventKind::SoftwareInterrupt), Fault::gp(0x55 * 8 + 2));
}

TEST_F(BtLongModeEvents, VectorBeyondTheIdtLimitIsGp) {
  api::VcpuState s = kernel64();
  s.idtr.limit = 0x20 * 16 - 1;
  EXPECT_EQ(deliver(s, mem, 0x20, false, 0, EventKind::HardwareInterrupt), Fault::gp(0x20 * 8 + 3));
  EXPECT_EQ(deliver(s, mem, 0x20, false, 0, EventKind::SoftwareInterrupt), Fault::gp(0x20 * 8 + 2));
  s.idtr.limit = 0x20 * 16 + 14;  // one byte short of the 16-byte gate
  EXPECT_EQ(deliver(s, mem, 0x20, false, 0, EventKind::HardwareInterrupt), Fault::gp(0x20 * 8 + 3));
}

// lm64exc: "IF in the handler with IF set before: trap gate 1, interrupt gate 0".
TEST_F(BtLongModeEvents, TrapGateLeavesIfSetInterruptGateClearsIt) {
  gate(0x52, 0x8f);
  api::VcpuState trap = kernel64(), intr = kernel64();
  trap.rflags = intr.rflags = 0x202 | kTF | kRF | kNT;
  ASSERT_FALSE(deliver(trap, mem, 0x52, false, 0, EventKind::SoftwareInterrupt));
  ASSERT_FALSE(deliver(intr, mem, 0x53, false, 0, EventKind::SoftwareInterrupt));
  EXPECT_EQ(trap.rflags, 0x202u);  // TF, RF, NT cleared
  EXPECT_EQ(intr.rflags, 0x002u);
}

TEST_F(BtLongModeEvents, SoftwareInterruptsCheckTheGateDplOthersDoNot) {
  gate(0x0d, 0x8e);  // DPL 0
  api::VcpuState s = user64();
  EXPECT_EQ(deliver(s, mem, 0x0d, false, 0, EventKind::SoftwareInterrupt), Fault::gp(0x0d * 8 + 2));
  EXPECT_FALSE(deliver(s, mem, 0x0d, true, 0, EventKind::Exception));  // the CPU's own #GP is delivered
  api::VcpuState icebp = user64();
  EXPECT_FALSE(deliver(icebp, mem, 1, false, 0, EventKind::Icebp));  // INT1: no DPL check either
}

// lm64exc: "int $2 on an IST2 gate at CPL 0: returned, frame at the top of
// IST2 yes, RIP after it yes, RSP as before".
TEST_F(BtLongModeEvents, IstGateSwitchesStacksEvenWithoutAPrivilegeChange) {
  gate(2, 0x8e, 2);
  api::VcpuState s = kernel64();
  s.gpr[api::gpr::rsp] = 0x7ff8;
  ASSERT_FALSE(deliver(s, mem, 2, false, 0, EventKind::SoftwareInterrupt));
  EXPECT_EQ(s.gpr[api::gpr::rsp], kIst2 - 40);
  EXPECT_EQ(frame_below(kIst2, 5), (std::vector<std::uint64_t>{kKdata, 0x7ff8, 0x202, kKcode64, 0x401000}));
  EXPECT_EQ(s.ss.selector, kKdata);  // same CPL: SS is not nulled
}

// lm64exc: "int3 with RSP in unmapped memory: vector 8 error 0x0, frame at the
// top of IST1 yes, CR2 in the page below RSP yes".  The caller combines the
// faults as SDM table 6-5 says: #BP is benign, so its #PF is delivered; that
// #PF's own #PF makes a #DF, which IST1 gives a good stack.
TEST_F(BtLongModeEvents, StackOverflowEndsInADoubleFaultOnItsIstStack) {
  gate(8, 0x8e, 1);
  const std::uint64_t bad_rsp = 0x40001000;
  mem.not_present.insert((bad_rsp - 0x1000) >> 12);
  api::VcpuState s = kernel64();
  s.gpr[api::gpr::rsp] = bad_rsp;
  s.rip = 0x401001;
  const api::VcpuState before = s;
  const Check bp = deliver(s, mem, 3, false, 0, EventKind::SoftwareInterrupt);
  ASSERT_TRUE(bp);
  EXPECT_EQ(*bp, (Fault{14, true, 2}));  // a supervisor write to a page not present
  EXPECT_EQ(mem.fault_address & ~0xfffull, bad_rsp - 0x1000);
  expect_same_registers(s, before);
  const Check pf = deliver(s, mem, 14, true, bp->error, EventKind::Exception);
  ASSERT_TRUE(pf);
  EXPECT_EQ(pf->vector, 14);
  expect_same_registers(s, before);
  ASSERT_FALSE(deliver(s, mem, 8, true, 0, EventKind::Exception));
  EXPECT_EQ(s.gpr[api::gpr::rsp] + 8, kIst1 - 40);  // the RIP slot; the error code 0 below it
  EXPECT_EQ(mem.peek(s.gpr[api::gpr::rsp]), 0u);
  EXPECT_EQ(s.rip, gate_offset(8));
}

// lm64syscall: "int $0x80 from ring 3: vector 0x80, CS 0x3b, SS:RSP
// 0x33:the user's, RIP after it yes, frame at the top of RSP0 yes, handler SS 0x0".
TEST_F(BtLongModeEvents, FromRing3TheFrameGoesOnRsp0AndSsBecomesNull) {
  gate(0x80, 0xee);  // DPL 3 interrupt gate
  api::VcpuState s = user64();
  s.rip = 0x400202;
  ASSERT_FALSE(deliver(s, mem, 0x80, false, 0, EventKind::SoftwareInterrupt));
  EXPECT_EQ(frame_below(kRsp0, 5), (std::vector<std::uint64_t>{kUdata, 0x5008, 0x202, kUcode64, 0x400202}));
  EXPECT_EQ(s.gpr[api::gpr::rsp], kRsp0 - 40);
  EXPECT_EQ(s.cs.selector, kKcode64);
  EXPECT_TRUE(s.cs.l);
  EXPECT_EQ(s.ss.selector, 0);  // null, RPL 0
  EXPECT_TRUE(s.ss.unusable);
  EXPECT_EQ(s.ss.dpl, 0);  // the CPL, as VMX and KVM keep it
  EXPECT_EQ(current_privilege(s), 0u);
  for (Privilege p : mem.write_privileges) EXPECT_EQ(p, Privilege::Supervisor);
}

// SDM vol. 3 4.6: the IDT, GDT and TSS are read as implicit supervisor
// accesses at any CPL; IRET pops at the CPL it runs at.
TEST_F(BtLongModeEvents, TablesAreReadAsImplicitSupervisorAccessesAndIretPopsAtItsCpl) {
  gate(0x80, 0xee);
  api::VcpuState s = user64();
  ASSERT_FALSE(deliver(s, mem, 0x80, false, 0, EventKind::SoftwareInterrupt));
  ASSERT_EQ(mem.read_privileges.size(), 4u);  // the gate's two halves, the code descriptor, TSS.RSP0
  for (Privilege p : mem.read_privileges) EXPECT_EQ(p, Privilege::ImplicitSupervisor);

  api::VcpuState user = user64();
  iret_frame(0x5008, {0x400000, kUcode64, 0x202, 0x5800, kUdata});
  mem.read_privileges.clear();
  ASSERT_FALSE(iret64(user, mem, 8));
  using enum Privilege;
  // RIP, CS, RFLAGS, the CS descriptor, RSP, SS, the SS descriptor.
  const std::vector<Privilege> expected{User, User, User, ImplicitSupervisor, User, User, ImplicitSupervisor};
  EXPECT_EQ(mem.read_privileges, expected);
}

// lm64syscall: "ring 3 read of a supervisor page: vector 14 error 0x5, CS
// 0x3b, SS:RSP 0x33:the user's, RIP at it, frame at the top of RSP0 yes", and
// "IRQ0 x3 in ring 3: ... CS 0x3b, SS 0x33, frame at the top of RSP0 yes".
TEST_F(BtLongModeEvents, ExceptionsAndInterruptsFromRing3NeedNoGateDpl) {
  api::VcpuState pf = user64();
  ASSERT_FALSE(deliver(pf, mem, 14, true, 5, EventKind::Exception));
  EXPECT_EQ(pf.gpr[api::gpr::rsp] + 8, kRsp0 - 40);
  EXPECT_EQ(frame_below(kRsp0, 6), (std::vector<std::uint64_t>{kUdata, 0x5008, 0x202, kUcode64, 0x401000, 5}));
  api::VcpuState irq = user64();
  ASSERT_FALSE(deliver(irq, mem, 0x20, false, 0, EventKind::HardwareInterrupt));
  EXPECT_EQ(irq.gpr[api::gpr::rsp], kRsp0 - 40);
  EXPECT_EQ(irq.ss.selector, 0);
}

// lm64exc: "int $0x40 from compatibility mode: vector 0x40, CS 0x8, RIP after
// it yes, SS:RSP 0x10:ESP as before" (into a 64-bit handler).
TEST_F(BtLongModeEvents, FromCompatibilityModeIntoASixtyFourBitHandler) {
  api::VcpuState s = kernel64();
  s.cs = segment(kKcode32);
  s.rip = 0x101234;
  s.gpr[api::gpr::rsp] = 0x7ffc;
  ASSERT_FALSE(deliver(s, mem, 0x40, false, 0, EventKind::SoftwareInterrupt));
  EXPECT_EQ(frame_below(0x7ff0, 5), (std::vector<std::uint64_t>{kKdata, 0x7ffc, 0x202, kKcode32, 0x101234}));
  EXPECT_TRUE(s.cs.l);
  EXPECT_EQ(s.cs.selector, kKcode64);
}

TEST_F(BtLongModeEvents, HandlerCodeSegmentMustBePresentSixtyFourBitCodeAtOrAboveCpl) {
  api::VcpuState s = kernel64();
  const api::VcpuState before = s;
  gate(0x60, 0x8e, 0, 0);
  EXPECT_EQ(deliver(s, mem, 0x60, false, 0, EventKind::HardwareInterrupt), Fault::gp(1));  // null: #GP(EXT)
  gate(0x61, 0x8e, 0, kKcode32);
  EXPECT_EQ(deliver(s, mem, 0x61, false, 0, EventKind::HardwareInterrupt), Fault::gp(kKcode32 | 1));
  gate(0x62, 0x8e, 0, kUcode64);
  EXPECT_EQ(deliver(s, mem, 0x62, false, 0, EventKind::SoftwareInterrupt), Fault::gp(kUcode64 & ~3));  // DPL 3 > CPL 0
  gate(0x63, 0x8e, 0, kCode64NotPresent);
  EXPECT_EQ(deliver(s, mem, 0x63, false, 0, EventKind::Exception), Fault::np(kCode64NotPresent | 1));
  gate(0x64, 0x8e, 0, kCodeLongAndDefault32);
  EXPECT_EQ(deliver(s, mem, 0x64, false, 0, EventKind::Exception), Fault::gp(kCodeLongAndDefault32 | 1));
  gate(0x65, 0x8e, 0, kKdata);
  EXPECT_EQ(deliver(s, mem, 0x65, false, 0, EventKind::Exception), Fault::gp(kKdata | 1));
  gate(0x66, 0x8e, 0, 0x400);  // beyond the GDT limit
  EXPECT_EQ(deliver(s, mem, 0x66, false, 0, EventKind::Exception), Fault::gp(0x400 | 1));
  gate(0x67, 0x8e, 0, kKcode64, 0x0000800000000000ull);
  EXPECT_EQ(deliver(s, mem, 0x67, false, 0, EventKind::SoftwareInterrupt), Fault::gp(0));  // non-canonical RIP
  expect_same_registers(s, before);
}

TEST_F(BtLongModeEvents, ConformingHandlerRunsAtTheCurrentPrivilege) {
  gate(0x70, 0xee, 0, kConformingCode64);
  api::VcpuState s = user64();
  ASSERT_FALSE(deliver(s, mem, 0x70, false, 0, EventKind::SoftwareInterrupt));
  EXPECT_EQ(s.cs.selector, kConformingCode64 | 3);
  EXPECT_EQ(s.ss.selector, kUdata);  // no stack switch
  EXPECT_EQ(s.gpr[api::gpr::rsp], 0x5000u - 40);
  for (Privilege p : mem.write_privileges) EXPECT_EQ(p, Privilege::User);  // pushed at CPL 3
}

TEST_F(BtLongModeEvents, StackFieldBeyondTheTssLimitIsTs) {
  gate(0x71, 0x8e, 7);  // IST7 at 0x54
  api::VcpuState s = kernel64();
  s.tr.limit = 0x57;
  EXPECT_EQ(deliver(s, mem, 0x71, false, 0, EventKind::HardwareInterrupt), Fault::ts(kTss | 1));
  s.tr.limit = 0x5b;  // IST7's last byte
  EXPECT_FALSE(deliver(s, mem, 0x71, false, 0, EventKind::HardwareInterrupt));
}

TEST_F(BtLongModeEvents, NonCanonicalStackIsSs) {
  api::VcpuState s = kernel64();
  s.gpr[api::gpr::rsp] = 0x0000800000000010ull;
  EXPECT_EQ(deliver(s, mem, 0x20, false, 0, EventKind::HardwareInterrupt), Fault::ss(1));
  s.gpr[api::gpr::rsp] = 0xffff800000000010ull;  // the frame would cross out of canonical space
  EXPECT_EQ(deliver(s, mem, 0x21, false, 0, EventKind::SoftwareInterrupt), Fault::ss(0));
}

TEST_F(BtLongModeEvents, DebugExceptionClearsDr7GeneralDetect) {
  api::VcpuState s = kernel64();
  s.dr[7] = 0x2400;
  ASSERT_FALSE(deliver(s, mem, 1, false, 0, EventKind::Exception));
  EXPECT_EQ(s.dr[7], 0x400u);
}

// ------------------------------------------------------------------ IRET

TEST_F(BtLongModeEvents, IretqUndoesAnInterruptAtTheSamePrivilege) {
  api::VcpuState s = kernel64();
  s.gpr[api::gpr::rsp] = 0x7ff8;
  s.rflags = 0x246;
  const api::VcpuState before = s;
  ASSERT_FALSE(deliver(s, mem, 0x20, false, 0, EventKind::HardwareInterrupt));
  ASSERT_FALSE(iret64(s, mem, 8));
  expect_same_registers(s, before);
}

TEST_F(BtLongModeEvents, IretqUndoesAnInterruptFromRing3WithItsNullSs) {
  gate(0x80, 0xee);
  api::VcpuState s = user64();
  s.rflags = 0x40247;
  const api::VcpuState before = s;
  ASSERT_FALSE(deliver(s, mem, 0x80, false, 0, EventKind::SoftwareInterrupt));
  ASSERT_FALSE(iret64(s, mem, 8));
  expect_same_registers(s, before);
  EXPECT_EQ(current_privilege(s), 3u);
}

// A nested interrupt in a kernel entered from ring 3 (SS null) returns to it.
TEST_F(BtLongModeEvents, IretqMayLoadANullSsBackTo64BitModeBelowRing3) {
  api::VcpuState s = kernel64();
  iret_frame(0x7000, {0x401000, kKcode64, 0x202, 0x7800, 0});
  s.gpr[api::gpr::rsp] = 0x7000;
  ASSERT_FALSE(iret64(s, mem, 8));
  EXPECT_EQ(s.ss.selector, 0);
  EXPECT_TRUE(s.ss.unusable);
  EXPECT_EQ(s.gpr[api::gpr::rsp], 0x7800u);

  api::VcpuState to_ring3 = kernel64(), to_compat = kernel64();
  iret_frame(0x7000, {0x401000, kUcode64, 0x202, 0x7800, 3});
  to_ring3.gpr[api::gpr::rsp] = 0x7000;
  EXPECT_EQ(iret64(to_ring3, mem, 8), Fault::gp(0));
  iret_frame(0x7100, {0x401000, kKcode32, 0x202, 0x7800, 0});
  to_compat.gpr[api::gpr::rsp] = 0x7100;
  EXPECT_EQ(iret64(to_compat, mem, 8), Fault::gp(0));
}

TEST_F(BtLongModeEvents, IretqToAnOuterRingNullsTheDataSegmentsItMayNotUseButKeepsFsGsBases) {
  api::VcpuState s = kernel64();
  s.fs = segment(kKdata);
  s.fs.base = 0x7000;  // as WRMSR FS_BASE leaves it
  s.gs.base = 0x6000;  // null selector already: untouched
  iret_frame(0x7000, {0x400000, kUcode64, 0x202, 0x5000, kUdata});
  s.gpr[api::gpr::rsp] = 0x7000;
  ASSERT_FALSE(iret64(s, mem, 8));
  EXPECT_TRUE(s.ds.unusable);
  EXPECT_EQ(s.ds.selector, 0);
  EXPECT_TRUE(s.es.unusable);
  EXPECT_TRUE(s.fs.unusable);
  EXPECT_EQ(s.fs.selector, 0);
  EXPECT_EQ(s.fs.base, 0x7000u);
  EXPECT_EQ(s.gs.base, 0x6000u);
  EXPECT_EQ(s.ss.selector, kUdata);
  EXPECT_EQ(s.cs.selector, kUcode64);
  EXPECT_EQ(current_privilege(s), 3u);
}

TEST_F(BtLongModeEvents, IretqToCompatibilityModeChecksTheLimitNotCanonicality) {
  api::VcpuState s = kernel64();
  iret_frame(0x7000, {0x08048000, kUcode32, 0x202, 0xbffff000, kUdata});
  s.gpr[api::gpr::rsp] = 0x7000;
  ASSERT_FALSE(iret64(s, mem, 8));
  EXPECT_FALSE(s.cs.l);
  EXPECT_TRUE(s.cs.db);
  EXPECT_EQ(s.rip, 0x08048000u);
  api::VcpuState beyond = kernel64();
  iret_frame(0x7000, {0x100000000ull, kUcode32, 0x202, 0xbffff000, kUdata});
  beyond.gpr[api::gpr::rsp] = 0x7000;
  EXPECT_EQ(iret64(beyond, mem, 8), Fault::gp(0));
}

TEST_F(BtLongModeEvents, IretdPopsFourByteSlotsIn64BitMode) {
  api::VcpuState s = kernel64();
  iret_frame(0x7000, {0x401234, kKcode64, 0x246, 0x6000, kKdata}, 4);
  s.gpr[api::gpr::rsp] = 0x7000;
  ASSERT_FALSE(iret64(s, mem, 4));
  EXPECT_EQ(s.rip, 0x401234u);
  EXPECT_EQ(s.rflags, 0x246u);
  EXPECT_EQ(s.gpr[api::gpr::rsp], 0x6000u);
  EXPECT_EQ(s.ss.selector, kKdata);
}

TEST_F(BtLongModeEvents, IretReturnCodeSegmentChecks) {
  struct Case {
    std::uint16_t cs;
    Fault expected;
  };
  const Case cases[] = {
      {0, Fault::gp(0)},                                                   // null
      {kKcode64 | 3, Fault::gp(kKcode64)},                                 // non-conforming, DPL 0 != RPL 3
      {kKdata, Fault::gp(kKdata)},                                         // not code
      {kCode64NotPresent, Fault::np(kCode64NotPresent)},                   // not present
      {kCodeLongAndDefault32, Fault::gp(kCodeLongAndDefault32)},           // L and D both set
      {0x400, Fault::gp(0x400)},                                           // beyond the GDT
  };
  for (const Case& c : cases) {
    api::VcpuState s = kernel64();
    iret_frame(0x7000, {0x401000, c.cs, 0x202, 0x7800, kKdata});
    s.gpr[api::gpr::rsp] = 0x7000;
    const api::VcpuState before = s;
    EXPECT_EQ(iret64(s, mem, 8), c.expected) << std::hex << c.cs;
    expect_same_registers(s, before);
  }
  api::VcpuState user = user64();  // RPL 0 < CPL 3
  iret_frame(0x5000, {0x401000, kKcode64, 0x202, 0x7800, kKdata});
  user.gpr[api::gpr::rsp] = 0x5000;
  EXPECT_EQ(iret64(user, mem, 8), Fault::gp(kKcode64));
}

TEST_F(BtLongModeEvents, IretStackSegmentChecks) {
  api::VcpuState s = kernel64();
  s.gpr[api::gpr::rsp] = 0x7000;
  iret_frame(0x7000, {0x401000, kUcode64, 0x202, 0x5000, kKdata});  // DPL 0 stack for ring 3
  EXPECT_EQ(iret64(s, mem, 8), Fault::gp(kKdata));
  iret_frame(0x7000, {0x401000, kKcode64, 0x202, 0x5000, kDataNotPresent});
  EXPECT_EQ(iret64(s, mem, 8), Fault::ss(kDataNotPresent));
  iret_frame(0x7000, {0x401000, kKcode64, 0x202, 0x5000, kKcode64});  // code as a stack
  EXPECT_EQ(iret64(s, mem, 8), Fault::gp(kKcode64));
}

TEST_F(BtLongModeEvents, IretRejectsNonCanonicalRipAndNtAndPageFaultsLeaveTheStateAlone) {
  api::VcpuState s = kernel64();
  s.gpr[api::gpr::rsp] = 0x7000;
  const api::VcpuState before = s;
  iret_frame(0x7000, {0x0000800000000000ull, kKcode64, 0x202, 0x5000, kKdata});
  EXPECT_EQ(iret64(s, mem, 8), Fault::gp(0));
  s.rflags |= kNT;  // no task return in IA-32e mode
  EXPECT_EQ(iret64(s, mem, 8), Fault::gp(0));
  s.rflags = before.rflags;
  mem.not_present.insert(0x7);
  const Check pf = iret64(s, mem, 8);
  ASSERT_TRUE(pf);
  EXPECT_EQ(pf->vector, 14);
  expect_same_registers(s, before);
}

TEST_F(BtLongModeEvents, IretFlagsFollowCplAndIoplAndNeverSetVm) {
  api::VcpuState s = user64();  // IOPL 0, IF set
  iret_frame(0x5000, {0x400000, kUcode64, 0x3000 | kVM | 0x40000 | 0xd5, 0x5800, kUdata});
  s.gpr[api::gpr::rsp] = 0x5000;
  ASSERT_FALSE(iret64(s, mem, 8));
  EXPECT_EQ(s.rflags, 0x202u | 0x40000 | 0xd5);  // IOPL and IF as before, AC and arithmetic popped, no VM

  api::VcpuState k = kernel64();
  iret_frame(0x7000, {0x401000, kKcode64, 0x3002 | kVM | 0x180000, 0x7800, kKdata});
  k.gpr[api::gpr::rsp] = 0x7000;
  ASSERT_FALSE(iret64(k, mem, 8));
  EXPECT_EQ(k.rflags, 0x3002u | 0x180000);  // CPL 0: IOPL, IF, VIF, VIP
}

// ------------------------------------------------------------------ SYSCALL / SYSRET / SWAPGS

// lm64syscall's MSRs: STAR with SYSRET's base 0x28 and SYSCALL's 0x18.
void syscall_msrs(api::VcpuState& s) {
  s.set_msr(kMsrStar, std::uint64_t{kUcode32 & ~3} << 48 | std::uint64_t{kKcode64} << 32);
  s.set_msr(kMsrLstar, 0xffffffff81800000ull);
  s.set_msr(kMsrCstar, 0xffffffff81900000ull);
  s.set_msr(kMsrSfmask, kTF | kIF | 0x400 | 0x40000 | kIOPL | kNT);  // 0x47700
}

// lm64syscall: "user RFLAGS at syscall (R11): 40647; kernel RFLAGS & SFMASK
// 47700: 0; user RFLAGS after sysret: 40647".  The kernel's RFLAGS keep the
// arithmetic flags (SDM: RFLAGS AND NOT SFMASK); QEMU 7.2 clears those too.
TEST_F(BtLongModeEvents, SyscallSavesRipAndRflagsAndMasksWithSfmask) {
  api::VcpuState s = user64();
  syscall_msrs(s);
  s.rip = 0x400105;  // after the syscall
  s.rflags = 0x40647;
  ASSERT_FALSE(syscall(s));
  EXPECT_EQ(s.gpr[api::gpr::rcx], 0x400105u);
  EXPECT_EQ(s.gpr[api::gpr::r11], 0x40647u);
  EXPECT_EQ(s.rflags, 0x47u);
  EXPECT_EQ(s.rflags & 0x47700, 0u);
  EXPECT_EQ(s.rip, 0xffffffff81800000ull);
  EXPECT_EQ(s.cs.selector, kKcode64);
  EXPECT_TRUE(s.cs.l);
  EXPECT_FALSE(s.cs.db);
  EXPECT_EQ(s.ss.selector, kKdataSyscall);
  EXPECT_EQ(s.ss.dpl, 0);
  EXPECT_EQ(current_privilege(s), 0u);

  // SYSRETQ back: "user RFLAGS after sysret: 40647", CS 0x3b, SS 0x33.
  ASSERT_FALSE(sysret(s, 8));
  EXPECT_EQ(s.rip, 0x400105u);
  EXPECT_EQ(s.rflags, 0x40647u);
  EXPECT_EQ(s.cs.selector, kUcode64);
  EXPECT_TRUE(s.cs.l);
  EXPECT_EQ(s.ss.selector, kUdata);
  EXPECT_EQ(current_privilege(s), 3u);
}

TEST_F(BtLongModeEvents, SyscallClearsRfInR11AndRflags) {
  api::VcpuState s = user64();
  syscall_msrs(s);
  s.rflags = 0x202 | kRF;
  ASSERT_FALSE(syscall(s));
  EXPECT_EQ(s.gpr[api::gpr::r11], 0x202u);
  EXPECT_EQ(s.rflags & kRF, 0u);
}

// lm64syscall: "sysretl to 32-bit ring 3: inc %eax gave 42; int $0x81 from
// it: vector 129, CS 0x2b".
TEST_F(BtLongModeEvents, SysretlReturnsToCompatibilityMode) {
  api::VcpuState s = kernel64();
  syscall_msrs(s);
  s.gpr[api::gpr::rcx] = 0xdead00401000ull;  // only ECX counts
  s.gpr[api::gpr::r11] = 0x202;
  ASSERT_FALSE(sysret(s, 4));
  EXPECT_EQ(s.rip, 0x401000u);
  EXPECT_EQ(s.cs.selector, kUcode32);
  EXPECT_FALSE(s.cs.l);
  EXPECT_TRUE(s.cs.db);
  EXPECT_EQ(s.ss.selector, kUdata);
  EXPECT_EQ(current_privilege(s), 3u);
}

TEST_F(BtLongModeEvents, SysretRestoresOnlyTheFlagsR11MayHold) {
  api::VcpuState s = kernel64();
  syscall_msrs(s);
  s.gpr[api::gpr::r11] = ~0ull;
  ASSERT_FALSE(sysret(s, 8));
  EXPECT_EQ(s.rflags, 0x3c7fd7u);  // no RF, no VM, nothing above ID
}

TEST_F(BtLongModeEvents, SyscallAndSysretFaults) {
  api::VcpuState no_sce = user64();
  no_sce.efer &= ~kEferSce;
  EXPECT_EQ(syscall(no_sce), Fault::ud());
  EXPECT_EQ(sysret(no_sce, 8), Fault::ud());
  api::VcpuState user = user64();
  syscall_msrs(user);
  EXPECT_EQ(sysret(user, 8), Fault::gp(0));  // CPL 3
  api::VcpuState kernel = kernel64();
  syscall_msrs(kernel);
  kernel.gpr[api::gpr::rcx] = 0x0000800000000000ull;
  const api::VcpuState before = kernel;
  EXPECT_EQ(sysret(kernel, 8), Fault::gp(0));  // Intel: at CPL 0
  expect_same_registers(kernel, before);
  ASSERT_FALSE(sysret(kernel, 8, Vendor::Amd));  // AMD: the fetch at CPL 3 faults
  EXPECT_EQ(kernel.rip, 0x0000800000000000ull);
  EXPECT_EQ(current_privilege(kernel), 3u);
}

TEST_F(BtLongModeEvents, SyscallFromCompatibilityModeIsIntelUdAndAmdCstar) {
  api::VcpuState s = user64();
  syscall_msrs(s);
  s.cs = segment(kUcode32);
  s.rip = 0x08048005;
  EXPECT_EQ(syscall(s), Fault::ud());
  ASSERT_FALSE(syscall(s, Vendor::Amd));
  EXPECT_EQ(s.rip, 0xffffffff81900000ull);
  EXPECT_EQ(s.gpr[api::gpr::rcx], 0x08048005u);
  EXPECT_TRUE(s.cs.l);
}

// lm64syscall: "in the kernel after swapgs: GS_BASE = the per-CPU area yes,
// KERNEL_GS_BASE = the user's yes".
TEST_F(BtLongModeEvents, SwapgsExchangesGsBaseWithKernelGsBase) {
  api::VcpuState s = kernel64();
  s.gs.base = 0x5000;  // the user's
  s.set_msr(kMsrKernelGsBase, 0x6000);  // the per-CPU area
  ASSERT_FALSE(swapgs(s));
  EXPECT_EQ(s.gs.base, 0x6000u);
  EXPECT_EQ(s.msr(kMsrKernelGsBase), 0x5000u);
  ASSERT_FALSE(swapgs(s));
  EXPECT_EQ(s.gs.base, 0x5000u);
  EXPECT_EQ(s.msr(kMsrKernelGsBase), 0x6000u);

  api::VcpuState user = user64();
  EXPECT_EQ(swapgs(user), Fault::gp(0));
  api::VcpuState compat = kernel64();
  compat.cs = segment(kKcode32);
  EXPECT_EQ(swapgs(compat), Fault::ud());
}

}  // namespace
}  // namespace modevisor::bt::bt64
