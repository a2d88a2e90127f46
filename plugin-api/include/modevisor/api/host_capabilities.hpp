// What a host offers to monitors: the CPU's virtualization features and the
// privileged driver's state.  The host fills this in from a live probe or from
// a CPU profile (a described host, for what-if evaluation); plugins read it.
#pragma once

#include <string>
#include <vector>

namespace modevisor::api {

enum class CpuVendor { Intel, Amd, Other };

// Whether the driver lets each VM choose its MMU technique (the VMkernel model)
// or fixes it for the whole host (Linux KVM: the kvm_intel `ept` and kvm_amd
// `npt` module parameters).
enum class MmuSelection { PerVm, HostWide };

struct DriverState {
  bool present = false;           // e.g. /dev/kvm exists
  bool usable = false;            // opens, and gives hardware-assisted execution
  std::string name;               // "kvm_amd", "kvm_intel", "kvm_pvm", "modelled"
  std::string detail;             // why it is not usable, in plain words
  MmuSelection mmu_selection = MmuSelection::PerVm;
  bool nested_paging_enabled = false;  // EPT/NPT switched on in the driver
  int api_version = 0;
};

struct HostCapabilities {
  std::string source;      // "probed: this host" or "profile: intel-nehalem"
  CpuVendor vendor = CpuVendor::Other;
  std::string vendor_id;   // "GenuineIntel", "AuthenticAMD"
  std::string model_name;
  unsigned family = 0, model = 0, stepping = 0;

  bool long_mode = false;                 // x86-64
  bool hardware_virtualization = false;   // VT-x or AMD-V in the CPU
  bool nested_paging = false;             // EPT or RVI/NPT in the CPU
  bool apic_virtualization = false;       // TPR shadow/FlexPriority or AVIC
  bool long_mode_segment_limits = false;  // AMD from Opteron Rev D (the seed's BT64 condition)
  std::vector<std::string> quirks;        // e.g. "amd-v-revf-erratum"
  std::vector<std::string> masked;        // features hidden by host configuration (EVC-like)

  DriverState driver;
};

// Hardware-assisted execution is available to a VM.
inline bool can_use_hardware_execution(const HostCapabilities& h) {
  return h.hardware_virtualization && h.driver.usable;
}

// The driver can run a VM with nested paging (EPT/NPT).
inline bool can_use_nested_paging(const HostCapabilities& h) {
  return can_use_hardware_execution(h) && h.nested_paging &&
         (h.driver.mmu_selection == MmuSelection::PerVm || h.driver.nested_paging_enabled);
}

// The driver can run a VM with hardware execution and shadow page tables.
inline bool can_use_driver_shadow_paging(const HostCapabilities& h) {
  return can_use_hardware_execution(h) &&
         (h.driver.mmu_selection == MmuSelection::PerVm || !h.driver.nested_paging_enabled);
}

}  // namespace modevisor::api
