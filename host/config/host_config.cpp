#include "config/host_config.hpp"

#include <fmt/format.h>
#include <unistd.h>

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

}  // namespace

HostConfig default_host_config() {
  HostConfig config;
  config.name = local_host_name();
  config.plugin_dirs = {std::filesystem::path(MODEVISOR_DEFAULT_PLUGIN_DIR)};
  std::error_code ec;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  config.log_dir = (ec ? std::filesystem::path("/tmp") : cwd) / "logs";
  config.log_level = "info";
  config.policy = "default";
  return config;
}

HostConfig load_host_config(const std::filesystem::path& file) {
  const YamlInput in(std::filesystem::absolute(file).lexically_normal());
  const YAML::Node root = in.root();
  in.expect_map(root, "a host configuration (a map with name, plugin_dirs, log_dir, ...)");
  in.reject_unknown_keys(root,
                         {"name", "plugin_dirs", "log_dir", "log_level", "policy", "cpu_profile", "kvm", "mask"});

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

  return config;
}

}  // namespace modevisor::host
