// bt-swmmu: binary translation with shadow page tables (the seed's BT-swMMU).
#include <modevisor/api/plugin.hpp>

namespace {

using namespace modevisor::api;

PluginDescriptor describe() {
  PluginDescriptor d;
  d.name = "bt-swmmu";
  d.log_token = "BT";
  d.version = "0.1.0";
  d.execution = Technique::Software;
  d.mmu = Technique::Software;
  d.deterministic = true;  // no hardware nondeterminism: the translator sees every event
  d.summary = "binary translation with shadow page tables; needs no hardware virtualization";
  d.guests.bits32 = true;
  // BT64 is efficient only where long mode keeps segment limits (the seed).
  d.guests.bits64 = true;
  d.guests.bits64_needs_segment_limits = true;
  return d;
}

class BtMonitor final : public Monitor {
 public:
  std::vector<std::string> probe(const HostCapabilities& host) override {
    std::vector<std::string> problems;
    if (!host.long_mode) problems.emplace_back("the translator emits x86-64 host code; this CPU has no long mode");
    return problems;
  }

  std::unique_ptr<VirtualMachine> create_vm(const VmSpec& spec, VmServices) override {
    throw MonitorError("bt-swmmu 0.1.0 cannot run VM '" + spec.name +
                       "' yet: its translation engine is not built (see the BT-swMMU issue); "
                       "no guest code is executed");
  }
};

std::unique_ptr<Monitor> create() { return std::make_unique<BtMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
