// Hardware task switches (SDM vol. 3 section 7.3): far JMP/CALL to a TSS or
// a task gate, exceptions and interrupts through an IDT task gate, and IRET
// with EFLAGS.NT back to the linked task.  The rules (busy bits, back link,
// NT, descriptor checks, the TSS layout) are task_state.hpp's; here the reads
// and writes of the TSSs and descriptors and the loading of the new task.
#include <stdexcept>

#include "task_state.hpp"
#include "vcpu.hpp"

namespace modevisor::bt {

namespace {
constexpr std::uint32_t kVm = 0x20000;
}  // namespace

std::pair<std::uint32_t, std::uint16_t> Vcpu::stack_from_tss(unsigned cpl) {
  const std::uint32_t tss = static_cast<std::uint32_t>(tr_.base);
  if (is_32bit_tss(tr_.type)) {  // ESPn at 4 + 8n, SSn at 8 + 8n
    if (tr_.unusable || tr_.limit < 8u * cpl + 11) raise(10, true, tr_.selector & 0xfffc);
    return {read(tss + 4 + 8 * cpl, 4, false), static_cast<std::uint16_t>(read(tss + 8 + 8 * cpl, 2, false))};
  }
  // A 16-bit TSS: SPn at 2 + 4n, SSn at 4 + 4n (the stack pointer is a word).
  if (tr_.unusable || tr_.limit < 4u * cpl + 5) raise(10, true, tr_.selector & 0xfffc);
  return {read(tss + 2 + 4 * cpl, 2, false), static_cast<std::uint16_t>(read(tss + 4 + 4 * cpl, 2, false))};
}

void Vcpu::set_tss_busy(std::uint16_t sel, bool busy) {
  const std::uint32_t la = static_cast<std::uint32_t>(gdtr_.base + (sel & ~7u) + 5);
  const std::uint32_t access = read(la, 1, false);
  write(la, 1, busy ? access | 2 : access & ~2u, false);
}

// A TSS descriptor from the GDT for a task gate or a back link (#GP or #TS,
// as `beyond_gdt` says, when the selector is local or outside the GDT).
std::uint64_t Vcpu::read_gdt_tss_descriptor(std::uint16_t sel, const Fault& beyond_gdt) {
  if ((sel & 4) || (sel & ~7u) + 7 > gdtr_.limit) throw beyond_gdt;
  return read_descriptor(sel, sel & 0xfffc);
}

void Vcpu::switch_task(std::uint16_t sel, std::uint64_t raw, TaskSwitchKind kind, std::uint32_t return_eip) {
  api::Segment incoming = decode_segment_descriptor(raw, sel);
  const bool new32 = is_32bit_tss(incoming.type);
  if (incoming.limit < (new32 ? Tss32::kMinimumLimit : Tss16::kMinimumLimit)) raise(10, true, sel & 0xfffc);

  // Everything that can fault before the switch commits: reading the new
  // TSS, and the old TSS's saved fields being writable.
  const std::uint32_t new_base = static_cast<std::uint32_t>(incoming.base);
  std::array<std::uint8_t, Tss32::kMinimumLimit + 1> image{};
  const std::uint32_t image_bytes = new32 ? Tss32::kMinimumLimit + 1 : Tss16::kMinimumLimit + 1;
  for (std::uint32_t at = 0; at < image_bytes; at += 2) {
    const std::uint32_t v = read(new_base + at, 2, false);
    std::memcpy(image.data() + at, &v, 2);
  }
  std::array<std::uint32_t, 8> current_gprs;
  for (unsigned i = 0; i < 8; ++i) current_gprs[i] = reg32(i);
  const Tss32 next = new32 ? Tss32::decode(image) : Tss16::decode(image, current_gprs, eflags());
  const std::uint32_t old_base = static_cast<std::uint32_t>(tr_.base);
  const bool old32 = is_32bit_tss(tr_.type);
  lin_to_phys(old_base + (old32 ? Tss32::kSavedFirst : Tss16::kSavedFirst), true, false, false);
  lin_to_phys(old_base + (old32 ? Tss32::kSavedEnd : Tss16::kSavedEnd) - 1, true, false, false);
  if (nests(kind)) lin_to_phys(new_base + Tss32::kLink, true, false, false);

  // The outgoing task (a 16-bit TSS keeps words: IP, FLAGS, registers, ES CS SS DS).
  if (releases_old_task(kind)) set_tss_busy(tr_.selector, false);
  const std::uint32_t saved_flags = outgoing_eflags(kind, eflags());
  if (old32) {
    write(old_base + Tss32::kEip, 4, return_eip, false);
    write(old_base + Tss32::kEflags, 4, saved_flags, false);
    for (unsigned i = 0; i < 8; ++i) write(old_base + Tss32::kGprs + 4 * i, 4, reg32(i), false);
    for (unsigned i = 0; i < 6; ++i)
      write(old_base + Tss32::kSegments + 4 * i, 2, seg(static_cast<int>(i)).selector, false);
  } else {
    write(old_base + Tss16::kIp, 2, return_eip & 0xffff, false);
    write(old_base + Tss16::kFlags, 2, saved_flags & 0xffff, false);
    for (unsigned i = 0; i < 8; ++i) write(old_base + Tss16::kGprs + 2 * i, 2, reg32(i) & 0xffff, false);
    for (unsigned i = 0; i < 4; ++i)
      write(old_base + Tss16::kSegments + 2 * i, 2, seg(static_cast<int>(i)).selector, false);
  }
  if (nests(kind)) write(new_base + Tss32::kLink, 2, tr_.selector, false);
  if (marks_new_task_busy(kind)) set_tss_busy(sel, true);

  // The incoming task: TR, CR0.TS, CR3, EFLAGS, EIP, registers.
  incoming.type |= 2;
  tr_ = incoming;
  cr0_ |= 8;
  if (dr_[7] & debug_registers::kDr7LocalEnables) {  // L0-L3 are the old task's
    dr_[7] &= ~debug_registers::kDr7LocalEnables;
    debug_registers_changed();
  }
  if (new32 && paging().paging()) cr3_ = next.cr3;  // a 16-bit TSS has no CR3
  monitor_tlb_flush();
  set_eflags(incoming_eflags(kind, next.eflags));
  eip_ = next.eip;
  for (unsigned i = 0; i < 8; ++i) reg32(i) = next.gprs[i];

  // Its segments, checked in its own context (faults are the new task's).
  for (unsigned i = 0; i < 6; ++i) {
    api::Segment& s = seg(static_cast<int>(i));
    s = api::Segment{};
    s.selector = next.segments[i];
    s.unusable = true;
  }
  ldtr_ = api::Segment{};
  ldtr_.selector = next.ldt;
  ldtr_.unusable = true;
  cpl_ = next.segments[1] & 3;
  sync_seg_bases();
  if (next.ldt & 0xfffc) {
    const std::uint64_t d = read_gdt_tss_descriptor(next.ldt, Fault::ts(next.ldt & 0xfffc));
    api::Segment ldt = decode_segment_descriptor(d, next.ldt);
    require(check_task_ldt(ldt, next.ldt));
    ldtr_ = ldt;
  }
  if (next.eflags & kVm) {  // a virtual-8086 task: its selectors are paragraphs
    load_v86_task_segments(next.segments);
    run_state_ = api::RunState::Runnable;
    raise_task_trap(next);
    return;
  }
  auto descriptor = [&](std::uint16_t s) {
    if ((s & 0xfffc) == 0) raise(10, true, 0);
    const Outcome<std::uint32_t> at = locate_descriptor(s, gdtr_, ldtr_, s & 0xfffc);
    if (!at.ok()) raise(10, true, s & 0xfffc);
    return decode_segment_descriptor(read(at.value(), 4, false) |
                                         (static_cast<std::uint64_t>(read(at.value() + 4, 4, false)) << 32),
                                     s);
  };
  api::Segment cs = descriptor(next.segments[1]);
  require(check_task_code_segment(cs, next.segments[1]));
  if (cs.l) throw std::runtime_error("bt-swmmu: 64-bit code segment: BT64 is not implemented");
  cs_ = cs;
  api::Segment ss = descriptor(next.segments[2]);
  require(check_task_stack_segment(ss, next.segments[2], cpl_));
  ss_ = ss;
  for (int i : {0, 3, 4, 5}) {
    const std::uint16_t s = next.segments[static_cast<unsigned>(i)];
    if ((s & 0xfffc) == 0) continue;  // null: stays unusable
    api::Segment d = descriptor(s);
    require(check_task_data_segment(d, s, cpl_));
    seg(i) = d;
  }
  sync_seg_bases();
  run_state_ = api::RunState::Runnable;
  raise_task_trap(next);
}

// The incoming TSS's T bit: a #DB (DR6.BT) once the switch is complete,
// before the new task's first instruction (pending, so a task gate's error
// code is pushed first and the event survives a save).  QEMU 7.2 ignores it.
void Vcpu::raise_task_trap(const Tss32& next) {
  if (!next.trap) return;
  dr_[6] |= debug_registers::kDr6TaskSwitch;
  pending_exception_ = api::PendingException{1, false, 0, false};
}

void Vcpu::deliver_through_task_gate(std::uint16_t tss_sel, bool has_error, std::uint32_t error, bool software,
                                     std::uint32_t return_eip) {
  const std::uint32_t ext = software ? 0 : 1;
  const std::uint64_t raw = read_gdt_tss_descriptor(tss_sel, Fault::gp((tss_sel & 0xfffc) | ext));
  require(check_task_gate_target(decode_segment_descriptor(raw, tss_sel), tss_sel, ext));
  switch_task(tss_sel, raw, TaskSwitchKind::Interrupt, return_eip);
  if (has_error) push(error, is_32bit_tss(tr_.type) ? 4 : 2);  // a word for a 16-bit task
}

void Vcpu::far_transfer_to_task(std::uint16_t sel, const api::Segment& target, bool call, std::uint32_t return_eip) {
  const TaskSwitchKind kind = call ? TaskSwitchKind::Call : TaskSwitchKind::Jump;
  if (target.type == 5) {  // task gate
    if (target.dpl < cpl_ || target.dpl < (sel & 3u)) raise(13, true, sel & 0xfffc);
    if (!target.present) raise(11, true, sel & 0xfffc);
    // The gate's selector field (decode_segment_descriptor put it in the base's low bits).
    const std::uint16_t tss_sel = static_cast<std::uint16_t>(target.base & 0xffff);
    const std::uint64_t raw = read_gdt_tss_descriptor(tss_sel, Fault::gp(tss_sel & 0xfffc));
    require(check_task_gate_target(decode_segment_descriptor(raw, tss_sel), tss_sel, 0));
    switch_task(tss_sel, raw, kind, return_eip);
    return;
  }
  const std::uint64_t raw = read_descriptor(sel, sel & 0xfffc);
  require(check_task_jump_target(target, sel, cpl_));
  switch_task(sel, raw, kind, return_eip);
}

void Vcpu::return_to_linked_task(std::uint32_t return_eip) {
  const std::uint16_t link = static_cast<std::uint16_t>(read(static_cast<std::uint32_t>(tr_.base) + Tss32::kLink, 2, false));
  const std::uint64_t raw = read_gdt_tss_descriptor(link, Fault::ts(link & 0xfffc));
  require(check_task_return_target(decode_segment_descriptor(raw, link), link));
  switch_task(link, raw, TaskSwitchKind::Return, return_eip);
}

}  // namespace modevisor::bt
