// The CLI's one-shot commands (no daemon).  Each returns the process exit
// status from runtime/exit_status.hpp; `run` returns the guest's own
// (always odd) status when the guest ends through the debug-exit port.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "runtime/exit_status.hpp"
#include "runtime/host.hpp"

namespace modevisor::cli {

int command_host(host::Host& host, bool json);
int command_plugins(host::Host& host, bool json);
// The text form of plugins_json (shared with the daemon client).
void print_plugins(const nlohmann::json& plugins);

int command_cpus(host::Host& host, bool json);
int command_explain(host::Host& host, const std::string& vm_file, bool json);
int command_run(host::Host& host, const std::string& vm_file, bool json, bool stats);

}  // namespace modevisor::cli
