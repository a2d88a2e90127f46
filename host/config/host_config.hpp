// The host configuration (configs/hosts/*.yaml): where plugins and logs live,
// which selection policy applies, capabilities masked from VMs, and
// optionally a CPU profile that makes this configuration describe another host.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace modevisor::host {

// address:port, as written (a host name or an IP literal; [v6] in brackets).
struct NetAddress {
  std::string host;
  std::uint16_t port = 0;
  std::string text() const;
};

// A fleet of hosts on etcd (host/fleet/README.md).  Absent: the host works
// alone or with its static peers.
struct FleetConfig {
  std::vector<std::string> etcd;  // client endpoints, host:port
  std::string prefix = "/modevisor";  // no trailing slash
  std::chrono::seconds lease_ttl{10};
  std::chrono::milliseconds request_timeout{1000};
};

// What the daemon (modevisord) reads; the one-shot CLI ignores it.
struct DaemonConfig {
  std::filesystem::path control_socket;  // absolute; created with mode 0600
  std::filesystem::path state_dir;       // absolute; the daemon's records of its VMs
  std::optional<NetAddress> metrics_listen;    // Prometheus endpoint
  std::optional<NetAddress> migration_listen;  // where peers send VMs
  // What a fleet publishes for peers to reach this host (listen on 0.0.0.0,
  // behind a NAT or a relay); absent, the listen address.
  std::optional<NetAddress> migration_advertise;
  std::filesystem::path migration_secret_file; // the cluster's shared secret (0600 or 0400)
  std::map<std::string, NetAddress> peers;     // named hosts and their migration addresses
  std::optional<FleetConfig> fleet;
};

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
  DaemonConfig daemon;
};

// Relative paths resolve against the file's folder.  Throws InputError.
HostConfig load_host_config(const std::filesystem::path& file);

// Built-in defaults: the build tree's plugin directory, logs in ./logs, the
// control socket and state in $XDG_RUNTIME_DIR/modevisor (or /run/modevisor as root).
HostConfig default_host_config();

}  // namespace modevisor::host
