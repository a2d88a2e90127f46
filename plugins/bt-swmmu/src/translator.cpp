#include "translator.hpp"

#include "emitter.hpp"
#include "fpu_instructions.hpp"
#include "sensitive_instructions.hpp"
#include "encoder_operands.hpp"

#include <sys/mman.h>

#include <cstddef>
#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <stdexcept>

namespace modevisor::bt {

namespace {

constexpr std::int32_t kOffNextEip = offsetof(Context, next_eip);
constexpr std::int32_t kOffPatch = offsetof(Context, patch_site);
constexpr std::int32_t kOffReason = offsetof(Context, exit_reason);
constexpr std::int32_t kOffFast = offsetof(Context, fast_table);
constexpr std::int32_t kOffHits = offsetof(Context, indirect_hits);

using encode::I;
using encode::M;
using encode::Op;
using encode::R;

// mov [r15+off], imm32 (dword) / qword sign-extended
void store_ctx32(Emitter& e, std::int32_t off, std::uint32_t v) {
  e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, off, 4), I(static_cast<std::int32_t>(v))});
}
void store_ctx64(Emitter& e, std::int32_t off, std::int32_t v) {
  e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, off, 8), I(v)});
}

// Byte 1 of Context::sysflags (TF IF . . IOPL NT .) with IF cleared / set:
// inline CLI/STI look the new byte up.
constexpr std::array<std::uint8_t, 256> if_byte_table(bool set) {
  std::array<std::uint8_t, 256> t{};
  for (unsigned i = 0; i < 256; ++i) t[i] = static_cast<std::uint8_t>(set ? (i | 2) : (i & ~2u));
  return t;
}
constexpr std::array<std::uint8_t, 256> kIfClearedByte = if_byte_table(false);
constexpr std::array<std::uint8_t, 256> kIfSetByte = if_byte_table(true);

// Where guest ESP lives in host code: r14d, or a borrowed register (swaps).
thread_local ZydisRegister t_esp32 = ZYDIS_REGISTER_R14D;
thread_local ZydisRegister t_esp16 = ZYDIS_REGISTER_R14W;
// Set while translating an MMIO access: memory operands go to this host address.
thread_local const void* t_redirect = nullptr;

// The segmented flavour (kTKeySegmented) of the block being translated.
struct SegmentedFlavour {
  bool on = false;
  bool code16 = false;   // CS.D = 0
  bool stack16 = false;  // SS.B = 0: SP wraps at 64 KiB
  bool a16 = false;      // the current instruction's address size is 16
  bool limits = false;   // kTKeyLimits: check each access against its segment's window
};
thread_local SegmentedFlavour t_seg;

ZydisRegister rename(ZydisRegister r) {
  switch (r) {
    case ZYDIS_REGISTER_ESP: return t_esp32;
    case ZYDIS_REGISTER_SP: return t_esp16;
    default: return r;
  }
}

// String instructions, by category: Zydis names SSE2's scalar-double MOVSD
// and CMPSD (F2 0F 10/11, F2 0F C2) like the string MOVSD/CMPSD, and those
// must be translated as SSE instructions, not emulated as string moves.
bool is_string_op(const ZydisDecodedInstruction& insn) { return insn.meta.category == ZYDIS_CATEGORY_STRINGOP; }

// The rules every flavour shares: sensitive, privileged-in-effect or
// 64-bit-invalid instructions, segment/control/debug registers, implicit
// memory operands.  nullopt: what the operands and branches say decides.
std::optional<InsnClass> classify_common(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                                         TKey tkey);

// Segmented code: 16-bit addresses and near branches with a 16-bit operand
// size are translated (the address formed in r13d, targets masked to 16
// bits); stack operations use SS's base and width.
InsnClass classify_segmented(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, TKey tkey) {
  switch (insn.mnemonic) {
    case ZYDIS_MNEMONIC_JMP:
    case ZYDIS_MNEMONIC_CALL:
    case ZYDIS_MNEMONIC_RET:
      if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return InsnClass::Special;
      return InsnClass::ControlFlow;
    case ZYDIS_MNEMONIC_JB: case ZYDIS_MNEMONIC_JBE: case ZYDIS_MNEMONIC_JL: case ZYDIS_MNEMONIC_JLE:
    case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JNBE: case ZYDIS_MNEMONIC_JNL: case ZYDIS_MNEMONIC_JNLE:
    case ZYDIS_MNEMONIC_JNO: case ZYDIS_MNEMONIC_JNP: case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JNZ:
    case ZYDIS_MNEMONIC_JO: case ZYDIS_MNEMONIC_JP: case ZYDIS_MNEMONIC_JS: case ZYDIS_MNEMONIC_JZ:
    case ZYDIS_MNEMONIC_JCXZ: case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE:
    case ZYDIS_MNEMONIC_LOOPNE:
      return InsnClass::ControlFlow;
    case ZYDIS_MNEMONIC_PUSH:
    case ZYDIS_MNEMONIC_POP:
      if (ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetClass(ops[0].reg.value) == ZYDIS_REGCLASS_SEGMENT)
        return InsnClass::Special;
      return InsnClass::Stack;
    case ZYDIS_MNEMONIC_LEAVE:
      return InsnClass::Stack;
    case ZYDIS_MNEMONIC_BT: case ZYDIS_MNEMONIC_BTS: case ZYDIS_MNEMONIC_BTR: case ZYDIS_MNEMONIC_BTC:
      // A register bit offset reaches words beyond the operand: under
      // segment limits the monitor checks the word it touches.
      if ((tkey & kTKeyLimits) && ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER)
        return InsnClass::Special;
      break;
    default:
      break;
  }
  if (auto c = classify_common(insn, ops, tkey)) return *c;
  return InsnClass::Plain;
}

}  // namespace

InsnClass classify(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, TKey tkey) {
  if (tkey & kTKeySegmented) return classify_segmented(insn, ops, tkey);
  // 0x67: matters only where an address or eCX count is formed (not for an
  // operand the monitor redirects to its stage, whose address it formed).
  if (insn.address_width != 32 && !t_redirect) {
    if (insn.mnemonic == ZYDIS_MNEMONIC_JCXZ || insn.mnemonic == ZYDIS_MNEMONIC_JECXZ ||
        insn.mnemonic == ZYDIS_MNEMONIC_LOOP || insn.mnemonic == ZYDIS_MNEMONIC_LOOPE ||
        insn.mnemonic == ZYDIS_MNEMONIC_LOOPNE)
      return InsnClass::Special;
    for (unsigned i = 0; i < insn.operand_count; ++i)
      if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY) return InsnClass::Special;  // incl. LEA: 16-bit result
  }
  switch (insn.mnemonic) {
    // A 16-bit operand size (0x66) makes a branch truncate EIP to 16 bits
    // (and push/pop IP words): the monitor's.
    case ZYDIS_MNEMONIC_JMP:
    case ZYDIS_MNEMONIC_CALL:
      if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return InsnClass::Special;
      return insn.operand_width == 16 ? InsnClass::Special : InsnClass::ControlFlow;
    case ZYDIS_MNEMONIC_RET:
      if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return InsnClass::Special;  // retf
      return insn.operand_width == 16 ? InsnClass::Special : InsnClass::ControlFlow;
    case ZYDIS_MNEMONIC_JB: case ZYDIS_MNEMONIC_JBE: case ZYDIS_MNEMONIC_JL: case ZYDIS_MNEMONIC_JLE:
    case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JNBE: case ZYDIS_MNEMONIC_JNL: case ZYDIS_MNEMONIC_JNLE:
    case ZYDIS_MNEMONIC_JNO: case ZYDIS_MNEMONIC_JNP: case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JNZ:
    case ZYDIS_MNEMONIC_JO: case ZYDIS_MNEMONIC_JP: case ZYDIS_MNEMONIC_JS: case ZYDIS_MNEMONIC_JZ:
      return insn.operand_width == 16 ? InsnClass::Special : InsnClass::ControlFlow;
    case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE: case ZYDIS_MNEMONIC_LOOPNE:
      return insn.operand_width == 16 ? InsnClass::Special : InsnClass::ControlFlow;
    case ZYDIS_MNEMONIC_PUSH:
    case ZYDIS_MNEMONIC_POP:
      if (ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetClass(ops[0].reg.value) == ZYDIS_REGCLASS_SEGMENT)
        return InsnClass::Special;
      return InsnClass::Stack;
    case ZYDIS_MNEMONIC_LEAVE:
      return InsnClass::Stack;
    case ZYDIS_MNEMONIC_BT: case ZYDIS_MNEMONIC_BTS: case ZYDIS_MNEMONIC_BTR: case ZYDIS_MNEMONIC_BTC:
      // A register bit offset reaches words beyond the operand: under
      // segment limits the monitor checks the word it touches.
      if ((tkey & kTKeyLimits) && ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER)
        return InsnClass::Special;
      break;
    default:
      break;
  }
  if (auto c = classify_common(insn, ops, tkey)) return *c;
  return InsnClass::Plain;
}

namespace {

std::optional<InsnClass> classify_common(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                                         TKey tkey) {
  if (insn.attributes & ZYDIS_ATTRIB_IS_PRIVILEGED) return InsnClass::Special;
  // VEX/EVEX/XOP: not in the guest's CPUID (no AVX; XSAVE state is not kept).
  if (insn.encoding != ZYDIS_INSTRUCTION_ENCODING_LEGACY && insn.encoding != ZYDIS_INSTRUCTION_ENCODING_3DNOW)
    return InsnClass::Special;
  if ((tkey & kTKeyFpuTrap) && is_fpu_like(insn)) return InsnClass::Special;
  if (monitor_emulates(insn.mnemonic)) return InsnClass::Special;
  if (is_string_op(insn)) return InsnClass::Special;
  // Anything touching segment, control or debug registers, or an implicit memory operand.
  for (unsigned i = 0; i < insn.operand_count; ++i) {
    const auto& o = ops[i];
    if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
      auto c = ZydisRegisterGetClass(o.reg.value);
      if (c == ZYDIS_REGCLASS_SEGMENT || c == ZYDIS_REGCLASS_CONTROL || c == ZYDIS_REGCLASS_DEBUG ||
          c == ZYDIS_REGCLASS_TEST)
        return InsnClass::Special;
      if (o.reg.value == ZYDIS_REGISTER_EIP || o.reg.value == ZYDIS_REGISTER_IP) return InsnClass::Special;
      if ((o.reg.value == ZYDIS_REGISTER_ESP || o.reg.value == ZYDIS_REGISTER_SP) &&
          o.visibility == ZYDIS_OPERAND_VISIBILITY_HIDDEN)
        return InsnClass::Special;
    }
    if (o.type == ZYDIS_OPERAND_TYPE_MEMORY && o.visibility != ZYDIS_OPERAND_VISIBILITY_EXPLICIT)
      return InsnClass::Special;
    if (o.type == ZYDIS_OPERAND_TYPE_POINTER) return InsnClass::Special;
  }
  return std::nullopt;
}


// The 32-bit register of a 16-bit address register (BX -> EBX, ...): the low
// 16 bits of a 32-bit sum are the 16-bit sum, so a 16-bit address is the
// 32-bit LEA's result zero-extended from 16 bits.
ZydisRegister widen16(ZydisRegister r) {
  if (r == ZYDIS_REGISTER_NONE || ZydisRegisterGetClass(r) != ZYDIS_REGCLASS_GPR16) return r;
  return static_cast<ZydisRegister>(ZYDIS_REGISTER_EAX + (r - ZYDIS_REGISTER_AX));
}

// Segmented flavour: r13d = the operand's offset, formed with the
// instruction's address size (16-bit: wraps at 64 KiB).  No flags change.
bool segmented_offset(Emitter& e, const ZydisDecodedOperand& op, std::int64_t extra_disp) {
  ZydisRegister base = rename(t_seg.a16 ? widen16(op.mem.base) : op.mem.base);
  ZydisRegister index = rename(t_seg.a16 ? widen16(op.mem.index) : op.mem.index);
  std::int64_t disp = (op.mem.disp.has_displacement ? op.mem.disp.value : 0) + extra_disp;
  disp = static_cast<std::int32_t>(static_cast<std::uint32_t>(disp));
  if (base == ZYDIS_REGISTER_NONE && index == ZYDIS_REGISTER_NONE) {
    const std::uint32_t offset = static_cast<std::uint32_t>(disp) & (t_seg.a16 ? 0xffffu : 0xffffffffu);
    return e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13D), I(static_cast<std::int32_t>(offset))});
  }
  if (!e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R13D), M(base, disp, 0, index, op.mem.scale)}, false, true))
    return false;
  return !t_seg.a16 || e.ins(ZYDIS_MNEMONIC_MOVZX, {R(ZYDIS_REGISTER_R13D), R(ZYDIS_REGISTER_R13W)});
}

// FS/GS (`s` 4, 5): r13 += Context::null_fs_gs_bias, which makes the host
// address non-canonical while the register is null (#GP(0) at the access).
// r9 scratch, no flags.
bool add_null_segment_bias(Emitter& e, int s) {
  if (s < 4) return true;
  return e.ins(ZYDIS_MNEMONIC_MOV,
               {R(ZYDIS_REGISTER_R9), M(ZYDIS_REGISTER_R15, offsetof(Context, null_fs_gs_bias) + 8 * (s - 4), 8)}) &&
         e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R13), M(ZYDIS_REGISTER_R13, 0, 0, ZYDIS_REGISTER_R9, 1)});
}

// r13d += the base of segment register `sreg` (read from the context at run
// time, so segment loads need no retranslation); r9 scratch, no flags.
bool add_segment_base(Emitter& e, ZydisRegister sreg) {
  const int s = sreg - ZYDIS_REGISTER_ES;  // ES CS SS DS FS GS, as Context::seg_base
  if (s < 0 || s > 5) return false;
  return e.ins(ZYDIS_MNEMONIC_MOV,
               {R(ZYDIS_REGISTER_R9D), M(ZYDIS_REGISTER_R15, offsetof(Context, seg_base) + 8 * s, 4)}) &&
         e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R13D), M(ZYDIS_REGISTER_R13, 0, 0, ZYDIS_REGISTER_R9, 1)}) &&
         add_null_segment_bias(e, s);
}

// Limits flavour: r13d = the offset of a `size`-byte access through segment
// register `sreg` (0-5, ES..GS).  When the segment's window (Context::
// seg_window) refuses it, leave by a load from the limit-trap page at the
// fault's vector: #SS(0) for SS, else #GP(0).  The test keeps the guest's
// flags: offset - first and end - size - offset are formed with LEA, spilled,
// and their sign bytes summed into RCX for a JRCXZ (r8/r10 scratch).
// The window at Context offset `win`, for the zero-extended offset in `at`
// (r13 or r11); `vector` is the fault a refusal raises.
bool check_window_at(Emitter& e, std::int32_t win, ZydisRegister at, unsigned size, std::uint8_t vector) {
  constexpr std::int32_t kSpill = offsetof(Context, limit_scratch);
  const std::int32_t rest = 1 - static_cast<std::int32_t>(size == 0 ? 1 : size);
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10), M(ZYDIS_REGISTER_R15, win, 8)});
  e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R10), M(at, 0, 0, ZYDIS_REGISTER_R10, 1)});
  e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, kSpill, 8), R(ZYDIS_REGISTER_R10)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10), R(at)});
  e.ins(ZYDIS_MNEMONIC_NOT, {R(ZYDIS_REGISTER_R10)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R8), M(ZYDIS_REGISTER_R15, win + 8, 8)});
  e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R10), M(ZYDIS_REGISTER_R10, rest, 0, ZYDIS_REGISTER_R8, 1)});
  e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, kSpill + 8, 8), R(ZYDIS_REGISTER_R10)});
  e.ins(ZYDIS_MNEMONIC_MOVZX, {R(ZYDIS_REGISTER_R10D), M(ZYDIS_REGISTER_R15, kSpill + 7, 1)});
  e.ins(ZYDIS_MNEMONIC_MOVZX, {R(ZYDIS_REGISTER_R8D), M(ZYDIS_REGISTER_R15, kSpill + 15, 1)});
  e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R10), M(ZYDIS_REGISTER_R10, 0, 0, ZYDIS_REGISTER_R8, 1)});
  e.ins(ZYDIS_MNEMONIC_XCHG, {R(ZYDIS_REGISTER_R10), R(ZYDIS_REGISTER_RCX)});
  e.b(0xe3);  // jrcxz inside
  std::uint8_t* rel = e.pos();
  e.b(0);
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R10)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10D), M(ZYDIS_REGISTER_R15, kLimitTrapOffset + vector, 4)});
  *rel = static_cast<std::uint8_t>(e.pos() - (rel + 1));
  return e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R10)});
}

bool check_window(Emitter& e, int sreg, unsigned size, bool write) {
  if (!t_seg.limits) return true;
  const std::int32_t win =
      static_cast<std::int32_t>(offsetof(Context, seg_window) + sizeof(OffsetWindow) * (write ? 6 + sreg : sreg));
  return check_window_at(e, win, ZYDIS_REGISTER_R13, size, limit_fault_vector(sreg));
}

// Limits flavour: a near branch's target (zero-extended in `at`) beyond CS's
// limit raises #GP(0) at the branch, before it pushes or pops anything.
bool check_branch_target(Emitter& e, ZydisRegister at) {
  if (!t_seg.limits) return true;
  return check_window_at(e, offsetof(Context, code_window), at, 1, 13);
}

// A host operand [r12 + offset + disp] of `size` bytes: guest linear address
// offset + disp in the active region (offset: a zero-extended 64-bit register
// or none).
void region_operand(ZydisEncoderOperand* out, unsigned size, ZydisRegister offset, std::int64_t disp) {
  out->type = ZYDIS_OPERAND_TYPE_MEMORY;
  out->mem.size = static_cast<ZyanU16>(size);
  out->mem.base = kRegionBase;
  out->mem.index = offset;
  out->mem.scale = offset == ZYDIS_REGISTER_NONE ? 0 : 1;
  out->mem.displacement = disp;
}

// Segmented flavour: the operand becomes [r12 + r13], r13d = segment base +
// offset, its window checked first.
bool segmented_mem(Emitter& e, const ZydisDecodedOperand& op, ZydisEncoderOperand* out, std::int64_t extra_disp) {
  const int sreg = op.mem.segment - ZYDIS_REGISTER_ES;
  if (!segmented_offset(e, op, extra_disp) ||
      !check_window(e, sreg, op.size / 8, (op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) ||
      !add_segment_base(e, op.mem.segment))
    return false;
  region_operand(out, op.size / 8, ZYDIS_REGISTER_R13, 0);
  return e.ok();
}

// A displacement at or above this below zero goes straight into the host
// operand [r12 + base + disp]: its 32-bit sum with the base wraps only for a
// base that small (a guard catches it).  Larger negative ones (a 32-bit
// kernel's addresses >= 2 GiB as [reg + 0xc0000000]) wrap routinely and are
// summed by an LEA, which wraps as the guest does.
constexpr std::int64_t kDirectDispFloor = -65536;

// Rewrite a guest memory operand into a host one addressing the active
// region, [r12 + 32-bit offset].  A base register with a displacement is
// used directly (a wrapping sum lands in a guard: the monitor emulates that
// instruction); an index or a large negative displacement is summed by an
// LEA into r13d first.  FS/GS-relative guest accesses add the guest segment
// base at run time (r9/r13 scratch); DS/ES/SS/CS are flat in the flat
// flavour (the segmented one adds every base: segmented_mem).
bool host_mem(Emitter& e, const ZydisDecodedOperand& op, ZydisEncoderOperand* out, std::int64_t extra_disp = 0) {
  ZydisRegister base = rename(op.mem.base);
  ZydisRegister index = rename(op.mem.index);
  std::int64_t disp = (op.mem.disp.has_displacement ? op.mem.disp.value : 0) + extra_disp;
  disp = static_cast<std::int32_t>(static_cast<std::uint32_t>(disp));
  out->type = ZYDIS_OPERAND_TYPE_MEMORY;
  out->mem.size = static_cast<ZyanU16>(op.size / 8);
  if (t_redirect) {
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13), I(static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(t_redirect)))});
    out->mem.base = ZYDIS_REGISTER_R13;  // 64-bit host address: no GS, no 0x67
    out->mem.index = ZYDIS_REGISTER_NONE;
    out->mem.scale = 0;
    out->mem.displacement = 0;
    return e.ok();
  }
  if (t_seg.on) return segmented_mem(e, op, out, extra_disp);
  const unsigned size = op.size / 8;
  const bool fs_gs = op.mem.segment == ZYDIS_REGISTER_FS || op.mem.segment == ZYDIS_REGISTER_GS;
  if (!fs_gs && index == ZYDIS_REGISTER_NONE) {
    if (base == ZYDIS_REGISTER_NONE && disp >= 0) {  // an absolute address below 2 GiB
      region_operand(out, size, ZYDIS_REGISTER_NONE, disp);
      return true;
    }
    if (base != ZYDIS_REGISTER_NONE && disp >= kDirectDispFloor) {
      region_operand(out, size, ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, base), disp);
      return true;
    }
  }
  if (base == ZYDIS_REGISTER_NONE && index == ZYDIS_REGISTER_NONE) {
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13D), I(static_cast<std::int32_t>(disp))});
  } else {
    e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R13D), M(base, disp, 0, index, op.mem.scale)}, false, true);
  }
  if (fs_gs) {
    const int seg = op.mem.segment == ZYDIS_REGISTER_FS ? 4 : 5;
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R9D), M(ZYDIS_REGISTER_R15, offsetof(Context, seg_base) + 8 * seg, 4)});
    e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R13D), M(ZYDIS_REGISTER_R13, 0, 0, ZYDIS_REGISTER_R9, 1)});
    add_null_segment_bias(e, seg);
  }
  region_operand(out, size, ZYDIS_REGISTER_R13, 0);
  return e.ok();
}

bool insn_uses(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, ZydisRegister c) {
  auto big = [&](ZydisRegister r) {
    return r != ZYDIS_REGISTER_NONE && ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LEGACY_32, r) == c;
  };
  for (unsigned i = 0; i < insn.operand_count; ++i) {
    const auto& o = ops[i];
    if (o.type == ZYDIS_OPERAND_TYPE_REGISTER && big(o.reg.value)) return true;
    if (o.type == ZYDIS_OPERAND_TYPE_MEMORY && (big(o.mem.base) || big(o.mem.index))) return true;
  }
  return false;
}

const ZydisRegister kBorrow32[3] = {ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
const ZydisRegister kBorrow16[3] = {ZYDIS_REGISTER_BP, ZYDIS_REGISTER_SI, ZYDIS_REGISTER_DI};
const ZydisRegister kBorrow64[3] = {ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI};
const unsigned kBorrowIdx[3] = {5, 6, 7};

// Re-encode a plain guest instruction for 64-bit mode.
bool reencode(Emitter& e, const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
              std::vector<Block::Swap>* swaps = nullptr) {
  if (t_seg.on && insn.mnemonic == ZYDIS_MNEMONIC_LEA && !t_redirect) {
    // The offset alone (no segment base), with the address size's wrap,
    // truncated to the operand size.
    if (ops[0].type != ZYDIS_OPERAND_TYPE_REGISTER || !segmented_offset(e, ops[1], 0)) return false;
    const ZydisRegister dest = rename(ops[0].reg.value);
    return e.ins(ZYDIS_MNEMONIC_MOV, {R(dest), R(ops[0].size == 16 ? ZYDIS_REGISTER_R13W : ZYDIS_REGISTER_R13D)});
  }
  ZydisEncoderRequest req;
  if (!ZYAN_SUCCESS(ZydisEncoderDecodedInstructionToEncoderRequest(&insn, ops, insn.operand_count_visible, &req)))
    return false;
  req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
  req.address_size_hint = ZYDIS_ADDRESS_SIZE_HINT_NONE;
  req.prefixes &= ~(ZYDIS_ATTRIB_HAS_SEGMENT | ZYDIS_ATTRIB_HAS_SEGMENT_CS | ZYDIS_ATTRIB_HAS_SEGMENT_SS |
                    ZYDIS_ATTRIB_HAS_SEGMENT_DS | ZYDIS_ATTRIB_HAS_SEGMENT_ES | ZYDIS_ATTRIB_HAS_SEGMENT_FS |
                    ZYDIS_ATTRIB_HAS_SEGMENT_GS | ZYDIS_ATTRIB_HAS_ADDRESSSIZE);
  for (unsigned i = 0; i < req.operand_count; ++i) {
    auto& o = req.operands[i];
    if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
      o.reg.value = rename(o.reg.value);
    } else if (o.type == ZYDIS_OPERAND_TYPE_MEMORY) {
      if (insn.mnemonic == ZYDIS_MNEMONIC_LEA) {
        o.mem.base = rename(o.mem.base);
        o.mem.index = rename(o.mem.index);
        req.address_size_hint = ZYDIS_ADDRESS_SIZE_HINT_32;
        continue;
      }
      // Find the decoded operand for this memory operand (same position).
      if (!host_mem(e, ops[i], &o)) return false;
    }
  }
  std::uint8_t* before = e.pos();
  if (e.raw(req)) return true;
  if (!e.enc_failed() || !swaps) return false;
  // A memory operand needs REX (r12, r13, r14), which AH..BH cannot have:
  // the host address goes into a borrowed legacy register (its guest value
  // in r11 meanwhile).
  int mi = -1;
  for (unsigned i = 0; i < req.operand_count; ++i)
    if (req.operands[i].type == ZYDIS_OPERAND_TYPE_MEMORY) mi = static_cast<int>(i);
  if (mi < 0) return false;
  for (int c = 0; c < 3; ++c) {
    if (insn_uses(insn, ops, kBorrow32[c])) continue;
    e.reset_to(before);
    ZydisEncoderOperand address = req.operands[mi];
    address.mem.size = 0;
    Op address_op;
    address_op.o = address;
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R11), R(kBorrow64[c])});
    e.ins(ZYDIS_MNEMONIC_LEA, {R(kBorrow64[c]), address_op});
    const std::uint32_t begin = e.off();
    req.operands[mi].mem.base = kBorrow64[c];
    req.operands[mi].mem.index = ZYDIS_REGISTER_NONE;
    req.operands[mi].mem.scale = 0;
    req.operands[mi].mem.displacement = 0;
    if (!e.raw(req)) return false;
    const std::uint32_t end = e.off();
    e.ins(ZYDIS_MNEMONIC_MOV, {R(kBorrow64[c]), R(ZYDIS_REGISTER_R11)});
    swaps->push_back({begin, end, kBorrowIdx[c], false});
    return e.ok() && !e.enc_failed();
  }
  return false;
}

const ZydisRegister kR14D = ZYDIS_REGISTER_R14D;
const ZydisRegister kR13D = ZYDIS_REGISTER_R13D;
const ZydisRegister kR11D = ZYDIS_REGISTER_R11D;

ZydisRegister sized(ZydisRegister r32, unsigned bytes) {
  // r11d/r13d -> r11w/r13w
  if (bytes == 4) return r32;
  if (r32 == kR11D) return ZYDIS_REGISTER_R11W;
  if (r32 == kR13D) return ZYDIS_REGISTER_R13W;
  return r32;
}

// ---- segmented flavour: stack operations through SS's base and width

// r13d = the stack pointer moved by `delta` (SP wrapping at 64 KiB with a
// 16-bit stack), r9d = its linear address (SS base added).  No flags.
bool seg_stack_slot(Emitter& e, std::int32_t delta, unsigned bytes, bool write) {
  bool ok = e.ins(ZYDIS_MNEMONIC_LEA, {R(kR13D), M(ZYDIS_REGISTER_R14, delta, 0)});
  if (t_seg.stack16) ok = ok && e.ins(ZYDIS_MNEMONIC_MOVZX, {R(kR13D), R(ZYDIS_REGISTER_R13W)});
  return ok && check_window(e, 2, bytes, write) &&
         e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R9D), M(ZYDIS_REGISTER_R15, offsetof(Context, seg_base) + 16, 4)}) &&
         e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R9D), M(ZYDIS_REGISTER_R13, 0, 0, ZYDIS_REGISTER_R9, 1)});
}

// The stack pointer = r13d (a 16-bit stack changes only SP).  Last, so a
// faulting access before it leaves the guest's stack pointer as it was.
bool seg_stack_commit(Emitter& e) {
  return t_seg.stack16 ? e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R14W), R(ZYDIS_REGISTER_R13W)})
                       : e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R14D), R(kR13D)});
}

bool seg_push(Emitter& e, Op value, unsigned bytes) {
  return seg_stack_slot(e, -static_cast<std::int32_t>(bytes), bytes, true) &&
         e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R9D, 0, bytes), value}, true) && seg_stack_commit(e);
}

// Loads the stack top (`bytes` wide, zero-extended) into r11d and moves the
// stack pointer past it and `release` more bytes (RET imm16).
// `branch_target`: r11d is a return address, checked against CS's limit
// before the stack pointer moves.
bool seg_pop_r11(Emitter& e, unsigned bytes, std::int32_t release = 0, bool branch_target = false) {
  const bool ok = seg_stack_slot(e, 0, bytes, false) &&
                  (bytes == 2 ? e.ins(ZYDIS_MNEMONIC_MOVZX, {R(kR11D), M(ZYDIS_REGISTER_R9D, 0, 2)}, true)
                              : e.ins(ZYDIS_MNEMONIC_MOV, {R(kR11D), M(ZYDIS_REGISTER_R9D, 0, 4)}, true));
  return ok && (!branch_target || check_branch_target(e, ZYDIS_REGISTER_R11)) && e.ins(ZYDIS_MNEMONIC_LEA, {R(kR13D), M(ZYDIS_REGISTER_R13, bytes + release, 0)}) && seg_stack_commit(e);
}

bool seg_push_insn(Emitter& e, const ZydisDecodedOperand& o, unsigned bytes) {
  if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) return seg_push(e, R(rename(o.reg.value)), bytes);
  if (o.type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
    const std::int64_t v = bytes == 2 ? std::int64_t{static_cast<std::int16_t>(o.imm.value.s)}
                                      : std::int64_t{static_cast<std::int32_t>(o.imm.value.s)};
    return seg_push(e, I(v), bytes);
  }
  ZydisEncoderOperand m{};
  if (!segmented_mem(e, o, &m, 0)) return false;
  Op mo;
  mo.o = m;
  return e.ins(ZYDIS_MNEMONIC_MOV, {R(sized(kR11D, bytes)), mo}, true) && seg_push(e, R(sized(kR11D, bytes)), bytes);
}

bool seg_pop_insn(Emitter& e, const ZydisDecodedOperand& o, unsigned bytes) {
  if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
    const ZydisRegister r = rename(o.reg.value);
    if (!seg_stack_slot(e, 0, bytes, false) || !e.ins(ZYDIS_MNEMONIC_MOV, {R(r), M(ZYDIS_REGISTER_R9D, 0, bytes)}, true))
      return false;
    if (r == kR14D || r == ZYDIS_REGISTER_R14W) return true;  // POP (E)SP: the popped value is the stack pointer
    return e.ins(ZYDIS_MNEMONIC_LEA, {R(kR13D), M(ZYDIS_REGISTER_R13, bytes, 0)}) && seg_stack_commit(e);
  }
  const ZydisRegister v = sized(kR11D, bytes);
  if (!seg_stack_slot(e, 0, bytes, false) || !e.ins(ZYDIS_MNEMONIC_MOV, {R(v), M(ZYDIS_REGISTER_R9D, 0, bytes)}, true))
    return false;
  // A destination addressed through the stack pointer uses it incremented.
  const bool sp_based = o.mem.base == ZYDIS_REGISTER_ESP || o.mem.base == ZYDIS_REGISTER_SP;
  ZydisEncoderOperand m{};
  if (!segmented_mem(e, o, &m, sp_based ? bytes : 0)) return false;
  Op mo;
  mo.o = m;
  return e.ins(ZYDIS_MNEMONIC_MOV, {mo, R(v)}, true) &&
         e.ins(ZYDIS_MNEMONIC_LEA, {R(kR13D), M(ZYDIS_REGISTER_R14, bytes, 0)}) && seg_stack_commit(e);
}

// LEAVE: the stack pointer = the frame pointer (SP = BP with a 16-bit
// stack), then the frame pointer is popped with the operand size.
bool seg_leave(Emitter& e, unsigned bytes) {
  const bool ok = t_seg.stack16 ? e.ins(ZYDIS_MNEMONIC_MOVZX, {R(kR13D), R(ZYDIS_REGISTER_BP)})
                                : e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), R(ZYDIS_REGISTER_EBP)});
  return ok && check_window(e, 2, bytes, false) &&
         e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R9D), M(ZYDIS_REGISTER_R15, offsetof(Context, seg_base) + 16, 4)}) &&
         e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R9D), M(ZYDIS_REGISTER_R13, 0, 0, ZYDIS_REGISTER_R9, 1)}) &&
         e.ins(ZYDIS_MNEMONIC_MOV, {R(sized(kR11D, bytes)), M(ZYDIS_REGISTER_R9D, 0, bytes)}, true) &&
         e.ins(ZYDIS_MNEMONIC_LEA, {R(kR13D), M(ZYDIS_REGISTER_R13, bytes, 0)}) && seg_stack_commit(e) &&
         e.ins(ZYDIS_MNEMONIC_MOV,
               {R(bytes == 2 ? ZYDIS_REGISTER_BP : ZYDIS_REGISTER_EBP), R(sized(kR11D, bytes))});
}

// r11d = a near branch's target from a register or memory operand (a word
// zero-extended with a 16-bit operand size).
bool seg_branch_target_r11(Emitter& e, const ZydisDecodedOperand& o, unsigned bytes) {
  if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
    const ZydisRegister r = rename(o.reg.value);
    return bytes == 2 ? e.ins(ZYDIS_MNEMONIC_MOVZX, {R(kR11D), R(r)}) : e.ins(ZYDIS_MNEMONIC_MOV, {R(kR11D), R(r)});
  }
  ZydisEncoderOperand m{};
  if (!segmented_mem(e, o, &m, 0)) return false;
  m.mem.size = static_cast<ZyanU16>(bytes);
  Op mo;
  mo.o = m;
  return bytes == 2 ? e.ins(ZYDIS_MNEMONIC_MOVZX, {R(kR11D), mo}, true)
                    : e.ins(ZYDIS_MNEMONIC_MOV, {R(kR11D), mo}, true);
}

}  // namespace

Translator::Translator(std::size_t cache_bytes) {
  cache_ = map_code_cache(cache_bytes, "bt-swmmu");
  cache_end_ = cache_ + cache_bytes;
  cur_ = cache_;
  ZydisDecoderInit(&decoder_, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  ZydisDecoderInit(&decoder16_, ZYDIS_MACHINE_MODE_LEGACY_16, ZYDIS_STACK_WIDTH_16);
  emit_routines();
}

Translator::~Translator() { munmap(cache_, static_cast<std::size_t>(cache_end_ - cache_)); }

void Translator::emit_routines() {
  Emitter e(cur_, cache_end_);
  using namespace std;
  auto gpr = [](int i) { return static_cast<std::int32_t>(8 * i); };
  const ZydisRegister g32[8] = {ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
                                ZYDIS_REGISTER_R14D, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
  const ZydisRegister g64[8] = {ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RBX,
                                ZYDIS_REGISTER_R14, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI};
  const ZydisRegister saved[6] = {ZYDIS_REGISTER_RBX, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_R12,
                                  ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};
  auto movabs_rax = [&](const void* p) {
    e.b(0x48);
    e.b(0xb8);
    const auto v = reinterpret_cast<std::uint64_t>(p);
    e.d(static_cast<std::uint32_t>(v));
    e.d(static_cast<std::uint32_t>(v >> 32));
  };
  auto load_region_base = [&] {
    e.ins(ZYDIS_MNEMONIC_MOV, {R(kRegionBase), M(ZYDIS_REGISTER_R15, offsetof(Context, region_base), 8)});
  };
  // The guest's FPU/SSE state is loaded lazily: only a block that has an
  // FPU/SSE instruction calls [r15 + fpu_load], which loads it once and then
  // points at a bare RET; exits that find it unloaded skip FXSAVE.  Flags
  // and registers are preserved.
  fpu_ret_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_RET, {});
  fpu_load_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_FXRSTOR, {M(ZYDIS_REGISTER_R15, offsetof(Context, guest_fx), 512)});
  store_ctx64(e, offsetof(Context, fpu_live), 1);
  e.ins(ZYDIS_MNEMONIC_PUSH, {R(ZYDIS_REGISTER_RAX)});
  movabs_rax(fpu_ret_);
  e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, offsetof(Context, fpu_load), 8), R(ZYDIS_REGISTER_RAX)});
  e.ins(ZYDIS_MNEMONIC_POP, {R(ZYDIS_REGISTER_RAX)});
  e.ins(ZYDIS_MNEMONIC_RET, {});
  // Leaving translated code (an exit, a monitor call): if the guest's FPU/SSE
  // state is loaded, save it and give the host its own control words back;
  // not live again means loaded on demand again, so translated code entered
  // after this (also an entry nested in a monitor call: an instruction run on
  // the MMIO stage) reloads the guest's state instead of using the host's.
  // Clobbers RAX; flags must be saved already.
  auto save_guest_fpu_if_loaded = [&] {
    e.ins(ZYDIS_MNEMONIC_CMP, {M(ZYDIS_REGISTER_R15, offsetof(Context, fpu_live), 8), I(0)});
    e.b(0x74);  // je not_loaded
    std::uint8_t* not_loaded = e.pos();
    e.b(0);
    e.ins(ZYDIS_MNEMONIC_FXSAVE, {M(ZYDIS_REGISTER_R15, offsetof(Context, guest_fx), 512)});
    e.ins(ZYDIS_MNEMONIC_FNINIT, {});
    e.ins(ZYDIS_MNEMONIC_LDMXCSR, {M(ZYDIS_REGISTER_R15, offsetof(Context, host_mxcsr), 4)});
    e.ins(ZYDIS_MNEMONIC_FLDCW, {M(ZYDIS_REGISTER_R15, offsetof(Context, host_fcw), 2)});
    store_ctx64(e, offsetof(Context, fpu_live), 0);
    movabs_rax(fpu_load_);
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, offsetof(Context, fpu_load), 8), R(ZYDIS_REGISTER_RAX)});
    *not_loaded = static_cast<std::uint8_t>(e.pos() - (not_loaded + 1));
  };
  // The guest's arithmetic flags and DF (Context::rflags) into the host's
  // RFLAGS without POPFQ, which is microcoded and slow on the hosts measured
  // (it was a tenth of an `in` monitor call): DF by STD, OF by an ADD that
  // overflows or not, the rest by SAHF.  Clobbers RAX and RCX; DF is clear
  // here (C++ or CLD ran last).
  auto restore_host_flags = [&] {
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_EAX), M(ZYDIS_REGISTER_R15, offsetof(Context, rflags), 4)});
    e.ins(ZYDIS_MNEMONIC_TEST, {R(ZYDIS_REGISTER_EAX), I(0x400)});
    e.b(0x74);  // jz df_clear
    std::uint8_t* df_clear = e.pos();
    e.b(0);
    e.b(0xfd);  // std
    *df_clear = static_cast<std::uint8_t>(e.pos() - (df_clear + 1));
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_EAX)});
    e.ins(ZYDIS_MNEMONIC_SHR, {R(ZYDIS_REGISTER_ECX), I(4)});  // OF (bit 11) to bit 7
    e.ins(ZYDIS_MNEMONIC_AND, {R(ZYDIS_REGISTER_ECX), I(0x80)});
    e.ins(ZYDIS_MNEMONIC_ADD, {R(ZYDIS_REGISTER_CL), R(ZYDIS_REGISTER_CL)});  // 0x80 + 0x80 overflows
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_AH), R(ZYDIS_REGISTER_AL)});
    e.b(0x9e);  // sahf: SF, ZF, AF, PF, CF from AH
  };
  // entry(rdi = ctx, rsi = host code)
  entry_ = e.pos();
  for (auto r : saved) e.ins(ZYDIS_MNEMONIC_PUSH, {R(r)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R15), R(ZYDIS_REGISTER_RDI)});
  e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, offsetof(Context, host_rsp), 8), R(ZYDIS_REGISTER_RSP)});
  e.ins(ZYDIS_MNEMONIC_STMXCSR, {M(ZYDIS_REGISTER_R15, offsetof(Context, host_mxcsr), 4)});
  e.ins(ZYDIS_MNEMONIC_FNSTCW, {M(ZYDIS_REGISTER_R15, offsetof(Context, host_fcw), 2)});
  movabs_rax(fpu_load_);
  e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, offsetof(Context, fpu_load), 8), R(ZYDIS_REGISTER_RAX)});
  store_ctx64(e, offsetof(Context, fpu_live), 0);
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13), R(ZYDIS_REGISTER_RSI)});
  restore_host_flags();
  for (int i = 0; i < 8; ++i) e.ins(ZYDIS_MNEMONIC_MOV, {R(g32[i]), M(ZYDIS_REGISTER_R15, gpr(i), 4)});
  load_region_base();
  e.ins(ZYDIS_MNEMONIC_JMP, {R(ZYDIS_REGISTER_R13)});
  // exit: guest state in host registers
  exit_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_PUSHFQ, {});
  e.ins(ZYDIS_MNEMONIC_POP, {M(ZYDIS_REGISTER_R15, offsetof(Context, rflags), 8)});
  for (int i = 0; i < 8; ++i) e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, gpr(i), 8), R(g64[i])});
  // exit after a fault: the handler stored the registers already
  exit_signal_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_CLD, {});
  // Guest flags are saved by now.
  save_guest_fpu_if_loaded();
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RSP), M(ZYDIS_REGISTER_R15, offsetof(Context, host_rsp), 8)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RAX), M(ZYDIS_REGISTER_R15, kOffReason, 8)});
  for (int i = 5; i >= 0; --i) e.ins(ZYDIS_MNEMONIC_POP, {R(saved[i])});
  e.ins(ZYDIS_MNEMONIC_RET, {});
  // Monitor call (ctx->next_eip = the instruction to emulate): guest state to
  // the context as on an exit (the guest FPU state too, if loaded: the
  // monitor is C++), then monitor_fn(monitor_obj) on the host stack.  It
  // returns the host code to continue at (guest state reloaded from the
  // context, the FPU state again lazily), or 0: leave as an exit would.
  monitor_call_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_PUSHFQ, {});
  e.ins(ZYDIS_MNEMONIC_POP, {M(ZYDIS_REGISTER_R15, offsetof(Context, rflags), 8)});
  for (int i = 0; i < 8; ++i) e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, gpr(i), 8), R(g64[i])});
  e.ins(ZYDIS_MNEMONIC_CLD, {});
  save_guest_fpu_if_loaded();
  e.ins(ZYDIS_MNEMONIC_CMP, {M(ZYDIS_REGISTER_R15, offsetof(Context, monitor_fn), 8), I(0)});
  e.b(0x75);  // jne have_monitor
  std::uint8_t* have_monitor = e.pos();
  e.b(0);
  store_ctx64(e, kOffReason, kExitSpecial);
  store_ctx64(e, kOffPatch, 0);
  e.jmp(exit_signal_);
  *have_monitor = static_cast<std::uint8_t>(e.pos() - (have_monitor + 1));
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RBX), R(ZYDIS_REGISTER_RSP)});  // callee-saved (guest EBX is in the context)
  e.ins(ZYDIS_MNEMONIC_AND, {R(ZYDIS_REGISTER_RSP), I(-16)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RDI), M(ZYDIS_REGISTER_R15, offsetof(Context, monitor_obj), 8)});
  e.ins(ZYDIS_MNEMONIC_CALL, {M(ZYDIS_REGISTER_R15, offsetof(Context, monitor_fn), 8)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RSP), R(ZYDIS_REGISTER_RBX)});
  e.ins(ZYDIS_MNEMONIC_TEST, {R(ZYDIS_REGISTER_RAX), R(ZYDIS_REGISTER_RAX)});
  e.b(0x0f);  // jz exit_signal_ (registers are in the context already)
  e.b(0x84);
  e.rel32(exit_signal_);
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13), R(ZYDIS_REGISTER_RAX)});
  restore_host_flags();
  for (int i = 0; i < 8; ++i) e.ins(ZYDIS_MNEMONIC_MOV, {R(g32[i]), M(ZYDIS_REGISTER_R15, gpr(i), 4)});
  load_region_base();  // the monitor may have switched regions (a CPL change)
  e.ins(ZYDIS_MNEMONIC_JMP, {R(ZYDIS_REGISTER_R13)});
  if (!e.ok()) throw std::runtime_error("bt-swmmu: emitting the entry/exit routines failed");
  cur_ = e.pos();
  cur_ = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(cur_) + 63) & ~std::uintptr_t(63));
  blocks_start_ = cur_;
}

std::uint64_t Translator::enter(Context* ctx, const void* host) {
  using Fn = std::uint64_t (*)(Context*, const void*);
  return reinterpret_cast<Fn>(entry_)(ctx, host);
}

Block* Translator::find(std::uint32_t eip, std::uint64_t pa, TKey tkey, std::uint32_t cs_base) {
  auto it = blocks_.find(Key{eip, pa, tkey, cs_base});
  return it == blocks_.end() ? nullptr : it->second;
}

Block* Translator::block_at(std::uintptr_t pc) const {
  auto it = by_host_.upper_bound(pc);
  if (it == by_host_.begin()) return nullptr;
  --it;
  Block* b = it->second;
  if (pc >= reinterpret_cast<std::uintptr_t>(b->host) + b->host_size) return nullptr;
  return b;
}

std::uint32_t Translator::guest_eip_at(const Block* b, std::uintptr_t pc) const {
  const std::uint32_t off = static_cast<std::uint32_t>(pc - reinterpret_cast<std::uintptr_t>(b->host));
  std::uint32_t eip = b->eip;
  for (auto& [o, e] : b->side) {
    if (o > off) break;
    eip = e;
  }
  return eip;
}

void Translator::chain(std::uint64_t site, const Block* b) {
  Emitter::patch_rel32(reinterpret_cast<std::uint8_t*>(site), b->entry);
  ++stats.chains;
}

bool Translator::invalidate_page(std::uint64_t pa_page, std::vector<DroppedBlock>* dropped) {
  auto it = by_page_.find(pa_page);
  if (it == by_page_.end()) return false;
  auto list = std::move(it->second);
  by_page_.erase(it);
  for (Block* b : list) {
    if (!b->valid) continue;
    b->valid = false;
    if (dropped) dropped->push_back(DroppedBlock{b->linear(), b, reinterpret_cast<std::uint64_t>(b->entry)});
    blocks_.erase(Key{b->eip, b->pa_page[0] | (b->linear() & 0xfff), b->tkey, b->cs_base});
    for (int i = 0; i < b->n_pages; ++i) {
      if (b->pa_page[i] == pa_page) continue;
      auto o = by_page_.find(b->pa_page[i]);
      if (o != by_page_.end()) std::erase(o->second, b);
    }
  }
  ++stats.smc_invalidations;
  return true;
}

void Translator::flush() {
  blocks_.clear();
  by_page_.clear();
  by_host_.clear();
  all_.clear();
  cur_ = blocks_start_;
  ++stats.flushes;
}

TranslateStatus Translator::translate(std::uint32_t eip, TKey tkey, const CodeWindow& code, Block** out,
                                      std::uint32_t max_insns, bool transient, const void* redirect_mem) {
  struct RedirectScope {
    explicit RedirectScope(const void* p) { t_redirect = p; }
    ~RedirectScope() { t_redirect = nullptr; }
  } redirect_scope(redirect_mem);
  struct SegmentedScope {
    explicit SegmentedScope(TKey k) {
      t_seg = SegmentedFlavour{(k & kTKeySegmented) != 0, (k & kTKeyCode16) != 0, (k & kTKeyStack16) != 0, false,
                               (k & kTKeySegmented) && (k & kTKeyLimits)};
    }
    ~SegmentedScope() { t_seg = SegmentedFlavour{}; }
  } segmented_scope(tkey);
  const ZydisDecoder& decoder = (tkey & kTKeyCode16) ? decoder16_ : decoder_;
  // Linear addresses (pages, chaining, lookup keys) are the CS base plus EIPs.
  const std::uint32_t cs_base = code.cs_base;
  auto linear = [cs_base](std::uint32_t ip) { return cs_base + ip; };
  *out = nullptr;
  auto blk = std::make_unique<Block>();
  Block* b = blk.get();
  b->eip = eip;
  b->cs_base = cs_base;
  b->tkey = tkey;
  b->pa_page[0] = code.pa_page[0];
  b->host = cur_;

  Emitter e(cur_, cache_end_);

  // Entry: poll the dispatcher's page (faults when the vCPU must stop by).
  b->entry = e.pos();
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13D), M(ZYDIS_REGISTER_R15, kPollOffset, 4)});

  // Pending exits: patch sites that need a stub after the body.
  struct Stub {
    std::uint8_t* site;   // rel32 to point at the stub
    std::uint32_t target;
    bool chainable;
    std::uint64_t reason;
    bool branch = false;  // a branch's target (limits flavour: checked against CS's limit)
  };
  std::vector<Stub> stubs;
  auto same_page = [&](std::uint32_t a, std::uint32_t b) { return (linear(a) & ~0xfffu) == (linear(b) & ~0xfffu); };
  auto direct_exit = [&](std::uint32_t target, std::uint32_t insn_eip, bool branch = false) {
    std::uint8_t* site = e.jmp(e.pos());  // fixed up below
    bool chainable = same_page(target, insn_eip);
    stubs.push_back({site, target, chainable, kExitDispatch, branch});
  };
  auto lookup = [&]() {
    // target guest EIP in r13d; flags preserved.  Under a CS base the key
    // is fast_key(cs_base, eip): r13 + cs_base * (2^32 + 1).
    if (cs_base != 0) {
      e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R11), I(static_cast<std::int64_t>(fast_key(cs_base, 0)))});
      e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R13), M(ZYDIS_REGISTER_R13, 0, 0, ZYDIS_REGISTER_R11, 1)});
    }
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10), R(ZYDIS_REGISTER_RCX)});
    e.ins(ZYDIS_MNEMONIC_MOVZX, {R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_R13W)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R11), M(ZYDIS_REGISTER_R15, kOffFast, 8)});
    e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R11), M(ZYDIS_REGISTER_R11, 0, 0, ZYDIS_REGISTER_RCX, 8)});
    e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R11), M(ZYDIS_REGISTER_R11, 0, 0, ZYDIS_REGISTER_RCX, 8)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), M(ZYDIS_REGISTER_R11, 0, 8)});
    e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_RCX), M(ZYDIS_REGISTER_RCX, 1, 0, ZYDIS_REGISTER_R13, 1)});
    e.b(0xe3);
    std::uint8_t* rel = e.pos();
    e.b(0);
    // miss
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R10)});
    if (cs_base != 0)  // back to the EIP (the key's low half is the linear address)
      e.ins(ZYDIS_MNEMONIC_LEA, {R(kR13D), M(ZYDIS_REGISTER_R13, static_cast<std::int32_t>(0u - cs_base), 0)});
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, kOffNextEip, 4), R(ZYDIS_REGISTER_R13D)});
    store_ctx64(e, kOffPatch, 0);
    store_ctx64(e, kOffReason, kExitIndirectMiss);
    e.jmp(exit_);
    *rel = static_cast<std::uint8_t>(e.pos() - (rel + 1));
    // hit
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R10)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10), M(ZYDIS_REGISTER_R15, kOffHits, 8)});
    e.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_R10), M(ZYDIS_REGISTER_R10, 1, 0)});
    e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, kOffHits, 8), R(ZYDIS_REGISTER_R10)});
    e.ins(ZYDIS_MNEMONIC_JMP, {M(ZYDIS_REGISTER_R11, 8, 8)});
  };
  // Load the value of operand `op` (register or memory) into r13d.
  auto load_r13 = [&](const ZydisDecodedOperand& op) {
    if (op.type == ZYDIS_OPERAND_TYPE_REGISTER) return e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), R(rename(op.reg.value))});
    ZydisEncoderOperand m{};
    if (!host_mem(e, op, &m)) return false;
    Op mo;
    mo.o = m;
    return e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), mo}, true);
  };
  auto push_value = [&](Op value, unsigned bytes) {
    e.ins(ZYDIS_MNEMONIC_MOV, {M(kR14D, -static_cast<std::int64_t>(bytes), bytes), value}, true);
    e.ins(ZYDIS_MNEMONIC_LEA, {R(kR14D), M(ZYDIS_REGISTER_R14, -static_cast<std::int64_t>(bytes), 0)});
  };

  // Leave at `resume` with `reason` when the dword `value` (a register other
  // than r13/RCX, or memory) is non-zero; flags untouched (JRCXZ, r13 scratch).
  auto exit_if_nonzero = [&](Op value, std::uint32_t resume, std::uint64_t reason) {
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13), R(ZYDIS_REGISTER_RCX)});
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_ECX), value});
    e.b(0xe3);  // jrcxz stay
    std::uint8_t* rel = e.pos();
    e.b(0);
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R13)});
    store_ctx32(e, kOffNextEip, resume);
    store_ctx64(e, kOffReason, static_cast<std::int32_t>(reason));
    store_ctx64(e, kOffPatch, 0);
    e.jmp(exit_);
    *rel = static_cast<std::uint8_t>(e.pos() - (rel + 1));
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R13)});  // stay:
  };
  // If an interrupt was waiting for IF at dispatch (ctx->irq_hint), leave
  // at `resume` after IF was opened.
  auto window_exit = [&](std::uint32_t resume) {
    exit_if_nonzero(M(ZYDIS_REGISTER_R15, offsetof(Context, irq_hint), 4), resume, kExitStiWindow);
  };
  // The instruction at `at` is the monitor's: a monitor call, in the cache.
  auto special_exit = [&](std::uint32_t at) {
    store_ctx32(e, kOffNextEip, at);
    e.jmp(monitor_call_);
  };
  std::uint32_t pc = eip;
  bool fpu_ready = false;  // the block called fpu_load already
  bool ended = false;
  bool sti_window_after_next = false;  // set by an inline STI
  TranslateStatus status = TranslateStatus::Ok;
  while (!ended) {
    const std::uint32_t off = pc - eip;
    if (off >= code.first_page_bytes) {  // reached the next page: end the block
      direct_exit(pc, pc - 1);
      break;
    }
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    ZyanStatus st = ZydisDecoderDecodeFull(&decoder, code.bytes + off, code.total - off, &insn, ops);
    if (ZYAN_SUCCESS(st) && t_seg.limits && std::uint64_t{pc} + insn.length - 1 > code.cs_limit) {
      // The instruction crosses CS's limit: #GP(0) when it is reached.
      if (b->n_insns == 0) {
        status = TranslateStatus::CodeLimit;
        b->special = true;
        break;
      }
      direct_exit(pc, pc - 1);
      break;
    }
    if (!ZYAN_SUCCESS(st)) {
      if (b->n_insns == 0) {
        // Ran out of fetchable bytes (next page not present) or invalid opcode.
        bool truncated = st == ZYDIS_STATUS_NO_MORE_DATA && code.total < code.first_page_bytes + 15;
        status = truncated ? TranslateStatus::FetchFault : TranslateStatus::Undefined;
        b->special = true;
        break;
      }
      store_ctx32(e, kOffNextEip, pc);
      store_ctx64(e, kOffReason, kExitDispatch);
      store_ctx64(e, kOffPatch, 0);
      e.jmp(exit_);
      break;
    }
    if (off + insn.length > code.first_page_bytes) {
      // Straddles into the next page.
      if (b->n_insns != 0) {
        direct_exit(pc, pc - 1);
        break;
      }
      b->pa_page[1] = code.pa_page[1];
      b->n_pages = 2;
    }
    const std::uint32_t next = pc + insn.length;
    t_seg.a16 = insn.address_width == 16;
    InsnClass cls = classify(insn, ops, tkey);
    const bool monitor_site = !transient && sites_ && off < code.first_page_bytes &&
                              sites_->marked(code.pa_page[0] | (linear(pc) & 0xfff));
    // Inline forms of two hot sensitive instructions (irqsave paths); the
    // segmented flavour leaves PUSHF/POPF to the monitor (SS base and width,
    // virtual-8086 IOPL rules).
    const bool inline_pushf = insn.mnemonic == ZYDIS_MNEMONIC_PUSHFD && insn.operand_width == 32 && !t_seg.on;
    const bool cpl0 = !(tkey & (kTKeyUser | kTKeyRing12));
    const bool inline_cli = insn.mnemonic == ZYDIS_MNEMONIC_CLI && cpl0;
    // Under SMAP, POPFD may change AC and with it the shadow view: the monitor's.
    const bool inline_popf = insn.mnemonic == ZYDIS_MNEMONIC_POPFD && insn.operand_width == 32 && cpl0 &&
                             !(tkey & kTKeySmap) && !t_seg.on;
    bool inline_sti = false;
    if (insn.mnemonic == ZYDIS_MNEMONIC_STI && cpl0 && b->n_insns + 2 < max_insns) {
      // Only when the next instruction runs in this block too: then the STI
      // shadow holds by construction (no block-entry poll in between).
      ZydisDecodedInstruction nx;
      ZydisDecodedOperand nops[ZYDIS_MAX_OPERAND_COUNT];
      const std::uint32_t noff = off + insn.length;
      inline_sti = noff < code.first_page_bytes &&
                   ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, code.bytes + noff, code.total - noff, &nx, nops)) &&
                   noff + nx.length <= code.first_page_bytes && classify(nx, nops, tkey) != InsnClass::Special &&
                   classify(nx, nops, tkey) != InsnClass::ControlFlow && nx.mnemonic != ZYDIS_MNEMONIC_STI &&
                   nx.mnemonic != ZYDIS_MNEMONIC_POPFD &&
                   !(sites_ && !transient && sites_->marked(code.pa_page[0] | (linear(pc + insn.length) & 0xfff))) &&
                   // a breakpoint there leaves for the dispatcher inside the shadow:
                   // only the monitor's STI records the shadow, so #DB goes first
                   !(!transient && code_breakpoints_.at(linear(pc + insn.length)));
    }
    if (inline_pushf || inline_cli || inline_popf || inline_sti) cls = InsnClass::Stack;
    if (monitor_site) cls = InsnClass::Special;
    // An instruction breakpoint: the dispatcher's (the #DB fault, or RF).  A
    // block that starts there is a breakpoint block; one that reaches it
    // calls the monitor there, which leaves for the dispatcher.
    const bool at_breakpoint = !transient && code_breakpoints_.at(linear(pc));
    if (at_breakpoint) cls = InsnClass::Special;
    // A LOOP whose (static) target lies beyond CS's limit: the monitor's,
    // whose #GP leaves ECX as it was (the native LOOP would count it down).
    if (t_seg.limits &&
        (insn.mnemonic == ZYDIS_MNEMONIC_LOOP || insn.mnemonic == ZYDIS_MNEMONIC_LOOPE ||
         insn.mnemonic == ZYDIS_MNEMONIC_LOOPNE) &&
        std::uint64_t{static_cast<std::uint32_t>(next + ops[0].imm.value.s) &
                      (insn.operand_width == 16 ? 0xffffu : 0xffffffffu)} > code.cs_limit)
      cls = InsnClass::Special;
    // Under TF a REP string instruction traps after every iteration: the
    // monitor runs it one iteration per step (string_op).
    if ((tkey & kTKeyTrapFlag) && is_string_op(insn) &&
        (insn.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE)))
      cls = InsnClass::Special;
    if (cls == InsnClass::Special) {
      if (b->n_insns == 0) {
        b->special = true;
        b->monitor_site = monitor_site && !at_breakpoint;
        b->breakpoint = at_breakpoint;
        status = TranslateStatus::Special;
        b->end_eip = next;
        break;
      }
      special_exit(pc);
      break;
    }
    std::uint8_t* insn_start = e.pos();
    b->side.emplace_back(e.off(), pc);
    if (!fpu_ready && uses_fpu_state(insn, ops)) {
      e.ins(ZYDIS_MNEMONIC_CALL, {M(ZYDIS_REGISTER_R15, offsetof(Context, fpu_load), 8)});
      fpu_ready = true;
    }
    bool ok = true;
    if (cls == InsnClass::Plain) {
      ok = reencode(e, insn, ops, &b->swaps);
      if (!ok && e.enc_failed()) {
        // Typically ESP addressing plus AH..BH: borrow EBP/ESI/EDI for ESP.
        const ZydisRegister* cand32 = kBorrow32;
        const ZydisRegister* cand16 = kBorrow16;
        const ZydisRegister* cand64 = kBorrow64;
        const unsigned* cand_idx = kBorrowIdx;
        auto used = [&](ZydisRegister c) { return insn_uses(insn, ops, c); };
        for (int c = 0; c < 3 && !ok; ++c) {
          if (used(cand32[c])) continue;
          e.reset_to(insn_start);
          e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R11), R(cand64[c])});
          e.ins(ZYDIS_MNEMONIC_MOV, {R(cand32[c]), R(kR14D)});
          const std::uint32_t begin = e.off();
          t_esp32 = cand32[c];
          t_esp16 = cand16[c];
          ok = reencode(e, insn, ops);
          t_esp32 = ZYDIS_REGISTER_R14D;
          t_esp16 = ZYDIS_REGISTER_R14W;
          const std::uint32_t end = e.off();
          e.ins(ZYDIS_MNEMONIC_MOV, {R(kR14D), R(cand32[c])});
          e.ins(ZYDIS_MNEMONIC_MOV, {R(cand64[c]), R(ZYDIS_REGISTER_R11)});
          if (ok && !e.enc_failed()) b->swaps.push_back({begin, end, cand_idx[c]});
          else ok = false;
        }
      }
    } else if (cls == InsnClass::Stack && t_seg.on && !inline_cli && !inline_sti) {
      // SS base and width: the segmented flavour's own push/pop/leave.
      const unsigned sz = insn.operand_width / 8;
      if (insn.mnemonic == ZYDIS_MNEMONIC_LEAVE) ok = seg_leave(e, sz);
      else if (insn.mnemonic == ZYDIS_MNEMONIC_PUSH) ok = seg_push_insn(e, ops[0], sz);
      else ok = seg_pop_insn(e, ops[0], sz);
    } else if (cls == InsnClass::ControlFlow && t_seg.on) {
      // Near branches of segmented code: targets wrap to 16 bits with a
      // 16-bit operand size, return addresses go through SS's base and width,
      // LOOP/JCXZ count in CX with a 16-bit address size.
      ended = true;
      const unsigned sz = insn.operand_width / 8;
      const std::uint32_t ip_mask = insn.operand_width == 16 ? 0xffffu : 0xffffffffu;
      const std::uint32_t target =
          ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? static_cast<std::uint32_t>(next + ops[0].imm.value.s) & ip_mask : 0;
      auto branch_exit = [&](unsigned cc, std::uint32_t to) {  // jcc to an exit stub
        std::uint8_t* site = e.jcc(cc, e.pos());
        stubs.push_back({site, to, same_page(to, pc), kExitDispatch, to != next});
      };
      switch (insn.mnemonic) {
        case ZYDIS_MNEMONIC_JMP:
          if (ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
            direct_exit(target, pc, true);
          } else {
            ok = seg_branch_target_r11(e, ops[0], sz) && check_branch_target(e, ZYDIS_REGISTER_R11) &&
                 e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), R(kR11D)});
            lookup();
          }
          break;
        case ZYDIS_MNEMONIC_CALL: {
          const std::int64_t ret = sz == 2 ? std::int64_t{static_cast<std::int16_t>(next)}
                                           : std::int64_t{static_cast<std::int32_t>(next)};
          if (ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
            if (t_seg.limits)  // the target before the push
              ok = e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), I(static_cast<std::int32_t>(target))}) &&
                   check_branch_target(e, ZYDIS_REGISTER_R13);
            ok = ok && seg_push(e, I(ret), sz);
            direct_exit(target, pc);
          } else {
            ok = seg_branch_target_r11(e, ops[0], sz) && check_branch_target(e, ZYDIS_REGISTER_R11) &&
                 seg_push(e, I(ret), sz) && e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), R(kR11D)});
            lookup();
          }
          break;
        }
        case ZYDIS_MNEMONIC_RET: {
          const std::int32_t release = insn.operand_count_visible > 0 && ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE
                                           ? static_cast<std::int32_t>(ops[0].imm.value.u & 0xffff)
                                           : 0;
          ok = seg_pop_r11(e, sz, release, true) && e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), R(kR11D)});
          lookup();
          break;
        }
        case ZYDIS_MNEMONIC_JCXZ: case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE:
        case ZYDIS_MNEMONIC_LOOPNE: {
          const bool is_jcxz = insn.mnemonic == ZYDIS_MNEMONIC_JCXZ || insn.mnemonic == ZYDIS_MNEMONIC_JECXZ;
          if (insn.address_width == 32) {  // ECX: the host's own LOOP/JECXZ (0x67)
            e.b(0x67);
            e.b(is_jcxz ? 0xe3 : insn.mnemonic == ZYDIS_MNEMONIC_LOOP ? 0xe2
                : insn.mnemonic == ZYDIS_MNEMONIC_LOOPE ? 0xe1 : 0xe0);
            e.b(5);
            direct_exit(next, pc);
            direct_exit(target, pc, true);
            break;
          }
          // CX (ECX's upper half stays), without touching the flags.
          if (!is_jcxz) {
            ok = e.ins(ZYDIS_MNEMONIC_LEA, {R(kR13D), M(ZYDIS_REGISTER_RCX, -1, 0)}) &&
                 e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_CX), R(ZYDIS_REGISTER_R13W)});
          }
          ok = ok && e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10), R(ZYDIS_REGISTER_RCX)}) &&
               e.ins(ZYDIS_MNEMONIC_MOVZX, {R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_CX)});
          e.b(0xe3);  // jrcxz cx_zero
          std::uint8_t* rel = e.pos();
          e.b(0);
          ok = ok && e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R10)});
          if (insn.mnemonic == ZYDIS_MNEMONIC_LOOPE) branch_exit(0x5, next);   // ZF = 0: not taken
          if (insn.mnemonic == ZYDIS_MNEMONIC_LOOPNE) branch_exit(0x4, next);  // ZF = 1: not taken
          direct_exit(is_jcxz ? next : target, pc, !is_jcxz);
          *rel = static_cast<std::uint8_t>(e.pos() - (rel + 1));
          ok = ok && e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_R10)});
          direct_exit(is_jcxz ? target : next, pc, is_jcxz);
          break;
        }
        default:  // Jcc
          branch_exit(insn.opcode & 0xf, target);
          direct_exit(next, pc);
          break;
      }
    } else if (cls == InsnClass::Stack) {
      const unsigned sz = insn.operand_width / 8;
      if (inline_cli || inline_sti) {
        // IF is bit 1 of sysflags' byte 1, beside TF, IOPL and NT: the new
        // byte comes from a table (no AND/OR, which would change the guest's
        // flags in host RFLAGS).  r10/r13 scratch.
        ok = e.ins(ZYDIS_MNEMONIC_MOVZX, {R(ZYDIS_REGISTER_R10D), M(ZYDIS_REGISTER_R15, offsetof(Context, sysflags) + 1, 1)}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13),
                                        I(static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(
                                            inline_cli ? kIfClearedByte.data() : kIfSetByte.data())))}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10B), M(ZYDIS_REGISTER_R13, 0, 1, ZYDIS_REGISTER_R10, 1)}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, offsetof(Context, sysflags) + 1, 1), R(ZYDIS_REGISTER_R10B)});
        // STI with an interrupt waiting: leave *after the next instruction*
        // (translated here, then the window exit).
        sti_window_after_next = inline_sti;
      } else if (inline_popf) {
        constexpr std::int32_t kSysMask = 0x257300;  // TF IF IOPL NT AC ID
        ok = e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), M(kR14D, 0, 4)}, true) &&
             e.ins(ZYDIS_MNEMONIC_LEA, {R(kR14D), M(ZYDIS_REGISTER_R14, 4, 0)}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R10D), R(kR13D)}) &&
             e.ins(ZYDIS_MNEMONIC_AND, {R(ZYDIS_REGISTER_R10D), I(kSysMask)}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {R(kR11D), M(ZYDIS_REGISTER_R15, offsetof(Context, sysflags), 4)}) &&
             e.ins(ZYDIS_MNEMONIC_AND, {R(kR11D), I(~kSysMask)}) &&
             e.ins(ZYDIS_MNEMONIC_OR, {R(kR11D), R(ZYDIS_REGISTER_R10D)}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, offsetof(Context, sysflags), 4), R(kR11D)}) &&
             e.ins(ZYDIS_MNEMONIC_AND, {R(ZYDIS_REGISTER_R10D), I(0x100)}) &&  // TF, for after the POPFQ
             e.ins(ZYDIS_MNEMONIC_AND, {R(kR13D), I(0xcd5)}) &&
             e.ins(ZYDIS_MNEMONIC_OR, {R(kR13D), I(0x202)}) &&
             e.ins(ZYDIS_MNEMONIC_PUSH, {R(ZYDIS_REGISTER_R13)}) &&
             e.ins(ZYDIS_MNEMONIC_POPFQ, {});
        // TF set: the next instruction is single-stepped by the dispatcher.
        exit_if_nonzero(R(ZYDIS_REGISTER_R10D), next, kExitDispatch);
        window_exit(next);
      } else if (inline_pushf) {
        // Merge host arithmetic flags with the monitor's system flags; flags
        // are restored before the (possibly faulting) store.
        ok = e.ins(ZYDIS_MNEMONIC_PUSHFQ, {}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13), M(ZYDIS_REGISTER_RSP, 0, 8)}) &&
             e.ins(ZYDIS_MNEMONIC_AND, {R(kR13D), I(0xcd5)}) &&
             e.ins(ZYDIS_MNEMONIC_OR, {R(kR13D), M(ZYDIS_REGISTER_R15, offsetof(Context, sysflags), 4)}) &&
             e.ins(ZYDIS_MNEMONIC_POPFQ, {});
        push_value(R(kR13D), 4);
      } else if (insn.mnemonic == ZYDIS_MNEMONIC_LEAVE) {
        // mov esp, ebp; pop ebp  (load first: restartable)
        ok = e.ins(ZYDIS_MNEMONIC_MOV, {R(kR11D), M(ZYDIS_REGISTER_EBP, 0, 4)}, true) &&
             e.ins(ZYDIS_MNEMONIC_LEA, {R(kR14D), M(ZYDIS_REGISTER_RBP, 4, 0)}) &&
             e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_EBP), R(kR11D)});
        if (insn.operand_width != 32) ok = false;
      } else if (insn.mnemonic == ZYDIS_MNEMONIC_PUSH) {
        const auto& o = ops[0];
        if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
          push_value(R(rename(o.reg.value)), sz);
        } else if (o.type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
          std::int64_t v = o.imm.value.s;
          if (sz == 2) v = static_cast<std::int16_t>(v);
          else v = static_cast<std::int32_t>(v);
          push_value(I(v), sz);
        } else {
          ZydisEncoderOperand m{};
          ok = host_mem(e, o, &m);
          Op mo;
          mo.o = m;
          ok = ok && e.ins(ZYDIS_MNEMONIC_MOV, {R(sized(kR11D, sz)), mo}, true);
          push_value(R(sized(kR11D, sz)), sz);
        }
      } else {  // POP
        const auto& o = ops[0];
        if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
          ZydisRegister r = rename(o.reg.value);
          ok = e.ins(ZYDIS_MNEMONIC_MOV, {R(r), M(kR14D, 0, sz)}, true);
          if (r != kR14D && r != ZYDIS_REGISTER_R14W)
            ok = ok && e.ins(ZYDIS_MNEMONIC_LEA, {R(kR14D), M(ZYDIS_REGISTER_R14, sz, 0)});
        } else {
          ok = e.ins(ZYDIS_MNEMONIC_MOV, {R(sized(kR11D, sz)), M(kR14D, 0, sz)}, true);
          ZydisEncoderOperand m{};
          // The destination address uses ESP after the increment.
          bool esp_based = o.mem.base == ZYDIS_REGISTER_ESP;
          ok = ok && host_mem(e, o, &m, esp_based ? sz : 0);
          Op mo;
          mo.o = m;
          ok = ok && e.ins(ZYDIS_MNEMONIC_MOV, {mo, R(sized(kR11D, sz))}, true);
          ok = ok && e.ins(ZYDIS_MNEMONIC_LEA, {R(kR14D), M(ZYDIS_REGISTER_R14, sz, 0)});
        }
      }
    } else {  // control flow
      ended = true;
      switch (insn.mnemonic) {
        case ZYDIS_MNEMONIC_JMP:
          if (ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
            direct_exit(static_cast<std::uint32_t>(next + ops[0].imm.value.s), pc);
          } else {
            ok = load_r13(ops[0]);
            lookup();
          }
          break;
        case ZYDIS_MNEMONIC_CALL:
          if (insn.operand_width != 32) { ok = false; break; }
          if (ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
            push_value(I(static_cast<std::int32_t>(next)), 4);
            direct_exit(static_cast<std::uint32_t>(next + ops[0].imm.value.s), pc);
          } else {
            ok = load_r13(ops[0]);
            push_value(I(static_cast<std::int32_t>(next)), 4);
            lookup();
          }
          break;
        case ZYDIS_MNEMONIC_RET: {
          if (insn.operand_width != 32) { ok = false; break; }
          std::int64_t extra = insn.operand_count_visible > 0 && ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? ops[0].imm.value.u : 0;
          ok = e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), M(kR14D, 0, 4)}, true) &&
               e.ins(ZYDIS_MNEMONIC_LEA, {R(kR14D), M(ZYDIS_REGISTER_R14, 4 + extra, 0)});
          lookup();
          break;
        }
        case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE:
        case ZYDIS_MNEMONIC_LOOPNE: {
          const std::uint32_t target = static_cast<std::uint32_t>(next + ops[0].imm.value.s);
          e.b(0x67);
          e.b(insn.mnemonic == ZYDIS_MNEMONIC_JECXZ ? 0xe3 : insn.mnemonic == ZYDIS_MNEMONIC_LOOP ? 0xe2
              : insn.mnemonic == ZYDIS_MNEMONIC_LOOPE ? 0xe1 : 0xe0);
          e.b(5);
          direct_exit(next, pc);
          direct_exit(target, pc);
          break;
        }
        default: {  // Jcc
          if (insn.operand_width != 32 && insn.operand_width != 0) { /* jcc rel16 */ }
          const unsigned cc = insn.opcode & 0xf;
          const std::uint32_t target = static_cast<std::uint32_t>(next + ops[0].imm.value.s);
          std::uint8_t* site = e.jcc(cc, e.pos());
          stubs.push_back({site, target, (target & ~0xfffu) == (pc & ~0xfffu), kExitDispatch});
          direct_exit(next, pc);
          break;
        }
      }
    }
    if (!e.ok()) throw std::runtime_error("bt-swmmu: translation cache overflow");
    if (!ok || e.enc_failed()) {
      // Could not translate this one: leave it to the monitor.
      if (b->n_insns != 0) {
        Emitter back(insn_start, cache_end_);
        e = back;
        b->side.pop_back();
        stubs.erase(std::remove_if(stubs.begin(), stubs.end(), [&](auto& s) { return s.site >= insn_start; }),
                    stubs.end());
        special_exit(pc);
        break;
      }
      e = Emitter(b->host, cache_end_);
      b->special = true;
      status = TranslateStatus::Special;
      b->end_eip = next;
      b->side.clear();
      stubs.clear();
      break;
    }
    ++b->n_insns;
    pc = next;
    if (sti_window_after_next && !inline_sti && !ended) {
      window_exit(pc);  // the STI shadow covered the instruction just emitted
      sti_window_after_next = false;
    }
    if (!ended && b->n_insns >= max_insns) {
      direct_exit(pc, pc - 1);
      ended = true;
    }
    if (pc - eip >= code.first_page_bytes && !ended) {  // the end of the (linear) page
      direct_exit(pc, pc - 1);
      ended = true;
    }
  }
  // Exit stubs.
  for (auto& s : stubs) {
    Emitter::patch_rel32(s.site, e.pos());
    if (s.branch && t_seg.limits) {
      e.ins(ZYDIS_MNEMONIC_MOV, {R(kR13D), I(static_cast<std::int32_t>(s.target))});
      check_branch_target(e, ZYDIS_REGISTER_R13);
    }
    store_ctx32(e, kOffNextEip, s.target);
    store_ctx64(e, kOffReason, s.reason);
    if (s.chainable) {
      // lea r13, [rip + (site - next)] ; mov [r15+patch], r13
      e.b(0x4c);
      e.b(0x8d);
      e.b(0x2d);
      e.d(static_cast<std::uint32_t>(static_cast<std::int32_t>(s.site - (e.pos() + 4))));
      e.ins(ZYDIS_MNEMONIC_MOV, {M(ZYDIS_REGISTER_R15, kOffPatch, 8), R(ZYDIS_REGISTER_R13)});
    } else {
      store_ctx64(e, kOffPatch, 0);
    }
    e.jmp(exit_);
  }
  if (!e.ok()) throw std::runtime_error("bt-swmmu: translation cache overflow");
  if (!b->special) b->end_eip = pc;
  b->host_size = static_cast<std::uint32_t>(e.pos() - b->host);
  const bool monitor_block = b->special && status == TranslateStatus::Special && !transient;
  if (monitor_block) {
    // A block that is just its special instruction: entered (by chains and
    // the lookup table too) like any block, it calls the monitor.
    e = Emitter(b->host, cache_end_);
    b->entry = e.pos();
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13D), M(ZYDIS_REGISTER_R15, kPollOffset, 4)});
    special_exit(eip);
    if (!e.ok()) throw std::runtime_error("bt-swmmu: translation cache overflow");
    b->side.clear();
    b->swaps.clear();
    b->host_size = static_cast<std::uint32_t>(e.pos() - b->host);
    cur_ = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(e.pos()) + 15) & ~std::uintptr_t(15));
    by_host_[reinterpret_cast<std::uintptr_t>(b->host)] = b;
  } else if (b->special) {
    b->host_size = 0;
    b->entry = nullptr;
  } else {
    cur_ = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(e.pos()) + 15) & ~std::uintptr_t(15));
    by_host_[reinterpret_cast<std::uintptr_t>(b->host)] = b;
    ++stats.blocks_translated;
    stats.guest_insns_translated += b->n_insns;
  }
  if (!transient && (status == TranslateStatus::Ok || status == TranslateStatus::Special)) {
    blocks_[Key{eip, code.pa_page[0] | (linear(eip) & 0xfff), tkey, cs_base}] = b;
    for (int i = 0; i < b->n_pages; ++i) by_page_[b->pa_page[i]].push_back(b);
  }
  *out = b;
  all_.push_back(std::move(blk));
  return status;
}

}  // namespace modevisor::bt
