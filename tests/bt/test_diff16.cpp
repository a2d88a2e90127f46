// Differential tests of 16-bit code: random sequences of 16-bit instructions
// (16-bit addressing that wraps at 64 KiB, 0x66/0x67 operand and address
// sizes, a 16-bit stack, segment overrides, near calls, LOOP/JCXZ counting
// in CX, string instructions) run natively in a 16-bit code segment of a
// 32-bit helper process's LDT (native16_helper.c, modify_ldt) and under the
// translator, both as 16-bit protected-mode code (the same segment bases)
// and in real mode (the same layout at paragraph bases); registers,
// arithmetic flags and the 128 KiB data area must match.  The oracle is
// chosen as for the 32-bit tests (diff_oracle.hpp): this host's CPU, or
// QEMU's qemu-i386, whose programs never read an undefined flag.
#include <gtest/gtest.h>

#include <Zydis/Zydis.h>

#include <array>
#include <csignal>
#include <sys/wait.h>
#include <cstring>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "bt_test_machine.hpp"
#include "bt_test_support.hpp"
#include "diff_oracle.hpp"
#include "encoder_operands.hpp"
#include "undefined_flags.hpp"
#include "vcpu.hpp"

using namespace bttest;
using modevisor::bt::Vcpu;
using modevisor::bt::encode::I;
using modevisor::bt::encode::M;
using modevisor::bt::encode::Op;
using modevisor::bt::encode::R;

namespace {

// The helper's layout (native16_helper.c); the BT runs use the same offsets.
constexpr std::uint32_t kCode = 0x100000, kData = 0x200000, kDataSize = 0x20000;
constexpr std::uint32_t kOut = 0x8000;       // DS offset of the stored registers and EFLAGS
constexpr std::uint16_t kStackTop = 0xf000;  // SP at the start and (balanced) at the end
// Real-mode runs: code at 0x10000 (CS 0x1000), data at 0x20000 (DS = ES = SS
// 0x2000, FS 0x2800, GS 0x3000), the same offsets within the segments.
constexpr std::uint32_t kRealCode = 0x10000, kRealData = 0x20000;
constexpr std::uint32_t kRealFaultMark = 0x5f0;  // real mode: the vector of a limit fault

struct Asm16 {
  std::vector<std::uint8_t> code;
  UndefinedFlags flags{true};
  std::function<std::vector<std::uint8_t>()> define_flags;  // set for an oracle with other undefined flags

  void emit(const std::uint8_t* insn, std::size_t length) {
    if (define_flags && flags.undefined_reads(insn, length)) {
      const auto fix = define_flags();
      code.insert(code.end(), fix.begin(), fix.end());
      flags.apply(fix.data(), fix.size());
    }
    code.insert(code.end(), insn, insn + length);
    flags.apply(insn, length);
  }
  bool ins(ZydisMnemonic m, std::initializer_list<Op> ops, ZyanU64 prefixes = 0) {
    ZydisEncoderRequest req;
    std::memset(&req, 0, sizeof req);
    req.machine_mode = ZYDIS_MACHINE_MODE_LEGACY_16;
    req.mnemonic = m;
    req.prefixes = prefixes;
    req.operand_count = static_cast<ZyanU8>(ops.size());
    int i = 0;
    for (auto& o : ops) req.operands[i++] = o.o;
    std::uint8_t buf[16];
    ZyanUSize len = sizeof buf;
    if (!ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, buf, &len))) return false;
    emit(buf, len);
    return true;
  }
  void bytes(std::initializer_list<std::uint8_t> b) { emit(b.begin(), b.size()); }
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
const ZydisMnemonic kCmov[] = {ZYDIS_MNEMONIC_CMOVB, ZYDIS_MNEMONIC_CMOVBE, ZYDIS_MNEMONIC_CMOVL,
                               ZYDIS_MNEMONIC_CMOVNZ, ZYDIS_MNEMONIC_CMOVO, ZYDIS_MNEMONIC_CMOVS};
const ZydisMnemonic kSet[] = {ZYDIS_MNEMONIC_SETB, ZYDIS_MNEMONIC_SETBE, ZYDIS_MNEMONIC_SETL, ZYDIS_MNEMONIC_SETNZ,
                              ZYDIS_MNEMONIC_SETO, ZYDIS_MNEMONIC_SETP};
const ZydisMnemonic kStr[] = {ZYDIS_MNEMONIC_MOVSB, ZYDIS_MNEMONIC_MOVSW, ZYDIS_MNEMONIC_MOVSD, ZYDIS_MNEMONIC_STOSB,
                              ZYDIS_MNEMONIC_STOSW, ZYDIS_MNEMONIC_LODSB, ZYDIS_MNEMONIC_LODSW, ZYDIS_MNEMONIC_SCASB,
                              ZYDIS_MNEMONIC_SCASW, ZYDIS_MNEMONIC_CMPSB, ZYDIS_MNEMONIC_CMPSW};
const ZyanU64 kSegmentPrefix[] = {0, 0, 0, ZYDIS_ATTRIB_HAS_SEGMENT_ES, ZYDIS_ATTRIB_HAS_SEGMENT_SS,
                                  ZYDIS_ATTRIB_HAS_SEGMENT_DS, ZYDIS_ATTRIB_HAS_SEGMENT_FS,
                                  ZYDIS_ATTRIB_HAS_SEGMENT_GS};

class Gen16 {
 public:
  Gen16(std::uint32_t seed, Asm16& a) : rng_(seed), a_(a) {}
  std::uint32_t u(std::uint32_t lo, std::uint32_t hi) {
    return std::uniform_int_distribution<std::uint32_t>(lo, hi)(rng_);
  }
  template <typename T, std::size_t N>
  T pick(const T (&v)[N]) {
    return v[u(0, N - 1)];
  }
  ZydisRegister reg(unsigned size) { return size == 1 ? pick(kR8) : size == 2 ? pick(kR16) : pick(kR32); }
  std::int64_t imm(unsigned size) {
    std::uint32_t v = u(0, 0xffffffff);
    if (u(0, 2) == 0) v = u(0, 4) - 2;
    if (size == 1) return static_cast<std::int8_t>(v);
    if (size == 2) return static_cast<std::int16_t>(v);
    return static_cast<std::int32_t>(v);
  }

  // A memory operand and its segment prefix: a 16-bit address from random
  // registers (it wraps at 64 KiB, and every offset of every segment lies in
  // the data area), an absolute one, or a 32-bit address from a register
  // first masked below 16 KiB.
  struct Mem {
    Op op;
    ZyanU64 prefix;
  };
  Mem mem(unsigned size) {
    const ZyanU64 prefix = pick(kSegmentPrefix);
    std::int64_t disp = 0;
    switch (u(0, 2)) {
      case 0: break;
      case 1: disp = static_cast<std::int8_t>(u(0, 255)); break;
      default: disp = static_cast<std::int16_t>(u(0, 0xffff)); break;
    }
    switch (u(0, 5)) {
      case 0: {
        const ZydisRegister bases[] = {ZYDIS_REGISTER_BX, ZYDIS_REGISTER_BP};
        const ZydisRegister indexes[] = {ZYDIS_REGISTER_SI, ZYDIS_REGISTER_DI};
        return {M(pick(bases), disp, size, pick(indexes), 1), prefix};
      }
      case 1: {
        const ZydisRegister one[] = {ZYDIS_REGISTER_BX, ZYDIS_REGISTER_BP, ZYDIS_REGISTER_SI, ZYDIS_REGISTER_DI};
        return {M(pick(one), disp, size), prefix};
      }
      case 2:
        return {M(ZYDIS_REGISTER_NONE, u(0, 0xfff0), size), prefix};
      case 3: {  // 32-bit addressing: the register masked first (the AND defines the flags)
        const ZydisRegister r = pick(kR32);
        a_.ins(ZYDIS_MNEMONIC_AND, {R(r), I(0x3fff)});
        return {M(r, u(0, 0x7f), size), prefix};
      }
      default: {
        const ZydisRegister r = pick(kR32), x = pick(kR32);
        a_.ins(ZYDIS_MNEMONIC_AND, {R(r), I(0x1fff)});
        a_.ins(ZYDIS_MNEMONIC_AND, {R(x), I(0x3ff)});
        return {M(r, u(0, 0x7f), size, x, 1u << u(0, 3)), prefix};
      }
    }
  }

  void one() {
    const unsigned size = u(0, 3) == 0 ? 1 : u(0, 2) == 0 ? 4 : 2;
    Asm16& a = a_;
    bool ok = true;
    switch (u(0, 24)) {
      case 0: case 1: case 2: {
        const auto m = pick(kAlu);
        switch (u(0, 4)) {
          case 0: ok = a.ins(m, {R(reg(size)), R(reg(size))}); break;
          case 1: ok = a.ins(m, {R(reg(size)), I(imm(size))}); break;
          case 2: { auto x = mem(size); ok = a.ins(m, {R(reg(size)), x.op}, x.prefix); break; }
          case 3: { auto x = mem(size); ok = a.ins(m, {x.op, R(reg(size))}, x.prefix); break; }
          default: { auto x = mem(size); ok = a.ins(m, {x.op, I(imm(size))}, x.prefix); break; }
        }
        break;
      }
      case 3: ok = a.ins(ZYDIS_MNEMONIC_TEST, {R(reg(size)), u(0, 1) ? R(reg(size)) : I(imm(size))}); break;
      case 4: {
        const ZydisMnemonic m[] = {ZYDIS_MNEMONIC_INC, ZYDIS_MNEMONIC_DEC, ZYDIS_MNEMONIC_NEG, ZYDIS_MNEMONIC_NOT};
        if (u(0, 2)) {
          ok = a.ins(pick(m), {R(reg(size))});
        } else {
          auto x = mem(size);
          ok = a.ins(pick(m), {x.op}, x.prefix);
        }
        break;
      }
      case 5: {
        const auto m = pick(kShift);
        Op count = u(0, 2) == 0 ? R(ZYDIS_REGISTER_CL) : u(0, 1) ? I(u(0, 31)) : I(1);
        if (u(0, 2)) {
          ok = a.ins(m, {R(reg(size)), count});
        } else {
          auto x = mem(size);
          ok = a.ins(m, {x.op, count}, x.prefix);
        }
        break;
      }
      case 6: {
        // A 16-bit SHLD/SHRD by more than 16 leaves result and flags
        // undefined (AMD and Intel and QEMU differ): immediate counts up to 16.
        const unsigned s = u(0, 1) ? 2 : 4;
        const Op count = s == 2 ? I(u(0, 16)) : u(0, 1) ? I(u(0, 31)) : R(ZYDIS_REGISTER_CL);
        ok = a.ins(u(0, 1) ? ZYDIS_MNEMONIC_SHLD : ZYDIS_MNEMONIC_SHRD, {R(reg(s)), R(reg(s)), count});
        break;
      }
      case 7: {
        const unsigned s = u(0, 1) ? 2 : 4;
        switch (u(0, 3)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_IMUL, {R(reg(s)), R(reg(s))}); break;
          case 1: ok = a.ins(ZYDIS_MNEMONIC_IMUL, {R(reg(s)), R(reg(s)), I(imm(s))}); break;
          case 2: ok = a.ins(ZYDIS_MNEMONIC_MUL, {R(reg(size))}); break;
          default: { auto x = mem(s); ok = a.ins(ZYDIS_MNEMONIC_IMUL, {R(reg(s)), x.op}, x.prefix); break; }
        }
        break;
      }
      case 8: {  // division without #DE
        const bool wide = u(0, 1);
        const ZydisRegister d = wide ? ZYDIS_REGISTER_EBX : ZYDIS_REGISTER_BX;
        a.ins(ZYDIS_MNEMONIC_MOV, {R(d), I(u(1, 0x7fff))});
        if (u(0, 1)) {
          a.ins(ZYDIS_MNEMONIC_XOR, {R(wide ? ZYDIS_REGISTER_EDX : ZYDIS_REGISTER_DX),
                                     R(wide ? ZYDIS_REGISTER_EDX : ZYDIS_REGISTER_DX)});
          ok = a.ins(ZYDIS_MNEMONIC_DIV, {R(d)});
        } else {
          a.ins(wide ? ZYDIS_MNEMONIC_CDQ : ZYDIS_MNEMONIC_CWD, {});
          ok = a.ins(ZYDIS_MNEMONIC_IDIV, {R(d)});
        }
        break;
      }
      case 9: {  // LEA: 16- or 32-bit addresses (never dereferenced), 16- or 32-bit results
        const unsigned s = u(0, 1) ? 2 : 4;
        if (u(0, 1)) {
          const ZydisRegister bases[] = {ZYDIS_REGISTER_BX, ZYDIS_REGISTER_BP};
          const ZydisRegister indexes[] = {ZYDIS_REGISTER_SI, ZYDIS_REGISTER_DI};
          ok = a.ins(ZYDIS_MNEMONIC_LEA, {R(reg(s)), M(pick(bases), imm(2), 0, pick(indexes), 1)});
        } else {
          ok = a.ins(ZYDIS_MNEMONIC_LEA, {R(reg(s)), M(pick(kR32), imm(4), 0, pick(kR32), 1u << u(0, 3))});
        }
        break;
      }
      case 10: {
        const auto m = u(0, 1) ? ZYDIS_MNEMONIC_MOVZX : ZYDIS_MNEMONIC_MOVSX;
        const unsigned d = u(0, 1) ? 2 : 4;
        const unsigned s = d == 2 ? 1 : u(0, 1) ? 1 : 2;
        if (u(0, 1)) {
          ok = a.ins(m, {R(reg(d)), R(reg(s))});
        } else {
          auto x = mem(s);
          ok = a.ins(m, {R(reg(d)), x.op}, x.prefix);
        }
        break;
      }
      case 11: {
        const ZydisMnemonic m[] = {ZYDIS_MNEMONIC_BT, ZYDIS_MNEMONIC_BTS, ZYDIS_MNEMONIC_BTR, ZYDIS_MNEMONIC_BTC};
        const unsigned s = u(0, 1) ? 2 : 4;
        if (u(0, 1)) {
          ok = a.ins(pick(m), {R(reg(s)), u(0, 1) ? R(reg(s)) : I(u(0, 31))});
        } else {
          auto x = mem(s);
          ok = a.ins(pick(m), {x.op, I(u(0, 31))}, x.prefix);
        }
        break;
      }
      case 12: {
        const unsigned s = u(0, 1) ? 2 : 4;
        ok = a.ins(u(0, 1) ? ZYDIS_MNEMONIC_BSF : ZYDIS_MNEMONIC_BSR, {R(reg(s)), R(reg(s))});
        break;
      }
      case 13:
        if (u(0, 1)) {
          ok = a.ins(pick(kSet), {R(reg(1))});
        } else {
          auto x = mem(1);
          ok = a.ins(pick(kSet), {x.op}, x.prefix);
        }
        break;
      case 14: {
        const unsigned s = u(0, 1) ? 2 : 4;
        if (u(0, 1)) {
          ok = a.ins(pick(kCmov), {R(reg(s)), R(reg(s))});
        } else {
          auto x = mem(s);
          ok = a.ins(pick(kCmov), {R(reg(s)), x.op}, x.prefix);
        }
        break;
      }
      case 15:
        switch (u(0, 3)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_XCHG, {R(reg(size)), R(reg(size))}); break;
          case 1: { auto x = mem(size); ok = a.ins(ZYDIS_MNEMONIC_XADD, {x.op, R(reg(size))}, x.prefix); break; }
          case 2: { auto x = mem(size); ok = a.ins(ZYDIS_MNEMONIC_CMPXCHG, {x.op, R(reg(size))}, x.prefix); break; }
          default: { auto x = mem(size); ok = a.ins(ZYDIS_MNEMONIC_XCHG, {x.op, R(reg(size))}, x.prefix); break; }
        }
        break;
      case 16: {
        const ZydisMnemonic m[] = {ZYDIS_MNEMONIC_CWDE, ZYDIS_MNEMONIC_CDQ, ZYDIS_MNEMONIC_CBW, ZYDIS_MNEMONIC_CWD,
                                   ZYDIS_MNEMONIC_LAHF, ZYDIS_MNEMONIC_SAHF, ZYDIS_MNEMONIC_CLC,
                                   ZYDIS_MNEMONIC_STC, ZYDIS_MNEMONIC_CMC, ZYDIS_MNEMONIC_CLD, ZYDIS_MNEMONIC_STD};
        ok = a.ins(pick(m), {});
        break;
      }
      case 17: {  // balanced stack traffic on the 16-bit stack, words and dwords
        const unsigned s = u(0, 2) ? 2 : 4;
        switch (u(0, 3)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_PUSH, {R(reg(s))}); break;
          case 1: ok = a.ins(ZYDIS_MNEMONIC_PUSH, {I(imm(s))}, 0); break;
          case 2: { auto x = mem(s); ok = a.ins(ZYDIS_MNEMONIC_PUSH, {x.op}, x.prefix); break; }
          default: ok = a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(2)), R(ZYDIS_REGISTER_SP)}) &&
                        a.ins(ZYDIS_MNEMONIC_PUSH, {R(reg(s))});
            break;
        }
        if (s == 2 && u(0, 1)) {
          a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_BP), R(ZYDIS_REGISTER_SP)});
          a.ins(ZYDIS_MNEMONIC_ADD, {M(ZYDIS_REGISTER_BP, 0, 2), R(reg(2))});
        }
        if (u(0, 1)) {
          ok = ok && a.ins(ZYDIS_MNEMONIC_POP, {R(reg(s))});
        } else {
          auto x = mem(s);
          ok = ok && a.ins(ZYDIS_MNEMONIC_POP, {x.op}, x.prefix);
        }
        break;
      }
      case 18: {  // a string instruction with a small count, SI/DI/CX
        a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_SI), I(static_cast<std::int16_t>(u(0, 0xffff)))});
        a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_DI), I(static_cast<std::int16_t>(u(0, 0xffff)))});
        a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_CX), I(u(0, 9))});
        const auto m = pick(kStr);
        const bool cmp_like = m == ZYDIS_MNEMONIC_SCASB || m == ZYDIS_MNEMONIC_SCASW || m == ZYDIS_MNEMONIC_CMPSB ||
                              m == ZYDIS_MNEMONIC_CMPSW;
        ZyanU64 pre = 0;
        switch (u(0, 3)) {
          case 1: pre = cmp_like ? ZYDIS_ATTRIB_HAS_REPE : ZYDIS_ATTRIB_HAS_REP; break;
          case 2: pre = cmp_like ? ZYDIS_ATTRIB_HAS_REPNE : 0; break;
          default: break;
        }
        ok = a.ins(m, {}, pre) || a.ins(m, {}, 0);
        break;
      }
      case 19: {  // a forward conditional branch over one instruction
        Asm16 skipped;
        skipped.define_flags = a.define_flags;
        skipped.flags = a.flags;
        Gen16 inner(u(0, 0xffffffff), skipped);
        inner.one();
        const std::uint32_t after_skipped = skipped.flags.mask();
        if (skipped.code.size() < 120) {
          a.bytes({static_cast<std::uint8_t>(0x70 | u(0, 15)), static_cast<std::uint8_t>(skipped.code.size())});
          a.code.insert(a.code.end(), skipped.code.begin(), skipped.code.end());
          a.flags.join(after_skipped);
        }
        break;
      }
      case 20:  // a near call to a RET and back (an IP word on the 16-bit stack)
        a.bytes({0xe8, 0x02, 0x00});  // call +2
        a.bytes({0xeb, 0x01});        // jmp over the ret
        a.bytes({0xc3});
        break;
      case 21: {  // LOOP counting in CX (or ECX with 0x67), a short body
        if (u(0, 2)) {
          a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_CX), I(u(1, 5))});
          a.bytes({0x83, 0xc2, 0x03});  // add dx, 3
          const std::uint8_t loops[] = {0xe2, 0xe1, 0xe0};
          a.bytes({pick(loops), 0xfb});
        } else {
          a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ECX), I(u(1, 5))});
          a.bytes({0x83, 0xc2, 0x03});
          a.bytes({0x67, 0xe2, 0xfa});  // loop (ECX) back to the add
        }
        break;
      }
      case 22: {  // JCXZ over one instruction, CX zero or not (ECX's upper half set)
        a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ECX), I(u(0, 1) ? 0x10000 : u(0, 2))});
        a.bytes({0xe3, 0x03});
        a.bytes({0x8d, 0x5f, 0x07});  // lea bx, [bx+7]: no flags (the flag model cannot see a skip)
        break;
      }
      case 23:
        switch (u(0, 3)) {
          case 0: a.bytes({0xc8, 0x08, 0x00, 0x00}); a.bytes({0xc9}); break;  // enter 8, 0; leave
          case 1: a.bytes({0x60}); a.bytes({0x61}); break;                    // pusha; popa
          case 2: a.bytes({0xd7}); break;                                     // xlat
          default: {
            const std::uint8_t bcd[] = {0x27, 0x2f, 0x37, 0x3f};              // daa das aaa aas
            a.bytes({pick(bcd)});
            break;
          }
        }
        break;
      default:
        switch (u(0, 3)) {
          case 0: ok = a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(size)), R(reg(size))}); break;
          case 1: { auto x = mem(size); ok = a.ins(ZYDIS_MNEMONIC_MOV, {R(reg(size)), x.op}, x.prefix); break; }
          case 2: { auto x = mem(size); ok = a.ins(ZYDIS_MNEMONIC_MOV, {x.op, R(reg(size))}, x.prefix); break; }
          default: { auto x = mem(size); ok = a.ins(ZYDIS_MNEMONIC_MOV, {x.op, I(imm(size))}, x.prefix); break; }
        }
        break;
    }
    if (!ok) ++encode_failures;
  }
  int encode_failures = 0;

 private:
  std::mt19937 rng_;
  Asm16& a_;
};

struct Program16 {
  std::vector<std::uint8_t> body;  // prologue, random body, storing epilogue
  std::vector<std::uint8_t> data;
  std::uint32_t undefined_flags_at_end = 0;
};

Program16 make_program16(std::uint32_t seed, int n_insns, bool defined_flags_only) {
  Asm16 a;
  std::mt19937 rng(seed);
  auto r32 = [&] { return static_cast<std::int32_t>(std::uniform_int_distribution<std::uint32_t>()(rng)); };
  if (defined_flags_only) a.define_flags = [] { return std::vector<std::uint8_t>{0x39, 0xd8}; };  // cmp ax, bx
  a.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ESP), I(kStackTop)});
  for (auto r : kR32) a.ins(ZYDIS_MNEMONIC_MOV, {R(r), I(r32())});
  const std::uint32_t flags = static_cast<std::uint32_t>(r32()) & 0x8d5;
  a.bytes({0x66, 0x68, static_cast<std::uint8_t>(flags), static_cast<std::uint8_t>(flags >> 8), 0, 0});  // push dword
  a.bytes({0x66, 0x9d});  // popfd
  Gen16 g(seed ^ 0x5a5a5a5a, a);
  for (int i = 0; i < n_insns; ++i) g.one();
  a.bytes({0xfc});  // cld: the epilogue stores nothing with strings, but keep DF defined
  const ZydisRegister regs[] = {ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
                                ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
  Program16 p;
  p.undefined_flags_at_end = a.flags.mask();
  // The epilogue: registers and EFLAGS to DS:kOut, the EFLAGS slot on the stack cleared.
  a.define_flags = nullptr;
  for (int i = 0; i < 8; ++i) a.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_NONE, kOut + 4 * i, 4), R(regs[i])});
  a.bytes({0x66, 0x9c});                                    // pushfd
  a.ins(ZYDIS_MNEMONIC_POP, {M(ZYDIS_REGISTER_NONE, kOut + 0x20, 4)});
  a.bytes({0x89, 0xe5});                                    // mov bp, sp
  a.bytes({0x66, 0xc7, 0x46, 0xfc, 0, 0, 0, 0});            // mov dword [bp-4], 0
  p.body = a.code;
  p.data.resize(kDataSize);
  for (auto& b : p.data) b = static_cast<std::uint8_t>(rng());
  return p;
}

struct Result16 {
  std::vector<std::uint8_t> data;
  std::string error;
  // The native run took a segment-limit fault (#GP/#SS: SIGSEGV/SIGBUS), an
  // access straddling offset 0xffff that the translator does not check yet.
  bool limit_fault = false;
  // A BT run that took an exception instead of finishing: in real mode the
  // vector (#SS 12 / #GP 13, through IVT stubs); in 16-bit protected mode
  // kNoIdtFault (the empty IDT turns any exception into a triple fault).
  int fault = -1;
  static constexpr int kNoIdtFault = 0xff;
  std::uint32_t reg(int i) const {
    std::uint32_t v;
    std::memcpy(&v, data.data() + kOut + 4 * i, 4);
    return v;
  }
  std::uint32_t flags() const { return reg(8); }
};

Result16 run_native16(const Oracle& oracle, const Program16& p) {
  std::vector<std::uint8_t> code = p.body;
  // Back to the helper: its selectors from CS:0xfff8.., a far jump through CS:0xfff0.
  const std::uint8_t tail[] = {0x2e, 0x8e, 0x1e, 0xf8, 0xff,  // mov ds, cs:[0xfff8]
                               0x2e, 0x8e, 0x06, 0xf8, 0xff,  // mov es, cs:[0xfff8]
                               0x2e, 0x8e, 0x16, 0xf8, 0xff,  // mov ss, cs:[0xfff8]
                               0x2e, 0x8e, 0x26, 0xfa, 0xff,  // mov fs, cs:[0xfffa]
                               0x2e, 0x8e, 0x2e, 0xfc, 0xff,  // mov gs, cs:[0xfffc]
                               0x66, 0x2e, 0xff, 0x2e, 0xf0, 0xff};  // jmp far dword cs:[0xfff0]
  code.insert(code.end(), std::begin(tail), std::end(tail));
  std::vector<std::uint8_t> input(4);
  const std::uint32_t len = static_cast<std::uint32_t>(code.size());
  std::memcpy(input.data(), &len, 4);
  input.insert(input.end(), code.begin(), code.end());
  input.insert(input.end(), p.data.begin(), p.data.end());
  std::vector<std::string> argv = oracle.launcher;
  argv.push_back(BT_NATIVE16_HELPER);
  const ProcessRun run = run_process(argv, input);
  Result16 r;
  if (run.started && WIFEXITED(run.wait_status) && WEXITSTATUS(run.wait_status) == 9) {
    r.limit_fault = true;
    return r;
  }
  if (!run.exited_ok() || run.output.size() != kDataSize) {
    r.error = "the oracle (" + oracle.description + ") failed: " +
              (run.exited_ok() ? "answered " + std::to_string(run.output.size()) + " bytes" : run.describe_failure());
    return r;
  }
  r.data = run.output;
  return r;
}

modevisor::api::Segment segment16(std::uint16_t sel, std::uint32_t base, bool code, unsigned dpl) {
  modevisor::api::Segment s;
  s.selector = sel;
  s.base = base;
  s.limit = 0xffff;
  s.type = code ? 0xb : 0x3;
  s.s = true;
  s.dpl = static_cast<std::uint8_t>(dpl);
  s.present = true;
  s.db = false;
  return s;
}

// `real_mode`: CR0.PE clear, segments at paragraph bases; else 16-bit
// protected mode at CPL 3 with the helper's bases.
Result16 run_bt16(const Program16& p, bool real_mode) {
  Machine m;
  std::vector<std::uint8_t> code = p.body;
  code.insert(code.end(), {0xe6, 0xf4});  // out 0xf4, al
  const std::uint32_t code_at = real_mode ? kRealCode : kCode, data_at = real_mode ? kRealData : kData;
  m.mem.load(code_at, code.data(), code.size());
  m.mem.load(data_at, p.data.data(), p.data.size());
  VcpuState& s = m.state;
  if (real_mode) {
    s.cr0 = 0x10;
    s.cs = segment16(kRealCode >> 4, kRealCode, true, 0);
    s.ds = s.es = s.ss = segment16(kRealData >> 4, kRealData, false, 0);
    s.fs = segment16((kRealData + 0x8000) >> 4, kRealData + 0x8000, false, 0);
    s.gs = segment16((kRealData + 0x10000) >> 4, kRealData + 0x10000, false, 0);
    s.rflags = 0x2;
    // #SS and #GP: stubs at 0x50:0x00 / 0x50:0x10 that store the vector at
    // linear kRealFaultMark and stop the VM.
    for (const std::uint8_t vec : {std::uint8_t{12}, std::uint8_t{13}}) {
      const std::uint16_t off = vec == 12 ? 0x00 : 0x10;
      const std::uint8_t stub[] = {0x2e, 0xc6, 0x06, static_cast<std::uint8_t>(kRealFaultMark - 0x500), 0x00, vec,  // mov byte cs:[mark], vec
                                   0xb0, 0xff, 0xe6, 0xf4};  // mov al, 0xff; out 0xf4, al
      m.mem.load(0x500 + off, stub, sizeof stub);
      const std::uint16_t ivt[2] = {off, 0x50};
      m.mem.load(4u * vec, ivt, sizeof ivt);
    }
  } else {
    s.cs = segment16(0x07, kCode, true, 3);
    s.ds = s.es = s.ss = segment16(0x0f, kData, false, 3);
    s.fs = segment16(0x17, kData + 0x8000, false, 3);
    s.gs = segment16(0x1f, kData + 0x10000, false, 3);
    s.rflags = 0x3002;  // IOPL 3 for the final OUT
  }
  s.rip = 0;
  const RunExit ex = m.run_bounded(std::chrono::milliseconds(5000));
  Result16 r;
  if (real_mode && m.mem.host_base()[kRealFaultMark] != 0) {
    r.fault = m.mem.host_base()[kRealFaultMark];
    return r;
  }
  if (!real_mode && ex.kind == ExitKind::Shutdown) {
    r.fault = Result16::kNoIdtFault;
    return r;
  }
  if (ex.kind != ExitKind::Stopped || m.plat.exit_code < 0) {
    r.error = "BT run did not finish: " + ex.diagnostic;
    return r;
  }
  r.data.assign(m.mem.host_base() + data_at, m.mem.host_base() + data_at + kDataSize);
  return r;
}

std::string disasm16(const std::vector<std::uint8_t>& code) {
  ZydisDecoder d;
  ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LEGACY_16, ZYDIS_STACK_WIDTH_16);
  ZydisFormatter f;
  ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
  std::string out;
  std::size_t off = 0;
  while (off < code.size()) {
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, code.data() + off, code.size() - off, &insn, ops))) break;
    char buf[128];
    ZydisFormatterFormatInstruction(&f, &insn, ops, insn.operand_count_visible, buf, sizeof buf, off, nullptr);
    out += "  " + std::to_string(off) + ": " + buf + "\n";
    off += insn.length;
  }
  return out;
}

// The first difference of two data areas, for the failure message.
std::string first_difference(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    if (a[i] != b[i])
      return "data offset 0x" + [&] { char h[24]; std::snprintf(h, sizeof h, "%zx", i); return std::string(h); }() +
             ": oracle " + std::to_string(a[i]) + ", BT " + std::to_string(b[i]);
  return "sizes differ";
}

}  // namespace

class BtDifferential16 : public ::testing::TestWithParam<int> {};

TEST_P(BtDifferential16, RandomSixteenBitSequencesMatchTheOracle) {
  const OracleChoice& choice = diff_oracle();
  ASSERT_TRUE(choice.found) << choice.error;
  const Oracle& oracle = choice.oracle;
  std::cout << "differential oracle: " << oracle.description << std::endl;
  const int batch = GetParam();
  int compared = 0, limit_faults = 0, qemu_unchecked = 0;
  for (int i = 0; i < 20; ++i) {
    const std::uint32_t seed = static_cast<std::uint32_t>(batch * 1000 + i);
    const Program16 p = make_program16(seed, 40, !oracle.matches_host_undefined_flags);
    const Result16 n = run_native16(oracle, p);
    if (n.limit_fault) {
      // The CPU took a segment-limit fault (every segment's limit is 0xffff
      // in both runs): the translator must raise one too, in both modes.
      for (const bool real_mode : {false, true}) {
        const Result16 b = run_bt16(p, real_mode);
        const bool limit_vector = b.fault == 12 || b.fault == 13 || (!real_mode && b.fault == Result16::kNoIdtFault);
        EXPECT_TRUE(limit_vector) << "seed " << seed << (real_mode ? " (real mode)" : " (16-bit protected mode)")
                                  << ": the CPU faulted on a segment limit, BT " << (b.error.empty() ? "finished" : b.error)
                                  << "\n" << disasm16(p.body);
      }
      ++limit_faults;
      continue;
    }
    ++compared;
    ASSERT_TRUE(n.error.empty()) << "seed " << seed << ": " << n.error << "\n" << disasm16(p.body);
    for (const bool real_mode : {false, true}) {
      const Result16 b = run_bt16(p, real_mode);
      const char* mode = real_mode ? " (real mode)" : " (16-bit protected mode)";
      if (b.fault >= 0 && oracle.kind == OracleKind::QemuUser) {
        // QEMU checks no data segment limits: a program straddling offset
        // 0xffff runs there and faults under BT (as on a CPU).
        ++qemu_unchecked;
        break;
      }
      ASSERT_LT(b.fault, 0) << "seed " << seed << mode << ": BT took an exception the CPU did not\n" << disasm16(p.body);
      ASSERT_TRUE(b.error.empty()) << "seed " << seed << mode << ": " << b.error << "\n" << disasm16(p.body);
      const char* names[] = {"EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"};
      for (int r = 0; r < 8; ++r)
        ASSERT_EQ(n.reg(r), b.reg(r)) << "seed " << seed << mode << " " << names[r] << "\n" << disasm16(p.body);
      const std::uint32_t compared = 0xcd5 & ~p.undefined_flags_at_end;
      ASSERT_EQ(n.flags() & compared, b.flags() & compared) << "seed " << seed << mode << "\n" << disasm16(p.body);
      std::vector<std::uint8_t> nd = n.data, bd = b.data;
      std::memset(nd.data() + kOut + 0x20, 0, 4);  // EFLAGS: compared above (IF/IOPL differ)
      std::memset(bd.data() + kOut + 0x20, 0, 4);
      ASSERT_TRUE(nd == bd) << "seed " << seed << mode << " " << first_difference(nd, bd) << "\n"
                            << disasm16(p.body);
    }
  }
  compared -= qemu_unchecked;
  std::cout << compared << " of 20 programs compared; " << limit_faults
            << " straddled a segment limit on the CPU and faulted under BT too; " << qemu_unchecked
            << " faulted under BT only (the QEMU oracle checks no segment limits)" << std::endl;
  EXPECT_GE(compared + limit_faults, 15);
}

INSTANTIATE_TEST_SUITE_P(Batches, BtDifferential16, ::testing::Range(0, 10));

TEST(BtDifferential16Self, GeneratorProducesEncodableInstructions) {
  Asm16 a;
  Gen16 g(7, a);
  for (int i = 0; i < 2000; ++i) g.one();
  EXPECT_LT(g.encode_failures, 100) << "too many templates fail to encode";
  EXPECT_GT(a.code.size(), 4000u);
}
