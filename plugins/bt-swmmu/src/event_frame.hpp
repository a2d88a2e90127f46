// The stack frames of event delivery and IRET as pure functions: what an
// interrupt, exception or NMI pushes through a 32-bit interrupt/trap gate
// (with or without a stack switch) and the EFLAGS it leaves, and the EFLAGS
// an IRET restores at a given CPL/IOPL.  Vcpu does the pushes and pops.
#pragma once

#include <array>
#include <cstdint>

namespace modevisor::bt {

namespace eflags_bits {
inline constexpr std::uint32_t kTF = 0x100, kIF = 0x200, kIOPL = 0x3000, kNT = 0x4000, kRF = 0x10000,
                               kVM = 0x20000;
inline constexpr std::uint32_t kPopfMask = 0x00257fd5;  // what POPF/IRET may change at all
}  // namespace eflags_bits

struct EventFrameInput {
  std::uint32_t eflags = 0;
  std::uint16_t cs = 0;
  std::uint32_t return_eip = 0;
  bool has_error = false;
  std::uint32_t error = 0;
  bool stack_switch = false;  // to a more privileged level: the old SS:ESP go first
  std::uint16_t old_ss = 0;
  std::uint32_t old_esp = 0;
  bool interrupt_gate = false;  // clears IF (a trap gate does not)
};

struct EventFrame {
  std::array<std::uint32_t, 6> words{};  // in push order
  unsigned count = 0;
  unsigned on_old_stack_info = 0;  // leading words that are the old SS:ESP (2 with a stack switch)
  std::uint32_t new_eflags = 0;
};

inline EventFrame build_event_frame(const EventFrameInput& in) {
  using namespace eflags_bits;
  EventFrame f;
  auto push = [&](std::uint32_t v) { f.words[f.count++] = v; };
  if (in.stack_switch) {
    push(in.old_ss);
    push(in.old_esp);
    f.on_old_stack_info = 2;
  }
  push(in.eflags);
  push(in.cs);
  push(in.return_eip);
  if (in.has_error) push(in.error);
  f.new_eflags = in.eflags & ~(kTF | kNT | kRF | kVM);
  if (in.interrupt_gate) f.new_eflags &= ~kIF;
  return f;
}

// The EFLAGS after an IRET that popped `popped`: IOPL only changes at CPL 0,
// IF only at CPL <= IOPL.
inline std::uint32_t iret_eflags(std::uint32_t current, std::uint32_t popped, unsigned cpl) {
  using namespace eflags_bits;
  std::uint32_t mask = kPopfMask | kRF;
  if (cpl != 0) mask &= ~kIOPL;
  if (cpl > ((current & kIOPL) >> 12)) mask &= ~kIF;
  return (current & ~mask) | (popped & mask);
}

}  // namespace modevisor::bt
