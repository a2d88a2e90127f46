// What every CLI command needs, resolved once from flags, environment and the
// host configuration: where configs live, which host is being described,
// which plugins are installed, which policy applies.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include <modevisor/api/host_capabilities.hpp>

#include "config/host_config.hpp"
#include "plugins/registry.hpp"
#include "selection/guest_os.hpp"
#include "selection/policy.hpp"
#include "selection/selector.hpp"

namespace modevisor::cli {

struct GlobalOptions {
  std::string config_dir;   // --config-dir, else $MODEVISOR_CONFIG_DIR, else the source tree's configs/
  std::string host_config;  // --host-config, else $MODEVISOR_HOST_CONFIG
  std::vector<std::string> plugin_dirs;  // --plugin-dir (replaces the configured ones)
  std::string log_level;    // --log-level
  std::string log_dir;      // --log-dir
  std::string cpu_profile;  // --cpu: describe another host
  std::string policy;       // --policy
  bool json = false;
};

class Context {
 public:
  explicit Context(const GlobalOptions& options);  // throws host::InputError

  const std::filesystem::path& config_dir() const { return config_dir_; }
  const host::HostConfig& host_config() const { return host_config_; }
  const api::HostCapabilities& host() const { return host_; }
  bool host_is_probed() const { return probed_; }
  host::PluginRegistry& registry() { return *registry_; }
  const host::GuestOsTable& guest_os() const { return guest_os_; }
  const host::Policy& policy() const { return policy_; }
  std::shared_ptr<spdlog::logger> log() const { return log_; }

  // The installed plugins with their problems on the described host.
  std::vector<host::PluginCandidate> candidates() const;

 private:
  std::filesystem::path config_dir_;
  host::HostConfig host_config_;
  api::HostCapabilities host_;
  bool probed_ = false;
  std::unique_ptr<host::PluginRegistry> registry_;
  host::GuestOsTable guest_os_;
  host::Policy policy_;
  std::shared_ptr<spdlog::logger> log_;
};

// spdlog level from its name; throws host::InputError-free std::invalid_argument.
spdlog::level::level_enum parse_log_level(const std::string& name);

}  // namespace modevisor::cli
