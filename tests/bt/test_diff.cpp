// Differential tests: random sequences of user-mode 32-bit instructions run
// in a 32-bit helper process (the oracle) and under the translator;
// registers, arithmetic flags and a scratch buffer must match.
// The oracle (diff_oracle.hpp) is this host's CPU where it runs 32-bit code:
// both sides then run on the same CPU, so even "undefined" flags agree.
// Elsewhere it is QEMU's user-mode emulator, which computes undefined flags
// its own way: its programs never consume an undefined flag (a CMP defines
// them first) and only flags defined at the end are compared.
#include <gtest/gtest.h>

#include <Zydis/Zydis.h>

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

#include "bt_test_support.hpp"
#include "diff_oracle.hpp"
#include "encoder_operands.hpp"
#include "undefined_flags.hpp"
#include "vcpu.hpp"

using namespace bttest;
using modevisor::bt::Vcpu;

namespace {

constexpr std::uint32_t kCode = 0x100000, kScratch = 0x200000, kScratchSize = 0x4000, kOut = 0x210000;
constexpr std::uint32_t kStackTop = 0x2f8000;

using modevisor::bt::encode::I;
using modevisor::bt::encode::M;
using modevisor::bt::encode::Op;
using modevisor::bt::encode::R;

// Keeps a generated program from reading undefined flags: before an
// instruction that would, `define_flags` emits a flag-defining instruction.
struct FlagGuard {
  UndefinedFlags flags;
  std::function<std::vector<std::uint8_t>()> define_flags;

  void emit(std::vector<std::uint8_t>& code, const std::uint8_t* insn, std::size_t length) {
    if (flags.undefined_reads(insn, length)) {
      const auto fix = define_flags();
      code.insert(code.end(), fix.begin(), fix.end());
      flags.apply(fix.data(), fix.size());
    }
    code.insert(code.end(), insn, insn + length);
    flags.apply(insn, length);
  }
};

struct Asm32 {
  std::vector<std::uint8_t> code;
  FlagGuard* guard = nullptr;  // set for programs checked against an oracle other than this CPU
  bool ins(ZydisMnemonic m, std::initializer_list<Op> ops, ZyanU64 prefixes = 0) {
    ZydisEncoderRequest req;
    std::memset(&req, 0, sizeof req);
    req.machine_mode = ZYDIS_MACHINE_MODE_LEGACY_32;
    req.mnemonic = m;
    req.prefixes = prefixes;
    req.operand_count = static_cast<ZyanU8>(ops.size());
    int i = 0;
    for (auto& o : ops) req.operands[i++] = o.o;
    std::uint8_t buf[16];
    ZyanUSize len = sizeof buf;
    if (!ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, buf, &len))) return false;
    if (guard) guard->emit(code, buf, len);
    else code.insert(code.end(), buf, buf + len);
    return true;
  }
  // One whole instruction as raw bytes.
  void bytes(std::initializer_list<std::uint8_t> b) {
    if (guard) guard->emit(code, b.begin(), b.size());
    else code.insert(code.end(), b);
  }
};

const ZydisRegister kR32[] = {ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
                              ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
const ZydisRegister kR16[] = {ZYDIS_REGISTER_AX, ZYDIS_REGISTER_CX, ZYDIS_REGISTER_DX, ZYDIS_REGISTER_BX,
                              ZYDIS_REGISTER_BP, ZYDIS_REGISTER_SI, ZYDIS_REGISTER_DI};
const ZydisRegister kR8[] = {ZYDIS_REGISTER_AL, ZYDIS_REGISTER_CL, ZYDIS_REGISTER_DL, ZYDIS_REGISTER_BL,
                             ZYDIS_REGISTER_AH, ZYDIS_REGISTER_CH, ZYDIS_REGISTER_DH, ZYDIS_REGISTER_BH};
const ZydisMnemonic kAlu[] = {ZYDIS_MNEMONIC_ADD, ZYDIS_MNEMONIC_OR, ZYDIS_MNEMONIC_ADC, ZYDIS_MNEMONIC_SBB,
                              ZYDIS_MNEMONIC_AND, ZYDIS_MNEMONIC_SUB, ZYDIS_MNEMONIC_XOR, ZYDIS_MNEMONIC_CMP};
const ZydisMnemonic kShift[] = {ZYDIS_MNEMONIC_SHL, ZYDIS_MNEMONIC_SHR, ZYDIS_MNEMONIC_SAR, ZYDIS_MNEMONIC_ROL,
                                ZYDIS_MNEMONIC_ROR, ZYDIS_MNEMONIC_RCL, ZYDIS_MNEMONIC_RCR};
const ZydisMnemonic kCmov[] = {ZYDIS_MNEMONIC_CMOVB, ZYDIS_MNEMONIC_CMOVBE, ZYDIS_MNEMONIC_CMOVL, ZYDIS_MNEMONIC_CMOVLE,
                               ZYDIS_MNEMONIC_CMOVNB, ZYDIS_MNEMONIC_CMOVNZ, ZYDIS_MNEMONIC_CMOVO, ZYDIS_MNEMONIC_CMOVS,
                               ZYDIS_MNEMONIC_CMOVP, ZYDIS_MNEMONIC_CMOVZ};
const ZydisMnemonic kSet[] = {ZYDIS_MNEMONIC_SETB, ZYDIS_MNEMONIC_SETBE, ZYDIS_MNEMONIC_SETL, ZYDIS_MNEMONIC_SETLE,
                              ZYDIS_MNEMONIC_SETNB, ZYDIS_MNEMONIC_SETNZ, ZYDIS_MNEMONIC_SETO, ZYDIS_MNEMONIC_SETS,
                              ZYDIS_MNEMONIC_SETP, ZYDIS_MNEMONIC_SETZ};
const ZydisMnemonic kStr[] = {ZYDIS_MNEMONIC_MOVSB, ZYDIS_MNEMONIC_MOVSD, ZYDIS_MNEMONIC_STOSB, ZYDIS_MNEMONIC_STOSW,
                              ZYDIS_MNEMONIC_STOSD, ZYDIS_MNEMONIC_LODSB, ZYDIS_MNEMONIC_LODSD, ZYDIS_MNEMONIC_SCASB,
                              ZYDIS_MNEMONIC_SCASD, ZYDIS_MNEMONIC_CMPSB, ZYDIS_MNEMONIC_CMPSW};

class Gen {
 public:
  // `defined_flags_only`: programs for an oracle whose undefined flags differ
  // from this CPU's (see FlagGuard).
  explicit Gen(std::uint32_t seed, bool defined_flags_only = false) : rng_(seed) {
    if (defined_flags_only) {
      guard_.define_flags = [this] {
        Asm32 cmp;
        cmp.ins(ZYDIS_MNEMONIC_CMP, {R(pick(kR32)), R(pick(kR32))});
        return cmp.code;
      };
    }
  }
  Gen(const Gen&) = delete;  // define_flags points back at this generator
  Gen& operator=(const Gen&) = delete;
  FlagGuard* guard() { return guard_.define_flags ? &guard_ : nullptr; }
  std::uint32_t u(std::uint32_t lo, std::uint32_t hi) { return std::uniform_int_distribution<std::uint32_t>(lo, hi)(rng_); }
  template <typename T, std::size_t N>
  T pick(const T (&a)[N]) { return a[u(0, N - 1)]; }

  ZydisRegister reg(unsigned size) { return size == 1 ? pick(kR8) : size == 2 ? pick(kR16) : pick(kR32); }
  Op mem(unsigned size) {
    if (u(0, 3) == 0) return M(ZYDIS_REGISTER_ESP, u(0, 15) * 4 + u(0, 3) * (u(0, 1)), size);
    return M(ZYDIS_REGISTER_NONE, kScratch + u(0, kScratchSize - 16), size);
  }
  std::int64_t imm(unsigned size) {
    std::uint32_t v = u(0, 0xffffffff);
    if (u(0, 2) == 0) v = u(0, 4) - 2;
    if (size == 1) return static_cast<std::int8_t>(v);
    if (size == 2) return static_cast<std::int16_t>(v);
    return static_cast<std::int32_t>(v);
  }

  void one(Asm32& a) {
    const unsigned size = u(0, 3) == 0 ? 1 : u(0, 4) == 0 ? 2 : 4;
    const ZyanU64 osz = 0;
    bool ok = true;
    switch (u(0, 20)) {
      case 0: case 1: case 2: {  // ALU
        auto m = pick(kAlu);
        switch (u(0, 4)) {
          case 0: ok = a.ins(m, {R(reg(size)), R(reg(size))}); break;
          case 1: ok = a.ins(m, {R(reg(size)), I(imm(size))}); break;
          case 2: ok = a.ins(m, {R(reg(size)), mem(size)}); break;
          case 3: ok = a.ins(m, {mem(size), R(reg(size))}); break;
          default: ok = a.ins(m, {mem(size), I(imm(size))}); break;
        }
        break;
      }
      case 3: ok = a.ins(ZYDIS_MNEMONIC_TEST, {R(reg(size)), u(0, 1) ? R(reg(size)) : I(imm(size))}); break;
      case 4: {
        ZydisMnemonic m[] = {ZYDIS_MNEMONIC_INC, ZYDIS_MNEMONIC_DEC, ZYDIS_MNEMONIC_NEG, ZYDIS_MNEMONIC_NOT};
        ok = a.ins(pick(m), {u(0, 2) ? R(reg(size)) : mem(size)});
        break;
      }
      case 5: {
        auto m = pick(kShift);
        Op dst = u(0, 2) ? R(reg(size)) : mem(size);
        switch (u(0, 2)) {
          case 0: ok = a.ins(m, {dst, I(u(0, 31))}); break;
          case 1: ok = a.ins(m, {dst, R(ZYDIS_REGISTER_CL)}); break;
          default: ok = a.ins(m, {dst, I(1)}); break;
        }
        break;
      }
      case 6: {
        auto m = u(0, 1) ? ZYDIS_MNEMONIC_SHLD : ZYDIS_MNEMONIC_SHRD;
        ok = a.ins(m, {R(reg(4)), R(reg(4)), u(0, 1) ? I(u(0, 31)) : R(ZYDIS_REGISTER_CL)});
        break;
      }
      case 7:
        switch (u(0, 3)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_IMUL, {R(reg(4)), u(0, 1) ? R(reg(4)) : mem(4)}); break;
          case 1: ok = a.ins(ZYDIS_MNEMONIC_IMUL, {R(reg(4)), R(reg(4)), I(imm(4))}); break;
          case 2: ok = a.ins(ZYDIS_MNEMONIC_MUL, {R(reg(4))}); break;
          default: ok = a.ins(ZYDIS_MNEMONIC_IMUL, {R(reg(size == 1 ? 1 : 4))}); break;
        }
        break;
      case 8: {  // division without #DE
        ZydisRegister d = pick(std::array<ZydisRegister, 4>{ZYDIS_REGISTER_EBX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_ESI,
                                                            ZYDIS_REGISTER_EDI}.data() == nullptr ? kR32 : kR32);
        if (d == ZYDIS_REGISTER_EAX || d == ZYDIS_REGISTER_EDX) d = ZYDIS_REGISTER_EBX;
        a.ins(ZYDIS_MNEMONIC_MOV, {R(d), I(u(1, 0x7fff))});
        if (u(0, 1)) {
          a.ins(ZYDIS_MNEMONIC_XOR, {R(ZYDIS_REGISTER_EDX), R(ZYDIS_REGISTER_EDX)});
          ok = a.ins(ZYDIS_MNEMONIC_DIV, {R(d)});
        } else {
          a.ins(ZYDIS_MNEMONIC_CDQ, {});
          ok = a.ins(ZYDIS_MNEMONIC_IDIV, {R(d)});
        }
        break;
      }
      case 9: {
        ZydisRegister idx = pick(kR32);
        ok = a.ins(ZYDIS_MNEMONIC_LEA, {R(reg(4)), M(u(0, 3) ? pick(kR32) : ZYDIS_REGISTER_ESP, imm(4), 4, idx, 1u << u(0, 3))});
        break;
      }
      case 10: {
        auto m = u(0, 1) ? ZYDIS_MNEMONIC_MOVZX : ZYDIS_MNEMONIC_MOVSX;
        unsigned s = u(0, 1) ? 1 : 2;
        ok = a.ins(m, {R(reg(4)), u(0, 1) ? R(reg(s)) : mem(s)});
        break;
      }
      case 11: {
        ZydisMnemonic m[] = {ZYDIS_MNEMONIC_BT, ZYDIS_MNEMONIC_BTS, ZYDIS_MNEMONIC_BTR, ZYDIS_MNEMONIC_BTC};
        switch (u(0, 2)) {
          case 0: ok = a.ins(pick(m), {R(reg(4)), R(reg(4))}); break;
          case 1: ok = a.ins(pick(m), {R(reg(4)), I(u(0, 31))}); break;
          default: ok = a.ins(pick(m), {mem(4), I(u(0, 31))}); break;
        }
        break;
      }
      case 12: ok = a.ins(u(0, 1) ? ZYDIS_MNEMONIC_BSF : ZYDIS_MNEMONIC_BSR, {R(reg(4)), R(reg(4))}); break;
      case 13: ok = a.ins(pick(kSet), {u(0, 2) ? R(reg(1)) : mem(1)}); break;
      case 14: ok = a.ins(pick(kCmov), {R(reg(4)), u(0, 2) ? R(reg(4)) : mem(4)}); break;
      case 15:
        switch (u(0, 4)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_XCHG, {R(reg(size)), R(reg(size))}); break;
          case 1: ok = a.ins(ZYDIS_MNEMONIC_XADD, {u(0, 1) ? R(reg(size)) : mem(size), R(reg(size))}); break;
          case 2: ok = a.ins(ZYDIS_MNEMONIC_CMPXCHG, {u(0, 1) ? R(reg(size)) : mem(size), R(reg(size))}); break;
          case 3: ok = a.ins(ZYDIS_MNEMONIC_BSWAP, {R(reg(4))}); break;
          default: ok = a.ins(ZYDIS_MNEMONIC_XCHG, {mem(4), R(reg(4))}); break;
        }
        break;
      case 16: {
        ZydisMnemonic m[] = {ZYDIS_MNEMONIC_CWDE, ZYDIS_MNEMONIC_CDQ, ZYDIS_MNEMONIC_CBW, ZYDIS_MNEMONIC_CWD,
                             ZYDIS_MNEMONIC_LAHF, ZYDIS_MNEMONIC_SAHF, ZYDIS_MNEMONIC_CLC, ZYDIS_MNEMONIC_STC,
                             ZYDIS_MNEMONIC_CMC, ZYDIS_MNEMONIC_CLD, ZYDIS_MNEMONIC_STD};
        ok = a.ins(pick(m), {});
        break;
      }
      case 17: {  // balanced stack traffic, ESP-relative addressing
        switch (u(0, 2)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_PUSH, {R(pick(kR32))}); break;
          case 1: ok = a.ins(ZYDIS_MNEMONIC_PUSH, {I(imm(4))}); break;
          default: ok = a.ins(ZYDIS_MNEMONIC_PUSH, {mem(4)}); break;
        }
        if (u(0, 1)) a.ins(ZYDIS_MNEMONIC_ADD, {M(ZYDIS_REGISTER_ESP, 0, 4), R(pick(kR32))});
        if (u(0, 1)) ok = ok && a.ins(ZYDIS_MNEMONIC_POP, {R(pick(kR32))});
        else ok = ok && a.ins(ZYDIS_MNEMONIC_POP, {M(ZYDIS_REGISTER_NONE, kScratch + u(0, 0x100) * 4, 4)});
        break;
      }
      case 18: {  // string instruction with a small count
        a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ESI), I(kScratch + 0x1000 + u(0, 0x400))});
        a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_EDI), I(kScratch + 0x2000 + u(0, 0x400))});
        a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ECX), I(u(0, 9))});
        auto m = pick(kStr);
        ZyanU64 pre = 0;
        int r = u(0, 3);
        const bool cmp_like = m == ZYDIS_MNEMONIC_SCASB || m == ZYDIS_MNEMONIC_SCASD || m == ZYDIS_MNEMONIC_CMPSB ||
                              m == ZYDIS_MNEMONIC_CMPSW;
        if (r == 1) pre = cmp_like ? ZYDIS_ATTRIB_HAS_REPE : ZYDIS_ATTRIB_HAS_REP;
        if (r == 2 && cmp_like) pre = ZYDIS_ATTRIB_HAS_REPNE;
        ok = a.ins(m, {}, pre);
        if (!ok) ok = a.ins(m, {}, 0);
        break;
      }
      case 19: {  // forward conditional branch over one instruction
        Asm32 skipped;
        skipped.guard = a.guard;
        const std::uint32_t before = guard_.flags.mask();
        one(skipped);
        const std::uint32_t after_skipped = guard_.flags.mask();
        guard_.flags.reset(before);  // the branch itself runs before the skipped code
        const std::uint8_t cc = static_cast<std::uint8_t>(u(0, 15));
        if (skipped.code.size() < 120) {
          a.bytes({static_cast<std::uint8_t>(0x70 | cc), static_cast<std::uint8_t>(skipped.code.size())});
          a.code.insert(a.code.end(), skipped.code.begin(), skipped.code.end());
          guard_.flags.join(after_skipped);  // taken or not
        }
        break;
      }
      default:
        switch (u(0, 3)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(size)), R(reg(size))}); break;
          case 1: ok = a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(size)), mem(size)}); break;
          case 2: ok = a.ins(ZYDIS_MNEMONIC_MOV, {mem(size), R(reg(size))}); break;
          default: ok = a.ins(ZYDIS_MNEMONIC_MOV, {mem(size), I(imm(size))}); break;
        }
        break;
    }
    (void)osz;
    if (!ok) ++encode_failures;
  }
  int encode_failures = 0;

 private:
  std::mt19937 rng_;
  FlagGuard guard_;
};

struct Program {
  std::vector<std::uint8_t> prologue_body;  // shared by both sides
  std::vector<std::uint8_t> scratch;
  std::uint32_t undefined_flags_at_end = 0;  // only with defined_flags_only
};

Program make_program(std::uint32_t seed, int n_insns, bool defined_flags_only = false) {
  Gen g(seed, defined_flags_only);
  Asm32 a;
  a.guard = g.guard();
  const ZydisRegister regs[] = {ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
                                ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
  a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ESP), I(kStackTop)});
  for (auto r : regs) a.ins(ZYDIS_MNEMONIC_MOV, {R(r), I(static_cast<std::int32_t>(g.u(0, 0xffffffff)))});
  a.ins(ZYDIS_MNEMONIC_PUSH, {I(static_cast<std::int32_t>(g.u(0, 0xffff) & 0x8d5))});
  a.bytes({0x9d});  // popfd
  for (int i = 0; i < n_insns; ++i) g.one(a);
  Program p;
  p.prologue_body = a.code;
  if (a.guard) p.undefined_flags_at_end = a.guard->flags.mask();
  p.scratch.resize(kScratchSize);
  for (auto& b : p.scratch) b = static_cast<std::uint8_t>(g.u(0, 255));
  return p;
}

struct Result {
  std::array<std::uint32_t, 8> regs{};
  std::uint32_t flags = 0;
  std::vector<std::uint8_t> scratch;
  std::string error;
};

Result run_oracle(const Oracle& oracle, const Program& p) {
  Asm32 a;
  a.code = p.prologue_body;
  const ZydisRegister regs[] = {ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
                                ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
  for (int i = 0; i < 8; ++i) a.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, kOut + 4 * i, 4), R(regs[i])});
  a.bytes({0x9c});  // pushfd
  a.ins(ZYDIS_MNEMONIC_POP, {M(ZYDIS_REGISTER_NONE, kOut + 0x20, 4)});
  a.ins(ZYDIS_MNEMONIC_JMP, {M(ZYDIS_REGISTER_NONE, kOut + 0x40, 4)});

  std::vector<std::string> argv = oracle.launcher;
  argv.push_back(BT_NATIVE32_HELPER);
  const ProcessRun run = run_process(argv, helper_input(a.code, p.scratch));
  Result r;
  if (!run.exited_ok() || run.output.size() != kHelperOutputSize) {
    r.error = "the oracle (" + oracle.description + ") failed: " +
              (run.exited_ok() ? "answered " + std::to_string(run.output.size()) + " bytes" : run.describe_failure());
    return r;
  }
  std::memcpy(r.regs.data(), run.output.data(), 32);
  std::memcpy(&r.flags, run.output.data() + 32, 4);
  r.scratch.assign(run.output.begin() + 36, run.output.end());
  return r;
}

// With `paging`, the guest runs with 32-bit paging: code and stack identity
// mapped, the scratch buffer's linear pages backed by other physical pages,
// every PTE starting with A=D=0 (so first writes take the read-only->dirty path).
constexpr std::uint32_t kPagedScratchPa = 0x380000, kPd = 0x3f0000, kPt = 0x3f1000;

Result run_bt(const Program& p, bool paging = false) {
  MemfdMemory mem(4u << 20);
  FakePlatform plat;
  NullLogger log;
  Vcpu cpu(mem, plat, log, 0);
  std::vector<std::uint8_t> code = p.prologue_body;
  code.insert(code.end(), {0xe6, 0xf4});  // out 0xf4, al
  mem.load(kCode, code.data(), code.size());
  const std::uint32_t scratch_pa = paging ? kPagedScratchPa : kScratch;
  mem.load(scratch_pa, p.scratch.data(), p.scratch.size());
  VcpuState s = multiboot_state(kCode);
  if (paging) {
    mem.w32(kPd, kPt | 7);
    for (std::uint32_t i = 0; i < 1024; ++i) {
      std::uint32_t pa = i << 12;
      if (i >= kScratch >> 12 && i < (kScratch + kScratchSize) >> 12) pa = kPagedScratchPa + (pa - kScratch);
      mem.w32(kPt + 4 * i, pa | 7);
    }
    s.cr3 = kPd;
    s.cr0 = 0x80010011;
  }
  s.cs = flat_segment(0x1b, true, 3);  // user mode ...
  s.ss = s.ds = s.es = flat_segment(0x23, false, 3);
  s.rflags = 0x3002;  // ... with IOPL 3 for the final OUT
  cpu.load(s);
  std::atomic<bool> done{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 500 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!done) cpu.kick();
  });
  RunExit ex = cpu.run();
  done = true;
  watchdog.join();
  Result r;
  if (ex.kind != ExitKind::Stopped || plat.exit_code < 0) {
    r.error = "BT run did not finish: " + ex.diagnostic;
    return r;
  }
  VcpuState o = cpu.save();
  for (int i = 0; i < 8; ++i) r.regs[i] = static_cast<std::uint32_t>(o.gpr[i]);
  r.flags = static_cast<std::uint32_t>(o.rflags);
  r.scratch.assign(mem.host_base() + scratch_pa, mem.host_base() + scratch_pa + kScratchSize);
  return r;
}

std::string disasm32(const std::vector<std::uint8_t>& code) {
  ZydisDecoder d;
  ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  ZydisFormatter f;
  ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
  std::string out;
  std::size_t off = 0;
  while (off < code.size()) {
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, code.data() + off, code.size() - off, &insn, ops))) break;
    char buf[128];
    ZydisFormatterFormatInstruction(&f, &insn, ops, insn.operand_count_visible, buf, sizeof buf, kCode + off, nullptr);
    out += "  " + std::string(buf) + "\n";
    off += insn.length;
  }
  return out;
}

}  // namespace

class BtDifferential : public ::testing::TestWithParam<int> {};

// Named for the host CPU, the oracle wherever it runs 32-bit code (the test
// output says which oracle ran).
TEST_P(BtDifferential, RandomSequencesMatchTheHostCpu) {
  const OracleChoice& choice = diff_oracle();
  ASSERT_TRUE(choice.found) << choice.error;
  const Oracle& oracle = choice.oracle;
  std::cout << "differential oracle: " << oracle.description << std::endl;
  RecordProperty("oracle", oracle.kind == OracleKind::HostCpu ? "host-cpu" : "qemu-user");
  const int batch = GetParam();
  for (int i = 0; i < 25; ++i) {
    const std::uint32_t seed = static_cast<std::uint32_t>(batch * 1000 + i);
    Program p = make_program(seed, 40, !oracle.matches_host_undefined_flags);
    Result n = run_oracle(oracle, p);
    ASSERT_TRUE(n.error.empty()) << "seed " << seed << ": " << n.error << "\n" << disasm32(p.prologue_body);
    Result b = run_bt(p, batch >= 8);
    ASSERT_TRUE(b.error.empty()) << "seed " << seed << ": " << b.error << "\n" << disasm32(p.prologue_body);
    const char* names[] = {"EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"};
    for (int r = 0; r < 8; ++r)
      ASSERT_EQ(n.regs[r], b.regs[r]) << "seed " << seed << " " << names[r] << "\n" << disasm32(p.prologue_body);
    const std::uint32_t compared = 0xcd5 & ~p.undefined_flags_at_end;
    ASSERT_EQ(n.flags & compared, b.flags & compared) << "seed " << seed << "\n" << disasm32(p.prologue_body);
    ASSERT_TRUE(n.scratch == b.scratch) << "seed " << seed << " scratch differs\n" << disasm32(p.prologue_body);
  }
}

// Batches 8..11 run the guest with paging on.
INSTANTIATE_TEST_SUITE_P(Batches, BtDifferential, ::testing::Range(0, 12));

TEST(BtDifferentialSelf, GeneratorProducesEncodableInstructions) {
  Gen g(1);
  Asm32 a;
  for (int i = 0; i < 2000; ++i) g.one(a);
  EXPECT_LT(g.encode_failures, 100) << "too many templates fail to encode";
  EXPECT_GT(a.code.size(), 4000u);
}

// ------------------------------------------------------- the flag guard

namespace {

std::vector<ZydisMnemonic> mnemonics(const std::vector<std::uint8_t>& code) {
  ZydisDecoder d;
  ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  std::vector<ZydisMnemonic> out;
  for (std::size_t off = 0; off < code.size();) {
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, code.data() + off, code.size() - off, &insn, ops))) break;
    out.push_back(insn.mnemonic);
    off += insn.length;
  }
  return out;
}

struct GuardedAsm {
  FlagGuard guard;
  Asm32 a;
  GuardedAsm() {
    guard.define_flags = [] { return std::vector<std::uint8_t>{0x39, 0xd8}; };  // cmp eax, ebx
    a.guard = &guard;
  }
};

constexpr std::uint32_t kZf = ZYDIS_CPUFLAG_ZF, kCf = ZYDIS_CPUFLAG_CF, kOf = ZYDIS_CPUFLAG_OF;

}  // namespace

TEST(BtDifferentialSelf, GuardDefinesFlagsBeforeAnInstructionReadsUndefinedOnes) {
  GuardedAsm g;
  g.a.ins(ZYDIS_MNEMONIC_IMUL, {R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_ECX)});
  EXPECT_TRUE(g.guard.flags.mask() & kZf) << "IMUL leaves ZF undefined";
  EXPECT_FALSE(g.guard.flags.mask() & (kCf | kOf)) << "IMUL defines CF and OF";
  g.a.ins(ZYDIS_MNEMONIC_ADC, {R(ZYDIS_REGISTER_EDX), R(ZYDIS_REGISTER_EBX)});  // reads CF: defined
  g.a.ins(ZYDIS_MNEMONIC_BSF, {R(ZYDIS_REGISTER_EDX), R(ZYDIS_REGISTER_EBX)});  // CF undefined from here
  g.a.ins(ZYDIS_MNEMONIC_SETZ, {R(ZYDIS_REGISTER_AL)});                         // ZF: defined by BSF
  g.a.ins(ZYDIS_MNEMONIC_ADC, {R(ZYDIS_REGISTER_EDX), R(ZYDIS_REGISTER_EBX)});  // CF: needs the CMP
  EXPECT_EQ(mnemonics(g.a.code), (std::vector<ZydisMnemonic>{ZYDIS_MNEMONIC_IMUL, ZYDIS_MNEMONIC_ADC,
                                                              ZYDIS_MNEMONIC_BSF, ZYDIS_MNEMONIC_SETZ,
                                                              ZYDIS_MNEMONIC_CMP, ZYDIS_MNEMONIC_ADC}));
  EXPECT_EQ(g.guard.flags.mask(), 0u) << "ADC defines every arithmetic flag";
}

TEST(BtDifferentialSelf, ShiftByClMayChangeNothingSoUndefinedFlagsStayUndefined) {
  GuardedAsm g;
  g.a.ins(ZYDIS_MNEMONIC_MUL, {R(ZYDIS_REGISTER_ECX)});  // SF ZF AF PF undefined
  g.a.ins(ZYDIS_MNEMONIC_SHL, {R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_CL)});
  EXPECT_TRUE(g.guard.flags.mask() & kZf) << "CL may be 0 mod 32: ZF keeps MUL's undefined value";
  EXPECT_TRUE(g.guard.flags.mask() & kOf) << "OF is undefined after multi-bit shifts";
  g.a.ins(ZYDIS_MNEMONIC_SHL, {R(ZYDIS_REGISTER_EAX), I(1)});
  EXPECT_FALSE(g.guard.flags.mask() & (kZf | kOf | kCf)) << "a 1-bit shift defines CF, OF, SF, ZF, PF";
  g.a.ins(ZYDIS_MNEMONIC_SHL, {R(ZYDIS_REGISTER_EAX), I(32)});
  EXPECT_FALSE(g.guard.flags.mask() & kOf) << "a count of 0 mod 32 changes no flag";
}

TEST(BtDifferentialSelf, ProgramsForAnotherOracleNeverReadAnUndefinedFlag) {
  for (std::uint32_t seed = 0; seed < 200; ++seed) {
    const Program p = make_program(seed, 40, true);
    // Replay the straight-line prefix up to the first branch (branches are
    // handled by the generator's join) and find no read of an undefined flag.
    UndefinedFlags flags;
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
    for (std::size_t off = 0; off < p.prologue_body.size();) {
      ZydisDecodedInstruction insn;
      ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
      ASSERT_TRUE(ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, p.prologue_body.data() + off, p.prologue_body.size() - off,
                                                      &insn, ops)));
      if (insn.meta.category == ZYDIS_CATEGORY_COND_BR) break;
      EXPECT_EQ(flags.undefined_reads(p.prologue_body.data() + off, insn.length), 0u)
          << "seed " << seed << " at +" << off << "\n" << disasm32(p.prologue_body);
      flags.apply(p.prologue_body.data() + off, insn.length);
      off += insn.length;
    }
  }
}

// ------------------------------------------------------- oracle choice

namespace {

// A scratch directory with files the oracle choice is tried on.
class OracleScratch {
 public:
  OracleScratch() {
    std::string tmpl = (std::getenv("TMPDIR") ? std::string(std::getenv("TMPDIR")) : "/tmp") + "/bt-oracle-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp");
    dir_ = tmpl;
  }
  ~OracleScratch() { std::filesystem::remove_all(dir_); }
  std::string file(const std::string& name, const std::string& text, bool executable) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << text;
    if (executable) std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    return path;
  }
  // The 32-bit helper with its ELF machine changed to ARM: every kernel
  // refuses it with ENOEXEC, as kernels without IA32 emulation refuse the
  // real helper.
  std::string helper_no_kernel_runs() {
    std::ifstream in(BT_NATIVE32_HELPER, std::ios::binary);
    std::string elf{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    if (elf.size() < 20) throw std::runtime_error("cannot read " + std::string(BT_NATIVE32_HELPER));
    elf[18] = 0x28;  // e_machine = EM_ARM
    elf[19] = 0;
    return file("helper-arm", elf, true);
  }

 private:
  std::string dir_;
};

std::string qemu_i386_in_path() { return oracle_request_from_environment(BT_NATIVE32_HELPER).qemu_i386; }

}  // namespace

TEST(BtDiffOracle, AnUnknownForcedOracleIsAnError) {
  const OracleChoice c = choose_oracle({"qemu", BT_NATIVE32_HELPER, qemu_i386_in_path()});
  EXPECT_FALSE(c.found);
  EXPECT_NE(c.error.find("MODEVISOR_DIFF_ORACLE=qemu is not an oracle"), std::string::npos) << c.error;
}

TEST(BtDiffOracle, NoOracleAtAllIsAnErrorNamingEveryReason) {
  OracleScratch scratch;
  const OracleChoice c = choose_oracle({"", scratch.helper_no_kernel_runs(), ""});
  EXPECT_FALSE(c.found);
  EXPECT_NE(c.error.find("the host CPU cannot run the 32-bit helper"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find("exec: Exec format error"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find("no qemu-i386 in PATH (install Debian's qemu-user"), std::string::npos) << c.error;
}

TEST(BtDiffOracle, ForcedHostCpuThatCannotRunTheHelperIsAnError) {
  OracleScratch scratch;
  const OracleChoice c = choose_oracle({"host-cpu", scratch.helper_no_kernel_runs(), qemu_i386_in_path()});
  EXPECT_FALSE(c.found) << "forcing the host CPU must not fall back to QEMU";
  EXPECT_NE(c.error.find("Exec format error"), std::string::npos) << c.error;
}

TEST(BtDiffOracle, AnEmulatorThatComputesNothingIsNotChosen) {
  OracleScratch scratch;
  const std::string fake = scratch.file("fake-qemu", "#!/bin/sh\ncat >/dev/null\nexit 0\n", true);
  const OracleChoice c = choose_oracle({"qemu-user", BT_NATIVE32_HELPER, fake});
  EXPECT_FALSE(c.found);
  EXPECT_NE(c.error.find(fake + " cannot run the helper: answered 0 bytes"), std::string::npos) << c.error;
}

TEST(BtDiffOracle, WhereTheKernelRunsNo32BitCodeQemuUserIsChosen) {
  const std::string qemu = qemu_i386_in_path();
  ASSERT_FALSE(qemu.empty()) << "no qemu-i386 in PATH (install Debian's qemu-user: scripts/setup.sh)";
  OracleScratch scratch;
  // qemu-i386 given the unrunnable copy runs the real helper instead, so the
  // copy stands for the helper on a kernel without IA32 emulation.
  const std::string launcher =
      scratch.file("qemu-i386", "#!/bin/sh\nexec '" + qemu + "' '" + BT_NATIVE32_HELPER + "'\n", true);
  const OracleChoice c = choose_oracle({"", scratch.helper_no_kernel_runs(), launcher});
  ASSERT_TRUE(c.found) << c.error;
  EXPECT_EQ(c.oracle.kind, OracleKind::QemuUser);
  EXPECT_FALSE(c.oracle.matches_host_undefined_flags);
  EXPECT_NE(c.oracle.description.find("qemu-user: " + launcher), std::string::npos) << c.oracle.description;
  EXPECT_NE(c.oracle.description.find("the host CPU cannot run the 32-bit helper"), std::string::npos)
      << c.oracle.description;
}

TEST(BtDiffOracle, TheChosenOracleAnswersTheProbe) {
  const OracleChoice& c = diff_oracle();
  ASSERT_TRUE(c.found) << c.error;
  std::cout << "differential oracle: " << c.oracle.description << std::endl;
  const std::string forced = std::getenv("MODEVISOR_DIFF_ORACLE") ? std::getenv("MODEVISOR_DIFF_ORACLE") : "";
  if (forced == "qemu-user") {
    EXPECT_EQ(c.oracle.kind, OracleKind::QemuUser);
  } else if (forced == "host-cpu") {
    EXPECT_EQ(c.oracle.kind, OracleKind::HostCpu);
  }
}
