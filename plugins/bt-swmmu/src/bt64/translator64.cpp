#include "bt64/translator64.hpp"

#include <sys/mman.h>

#include <array>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "emitter.hpp"
#include "encoder_operands.hpp"
#include "fpu_instructions.hpp"
#include "sensitive_instructions.hpp"

namespace modevisor::bt::bt64 {

namespace {

using encode::I;
using encode::M;
using encode::R;

// Host registers translated code reserves (the guest's R12-R15 live in the
// context; its RSP in r14).
constexpr ZydisRegister kCtx = ZYDIS_REGISTER_R15;
constexpr ZydisRegister kA = ZYDIS_REGISTER_R12;  // scratch: slot bias, stand-in, branch target
constexpr ZydisRegister kB = ZYDIS_REGISTER_R13;  // scratch: guest address, host address
constexpr ZydisRegister kGuestRsp = ZYDIS_REGISTER_R14;

constexpr std::int32_t kOffGpr = offsetof(Context64, gpr);
constexpr std::int32_t kOffNext = offsetof(Context64, next_rip);
constexpr std::int32_t kOffPatch = offsetof(Context64, patch_site);
constexpr std::int32_t kOffReason = offsetof(Context64, exit_reason);
constexpr std::int32_t kOffSpill = offsetof(Context64, spill);
constexpr std::int32_t kOffRcxSpill = offsetof(Context64, rcx_spill);
constexpr std::int32_t kOffHits = offsetof(Context64, indirect_hits);
constexpr std::int32_t gpr_slot(unsigned i) { return kOffGpr + static_cast<std::int32_t>(8 * i); }

// General registers by encoding, by width.
constexpr std::array<ZydisRegister, 16> kGpr64 = {
    ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RBX,
    ZYDIS_REGISTER_RSP, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI,
    ZYDIS_REGISTER_R8,  ZYDIS_REGISTER_R9,  ZYDIS_REGISTER_R10, ZYDIS_REGISTER_R11,
    ZYDIS_REGISTER_R12, ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};
constexpr std::array<ZydisRegister, 16> kGpr32 = {
    ZYDIS_REGISTER_EAX,  ZYDIS_REGISTER_ECX,  ZYDIS_REGISTER_EDX,  ZYDIS_REGISTER_EBX,
    ZYDIS_REGISTER_ESP,  ZYDIS_REGISTER_EBP,  ZYDIS_REGISTER_ESI,  ZYDIS_REGISTER_EDI,
    ZYDIS_REGISTER_R8D,  ZYDIS_REGISTER_R9D,  ZYDIS_REGISTER_R10D, ZYDIS_REGISTER_R11D,
    ZYDIS_REGISTER_R12D, ZYDIS_REGISTER_R13D, ZYDIS_REGISTER_R14D, ZYDIS_REGISTER_R15D};
constexpr std::array<ZydisRegister, 16> kGpr16 = {
    ZYDIS_REGISTER_AX,   ZYDIS_REGISTER_CX,   ZYDIS_REGISTER_DX,   ZYDIS_REGISTER_BX,
    ZYDIS_REGISTER_SP,   ZYDIS_REGISTER_BP,   ZYDIS_REGISTER_SI,   ZYDIS_REGISTER_DI,
    ZYDIS_REGISTER_R8W,  ZYDIS_REGISTER_R9W,  ZYDIS_REGISTER_R10W, ZYDIS_REGISTER_R11W,
    ZYDIS_REGISTER_R12W, ZYDIS_REGISTER_R13W, ZYDIS_REGISTER_R14W, ZYDIS_REGISTER_R15W};
constexpr std::array<ZydisRegister, 16> kGpr8 = {
    ZYDIS_REGISTER_AL,   ZYDIS_REGISTER_CL,   ZYDIS_REGISTER_DL,   ZYDIS_REGISTER_BL,
    ZYDIS_REGISTER_SPL,  ZYDIS_REGISTER_BPL,  ZYDIS_REGISTER_SIL,  ZYDIS_REGISTER_DIL,
    ZYDIS_REGISTER_R8B,  ZYDIS_REGISTER_R9B,  ZYDIS_REGISTER_R10B, ZYDIS_REGISTER_R11B,
    ZYDIS_REGISTER_R12B, ZYDIS_REGISTER_R13B, ZYDIS_REGISTER_R14B, ZYDIS_REGISTER_R15B};

// The encoding index (0-15) of a general register and its width in bits;
// -1 for AH..BH and anything that is not a general register.
int gpr_index(ZydisRegister r, unsigned* bits = nullptr) {
  for (unsigned i = 0; i < 16; ++i) {
    if (kGpr64[i] == r) { if (bits) *bits = 64; return static_cast<int>(i); }
    if (kGpr32[i] == r) { if (bits) *bits = 32; return static_cast<int>(i); }
    if (kGpr16[i] == r) { if (bits) *bits = 16; return static_cast<int>(i); }
    if (kGpr8[i] == r) { if (bits) *bits = 8; return static_cast<int>(i); }
  }
  return -1;
}

ZydisRegister gpr_of_width(unsigned index, unsigned bits) {
  switch (bits) {
    case 64: return kGpr64[index];
    case 32: return kGpr32[index];
    case 16: return kGpr16[index];
    default: return kGpr8[index];
  }
}

bool is_context_register(int index) { return index >= 12; }  // guest R12-R15 live in the context
bool is_high_byte(ZydisRegister r) {
  return r == ZYDIS_REGISTER_AH || r == ZYDIS_REGISTER_CH || r == ZYDIS_REGISTER_DH || r == ZYDIS_REGISTER_BH;
}

// A guest register the host holds as is, or in r14 (RSP).
ZydisRegister host_register(ZydisRegister guest) {
  unsigned bits = 0;
  const int i = gpr_index(guest, &bits);
  if (i == 4) return gpr_of_width(14, bits);
  return guest;
}

enum class Kind {
  Nothing, Plain, Special, Jump, Jcc, Loop, Call, Ret, IndirectJump, IndirectCall, Push, Pop, Leave,
  ClearIf,    // CLI at CPL 0: Context64::vif = 0
  PushFlags,  // PUSHFQ: the guest's RFLAGS image from the host's flags and the context
};

// `stack_bits`: 64 in 64-bit mode, 32 in compatibility mode (flat 32-bit
// stack, SS.B = 1): the near branches and stack operations translated.
// `gate`: which FPU/SIMD instructions the guest's CR0/CR4 let run as they
// are (the others, and what the CPU model does not offer, are the monitor's).
// `supervisor`: the block is for CPL 0 (CLI allowed whatever IOPL is).
Kind classify(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, unsigned stack_bits,
              FpuGate gate, bool supervisor) {
  const bool stack_width = insn.operand_width == stack_bits;
  // IF is the context's (Context64::vif): CLI and PUSHFQ need no monitor.
  // (STI, POPFQ and IRETQ may open an interrupt window: still the monitor's.)
  if (insn.mnemonic == ZYDIS_MNEMONIC_CLI && supervisor) return Kind::ClearIf;
  if (insn.mnemonic == ZYDIS_MNEMONIC_PUSHFQ && stack_bits == 64) return Kind::PushFlags;
  if (insn.attributes & ZYDIS_ATTRIB_IS_PRIVILEGED) return Kind::Special;
  const FpuIsa isa = insn.mnemonic == ZYDIS_MNEMONIC_POPCNT ? FpuIsa::None : fpu_isa(insn, ops);
  if (isa != FpuIsa::None && !gate_open(gate, isa)) return Kind::Special;
  if (insn.encoding != ZYDIS_INSTRUCTION_ENCODING_LEGACY) return Kind::Special;  // VEX/EVEX: no AVX offered
  // FXSAVE64/FXRSTOR64 are on the shared list for BT32 (invalid outside 64-bit mode).
  if (monitor_emulates(insn.mnemonic) && isa != FpuIsa::Fxsr) return Kind::Special;
  // ENDBR32/64 are NOPs while CET is off (the CPU model offers no CET).
  if (insn.mnemonic == ZYDIS_MNEMONIC_ENDBR32 || insn.mnemonic == ZYDIS_MNEMONIC_ENDBR64) return Kind::Nothing;
  // x87/MMX/SSE/SSE2 and FXSAVE/FXRSTOR run on the guest's FPU state (loaded
  // lazily, see Context64::fpu_load): only their operands are checked below.
  const bool fpu = isa != FpuIsa::None;
  if (!fpu) switch (insn.mnemonic == ZYDIS_MNEMONIC_POPCNT ? ZYDIS_CATEGORY_BITBYTE : insn.meta.category) {  // Zydis files POPCNT under SSE
    case ZYDIS_CATEGORY_BINARY: case ZYDIS_CATEGORY_BITBYTE: case ZYDIS_CATEGORY_CALL:
    case ZYDIS_CATEGORY_CMOV: case ZYDIS_CATEGORY_COND_BR: case ZYDIS_CATEGORY_CONVERT:
    case ZYDIS_CATEGORY_DATAXFER: case ZYDIS_CATEGORY_FLAGOP: case ZYDIS_CATEGORY_LOGICAL:
    case ZYDIS_CATEGORY_MISC: case ZYDIS_CATEGORY_NOP: case ZYDIS_CATEGORY_WIDENOP: case ZYDIS_CATEGORY_POP:
    case ZYDIS_CATEGORY_PUSH: case ZYDIS_CATEGORY_RET: case ZYDIS_CATEGORY_ROTATE:
    case ZYDIS_CATEGORY_SEMAPHORE: case ZYDIS_CATEGORY_SETCC: case ZYDIS_CATEGORY_SHIFT:
    case ZYDIS_CATEGORY_UNCOND_BR: case ZYDIS_CATEGORY_LZCNT: case ZYDIS_CATEGORY_PREFETCH:
    // TZCNT (the VEX forms of BMI1 are refused above).  LZCNT and TZCNT run as the
    // host runs them, so the CPU model must offer ABM and BMI1 where the host has them.
    case ZYDIS_CATEGORY_BMI1:
      break;
    default:
      return Kind::Special;
  }
  if (insn.meta.category == ZYDIS_CATEGORY_STRINGOP) return Kind::Special;
  // Hints with an address they never access (multi-byte NOPs, prefetches):
  // nothing to run, and their address must not be confined (it may be any value).
  if (insn.meta.category == ZYDIS_CATEGORY_NOP || insn.meta.category == ZYDIS_CATEGORY_WIDENOP ||
      insn.meta.category == ZYDIS_CATEGORY_PREFETCH)
    return Kind::Nothing;
  // Far JMP/CALL/RET load CS: the monitor's.
  if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return Kind::Special;
  switch (insn.mnemonic) {
    case ZYDIS_MNEMONIC_JMP:
      if (ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) return Kind::Jump;
      if (ops[0].type == ZYDIS_OPERAND_TYPE_POINTER || !stack_width) return Kind::Special;  // far
      return (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[0].size != stack_bits) ? Kind::Special
                                                                                      : Kind::IndirectJump;
    case ZYDIS_MNEMONIC_CALL:
      if (ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) return Kind::Call;
      if (ops[0].type == ZYDIS_OPERAND_TYPE_POINTER || !stack_width) return Kind::Special;
      if (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[0].size != stack_bits) return Kind::Special;
      return Kind::IndirectCall;
    case ZYDIS_MNEMONIC_RET: return stack_width ? Kind::Ret : Kind::Special;
    case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE: case ZYDIS_MNEMONIC_LOOPNE:
    case ZYDIS_MNEMONIC_JRCXZ: case ZYDIS_MNEMONIC_JECXZ:
      return Kind::Loop;
    case ZYDIS_MNEMONIC_PUSH:
      if (!stack_width) return Kind::Special;
      if (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY || ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) return Kind::Push;
      return gpr_index(ops[0].reg.value) >= 0 ? Kind::Push : Kind::Special;  // not a segment register
    case ZYDIS_MNEMONIC_POP:
      // POP to memory forms its address with RSP already moved: the monitor's.
      return stack_width && ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER && gpr_index(ops[0].reg.value) >= 0
                 ? Kind::Pop : Kind::Special;
    case ZYDIS_MNEMONIC_LEAVE: return stack_width ? Kind::Leave : Kind::Special;
    default: break;
  }
  if (insn.meta.category == ZYDIS_CATEGORY_COND_BR) return Kind::Jcc;
  for (unsigned i = 0; i < insn.operand_count; ++i) {
    const auto& o = ops[i];
    if (o.type == ZYDIS_OPERAND_TYPE_REGISTER) {
      const auto c = ZydisRegisterGetClass(o.reg.value);
      if (c == ZYDIS_REGCLASS_SEGMENT || c == ZYDIS_REGCLASS_CONTROL || c == ZYDIS_REGCLASS_DEBUG)
        return Kind::Special;
      if (!fpu && (c == ZYDIS_REGCLASS_X87 || c == ZYDIS_REGCLASS_MMX || c == ZYDIS_REGCLASS_XMM))
        return Kind::Special;
      if (o.reg.value == ZYDIS_REGISTER_RIP || o.reg.value == ZYDIS_REGISTER_EIP) return Kind::Special;
      // An implicit stack pointer (other than the branches and stack
      // operations above) is the monitor's.
      if (gpr_index(o.reg.value) == 4 && o.visibility == ZYDIS_OPERAND_VISIBILITY_HIDDEN) return Kind::Special;
    }
    if (o.type == ZYDIS_OPERAND_TYPE_MEMORY && o.visibility != ZYDIS_OPERAND_VISIBILITY_EXPLICIT)
      return Kind::Special;
    if (o.type == ZYDIS_OPERAND_TYPE_POINTER) return Kind::Special;
  }
  return Kind::Plain;
}

// Emission of one block.  Every sequence below keeps the host's RFLAGS,
// which hold the guest's arithmetic flags: LEA, MOV, SHRX, MOVZX, JRCXZ.
class BlockEmitter {
 public:
  BlockEmitter(Emitter& e, std::uint8_t* exit, Block64& block)
      : e_(e), exit_(exit), block_entry_(block.entry), swaps_(&block.swaps), compat_(block.compat) {}

  // A stack slot's bytes, and kA / RSP at that width.
  unsigned slot() const { return compat_ ? 4 : 8; }
  bool compat() const { return compat_; }
  // Stage mode: memory operands address this host buffer instead.
  void set_stage(const void* stage) { stage_ = stage; }
  ZydisRegister a_slot() const { return compat_ ? ZYDIS_REGISTER_R12D : kA; }
  ZydisRegister rsp_slot() const { return compat_ ? ZYDIS_REGISTER_R14D : kGuestRsp; }
  // A near branch target: EIP wraps at 4 GiB in compatibility mode.
  std::uint64_t target(std::uint64_t next, std::int64_t rel) const {
    const std::uint64_t t = next + static_cast<std::uint64_t>(rel);
    return compat_ ? static_cast<std::uint32_t>(t) : t;
  }

  // kB = the guest-linear address of memory operand `op` of an instruction
  // whose next RIP is `next_rip` (kA may be used).
  bool guest_address(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op, std::uint64_t next_rip) {
    const bool segment_base = insn.mnemonic != ZYDIS_MNEMONIC_LEA;  // LEA ignores segments
    const bool a32 = insn.address_width == 32;
    const std::int64_t disp = op.mem.disp.has_displacement ? op.mem.disp.value : 0;
    if (op.mem.base == ZYDIS_REGISTER_RIP || op.mem.base == ZYDIS_REGISTER_EIP) {
      std::uint64_t la = next_rip + static_cast<std::uint64_t>(disp);
      if (a32) la = static_cast<std::uint32_t>(la);
      load_constant(kB, la);
    } else if (op.mem.base == ZYDIS_REGISTER_NONE && op.mem.index == ZYDIS_REGISTER_NONE) {
      load_constant(kB, a32 ? static_cast<std::uint32_t>(disp) : static_cast<std::uint64_t>(disp));
    } else {
      const unsigned width = a32 ? 32 : 64;
      ZydisRegister base = ZYDIS_REGISTER_NONE, index = ZYDIS_REGISTER_NONE;
      if (op.mem.base != ZYDIS_REGISTER_NONE) {
        const int b = gpr_index(op.mem.base);
        if (b < 0) return false;
        if (is_context_register(b)) {
          e_.ins(ZYDIS_MNEMONIC_MOV, {R(kB), M(kCtx, gpr_slot(b), 8)});
          base = a32 ? ZYDIS_REGISTER_R13D : kB;
        } else {
          base = host_register(gpr_of_width(static_cast<unsigned>(b), width));
        }
      }
      if (op.mem.index != ZYDIS_REGISTER_NONE) {
        const int x = gpr_index(op.mem.index);
        if (x < 0) return false;
        if (is_context_register(x)) {
          e_.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, gpr_slot(x), 8)});
          index = a32 ? ZYDIS_REGISTER_R12D : kA;
        } else {
          index = gpr_of_width(static_cast<unsigned>(x), width);
        }
      }
      if (!e_.ins(ZYDIS_MNEMONIC_LEA, {R(a32 ? ZYDIS_REGISTER_R13D : kB), M(base, disp, 0, index, op.mem.scale)},
                  false, a32))
        return false;
    }
    if (segment_base && (op.mem.segment == ZYDIS_REGISTER_FS || op.mem.segment == ZYDIS_REGISTER_GS)) {
      const std::int32_t s = op.mem.segment == ZYDIS_REGISTER_FS ? 0 : 1;
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, offsetof(Context64, seg_base) + 8 * s, 8)});
      e_.ins(ZYDIS_MNEMONIC_LEA, {R(kB), M(kB, 0, 0, kA, 1)});
    }
    return e_.ok();
  }

  // kA = the slot bias of the guest address in `at` (kB or r14): the host
  // address is then kA + at.
  void slot_bias(ZydisRegister at) {
    e_.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R12D), I(kSlotShift)});
    e_.ins(ZYDIS_MNEMONIC_SHRX, {R(kA), R(at), R(kA)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, kSlotTableOffset, 8, kA, 8)});
  }

  // kB = the host address of the guest address in `at`.
  void host_address(ZydisRegister at) {
    slot_bias(at);
    e_.ins(ZYDIS_MNEMONIC_LEA, {R(kB), M(kA, 0, 0, at, 1)});
  }

  void load_constant(ZydisRegister r, std::uint64_t v) {
    if (v <= 0xffffffffu) {
      // A 32-bit move zero-extends.
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(gpr_of_width(static_cast<unsigned>(gpr_index(r)), 32)),
                                  I(static_cast<std::int64_t>(static_cast<std::uint32_t>(v)))});
    } else {
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(r), I(static_cast<std::int64_t>(v))});
    }
  }

  // A plain instruction: registers renamed (RSP -> r14, R12-R15 through a
  // stand-in loaded from and stored back to the context), its memory operand
  // confined.
  bool plain(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, std::uint64_t next_rip) {
    ZydisEncoderRequest req;
    if (!ZYAN_SUCCESS(ZydisEncoderDecodedInstructionToEncoderRequest(&insn, ops, insn.operand_count_visible, &req)))
      return false;
    req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
    req.address_size_hint = ZYDIS_ADDRESS_SIZE_HINT_NONE;
    req.prefixes &= ~(ZYDIS_ATTRIB_HAS_SEGMENT | ZYDIS_ATTRIB_HAS_SEGMENT_CS | ZYDIS_ATTRIB_HAS_SEGMENT_SS |
                      ZYDIS_ATTRIB_HAS_SEGMENT_DS | ZYDIS_ATTRIB_HAS_SEGMENT_ES | ZYDIS_ATTRIB_HAS_SEGMENT_FS |
                      ZYDIS_ATTRIB_HAS_SEGMENT_GS | ZYDIS_ATTRIB_HAS_ADDRESSSIZE);
    int mem = -1;
    bool high_byte = false;
    struct StandIn { int guest; ZydisRegister host; bool written; };
    std::array<StandIn, 2> stand_ins{};
    unsigned n_stand_ins = 0;
    for (unsigned i = 0; i < req.operand_count; ++i) {
      if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY) mem = static_cast<int>(i);
      if (ops[i].type == ZYDIS_OPERAND_TYPE_REGISTER && is_high_byte(ops[i].reg.value)) high_byte = true;
    }
    // [r12 + r13] needs REX, which AH..BH cannot sit beside: the host
    // address goes into a legacy register the instruction does not name,
    // its guest value in the context's spill slot meanwhile.
    ZydisRegister borrowed = ZYDIS_REGISTER_NONE;
    if (high_byte && mem >= 0) {
      for (ZydisRegister c : {ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RBX,
                              ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RAX}) {
        if (!names(insn, ops, c)) {
          borrowed = c;
          break;
        }
      }
      if (borrowed == ZYDIS_REGISTER_NONE) return false;
    }
    const bool lea = insn.mnemonic == ZYDIS_MNEMONIC_LEA;
    if (mem >= 0 && !lea && stage_) {
      // On the stage: the operand's bytes are at a host address the monitor
      // filled (no guest address, no confinement); kA = 0 so [kA + kB] is it.
      load_constant(kB, reinterpret_cast<std::uint64_t>(stage_));
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R12D), I(0)});
    } else if (mem >= 0 && !lea) {
      if (!guest_address(insn, ops[mem], next_rip)) return false;
      slot_bias(kB);
    }
    // The stand-ins: kA once the host address is folded into kB; kA and kB
    // when there is no memory operand.
    for (unsigned i = 0; i < req.operand_count; ++i) {
      if (ops[i].type != ZYDIS_OPERAND_TYPE_REGISTER) continue;
      unsigned bits = 0;
      const int g = gpr_index(ops[i].reg.value, &bits);
      if (g < 0 || !is_context_register(g)) continue;
      StandIn* s = nullptr;
      for (unsigned k = 0; k < n_stand_ins; ++k)
        if (stand_ins[k].guest == g) s = &stand_ins[k];
      if (!s) {
        const unsigned limit = (mem >= 0 && !lea) ? 1 : 2;
        if (n_stand_ins == limit) return false;
        s = &stand_ins[n_stand_ins++];
        s->guest = g;
        s->host = n_stand_ins == 1 ? kA : kB;
        s->written = false;
      }
      s->written |= (ops[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0;
      req.operands[i].reg.value = gpr_of_width(s->host == kA ? 12 : 13, bits);
    }
    if (lea && n_stand_ins == 2) return false;
    for (unsigned i = 0; i < req.operand_count; ++i) {
      auto& o = req.operands[i];
      if (o.type == ZYDIS_OPERAND_TYPE_REGISTER && gpr_index(ops[i].reg.value) >= 0 &&
          !is_context_register(gpr_index(ops[i].reg.value)))
        o.reg.value = host_register(o.reg.value);
    }
    if (borrowed != ZYDIS_REGISTER_NONE) {
      e_.ins(ZYDIS_MNEMONIC_LEA, {R(kB), M(kA, 0, 0, kB, 1)});
      e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, offsetof(Context64, spill), 8), R(borrowed)});
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(borrowed), R(kB)});
      auto& o = req.operands[mem].mem;
      o.base = borrowed;
      o.index = ZYDIS_REGISTER_NONE;
      o.scale = 0;
      o.displacement = 0;
      const auto begin = static_cast<std::uint32_t>(e_.pos() - block_entry_);
      if (!e_.raw(req)) return false;
      swaps_->push_back({begin, static_cast<std::uint32_t>(e_.pos() - block_entry_), gpr_index(borrowed)});
      return e_.ins(ZYDIS_MNEMONIC_MOV, {R(borrowed), M(kCtx, offsetof(Context64, spill), 8)});
    }
    if (mem >= 0 && !lea) {
      auto& o = req.operands[mem].mem;
      if (n_stand_ins > 0) {
        e_.ins(ZYDIS_MNEMONIC_LEA, {R(kB), M(kA, 0, 0, kB, 1)});
        o.base = kB;
        o.index = ZYDIS_REGISTER_NONE;
        o.scale = 0;
      } else {
        o.base = kA;
        o.index = kB;
        o.scale = 1;
      }
      o.displacement = 0;
    } else if (lea) {
      // LEA computes a guest address without touching memory: kB holds it,
      // then it goes to the destination.
      if (!guest_address(insn, ops[1], next_rip)) return false;
      // Only the destination can be a stand-in here (the address is formed).
      req.operands[1].mem.base = kB;
      req.operands[1].mem.index = ZYDIS_REGISTER_NONE;
      req.operands[1].mem.scale = 0;
      req.operands[1].mem.displacement = 0;
      req.operands[1].mem.size = 8;  // the encoder wants LEA's operand as wide as its address (r13: 64-bit)
    }
    for (unsigned k = 0; k < n_stand_ins; ++k)
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(stand_ins[k].host), M(kCtx, gpr_slot(stand_ins[k].guest), 8)});
    if (!e_.raw(req)) return false;
    for (unsigned k = 0; k < n_stand_ins; ++k)
      if (stand_ins[k].written)
        e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, gpr_slot(stand_ins[k].guest), 8), R(stand_ins[k].host)});
    return e_.ok();
  }

  // kA = the value of a stack-width register or memory operand (kB scratch).
  bool operand_value(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand& op, std::uint64_t next_rip) {
    if (op.type == ZYDIS_OPERAND_TYPE_REGISTER) {
      const int g = gpr_index(op.reg.value);
      if (g < 0) return false;
      if (is_context_register(g)) return e_.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, gpr_slot(g), 8)});
      return e_.ins(ZYDIS_MNEMONIC_MOV, {R(a_slot()), R(host_register(op.reg.value))});
    }
    if (op.type != ZYDIS_OPERAND_TYPE_MEMORY || !guest_address(insn, op, next_rip)) return false;
    slot_bias(kB);
    return e_.ins(ZYDIS_MNEMONIC_MOV, {R(a_slot()), M(kA, 0, slot(), kB, 1)});
  }

  // Push the stack slot `store` writes at [kB] (kA free for it); RSP moves
  // last, so a fault leaves the guest's RSP as it was.  (A 32-bit stack
  // wraps at 4 GiB: its addresses are formed with 32-bit LEAs.)
  template <class Store>
  bool push(Store&& store) {
    const auto down = -static_cast<std::int64_t>(slot());
    e_.ins(ZYDIS_MNEMONIC_LEA, {R(compat_ ? ZYDIS_REGISTER_R13D : kB), M(kGuestRsp, down, 0)});
    host_address(kB);
    store();
    return e_.ins(ZYDIS_MNEMONIC_LEA, {R(rsp_slot()), M(kGuestRsp, down, 0)});
  }
  // Store kA's stack slot at [kB] (push's store).
  void store_a() { e_.ins(ZYDIS_MNEMONIC_MOV, {M(kB, 0, slot()), R(a_slot())}); }

  // kA = the stack slot at the stack top (RSP not moved yet).
  void load_stack_top() {
    if (compat_) {
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13D), R(ZYDIS_REGISTER_R14D)});
      slot_bias(kB);
      e_.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R12D), M(kA, 0, 4, kB, 1)});
      return;
    }
    slot_bias(kGuestRsp);
    e_.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kA, 0, 8, kGuestRsp, 1)});
  }
  // RSP moved up by `bytes`.
  void release_stack(std::int64_t bytes) { e_.ins(ZYDIS_MNEMONIC_LEA, {R(rsp_slot()), M(kGuestRsp, bytes, 0)}); }

  // Leave for `target`: a jmp rel32 the dispatcher may patch to the target's
  // block, first pointing at the exit stub right after it.
  void direct_exit(std::uint64_t target) {
    std::uint8_t* site = e_.jmp(e_.pos() + 5);
    load_constant(kB, target);
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffNext, 8), R(kB)});
    rip_relative_lea(kB, site);
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffPatch, 8), R(kB)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffReason, 8), I(kExit64Dispatch)});
    e_.jmp(exit_);
  }

  // An exit without chaining (kExit64Special: the instruction at `rip`).
  void exit_to(std::uint64_t rip, std::uint64_t reason) {
    load_constant(kB, rip);
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffNext, 8), R(kB)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffPatch, 8), I(0)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffReason, 8), I(static_cast<std::int64_t>(reason))});
    e_.jmp(exit_);
  }

  // Continue at the guest RIP in kA through the indirect-branch table: an
  // entry holds -(rip + 1), so entry + rip + 1 == 0 on a hit, tested with
  // JRCXZ on a borrowed RCX (the flags stay the guest's).
  void indirect(std::uint64_t /*from*/) {
    e_.ins(ZYDIS_MNEMONIC_MOVZX, {R(ZYDIS_REGISTER_R13D), R(ZYDIS_REGISTER_R12W)});
    e_.ins(ZYDIS_MNEMONIC_LEA, {R(kB), M(kB, 0, 0, kB, 1)});  // entries are 16 bytes: index * 2 * 8
    e_.ins(ZYDIS_MNEMONIC_LEA, {R(kB), M(kCtx, kFastOffset64, 0, kB, 8)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffRcxSpill, 8), R(ZYDIS_REGISTER_RCX)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), M(kB, 0, 8)});
    e_.ins(ZYDIS_MNEMONIC_LEA, {R(ZYDIS_REGISTER_RCX), M(ZYDIS_REGISTER_RCX, 1, 0, kA, 1)});
    e_.b(0xe3);  // jrcxz hit
    std::uint8_t* hit = e_.pos();
    e_.b(0);
    e_.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), M(kCtx, kOffRcxSpill, 8)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffNext, 8), R(kA)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffPatch, 8), I(0)});
    e_.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffReason, 8), I(kExit64Indirect)});
    e_.jmp(exit_);
    *hit = static_cast<std::uint8_t>(e_.pos() - (hit + 1));
    e_.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RCX), M(kCtx, kOffRcxSpill, 8)});
    e_.ins(ZYDIS_MNEMONIC_JMP, {M(kB, 8, 8)});
  }

  void rip_relative_lea(ZydisRegister r, const void* target) {
    // lea r, [rip + rel32]: REX.W (+R for r8-r15), 8D, modrm 00 reg 101
    const int idx = gpr_index(r);
    e_.b(static_cast<std::uint8_t>(0x48 | (idx >= 8 ? 4 : 0)));
    e_.b(0x8d);
    e_.b(static_cast<std::uint8_t>(0x05 | ((idx & 7) << 3)));
    e_.rel32(target);
  }

  Emitter& e() { return e_; }

 private:
  // Whether the instruction names `r64` or a part of it, explicitly or not.
  static bool names(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, ZydisRegister r64) {
    auto is = [&](ZydisRegister r) {
      return r != ZYDIS_REGISTER_NONE && ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r) == r64;
    };
    for (unsigned i = 0; i < insn.operand_count; ++i) {
      if (ops[i].type == ZYDIS_OPERAND_TYPE_REGISTER && is(ops[i].reg.value)) return true;
      if (ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY && (is(ops[i].mem.base) || is(ops[i].mem.index))) return true;
    }
    return false;
  }

  Emitter& e_;
  std::uint8_t* exit_;
  std::uint8_t* block_entry_;
  std::vector<Block64::Swap>* swaps_;
  bool compat_;
  const void* stage_ = nullptr;
};

}  // namespace

Translator64::Translator64(std::size_t cache_bytes) {
  cache_ = map_code_cache(cache_bytes, "bt64");
  cache_end_ = cache_ + cache_bytes;
  cur_ = cache_;
  ZydisDecoderInit(&decoder_, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  ZydisDecoderInit(&decoder_compat_, ZYDIS_MACHINE_MODE_LONG_COMPAT_32, ZYDIS_STACK_WIDTH_32);
  emit_routines();
}

Translator64::~Translator64() { munmap(cache_, static_cast<std::size_t>(cache_end_ - cache_)); }

void Translator64::emit_routines() {
  Emitter e(cur_, cache_end_);
  const ZydisRegister saved[6] = {ZYDIS_REGISTER_RBX, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_R12,
                                  ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};
  auto movabs_rax = [&](const void* p) {
    e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RAX), I(static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(p)))});
  };
  constexpr std::int32_t kOffFpuLoad = offsetof(Context64, fpu_load), kOffFpuLive = offsetof(Context64, fpu_live);
  // The guest's FPU/SSE state, loaded on a block's first use: FXRSTOR64,
  // then fpu_load points at a bare RET until the next exit.  Preserves the
  // guest's registers and flags (it runs between guest instructions).
  std::uint8_t* const fpu_ret = e.pos();
  e.ins(ZYDIS_MNEMONIC_RET, {});
  fpu_load_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_FXRSTOR64, {M(kCtx, offsetof(Context64, guest_fx), 512)});
  e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffFpuLive, 8), I(1)});
  e.ins(ZYDIS_MNEMONIC_PUSH, {R(ZYDIS_REGISTER_RAX)});
  movabs_rax(fpu_ret);
  e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffFpuLoad, 8), R(ZYDIS_REGISTER_RAX)});
  e.ins(ZYDIS_MNEMONIC_POP, {R(ZYDIS_REGISTER_RAX)});
  e.ins(ZYDIS_MNEMONIC_RET, {});
  // entry(rdi = context, rsi = host code): host callee-saved registers on
  // the host stack, the host's FPU control words kept, the guest's FPU
  // state unloaded, the guest's registers and flags loaded.
  entry_ = e.pos();
  for (auto r : saved) e.ins(ZYDIS_MNEMONIC_PUSH, {R(r)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(kCtx), R(ZYDIS_REGISTER_RDI)});
  e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, offsetof(Context64, host_rsp), 8), R(ZYDIS_REGISTER_RSP)});
  e.ins(ZYDIS_MNEMONIC_STMXCSR, {M(kCtx, offsetof(Context64, host_mxcsr), 4)});
  e.ins(ZYDIS_MNEMONIC_FNSTCW, {M(kCtx, offsetof(Context64, host_fcw), 2)});
  movabs_rax(fpu_load_);
  e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffFpuLoad, 8), R(ZYDIS_REGISTER_RAX)});
  e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffFpuLive, 8), I(0)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(kB), R(ZYDIS_REGISTER_RSI)});
  e.ins(ZYDIS_MNEMONIC_PUSH, {M(kCtx, offsetof(Context64, rflags), 8)});
  e.ins(ZYDIS_MNEMONIC_POPFQ, {});
  for (unsigned i = 0; i < 12; ++i) {
    if (i == 4) continue;
    e.ins(ZYDIS_MNEMONIC_MOV, {R(kGpr64[i]), M(kCtx, gpr_slot(i), 8)});
  }
  e.ins(ZYDIS_MNEMONIC_MOV, {R(kGuestRsp), M(kCtx, gpr_slot(4), 8)});
  e.ins(ZYDIS_MNEMONIC_JMP, {R(kB)});
  // exit: the guest's registers and flags to the context, the host's back.
  exit_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_PUSHFQ, {});
  e.ins(ZYDIS_MNEMONIC_POP, {M(kCtx, offsetof(Context64, rflags), 8)});
  for (unsigned i = 0; i < 12; ++i) {
    if (i == 4) continue;
    e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, gpr_slot(i), 8), R(kGpr64[i])});
  }
  e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, gpr_slot(4), 8), R(kGuestRsp)});
  // The fault handler resumes here: it stored the guest's registers itself.
  exit_from_signal_ = e.pos();
  e.ins(ZYDIS_MNEMONIC_CLD, {});
  // The guest's FPU state back to the context if a block loaded it, and the
  // host's control words (the monitor is C++).  The guest's flags are saved.
  e.ins(ZYDIS_MNEMONIC_CMP, {M(kCtx, kOffFpuLive, 8), I(0)});
  e.b(0x74);  // je not_loaded
  std::uint8_t* const not_loaded = e.pos();
  e.b(0);
  e.ins(ZYDIS_MNEMONIC_FXSAVE64, {M(kCtx, offsetof(Context64, guest_fx), 512)});
  e.ins(ZYDIS_MNEMONIC_FNINIT, {});
  e.ins(ZYDIS_MNEMONIC_LDMXCSR, {M(kCtx, offsetof(Context64, host_mxcsr), 4)});
  e.ins(ZYDIS_MNEMONIC_FLDCW, {M(kCtx, offsetof(Context64, host_fcw), 2)});
  e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffFpuLive, 8), I(0)});
  *not_loaded = static_cast<std::uint8_t>(e.pos() - (not_loaded + 1));
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RSP), M(kCtx, offsetof(Context64, host_rsp), 8)});
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RAX), M(kCtx, kOffReason, 8)});
  for (int i = 5; i >= 0; --i) e.ins(ZYDIS_MNEMONIC_POP, {R(saved[i])});
  e.ins(ZYDIS_MNEMONIC_RET, {});
  if (!e.ok()) throw std::runtime_error("bt64: emitting the entry/exit routines failed");
  cur_ = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(e.pos()) + 63) & ~std::uintptr_t(63));
  blocks_start_ = cur_;
}

std::uint64_t Translator64::enter(ContextBlock& block, const void* host) {
  using EntryFn = std::uint64_t (*)(Context64*, const void*);
  return reinterpret_cast<EntryFn>(entry_)(block.ctx(), host);
}

Block64* Translator64::find(std::uint64_t rip, bool compat, bool supervisor) const {
  auto it = blocks_.find(key_of(rip, compat, supervisor));
  return it == blocks_.end() ? nullptr : it->second;
}

void Translator64::chain(std::uint64_t site, const Block64* b) {
  Emitter::patch_rel32(reinterpret_cast<std::uint8_t*>(site), b->entry);
  chained_sites_.push_back(site);
  ++stats.chains;
}

void Translator64::unchain_all() {
  // A chainable exit's stub follows its rel32 (BlockEmitter::direct_exit).
  for (std::uint64_t site : chained_sites_) {
    auto* rel32 = reinterpret_cast<std::uint8_t*>(site);
    Emitter::patch_rel32(rel32, rel32 + 4);
  }
  chained_sites_.clear();
}

std::size_t Translator64::drop_code_page(std::uint64_t page) {
  std::size_t dropped = 0;
  auto on_page = [page](const Block64* b) { return b->code_pages[0] == page || b->code_pages[1] == page; };
  for (auto* map : {&blocks_, &staged_})
    for (auto it = map->begin(); it != map->end();) {
      if (on_page(it->second)) {
        it = map->erase(it);  // its code stays in the cache (unreachable) until flush()
        ++dropped;
      } else {
        ++it;
      }
    }
  unchain_all();
  stats.dropped_blocks += dropped;
  return dropped;
}

void Translator64::flush() {
  chained_sites_.clear();
  blocks_.clear();
  staged_.clear();
  by_host_.clear();
  all_.clear();
  cur_ = blocks_start_;
  ++stats.flushes;
}

Block64* Translator64::block_at(std::uintptr_t pc) const {
  auto it = by_host_.upper_bound(pc);
  if (it == by_host_.begin()) return nullptr;
  --it;
  Block64* b = it->second;
  return pc < reinterpret_cast<std::uintptr_t>(b->entry) + b->host_size ? b : nullptr;
}

std::uint64_t Translator64::guest_rip_at(const Block64* b, std::uintptr_t pc) const {
  const auto off = static_cast<std::uint32_t>(pc - reinterpret_cast<std::uintptr_t>(b->entry));
  std::uint64_t rip = b->rip;
  for (const auto& [host_off, guest] : b->side) {
    if (host_off > off) break;
    rip = guest;
  }
  return rip;
}

std::string Translator64::routine_at(std::uintptr_t pc) const {
  const std::pair<const char*, const std::uint8_t*> routines[] = {
      {"fpu_load", fpu_load_}, {"entry", entry_}, {"exit", exit_}, {"exit_from_signal", exit_from_signal_},
      {"blocks", blocks_start_}};
  const char* name = "before the routines";
  std::uintptr_t start = reinterpret_cast<std::uintptr_t>(cache_);
  for (const auto& [n, p] : routines)
    if (pc >= reinterpret_cast<std::uintptr_t>(p)) {
      name = n;
      start = reinterpret_cast<std::uintptr_t>(p);
    }
  char text[96];
  std::snprintf(text, sizeof text, "%s+%#lx", name, static_cast<unsigned long>(pc - start));
  return text;
}

Translate64Status Translator64::translate_staged(const CodeBytes& code, const void* stage, Block64** out) {
  *out = nullptr;
  const std::uint64_t key = key_of(code.rip, code.compat, code.supervisor);
  auto it = staged_.find(key);
  if (it != staged_.end() && it->second->code_pages[0] == code.page) {
    *out = it->second;
    return Translate64Status::Ok;
  }
  ZydisDecodedInstruction insn;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(code.compat ? &decoder_compat_ : &decoder_, code.bytes, code.size, &insn,
                                           ops)))
    return Translate64Status::Undefined;
  bool has_memory = false;
  for (unsigned i = 0; i < insn.operand_count_visible; ++i)
    has_memory |= ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY;
  if (classify(insn, ops, code.compat ? 32 : 64, fpu_gate_, code.supervisor) != Kind::Plain || !has_memory ||
      insn.mnemonic == ZYDIS_MNEMONIC_LEA)
    return Translate64Status::Special;
  auto block = std::make_unique<Block64>();
  block->rip = code.rip;
  block->compat = code.compat;
  block->supervisor = code.supervisor;
  Emitter e(cur_, cache_end_);
  block->entry = e.pos();
  BlockEmitter be(e, exit_, *block);
  be.set_stage(stage);
  block->side.emplace_back(0, code.rip);
  if (uses_fpu_state(insn, ops)) e.ins(ZYDIS_MNEMONIC_CALL, {M(kCtx, offsetof(Context64, fpu_load), 8)});
  if (!be.plain(insn, ops, code.rip + insn.length)) {
    e.reset_to(block->entry);
    return Translate64Status::Special;
  }
  be.exit_to(code.rip + insn.length, kExit64Dispatch);
  if (!e.ok()) throw std::runtime_error("bt64: the translation cache is full");
  block->end_rip = code.rip + insn.length;
  block->n_insns = 1;
  block->host_size = static_cast<std::uint32_t>(e.pos() - block->entry);
  cur_ = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(e.pos()) + 15) & ~std::uintptr_t(15));
  Block64* b = block.get();
  all_.push_back(std::move(block));
  b->code_pages[0] = code.page;
  staged_[key] = b;
  by_host_[reinterpret_cast<std::uintptr_t>(b->entry)] = b;
  *out = b;
  return Translate64Status::Ok;
}

Translate64Status Translator64::translate(const CodeBytes& code, Block64** out, std::uint32_t max_insns) {
  *out = nullptr;
  auto block = std::make_unique<Block64>();
  block->rip = code.rip;
  block->compat = code.compat;
  block->supervisor = code.supervisor;
  Emitter e(cur_, cache_end_);
  block->entry = e.pos();
  BlockEmitter be(e, exit_, *block);
  // The poll: a load from the poll page, which faults when revoked.
  e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_R13D), M(kCtx, kPollOffset64, 4)});
  std::size_t off = 0;
  std::uint32_t n = 0;
  bool ended = false;
  bool fpu_ready = false;  // the block called fpu_load already
  while (!ended) {
    const std::uint64_t rip = code.rip + off;
    if (n == max_insns) {
      be.direct_exit(rip);
      break;
    }
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    const ZyanStatus st = ZydisDecoderDecodeFull(code.compat ? &decoder_compat_ : &decoder_, code.bytes + off,
                                                 code.size - off, &insn, ops);
    if (!ZYAN_SUCCESS(st)) {
      // Bytes that run past what was fetched end the block before them; at
      // the start they are the caller's (a fetch fault or #UD).
      const bool truncated = st == ZYDIS_STATUS_NO_MORE_DATA;
      if (n == 0) {
        cur_ = block->entry;
        return truncated ? Translate64Status::FetchFault : Translate64Status::Undefined;
      }
      be.direct_exit(rip);
      break;
    }
    const std::uint64_t next = rip + insn.length;
    std::uint8_t* const insn_start = e.pos();
    block->side.emplace_back(static_cast<std::uint32_t>(insn_start - block->entry), rip);
    Kind kind = classify(insn, ops, code.compat ? 32 : 64, fpu_gate_, code.supervisor);
    bool ok = true;
    switch (kind) {
      case Kind::Nothing:
        break;
      case Kind::Plain: {
        const bool load_fpu = !fpu_ready && uses_fpu_state(insn, ops);
        if (load_fpu) e.ins(ZYDIS_MNEMONIC_CALL, {M(kCtx, offsetof(Context64, fpu_load), 8)});
        ok = be.plain(insn, ops, next);
        fpu_ready |= ok && load_fpu;
        break;
      }
      case Kind::Jump:
        be.direct_exit(be.target(next, ops[0].imm.value.s));
        ended = true;
        break;
      case Kind::Jcc: {
        const std::uint64_t target = be.target(next, ops[0].imm.value.s);
        const unsigned cc = insn.opcode & 0x0f;  // 7x and 0F 8x share the condition nibble
        std::uint8_t* taken = e.jcc(cc, e.pos());
        be.direct_exit(next);
        Emitter::patch_rel32(taken, e.pos());
        be.direct_exit(target);
        ended = true;
        break;
      }
      case Kind::Loop: {
        const std::uint64_t target = be.target(next, ops[0].imm.value.s);
        if (insn.address_width == 32) e.b(0x67);  // ECX as the count
        const std::uint8_t opcode = insn.mnemonic == ZYDIS_MNEMONIC_LOOPNE  ? 0xe0
                                    : insn.mnemonic == ZYDIS_MNEMONIC_LOOPE ? 0xe1
                                    : insn.mnemonic == ZYDIS_MNEMONIC_LOOP  ? 0xe2
                                                                            : 0xe3;
        e.b(opcode);
        e.b(5);  // over the jmp to the fall-through exit
        std::uint8_t* fall = e.jmp(e.pos());
        std::uint8_t* taken = e.jmp(e.pos());
        Emitter::patch_rel32(taken, e.pos());
        be.direct_exit(target);
        Emitter::patch_rel32(fall, e.pos());
        be.direct_exit(next);
        ended = true;
        break;
      }
      case Kind::Call:
        be.push([&] {
          be.load_constant(kA, next);
          be.store_a();
        });
        be.direct_exit(be.target(next, ops[0].imm.value.s));
        ended = true;
        break;
      case Kind::IndirectCall:
        // The target first (its operand may be addressed through RSP).
        ok = be.operand_value(insn, ops[0], next);
        e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffSpill, 8), R(kA)});
        be.push([&] {
          be.load_constant(kA, next);
          be.store_a();
        });
        e.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, kOffSpill, 8)});
        be.indirect(rip);
        ended = true;
        break;
      case Kind::IndirectJump:
        ok = be.operand_value(insn, ops[0], next);
        be.indirect(rip);
        ended = true;
        break;
      case Kind::Ret: {
        be.load_stack_top();
        const std::int64_t release = insn.operand_count_visible > 0 ? ops[0].imm.value.u : 0;
        be.release_stack(be.slot() + release);
        be.indirect(rip);
        ended = true;
        break;
      }
      case Kind::Push: {
        const auto& o = ops[0];
        if (o.type == ZYDIS_OPERAND_TYPE_MEMORY) {
          ok = be.operand_value(insn, o, next);
          e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffSpill, 8), R(kA)});
        }
        be.push([&] {
          if (o.type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
            e.ins(ZYDIS_MNEMONIC_MOV, {M(kB, 0, be.slot()), I(static_cast<std::int32_t>(o.imm.value.s))});
          } else if (o.type == ZYDIS_OPERAND_TYPE_MEMORY) {
            e.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, kOffSpill, 8)});
            be.store_a();
          } else if (is_context_register(gpr_index(o.reg.value))) {
            e.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, gpr_slot(gpr_index(o.reg.value)), 8)});
            be.store_a();
          } else {
            e.ins(ZYDIS_MNEMONIC_MOV, {M(kB, 0, be.slot()), R(host_register(o.reg.value))});  // PUSH RSP: the old value
          }
        });
        break;
      }
      case Kind::Pop: {
        be.load_stack_top();
        be.release_stack(be.slot());
        const int g = gpr_index(ops[0].reg.value);
        if (is_context_register(g))
          e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, gpr_slot(g), 8), R(kA)});
        else
          e.ins(ZYDIS_MNEMONIC_MOV, {R(host_register(ops[0].reg.value)), R(be.a_slot())});  // POP RSP: the value wins
        break;
      }
      case Kind::ClearIf:
        e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, offsetof(Context64, vif), 8), I(0)});
        break;
      case Kind::PushFlags:
        // The image = host arithmetic flags and DF | the context's other
        // flags | IF, formed with the host's flags put back before the push
        // (which may fault: the handler takes the guest's flags from the host's).
        e.ins(ZYDIS_MNEMONIC_PUSHFQ, {});
        e.ins(ZYDIS_MNEMONIC_POP, {M(kCtx, kOffRcxSpill, 8)});
        e.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, kOffRcxSpill, 8)});
        e.ins(ZYDIS_MNEMONIC_AND, {R(ZYDIS_REGISTER_R12D), I(0xcd5)});
        e.ins(ZYDIS_MNEMONIC_OR, {R(kA), M(kCtx, offsetof(Context64, sysflags), 8)});
        e.ins(ZYDIS_MNEMONIC_OR, {R(kA), M(kCtx, offsetof(Context64, vif), 8)});
        e.ins(ZYDIS_MNEMONIC_MOV, {M(kCtx, kOffSpill, 8), R(kA)});
        e.ins(ZYDIS_MNEMONIC_PUSH, {M(kCtx, kOffRcxSpill, 8)});
        e.ins(ZYDIS_MNEMONIC_POPFQ, {});
        be.push([&] {
          e.ins(ZYDIS_MNEMONIC_MOV, {R(kA), M(kCtx, kOffSpill, 8)});
          be.store_a();
        });
        break;
      case Kind::Leave:
        // RSP = RBP, then RBP popped: formed in scratch so a fault changes nothing.
        e.ins(ZYDIS_MNEMONIC_MOV, {R(be.compat() ? ZYDIS_REGISTER_R13D : kB),
                                   R(be.compat() ? ZYDIS_REGISTER_EBP : ZYDIS_REGISTER_RBP)});
        be.slot_bias(kB);
        e.ins(ZYDIS_MNEMONIC_MOV, {R(be.a_slot()), M(kA, 0, be.slot(), kB, 1)});
        e.ins(ZYDIS_MNEMONIC_LEA, {R(be.rsp_slot()), M(ZYDIS_REGISTER_RBP, be.slot(), 0)});
        e.ins(ZYDIS_MNEMONIC_MOV, {R(ZYDIS_REGISTER_RBP), R(kA)});
        break;
      case Kind::Special:
        ok = false;
        break;
    }
    if (!ok || !e.ok()) {
      // Not translatable here: the block ends before it, and the monitor
      // runs it (a block of its own that is only that exit).
      e.reset_to(insn_start);
      block->side.pop_back();
      // (Also what the translator cannot rewrite yet, e.g. AH..BH beside a
      // memory operand: the monitor's too.)
      if (n == 0) {
        cur_ = block->entry;
        return Translate64Status::Special;
      }
      be.exit_to(rip, kExit64Special);
      break;
    }
    ++n;
    off += insn.length;
    if (!ended && off >= code.size) {
      be.direct_exit(code.rip + off);
      break;
    }
  }
  if (!e.ok()) throw std::runtime_error("bt64: the translation cache is full");
  block->end_rip = code.rip + off;
  block->n_insns = n;
  block->host_size = static_cast<std::uint32_t>(e.pos() - block->entry);
  cur_ = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(e.pos()) + 15) & ~std::uintptr_t(15));
  ++stats.blocks;
  stats.guest_insns += n;
  Block64* b = block.get();
  all_.push_back(std::move(block));
  blocks_[key_of(b->rip, b->compat, b->supervisor)] = b;
  by_host_[reinterpret_cast<std::uintptr_t>(b->entry)] = b;
  *out = b;
  return Translate64Status::Ok;
}

}  // namespace modevisor::bt::bt64
