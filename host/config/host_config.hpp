// The host configuration (configs/hosts/*.yaml): where plugins and logs live,
// which selection policy applies, capabilities masked from VMs, and
// optionally a CPU profile that makes this configuration describe another host.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace modevisor::host {

struct HostConfig {
  std::filesystem::path file;  // empty for the built-in defaults
  std::string name = "localhost";
  std::vector<std::filesystem::path> plugin_dirs;  // absolute
  std::filesystem::path log_dir;                   // absolute; VM logs go here
  std::string log_level = "info";                  // trace|debug|info|warn|error
  std::string policy = "default";                  // name in configs/policies or a path
  std::optional<std::string> cpu_profile;          // describe another host (what-if)
  // For a described host: model Linux KVM's host-wide MMU choice
  // (kvm_amd npt= / kvm_intel ept=); absent means a per-VM choice, as the VMkernel.
  std::optional<bool> kvm_nested_paging;
  std::vector<std::string> mask;  // capabilities hidden from VMs (EVC-like)
};

// Relative paths resolve against the file's folder.  Throws InputError.
HostConfig load_host_config(const std::filesystem::path& file);

// Built-in defaults: the build tree's plugin directory, logs in ./logs.
HostConfig default_host_config();

}  // namespace modevisor::host
