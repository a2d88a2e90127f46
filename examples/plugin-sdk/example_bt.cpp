// example-bt: the smallest useful shape of a mode plugin.  It declares a BT
// mode (software execution, software MMU), checks one thing about the host in
// probe(), and refuses to create VMs, since it has no engine.
#include <modevisor/api/plugin.hpp>

namespace {

using namespace modevisor::api;

PluginDescriptor describe() {
  PluginDescriptor d;
  d.name = "example-bt";   // [a-z0-9][a-z0-9._-]*, unique among loaded plugins
  d.log_token = "BT";      // must equal mode_token(execution, mmu)
  d.version = "0.1.0";
  // d.abi_version keeps its default, kAbiVersion of the headers built against.
  d.execution = Technique::Software;
  d.mmu = Technique::Software;
  d.deterministic = true;
  d.summary = "example plugin from the plugin SDK; runs no guests";
  // A BT monitor needs nothing from the driver: d.host stays all false.
  d.guests.bits32 = true;
  d.guests.bits64 = false;
  return d;
}

class ExampleMonitor final : public Monitor {
 public:
  // Checks beyond the descriptor's needs, as plain-words reasons.
  std::vector<std::string> probe(const HostCapabilities& host) override {
    if (!host.long_mode) return {"example-bt emits x86-64 host code; this CPU has no long mode"};
    return {};
  }

  std::unique_ptr<VirtualMachine> create_vm(const VmSpec& spec, VmServices) override {
    throw MonitorError("example-bt cannot run VM '" + spec.name + "': it is an example without an engine");
  }
};

std::unique_ptr<Monitor> create() { return std::make_unique<ExampleMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
