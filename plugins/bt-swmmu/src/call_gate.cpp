// Far CALL and JMP through a call gate (32- or 16-bit; SDM vol. 3 5.8): the
// gate's and the target's checks (segment_descriptor.hpp), and for a CALL to
// a more privileged non-conforming segment the stack switch from the TSS
// with the gate's parameters copied from the caller's stack.
#include <stdexcept>

#include "vcpu.hpp"

namespace modevisor::bt {

void Vcpu::far_transfer_through_call_gate(std::uint16_t gate_sel, bool call, std::uint32_t return_eip) {
  const std::uint64_t raw = read_descriptor(gate_sel, gate_sel & 0xfffc);
  const GateDescriptor gate = decode_gate_descriptor(raw);
  // A 16-bit gate (type 4): a 16-bit offset, and word pushes (IP, CS, SP, SS, parameters).
  const unsigned bytes = gate.type == 0x04 ? 2 : 4;
  const std::uint32_t target_eip = bytes == 2 ? gate.offset & 0xffff : gate.offset;
  require(check_call_gate(gate, gate_sel, cpl_));
  const std::uint16_t cs_sel = gate.selector;
  if ((cs_sel & 0xfffc) == 0) raise(13, true, 0);
  const api::Segment target = decode_segment_descriptor(read_descriptor(cs_sel, cs_sel & 0xfffc), cs_sel);
  require(check_call_gate_target(target, cs_sel, cpl_, call));
  const bool conforming = target.type & 4;
  if (!call || conforming || target.dpl == cpl_) {  // same privilege
    if (call) {
      const std::uint32_t esp0 = reg32(4);
      try {
        push(cs_.selector, bytes);
        push(return_eip, bytes);
      } catch (...) {
        reg32(4) = esp0;
        throw;
      }
    }
    load_cs(cs_sel, cpl_);
    eip_ = target_eip;
    return;
  }

  // A CALL to an inner ring: its stack from the TSS.
  const unsigned new_cpl = target.dpl;
  const auto [new_esp, new_ss] = stack_from_tss(new_cpl);
  if ((new_ss & 0xfffc) == 0) raise(10, true, 0);
  const Outcome<std::uint32_t> at = locate_descriptor(new_ss, gdtr_, ldtr_, new_ss & 0xfffc);
  if (!at.ok()) raise(10, true, new_ss & 0xfffc);
  api::Segment nss = decode_segment_descriptor(read_descriptor(new_ss, new_ss & 0xfffc), new_ss);
  require(check_interrupt_stack(nss, new_ss, new_cpl));
  // The caller's parameters, read at the caller's privilege before anything changes.
  const unsigned count = gate.parameter_count;
  std::uint32_t params[32];
  const std::uint32_t old_esp = reg32(4);
  for (unsigned i = 0; i < count; ++i)
    params[i] = read(static_cast<std::uint32_t>(ss_.base) + old_esp + bytes * i, bytes, cpl_ == 3);
  const api::Segment old_ss = ss_;
  const unsigned old_cpl = cpl_;
  const std::uint16_t old_cs = cs_.selector;
  cpl_ = new_cpl;
  ss_ = nss;
  reg32(4) = new_esp;
  try {
    push(old_ss.selector, bytes);
    push(old_esp, bytes);
    for (unsigned i = count; i-- > 0;) push(params[i], bytes);
    push(old_cs, bytes);
    push(return_eip, bytes);
    load_cs(cs_sel, new_cpl);
  } catch (...) {
    cpl_ = old_cpl;
    ss_ = old_ss;
    reg32(4) = old_esp;
    sync_seg_bases();
    throw;
  }
  eip_ = target_eip;
}

}  // namespace modevisor::bt
