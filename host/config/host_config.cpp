#include "config/host_config.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <algorithm>
#include <array>
#include <climits>
#include <string_view>
#include <system_error>

#include "common/errors.hpp"
#include "common/yaml_input.hpp"

namespace modevisor::host {

namespace {

constexpr std::array<std::string_view, 5> kLogLevels{"trace", "debug", "info", "warn", "error"};

std::string local_host_name() {
  std::array<char, HOST_NAME_MAX + 1> buffer{};
  if (gethostname(buffer.data(), buffer.size() - 1) != 0 || buffer[0] == '\0') return "localhost";
  return buffer.data();
}

// policy and cpu_profile are either a name (looked up by their loaders in
// configs/) or a path; a path is resolved here, against this file's folder,
// because the loaders no longer know which file it came from.
std::string name_or_path(const YamlInput& in, const YAML::Node& node, std::string_view expected) {
  const std::string text = in.expanded_scalar(node, expected);
  const bool looks_like_path = text.find('/') != std::string::npos || text.ends_with(".yaml");
  return looks_like_path ? in.path(node, expected).string() : text;
}

// "address:port": a name or IPv4 literal, or an IPv6 literal in brackets.
NetAddress net_address(const YamlInput& in, const YAML::Node& node) {
  const std::string text = in.scalar(node, "address:port");
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw in.error(node, fmt::format("expected address:port (e.g. 127.0.0.1:9100), found '{}'", text));
  NetAddress address;
  address.host = text.substr(0, colon);
  if (address.host.front() == '[') {
    if (address.host.back() != ']') throw in.error(node, fmt::format("unbalanced brackets in '{}'", text));
    address.host = address.host.substr(1, address.host.size() - 2);
  }
  const std::string port = text.substr(colon + 1);
  unsigned long value = 0;
  const bool digits = port.find_first_not_of("0123456789") == std::string::npos && port.size() <= 5;
  if (digits) value = std::stoul(port);
  if (!digits || value == 0 || value > 65535)
    throw in.error(node, fmt::format("port '{}' is not a number from 1 to 65535", port));
  address.port = static_cast<std::uint16_t>(value);
  return address;
}

// The cluster secret must exist, be a regular file and be readable by its
// owner only: a secret others can read is no secret.
void check_secret_file(const YamlInput& in, const YAML::Node& node, const std::filesystem::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0)
    throw in.error(node, fmt::format("migration secret file '{}' cannot be read: {}", file.string(),
                                     std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    throw in.error(node, fmt::format("migration secret file '{}' is not a regular file", file.string()));
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    throw in.error(node, fmt::format("migration secret file '{}' is readable by others (mode {:04o}); "
                                     "chmod 600 it",
                                     file.string(), st.st_mode & 07777));
  if (st.st_size == 0) throw in.error(node, fmt::format("migration secret file '{}' is empty", file.string()));
}

std::filesystem::path default_runtime_dir() {
  if (::geteuid() == 0) return "/run/modevisor";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg) return std::filesystem::path(xdg) / "modevisor";
  return std::filesystem::temp_directory_path() / ("modevisor-" + std::to_string(::geteuid()));
}

}  // namespace

std::string NetAddress::text() const {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

HostConfig default_host_config() {
  HostConfig config;
  config.name = local_host_name();
  config.plugin_dirs = {std::filesystem::path(MODEVISOR_DEFAULT_PLUGIN_DIR)};
  std::error_code ec;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  config.log_dir = (ec ? std::filesystem::path("/tmp") : cwd) / "logs";
  config.log_level = "info";
  config.policy = "default";
  config.daemon.control_socket = default_runtime_dir() / "control.sock";
  config.daemon.state_dir = default_runtime_dir() / "state";
  return config;
}

HostConfig load_host_config(const std::filesystem::path& file) {
  const YamlInput in(std::filesystem::absolute(file).lexically_normal());
  const YAML::Node root = in.root();
  in.expect_map(root, "a host configuration (a map with name, plugin_dirs, log_dir, ...)");
  in.reject_unknown_keys(root, {"name", "plugin_dirs", "log_dir", "log_level", "policy", "cpu_profile", "kvm", "mask",
                                "control_socket", "state_dir", "metrics", "migration", "peers", "fleet"});

  // Keys left out keep the built-in defaults.
  HostConfig config = default_host_config();
  config.file = in.file();

  if (const YAML::Node name = in.optional(root, "name")) config.name = in.scalar(name, "a host name");

  if (const YAML::Node dirs = in.optional(root, "plugin_dirs")) {
    if (!dirs.IsSequence()) throw in.error(dirs, "expected a list of plugin directories");
    config.plugin_dirs.clear();
    for (const auto& item : dirs) {
      const std::filesystem::path dir = in.path(item, "a plugin directory");
      std::error_code ec;
      if (!std::filesystem::is_directory(dir, ec))
        throw in.error(item, fmt::format("plugin directory '{}' does not exist or is not a directory",
                                         dir.string()));
      config.plugin_dirs.push_back(dir);
    }
  }

  // Not required to exist yet: the VM launcher creates it.
  if (const YAML::Node log_dir = in.optional(root, "log_dir")) config.log_dir = in.path(log_dir, "a log directory");

  if (const YAML::Node level = in.optional(root, "log_level")) {
    const std::string text = in.scalar(level, "a log level");
    if (std::find(kLogLevels.begin(), kLogLevels.end(), text) == kLogLevels.end())
      throw in.error(level, fmt::format("expected a log level (trace, debug, info, warn or error), found '{}'", text));
    config.log_level = text;
  }

  if (const YAML::Node policy = in.optional(root, "policy"))
    config.policy = name_or_path(in, policy, "a policy name or path");
  if (const YAML::Node profile = in.optional(root, "cpu_profile"))
    config.cpu_profile = name_or_path(in, profile, "a CPU profile name or path");

  if (const YAML::Node kvm = in.optional(root, "kvm")) {
    in.expect_map(kvm, "a map with nested_paging");
    in.reject_unknown_keys(kvm, {"nested_paging"});
    config.kvm_nested_paging = in.boolean(in.required(kvm, "nested_paging"));
  }

  // Capability names are checked against the probe's vocabulary elsewhere.
  if (const YAML::Node mask = in.optional(root, "mask")) config.mask = in.string_list(mask, "capability names");

  // The daemon's keys.
  if (const YAML::Node socket = in.optional(root, "control_socket"))
    config.daemon.control_socket = in.path(socket, "the control socket's path");
  if (const YAML::Node state = in.optional(root, "state_dir"))
    config.daemon.state_dir = in.path(state, "the daemon's state directory");
  if (const YAML::Node metrics = in.optional(root, "metrics")) {
    in.expect_map(metrics, "a map with listen");
    in.reject_unknown_keys(metrics, {"listen"});
    config.daemon.metrics_listen = net_address(in, in.required(metrics, "listen"));
  }
  if (const YAML::Node migration = in.optional(root, "migration")) {
    in.expect_map(migration, "a map with listen, advertise and secret_file");
    in.reject_unknown_keys(migration, {"listen", "advertise", "secret_file"});
    if (const YAML::Node listen = in.optional(migration, "listen"))
      config.daemon.migration_listen = net_address(in, listen);
    if (const YAML::Node advertise = in.optional(migration, "advertise")) {
      if (!config.daemon.migration_listen)
        throw in.error(advertise, "migration.advertise needs migration.listen (it names how peers reach that listener)");
      config.daemon.migration_advertise = net_address(in, advertise);
    }
    if (const YAML::Node secret = in.optional(migration, "secret_file")) {
      config.daemon.migration_secret_file = in.path(secret, "the cluster's secret file");
      check_secret_file(in, secret, config.daemon.migration_secret_file);
    } else if (config.daemon.migration_listen) {
      throw in.error(migration, "migration.listen needs migration.secret_file (the cluster's shared secret)");
    }
  }
  if (const YAML::Node peers = in.optional(root, "peers")) {
    in.expect_map(peers, "a map of peer names to address:port");
    in.reject_duplicate_keys(peers);
    for (const auto& entry : peers) {
      const std::string name = in.scalar(entry.first, "a peer name");
      config.daemon.peers[name] = net_address(in, entry.second);
    }
  }

  if (const YAML::Node fleet = in.optional(root, "fleet")) {
    in.expect_map(fleet, "a map with etcd (a list of endpoints), prefix, lease_ttl");
    in.reject_unknown_keys(fleet, {"etcd", "prefix", "lease_ttl", "request_timeout_ms"});
    FleetConfig f;
    const YAML::Node etcd = in.required(fleet, "etcd");
    f.etcd = in.string_list(etcd, "etcd client endpoints (host:port)");
    if (f.etcd.empty()) throw in.error(etcd, "fleet.etcd needs at least one endpoint");
    for (const auto& endpoint : f.etcd)
      if (endpoint.find(':') == std::string::npos)
        throw in.error(etcd, fmt::format("etcd endpoint '{}': expected host:port", endpoint));
    if (const YAML::Node prefix = in.optional(fleet, "prefix")) {
      f.prefix = in.scalar(prefix, "a key prefix");
      if (f.prefix.empty() || f.prefix.front() != '/') throw in.error(prefix, "the prefix must start with '/'");
      while (f.prefix.size() > 1 && f.prefix.back() == '/') f.prefix.pop_back();
    }
    if (const YAML::Node ttl = in.optional(fleet, "lease_ttl"))
      f.lease_ttl = std::chrono::seconds(in.unsigned_in_range(ttl, 2, 3600, "a lease TTL in seconds"));
    if (const YAML::Node t = in.optional(fleet, "request_timeout_ms"))
      f.request_timeout = std::chrono::milliseconds(in.unsigned_in_range(t, 100, 60000, "a timeout in milliseconds"));
    if (!config.daemon.migration_listen)
      throw in.error(fleet, "fleet needs migration.listen: peers find this host at its migration address");
    config.daemon.fleet = f;
  }

  return config;
}

}  // namespace modevisor::host
