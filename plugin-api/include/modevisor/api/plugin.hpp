// Export a mode plugin:
//
//   MODEVISOR_PLUGIN(describe_fn, create_fn)
//
// where `describe_fn` returns a PluginDescriptor and `create_fn` returns a
// std::unique_ptr<Monitor>.  Use once per shared library.
#pragma once

#include <boost/config.hpp>
#include <cstdint>
#include <memory>

#include "modevisor/api/abi.hpp"
#include "modevisor/api/descriptor.hpp"
#include "modevisor/api/monitor.hpp"

namespace modevisor::api {
using AbiVersionFn = std::uint32_t();
using DescribeFn = PluginDescriptor();
using CreateFn = std::unique_ptr<Monitor>();
}  // namespace modevisor::api

#define MODEVISOR_PLUGIN(describe_fn, create_fn)                                          \
  extern "C" BOOST_SYMBOL_EXPORT std::uint32_t modevisor_plugin_abi_version() {            \
    return ::modevisor::api::kAbiVersion;                                                  \
  }                                                                                        \
  extern "C" BOOST_SYMBOL_EXPORT ::modevisor::api::PluginDescriptor                        \
  modevisor_plugin_describe() {                                                            \
    return describe_fn();                                                                  \
  }                                                                                        \
  extern "C" BOOST_SYMBOL_EXPORT std::unique_ptr<::modevisor::api::Monitor>               \
  modevisor_plugin_create() {                                                              \
    return create_fn();                                                                    \
  }
