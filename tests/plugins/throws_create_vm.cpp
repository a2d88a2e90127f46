// A valid plugin whose create_vm() throws a std::runtime_error (not the API's
// MonitorError): the host must turn it into its own error and go on.
#include <stdexcept>

#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {

class ThrowingCreateMonitor final : public fixture::IdleMonitor {
 public:
  std::unique_ptr<modevisor::api::VirtualMachine> create_vm(const modevisor::api::VmSpec&,
                                                            modevisor::api::VmServices) override {
    throw std::runtime_error("create_vm failed on purpose");
  }
};

modevisor::api::PluginDescriptor describe() { return fixture::valid_descriptor("test-throws-create-vm"); }
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<ThrowingCreateMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
