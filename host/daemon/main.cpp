// modevisord --config HOST.yaml: the host daemon.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <filesystem>
#include <system_error>

#include "common/errors.hpp"
#include "daemon/daemon.hpp"
#include "runtime/exit_status.hpp"

using namespace modevisor;

int main(int argc, char** argv) {
  CLI::App app{"modevisord: the modevisor host daemon (VMs in monitor processes of their own, a control socket)"};
  app.set_version_flag("--version", std::string("modevisord ") + MODEVISOR_VERSION);
  host::HostOptions options;
  daemon::DaemonOptions daemon_options;
  std::string vmm;
  app.add_option("--config", options.host_config, "host configuration YAML")->required();
  app.add_option("--config-dir", options.config_dir, "folder with cpus/, policies/, guest-os.yaml");
  app.add_option("--plugin-dir", options.extra_plugin_dirs, "another plugin directory (adds to the configured ones)");
  app.add_option("--log-level", options.log_level, "trace, debug, info, warn or error");
  app.add_option("--log-dir", options.log_dir, "where host.log and <vm>.log are written");
  app.add_option("--vmm", vmm, "the monitor process binary (default: modevisor-vmm next to modevisord)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : host::kExitBadInput;
  }
  std::error_code ec;
  daemon_options.vmm_binary =
      vmm.empty() ? std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() / "modevisor-vmm" : std::filesystem::path(vmm);
  daemon_options.notify_systemd = std::getenv("NOTIFY_SOCKET") != nullptr;
  try {
    options.log_to_file = true;
    host::Host host(options);
    daemon::Daemon daemon(host, daemon_options);
    return daemon.run();
  } catch (const host::InputError& e) {
    fmt::print(stderr, "modevisord: {}\n", e.what());
    return host::kExitBadInput;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "modevisord: {}\n", e.what());
    return host::kExitBadInput;
  } catch (const std::exception& e) {
    fmt::print(stderr, "modevisord: {}\n", e.what());
    return 1;
  }
}
