// Which arithmetic flags (CF PF AF ZF SF OF) the Intel/AMD manuals leave
// undefined at a point of a generated 32-bit program.  The CPU computes them
// somehow, but QEMU computes them its own way, so a differential test against
// QEMU may only compare defined flags, and its programs must never let an
// undefined flag flow into a register, memory or a branch (e.g. IMUL, then SETZ).
// Per-instruction facts come from Zydis's flag tables; the cases where the
// tables cannot know the operand values (shift counts, REP counts) are made
// conservative here.
#pragma once

#include <Zydis/Zydis.h>

#include <cstdint>
#include <cstddef>

namespace bttest {

class UndefinedFlags {
 public:
  // `code16`: the program is 16-bit code (decoded with a 16-bit default operand and address size).
  explicit UndefinedFlags(bool code16 = false) : code16_(code16) {}
  static constexpr std::uint32_t kArithmetic = ZYDIS_CPUFLAG_CF | ZYDIS_CPUFLAG_PF | ZYDIS_CPUFLAG_AF |
                                               ZYDIS_CPUFLAG_ZF | ZYDIS_CPUFLAG_SF | ZYDIS_CPUFLAG_OF;

  std::uint32_t mask() const { return undefined_; }
  void reset(std::uint32_t mask) { undefined_ = mask & kArithmetic; }
  // Two paths join (a branch over code): undefined if undefined on either.
  void join(std::uint32_t other) { undefined_ |= other & kArithmetic; }

  // The undefined flags the 32-bit instruction at `bytes` reads.
  std::uint32_t undefined_reads(const std::uint8_t* bytes, std::size_t length) const {
    Decoded d;
    if (!decode(bytes, length, d)) return 0;
    return d.insn.cpu_flags->tested & undefined_;
  }

  // After the instruction at `bytes` has run.
  void apply(const std::uint8_t* bytes, std::size_t length) {
    Decoded d;
    if (!decode(bytes, length, d)) return;
    const ZydisAccessedFlags& f = *d.insn.cpu_flags;
    const std::uint32_t written = (f.modified | f.set_0 | f.set_1 | f.undefined) & kArithmetic;
    std::uint32_t now_undefined = f.undefined & kArithmetic;
    bool maybe_no_effect = false;
    if (is_shift_or_rotate(d.insn.mnemonic)) {
      const ZydisDecodedOperand& count = d.ops[d.insn.mnemonic == ZYDIS_MNEMONIC_SHLD ||
                                                       d.insn.mnemonic == ZYDIS_MNEMONIC_SHRD ? 2 : 1];
      const bool known = count.type == ZYDIS_OPERAND_TYPE_IMMEDIATE;
      const unsigned masked = known ? static_cast<unsigned>(count.imm.value.u & 0x1f) : 0;
      if (known && masked == 0) return;  // no flag changes at all
      maybe_no_effect = !known;          // a CL count may be 0 (mod 32)
      // OF: defined for 1-bit shifts only (the tables cannot see the count of C1/D3 forms).
      if (known && masked == 1) now_undefined &= ~ZYDIS_CPUFLAG_OF;
      else now_undefined |= written & ZYDIS_CPUFLAG_OF;
      // SHL/SHR/SAR of 8/16 bits by at least the width: CF undefined.
      const bool plain_shift = d.insn.mnemonic == ZYDIS_MNEMONIC_SHL || d.insn.mnemonic == ZYDIS_MNEMONIC_SHR ||
                               d.insn.mnemonic == ZYDIS_MNEMONIC_SAR;
      if (plain_shift && d.insn.operand_width < 32 && (!known || masked >= d.insn.operand_width))
        now_undefined |= ZYDIS_CPUFLAG_CF;
    }
    // REP CMPS/SCAS with ECX = 0 compare nothing and leave the flags alone.
    if (d.insn.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE))
      maybe_no_effect = true;
    if (maybe_no_effect) undefined_ |= now_undefined;
    else undefined_ = (undefined_ & ~written) | now_undefined;
  }

 private:
  struct Decoded {
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  };
  bool decode(const std::uint8_t* bytes, std::size_t length, Decoded& d) const {
    ZydisDecoder decoder;
    if (code16_) ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_16, ZYDIS_STACK_WIDTH_16);
    else ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
    return ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, bytes, length, &d.insn, d.ops)) && d.insn.cpu_flags;
  }
  static bool is_shift_or_rotate(ZydisMnemonic m) {
    switch (m) {
      case ZYDIS_MNEMONIC_SHL: case ZYDIS_MNEMONIC_SHR: case ZYDIS_MNEMONIC_SAR: case ZYDIS_MNEMONIC_ROL:
      case ZYDIS_MNEMONIC_ROR: case ZYDIS_MNEMONIC_RCL: case ZYDIS_MNEMONIC_RCR: case ZYDIS_MNEMONIC_SHLD:
      case ZYDIS_MNEMONIC_SHRD:
        return true;
      default:
        return false;
    }
  }

  bool code16_ = false;
  std::uint32_t undefined_ = 0;
};

}  // namespace bttest
