// hv-swmmu: hardware-assisted execution (VT-x/AMD-V through KVM) with shadow
// page tables kept by the driver (the seed's HV-swMMU).
#include <modevisor/api/plugin.hpp>

#include "hv_vm.hpp"

namespace {

using namespace modevisor::api;

PluginDescriptor describe() {
  PluginDescriptor d;
  d.name = "hv-swmmu";
  d.log_token = "HV";
  d.version = "0.1.0";
  d.execution = Technique::Hardware;
  d.mmu = Technique::Software;
  d.deterministic = true;  // shadow paging keeps every guest page-table update visible
  d.summary = "VT-x/AMD-V through KVM, with shadow page tables (KVM with ept=0/npt=0)";
  d.host.hardware_virtualization = true;
  d.host.driver_shadow_paging = true;
  d.guests.bits32 = true;
  d.guests.bits64 = true;
  return d;
}

class HvSwMmuMonitor final : public Monitor {
 public:
  std::vector<std::string> probe(const HostCapabilities&) override { return {}; }

  std::unique_ptr<VirtualMachine> create_vm(const VmSpec& spec, VmServices services) override {
    return modevisor::hv::create_hv_vm({"hv-swmmu", "0.1.0", false}, spec, services);
  }
};

std::unique_ptr<Monitor> create() { return std::make_unique<HvSwMmuMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
