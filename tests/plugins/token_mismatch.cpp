// Hardware execution with shadow paging is mode HV, but it logs as HWMMU.
#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {
modevisor::api::PluginDescriptor describe() {
  auto d = fixture::valid_descriptor("test-token-mismatch");
  d.execution = modevisor::api::Technique::Hardware;
  d.log_token = "HWMMU";
  return d;
}
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<fixture::IdleMonitor>(); }
}  // namespace

MODEVISOR_PLUGIN(describe, create)
