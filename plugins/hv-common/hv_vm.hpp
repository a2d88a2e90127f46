// The hardware-assisted VM both HV plugins build: vCPUs of the host's
// api::Hypervisor (KVM) run against the host's Platform.  The two plugins
// differ only in the MMU the driver must be running (nested or shadow paging).
#pragma once

#include <memory>
#include <string>

#include <modevisor/api/hypervisor.hpp>
#include <modevisor/api/monitor.hpp>

namespace modevisor::hv {

struct HvMode {
  std::string plugin;          // "hv-hwmmu"
  std::string version;         // "0.1.0"
  bool nested_paging = false;  // the driver must give VMs EPT/NPT (else shadow paging)
};

// Throws api::MonitorError when the host lent no hypervisor, when its MMU is
// not the mode's (naming the module parameter to change), or when the driver
// refuses the VM.
std::unique_ptr<api::VirtualMachine> create_hv_vm(const HvMode& mode, const api::VmSpec& spec,
                                                  api::VmServices services);

// Why `info` does not suit `mode`; empty when it does.
std::string mmu_mismatch(const HvMode& mode, const api::HypervisorInfo& info);

}  // namespace modevisor::hv
