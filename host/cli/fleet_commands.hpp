// The fleet's views, read straight from etcd (no daemon needed):
// `modevisor --etcd ENDPOINTS hosts`, `vm list --fleet`, `explain VM.yaml --fleet`.
#pragma once

#include <string>
#include <vector>

#include "runtime/host.hpp"

namespace modevisor::cli {

struct FleetTarget {
  std::vector<std::string> etcd;
  std::string prefix = "/modevisor";
};

int command_fleet_hosts(const FleetTarget& fleet, bool json);
int command_fleet_vms(const FleetTarget& fleet, bool json);
int command_fleet_explain(host::Host& host, const FleetTarget& fleet, const std::string& vm_file, bool json);

}  // namespace modevisor::cli
