// x87/MMX/SSE instructions, as both translators see them: which ones need
// the guest's FPU state loaded in the host FPU, and (BT64) which ones the
// CPU model offers and what CR0/CR4 make them raise instead of run.
#pragma once

#include <Zydis/Zydis.h>

#include <cstdint>
#include <optional>

#include "guest_fault.hpp"

namespace modevisor::bt {

// Instructions of the FPU/SIMD extensions (what CR0.TS/EM trap), AVX included.
inline bool is_fpu_like(const ZydisDecodedInstruction& insn) {
  switch (insn.meta.isa_ext) {
    case ZYDIS_ISA_EXT_X87: case ZYDIS_ISA_EXT_MMX: case ZYDIS_ISA_EXT_SSE: case ZYDIS_ISA_EXT_SSE2:
    case ZYDIS_ISA_EXT_SSE3: case ZYDIS_ISA_EXT_SSSE3: case ZYDIS_ISA_EXT_SSE4: case ZYDIS_ISA_EXT_SSE4A:
    case ZYDIS_ISA_EXT_AMD3DNOW: case ZYDIS_ISA_EXT_AVX: case ZYDIS_ISA_EXT_AVX2:
      return true;
    default:
      return insn.mnemonic == ZYDIS_MNEMONIC_FWAIT || insn.mnemonic == ZYDIS_MNEMONIC_FXSAVE ||
             insn.mnemonic == ZYDIS_MNEMONIC_FXRSTOR || insn.mnemonic == ZYDIS_MNEMONIC_FXSAVE64 ||
             insn.mnemonic == ZYDIS_MNEMONIC_FXRSTOR64;
  }
}

// Whether an operand is an x87/MMX/SSE register (or control/status word,
// MXCSR), or the instruction saves/restores them all.
inline bool touches_fpu_registers(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
  if (insn.mnemonic == ZYDIS_MNEMONIC_FWAIT || insn.mnemonic == ZYDIS_MNEMONIC_FXSAVE ||
      insn.mnemonic == ZYDIS_MNEMONIC_FXRSTOR || insn.mnemonic == ZYDIS_MNEMONIC_FXSAVE64 ||
      insn.mnemonic == ZYDIS_MNEMONIC_FXRSTOR64 || insn.mnemonic == ZYDIS_MNEMONIC_EMMS)
    return true;
  for (unsigned i = 0; i < insn.operand_count; ++i) {
    if (ops[i].type != ZYDIS_OPERAND_TYPE_REGISTER) continue;
    const ZydisRegister r = ops[i].reg.value;
    switch (ZydisRegisterGetClass(r)) {
      case ZYDIS_REGCLASS_X87: case ZYDIS_REGCLASS_MMX: case ZYDIS_REGCLASS_XMM: case ZYDIS_REGCLASS_YMM:
      case ZYDIS_REGCLASS_ZMM:
        return true;
      default: break;
    }
    if (r == ZYDIS_REGISTER_MXCSR || r == ZYDIS_REGISTER_X87CONTROL || r == ZYDIS_REGISTER_X87STATUS ||
        r == ZYDIS_REGISTER_X87TAG)
      return true;
  }
  return false;
}

// Whether the instruction reads or writes x87/MMX/SSE state, i.e. needs the
// guest's FPU state loaded (conservatively: any instruction of those sets).
inline bool uses_fpu_state(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
  switch (insn.meta.isa_ext) {
    case ZYDIS_ISA_EXT_X87: case ZYDIS_ISA_EXT_MMX: case ZYDIS_ISA_EXT_SSE: case ZYDIS_ISA_EXT_SSE2:
    case ZYDIS_ISA_EXT_SSE3: case ZYDIS_ISA_EXT_SSSE3: case ZYDIS_ISA_EXT_SSE4: case ZYDIS_ISA_EXT_SSE4A:
    case ZYDIS_ISA_EXT_AMD3DNOW:
      return true;
    default: return touches_fpu_registers(insn, ops);
  }
}

// BT64's CPU model offers x87, MMX, FXSR, SSE and SSE2 (cpu_identity.cpp:
// leaf 1 EDX), nothing of leaf 1 ECX (no SSE3 and later, no XSAVE, no AVX).
enum class FpuIsa : std::uint8_t {
  None,       // not an FPU/SIMD instruction
  X87,        // x87 (FWAIT too)
  Mmx,        // MMX (EMMS too)
  Sse,        // SSE, SSE2
  Fxsr,       // FXSAVE/FXRSTOR (and their 64-bit forms)
  Unoffered,  // SSE3 and later, 3DNow!, AVX: #UD, as on a CPU without them
};

// SSE/SSE2/MMX instructions that touch no FPU register (PREFETCHh, the
// fences, MOVNTI, CLFLUSH) are None: CR0.TS/EM and CR4.OSFXSR do not stop them.
inline FpuIsa fpu_isa(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
  switch (insn.mnemonic) {
    case ZYDIS_MNEMONIC_FXSAVE: case ZYDIS_MNEMONIC_FXRSTOR: case ZYDIS_MNEMONIC_FXSAVE64:
    case ZYDIS_MNEMONIC_FXRSTOR64:
      return FpuIsa::Fxsr;
    case ZYDIS_MNEMONIC_FWAIT: return FpuIsa::X87;
    case ZYDIS_MNEMONIC_EMMS: return FpuIsa::Mmx;
    default: break;
  }
  if (insn.encoding == ZYDIS_INSTRUCTION_ENCODING_VEX || insn.encoding == ZYDIS_INSTRUCTION_ENCODING_EVEX ||
      insn.encoding == ZYDIS_INSTRUCTION_ENCODING_XOP || insn.encoding == ZYDIS_INSTRUCTION_ENCODING_3DNOW)
    return FpuIsa::Unoffered;
  switch (insn.meta.isa_ext) {
    case ZYDIS_ISA_EXT_X87: return FpuIsa::X87;
    case ZYDIS_ISA_EXT_MMX: return touches_fpu_registers(insn, ops) ? FpuIsa::Mmx : FpuIsa::None;
    case ZYDIS_ISA_EXT_SSE: case ZYDIS_ISA_EXT_SSE2:
      return touches_fpu_registers(insn, ops) ? FpuIsa::Sse : FpuIsa::None;
    case ZYDIS_ISA_EXT_SSE3: case ZYDIS_ISA_EXT_SSSE3: case ZYDIS_ISA_EXT_SSE4: case ZYDIS_ISA_EXT_SSE4A:
    case ZYDIS_ISA_EXT_AMD3DNOW: case ZYDIS_ISA_EXT_AVX: case ZYDIS_ISA_EXT_AVX2: case ZYDIS_ISA_EXT_AES:
    case ZYDIS_ISA_EXT_PCLMULQDQ: case ZYDIS_ISA_EXT_SHA: case ZYDIS_ISA_EXT_F16C: case ZYDIS_ISA_EXT_FMA:
      return FpuIsa::Unoffered;
    default: return FpuIsa::None;
  }
}

// What the guest's CR0 and CR4 let translated code run as it is.
struct FpuGate {
  bool x87 = false;  // x87, MMX, FXSAVE/FXRSTOR: CR0.TS and CR0.EM clear
  bool sse = false;  // SSE/SSE2: that and CR4.OSFXSR
  friend constexpr bool operator==(const FpuGate&, const FpuGate&) = default;
};

inline constexpr std::uint64_t kCr0Mp = 1u << 1, kCr0Em = 1u << 2, kCr0Ts = 1u << 3;
inline constexpr std::uint64_t kCr4OsFxsr = 1u << 9, kCr4OsXmmExcpt = 1u << 10;

inline FpuGate fpu_gate(std::uint64_t cr0, std::uint64_t cr4) {
  FpuGate g;
  g.x87 = !(cr0 & (kCr0Ts | kCr0Em));
  g.sse = g.x87 && (cr4 & kCr4OsFxsr);
  return g;
}

inline bool gate_open(FpuGate g, FpuIsa isa) {
  switch (isa) {
    case FpuIsa::None: return true;
    case FpuIsa::X87: case FpuIsa::Mmx: case FpuIsa::Fxsr: return g.x87;
    case FpuIsa::Sse: return g.sse;
    case FpuIsa::Unoffered: return false;
  }
  return false;
}

// The fault an FPU/SIMD instruction raises instead of running (SDM vol. 3
// table 2-2 "Effect of the MP, EM and TS flags"; vol. 2's #UD rules for
// SSE: CR0.EM or CR4.OSFXSR clear); nullopt: it runs.
inline std::optional<Fault> fpu_fault(FpuIsa isa, bool fwait, std::uint64_t cr0, std::uint64_t cr4) {
  const Fault nm{7, false, 0};
  switch (isa) {
    case FpuIsa::None: return std::nullopt;
    case FpuIsa::X87:
      if (fwait) return (cr0 & kCr0Ts) && (cr0 & kCr0Mp) ? std::optional<Fault>(nm) : std::nullopt;
      if (cr0 & (kCr0Em | kCr0Ts)) return nm;
      return std::nullopt;
    case FpuIsa::Mmx:
      if (cr0 & kCr0Em) return Fault::ud();
      if (cr0 & kCr0Ts) return nm;
      return std::nullopt;
    case FpuIsa::Fxsr:
      if (cr0 & (kCr0Em | kCr0Ts)) return nm;
      return std::nullopt;
    case FpuIsa::Sse:
      if ((cr0 & kCr0Em) || !(cr4 & kCr4OsFxsr)) return Fault::ud();
      if (cr0 & kCr0Ts) return nm;
      return std::nullopt;
    case FpuIsa::Unoffered: return Fault::ud();
  }
  return std::nullopt;
}

}  // namespace modevisor::bt
