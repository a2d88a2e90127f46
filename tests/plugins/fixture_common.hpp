// Shared by the test plugin fixtures: a descriptor that passes every check
// and a monitor that can run nothing.  Each fixture breaks one thing.
#pragma once

#include <modevisor/api/monitor.hpp>

namespace fixture {

using namespace modevisor::api;

inline PluginDescriptor valid_descriptor(const char* name) {
  PluginDescriptor d;
  d.name = name;
  d.log_token = "BT";
  d.version = "9.9.9";
  d.execution = Technique::Software;
  d.mmu = Technique::Software;
  d.summary = "test fixture";
  d.guests.bits32 = true;
  return d;
}

class IdleMonitor : public Monitor {
 public:
  std::vector<std::string> probe(const HostCapabilities&) override { return {}; }
  std::unique_ptr<VirtualMachine> create_vm(const VmSpec& spec, VmServices) override {
    throw MonitorError("test fixture cannot run VM '" + spec.name + "'");
  }
};

}  // namespace fixture
