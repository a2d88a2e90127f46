// A valid plugin whose probe() dereferences a null pointer: it loads, and its
// probe's crash becomes a host problem instead of the host's death.
#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {

int* volatile nowhere = nullptr;

class CrashingProbeMonitor final : public fixture::IdleMonitor {
 public:
  std::vector<std::string> probe(const modevisor::api::HostCapabilities&) override {
    *nowhere = 42;  // SIGSEGV
    return {};
  }
};

modevisor::api::PluginDescriptor describe() { return fixture::valid_descriptor("test-crashes-probe"); }
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<CrashingProbeMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
