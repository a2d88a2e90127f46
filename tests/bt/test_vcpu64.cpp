// BT64's vCPU on small long-mode guests: 4-level tables in guest RAM, 64-bit
// code run translated, the monitor's instructions (port I/O) emulated, high
// canonical addresses through their own slot-table ranges, a guest page
// fault delivered through the 64-bit IDT.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "bt64/vcpu64.hpp"
#include "bt_test_support.hpp"

namespace {

using namespace bttest;
using modevisor::bt::CpuidModel;
using modevisor::bt::bt64::Vcpu64;

constexpr std::uint64_t kPml4 = 0x10000, kPdpt = 0x11000, kPd = 0x12000, kPdptHigh = 0x13000;
constexpr std::uint64_t kCode = 0x100000, kStack = 0x80000, kGdt = 0x1000, kIdt = 0x2000;

struct LongModeMachine {
  MemfdMemory mem{16u << 20};
  FakePlatform plat;
  NullLogger log;
  CpuidModel cpuid;
  Vcpu64 cpu{mem, plat, log, 0, cpuid};
  VcpuState state;

  LongModeMachine() {
    // 0-1 GiB identity in 2 MiB pages, and -2 GiB (0xffffffff80000000) onto 0.
    auto w64 = [&](std::uint64_t at, std::uint64_t v) { mem.load(at, &v, 8); };
    w64(kPml4, kPdpt | 0x7);
    w64(kPml4 + 511 * 8, kPdptHigh | 0x7);
    w64(kPdpt, kPd | 0x7);
    w64(kPdptHigh + 510 * 8, kPd | 0x7);
    for (std::uint64_t i = 0; i < 512; ++i) w64(kPd + i * 8, (i << 21) | 0x87);
    // GDT: null, 64-bit code 0x08, data 0x10.
    w64(kGdt + 8, 0x00af9a000000ffffull);
    w64(kGdt + 16, 0x00cf92000000ffffull);
    state.cr0 = 0x80000011;
    state.cr4 = 0x20;
    state.efer = 0x500;  // LME | LMA
    state.cr3 = kPml4;
    state.cs = flat_segment(0x08, true);
    state.cs.l = true;
    state.cs.db = false;
    state.ds = state.es = state.ss = state.fs = state.gs = flat_segment(0x10, false);
    state.gdtr = {kGdt, 23};
    state.idtr = {kIdt, 256 * 16 - 1};
    state.tr.type = 0xb;
    state.tr.present = true;
    state.tr.limit = 0x67;
    state.ldtr.unusable = true;
    state.rip = kCode;
    state.rflags = 2;
    state.gpr[4] = kStack;
  }
  void code(const std::vector<std::uint8_t>& bytes) { mem.load(kCode, bytes.data(), bytes.size()); }
  RunExit run() {
    cpu.load(state);
    return cpu.run();
  }
  std::uint64_t r64(std::uint64_t gpa) const {
    std::uint64_t v;
    std::memcpy(&v, const_cast<MemfdMemory&>(mem).host_base() + gpa, 8);
    return v;
  }
};

// Appends little-endian bytes of v.
void le(std::vector<std::uint8_t>& out, std::uint64_t v, unsigned n) {
  for (unsigned i = 0; i < n; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

TEST(BtVcpu64, RunsSixtyFourBitCodeAndPortIoThroughTheMonitor) {
  LongModeMachine m;
  std::vector<std::uint8_t> c;
  c.insert(c.end(), {0x48, 0xbb});  // movabs rbx, imm64
  le(c, 0x0123456789abcdefull, 8);
  c.insert(c.end(), {0x49, 0x89, 0xdc});        // mov r12, rbx
  c.insert(c.end(), {0x49, 0x83, 0xc4, 0x01});  // add r12, 1
  c.insert(c.end(), {0x41, 0x54});              // push r12
  c.insert(c.end(), {0x41, 0x5d});              // pop r13
  c.insert(c.end(), {0xe8});                    // call f
  const std::size_t call_rel = c.size();
  le(c, 0, 4);
  const std::size_t after_call = c.size();
  // Through the -2 GiB alias of physical 0x100800: its own 4 GiB range.
  c.insert(c.end(), {0x48, 0xb8});  // movabs rax, 0xffffffff80100800
  le(c, 0xffffffff80100800ull, 8);
  c.insert(c.end(), {0x4c, 0x89, 0x28});  // mov [rax], r13
  c.insert(c.end(), {0x48, 0x8d, 0x35});  // lea rsi, [rip + msg]
  const std::size_t msg_rel = c.size();
  le(c, 0, 4);
  const std::size_t after_lea = c.size();
  c.insert(c.end(), {0xb9, 8, 0, 0, 0});         // mov ecx, 8
  c.insert(c.end(), {0x66, 0xba, 0xf8, 0x03});   // mov dx, 0x3f8
  const std::size_t loop = c.size();
  c.insert(c.end(), {0x8a, 0x06});               // mov al, [rsi]
  c.insert(c.end(), {0xee});                     // out dx, al
  c.insert(c.end(), {0x48, 0xff, 0xc6});         // inc rsi
  c.insert(c.end(), {0xff, 0xc9});               // dec ecx
  c.insert(c.end(), {0x75, static_cast<std::uint8_t>(loop - (c.size() + 2))});  // jnz loop
  c.insert(c.end(), {0xe6, 0xf4});               // out 0xf4, al: exit
  const std::size_t f = c.size();
  c.insert(c.end(), {0x48, 0xc7, 0xc7, 42, 0, 0, 0});  // mov rdi, 42
  c.insert(c.end(), {0xc3});                           // ret
  const std::size_t msg = c.size();
  for (char ch : std::string("hello64\n")) c.push_back(static_cast<std::uint8_t>(ch));
  const auto rel = [&](std::size_t field, std::size_t next, std::size_t target) {
    const auto v = static_cast<std::int32_t>(static_cast<std::int64_t>(target) - static_cast<std::int64_t>(next));
    std::memcpy(&c[field], &v, 4);
  };
  rel(call_rel, after_call, f);
  rel(msg_rel, after_lea, msg);
  m.code(c);

  const RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(m.plat.serial, "hello64\n");
  const VcpuState s = m.cpu.save();
  EXPECT_EQ(s.gpr[13], 0x0123456789abcdf0ull);
  EXPECT_EQ(s.gpr[12], 0x0123456789abcdf0ull);
  EXPECT_EQ(s.gpr[7], 42u);
  EXPECT_EQ(s.gpr[4], kStack);
  EXPECT_EQ(m.r64(0x100800), 0x0123456789abcdf0ull);
  EXPECT_GT(m.cpu.counters().monitor_steps, 8u);  // the OUTs
  EXPECT_GE(m.cpu.counters().table_misses, 1u);   // the -2 GiB range, mapped on first use
}

TEST(BtVcpu64, AGuestPageFaultGoesThroughTheSixtyFourBitIdt) {
  LongModeMachine m;
  // #PF handler at kCode + 0x800: out CR2's low byte... (CR2 via mov rax, cr2), then exit.
  std::vector<std::uint8_t> c;
  c.insert(c.end(), {0x48, 0xb8});  // movabs rax, 0x0000008000000000 (PML4[1]: not present)
  le(c, 0x0000008000000000ull, 8);
  c.insert(c.end(), {0x48, 0x8b, 0x18});  // mov rbx, [rax]
  c.resize(0x800, 0x90);
  c.insert(c.end(), {0x0f, 0x20, 0xd0});  // mov rax, cr2
  c.insert(c.end(), {0x5b});              // pop rbx: the error code
  c.insert(c.end(), {0xe6, 0xf4});        // exit
  m.code(c);
  const std::uint64_t handler = kCode + 0x800;
  const std::uint64_t gate_lo = (handler & 0xffff) | (0x08ull << 16) | (0x8eull << 40) | ((handler >> 16 & 0xffff) << 48);
  const std::uint64_t gate_hi = handler >> 32;
  m.mem.load(kIdt + 14 * 16, &gate_lo, 8);
  m.mem.load(kIdt + 14 * 16 + 8, &gate_hi, 8);
  const RunExit r = m.run();
  EXPECT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const VcpuState s = m.cpu.save();
  EXPECT_EQ(s.gpr[0], 0x0000008000000000ull);  // CR2
  EXPECT_EQ(s.gpr[3], 0u);                      // error code: not present, read, supervisor
  EXPECT_EQ(s.cr2, 0x0000008000000000ull);
  // The frame: SS, RSP, RFLAGS, CS, RIP pushed below the old RSP (aligned to 16).
  EXPECT_EQ(s.gpr[4], kStack - 40);
  EXPECT_EQ(m.r64(kStack - 40), kCode + 10);  // RIP of the faulting MOV
}

// An interrupt gate for `vector` to `handler` (64-bit code segment 0x08).
void set_gate(LongModeMachine& m, unsigned vector, std::uint64_t handler) {
  const std::uint64_t lo = (handler & 0xffff) | (0x08ull << 16) | (0x8eull << 40) | ((handler >> 16 & 0xffff) << 48);
  const std::uint64_t hi = handler >> 32;
  m.mem.load(kIdt + vector * 16, &lo, 8);
  m.mem.load(kIdt + vector * 16 + 8, &hi, 8);
}

constexpr std::uint64_t kData = 0x200000;  // a page apart from the code
constexpr std::uint64_t kCr4Pae = 0x20, kCr4OsFxsr = 0x200;

// The guest's x87/SSE state is its own in translated code: loaded lazily,
// saved at the monitor's exits (port I/O here) and loaded again, with the
// guest's MXCSR; the host's MXCSR is untouched by the run.
TEST(BtVcpu64, TranslatedSseAndX87KeepTheGuestsStateAcrossMonitorExits) {
  LongModeMachine m;
  m.state.cr4 = kCr4Pae | kCr4OsFxsr;
  const std::uint32_t lanes[4] = {1, 2, 3, 4};
  const std::uint32_t mxcsr = 0x7f80;  // round toward zero, all masked
  m.mem.load(kData + 32, lanes, sizeof lanes);
  m.mem.load(kData + 48, &mxcsr, 4);
  std::vector<std::uint8_t> c = {0x48, 0xbb};  // movabs rbx, kData
  le(c, kData, 8);
  c.insert(c.end(), {0x0f, 0xae, 0x53, 0x30});        // ldmxcsr [rbx+48]
  c.insert(c.end(), {0xf3, 0x0f, 0x6f, 0x43, 0x20});  // movdqu xmm0, [rbx+32]
  c.insert(c.end(), {0x66, 0x0f, 0xfe, 0xc0});        // paddd xmm0, xmm0
  c.insert(c.end(), {0xd9, 0xe8});                    // fld1
  c.insert(c.end(), {0x66, 0xba, 0xf8, 0x03});        // mov dx, 0x3f8
  c.insert(c.end(), {0xb0, 'A'});                     // mov al, 'A'
  c.insert(c.end(), {0xee});                          // out dx, al: the monitor's
  c.insert(c.end(), {0x66, 0x0f, 0xfe, 0xc0});        // paddd xmm0, xmm0
  c.insert(c.end(), {0xd8, 0xc0});                    // fadd st0, st0
  c.insert(c.end(), {0xf3, 0x0f, 0x7f, 0x03});        // movdqu [rbx], xmm0
  c.insert(c.end(), {0xdb, 0x5b, 0x10});              // fistp dword [rbx+16]
  c.insert(c.end(), {0xe6, 0xf4});                    // exit
  m.code(c);
  const unsigned host_mxcsr = __builtin_ia32_stmxcsr();
  const RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  EXPECT_EQ(m.plat.serial, "A");
  std::uint32_t out[5];
  std::memcpy(out, m.mem.host_base() + kData, sizeof out);
  EXPECT_EQ(out[0], 4u);
  EXPECT_EQ(out[1], 8u);
  EXPECT_EQ(out[2], 12u);
  EXPECT_EQ(out[3], 16u);
  EXPECT_EQ(out[4], 2u);  // 1.0 + 1.0
  const VcpuState s = m.cpu.save();
  std::uint32_t saved_mxcsr, xmm0[4];
  std::memcpy(&saved_mxcsr, s.fpu.fxsave.data() + 24, 4);
  std::memcpy(xmm0, s.fpu.fxsave.data() + 160, 16);
  EXPECT_EQ(saved_mxcsr, mxcsr);
  EXPECT_EQ(xmm0[3], 16u);
  EXPECT_EQ(__builtin_ia32_stmxcsr(), host_mxcsr);
}

// CLI (at CPL 0) and PUSHFQ run in translated code against the context's
// IF: the pushed images show IF before and after, with the arithmetic flags
// and IOPL, and the state saved afterwards has IF clear.
TEST(BtVcpu64, CliAndPushfqInTranslatedCodeKeepTheGuestsIf) {
  LongModeMachine m;
  m.state.rflags = 0x3202;  // IF, IOPL 3
  std::vector<std::uint8_t> c = {
      0x31, 0xc9,        // xor ecx, ecx: ZF PF set
      0x9c, 0x58,        // pushfq; pop rax
      0xfa,              // cli
      0x83, 0xf9, 0x01,  // cmp ecx, 1: CF SF AF set
      0x9c, 0x5b,        // pushfq; pop rbx
      0xe6, 0xf4,        // exit
  };
  m.code(c);
  const RunExit r = m.run();
  ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
  const VcpuState s = m.cpu.save();
  EXPECT_EQ(s.gpr[0], 0x3202u | 0x44u);          // IF IOPL | ZF PF
  EXPECT_EQ(s.gpr[3], 0x3002u | 0x95u);          // IOPL | CF PF AF SF, IF clear
  EXPECT_EQ(s.rflags & 0x200, 0u);
  EXPECT_EQ(s.gpr[4], kStack);
  EXPECT_LT(m.cpu.counters().monitor_steps, 2u);  // the exit only
}

// REP MOVS/STOS through the monitor's page-at-a-time path: what element-by-
// element semantics give, overlapping moves included, and a fault in the
// middle leaves RCX/RDI at the faulting element.
std::vector<std::uint8_t> rep_program(std::uint64_t rsi, std::uint64_t rdi, std::uint32_t rcx, std::uint64_t rax,
                                      std::vector<std::uint8_t> insn) {
  std::vector<std::uint8_t> c = {0x48, 0xbe};  // movabs rsi
  le(c, rsi, 8);
  c.insert(c.end(), {0x48, 0xbf});  // movabs rdi
  le(c, rdi, 8);
  c.push_back(0xb9);  // mov ecx
  le(c, rcx, 4);
  c.insert(c.end(), {0x48, 0xb8});  // movabs rax
  le(c, rax, 8);
  c.insert(c.end(), insn.begin(), insn.end());
  c.insert(c.end(), {0xe6, 0xf4});  // exit
  return c;
}

TEST(BtVcpu64, RepMovsAndStosInBulkGiveTheElementsResults) {
  {  // 10000 bytes between unaligned addresses, across pages
    LongModeMachine m;
    std::vector<std::uint8_t> src(10000);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::uint8_t>(i * 7 + 3);
    m.mem.load(0x200005, src.data(), src.size());
    m.code(rep_program(0x200005, 0x300123, 10000, 0, {0xf3, 0xa4}));  // rep movsb
    ASSERT_EQ(m.run().kind, ExitKind::Stopped);
    EXPECT_EQ(std::memcmp(m.mem.host_base() + 0x300123, src.data(), src.size()), 0);
    const VcpuState s = m.cpu.save();
    EXPECT_EQ(s.gpr[1], 0u);
    EXPECT_EQ(s.gpr[6], 0x200005u + 10000);
    EXPECT_EQ(s.gpr[7], 0x300123u + 10000);
  }
  {  // overlapping forward move: the first byte repeated
    LongModeMachine m;
    const std::uint8_t ab[2] = {'a', 'b'};
    m.mem.load(0x210000, ab, 2);
    m.code(rep_program(0x210000, 0x210001, 50, 0, {0xf3, 0xa4}));
    ASSERT_EQ(m.run().kind, ExitKind::Stopped);
    for (unsigned i = 0; i <= 50; ++i) EXPECT_EQ(m.mem.host_base()[0x210000 + i], 'a') << i;
  }
  {  // rep stosq of 1000 quadwords
    LongModeMachine m;
    m.code(rep_program(0, 0x220008, 1000, 0x1122334455667788ull, {0xf3, 0x48, 0xab}));
    ASSERT_EQ(m.run().kind, ExitKind::Stopped);
    for (unsigned i = 0; i < 1000; ++i) ASSERT_EQ(m.r64(0x220008 + 8 * i), 0x1122334455667788ull) << i;
    EXPECT_EQ(m.r64(0x220008 + 8 * 1000), 0u);
  }
  {  // rep stosb running into an unmapped page (16 MiB: its PD entry cleared)
    LongModeMachine m;
    const std::uint64_t none = 0;
    m.mem.load(kPd + 8 * 8, &none, 8);
    constexpr std::uint64_t kHole = 0x1000000;
    std::vector<std::uint8_t> c = rep_program(0, kHole - 100, 300, 0x5a, {0xf3, 0xaa});
    c.resize(0x800, 0x90);
    c.insert(c.end(), {0xe6, 0xf4});  // #PF handler: exit
    m.code(c);
    set_gate(m, 14, kCode + 0x800);
    ASSERT_EQ(m.run().kind, ExitKind::Stopped);
    const VcpuState s = m.cpu.save();
    EXPECT_EQ(s.cr2, kHole);
    EXPECT_EQ(s.gpr[7], kHole);  // RDI at the faulting element
    EXPECT_EQ(s.gpr[1], 200u);   // RCX: 100 elements done
    EXPECT_EQ(m.mem.host_base()[kHole - 1], 0x5a);
    EXPECT_EQ(m.mem.host_base()[kHole - 100], 0x5a);
    EXPECT_EQ(m.mem.host_base()[kHole - 101], 0);
  }
}

// What CR0.TS and CR4.OSFXSR say about an SSE instruction: #NM, #UD.
TEST(BtVcpu64, SseRaisesNmUnderCr0TsAndUdWithoutCr4Osfxsr) {
  struct Case { std::uint64_t cr0, cr4; std::uint32_t vector; } cases[] = {
      {0x80000011 | 0x8, kCr4Pae | kCr4OsFxsr, 7},  // TS: #NM
      {0x80000011, kCr4Pae, 6},                      // no OSFXSR: #UD
      {0x80000011 | 0x8, kCr4Pae, 6},                // both: #UD first
  };
  for (const auto& k : cases) {
    LongModeMachine m;
    m.state.cr0 = k.cr0;
    m.state.cr4 = k.cr4;
    std::vector<std::uint8_t> c = {0x48, 0xbb};  // movabs rbx, kData
    le(c, kData, 8);
    c.insert(c.end(), {0xf3, 0x0f, 0x6f, 0x03});  // movdqu xmm0, [rbx]
    c.resize(0x800, 0x90);
    c.insert(c.end(), {0xb9, 7, 0, 0, 0, 0xe6, 0xf4});  // #NM: mov ecx, 7; exit
    c.resize(0x900, 0x90);
    c.insert(c.end(), {0xb9, 6, 0, 0, 0, 0xe6, 0xf4});  // #UD: mov ecx, 6; exit
    m.code(c);
    set_gate(m, 7, kCode + 0x800);
    set_gate(m, 6, kCode + 0x900);
    const RunExit r = m.run();
    ASSERT_EQ(r.kind, ExitKind::Stopped) << r.diagnostic;
    const VcpuState s = m.cpu.save();
    EXPECT_EQ(s.gpr[1], k.vector) << "cr0 " << std::hex << k.cr0 << " cr4 " << k.cr4;
    EXPECT_EQ(m.r64(kStack - 40), kCode + 10);  // at the SSE instruction
  }
}

}  // namespace
