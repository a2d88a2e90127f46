// Long-mode events as pure functions of the architectural state: delivery
// through the 64-bit IDT (16-byte gates, the IST, the 64-bit TSS, the frame
// that always holds SS:RSP on a 16-byte aligned stack), IRET in 64-bit mode,
// SYSCALL/SYSRET and SWAPGS.  Each takes an api::VcpuState, changes it only
// when it succeeds and otherwise names the fault the guest must see; guest
// memory is reached through LinearMemory.  The 32-bit engine's counterparts
// are event_delivery.cpp (the gate rules) and event_frame.hpp (the frames).
//
// Common conventions:
//  * state.rip on entry is the RIP the operation saves: the faulting
//    instruction's for a fault, the next instruction's for a trap, INT n,
//    INT3, INTO, ICEBP and an interrupt, and SYSCALL's next instruction (the
//    caller advances RIP past the instruction before calling).
//  * The frame saves state.rflags as it is: a caller delivering a fault sets
//    RF in it first (SDM vol. 3 17.3.1.1); the handler starts with RF clear.
//  * CPL is CS.RPL, or SS.DPL while SS is usable (the 32-bit engine's rule,
//    and what VMX and KVM call the CPL).
//  * What is not an architectural-state change of the operation itself stays
//    the caller's: CR2 for a #PF (the memory knows the address), NMI blocking
//    (IRET ends it even when it faults), the interrupt shadow, the run state.
#pragma once

#include <modevisor/api/arch_state.hpp>

#include <array>
#include <cstdint>

#include "event_frame.hpp"
#include "guest_fault.hpp"

namespace modevisor::bt::bt64 {

// Who makes an access, for the paging checks (SDM vol. 3 4.6).  Reads of the
// GDT, LDT, IDT and TSS are implicit supervisor-mode accesses at any CPL; the
// stack an event pushes to is accessed at the handler's CPL, IRET's at the
// current one.
enum class Privilege : std::uint8_t { ImplicitSupervisor, Supervisor, User };

constexpr Privilege privilege_at(unsigned cpl) { return cpl == 3 ? Privilege::User : Privilege::Supervisor; }

// Guest-linear memory as the events see it: little-endian accesses of 1, 2,
// 4 or 8 bytes.  A page fault comes back as Fault{14, true, error}; the
// implementation keeps the faulting address for the caller's CR2.
struct LinearMemory {
  virtual ~LinearMemory() = default;
  virtual Outcome<std::uint64_t> read(std::uint64_t la, unsigned size, Privilege who) = 0;
  virtual Check write(std::uint64_t la, unsigned size, std::uint64_t value, Privilege who) = 0;
};

// MSRs of the 64-bit system-call and segment-base machinery.
inline constexpr std::uint32_t kMsrEfer = 0xc0000080, kMsrStar = 0xc0000081, kMsrLstar = 0xc0000082,
                               kMsrCstar = 0xc0000083, kMsrSfmask = 0xc0000084, kMsrKernelGsBase = 0xc0000102;
inline constexpr std::uint64_t kEferSce = 1, kEferLma = 1u << 10;

// Bits 63:47 all equal (48-bit linear addresses).
constexpr bool is_canonical(std::uint64_t la) {
  return static_cast<std::uint64_t>(static_cast<std::int64_t>(la << 16) >> 16) == la;
}

unsigned current_privilege(const api::VcpuState& state);

// A 16-byte IDT entry of long mode.
struct Gate64 {
  unsigned type = 0;  // 0x0e interrupt gate, 0x0f trap gate (with S = 0); anything else is invalid in long mode
  unsigned dpl = 0;
  bool present = false;
  std::uint16_t selector = 0;
  unsigned ist = 0;  // 0: no IST; 1-7: TSS.IST[n]
  std::uint64_t offset = 0;
  bool interrupt_gate() const { return type == 0x0e; }
  bool valid_in_long_mode() const { return type == 0x0e || type == 0x0f; }
};
Gate64 decode_gate64(std::uint64_t low, std::uint64_t high);

// The 64-bit TSS fields an event reads: RSP0-2 and IST1-7.
struct Tss64 {
  static constexpr std::uint32_t kRsp0 = 0x04, kIst1 = 0x24;
  static constexpr std::uint32_t rsp(unsigned cpl) { return kRsp0 + 8 * cpl; }
  static constexpr std::uint32_t ist(unsigned n) { return kIst1 + 8 * (n - 1); }
};

// The frame of a 64-bit gate, in push order: SS, RSP, RFLAGS, CS, RIP and the
// error code if any, 8 bytes each, below the 16-byte aligned stack top.
struct EventFrame64Input {
  std::uint64_t rflags = 0;
  std::uint16_t cs = 0;
  std::uint64_t return_rip = 0;
  std::uint16_t ss = 0;
  std::uint64_t rsp = 0;  // as it was, before the switch and the alignment
  bool has_error = false;
  std::uint32_t error = 0;
  bool interrupt_gate = false;  // clears IF (a trap gate does not)
};
struct EventFrame64 {
  std::array<std::uint64_t, 6> slots{};
  unsigned count = 0;
  std::uint64_t new_rflags = 0;
};
EventFrame64 build_event_frame64(const EventFrame64Input& in);
// SDM vol. 3 6.14.2: in 64-bit mode the stack is aligned to 16 bytes before the pushes.
constexpr std::uint64_t frame_top(std::uint64_t rsp) { return rsp & ~std::uint64_t{15}; }

// What SS holds after a null selector was loaded in 64-bit mode (an event
// that changes CPL, an IRET back to a kernel whose SS was null): unusable, its
// RPL and DPL the CPL, as VMX and KVM keep it (SS.DPL is their CPL).
api::Segment null_stack_segment(std::uint16_t selector, unsigned cpl);

// The flat segments SYSCALL and SYSRET load (fixed attributes, no descriptor read).
api::Segment flat_code_segment(std::uint16_t selector, unsigned dpl, bool long_mode_code);
api::Segment flat_stack_segment(std::uint16_t selector, unsigned dpl);

// SDM IRET and far RET to an outer ring: ES, DS, FS and GS become null where
// the new CPL may not use them (data or non-conforming code with DPL < CPL).
// FS and GS keep their hidden bases: in 64-bit mode those are the MSR-set
// bases (QEMU keeps all bases; only FS/GS's are observable in 64-bit mode).
void null_inaccessible_data_segments(api::VcpuState& state, unsigned new_cpl);

// The descriptor that selector `sel` names in the GDT or the LDT, or
// #GP(`error`) when it lies outside its table (or the LDT is unusable).
Outcome<std::uint64_t> read_descriptor(const api::VcpuState& state, LinearMemory& mem, std::uint16_t sel,
                                       std::uint32_t error);

enum class EventKind : std::uint8_t {
  HardwareInterrupt,  // external interrupt or NMI
  Exception,          // raised by the CPU
  SoftwareInterrupt,  // INT n, INT3, INTO: the gate's DPL is checked, EXT is clear
  Icebp,              // INT1 (F1): a #DB like an exception: no DPL check, EXT set
};

// Delivers `vector` through the 64-bit IDT (EFER.LMA set: the caller
// dispatches legacy modes).  Not here: combining a fault raised by the
// delivery with the event being delivered (#DF or serial delivery, SDM vol. 3
// table 6-5): the 32-bit engine has no class table to reuse either (it turns
// any fault during delivery into #DF and a fault during #DF into shutdown),
// so the caller decides and calls deliver again.
Check deliver(api::VcpuState& state, LinearMemory& mem, std::uint8_t vector, bool has_error, std::uint32_t error,
              EventKind kind);

// IRET in 64-bit mode (CS.L = 1 under EFER.LMA): operand size 8 (IRETQ) or 4
// (IRETD, 4-byte slots).  Pops RIP, CS, RFLAGS, RSP and SS: 64-bit mode
// always pops SS:RSP.  Compatibility mode's IRET (a legacy frame, SS:ESP only
// on a privilege change) is not here.
Check iret64(api::VcpuState& state, LinearMemory& mem, unsigned operand_size);

// Where SYSCALL and SYSRET differ between vendors (the guest's CPUID vendor):
//  * SYSCALL in compatibility mode: Intel #UD, AMD enters at CSTAR.
//  * SYSRET in compatibility mode: Intel #UD, AMD executes it.
//  * SYSRET to 64-bit mode with a non-canonical RCX: Intel #GP(0) at CPL 0,
//    before anything changes; AMD completes the SYSRET and the fetch at the
//    non-canonical RIP faults (#GP(0)) at CPL 3, on the user's stack.
// (QEMU follows AMD on the first; lm64syscall exercises neither the second
// nor the third, so its expected output says nothing about them.)
enum class Vendor : std::uint8_t { Intel, Amd };

// SYSCALL: state.rip is the next instruction's RIP (RCX gets it).
Check syscall(api::VcpuState& state, Vendor vendor = Vendor::Intel);
// SYSRET with operand size 8 (to 64-bit mode) or 4 (to compatibility mode).
Check sysret(api::VcpuState& state, unsigned operand_size, Vendor vendor = Vendor::Intel);
Check swapgs(api::VcpuState& state);

}  // namespace modevisor::bt::bt64
