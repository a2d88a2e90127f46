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

}  // namespace
