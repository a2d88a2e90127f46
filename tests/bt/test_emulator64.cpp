// BT64's monitor-side emulation of one long-mode instruction, without a VM:
// an api::VcpuState over a sparse guest memory and a fake engine that records
// port I/O, MSRs and paging changes.  The machine is laid out as the lm64*
// guests' runtime lays out theirs (tests/guests/lm64.h: the same GDT
// selectors), and the instructions those guests leave to the monitor (the
// compatibility-mode LCALL into 64-bit code and the LRETL back, LIDT/LTR,
// MOV to SS/DS/ES, IRETQ, SYSCALL/SYSRET/SWAPGS, REP MOVSB, OUT ...) are here.
#include <gtest/gtest.h>

#include <array>
#include <map>
#include <set>
#include <tuple>
#include <vector>

#include "bt64/emulator64.hpp"
#include "bt64/emulator64_step.hpp"
#include "segment_descriptor.hpp"

namespace modevisor::bt::bt64 {
namespace {

using api::gpr::rax;
using api::gpr::rcx;
using api::gpr::rdi;
using api::gpr::rdx;
using api::gpr::rsi;
using api::gpr::rsp;

// Zero-filled pages made on first touch, except pages that are not present,
// read-only or supervisor-only.
class SparseMemory final : public LinearMemory {
 public:
  std::set<std::uint64_t> not_present, read_only, supervisor_only;  // page numbers

  Outcome<std::uint64_t> read(std::uint64_t la, unsigned size, Privilege who) override {
    if (Check f = check(la, size, who, false)) return *f;
    return peek(la, size);
  }
  Check write(std::uint64_t la, unsigned size, std::uint64_t value, Privilege who) override {
    if (Check f = check(la, size, who, true)) return f;
    poke(la, value, size);
    return std::nullopt;
  }
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
      if (absent || (user && supervisor_only.count(page)) || (writing && read_only.count(page)))
        return Fault{14, true, (absent ? 0u : 1u) | (writing ? 2u : 0u) | (user ? 4u : 0u)};
    }
    return std::nullopt;
  }
  std::uint8_t& byte(std::uint64_t la) { return pages_[la >> 12][la & 0xfff]; }
  std::map<std::uint64_t, std::array<std::uint8_t, 4096>> pages_;
};

struct PortAccess {
  bool out;
  std::uint16_t port;
  unsigned size;
  std::uint64_t value;
  friend bool operator==(const PortAccess&, const PortAccess&) = default;
};

class FakeEnv final : public Emulator64Env {
 public:
  SparseMemory mem;
  std::vector<PortAccess> io;
  std::uint64_t next_in = 0x12345678;
  std::map<std::uint32_t, std::uint64_t> msrs{{0x1b, 0xfee00900}, {0xc0000103, 7}};
  unsigned paging_changes = 0;
  std::vector<std::uint64_t> invalidated;

  LinearMemory& memory() override { return mem; }
  std::uint64_t port_in(std::uint16_t port, unsigned size) override {
    const std::uint64_t v = next_in & ((std::uint64_t{1} << (8 * size)) - 1);
    io.push_back({false, port, size, v});
    ++next_in;
    return v;
  }
  void port_out(std::uint16_t port, unsigned size, std::uint64_t value) override {
    io.push_back({true, port, size, value});
  }
  std::array<std::uint32_t, 4> cpuid(std::uint32_t leaf, std::uint32_t) override {
    switch (leaf) {
      case 0: return {0xd, 0x756e6547, 0x6c65746e, 0x49656e69};
      case 1: return {0x806c1, 0, (1u << 17) | (1u << 26), 0};  // PCID, XSAVE
      case 7: return {0, 1u | (1u << 7) | (1u << 20), 1u << 2, 0};  // FSGSBASE SMEP SMAP; UMIP
      case 0xd: return {7, 0, 0, 0};  // x87 SSE AVX
      case 0x80000000: return {0x80000008, 0, 0, 0};
      case 0x80000001: return {0, 0, 0, (1u << 20) | (1u << 27) | (1u << 29)};  // NX RDTSCP LM
      case 0x80000008: return {40, 0, 0, 0};
      default: return {0, 0, 0, 0};
    }
  }
  std::optional<std::uint64_t> rdmsr(std::uint32_t index) override {
    const auto it = msrs.find(index);
    if (it == msrs.end()) return std::nullopt;
    return it->second;
  }
  bool wrmsr(std::uint32_t index, std::uint64_t value) override {
    if (!msrs.count(index)) return false;
    msrs[index] = value;
    return true;
  }
  std::uint64_t tsc() override { return 0x1122334455667788ull; }
  void paging_changed() override { ++paging_changes; }
  void invlpg(std::uint64_t la) override { invalidated.push_back(la); }
};

// The lm64 runtime's GDT (lm64.h) and a few more entries.
constexpr std::uint16_t kKcode32 = 0x08, kKdata = 0x10, kKcode64 = 0x18, kUcode32 = 0x2b, kUdata = 0x33,
                        kUcode64 = 0x3b, kTss = 0x40;
constexpr std::uint16_t kLdt = 0x50, kCallGate = 0x60, kDataNotPresent = 0x78, kData16Base = 0x80;
constexpr std::uint64_t kGdt = 0x1000, kIdt = 0x2000, kTssBase = 0x3000, kRsp0 = 0x9000;
constexpr std::uint64_t kHandlers = 0xffffffff81000000ull;
constexpr std::uint64_t kCode = 0x401000;

const std::map<std::uint16_t, std::uint64_t> kDescriptors = {
    {kKcode32, 0x00cf9a000000ffffull},  // compatibility-mode code (L=0, D=1)
    {kKdata, 0x00cf92000000ffffull},
    {kKcode64, 0x00af9a000000ffffull},  // L=1
    {0x20, 0x00cf92000000ffffull},
    {kUcode32 & ~3, 0x00cffa000000ffffull},
    {kUdata & ~3, 0x00cff2000000ffffull},
    {kUcode64 & ~3, 0x00affa000000ffffull},
    {kTss, 0x0000890030002067ull},  // limit 0x2067: a 64-bit available TSS with a bitmap
    {kTss + 8, 0x00000000ffffffffull},                            // base 63:32
    {kLdt, 0x0000820050000fffull},                                // LDT at 0x5000 (its upper half below)
    {kLdt + 8, 0},
    {kCallGate, 0x0000ec0000180000ull},
    {kCallGate + 8, 0},
    {kDataNotPresent, 0x00cf12000000ffffull},
    {kData16Base, 0x00cf92100000ffffull},  // base 0x100000
};

api::Segment segment(std::uint16_t sel) {
  api::Segment s = decode_segment_descriptor(kDescriptors.at(sel & ~3), sel);
  s.type |= 1;
  return s;
}

class BtEmulator64 : public ::testing::Test {
 protected:
  FakeEnv env;
  SparseMemory& mem = env.mem;
  api::VcpuState s = kernel64();
  Vendor vendor = Vendor::Intel;

  void SetUp() override {
    for (const auto& [sel, raw] : kDescriptors) mem.poke(kGdt + sel, raw);
    mem.poke(kTssBase + 4, kRsp0);
    mem.poke(kTssBase + 0x66, 0x68, 2);  // the I/O bitmap right after the TSS
    for (unsigned v = 0; v < 256; ++v) gate(v, v == 3 || v == 0x80 ? 0xee : 0x8e);
  }
  void gate(unsigned vector, std::uint8_t access) {
    const std::uint64_t offset = kHandlers + vector * 0x100u;
    const std::uint64_t low = (offset & 0xffff) | std::uint64_t{kKcode64} << 16 | std::uint64_t{access} << 40 |
                              (offset >> 16 & 0xffff) << 48;
    mem.poke(kIdt + 16 * vector, low);
    mem.poke(kIdt + 16 * vector + 8, offset >> 32);
  }

  static api::VcpuState kernel64() {
    api::VcpuState s;
    s.efer = 0xd01;  // SCE, LME, LMA, NXE
    s.cr0 = 0x80010031;
    s.cr4 = 0x20;
    s.cs = segment(kKcode64);
    s.ss = s.ds = s.es = segment(kKdata);
    s.fs = s.gs = null_stack_segment(0, 0);
    s.gdtr = {kGdt, 0x8f};
    s.idtr = {kIdt, 0xfff};
    s.tr = decode_segment_descriptor(kDescriptors.at(kTss), kTss);
    s.tr.base = kTssBase;
    s.tr.type = 0xb;
    s.ldtr.unusable = true;
    s.rip = kCode;
    s.gpr[rsp] = 0x8000;
    s.rflags = 0x202;
    return s;
  }
  void to_user64() {
    s.cs = segment(kUcode64);
    s.ss = s.ds = s.es = segment(kUdata);
  }
  void to_compat() {  // compatibility mode at CPL 0, as lm64_enter leaves it
    s.cs = segment(kKcode32);
    s.rip = 0x2000f0;
  }

  StepResult run(std::vector<std::uint8_t> bytes) { return emulate_one(s, env, bytes.data(), bytes.size(), vendor); }
  static void expect_fault(const StepResult& r, Fault f) {
    EXPECT_EQ(r.kind, StepKind::Fault) << r.what;
    ASSERT_TRUE(r.fault.has_value());
    EXPECT_EQ(*r.fault, f);
  }
  // The result is Next and RIP moved past `length` bytes.
  void expect_next(const StepResult& r, std::uint64_t rip_before, unsigned length) {
    EXPECT_EQ(r.kind, StepKind::Next) << r.what;
    EXPECT_EQ(s.rip, rip_before + length);
  }
};

// ------------------------------------------------------------------ pure parts

TEST(BtEmulator64Parts, CmpFlagsMatchTheSdm) {
  using namespace detail;
  EXPECT_EQ(cmp_flags(5, 5, 1), kZF | kPF);
  EXPECT_EQ(cmp_flags(0, 1, 1), kCF | kSF | kAF | kPF);                    // 0xff
  EXPECT_EQ(cmp_flags(0x80, 1, 1), kOF | kAF);                             // 0x7f: signed overflow
  EXPECT_EQ(cmp_flags(0x8000000000000000ull, 1, 8), kOF | kAF | kPF);      // 0x7fff...ff
  EXPECT_EQ(cmp_flags(0x100000000ull, 1, 4), kCF | kSF | kAF | kPF);       // only the low 32 bits count
}

// ------------------------------------------------------------------ strings

TEST_F(BtEmulator64, RepMovsbForward) {
  mem.poke(0x6000, 0x0807060504030201ull);
  s.gpr[rsi] = 0x6000;
  s.gpr[rdi] = 0x7000;
  s.gpr[rcx] = 5;
  expect_next(run({0xf3, 0xa4}), kCode, 2);
  EXPECT_EQ(mem.peek(0x7000), 0x0504030201ull);
  EXPECT_EQ(s.gpr[rsi], 0x6005u);
  EXPECT_EQ(s.gpr[rdi], 0x7005u);
  EXPECT_EQ(s.gpr[rcx], 0u);
}

TEST_F(BtEmulator64, RepMovsbBackwardWithDf) {
  mem.poke(0x6000, 0x0807060504030201ull);
  s.rflags |= detail::kDF;
  s.gpr[rsi] = 0x6003;
  s.gpr[rdi] = 0x7003;
  s.gpr[rcx] = 4;
  expect_next(run({0xf3, 0xa4}), kCode, 2);
  EXPECT_EQ(mem.peek(0x7000), 0x04030201ull);
  EXPECT_EQ(s.gpr[rsi], 0x5fffu);
  EXPECT_EQ(s.gpr[rdi], 0x6fffu);
}

TEST_F(BtEmulator64, RepMovsbWithAddressSize32WrapsAndZeroExtends) {
  mem.poke(0xffffffff, 0xaa, 1);
  mem.poke(0, 0xbb, 1);
  s.gpr[rsi] = 0x12345678ffffffffull;  // ESI = 0xffffffff: the upper half is not used
  s.gpr[rdi] = 0x7000;
  s.gpr[rcx] = 0xffffffff00000002ull;  // ECX = 2
  expect_next(run({0x67, 0xf3, 0xa4}), kCode, 3);
  EXPECT_EQ(mem.peek(0x7000, 2), 0xbbaau);
  EXPECT_EQ(s.gpr[rsi], 1u);  // wrapped at 4 GiB, zero-extended
  EXPECT_EQ(s.gpr[rcx], 0u);
}

TEST_F(BtEmulator64, RepeCmpsbStopsAtTheFirstDifferenceWithExactFlags) {
  mem.poke(0x6000, 0x64636261, 4);  // "abcd"
  mem.poke(0x7000, 0x64646261, 4);  // "abdd"
  s.gpr[rsi] = 0x6000;
  s.gpr[rdi] = 0x7000;
  s.gpr[rcx] = 10;
  expect_next(run({0xf3, 0xa6}), kCode, 2);
  EXPECT_EQ(s.gpr[rcx], 7u);
  EXPECT_EQ(s.gpr[rsi], 0x6003u);
  EXPECT_EQ(s.rflags & detail::kArithmeticFlags, detail::cmp_flags('c', 'd', 1));
  EXPECT_EQ(s.rflags & detail::kArithmeticFlags, detail::kCF | detail::kSF | detail::kAF | detail::kPF);
}

TEST_F(BtEmulator64, RepneScasqFindsTheQuadword) {
  mem.poke(0x7000, 1);
  mem.poke(0x7008, 2);
  mem.poke(0x7010, 0x1234);
  s.gpr[rax] = 0x1234;
  s.gpr[rdi] = 0x7000;
  s.gpr[rcx] = 100;
  expect_next(run({0xf2, 0x48, 0xaf}), kCode, 3);
  EXPECT_EQ(s.gpr[rdi], 0x7018u);
  EXPECT_EQ(s.gpr[rcx], 97u);
  EXPECT_TRUE(s.rflags & detail::kZF);
}

TEST_F(BtEmulator64, StosAndLodsUseFsBaseAndZeroExtend) {
  s.fs.base = 0x100000;
  mem.poke(0x100040, 0xfedcba9876543210ull);
  s.gpr[rsi] = 0x40;
  s.gpr[rax] = ~0ull;
  expect_next(run({0x64, 0xad}), kCode, 2);  // lodsd fs:[rsi]
  EXPECT_EQ(s.gpr[rax], 0x76543210u);
  s.gpr[rdi] = 0x7000;
  s.gpr[rcx] = 2;
  s.rip = kCode;
  expect_next(run({0xf3, 0x48, 0xab}), kCode, 3);  // rep stosq: ES base ignored
  EXPECT_EQ(mem.peek(0x7008), 0x76543210u);
}

TEST_F(BtEmulator64, RepFaultKeepsTheCompletedIterationsAndTheAddress) {
  mem.not_present.insert(0x8);  // 0x8000..0x8fff
  s.gpr[rsi] = 0x6000;
  s.gpr[rdi] = 0x7ffe;
  s.gpr[rcx] = 4;
  const StepResult r = run({0xf3, 0xa4});
  expect_fault(r, Fault{14, true, 2});
  EXPECT_EQ(r.fault_address, 0x8000u);
  EXPECT_EQ(s.rip, kCode);
  EXPECT_EQ(s.gpr[rcx], 2u);  // two bytes went before the fault
  EXPECT_EQ(s.gpr[rdi], 0x8000u);
}

TEST_F(BtEmulator64, LongRepStopsAfterABoundWithRipUnchanged) {
  s.gpr[rdi] = 0x10000;
  s.gpr[rcx] = kMaxStringIterations + 5;
  const StepResult r = run({0xf3, 0xaa});
  EXPECT_EQ(r.kind, StepKind::Next);
  EXPECT_TRUE(r.string_interrupted);
  EXPECT_EQ(s.rip, kCode);
  EXPECT_EQ(s.gpr[rcx], 5u);
  expect_next(run({0xf3, 0xaa}), kCode, 2);
}

TEST_F(BtEmulator64, NonCanonicalAddressesAreGpOrSs) {
  s.gpr[rdi] = 0x0000800000000000ull;
  expect_fault(run({0xaa}), Fault::gp(0));  // stosb
  EXPECT_EQ(s.rip, kCode);
  s.gpr[rsp] = 0x0000800000000004ull;
  expect_fault(run({0x9c}), Fault::ss(0));  // pushfq through SS
  EXPECT_EQ(s.gpr[rsp], 0x0000800000000004ull);
}

TEST_F(BtEmulator64, StringSourceOverrideEvenWithEs) {
  to_compat();
  s.es = segment(kData16Base);  // base 0x100000: es:[esi] -> es:[edi]
  mem.poke(0x100010, 0x77, 1);
  s.gpr[rsi] = 0x10;
  s.gpr[rdi] = 0x20;
  expect_next(run({0x26, 0xa4}), 0x2000f0, 2);
  EXPECT_EQ(mem.peek(0x100020, 1), 0x77u);
}

TEST_F(BtEmulator64, CompatibilityModeStringsAddSegmentBasesAndCheckLimits) {
  to_compat();
  s.ds = segment(kData16Base);  // base 0x100000
  s.gpr[rsi] = 0x10;
  mem.poke(0x100010, 0x5a, 1);
  s.gpr[rdi] = 0x7000;
  expect_next(run({0xa4}), 0x2000f0, 1);
  EXPECT_EQ(mem.peek(0x7000, 1), 0x5au);
  s.ds.limit = 0x10;
  s.gpr[rsi] = 0x10;
  s.rip = 0x2000f0;
  expect_next(run({0xac}), 0x2000f0, 1);  // lodsb at the limit
  expect_fault(run({0xac}), Fault::gp(0));  // one past it
}

// ------------------------------------------------------------------ I/O

TEST_F(BtEmulator64, InAndOutAtCpl0) {
  s.gpr[rax] = 0xffffffffffffff41ull;
  expect_next(run({0xe6, 0x20}), kCode, 2);  // out 0x20, al (lm64_rt's EOI)
  s.gpr[rdx] = 0x3f8;
  expect_next(run({0xed}), kCode + 2, 1);  // in eax, dx: zero-extends
  ASSERT_EQ(env.io.size(), 2u);
  EXPECT_EQ(env.io[0], (PortAccess{true, 0x20, 1, 0x41}));
  EXPECT_EQ(env.io[1], (PortAccess{false, 0x3f8, 4, 0x12345678}));
  EXPECT_EQ(s.gpr[rax], 0x12345678u);
}

TEST_F(BtEmulator64, InAtCpl3FollowsTheTssBitmap) {
  to_user64();
  const std::uint64_t bitmap = kTssBase + 0x68;
  mem.poke(bitmap + 0x60 / 8, 0xfe, 1);  // port 0x60 allowed, 0x61.. denied
  expect_next(run({0xe4, 0x60}), kCode, 2);
  EXPECT_EQ(env.io.size(), 1u);
  s.rip = kCode;
  expect_fault(run({0xe4, 0x61}), Fault::gp(0));
  expect_fault(run({0x66, 0xe5, 0x60}), Fault::gp(0));  // in ax: ports 0x60 and 0x61
  EXPECT_EQ(env.io.size(), 1u);
  s.rflags |= detail::kIOPL;  // IOPL 3: no bitmap
  expect_next(run({0xe4, 0x61}), kCode, 2);
}

TEST_F(BtEmulator64, IoBeyondTheTssLimitIsRefused) {
  to_user64();
  s.tr.limit = 0x67;  // no room for a bitmap
  expect_fault(run({0xe4, 0x60}), Fault::gp(0));
}

TEST_F(BtEmulator64, RepInsbAndOutsw) {
  s.gpr[rdx] = 0x1f0;
  s.gpr[rdi] = 0x7000;
  s.gpr[rcx] = 2;
  expect_next(run({0xf3, 0x6c}), kCode, 2);
  EXPECT_EQ(mem.peek(0x7000, 2), 0x7978u);
  s.gpr[rsi] = 0x7000;
  s.gpr[rcx] = 1;
  expect_next(run({0xf3, 0x66, 0x6f}), kCode + 2, 3);
  EXPECT_EQ(env.io.back(), (PortAccess{true, 0x1f0, 2, 0x7978}));
}

// ------------------------------------------------------------------ flags

TEST_F(BtEmulator64, PushfqClearsRfAndVmInTheImage) {
  s.rflags = 0x10202 | detail::kAC;
  expect_next(run({0x9c}), kCode, 1);
  EXPECT_EQ(s.gpr[rsp], 0x7ff8u);
  EXPECT_EQ(mem.peek(0x7ff8), 0x202u | detail::kAC);
  EXPECT_FALSE(s.rflags & detail::kRF);
}

TEST_F(BtEmulator64, PopfqAtCpl3KeepsIfAndIopl) {
  to_user64();
  s.rflags = 0x202;
  mem.poke(0x8000, 0x3000 | 0x400 | 0x1 | detail::kRF | detail::kVM | detail::kAC);  // IOPL 3, IF 0, DF, CF
  expect_next(run({0x9d}), kCode, 1);
  EXPECT_EQ(s.rflags, 0x202u | 0x400 | 0x1 | detail::kAC);
  EXPECT_EQ(s.gpr[rsp], 0x8008u);
}

TEST_F(BtEmulator64, PopfqAtCpl0ChangesIfAndIoplButNeverVmOrRf) {
  mem.poke(0x8000, 0x3000 | 0x1 | detail::kRF | detail::kVM | detail::kVIF);
  expect_next(run({0x9d}), kCode, 1);
  EXPECT_EQ(s.rflags, 0x3003u);
}

TEST_F(BtEmulator64, PopfWith16BitOperandChangesTheLowWord) {
  s.rflags = 0x40202;
  mem.poke(0x8000, 0x0801, 2);
  expect_next(run({0x66, 0x9d}), kCode, 2);
  EXPECT_EQ(s.rflags, 0x40803u);
  EXPECT_EQ(s.gpr[rsp], 0x8002u);
}

TEST_F(BtEmulator64, CliStiFollowIoplAndStiReportsTheShadow) {
  to_user64();
  expect_fault(run({0xfa}), Fault::gp(0));
  s.rflags |= detail::kIOPL;
  expect_next(run({0xfa}), kCode, 1);
  EXPECT_FALSE(s.rflags & detail::kIF);
  const StepResult r = run({0xfb});
  EXPECT_TRUE(r.interrupt_shadow);
  EXPECT_TRUE(s.rflags & detail::kIF);
  EXPECT_FALSE(run({0xfb}).interrupt_shadow);  // IF was already set
}

TEST_F(BtEmulator64, PviAtCpl3ChangesVif) {
  to_user64();
  s.cr4 |= 2;
  s.rflags |= detail::kVIF;
  expect_next(run({0xfa}), kCode, 1);
  EXPECT_FALSE(s.rflags & detail::kVIF);
  EXPECT_TRUE(s.rflags & detail::kIF);
}

// ------------------------------------------------------------------ HLT, UD2, unsupported

TEST_F(BtEmulator64, HltAtCpl0HaltsPastItAndAtCpl3Faults) {
  const StepResult r = run({0xf4});
  EXPECT_EQ(r.kind, StepKind::Halt);
  EXPECT_EQ(s.rip, kCode + 1);
  to_user64();
  s.rip = kCode;
  expect_fault(run({0xf4}), Fault::gp(0));
  EXPECT_EQ(s.rip, kCode);
}

TEST_F(BtEmulator64, Ud2AndInvalidOpcodesAreUd) {
  expect_fault(run({0x0f, 0x0b}), Fault::ud());
  expect_fault(run({0xce}), Fault::ud());  // INTO in 64-bit mode
  expect_fault(run({0x1f}), Fault::ud());  // POP DS in 64-bit mode
  EXPECT_EQ(s.rip, kCode);
}

TEST_F(BtEmulator64, WhatIsNotEmulatedSaysSo) {
  const StepResult r = run({0xd9, 0xe8});  // fld1
  EXPECT_EQ(r.kind, StepKind::Unsupported);
  EXPECT_NE(r.what.find("fld1"), std::string::npos) << r.what;
  EXPECT_EQ(s.rip, kCode);
  EXPECT_EQ(run({0x0f, 0x01}).kind, StepKind::Unsupported);  // truncated
}

// ------------------------------------------------------------------ control and debug registers

TEST_F(BtEmulator64, MovCr3CallsPagingChanged) {
  s.gpr[rax] = 0x123000;
  expect_next(run({0x0f, 0x22, 0xd8}), kCode, 3);
  EXPECT_EQ(s.cr3, 0x123000u);
  EXPECT_EQ(env.paging_changes, 1u);
  s.gpr[rax] = 1ull << 40;  // beyond MAXPHYADDR 40
  expect_fault(run({0x0f, 0x22, 0xd8}), Fault::gp(0));
  s.gpr[rcx] = 0;
  expect_next(run({0x0f, 0x20, 0xd9}), kCode + 3, 3);  // mov rcx, cr3
  EXPECT_EQ(s.gpr[rcx], 0x123000u);
}

TEST_F(BtEmulator64, MovCr0AndCr4FollowLongModeRules) {
  s.gpr[rax] = s.cr0 & ~(1ull << 31);
  expect_fault(run({0x0f, 0x22, 0xc0}), Fault::gp(0));  // clearing PG in 64-bit mode
  s.gpr[rax] = s.cr0 | (1ull << 32);
  expect_fault(run({0x0f, 0x22, 0xc0}), Fault::gp(0));  // reserved
  s.gpr[rax] = s.cr0 | 8;
  expect_next(run({0x0f, 0x22, 0xc0}), kCode, 3);  // TS: no paging change
  EXPECT_EQ(env.paging_changes, 0u);
  expect_next(run({0x0f, 0x06}), kCode + 3, 2);  // clts
  EXPECT_FALSE(s.cr0 & 8);
  s.gpr[rax] = 0x20 | (1u << 7);  // PAE PGE
  s.rip = kCode;
  expect_next(run({0x0f, 0x22, 0xe0}), kCode, 3);
  EXPECT_EQ(env.paging_changes, 1u);
  s.gpr[rax] = 0x20 | (1u << 13);  // VMXE: not offered
  expect_fault(run({0x0f, 0x22, 0xe0}), Fault::gp(0));
  s.gpr[rax] = 0;  // clearing PAE in long mode
  expect_fault(run({0x0f, 0x22, 0xe0}), Fault::gp(0));
  expect_fault(run({0x0f, 0x22, 0xc8}), Fault::ud());  // CR1
}

TEST_F(BtEmulator64, ClearingPagingInCompatibilityModeLeavesLongMode) {
  to_compat();
  s.gpr[rax] = 0x11;
  expect_next(run({0x0f, 0x22, 0xc0}), 0x2000f0, 3);
  EXPECT_FALSE(s.efer & kEferLma);
  EXPECT_EQ(env.paging_changes, 1u);
}

TEST_F(BtEmulator64, Cr8AndCpl) {
  s.gpr[rax] = 9;
  expect_next(run({0x44, 0x0f, 0x22, 0xc0}), kCode, 4);
  EXPECT_EQ(s.cr8, 9u);
  s.gpr[rax] = 16;
  expect_fault(run({0x44, 0x0f, 0x22, 0xc0}), Fault::gp(0));
  to_user64();
  expect_fault(run({0x0f, 0x20, 0xd8}), Fault::gp(0));
}

TEST_F(BtEmulator64, DebugRegisters) {
  s.gpr[rax] = 0xffffffff81000000ull;
  expect_next(run({0x0f, 0x23, 0xc0}), kCode, 3);  // mov dr0, rax
  EXPECT_EQ(s.dr[0], 0xffffffff81000000ull);
  s.gpr[rax] = 0x1ull << 32;
  expect_fault(run({0x0f, 0x23, 0xf8}), Fault::gp(0));  // dr7 upper half
  s.cr4 |= 8;
  expect_fault(run({0x0f, 0x21, 0xe0}), Fault::ud());  // dr4 with CR4.DE
  s.dr[7] |= 1u << 13;                                 // GD
  expect_fault(run({0x0f, 0x21, 0xc0}), (Fault{1, false, 0}));
  EXPECT_TRUE(s.dr[6] & (1u << 13));
  EXPECT_FALSE(s.dr[7] & (1u << 13));
}

TEST_F(BtEmulator64, LmswSetsButNeverClearsPeAndSmswHonoursUmip) {
  s.gpr[rax] = 0xe;  // PE clear, MP EM TS set
  expect_next(run({0x0f, 0x01, 0xf0}), kCode, 3);
  EXPECT_EQ(s.cr0 & 0xf, 0xfu);
  s.gpr[rcx] = ~0ull;
  expect_next(run({0x0f, 0x01, 0xe1}), kCode + 3, 3);  // smsw ecx
  EXPECT_EQ(s.gpr[rcx], s.cr0 & 0xffffffff);
  to_user64();
  s.cr4 |= 1u << 11;
  expect_fault(run({0x0f, 0x01, 0xe1}), Fault::gp(0));
}

// ------------------------------------------------------------------ descriptor tables

TEST_F(BtEmulator64, LgdtAndLidtTakeTheTenByteFormInSixtyFourBitMode) {
  mem.poke(0x6000, 0x1ff, 2);
  mem.poke(0x6002, 0xffff800000010000ull);
  s.gpr[rdi] = 0x6000;
  expect_next(run({0x0f, 0x01, 0x1f}), kCode, 3);  // lidt (%rdi): lm64_load_tables
  EXPECT_EQ(s.idtr.base, 0xffff800000010000ull);
  EXPECT_EQ(s.idtr.limit, 0x1ff);
  // RIP-relative: lgdt 0x100(%rip)
  const std::uint64_t at = kCode + 3 + 7 + 0x100;
  mem.poke(at, 0x7f, 2);
  mem.poke(at + 2, 0x4000);
  expect_next(run({0x0f, 0x01, 0x15, 0x00, 0x01, 0x00, 0x00}), kCode + 3, 7);
  EXPECT_EQ(s.gdtr.base, 0x4000u);
  mem.poke(0x6002, 0x0000800000000000ull);
  expect_fault(run({0x0f, 0x01, 0x1f}), Fault::gp(0));  // non-canonical base
  to_user64();
  expect_fault(run({0x0f, 0x01, 0x1f}), Fault::gp(0));
}

TEST_F(BtEmulator64, LgdtInCompatibilityModeTakesSixBytes) {
  to_compat();
  mem.poke(0x6000, 0x1234, 2);
  mem.poke(0x6002, 0xdeadbeefcafef00dull);
  s.gpr[rax] = 0x6000;
  expect_next(run({0x0f, 0x01, 0x10}), 0x2000f0, 3);
  EXPECT_EQ(s.gdtr.base, 0xcafef00du);
  EXPECT_EQ(s.gdtr.limit, 0x1234);
}

TEST_F(BtEmulator64, SgdtStoresTenBytesAndUmipRefusesAtCpl3) {
  s.gpr[rax] = 0x6000;
  s.gdtr = {0xffff800000001000ull, 0x7f};
  expect_next(run({0x0f, 0x01, 0x00}), kCode, 3);
  EXPECT_EQ(mem.peek(0x6000, 2), 0x7fu);
  EXPECT_EQ(mem.peek(0x6002), 0xffff800000001000ull);
  to_user64();
  expect_next(run({0x0f, 0x01, 0x08}), kCode + 3, 3);  // sidt: no UMIP
  s.cr4 |= 1u << 11;
  expect_fault(run({0x0f, 0x01, 0x08}), Fault::gp(0));
}

TEST_F(BtEmulator64, LtrLoadsASixteenByteTssAndMarksItBusy) {
  s.tr = api::Segment{};
  s.gpr[rsi] = kTss;
  expect_next(run({0x0f, 0x00, 0xde}), kCode, 3);  // ltr %si
  EXPECT_EQ(s.tr.base, 0xffffffff00003000ull);
  EXPECT_EQ(s.tr.type, 0xb);
  EXPECT_EQ(s.tr.limit, 0x2067u);
  EXPECT_EQ((mem.peek(kGdt + kTss) >> 40) & 0xf, 0xbu);
  expect_fault(run({0x0f, 0x00, 0xde}), Fault::gp(kTss));  // busy now
  s.gpr[rsi] = 0;
  expect_fault(run({0x0f, 0x00, 0xde}), Fault::gp(0));
  s.gpr[rsi] = kKdata;
  expect_fault(run({0x0f, 0x00, 0xde}), Fault::gp(kKdata));
  s.gpr[rcx] = 0xffff;
  expect_next(run({0x0f, 0x00, 0xc9}), kCode + 3, 3);  // str ecx
  EXPECT_EQ(s.gpr[rcx], kTss);
}

TEST_F(BtEmulator64, LldtLoadsAndNullLeavesItUnusable) {
  s.gpr[rax] = kLdt;
  expect_next(run({0x0f, 0x00, 0xd0}), kCode, 3);
  EXPECT_EQ(s.ldtr.base, 0x5000u);
  EXPECT_FALSE(s.ldtr.unusable);
  s.gpr[rax] = 0;
  expect_next(run({0x0f, 0x00, 0xd0}), kCode + 3, 3);
  EXPECT_TRUE(s.ldtr.unusable);
}

TEST_F(BtEmulator64, LarAndVerw) {
  s.gpr[rcx] = kUdata;
  expect_next(run({0x0f, 0x02, 0xc1}), kCode, 3);  // lar eax, ecx
  EXPECT_EQ(s.gpr[rax], 0x00c0f200u);  // limit 19:16 masked
  EXPECT_TRUE(s.rflags & detail::kZF);
  s.gpr[rcx] = kKcode64;
  expect_next(run({0x0f, 0x00, 0xe9}), kCode + 3, 3);  // verw cx
  EXPECT_FALSE(s.rflags & detail::kZF);
  s.gpr[rcx] = 0x7ff8;  // beyond the GDT: ZF clear, no fault
  expect_next(run({0x0f, 0x03, 0xc1}), kCode + 6, 3);  // lsl
  EXPECT_FALSE(s.rflags & detail::kZF);
}

TEST_F(BtEmulator64, InvlpgPassesTheLinearAddress) {
  s.gpr[rcx] = 0xffff800000123456ull;
  expect_next(run({0x0f, 0x01, 0x39}), kCode, 3);
  ASSERT_EQ(env.invalidated.size(), 1u);
  EXPECT_EQ(env.invalidated[0], 0xffff800000123456ull);
}

// ------------------------------------------------------------------ segment registers

TEST_F(BtEmulator64, MovToSsDsEsAsLm64CallDoes) {
  s.ss = null_stack_segment(0, 0);
  s.gpr[rcx] = kKdata;
  const StepResult r = run({0x8e, 0xd1});  // mov %ecx, %ss
  expect_next(r, kCode, 2);
  EXPECT_TRUE(r.interrupt_shadow);
  EXPECT_EQ(s.ss.selector, kKdata);
  EXPECT_FALSE(s.ss.unusable);
  expect_next(run({0x8e, 0xd9}), kCode + 2, 2);  // ds
  expect_next(run({0x8e, 0xc1}), kCode + 4, 2);  // es
  EXPECT_EQ(s.ds.selector, kKdata);
  EXPECT_EQ(s.es.selector, kKdata);
  s.gpr[rax] = 0;
  expect_next(run({0x8c, 0xd0}), kCode + 6, 2);  // mov %ss, %eax
  EXPECT_EQ(s.gpr[rax], kKdata);
}

TEST_F(BtEmulator64, SegmentLoadChecks) {
  s.gpr[rcx] = 0;
  expect_next(run({0x8e, 0xd1}), kCode, 2);  // null SS at CPL 0 in 64-bit mode
  EXPECT_TRUE(s.ss.unusable);
  s.gpr[rcx] = kDataNotPresent;
  expect_fault(run({0x8e, 0xd9}), Fault::np(kDataNotPresent));
  s.gpr[rcx] = kUdata;
  expect_fault(run({0x8e, 0xd1}), Fault::gp(kUdata & ~3));  // SS with RPL/DPL 3 at CPL 0
  s.gpr[rcx] = kKcode64;
  expect_next(run({0x8e, 0xd9}), kCode + 2, 2);  // readable code into DS
  to_user64();
  s.gpr[rcx] = kKdata;
  expect_fault(run({0x8e, 0xd9}), Fault::gp(kKdata));  // DPL 0 data at CPL 3
  s.gpr[rcx] = 0;
  expect_fault(run({0x8e, 0xd1}), Fault::gp(0));  // null SS at CPL 3
  to_compat();
  s.ss = segment(kKdata);
  expect_fault(run({0x8e, 0xd1}), Fault::gp(0));  // null SS in compatibility mode
}

TEST_F(BtEmulator64, NullFsClearsTheBaseOnIntelAndKeepsItOnAmd) {
  s.fs.base = 0x1234000;
  s.gpr[rax] = 0;
  expect_next(run({0x8e, 0xe0}), kCode, 2);
  EXPECT_EQ(s.fs.base, 0u);
  vendor = Vendor::Amd;
  s.fs.base = 0x1234000;
  expect_next(run({0x8e, 0xe0}), kCode + 2, 2);
  EXPECT_EQ(s.fs.base, 0x1234000u);
  s.gpr[rax] = kData16Base;  // a descriptor's base: 32 bits
  expect_next(run({0x8e, 0xe0}), kCode + 4, 2);
  EXPECT_EQ(s.fs.base, 0x100000u);
}

TEST_F(BtEmulator64, PushFsAndPopGs) {
  s.fs = segment(kKdata);
  expect_next(run({0x0f, 0xa0}), kCode, 2);
  EXPECT_EQ(s.gpr[rsp], 0x7ff8u);
  EXPECT_EQ(mem.peek(0x7ff8), kKdata);
  const StepResult r = run({0x0f, 0xa9});
  expect_next(r, kCode + 2, 2);
  EXPECT_EQ(s.gs.selector, kKdata);
  EXPECT_EQ(s.gpr[rsp], 0x8000u);
  EXPECT_FALSE(r.interrupt_shadow);
}

TEST_F(BtEmulator64, LssLoadsStackAndPointer) {
  mem.poke(0x6000, 0x7000, 4);
  mem.poke(0x6004, kKdata, 2);
  s.gpr[rax] = 0x6000;
  s.ss = null_stack_segment(0, 0);
  const StepResult r = run({0x0f, 0xb2, 0x20});  // lss (%rax), %esp
  expect_next(r, kCode, 3);
  EXPECT_FALSE(r.interrupt_shadow);  // only MOV and POP SS block interrupts
  EXPECT_EQ(s.gpr[rsp], 0x7000u);
  EXPECT_EQ(s.ss.selector, kKdata);
}

// ------------------------------------------------------------------ far transfers

TEST_F(BtEmulator64, Lm64CallFromCompatibilityModeInto64BitCodeAndLretlBack) {
  to_compat();
  s.gpr[rsp] = 0x7ff0;
  // lcall $0x18, $0x200800
  expect_next(run({0x9a, 0x00, 0x08, 0x20, 0x00, 0x18, 0x00}), 0x200800 - 7, 7);
  EXPECT_EQ(s.cs.selector, kKcode64);
  EXPECT_TRUE(s.cs.l);
  EXPECT_EQ(s.gpr[rsp], 0x7fe8u);
  EXPECT_EQ(mem.peek(0x7fe8, 4), 0x2000f7u);  // EIP after the LCALL
  EXPECT_EQ(mem.peek(0x7fec, 4), kKcode32);
  // lretl: 32-bit operand size, back to compatibility mode
  const StepResult r = run({0xcb});
  EXPECT_EQ(r.kind, StepKind::Next) << r.what;
  EXPECT_EQ(s.rip, 0x2000f7u);
  EXPECT_EQ(s.cs.selector, kKcode32);
  EXPECT_FALSE(s.cs.l);
  EXPECT_EQ(s.gpr[rsp], 0x7ff0u);
}

TEST_F(BtEmulator64, IndirectLcallFrom64BitModeIntoCompatibilityMode) {
  // lcall *compat_target(%rip): m16:32
  const std::uint64_t target = kCode + 6 + 0x40;
  mem.poke(target, 0x200100, 4);
  mem.poke(target + 4, kKcode32, 2);
  expect_next(run({0xff, 0x1d, 0x40, 0x00, 0x00, 0x00}), 0x200100 - 6, 6);
  EXPECT_EQ(s.cs.selector, kKcode32);
  EXPECT_EQ(mem.peek(0x7ff8, 4), kCode + 6);
  EXPECT_EQ(mem.peek(0x7ffc, 4), kKcode64);
  // lret (32-bit, in compatibility mode) back to 64-bit code
  const StepResult r = run({0xcb});
  EXPECT_EQ(r.kind, StepKind::Next) << r.what;
  EXPECT_EQ(s.rip, kCode + 6);
  EXPECT_TRUE(s.cs.l);
}

TEST_F(BtEmulator64, LretqToCompatibilityModeAndRetfImmediate) {
  mem.poke(0x8000, 0x200200);
  mem.poke(0x8008, kKcode32);
  expect_next(run({0x48, 0xcb}), 0x200200 - 2, 2);  // lretq (lm64_isr_fatal)
  EXPECT_EQ(s.cs.selector, kKcode32);
  EXPECT_EQ(s.gpr[rsp], 0x8010u);
  s.cs = segment(kKcode64);
  s.gpr[rsp] = 0x8000;
  mem.poke(0x8008, kKcode64);
  mem.poke(0x8000, 0x0000800000000000ull);  // non-canonical return RIP
  expect_fault(run({0x48, 0xca, 0x10, 0x00}), Fault::gp(0));
  EXPECT_EQ(s.gpr[rsp], 0x8000u);
  mem.poke(0x8000, kCode);
  s.rip = 0x500000;
  expect_next(run({0x48, 0xca, 0x10, 0x00}), kCode - 4, 4);
  EXPECT_EQ(s.gpr[rsp], 0x8020u);  // RIP, CS and 16 bytes released
}

TEST_F(BtEmulator64, FarReturnToAnOuterRingPopsSsAndRsp) {
  mem.poke(0x8000, 0x401234);
  mem.poke(0x8008, kUcode64);
  mem.poke(0x8010, 0x5000);
  mem.poke(0x8018, kUdata);
  s.ds = segment(kKdata);
  const StepResult r = run({0x48, 0xcb});
  EXPECT_EQ(r.kind, StepKind::Next) << r.what;
  EXPECT_EQ(s.rip, 0x401234u);
  EXPECT_EQ(s.cs.selector, kUcode64);
  EXPECT_EQ(s.ss.selector, kUdata);
  EXPECT_EQ(s.gpr[rsp], 0x5000u);
  EXPECT_TRUE(s.ds.unusable);  // DPL 0 data is not for CPL 3
}

TEST_F(BtEmulator64, FarJumpChecksAndCallGatesAreNotEmulated) {
  const std::uint64_t ptr = kCode + 7 + 0x20;
  mem.poke(ptr, 0xffffffff81000000ull);
  mem.poke(ptr + 8, kKcode64, 2);
  expect_next(run({0x48, 0xff, 0x2d, 0x20, 0x00, 0x00, 0x00}), 0xffffffff81000000ull - 7, 7);  // ljmp *m16:64
  s.rip = kCode;
  mem.poke(ptr + 8, kUcode64, 2);  // DPL 3 non-conforming from CPL 0
  expect_fault(run({0x48, 0xff, 0x2d, 0x20, 0x00, 0x00, 0x00}), Fault::gp(kUcode64 & ~3));
  mem.poke(ptr + 8, kCallGate, 2);
  const StepResult r = run({0x48, 0xff, 0x2d, 0x20, 0x00, 0x00, 0x00});
  EXPECT_EQ(r.kind, StepKind::Unsupported);
  EXPECT_NE(r.what.find("call gate"), std::string::npos) << r.what;
  mem.poke(ptr + 8, kTss, 2);
  expect_fault(run({0x48, 0xff, 0x2d, 0x20, 0x00, 0x00, 0x00}), Fault::gp(kTss));
  EXPECT_EQ(s.rip, kCode);
}

// ------------------------------------------------------------------ events and system calls

TEST_F(BtEmulator64, IntDeliversWithTheNextRipAsReturnAddress) {
  to_user64();
  s.gpr[rsp] = 0x5008;
  const StepResult r = run({0xcd, 0x80});
  EXPECT_EQ(r.kind, StepKind::Next) << r.what;
  EXPECT_EQ(s.rip, kHandlers + 0x80 * 0x100);
  EXPECT_EQ(s.gpr[rsp], kRsp0 - 40);
  EXPECT_EQ(mem.peek(kRsp0 - 40), kCode + 2);  // the return RIP
  EXPECT_EQ(s.cs.selector, kKcode64);
  // A gate of DPL 0 from CPL 3: #GP(vector*8+2) at the INT
  to_user64();
  s.rip = kCode;
  expect_fault(run({0xcd, 0x40}), Fault::gp(0x40 * 8 + 2));
  EXPECT_EQ(s.rip, kCode);
}

TEST_F(BtEmulator64, Int3AndIntoInCompatibilityMode) {
  expect_next(run({0xcc}), kHandlers + 3 * 0x100 - 1, 1);
  EXPECT_EQ(mem.peek(0x8000 - 40), kCode + 1);  // the frame's RIP slot
  s = kernel64();
  to_compat();
  s.gpr[rsp] = 0x7000;
  expect_next(run({0xce}), 0x2000f0, 1);  // OF clear: nothing
  s.rflags |= detail::kOF;
  const StepResult r = run({0xce});
  EXPECT_EQ(r.kind, StepKind::Next) << r.what;
  EXPECT_EQ(s.rip, kHandlers + 4 * 0x100);
  EXPECT_TRUE(s.cs.l);
}

TEST_F(BtEmulator64, IretqReturnsToUserMode) {
  mem.poke(0x8000, 0x401000);
  mem.poke(0x8008, kUcode64);
  mem.poke(0x8010, 0x202);
  mem.poke(0x8018, 0x5000);
  mem.poke(0x8020, kUdata);
  const StepResult r = run({0x48, 0xcf});
  EXPECT_EQ(r.kind, StepKind::Next) << r.what;
  EXPECT_TRUE(r.iret);
  EXPECT_EQ(s.rip, 0x401000u);
  EXPECT_EQ(s.cs.selector, kUcode64);
  EXPECT_EQ(s.gpr[rsp], 0x5000u);
  to_compat();
  EXPECT_EQ(run({0xcf}).kind, StepKind::Unsupported);
}

TEST_F(BtEmulator64, SyscallSysretAndSwapgs) {
  s.set_msr(kMsrStar, 0x0023001800000000ull);
  s.set_msr(kMsrLstar, 0xffffffff81000000ull);
  s.set_msr(kMsrSfmask, 0x200);
  s.set_msr(kMsrKernelGsBase, 0xffff888000000000ull);
  to_user64();
  expect_next(run({0x0f, 0x05}), 0xffffffff81000000ull - 2, 2);
  EXPECT_EQ(s.gpr[rcx], kCode + 2);
  EXPECT_FALSE(s.rflags & detail::kIF);
  expect_next(run({0x0f, 0x01, 0xf8}), 0xffffffff81000000ull, 3);  // swapgs
  EXPECT_EQ(s.gs.base, 0xffff888000000000ull);
  expect_next(run({0x48, 0x0f, 0x07}), kCode + 2 - 3, 3);  // sysretq
  EXPECT_EQ(s.cs.selector, 0x33u);
  to_user64();
  expect_fault(run({0x0f, 0x01, 0xf8}), Fault::gp(0));  // swapgs at CPL 3
}

// ------------------------------------------------------------------ CPUID, MSRs, TSC, XCR0

TEST_F(BtEmulator64, CpuidZeroExtends) {
  s.gpr[rax] = 0xffffffff00000000ull;
  s.gpr[api::gpr::rbx] = ~0ull;
  expect_next(run({0x0f, 0xa2}), kCode, 2);
  EXPECT_EQ(s.gpr[rax], 0xdu);
  EXPECT_EQ(s.gpr[api::gpr::rbx], 0x756e6547u);
  EXPECT_EQ(s.gpr[rdx], 0x49656e69u);
}

TEST_F(BtEmulator64, WrmsrFsBaseChangesTheHiddenBase) {
  s.gpr[rcx] = 0xc0000100;
  s.gpr[rdx] = 0xffff8880;
  s.gpr[rax] = 0x12345000;
  expect_next(run({0x0f, 0x30}), kCode, 2);
  EXPECT_EQ(s.fs.base, 0xffff888012345000ull);
  s.gpr[rax] = s.gpr[rdx] = 0;
  expect_next(run({0x0f, 0x32}), kCode + 2, 2);
  EXPECT_EQ(s.gpr[rdx], 0xffff8880u);
  EXPECT_EQ(s.gpr[rax], 0x12345000u);
  s.gpr[rcx] = 0xc0000082;  // LSTAR: non-canonical
  s.gpr[rdx] = 0x8000;
  expect_fault(run({0x0f, 0x30}), Fault::gp(0));
  s.gpr[rdx] = 0xffffffff;
  s.gpr[rax] = 0;
  expect_next(run({0x0f, 0x30}), kCode + 4, 2);
  EXPECT_EQ(s.msr(kMsrLstar), 0xffffffff00000000ull);
}

TEST_F(BtEmulator64, EferRules) {
  s.gpr[rcx] = kMsrEfer;
  expect_next(run({0x0f, 0x32}), kCode, 2);
  EXPECT_EQ(s.gpr[rax], 0xd01u);
  s.gpr[rax] = 0x501;  // NXE off; LMA as it is
  expect_next(run({0x0f, 0x30}), kCode + 2, 2);
  EXPECT_EQ(s.efer, 0x501u);
  EXPECT_EQ(env.paging_changes, 1u);
  s.gpr[rax] = 0x101;  // a written LMA is ignored
  expect_next(run({0x0f, 0x30}), kCode + 4, 2);
  EXPECT_EQ(s.efer, 0x501u);
  s.gpr[rax] = 0x401;  // LME off with paging on
  expect_fault(run({0x0f, 0x30}), Fault::gp(0));
  s.gpr[rax] = 0x501 | (1u << 12);  // SVME: reserved here
  expect_fault(run({0x0f, 0x30}), Fault::gp(0));
}

TEST_F(BtEmulator64, OtherMsrsGoToTheEngine) {
  s.gpr[rcx] = 0x1b;
  expect_next(run({0x0f, 0x32}), kCode, 2);
  EXPECT_EQ(s.gpr[rax], 0xfee00900u);
  s.gpr[rcx] = 0x12345;
  expect_fault(run({0x0f, 0x32}), Fault::gp(0));
  expect_fault(run({0x0f, 0x30}), Fault::gp(0));
  to_user64();
  s.gpr[rcx] = 0x1b;
  expect_fault(run({0x0f, 0x32}), Fault::gp(0));
}

TEST_F(BtEmulator64, RdtscAndRdtscpHonourTsd) {
  expect_next(run({0x0f, 0x31}), kCode, 2);
  EXPECT_EQ(s.gpr[rax], 0x55667788u);
  EXPECT_EQ(s.gpr[rdx], 0x11223344u);
  expect_next(run({0x0f, 0x01, 0xf9}), kCode + 2, 3);
  EXPECT_EQ(s.gpr[rcx], 7u);
  to_user64();
  s.cr4 |= 4;
  expect_fault(run({0x0f, 0x31}), Fault::gp(0));
}

TEST_F(BtEmulator64, XsetbvAndXgetbv) {
  expect_fault(run({0x0f, 0x01, 0xd0}), Fault::ud());  // no CR4.OSXSAVE
  s.cr4 |= 1u << 18;
  s.gpr[rcx] = 0;
  s.gpr[rax] = 7;
  s.gpr[rdx] = 0;
  expect_next(run({0x0f, 0x01, 0xd1}), kCode, 3);
  EXPECT_EQ(s.fpu.xcr0, 7u);
  s.gpr[rax] = 5;  // AVX without SSE
  expect_fault(run({0x0f, 0x01, 0xd1}), Fault::gp(0));
  s.gpr[rax] = 0;
  expect_next(run({0x0f, 0x01, 0xd0}), kCode + 3, 3);
  EXPECT_EQ(s.gpr[rax], 7u);
}

TEST_F(BtEmulator64, FsGsBaseInstructionsNeedCr4) {
  s.gpr[rax] = 0x7000;
  expect_fault(run({0xf3, 0x48, 0x0f, 0xae, 0xd0}), Fault::ud());  // wrfsbase rax
  s.cr4 |= 1u << 16;
  expect_next(run({0xf3, 0x48, 0x0f, 0xae, 0xd0}), kCode, 5);
  EXPECT_EQ(s.fs.base, 0x7000u);
}

// ------------------------------------------------------------------ stack forms and faults

TEST_F(BtEmulator64, PopToMemoryAndSixteenBitPush) {
  mem.poke(0x8000, 0xabcdef);
  s.gpr[rax] = 0x6000;
  expect_next(run({0x8f, 0x00}), kCode, 2);  // pop (%rax)
  EXPECT_EQ(mem.peek(0x6000), 0xabcdefu);
  EXPECT_EQ(s.gpr[rsp], 0x8008u);
  expect_next(run({0x66, 0x6a, 0xff}), kCode + 2, 3);  // pushw $-1
  EXPECT_EQ(s.gpr[rsp], 0x8006u);
  EXPECT_EQ(mem.peek(0x8006, 2), 0xffffu);
}

TEST_F(BtEmulator64, PageFaultsReportTheFaultingAddress) {
  to_user64();
  mem.supervisor_only.insert(0x7);
  const StepResult r = run({0x9c});  // pushfq to 0x7ff8
  expect_fault(r, Fault{14, true, 7});
  EXPECT_EQ(r.fault_address, 0x7ff8u);
  EXPECT_EQ(s.gpr[rsp], 0x8000u);
  // A write across a page boundary whose upper page is absent: CR2 is that page.
  mem.supervisor_only.clear();
  mem.not_present.insert(0x8);
  s.gpr[rdi] = 0x7ffe;
  s.gpr[rax] = 0x11223344;
  const StepResult cross = run({0xab});  // stosd
  expect_fault(cross, Fault{14, true, 6});
  EXPECT_EQ(cross.fault_address, 0x8000u);
  EXPECT_EQ(mem.peek(0x7ffe, 2), 0u);  // nothing written
}

}  // namespace
}  // namespace modevisor::bt::bt64
