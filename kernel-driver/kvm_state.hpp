// Conversions between KVM's vCPU structures and the mode-neutral
// api::VcpuState.  Pure functions (no ioctls), so they are unit tested
// without /dev/kvm; kvm_hypervisor.cpp moves the structures in and out.
#pragma once

#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include <modevisor/api/arch_state.hpp>

namespace modevisor::kvm {

// The MSRs a vCPU's state carries besides what SREGS holds (EFER, FS/GS base,
// APIC base), saved and restored when the driver lists them.
inline constexpr std::array<std::uint32_t, 14> kStateMsrs = {
    0x10,        // IA32_TSC (as the guest reads it)
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0xc0000081,  // STAR
    0xc0000082,  // LSTAR
    0xc0000083,  // CSTAR
    0xc0000084,  // SFMASK (FMASK)
    0xc0000102,  // KERNEL_GS_BASE
    0xc0000103,  // TSC_AUX
    // KVM's paravirtual clock (cpu_model kvm64, and `host` where KVM offers
    // it): where the guest registered its per-vCPU time page.  The wall-clock
    // MSRs are not state but a command (a write makes KVM store the wall
    // clock at that guest address, at 0 for the value 0): never reloaded.
    0x12,        // MSR_KVM_SYSTEM_TIME
    0x4b564d01,  // MSR_KVM_SYSTEM_TIME_NEW
};

inline constexpr std::size_t kXsaveLegacyBytes = 512;
inline constexpr std::size_t kXsaveHeaderBytes = 64;
inline constexpr std::size_t kXsaveBytes = 4096;  // kvm_xsave::region (sizeof may add padding for `extra`)

void regs_to_state(const kvm_regs& regs, api::VcpuState& state);
kvm_regs regs_from_state(const api::VcpuState& state);

api::Segment segment_from_kvm(const kvm_segment& seg);
kvm_segment segment_to_kvm(const api::Segment& seg);

// SREGS: segments with hidden parts, GDTR/IDTR, CR0/2/3/4/8, EFER.
// The interrupt bitmap is never used (interrupts move through VCPU_EVENTS).
// The APIC base in SREGS is KVM's copy of the platform's MSR (its owner,
// api::Platform::apic_base): not part of the vCPU state, given separately.
void sregs_to_state(const kvm_sregs& sregs, api::VcpuState& state);
kvm_sregs sregs_from_state(const api::VcpuState& state, std::uint64_t apic_base);

// FPU from KVM_GET_FPU (for drivers without XSAVE) <-> the FXSAVE image.
void fpu_to_state(const kvm_fpu& fpu, api::FpuState& state);
kvm_fpu fpu_from_state(const api::FpuState& state);

// KVM_GET_XSAVE region (standard, uncompacted format): bytes 0-511 are the
// FXSAVE image, 512-575 the XSAVE header, the rest the extended components.
// `xcr0` comes from KVM_GET_XCRS (1 when the driver has none).
void xsave_to_state(const kvm_xsave& xsave, std::uint64_t xcr0, api::FpuState& state);
// `supported_xcr0`: the components the driver saves (from CPUID 0xD).
kvm_xsave xsave_from_state(const api::FpuState& state, std::uint64_t supported_xcr0);

void events_to_state(const kvm_vcpu_events& events, api::PendingEvents& state);
kvm_vcpu_events events_from_state(const api::PendingEvents& state);

void debugregs_to_state(const kvm_debugregs& dr, api::VcpuState& state);
kvm_debugregs debugregs_from_state(const api::VcpuState& state);

// Register dump for Shutdown/Error diagnostics.
std::string format_state(const api::VcpuState& state);

}  // namespace modevisor::kvm
