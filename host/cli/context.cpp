#include "cli/context.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <stdexcept>

#include "capabilities/cpu_profile.hpp"
#include "capabilities/probe.hpp"
#include "common/errors.hpp"

namespace modevisor::cli {

namespace {

std::string from_env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// Host log: warnings and worse on stderr, everything at the chosen level in
// <log_dir>/host.log.
std::shared_ptr<spdlog::logger> make_host_log(const host::HostConfig& config, spdlog::level::level_enum level) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(spdlog::level::warn);
  console->set_pattern("modevisor: %^%l%$: %v");
  std::vector<spdlog::sink_ptr> sinks{console};
  std::error_code ec;
  std::filesystem::create_directories(config.log_dir, ec);
  if (!ec) {
    try {
      auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>((config.log_dir / "host.log").string());
      file->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l host| %v");
      sinks.push_back(file);
    } catch (const spdlog::spdlog_ex&) {
      // An unwritable log directory must not stop `explain`; the console still gets warnings.
    }
  }
  auto log = std::make_shared<spdlog::logger>("host", sinks.begin(), sinks.end());
  log->set_level(level);
  return log;
}

}  // namespace

spdlog::level::level_enum parse_log_level(const std::string& name) {
  for (auto [text, level] : {std::pair{"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
                             {"info", spdlog::level::info}, {"warn", spdlog::level::warn},
                             {"error", spdlog::level::err}})
    if (name == text) return level;
  throw std::invalid_argument("unknown log level '" + name + "' (expected trace, debug, info, warn or error)");
}

Context::Context(const GlobalOptions& options) {
  config_dir_ = !options.config_dir.empty()           ? options.config_dir
                : !from_env("MODEVISOR_CONFIG_DIR").empty() ? from_env("MODEVISOR_CONFIG_DIR")
                                                            : MODEVISOR_DEFAULT_CONFIG_DIR;
  // Example configurations name the build tree's plugins and guest kernels
  // through these; an operator's environment overrides them.
  ::setenv("MODEVISOR_PLUGIN_DIR", MODEVISOR_DEFAULT_PLUGIN_DIR, /*overwrite=*/0);
  ::setenv("MODEVISOR_GUEST_DIR", MODEVISOR_DEFAULT_GUEST_DIR, /*overwrite=*/0);

  const std::string host_config_file =
      !options.host_config.empty() ? options.host_config : from_env("MODEVISOR_HOST_CONFIG");
  host_config_ = host_config_file.empty() ? host::default_host_config() : host::load_host_config(host_config_file);
  if (!options.plugin_dirs.empty()) host_config_.plugin_dirs.assign(options.plugin_dirs.begin(), options.plugin_dirs.end());
  if (!options.log_dir.empty()) host_config_.log_dir = std::filesystem::absolute(options.log_dir);
  if (!options.log_level.empty()) host_config_.log_level = options.log_level;
  if (!options.cpu_profile.empty()) host_config_.cpu_profile = options.cpu_profile;
  if (!options.policy.empty()) host_config_.policy = options.policy;

  log_ = make_host_log(host_config_, parse_log_level(host_config_.log_level));

  // The host: a described one (CPU profile) or this one, probed.
  if (host_config_.cpu_profile) {
    host_ = host::load_cpu_profile(host::find_cpu_profile(config_dir_, *host_config_.cpu_profile));
  } else {
    host_ = host::probe_host();
    probed_ = true;
  }
  if (host_config_.kvm_nested_paging && !probed_) {
    // A described Linux KVM host: the MMU is chosen for the whole host.
    host_.driver.name = "kvm (described)";
    host_.driver.mmu_selection = api::MmuSelection::HostWide;
    host_.driver.nested_paging_enabled = *host_config_.kvm_nested_paging && host_.nested_paging;
  }
  try {
    host::apply_capability_mask(host_, host_config_.mask);
  } catch (const std::invalid_argument& e) {
    throw host::InputError(host_config_.file, 0, 0, e.what());
  }
  log_->debug("host: {}", host_.source);

  registry_ = std::make_unique<host::PluginRegistry>(host_config_.plugin_dirs);
  registry_->rescan();
  for (const auto& plugin : registry_->plugins())
    log_->info("plugin {} {} ({}) loaded from {}", plugin.descriptor.name, plugin.descriptor.version, plugin.mode,
               plugin.file.string());
  for (const auto& problem : registry_->problems())
    log_->warn("plugin {} skipped: {}", problem.file.string(), problem.reason);

  guest_os_ = host::GuestOsTable::load(config_dir_ / "guest-os.yaml");
  policy_ = host::load_policy(host::find_policy(config_dir_, host_config_.policy));
}

std::vector<host::PluginCandidate> Context::candidates() const {
  std::vector<host::PluginCandidate> out;
  for (const auto& plugin : registry_->plugins())
    out.push_back({plugin.file, plugin.descriptor, host::host_problems(plugin, host_)});
  return out;
}

}  // namespace modevisor::cli
