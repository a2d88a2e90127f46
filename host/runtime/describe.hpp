// The host and its plugins as data: one JSON shape for `modevisor host`,
// `modevisor plugins` and the daemon's answers to the same questions.
#pragma once

#include <nlohmann/json.hpp>

#include <modevisor/api/host_capabilities.hpp>

#include "runtime/host.hpp"

namespace modevisor::host {

nlohmann::json capabilities_json(const api::HostCapabilities& capabilities);
// {host, directories[], plugins[{name, version, mode, guests[] ...}], problems[]}
nlohmann::json plugins_json(const Host& host);

}  // namespace modevisor::host
