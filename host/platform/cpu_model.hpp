// Named guest CPU models: the CPUID a VM declares (`cpu_model:` in its YAML)
// and every monitor mode then presents (api::VmSpec::cpuid), so the guest
// sees the same processor whichever mode or host runs it.
//   host         no model: each mode's own CPUID (KVM: the host CPU's,
//                filtered; bt-swmmu: its P6-class model).  The default.
//   portable-32  a P6-class "GenuineIntel" family 6 model 15 stepping 1 with
//                FPU, PSE, TSC, MSR, PAE, CX8, APIC, SEP, PGE, CMOV, PAT, MMX,
//                FXSR, SSE, SSE2 and NX, no hypervisor leaves: what every mode
//                can present, for 32-bit guests that may move between modes
//                and hosts (an EVC-like baseline).
//   kvm64        QEMU's x86-64 baseline for KVM hosts ("Common KVM processor",
//                GenuineIntel family 15 model 6: SSE3, CX16, LM, NX, SYSCALL)
//                plus KVM's paravirtual clock: 64-bit guests that may move
//                between KVM hosts.  The hardware modes only (bt-swmmu would
//                hide long mode and the clock).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <modevisor/api/cpuid.hpp>

namespace modevisor::host {

std::vector<std::string> cpu_model_names();
// Throws std::invalid_argument for an unknown name.
api::CpuidTable cpu_model(std::string_view name);

}  // namespace modevisor::host
