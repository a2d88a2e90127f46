// Exports the ABI version and a valid descriptor, but no create entry point.
#include <modevisor/api/plugin.hpp>

#include "fixture_common.hpp"

extern "C" BOOST_SYMBOL_EXPORT std::uint32_t modevisor_plugin_abi_version() {
  return modevisor::api::kAbiVersion;
}

extern "C" BOOST_SYMBOL_EXPORT modevisor::api::PluginDescriptor modevisor_plugin_describe() {
  return fixture::valid_descriptor("test-missing-factory");
}
