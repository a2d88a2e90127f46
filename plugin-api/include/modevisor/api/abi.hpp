// The binary contract between the host and a mode plugin.
//
// A plugin is a shared library exporting three C-linkage entry points.  The
// host calls `modevisor_plugin_abi_version` first; only when it returns the
// host's kAbiVersion are the other two (which pass C++ types) called.  Any
// change to a type in plugin-api/ that alters its layout bumps kAbiVersion.
#pragma once

#include <cstdint>

namespace modevisor::api {

// 2: VmServices::hypervisor
// 3: Platform::cpu_events/acknowledge_nmi (NMI, INIT, STARTUP), GuestSupport::max_vcpus
// 4: Platform::wait_for_cpu_event (HLT with interrupts disabled)
// 5: VmSpec::cpuid (a VM's CPU model), Hypervisor::create_vm takes it
// 6: VcpuState without LapicState (the local APIC is the platform's), Platform::apic_base/set_apic_base
// 7: ExitKind::ModeChange (a plugin hands the guest to another mode mid-run)
// 8: Platform::change_count (a new virtual: the Platform vtable changed)
inline constexpr std::uint32_t kAbiVersion = 8;

namespace symbols {
inline constexpr const char* kAbiVersion = "modevisor_plugin_abi_version";
inline constexpr const char* kDescribe = "modevisor_plugin_describe";
inline constexpr const char* kCreate = "modevisor_plugin_create";
}  // namespace symbols

}  // namespace modevisor::api
