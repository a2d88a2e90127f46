// A plugin that calls exit(0) from a static initializer: loaded in the host's
// own process it would end the host with a success status and no output.
#include <cstdlib>

#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {

struct ExitsOnLoad {
  ExitsOnLoad() { std::exit(0); }
};
const ExitsOnLoad exits_on_load;

modevisor::api::PluginDescriptor describe() { return fixture::valid_descriptor("test-exits-while-loading"); }
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<fixture::IdleMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
