// Software execution with a hardware MMU: no monitor mode.
#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {
modevisor::api::PluginDescriptor describe() {
  auto d = fixture::valid_descriptor("test-bad-descriptor");
  d.mmu = modevisor::api::Technique::Hardware;
  return d;
}
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<fixture::IdleMonitor>(); }
}  // namespace

MODEVISOR_PLUGIN(describe, create)
