// Placement across the fleet: each registered host as the selector sees it
// (its capabilities, plugins and policy, rebuilt from what it published in
// etcd), the mode it would pick for a VM and why, and the choice of a
// destination for `migrate --to auto`: a host where the selector honours the
// VM's hints and picks a mode, and the VM fits (free memory and vCPUs).
// Pure functions of their inputs; the selector itself is host/selection's.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/vm_config.hpp"
#include "selection/selector.hpp"

namespace modevisor::fleet {

struct HostVerdict {
  std::string host;
  bool alive = true;
  std::optional<host::Selection> selection;
  bool hints_honoured = false;
  bool fits = false;
  bool eligible = false;  // a mode, hints honoured, fits
  std::vector<std::string> why_not;
  std::uint64_t free_memory_bytes = 0;
  unsigned free_vcpus = 0;
  nlohmann::json to_json() const;
  std::string summary() const;  // one line
};

// `record`: a host's published record (hosts/ or known/).
HostVerdict evaluate_host(const host::VmConfig& vm, const nlohmann::json& record,
                          const std::filesystem::path& config_dir);

struct DestinationChoice {
  std::optional<nlohmann::json> host;  // the chosen host's record
  std::string explanation;
  std::vector<HostVerdict> verdicts;
};

// `to`: a host name, or "auto".  `hosts`: the live hosts' records; `self` is never chosen.
DestinationChoice choose_destination(const host::VmConfig& vm, const nlohmann::json& hosts, const std::string& self,
                                     const std::string& to, const std::filesystem::path& config_dir);

// What a host publishes about itself from its capabilities JSON and plugins JSON (runtime/describe).
api::HostCapabilities capabilities_from_json(const nlohmann::json& j);
std::vector<host::PluginCandidate> candidates_from_json(const nlohmann::json& plugins);

}  // namespace modevisor::fleet
