// A valid plugin whose probe() throws: it loads, and host_problems() turns the
// exception into a reason.
#include <stdexcept>

#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {

class ThrowingProbeMonitor final : public fixture::IdleMonitor {
 public:
  std::vector<std::string> probe(const modevisor::api::HostCapabilities&) override {
    throw std::runtime_error("probe failed on purpose");
  }
};

modevisor::api::PluginDescriptor describe() { return fixture::valid_descriptor("test-throws-probe"); }
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<ThrowingProbeMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
