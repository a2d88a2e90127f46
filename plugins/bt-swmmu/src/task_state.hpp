// Hardware task switches (SDM vol. 3 ch. 7) as pure rules: the 32-bit TSS
// image a switch reads and writes, how each way of switching treats the busy
// bits, the back link and EFLAGS.NT, and the checks on the target TSS
// descriptor and on the segments the incoming task names.  The vCPU's
// task_switch.cpp does the reading, writing and loading.
#pragma once

#include <modevisor/api/monitor.hpp>

#include <array>
#include <cstdint>
#include <cstring>

#include "guest_fault.hpp"

namespace modevisor::bt {

// The ways into a task switch.
enum class TaskSwitchKind {
  Jump,       // JMP far to a TSS or task gate: no nesting, the old task is no longer busy
  Call,       // CALL far: nests (back link, NT), the old task stays busy
  Interrupt,  // an exception or interrupt through an IDT task gate: nests like CALL
  Return,     // IRET with NT: back to the linked task, the old one is no longer busy
};

constexpr bool nests(TaskSwitchKind k) { return k == TaskSwitchKind::Call || k == TaskSwitchKind::Interrupt; }
// The outgoing task's TSS descriptor loses its busy bit.
constexpr bool releases_old_task(TaskSwitchKind k) { return k == TaskSwitchKind::Jump || k == TaskSwitchKind::Return; }
// The incoming task's TSS descriptor gains it (an IRET's target has it already).
constexpr bool marks_new_task_busy(TaskSwitchKind k) { return k != TaskSwitchKind::Return; }

inline constexpr std::uint32_t kEflagsNt = 0x4000;

// The EFLAGS image saved in the outgoing TSS: IRET clears NT in it.
constexpr std::uint32_t outgoing_eflags(TaskSwitchKind k, std::uint32_t eflags) {
  return k == TaskSwitchKind::Return ? eflags & ~kEflagsNt : eflags;
}
// The EFLAGS the incoming task starts with: a nesting switch sets NT.
constexpr std::uint32_t incoming_eflags(TaskSwitchKind k, std::uint32_t tss_eflags) {
  return nests(k) ? tss_eflags | kEflagsNt : tss_eflags;
}

// A 32-bit TSS: the fields a task switch uses, at their SDM offsets.
struct Tss32 {
  static constexpr std::uint32_t kLink = 0x00, kCr3 = 0x1c, kEip = 0x20, kEflags = 0x24, kGprs = 0x28,
                                 kSegments = 0x48, kLdt = 0x60, kTrap = 0x64;
  static constexpr std::uint32_t kMinimumLimit = 0x67;  // a 32-bit TSS is at least 104 bytes
  // The dynamic fields an outgoing task saves: EIP through GS.
  static constexpr std::uint32_t kSavedFirst = kEip, kSavedEnd = kSegments + 6 * 4;

  std::uint16_t link = 0;
  std::uint32_t cr3 = 0, eip = 0, eflags = 0;
  std::array<std::uint32_t, 8> gprs{};        // EAX ECX EDX EBX ESP EBP ESI EDI
  std::array<std::uint16_t, 6> segments{};    // ES CS SS DS FS GS
  std::uint16_t ldt = 0;
  bool trap = false;                          // T: #DB on entry (Vcpu::raise_task_trap)

  static Tss32 decode(const std::array<std::uint8_t, kMinimumLimit + 1>& image) {
    auto u32 = [&](std::uint32_t at) {
      std::uint32_t v;
      std::memcpy(&v, image.data() + at, 4);
      return v;
    };
    Tss32 t;
    t.link = static_cast<std::uint16_t>(u32(kLink));
    t.cr3 = u32(kCr3);
    t.eip = u32(kEip);
    t.eflags = u32(kEflags);
    for (unsigned i = 0; i < 8; ++i) t.gprs[i] = u32(kGprs + 4 * i);
    for (unsigned i = 0; i < 6; ++i) t.segments[i] = static_cast<std::uint16_t>(u32(kSegments + 4 * i));
    t.ldt = static_cast<std::uint16_t>(u32(kLdt));
    t.trap = u32(kTrap) & 1;
    return t;
  }
};

// A 16-bit (80286) TSS: IP, FLAGS, the eight registers and ES CS SS DS as
// words, no CR3, no FS/GS.  Loaded, it is a Tss32 whose upper halves of
// EFLAGS and the registers are the current ones (FS and GS become null).
struct Tss16 {
  static constexpr std::uint32_t kLink = 0x00, kIp = 0x0e, kFlags = 0x10, kGprs = 0x12, kSegments = 0x22,
                                 kLdt = 0x2a;
  static constexpr std::uint32_t kMinimumLimit = 0x2b;
  static constexpr std::uint32_t kSavedFirst = kIp, kSavedEnd = kSegments + 4 * 2;

  static Tss32 decode(const std::array<std::uint8_t, Tss32::kMinimumLimit + 1>& image,
                      const std::array<std::uint32_t, 8>& current_gprs, std::uint32_t current_eflags) {
    auto u16 = [&](std::uint32_t at) {
      std::uint16_t v;
      std::memcpy(&v, image.data() + at, 2);
      return v;
    };
    Tss32 t;
    t.link = u16(kLink);
    t.eip = u16(kIp);
    t.eflags = (current_eflags & 0xffff0000u) | u16(kFlags);
    for (unsigned i = 0; i < 8; ++i) t.gprs[i] = (current_gprs[i] & 0xffff0000u) | u16(kGprs + 2 * i);
    for (unsigned i = 0; i < 4; ++i) t.segments[i] = u16(kSegments + 2 * i);  // ES CS SS DS; FS GS null
    t.ldt = u16(kLdt);
    return t;
  }
};

constexpr bool is_32bit_tss(unsigned type) { return type & 8; }

// JMP/CALL far naming a TSS descriptor directly: available 32-bit or 16-bit
// TSS, DPL >= CPL and >= RPL, present.  (A busy TSS, a privilege failure: #GP.)
inline Check check_task_jump_target(const api::Segment& tss, std::uint16_t sel, unsigned cpl) {
  const std::uint32_t err = sel & 0xfffc;
  if (tss.s || (tss.type != 9 && tss.type != 1)) return Fault::gp(err);
  if (tss.dpl < cpl || tss.dpl < (sel & 3u)) return Fault::gp(err);
  if (!tss.present) return Fault::np(err);
  return std::nullopt;
}

// The TSS a task gate names (JMP/CALL or an IDT gate): a GDT selector of an
// available TSS, present.  `ext` is the EXT bit of the error code.
inline Check check_task_gate_target(const api::Segment& tss, std::uint16_t sel, std::uint32_t ext) {
  const std::uint32_t err = (sel & 0xfffc) | ext;
  if ((sel & 4) || tss.s || (tss.type != 9 && tss.type != 1)) return Fault::gp(err);
  if (!tss.present) return Fault::np(err);
  return std::nullopt;
}

// IRET's back link: a GDT selector of a busy TSS, present (else #TS / #NP).
inline Check check_task_return_target(const api::Segment& tss, std::uint16_t sel) {
  const std::uint32_t err = sel & 0xfffc;
  if ((sel & 4) || tss.s || (tss.type != 0xb && tss.type != 3)) return Fault::ts(err);
  if (!tss.present) return Fault::np(err);
  return std::nullopt;
}

// The incoming task's segments, loaded after the switch: faults are #TS
// (not present: #NP, or #SS for the stack) in the new task's context.
inline Check check_task_ldt(const api::Segment& d, std::uint16_t sel) {
  if ((sel & 4) || d.s || d.type != 2) return Fault::ts(sel & 0xfffc);
  if (!d.present) return Fault::ts(sel & 0xfffc);
  return std::nullopt;
}
inline Check check_task_code_segment(const api::Segment& d, std::uint16_t sel) {
  const std::uint32_t err = sel & 0xfffc;
  const unsigned rpl = sel & 3;
  if (!d.s || !(d.type & 8)) return Fault::ts(err);
  if ((d.type & 4) ? d.dpl > rpl : d.dpl != rpl) return Fault::ts(err);
  if (!d.present) return Fault::np(err);
  return std::nullopt;
}
inline Check check_task_stack_segment(const api::Segment& d, std::uint16_t sel, unsigned cpl) {
  const std::uint32_t err = sel & 0xfffc;
  if (!d.s || (d.type & 8) || !(d.type & 2) || (sel & 3u) != cpl || d.dpl != cpl) return Fault::ts(err);
  if (!d.present) return Fault::ss(err);
  return std::nullopt;
}
inline Check check_task_data_segment(const api::Segment& d, std::uint16_t sel, unsigned cpl) {
  const std::uint32_t err = sel & 0xfffc;
  if (!d.s || ((d.type & 8) && !(d.type & 2))) return Fault::ts(err);
  const bool conforming_code = (d.type & 8) && (d.type & 4);
  if (!conforming_code && (d.dpl < cpl || d.dpl < (sel & 3u))) return Fault::ts(err);
  if (!d.present) return Fault::np(err);
  return std::nullopt;
}

}  // namespace modevisor::bt
