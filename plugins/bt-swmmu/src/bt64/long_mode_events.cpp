#include "bt64/long_mode_events.hpp"

#include "segment_descriptor.hpp"

namespace modevisor::bt::bt64 {

using namespace eflags_bits;

namespace {

inline constexpr std::uint64_t kVif = 0x80000, kVip = 0x100000;
inline constexpr std::uint64_t kSysretFlagsMask = 0x3c7fd7;  // what SYSRET restores from R11
inline constexpr std::uint64_t kDr7GeneralDetect = 1u << 13;

bool is_code(const api::Segment& d) { return d.s && (d.type & 8); }
bool conforming(const api::Segment& d) { return (d.type & 0xc) == 0xc; }
std::uint32_t selector_error(std::uint16_t sel) { return sel & 0xfffc; }
bool long_mode(const api::VcpuState& s) { return s.efer & kEferLma; }
bool in_64bit_mode(const api::VcpuState& s) { return long_mode(s) && s.cs.l; }

// The loaded hidden part of a code segment: the descriptor with the RPL the
// CPL, marked accessed (as the 32-bit engine loads CS).
api::Segment loaded_code_segment(std::uint64_t raw, std::uint16_t sel, unsigned cpl) {
  api::Segment cs = decode_segment_descriptor(raw, static_cast<std::uint16_t>((sel & ~3u) | cpl));
  cs.type |= 1;
  return cs;
}

// An 8-byte TSS field at `offset` (RSPn, ISTn); beyond TR.limit: #TS(TR | EXT).
Outcome<std::uint64_t> read_tss_stack(const api::VcpuState& s, LinearMemory& mem, std::uint32_t offset,
                                      std::uint32_t ext) {
  if (s.tr.unusable || offset + 7 > s.tr.limit) return Fault::ts(selector_error(s.tr.selector) | ext);
  return mem.read(s.tr.base + offset, 8, Privilege::ImplicitSupervisor);
}

// The code segment an IDT gate names (SDM INT n, IA-32e mode): not null
// (#GP(EXT)), in its table, a code segment with DPL <= CPL (#GP(sel | EXT)),
// present (#NP(sel | EXT)), 64-bit code: L = 1, D = 0 (#GP(sel | EXT); the
// order after the present check is QEMU's do_interrupt64 and the SDM's list).
Outcome<std::uint64_t> read_handler_code_segment(const api::VcpuState& s, LinearMemory& mem, std::uint16_t sel,
                                                 unsigned cpl, std::uint32_t ext) {
  if (selector_error(sel) == 0) return Fault::gp(ext);
  const std::uint32_t err = selector_error(sel) | ext;
  const Outcome<std::uint64_t> raw = read_descriptor(s, mem, sel, err);
  if (!raw.ok()) return raw;
  const api::Segment d = decode_segment_descriptor(raw.value(), sel);
  if (!is_code(d) || d.dpl > cpl) return Fault::gp(err);
  if (!d.present) return Fault::np(err);
  if (!d.l || d.db) return Fault::gp(err);
  return raw;
}

}  // namespace

unsigned current_privilege(const api::VcpuState& s) {
  if (s.ss.present && !s.ss.unusable) return s.ss.dpl;
  return s.cs.selector & 3;
}

Gate64 decode_gate64(std::uint64_t low, std::uint64_t high) {
  const GateDescriptor legacy = decode_gate_descriptor(low);  // the layout of the low 8 bytes is the 32-bit gate's
  Gate64 g;
  g.type = legacy.type;
  g.dpl = legacy.dpl;
  g.present = legacy.present;
  g.selector = legacy.selector;
  g.ist = static_cast<unsigned>((low >> 32) & 7);
  g.offset = legacy.offset | (high & 0xffffffffu) << 32;
  return g;
}

EventFrame64 build_event_frame64(const EventFrame64Input& in) {
  EventFrame64 f;
  auto push = [&](std::uint64_t v) { f.slots[f.count++] = v; };
  push(in.ss);
  push(in.rsp);
  push(in.rflags);
  push(in.cs);
  push(in.return_rip);
  if (in.has_error) push(in.error);
  f.new_rflags = in.rflags & ~std::uint64_t{kTF | kNT | kRF | kVM};
  if (in.interrupt_gate) f.new_rflags &= ~std::uint64_t{kIF};
  return f;
}

api::Segment null_stack_segment(std::uint16_t selector, unsigned cpl) {
  api::Segment ss;
  ss.selector = static_cast<std::uint16_t>((selector & ~3u) | cpl);
  ss.dpl = static_cast<std::uint8_t>(cpl);
  ss.unusable = true;
  return ss;
}

api::Segment flat_code_segment(std::uint16_t selector, unsigned dpl, bool long_mode_code) {
  api::Segment cs;
  cs.selector = selector;
  cs.limit = 0xffffffff;
  cs.type = 0xb;  // execute/read, accessed
  cs.s = true;
  cs.dpl = static_cast<std::uint8_t>(dpl);
  cs.present = true;
  cs.l = long_mode_code;
  cs.db = !long_mode_code;
  cs.g = true;
  return cs;
}

api::Segment flat_stack_segment(std::uint16_t selector, unsigned dpl) {
  api::Segment ss;
  ss.selector = selector;
  ss.limit = 0xffffffff;
  ss.type = 0x3;  // read/write, accessed
  ss.s = true;
  ss.dpl = static_cast<std::uint8_t>(dpl);
  ss.present = true;
  ss.db = true;
  ss.g = true;
  return ss;
}

void null_inaccessible_data_segments(api::VcpuState& state, unsigned new_cpl) {
  for (api::Segment* seg : {&state.es, &state.ds, &state.fs, &state.gs}) {
    if (seg->unusable || conforming(*seg) || seg->dpl >= new_cpl) continue;
    const bool keeps_base = seg == &state.fs || seg == &state.gs;
    const std::uint64_t base = seg->base;
    *seg = api::Segment{};
    seg->unusable = true;
    if (keeps_base) seg->base = base;
  }
}

Outcome<std::uint64_t> read_descriptor(const api::VcpuState& s, LinearMemory& mem, std::uint16_t sel,
                                       std::uint32_t error) {
  std::uint64_t base;
  std::uint32_t limit;
  if (sel & 4) {
    if (s.ldtr.unusable || !s.ldtr.present) return Fault::gp(error);
    base = s.ldtr.base;
    limit = s.ldtr.limit;
  } else {
    base = s.gdtr.base;
    limit = s.gdtr.limit;
  }
  const std::uint32_t index = sel & ~7u;
  if (index + 7 > limit) return Fault::gp(error);
  return mem.read(base + index, 8, Privilege::ImplicitSupervisor);
}

Check deliver(api::VcpuState& state, LinearMemory& mem, std::uint8_t vector, bool has_error, std::uint32_t error,
              EventKind kind) {
  const bool software = kind == EventKind::SoftwareInterrupt;
  const std::uint32_t ext = software ? 0 : 1;  // SDM 6.13: EXT is clear only for INT n, INT3, INTO
  const std::uint32_t gate_error = idt_error_code(vector, software);
  const unsigned cpl = current_privilege(state);

  // The gate: 16 bytes within the IDT limit (#GP(vector*8+2+EXT)), a 64-bit
  // interrupt or trap gate (every other type, task gates too, is #GP),
  // DPL >= CPL for a software interrupt (#GP without EXT), present (#NP).
  if (vector * 16u + 15 > state.idtr.limit) return Fault::gp(gate_error);
  const std::uint64_t gate_at = state.idtr.base + vector * 16u;
  const Outcome<std::uint64_t> low = mem.read(gate_at, 8, Privilege::ImplicitSupervisor);
  if (!low.ok()) return low.fault();
  const Outcome<std::uint64_t> high = mem.read(gate_at + 8, 8, Privilege::ImplicitSupervisor);
  if (!high.ok()) return high.fault();
  const Gate64 gate = decode_gate64(low.value(), high.value());
  if (!gate.valid_in_long_mode()) return Fault::gp(gate_error);
  if (software && gate.dpl < cpl) return Fault::gp(gate_error);
  if (!gate.present) return Fault::np(gate_error);

  const Outcome<std::uint64_t> code_raw = read_handler_code_segment(state, mem, gate.selector, cpl, ext);
  if (!code_raw.ok()) return code_raw.fault();
  const api::Segment code = decode_segment_descriptor(code_raw.value(), gate.selector);
  const unsigned new_cpl = conforming(code) ? cpl : code.dpl;
  const bool privilege_change = new_cpl < cpl;

  // The stack (SDM 6.14.4, 6.14.5): an IST gate always switches to
  // TSS.IST[n]; otherwise a privilege change switches to TSS.RSP[new CPL]
  // with SS null; otherwise the current stack.  The TSS is read at TR.base,
  // beyond TR.limit #TS(TR | EXT).
  std::uint64_t rsp = state.gpr[api::gpr::rsp];
  if (gate.ist != 0 || privilege_change) {
    const std::uint32_t field = gate.ist != 0 ? Tss64::ist(gate.ist) : Tss64::rsp(new_cpl);
    const Outcome<std::uint64_t> tss_rsp = read_tss_stack(state, mem, field, ext);
    if (!tss_rsp.ok()) return tss_rsp.fault();
    rsp = tss_rsp.value();
  }
  const EventFrame64 frame = build_event_frame64(EventFrame64Input{state.rflags, state.cs.selector, state.rip,
                                                                   state.ss.selector, state.gpr[api::gpr::rsp],
                                                                   has_error, error, gate.interrupt_gate()});
  const std::uint64_t top = frame_top(rsp);
  const std::uint64_t bottom = top - 8 * frame.count;
  // A frame in non-canonical space is #SS with a null selector and EXT (SDM
  // INT n; editions before 2013 said #SS(0)).
  if (!is_canonical(bottom) || !is_canonical(top - 1)) return Fault::ss(ext);
  // The handler's RIP must be canonical: #GP(EXT), a null selector (older
  // editions: #GP(0); the same for INT n).
  if (!is_canonical(gate.offset)) return Fault::gp(ext);

  // The pushes, at the handler's privilege, from the top down; a fault there
  // (a #PF) is the caller's to combine, with nothing changed but the memory
  // below the stack pointer.
  const Privilege pusher = privilege_at(new_cpl);
  for (unsigned i = 0; i < frame.count; ++i)
    if (Check f = mem.write(top - 8 * (i + 1), 8, frame.slots[i], pusher)) return f;

  if (vector == 1 && !software) state.dr[7] &= ~kDr7GeneralDetect;  // SDM 17.2.4: entering the #DB handler clears GD
  if (privilege_change) state.ss = null_stack_segment(0, new_cpl);
  state.cs = loaded_code_segment(code_raw.value(), gate.selector, new_cpl);
  state.gpr[api::gpr::rsp] = bottom;
  state.rip = gate.offset;
  state.rflags = frame.new_rflags;
  return std::nullopt;
}

Check iret64(api::VcpuState& state, LinearMemory& mem, unsigned operand_size) {
  // SDM IRET: in IA-32e mode there is no task return: NT = 1 is #GP(0).
  if (state.rflags & kNT) return Fault::gp(0);
  const unsigned cpl = current_privilege(state);
  const std::uint64_t rsp = state.gpr[api::gpr::rsp];
  const unsigned slot = operand_size;
  // The pops read at the current CPL; a slot in non-canonical space is #SS(0).
  auto pop = [&](unsigned index) -> Outcome<std::uint64_t> {
    const std::uint64_t at = rsp + index * slot;
    if (!is_canonical(at) || !is_canonical(at + slot - 1)) return Fault::ss(0);
    return mem.read(at, slot, privilege_at(cpl));
  };

  const Outcome<std::uint64_t> rip_slot = pop(0), cs_slot = pop(1), flags_slot = pop(2);
  for (const auto* o : {&rip_slot, &cs_slot, &flags_slot})
    if (!o->ok()) return o->fault();
  const std::uint64_t new_rip = rip_slot.value();
  const auto new_cs = static_cast<std::uint16_t>(cs_slot.value());
  const unsigned rpl = new_cs & 3;

  // The return code segment (SDM IRET, protected-mode return): not null
  // (#GP(0)), in its table, code, RPL >= CPL, conforming: DPL <= RPL,
  // non-conforming: DPL == RPL (#GP(sel)), L and D not both set (reserved in
  // IA-32e mode: #GP(sel)), present (#NP(sel)).
  if (selector_error(new_cs) == 0) return Fault::gp(0);
  const Outcome<std::uint64_t> code_raw = read_descriptor(state, mem, new_cs, selector_error(new_cs));
  if (!code_raw.ok()) return code_raw.fault();
  const api::Segment code = decode_segment_descriptor(code_raw.value(), new_cs);
  if (!is_code(code) || rpl < cpl) return Fault::gp(selector_error(new_cs));
  if (conforming(code) ? code.dpl > rpl : code.dpl != rpl) return Fault::gp(selector_error(new_cs));
  if (code.l && code.db) return Fault::gp(selector_error(new_cs));
  if (!code.present) return Fault::np(selector_error(new_cs));
  const bool to_64bit_mode = code.l;

  // 64-bit mode pops SS:RSP at any privilege.
  const Outcome<std::uint64_t> rsp_slot = pop(3), ss_slot = pop(4);
  if (!rsp_slot.ok()) return rsp_slot.fault();
  if (!ss_slot.ok()) return ss_slot.fault();
  const auto new_ss = static_cast<std::uint16_t>(ss_slot.value());
  api::Segment stack;
  if (selector_error(new_ss) == 0) {
    // A null SS only back to 64-bit mode at CPL < 3, with the new CPL as its
    // RPL (SDM IRET; QEMU does not check the RPL of a null SS).
    if (!to_64bit_mode || rpl == 3 || (new_ss & 3u) != rpl) return Fault::gp(0);
    stack = null_stack_segment(new_ss, rpl);
  } else {
    // RPL and DPL the new CPL, writable data (#GP(sel)), present (#SS(sel)).
    const Outcome<std::uint64_t> ss_raw = read_descriptor(state, mem, new_ss, selector_error(new_ss));
    if (!ss_raw.ok()) return ss_raw.fault();
    stack = decode_segment_descriptor(ss_raw.value(), new_ss);
    if (Check f = check_stack_segment_load(stack, new_ss, rpl)) return f;
    stack.type |= 1;
  }

  // The return RIP: canonical for 64-bit mode, within CS.limit for
  // compatibility mode (#GP(0) either way).
  if (to_64bit_mode ? !is_canonical(new_rip) : new_rip > code.limit) return Fault::gp(0);

  // RFLAGS: iret_eflags' IOPL/IF rules at the old CPL; VIF and VIP at CPL 0
  // too (32- and 64-bit operand sizes); VM stays clear in long mode.
  std::uint64_t flags =
      iret_eflags(static_cast<std::uint32_t>(state.rflags), static_cast<std::uint32_t>(flags_slot.value()), cpl);
  if (cpl == 0) flags = (flags & ~(kVif | kVip)) | (flags_slot.value() & (kVif | kVip));
  flags &= ~std::uint64_t{kVM};

  state.rip = new_rip;
  state.cs = loaded_code_segment(code_raw.value(), new_cs, rpl);
  state.ss = stack;
  state.gpr[api::gpr::rsp] = rsp_slot.value();
  state.rflags = flags;
  if (rpl > cpl) null_inaccessible_data_segments(state, rpl);
  return std::nullopt;
}

Check syscall(api::VcpuState& state, Vendor vendor) {
  // SDM SYSCALL: #UD without EFER.SCE, outside long mode, and (Intel) in
  // compatibility mode; AMD enters compatibility-mode callers at CSTAR.
  if (!(state.efer & kEferSce) || !long_mode(state)) return Fault::ud();
  if (!state.cs.l && vendor == Vendor::Intel) return Fault::ud();
  const std::uint64_t star = state.msr(kMsrStar).value_or(0);
  const std::uint64_t entry = state.msr(state.cs.l ? kMsrLstar : kMsrCstar).value_or(0);
  const std::uint64_t sfmask = state.msr(kMsrSfmask).value_or(0);
  const auto kernel_cs = static_cast<std::uint16_t>(star >> 32);

  state.gpr[api::gpr::rcx] = state.rip;
  state.gpr[api::gpr::r11] = state.rflags & ~std::uint64_t{kRF};
  // RFLAGS AND NOT SFMASK keeps the arithmetic flags SFMASK leaves (QEMU 7.2
  // clears them too: lm64syscall's comment).
  state.rflags = (state.rflags & ~(sfmask | kRF)) | 2;
  // CS: STAR[47:32] with RPL 0; SS: STAR[47:32] + 8 (its RPL as STAR has it).
  state.cs = flat_code_segment(kernel_cs & 0xfffc, 0, true);
  state.ss = flat_stack_segment(static_cast<std::uint16_t>(kernel_cs + 8), 0);
  state.rip = entry;
  return std::nullopt;
}

Check sysret(api::VcpuState& state, unsigned operand_size, Vendor vendor) {
  // SDM SYSRET: #UD without EFER.SCE, outside long mode, (Intel) outside
  // 64-bit mode; #GP(0) unless CPL 0.
  if (!(state.efer & kEferSce) || !long_mode(state)) return Fault::ud();
  if (!state.cs.l && vendor == Vendor::Intel) return Fault::ud();
  if (current_privilege(state) != 0) return Fault::gp(0);
  const auto user_base = static_cast<std::uint16_t>(state.msr(kMsrStar).value_or(0) >> 48);
  const std::uint64_t rcx = state.gpr[api::gpr::rcx];
  const bool to_64bit_mode = operand_size == 8;
  // Intel checks RCX here, at CPL 0; AMD's fetch faults at CPL 3 instead.
  if (to_64bit_mode && !is_canonical(rcx) && vendor == Vendor::Intel) return Fault::gp(0);

  // CS: STAR[63:48] + 16 (64-bit) or STAR[63:48] (compatibility), RPL 3;
  // SS: STAR[63:48] + 8, RPL 3.
  const auto user_cs = static_cast<std::uint16_t>((to_64bit_mode ? user_base + 16 : user_base) | 3);
  state.cs = flat_code_segment(user_cs, 3, to_64bit_mode);
  state.ss = flat_stack_segment(static_cast<std::uint16_t>((user_base + 8) | 3), 3);
  state.rip = to_64bit_mode ? rcx : rcx & 0xffffffffu;
  state.rflags = (state.gpr[api::gpr::r11] & kSysretFlagsMask) | 2;
  return std::nullopt;
}

Check swapgs(api::VcpuState& state) {
  // SDM SWAPGS: #UD outside 64-bit mode, #GP(0) unless CPL 0.
  if (!in_64bit_mode(state)) return Fault::ud();
  if (current_privilege(state) != 0) return Fault::gp(0);
  const std::uint64_t kernel_gs_base = state.msr(kMsrKernelGsBase).value_or(0);
  state.set_msr(kMsrKernelGsBase, state.gs.base);
  state.gs.base = kernel_gs_base;
  return std::nullopt;
}

}  // namespace modevisor::bt::bt64
