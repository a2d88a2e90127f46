// BT64's monitor-side emulation of one instruction in long mode (64-bit mode
// when CS.L, compatibility mode otherwise): what the translator classifies as
// Special (privileged and sensitive instructions, string instructions, I/O,
// far transfers, segment loads, PUSHF/POPF/CLI/STI, INT/IRET/SYSCALL/SYSRET,
// CPUID, MSRs, control, debug and descriptor-table registers, HLT).  A pure
// component: the architectural state is an api::VcpuState, guest memory a
// LinearMemory, and what only the engine knows (ports, CPUID, other MSRs, the
// TSC, its shadow paging) comes through Emulator64Env.  The 32-bit engine's
// counterpart is emulate.cpp.
//
// Conventions (those of long_mode_events.hpp):
//  * A fault leaves RIP at the instruction and the state as it was, except
//    what the CPU itself keeps: completed iterations of a REP string
//    instruction, DR6.BD and the cleared DR7.GD of a general-detect #DB.
//  * INT n, INT3, INT1, INTO, SYSCALL, SYSRET and IRET complete here (the
//    event is delivered through long_mode_events): the result is Next with
//    RIP at the handler; a fault while delivering is returned at the INT.
//  * Not here: the single-step trap after an instruction with TF set, code
//    breakpoints, delivering the returned fault (and CR2), NMI unblocking
//    (the result says when an IRET ran), the interrupt shadow (reported).
#pragma once

#include <modevisor/api/arch_state.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "bt64/long_mode_events.hpp"
#include "guest_fault.hpp"

namespace modevisor::bt::bt64 {

// What the engine provides.
struct Emulator64Env {
  virtual ~Emulator64Env() = default;
  virtual LinearMemory& memory() = 0;
  virtual std::uint64_t port_in(std::uint16_t port, unsigned size) = 0;
  virtual void port_out(std::uint16_t port, unsigned size, std::uint64_t value) = 0;
  // The guest's CPU model: EAX, EBX, ECX, EDX.
  virtual std::array<std::uint32_t, 4> cpuid(std::uint32_t leaf, std::uint32_t subleaf) = 0;
  // MSRs the emulator does not keep in the state itself (see emulator64.cpp's
  // list): nullopt or false make the RDMSR/WRMSR #GP(0).
  virtual std::optional<std::uint64_t> rdmsr(std::uint32_t index) = 0;
  virtual bool wrmsr(std::uint32_t index, std::uint64_t value) = 0;
  virtual std::uint64_t tsc() = 0;  // the guest's TSC
  // CR0 (PE, WP, PG, CD, NW), CR3, CR4 (a paging bit) or EFER.NXE/LME
  // changed: drop the shadow state built from the old values.
  virtual void paging_changed() = 0;
  virtual void invlpg(std::uint64_t la) = 0;
  // REP MOVS/STOS in bulk: `bytes` (within one page at each address, the
  // ranges not overlapping) copied from `src`, or filled with the `size`-byte
  // `pattern`, as the elements one by one would.  False: not done, nothing
  // changed (not RAM, or an element would fault): the emulator goes element
  // by element, which raises the fault where it belongs.
  virtual bool copy_block(std::uint64_t /*dst*/, std::uint64_t /*src*/, unsigned /*bytes*/, Privilege) {
    return false;
  }
  virtual bool fill_block(std::uint64_t /*dst*/, std::uint64_t /*pattern*/, unsigned /*size*/, unsigned /*bytes*/,
                          Privilege) {
    return false;
  }
};

enum class StepKind : std::uint8_t {
  Next,         // emulated: the state holds the next RIP (or the handler's, the target's)
  Halt,         // HLT: RIP past it; the caller waits for an interrupt
  Fault,        // `fault` for the caller to deliver at the unchanged RIP
  Unsupported,  // not emulated (`what` says which and why); nothing changed
};

struct StepResult {
  StepKind kind = StepKind::Next;
  std::optional<Fault> fault;
  std::string what;  // the instruction, for Unsupported (and a decoding failure)
  // A #PF's linear address (the caller's CR2).
  std::optional<std::uint64_t> fault_address;
  // STI that set IF, MOV SS, POP SS: no interrupt before the next instruction.
  bool interrupt_shadow = false;
  // An IRET ran, completed or faulted: either way it ends NMI blocking.
  bool iret = false;
  // A REP string instruction stopped after a bounded number of iterations with
  // RIP unchanged: running it again continues (as after an interrupt).
  bool string_interrupted = false;
};

// Emulates the instruction at state.rip, whose bytes are `bytes` (what the
// caller could fetch: `size` of them).
StepResult emulate_one(api::VcpuState& state, Emulator64Env& env, const std::uint8_t* bytes, std::size_t size,
                       Vendor vendor);

// The iterations of a REP string instruction one call runs at most.
inline constexpr std::uint64_t kMaxStringIterations = 1u << 16;

}  // namespace modevisor::bt::bt64
