// A static initializer that throws while the library is being loaded: in the
// host's own process that is std::terminate.  The host must refuse the plugin
// and go on.
#include <stdexcept>

#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {

struct ThrowsOnLoad {
  ThrowsOnLoad() { throw std::runtime_error("static initializer failed on purpose"); }
};
const ThrowsOnLoad throws_on_load;

modevisor::api::PluginDescriptor describe() { return fixture::valid_descriptor("test-throws-static-init"); }
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<fixture::IdleMonitor>(); }

}  // namespace

MODEVISOR_PLUGIN(describe, create)
