// LAR, LSL, VERR, VERW and ARPL: protected-mode instructions that ask about a
// selector's descriptor (ZF says whether the CPL and RPL may see it) or
// adjust an RPL; #UD in real and virtual-8086 mode.  The rules are the
// SDM's (and QEMU's helper_lar/lsl/verr/verw): no fault for a null, absent
// or out-of-table selector, only ZF clear.
#include "vcpu.hpp"

namespace modevisor::bt {

namespace {
constexpr std::uint64_t kZF = 0x40;

bool conforming_code(std::uint64_t raw) { return (raw >> 43 & 1) && (raw >> 42 & 1); }  // S, code, C
bool is_segment(std::uint64_t raw) { return (raw >> 44) & 1; }
unsigned type_of(std::uint64_t raw) { return (raw >> 40) & 0xf; }
unsigned dpl_of(std::uint64_t raw) { return (raw >> 45) & 3; }
}  // namespace

void Vcpu::descriptor_query(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                            std::uint16_t sel) {
  if (real_mode() || v86()) raise(6);
  const auto m = insn.mnemonic;
  bool visible = false;
  std::uint64_t raw = 0;
  if ((sel & 0xfffc) != 0) {
    const Outcome<std::uint32_t> at = locate_descriptor(sel, gdtr_, ldtr_, 0);
    if (at.ok()) {
      raw = read_qword(at.value(), false);
      const unsigned rpl = sel & 3;
      const bool privileged_enough = dpl_of(raw) >= cpl_ && dpl_of(raw) >= rpl;
      if (is_segment(raw)) {
        const bool code = type_of(raw) & 8;
        if (m == ZYDIS_MNEMONIC_VERR) visible = (!code || (type_of(raw) & 2)) && (conforming_code(raw) || privileged_enough);
        else if (m == ZYDIS_MNEMONIC_VERW) visible = !code && (type_of(raw) & 2) && privileged_enough;
        else visible = conforming_code(raw) || privileged_enough;
      } else if (m == ZYDIS_MNEMONIC_LAR || m == ZYDIS_MNEMONIC_LSL) {
        const unsigned t = type_of(raw);
        const bool lar_types = t == 1 || t == 2 || t == 3 || t == 4 || t == 5 || t == 9 || t == 0xb || t == 0xc;
        const bool lsl_types = t == 1 || t == 2 || t == 3 || t == 9 || t == 0xb;
        visible = (m == ZYDIS_MNEMONIC_LAR ? lar_types : lsl_types) && privileged_enough;
      }
    }
  }
  ctx_->rflags = visible ? ctx_->rflags | kZF : ctx_->rflags & ~kZF;
  if (!visible || (m != ZYDIS_MNEMONIC_LAR && m != ZYDIS_MNEMONIC_LSL)) return;
  std::uint32_t value;
  if (m == ZYDIS_MNEMONIC_LAR) {
    value = static_cast<std::uint32_t>(raw >> 32) & 0x00f0ff00u;
  } else {
    value = static_cast<std::uint32_t>(raw & 0xffff) | (static_cast<std::uint32_t>(raw >> 48 & 0xf) << 16);
    if ((raw >> 55) & 1) value = (value << 12) | 0xfff;  // G
  }
  set_reg(ops[0].reg.value, value);  // a 16-bit destination keeps the low word
}

void Vcpu::arpl(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
  if (real_mode() || v86()) raise(6);
  const bool user = cpl_ == 3;
  const std::uint16_t src = static_cast<std::uint16_t>(get_reg(ops[1].reg.value));
  const bool in_memory = ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY;
  const std::uint32_t la = in_memory ? ea(insn, ops[0]) : 0;
  const std::uint16_t dest = static_cast<std::uint16_t>(in_memory ? read(la, 2, user) : get_reg(ops[0].reg.value));
  if ((dest & 3) < (src & 3)) {
    const std::uint16_t adjusted = static_cast<std::uint16_t>((dest & ~3u) | (src & 3));
    if (in_memory) write(la, 2, adjusted, user);
    else set_reg(ops[0].reg.value, adjusted);
    ctx_->rflags |= kZF;
  } else {
    ctx_->rflags &= ~kZF;
  }
}

}  // namespace modevisor::bt
