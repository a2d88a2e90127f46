// Event delivery: exceptions (with #DF and triple-fault escalation),
// interrupts and NMIs through the IDT's 32-bit interrupt/trap gates (task
// gates: task_switch.cpp), and IRET.  The frames and flag rules are event_frame.hpp's; here the gate and
// stack checks, the pushes and pops, and the state changes.
#include <cstdio>
#include <stdexcept>

#include "event_frame.hpp"
#include "vcpu.hpp"

namespace modevisor::bt {

using namespace eflags_bits;

bool Vcpu::deliver_exception(const GuestException& ex) {
  if (trace_) {
    char m[96];
    std::snprintf(m, sizeof m, "exception %u error %#x at EIP %#x CR2 %#x", ex.vector, ex.error, eip_,
                  static_cast<unsigned>(cr2_));
    log_.log(api::LogLevel::Trace, m);
  }
  try {
    deliver(ex.vector, ex.has_error, ex.error, false, eip_);
    return true;
  } catch (const GuestException&) {
    if (ex.vector == 8) return false;
  }
  try {
    deliver(8, true, 0, false, eip_);
    return true;
  } catch (const GuestException&) {
    return false;
  }
}

void Vcpu::deliver(std::uint8_t vec, bool has_error, std::uint32_t error, bool software, std::uint32_t ret_eip) {
  ++deliveries_;
  // A debug exception clears DR7.GD, so that its handler may use the debug
  // registers (not INT 1, a software interrupt).
  if (vec == 1 && !software) dr_[7] &= ~debug_registers::kDr7GeneralDetect;
  if (real_mode()) {
    deliver_real_mode(vec, ret_eip);
    return;
  }
  const std::uint32_t gerr = idt_error_code(vec, software);
  if (vec * 8u + 7 > idtr_.limit) raise(13, true, gerr);
  const std::uint32_t la = static_cast<std::uint32_t>(idtr_.base + vec * 8u);
  const GateDescriptor gate = decode_gate_descriptor(read_qword(la, false));
  if (gate.type == 0x06 || gate.type == 0x07) {
    deliver_through_16bit_gate(gate, gerr, has_error, error, software, ret_eip);
    return;
  }
  if (gate.task_gate()) {
    if (software && gate.dpl < cpl_) raise(13, true, gerr);
    if (!gate.present) raise(11, true, gerr);
    deliver_through_task_gate(gate.selector, has_error, error, software, ret_eip);
    return;
  }
  if (!gate.trap_or_interrupt_gate()) raise(13, true, gerr);
  if (software && gate.dpl < cpl_) raise(13, true, gerr);
  if (!gate.present) raise(11, true, gerr);
  const std::uint16_t sel = gate.selector;
  const std::uint32_t off = gate.offset;
  if ((sel & 0xfffc) == 0) raise(13, true, 0);
  const std::uint64_t target_raw = read_descriptor(sel, sel & 0xfffc);  // read once: load_cs below uses it
  const api::Segment target = decoded_.decode(target_raw, sel);
  if (target.dpl > cpl_) raise(13, true, sel & 0xfffc);
  require(check_code_segment(target, sel));
  const unsigned new_cpl = (target.type & 4) ? cpl_ : target.dpl;
  const std::uint32_t old_flags = eflags();
  const std::uint16_t old_cs = cs_.selector;
  EventFrame frame = build_event_frame(
      EventFrameInput{old_flags, old_cs, ret_eip, has_error, error, false, 0, 0, gate.interrupt_gate()});
  if (v86()) {  // to ring 0 only, with the data segments on the new stack
    frame = build_event_frame(EventFrameInput{old_flags, old_cs, ret_eip, has_error, error, true, ss_.selector,
                                              reg32(4), gate.interrupt_gate()});
    deliver_from_v86(target, sel, off, frame.words, frame.count, frame.new_eflags);
    return;
  }
  const bool stack_switch = new_cpl < cpl_;
  if (stack_switch) {
    const auto [new_esp, new_ss] = stack_from_tss(new_cpl);
    const std::uint32_t old_esp = reg32(4);
    const std::uint16_t old_ss = ss_.selector;
    const api::Segment nss = decoded_.decode(read_descriptor(new_ss, new_ss & 0xfffc), new_ss);
    require(check_interrupt_stack(nss, new_ss, new_cpl));
    frame = build_event_frame(EventFrameInput{old_flags, old_cs, ret_eip, has_error, error, true, old_ss, old_esp,
                                              gate.interrupt_gate()});
    const unsigned saved_cpl = cpl_;
    const api::Segment saved_ss = ss_;
    cpl_ = new_cpl;
    note_segment_shape(ss_, nss);  // (the bases: load_cs_descriptor below)
    ss_ = nss;
    reg32(4) = new_esp;
    try {
      push_words(frame.words.data(), frame.count);  // the old SS:ESP first, all on the new stack
    } catch (...) {
      cpl_ = saved_cpl;
      ss_ = saved_ss;
      reg32(4) = old_esp;
      sync_seg_bases();
      throw;
    }
  }
  if (!stack_switch) push_words(frame.words.data(), frame.count);
  load_cs_descriptor(sel, target_raw, new_cpl);
  eip_ = off;
  set_eflags(frame.new_eflags);
  run_state_ = api::RunState::Runnable;
}

void Vcpu::do_iret(unsigned opsize, std::uint32_t next_eip) {
  nmi_masked_ = false;  // IRET ends NMI blocking (even if it then faults, as on hardware)
  if (real_mode() || v86()) {  // (virtual-8086 mode: IOPL 3, the caller checked)
    iret_real_mode(opsize);
    return;
  }
  if (ctx_->sysflags & kNT) {  // back to the task that called or interrupted this one
    return_to_linked_task(next_eip);
    return;
  }
  // A 16-bit IRET pops words: IP, CS, FLAGS (the upper half of EFLAGS stays), SP, SS.
  const unsigned bytes = opsize / 8;
  const std::uint32_t esp0 = reg32(4);
  std::uint32_t new_eip, new_fl;
  std::uint16_t new_cs;
  if (bytes == 4) {  // the common frame: one walk when it lies in one page
    std::uint32_t popped[3];
    pop_words(popped, 3);
    new_eip = popped[0];
    new_cs = static_cast<std::uint16_t>(popped[1]);
    new_fl = popped[2];
  } else {
    new_eip = pop(2);
    new_cs = static_cast<std::uint16_t>(pop(2));
    new_fl = (eflags() & 0xffff0000u) | pop(2);
  }
  const unsigned rpl = new_cs & 3;
  try {
    if (bytes == 4 && (new_fl & kVM) && cpl_ == 0) {  // back to virtual-8086 mode
      iret_to_v86(new_eip, new_cs, new_fl);
      return;
    }
    if (rpl < cpl_) raise(13, true, new_cs & 0xfffc);
    const std::uint32_t flags = iret_eflags(eflags(), new_fl, cpl_);
    if (rpl > cpl_) {
      std::uint32_t new_esp;
      std::uint16_t new_ss;
      if (bytes == 4) {
        std::uint32_t outer[2];
        pop_words(outer, 2);
        new_esp = outer[0];
        new_ss = static_cast<std::uint16_t>(outer[1]);
      } else {
        new_esp = pop(2);
        new_ss = static_cast<std::uint16_t>(pop(2));
      }
      load_cs(new_cs, rpl);
      load_segment(2, new_ss);
      reg32(4) = new_esp;
      null_inaccessible_data_segments();
    } else {
      load_cs(new_cs, rpl);
    }
    set_eflags(flags);
    eip_ = new_eip;
  } catch (const GuestException&) {
    reg32(4) = esp0;
    throw;
  }
}

}  // namespace modevisor::bt
