// Segment and gate descriptors: decoding the 8-byte GDT/LDT/IDT entries and
// the protection checks of loading one, as pure functions of the descriptor,
// the selector and the CPL.  Reading the tables is the caller's business.
#pragma once

#include <modevisor/api/monitor.hpp>

#include <cstdint>

#include "guest_fault.hpp"

namespace modevisor::bt {

// The descriptor as the hidden part of a segment register (selector `sel`).
api::Segment decode_segment_descriptor(std::uint64_t raw, std::uint16_t sel);

// Where selector `sel`'s descriptor lies (guest-linear), or #GP(`error`) when
// it is outside its table or the LDT is not loaded.  Inline: returned
// through memory, the Outcome cost a store-forwarding stall per descriptor.
inline Outcome<std::uint32_t> locate_descriptor(std::uint16_t sel, const api::DescriptorTable& gdtr,
                                                const api::Segment& ldtr, std::uint32_t error) {
  const std::uint32_t index = sel & ~7u;
  std::uint64_t base;
  std::uint32_t limit;
  if (sel & 4) {
    if (ldtr.unusable || !ldtr.present) return Fault::gp(error);
    base = ldtr.base;
    limit = ldtr.limit;
  } else {
    base = gdtr.base;
    limit = gdtr.limit;
  }
  if (index + 7 > limit) return Fault::gp(error);
  return static_cast<std::uint32_t>(base + index);
}

// Decoded descriptors remembered by their raw 8 bytes and selector, so the
// code and stack segments a system call and its IRET load again and again
// are decoded once.  The caller reads the raw descriptor from guest memory
// every time: a rewritten GDT entry is a different key, never a stale hit.
class DecodedDescriptors {
 public:
  const api::Segment& decode(std::uint64_t raw, std::uint16_t sel) {
    Slot& s = slots_[(sel >> 3) % kSlots];
    if (!s.valid || s.raw != raw || s.sel != sel) s = Slot{true, sel, raw, decode_segment_descriptor(raw, sel)};
    return s.seg;
  }

 private:
  static constexpr unsigned kSlots = 8;
  struct Slot {
    bool valid = false;
    std::uint16_t sel = 0;
    std::uint64_t raw = 0;
    api::Segment seg{};
  };
  Slot slots_[kSlots];
};

// MOV/POP to DS, ES, FS, GS with a non-null selector.
Check check_data_segment_load(const api::Segment& d, std::uint16_t sel, unsigned cpl);
// MOV/POP/LSS to SS, and the new stack of an inter-privilege IRET/RET.
Check check_stack_segment_load(const api::Segment& d, std::uint16_t sel, unsigned cpl);
// The stack an interrupt to a more privileged level switches to (from the TSS): #TS, not #GP.
Check check_interrupt_stack(const api::Segment& d, std::uint16_t sel, unsigned new_cpl);
// CS: a present code segment (privilege is the transfer's own rule).
Check check_code_segment(const api::Segment& d, std::uint16_t sel);
// The code segment a far JMP/CALL names directly.
Check check_far_transfer_target(const api::Segment& d, std::uint16_t sel, unsigned cpl);
// LLDT and LTR.
Check check_ldt_descriptor(const api::Segment& d, std::uint16_t sel);
Check check_tss_descriptor(const api::Segment& d, std::uint16_t sel);

// An IDT entry.
struct GateDescriptor {
  unsigned type;  // 0x0e/0x06 32/16-bit interrupt gate, 0x0f/0x07 trap gate, 0x05 task gate, 0x0c/0x04 call gate
  unsigned dpl;
  bool present;
  std::uint16_t selector;
  std::uint32_t offset;
  unsigned parameter_count = 0;  // call gates: dwords copied to an inner stack
  bool interrupt_gate() const { return type == 0x0e; }
  bool task_gate() const { return type == 0x05; }
  bool trap_or_interrupt_gate() const { return type == 0x0e || type == 0x0f; }
};
GateDescriptor decode_gate_descriptor(std::uint64_t raw);

// A far CALL/JMP naming a call gate: DPL >= CPL and >= RPL (#GP), present (#NP).
Check check_call_gate(const GateDescriptor& gate, std::uint16_t gate_sel, unsigned cpl);
// The code segment a call gate names: DPL <= CPL; a JMP cannot change
// privilege (non-conforming: DPL == CPL); present (#NP).
Check check_call_gate_target(const api::Segment& d, std::uint16_t sel, unsigned cpl, bool call);

// The error code of a fault found while delivering vector `vec` (IDT flag,
// EXT flag for events not caused by an INT n).
constexpr std::uint32_t idt_error_code(std::uint8_t vec, bool software) {
  return vec * 8u + 2 + (software ? 0 : 1);
}

}  // namespace modevisor::bt
