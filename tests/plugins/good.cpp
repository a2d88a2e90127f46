// A valid plugin, "test-good": the host must load it next to broken ones.
#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {
modevisor::api::PluginDescriptor describe() { return fixture::valid_descriptor("test-good"); }
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<fixture::IdleMonitor>(); }
}  // namespace

MODEVISOR_PLUGIN(describe, create)
