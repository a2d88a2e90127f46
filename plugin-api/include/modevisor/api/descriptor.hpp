// The plugin descriptor: who a mode plugin is and what it needs.
#pragma once

#include <cstdint>
#include <string>

#include "modevisor/api/abi.hpp"

namespace modevisor::api {

enum class Technique { Software, Hardware };

// What the plugin needs from the host.  The host checks these against
// HostCapabilities; the plugin's own probe() may add checks of its own.
struct HostNeeds {
  bool hardware_virtualization = false;  // VT-x/AMD-V through a usable driver
  bool nested_paging = false;            // the driver can give the VM EPT/NPT
  bool driver_shadow_paging = false;     // the driver can run the VM with shadow paging
};

// Which guests the plugin runs.
struct GuestSupport {
  bool bits32 = true;
  bool bits64 = false;
  // 64-bit guests only where the CPU keeps segment limits in long mode
  // (the seed's BT64: AMD from Opteron Rev D, never Intel).
  bool bits64_needs_segment_limits = false;
  // The most vCPUs one VM may have under this plugin; 0: no limit of the
  // plugin's own (the driver may still have one).
  unsigned max_vcpus = 0;
};

struct PluginDescriptor {
  std::string name;         // "bt-swmmu"
  std::string log_token;    // the seed's token: "BT", "HV" or "HWMMU"
  std::string version;      // "0.1.0"
  std::uint32_t abi_version = kAbiVersion;
  Technique execution = Technique::Software;
  Technique mmu = Technique::Software;
  bool deterministic = false;  // execution can be replayed exactly (Fault Tolerance)
  std::string summary;         // one line for `modevisor plugins`
  HostNeeds host;
  GuestSupport guests;
};

// The seed's three monitor modes; software execution with a hardware MMU is
// not a valid combination (RVI/EPT are inseparable from AMD-V/VT-x).
inline const char* mode_token(Technique execution, Technique mmu) {
  if (execution == Technique::Software) return mmu == Technique::Software ? "BT" : nullptr;
  return mmu == Technique::Software ? "HV" : "HWMMU";
}

}  // namespace modevisor::api
