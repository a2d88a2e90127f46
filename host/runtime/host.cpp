#include "runtime/host.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include "capabilities/cpu_profile.hpp"
#include "capabilities/probe.hpp"
#include "common/errors.hpp"
#include "platform/guest_ram.hpp"
#include "platform/linux_loader.hpp"
#include "platform/multiboot_loader.hpp"
#include "selection/mode_log.hpp"

namespace modevisor::host {

namespace {

std::string from_env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// Host log: warnings and worse on stderr; with a file, everything at the
// chosen level in <log_dir>/host.log.
std::shared_ptr<spdlog::logger> make_host_log(const HostConfig& config, spdlog::level::level_enum level,
                                              bool to_file) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(spdlog::level::warn);
  console->set_pattern("modevisor: %^%l%$: %v");
  std::vector<spdlog::sink_ptr> sinks{console};
  if (to_file) {
    std::error_code ec;
    std::filesystem::create_directories(config.log_dir, ec);
    if (!ec) {
      try {
        auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>((config.log_dir / "host.log").string());
        file->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l host| %v");
        sinks.push_back(file);
      } catch (const spdlog::spdlog_ex&) {
        // An unwritable log directory is reported where a VM log is opened.
      }
    }
  }
  auto log = std::make_shared<spdlog::logger>("host", sinks.begin(), sinks.end());
  log->set_level(level);
  log->flush_on(spdlog::level::info);
  return log;
}

// A file read whole, refused beyond `limit` bytes (what fits where it goes).
std::vector<std::uint8_t> read_bounded(const std::filesystem::path& file, const char* what, std::uint64_t limit) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file, 0, 0, std::string("cannot read the ") + what);
  std::vector<std::uint8_t> data;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    data.insert(data.end(), buffer, buffer + in.gcount());
    if (data.size() > limit)
      throw InputError(file, 0, 0, std::string("the ") + what + " is larger than the VM's RAM (" +
                                       std::to_string(limit >> 20) + " MiB): it cannot be loaded");
  }
  return data;
}

}  // namespace

spdlog::level::level_enum parse_log_level(const std::string& name) {
  for (auto [text, level] : {std::pair{"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
                             {"info", spdlog::level::info}, {"warn", spdlog::level::warn},
                             {"error", spdlog::level::err}})
    if (name == text) return level;
  throw std::invalid_argument("unknown log level '" + name + "' (expected trace, debug, info, warn or error)");
}

Host::Host(const HostOptions& options) {
  config_dir_ = !options.config_dir.empty()                 ? options.config_dir
                : !from_env("MODEVISOR_CONFIG_DIR").empty() ? from_env("MODEVISOR_CONFIG_DIR")
                                                            : MODEVISOR_DEFAULT_CONFIG_DIR;
  // Example configurations name the build tree's plugins and guest kernels
  // through these; an operator's environment overrides them.
  ::setenv("MODEVISOR_PLUGIN_DIR", MODEVISOR_DEFAULT_PLUGIN_DIR, /*overwrite=*/0);
  ::setenv("MODEVISOR_GUEST_DIR", MODEVISOR_DEFAULT_GUEST_DIR, /*overwrite=*/0);

  const std::string host_config_file =
      !options.host_config.empty() ? options.host_config : from_env("MODEVISOR_HOST_CONFIG");
  config_ = host_config_file.empty() ? default_host_config() : load_host_config(host_config_file);
  // --plugin-dir adds to the configured folders; a missing one is bad input,
  // as it is in the host YAML.
  for (const auto& dir : options.extra_plugin_dirs) {
    const auto absolute = std::filesystem::absolute(dir).lexically_normal();
    std::error_code ec;
    if (!std::filesystem::is_directory(absolute, ec))
      throw InputError("--plugin-dir", 0, 0,
                       "plugin directory '" + absolute.string() + "' does not exist or is not a directory");
    if (std::find(config_.plugin_dirs.begin(), config_.plugin_dirs.end(), absolute) == config_.plugin_dirs.end())
      config_.plugin_dirs.push_back(absolute);
  }
  if (!options.log_dir.empty()) config_.log_dir = std::filesystem::absolute(options.log_dir);
  if (!options.log_level.empty()) config_.log_level = options.log_level;
  if (!options.cpu_profile.empty()) config_.cpu_profile = options.cpu_profile;
  if (!options.policy.empty()) config_.policy = options.policy;

  log_ = make_host_log(config_, parse_log_level(config_.log_level), options.log_to_file);

  // The host: a described one (CPU profile) or this one, probed.
  if (config_.cpu_profile) {
    capabilities_ = load_cpu_profile(find_cpu_profile(config_dir_, *config_.cpu_profile));
  } else {
    capabilities_ = probe_host();
    probed_ = true;
  }
  if (config_.kvm_nested_paging && !probed_) {
    // A described Linux KVM host: the MMU is chosen for the whole host.
    capabilities_.driver.name = "kvm (described)";
    capabilities_.driver.mmu_selection = api::MmuSelection::HostWide;
    capabilities_.driver.nested_paging_enabled = *config_.kvm_nested_paging && capabilities_.nested_paging;
  }
  try {
    apply_capability_mask(capabilities_, config_.mask);
  } catch (const std::invalid_argument& e) {
    throw InputError(config_.file, 0, 0, e.what());
  }
  log_->debug("host: {}", capabilities_.source);

  registry_ = std::make_unique<PluginRegistry>(config_.plugin_dirs);
  rescan_plugins();

  guest_os_ = GuestOsTable::load(config_dir_ / "guest-os.yaml");
  policy_ = load_policy(find_policy(config_dir_, config_.policy));
}

void Host::rescan_plugins() {
  registry_->rescan();
  for (const auto& plugin : registry_->plugins())
    log_->debug("plugin {} {} ({}) loaded from {}", plugin->descriptor.name, plugin->descriptor.version,
                plugin->mode, plugin->file.string());
  for (const auto& problem : registry_->problems())
    log_->info("plugin {} skipped: {}", problem.file.string(), problem.reason);
}

std::vector<PluginCandidate> Host::candidates() const {
  std::vector<PluginCandidate> out;
  for (const auto& plugin : registry_->plugins())
    out.push_back({plugin->file, plugin->descriptor, host_problems(*plugin, capabilities_)});
  return out;
}

Selection Host::select(const VmConfig& vm) const {
  return select_monitor_mode(capabilities_, candidates(), policy_, vm);
}

void Host::require_this_host() const {
  if (!probed_)
    throw InputError(config_.file, 0, 0,
                     "this host configuration describes another host (cpu_profile " + config_.cpu_profile.value_or("?") +
                         "); VMs run only on the host itself: use it with explain");
}

std::shared_ptr<spdlog::logger> open_vm_log(const std::filesystem::path& log_dir, const std::string& vm_name,
                                            const std::string& level, const std::filesystem::path& config_file) {
  const auto path = log_dir / (vm_name + ".log");
  auto unwritable = [&](const std::string& why) {
    return InputError(config_file, 0, 0,
                      "cannot write the VM log " + path.string() + " (" + why +
                          "); point log_dir (or --log-dir) at a writable directory");
  };
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (ec) throw unwritable(ec.message());
  std::shared_ptr<spdlog::sinks::basic_file_sink_mt> sink;
  try {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string());
  } catch (const spdlog::spdlog_ex& e) {
    throw unwritable(e.what());
  }
  sink->set_pattern("%Y-%m-%dT%H:%M:%S.%e| %v");
  auto log = std::make_shared<spdlog::logger>(vm_name, sink);
  log->set_level(parse_log_level(level));
  log->flush_on(spdlog::level::trace);
  return log;
}

ModeSwitchDecision decide_mode_switch(const Host& host, const std::vector<PluginCandidate>& candidates,
                                      const VmConfig& vm, const std::string& current_mode,
                                      const std::string& guest_event) {
  ModeSwitchDecision out;
  out.change = select_mode_switch(host.capabilities(), candidates, host.policy(), vm, current_mode, guest_event);
  out.reason = out.change.reason;
  if (!out.change.to || !out.change.plugin) return out;
  out.plugin = host.registry().share(out.change.plugin->descriptor.name);
  if (!out.plugin) out.reason = "plugin " + out.change.plugin->descriptor.name + " vanished";
  return out;
}

std::function<ModeChangeOutcome(const std::string&)> mode_change_handler(const Host& host, const VmConfig& vm,
                                                                         std::shared_ptr<spdlog::logger> vm_log,
                                                                         std::string current_mode) {
  return [&host, vm, vm_log = std::move(vm_log), mode = std::move(current_mode)](const std::string& guest_event) {
    ModeSwitchDecision decision = decide_mode_switch(host, host.candidates(), vm, mode, guest_event);
    const auto lines = mode_switch_lines(decision.change);
    for (const auto& line : lines) vm_log->info("{}", line);
    fmt::print(stderr, "modevisor: VM {}: {}\n", vm.name, lines.back());
    ModeChangeOutcome out;
    out.reason = std::move(decision.reason);
    out.plugin = std::move(decision.plugin);
    return out;
  };
}

void check_kernel(const VmConfig& vm) {
  GuestRam scratch(vm.memory_bytes);  // a memfd: pages the loader leaves alone cost nothing
  const auto image = read_bounded(vm.guest.kernel, "kernel image", vm.memory_bytes);
  if (is_linux_bzimage(image)) {
    std::vector<std::uint8_t> initrd;
    if (!vm.guest.initrd.empty()) initrd = read_bounded(vm.guest.initrd, "initrd", vm.memory_bytes);
    load_linux(scratch, vm.guest.kernel, image, vm.guest.cmdline, vm.guest.initrd, initrd);
    return;
  }
  if (!vm.guest.initrd.empty())
    throw InputError(vm.guest.initrd, 0, 0,
                     "an initrd is only passed to Linux kernels, and " + vm.guest.kernel.string() +
                         " is not a Linux bzImage (for a multiboot kernel use a module)");
  load_multiboot(scratch, vm.guest.kernel.filename(), image, vm.guest.cmdline, {});
}

}  // namespace modevisor::host
