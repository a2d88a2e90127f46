// The host runtime: everything that describes this host and decides for its
// VMs, resolved once from flags, environment and the host configuration, and
// shared by the one-shot CLI and the daemon: where configs live, the probed
// (or described) capabilities with the configured mask, the plugin registry,
// the guest OS table, the selection policy, and the host log.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include <modevisor/api/host_capabilities.hpp>

#include "config/host_config.hpp"
#include "config/vm_config.hpp"
#include "plugins/registry.hpp"
#include "selection/guest_os.hpp"
#include "selection/policy.hpp"
#include "selection/selector.hpp"
#include "vm/vm.hpp"

namespace modevisor::host {

struct HostOptions {
  std::string config_dir;   // else $MODEVISOR_CONFIG_DIR, else the source tree's configs/
  std::string host_config;  // else $MODEVISOR_HOST_CONFIG, else built-in defaults
  std::vector<std::string> extra_plugin_dirs;  // searched after the configured ones
  std::string log_level;
  std::string log_dir;
  std::string cpu_profile;  // describe another host
  std::string policy;
  // Whether the host log also goes to <log_dir>/host.log.  Commands that run
  // no VM (host, cpus, plugins, explain) write no files.
  bool log_to_file = false;
};

class Host {
 public:
  explicit Host(const HostOptions& options);  // throws InputError

  const std::filesystem::path& config_dir() const { return config_dir_; }
  const HostConfig& config() const { return config_; }
  const api::HostCapabilities& capabilities() const { return capabilities_; }
  bool is_probed() const { return probed_; }
  PluginRegistry& registry() { return *registry_; }
  const PluginRegistry& registry() const { return *registry_; }
  const GuestOsTable& guest_os() const { return guest_os_; }
  const Policy& policy() const { return policy_; }
  std::shared_ptr<spdlog::logger> log() const { return log_; }

  // Scans the plugin directories again and logs what changed.
  void rescan_plugins();
  // The installed plugins with their problems on this host.
  std::vector<PluginCandidate> candidates() const;
  Selection select(const VmConfig& vm) const;
  // VMs run only on the host itself, never on a described one: InputError if described.
  void require_this_host() const;

 private:
  std::filesystem::path config_dir_;
  HostConfig config_;
  api::HostCapabilities capabilities_;
  bool probed_ = false;
  std::unique_ptr<PluginRegistry> registry_;
  GuestOsTable guest_os_;
  Policy policy_;
  std::shared_ptr<spdlog::logger> log_;
};

spdlog::level::level_enum parse_log_level(const std::string& name);  // throws std::invalid_argument

// The VM's own log: <log_dir>/<vm-name>.log, appended to.  Throws InputError
// (naming `config_file`) when it cannot be written.
std::shared_ptr<spdlog::logger> open_vm_log(const std::filesystem::path& log_dir, const std::string& vm_name,
                                            const std::string& level, const std::filesystem::path& config_file);

// The seed's BT32 switch decided with this host's runtime: the re-selection
// for the 64-bit guest (select_mode_switch over `candidates`) and the plugin
// it names, shared from the registry; no plugin means the VM stops with
// `reason`.  One rule for `modevisor run`, the daemon and an arrived VM.
struct ModeSwitchDecision {
  ModeSwitch change;
  std::shared_ptr<const LoadedPlugin> plugin;
  std::string reason;
};
ModeSwitchDecision decide_mode_switch(const Host& host, const std::vector<PluginCandidate>& candidates,
                                      const VmConfig& vm, const std::string& current_mode,
                                      const std::string& guest_event);

// The seed's BT32 switch for a VM this host runs (VmEvents::mode_change):
// selects again for the 64-bit guest (select_mode_switch), writes the
// MONITOR MODE lines to the VM log and the switch line to stderr, and hands
// out the hardware plugin, or none with the reason the VM stops.  `host`
// must outlive the VM.
std::function<ModeChangeOutcome(const std::string&)> mode_change_handler(const Host& host, const VmConfig& vm,
                                                                         std::shared_ptr<spdlog::logger> vm_log,
                                                                         std::string current_mode);

// Reads and loads the VM's kernel (and initrd) into scratch RAM of the VM's
// size, exactly as power-on does, so `explain` refuses what `run` would.
// Throws InputError naming the file.
void check_kernel(const VmConfig& vm);

}  // namespace modevisor::host
