// The mode-neutral architectural state of a virtual CPU.
//
// Everything a guest can observe of its CPU lives here, in architectural terms
// (not KVM's structures, not the translator's), so that a vCPU stopped under
// one monitor mode can be resumed under another, on this host or after
// migration.  Hidden segment state is kept explicitly: a guest may rely on a
// descriptor cache that no longer matches its GDT.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

namespace modevisor::api {

struct Segment {
  std::uint16_t selector = 0;
  std::uint64_t base = 0;
  std::uint32_t limit = 0;     // byte granular (already scaled by G)
  std::uint8_t type = 0;       // descriptor type field (4 bits)
  bool s = false;              // code/data (true) or system (false)
  std::uint8_t dpl = 0;
  bool present = false;
  bool avl = false;
  bool l = false;              // 64-bit code
  bool db = false;             // default operand size 32
  bool g = false;              // granularity bit as loaded
  bool unusable = false;       // null selector loaded (VMX "unusable")
};

struct DescriptorTable {
  std::uint64_t base = 0;
  std::uint16_t limit = 0;
};

struct Msr {
  std::uint32_t index = 0;
  std::uint64_t value = 0;
};

// FXSAVE image: x87 (FCW, FSW, tag, FOP, FIP/FDP, ST0-7), MXCSR, XMM0-15.
// Default-constructed it is the state after reset as KVM and QEMU set it:
// FCW 0x037f (all x87 exceptions masked), MXCSR 0x1f80 (all SSE exceptions
// masked), everything else zero.
struct FpuState {
  FpuState() {
    fxsave[0] = 0x7f;  // FCW, little-endian
    fxsave[1] = 0x03;
    fxsave[25] = 0x1f;  // MXCSR = 0x00001f80 at bytes 24-27
    fxsave[24] = 0x80;
  }
  alignas(16) std::array<std::uint8_t, 512> fxsave{};
  std::uint64_t xcr0 = 1;
  std::vector<std::uint8_t> xsave_extended;  // XSAVE area beyond the legacy 512+64 bytes, if any
};

// An event the CPU must deliver before executing the next instruction.
struct PendingException {
  std::uint8_t vector = 0;
  bool has_error_code = false;
  std::uint32_t error_code = 0;
  bool injected = false;  // delivery had begun (re-deliver, don't re-evaluate)
};

struct PendingEvents {
  std::optional<PendingException> exception;
  std::optional<std::uint8_t> interrupt;  // external interrupt already acknowledged
  bool nmi_pending = false;
  bool nmi_masked = false;
  bool interrupt_shadow = false;  // after STI or MOV SS
};

// Runnable: executing.  Halted: in HLT until an interrupt (or NMI).
// WaitForSipi: after INIT (and an application processor from power-on): runs
// no code until a STARTUP IPI; the host sets and clears it through load_vcpu.
// Shutdown: after a triple fault.
enum class RunState : std::uint8_t { Runnable, Halted, WaitForSipi, Shutdown };

struct VcpuState {
  // General registers: RAX RCX RDX RBX RSP RBP RSI RDI R8-R15, by encoding.
  std::array<std::uint64_t, 16> gpr{};
  std::uint64_t rip = 0;
  std::uint64_t rflags = 0x2;

  Segment es, cs, ss, ds, fs, gs, ldtr, tr;
  DescriptorTable gdtr, idtr;

  std::uint64_t cr0 = 0x60000010, cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0;
  std::uint64_t efer = 0;
  std::array<std::uint64_t, 8> dr{0, 0, 0, 0, 0, 0, 0xffff0ff0, 0x400};

  // Other MSRs the guest set: SYSENTER_*, STAR/LSTAR/CSTAR/FMASK,
  // KERNEL_GS_BASE, PAT, TSC (as guest TSC value), MISC_ENABLE ...
  std::vector<Msr> msrs;

  FpuState fpu;
  PendingEvents events;
  // The local APIC is not here: its registers, timer and the IA32_APIC_BASE
  // MSR are the platform's device state (one owner, saved once); monitors
  // reach the MSR through Platform::apic_base.
  RunState run_state = RunState::Runnable;

  std::optional<std::uint64_t> msr(std::uint32_t index) const {
    for (const auto& m : msrs)
      if (m.index == index) return m.value;
    return std::nullopt;
  }
  void set_msr(std::uint32_t index, std::uint64_t value) {
    for (auto& m : msrs)
      if (m.index == index) { m.value = value; return; }
    msrs.push_back({index, value});
  }
};

namespace gpr {
enum : unsigned { rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15 };
}

}  // namespace modevisor::api
