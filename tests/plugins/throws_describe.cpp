// describe() throws: the host must report it and go on.
#include <stdexcept>

#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

namespace {
modevisor::api::PluginDescriptor describe() { throw std::runtime_error("describe failed on purpose"); }
std::unique_ptr<modevisor::api::Monitor> create() { return std::make_unique<fixture::IdleMonitor>(); }
}  // namespace

MODEVISOR_PLUGIN(describe, create)
