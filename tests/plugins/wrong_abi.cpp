// Built against a future ABI: the host must stop after the version check and
// never call the C++ entry points (they abort, so a host that does crashes).
#include <cstdlib>

#include <modevisor/api/plugin.hpp>

extern "C" BOOST_SYMBOL_EXPORT std::uint32_t modevisor_plugin_abi_version() {
  return modevisor::api::kAbiVersion + 6;
}

extern "C" BOOST_SYMBOL_EXPORT modevisor::api::PluginDescriptor modevisor_plugin_describe() { std::abort(); }

extern "C" BOOST_SYMBOL_EXPORT std::unique_ptr<modevisor::api::Monitor> modevisor_plugin_create() {
  std::abort();
}
