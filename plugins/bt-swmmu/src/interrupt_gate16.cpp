// Events through 16-bit (286) interrupt and trap gates in the IDT (types 6
// and 7): the same checks as a 32-bit gate, a 16-bit offset, and a frame of
// words (IP, CS, FLAGS, and with a stack switch SP and SS; from
// virtual-8086 mode ES, DS, FS, GS too), as the SDM's INT n pseudo-code and
// QEMU push them.  A 16-bit handler returns with a 16-bit IRET.
#include "event_frame.hpp"
#include "vcpu.hpp"

namespace modevisor::bt {

using namespace eflags_bits;

void Vcpu::deliver_through_16bit_gate(const GateDescriptor& gate, std::uint32_t gate_error, bool has_error,
                                      std::uint32_t error, bool software, std::uint32_t return_eip) {
  if (software && gate.dpl < cpl_) raise(13, true, gate_error);
  if (!gate.present) raise(11, true, gate_error);
  const std::uint16_t sel = gate.selector;
  if ((sel & 0xfffc) == 0) raise(13, true, 0);
  const api::Segment target = decode_segment_descriptor(read_descriptor(sel, sel & 0xfffc), sel);
  if (target.dpl > cpl_) raise(13, true, sel & 0xfffc);
  require(check_code_segment(target, sel));
  const bool conforming = target.type & 4;
  const bool from_v86 = v86();
  if (from_v86 && (conforming || target.dpl != 0)) raise(13, true, sel & 0xfffc);
  const unsigned new_cpl = conforming ? cpl_ : target.dpl;
  const bool stack_switch = new_cpl < cpl_;

  std::uint32_t words[10];
  unsigned n = 0;
  if (from_v86) {
    for (int i : {5, 4, 3, 0}) words[n++] = seg(i).selector;  // GS FS DS ES
  }
  if (stack_switch) {
    words[n++] = ss_.selector;
    words[n++] = reg32(4);
  }
  const std::uint32_t old_flags = eflags();
  words[n++] = old_flags;
  words[n++] = cs_.selector;
  words[n++] = return_eip;
  if (has_error) words[n++] = error;

  const unsigned saved_cpl = cpl_;
  const api::Segment saved_ss = ss_;
  const std::uint32_t saved_esp = reg32(4);
  try {
    if (stack_switch) {
      const auto [new_esp, new_ss] = stack_from_tss(new_cpl);
      const api::Segment nss = decode_segment_descriptor(read_descriptor(new_ss, new_ss & 0xfffc), new_ss);
      require(check_interrupt_stack(nss, new_ss, new_cpl));
      cpl_ = new_cpl;
      ss_ = nss;
      reg32(4) = new_esp;
    }
    for (unsigned i = 0; i < n; ++i) push(words[i], 2);
  } catch (...) {
    cpl_ = saved_cpl;
    ss_ = saved_ss;
    reg32(4) = saved_esp;
    throw;
  }
  if (from_v86) {
    for (int i : {0, 3, 4, 5}) {  // ES DS FS GS: null
      api::Segment null;
      null.unusable = true;
      seg(i) = null;
    }
  }
  load_cs(sel, new_cpl);
  eip_ = gate.offset & 0xffff;
  std::uint32_t flags = old_flags & ~(kTF | kNT | kRF | kVM);
  if (gate.type == 0x06) flags &= ~kIF;  // an interrupt gate
  set_eflags(flags);
  run_state_ = api::RunState::Runnable;
}

}  // namespace modevisor::bt
