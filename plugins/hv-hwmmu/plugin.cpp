// hv-hwmmu: hardware-assisted execution with nested paging (EPT/RVI) through
// KVM (the seed's HV-hwMMU).
#include <modevisor/api/plugin.hpp>

#include "hv_vm.hpp"

namespace {

using namespace modevisor::api;

PluginDescriptor describe() {
  PluginDescriptor d;
  d.name = "hv-hwmmu";
  d.log_token = "HWMMU";
  d.version = "0.1.0";
  d.execution = Technique::Hardware;
  d.mmu = Technique::Hardware;
  d.deterministic = false;  // the seed: RVI/EPT lack the determinism Fault Tolerance needs
  d.summary = "VT-x/AMD-V through KVM, with nested paging (EPT/NPT)";
  d.host.hardware_virtualization = true;
  d.host.nested_paging = true;
  d.guests.bits32 = true;
  d.guests.bits64 = true;
  return d;
}

class HvHwMmuMonitor final : public Monitor {
 public:
  std::vector<std::string> probe(const HostCapabilities&) override { return {}; }

  std::unique_ptr<VirtualMachine> create_vm(const VmSpec& spec, VmServices services) override {
    return modevisor::hv::create_hv_vm({"hv-hwmmu", "0.1.0", true}, spec, services);
  }
};

std::unique_ptr<Monitor> create() { return std::make_unique<HvHwMmuMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
