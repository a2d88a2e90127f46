// modevisor: the command line of the host core.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <stdexcept>

#include "cli/commands.hpp"
#include "cli/context.hpp"
#include "common/errors.hpp"

using namespace modevisor;

int main(int argc, char** argv) {
  CLI::App app{"modevisor: an x86 hypervisor whose monitor modes (BT, HV, HWMMU) are plugins loaded at run time"};
  app.set_version_flag("--version", std::string("modevisor ") + MODEVISOR_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand too

  cli::GlobalOptions options;
  app.add_option("--config-dir", options.config_dir, "folder with cpus/, policies/, guest-os.yaml ($MODEVISOR_CONFIG_DIR)");
  app.add_option("--host-config", options.host_config, "host configuration YAML ($MODEVISOR_HOST_CONFIG)");
  app.add_option("--plugin-dir", options.plugin_dirs, "plugin directory (repeatable; replaces the configured ones)");
  app.add_option("--log-level", options.log_level, "trace, debug, info, warn or error");
  app.add_option("--log-dir", options.log_dir, "where host.log and <vm>.log are written");
  app.add_flag("--json", options.json, "machine-readable output");

  auto* host = app.add_subcommand("host", "this host's probed capabilities (or a CPU profile's with --cpu)");
  host->add_option("--cpu", options.cpu_profile, "describe the host with this CPU profile instead");

  auto* plugins = app.add_subcommand("plugins", "installed mode plugins and whether this host can run each");
  plugins->add_option("--cpu", options.cpu_profile, "evaluate against this CPU profile instead of this host");

  app.add_subcommand("cpus", "the CPU profiles in configs/cpus");

  std::string vm_file;
  auto* explain = app.add_subcommand("explain", "which monitor mode a VM gets on a host, and why");
  explain->add_option("vm", vm_file, "VM declaration (YAML)")->required();
  explain->add_option("--cpu", options.cpu_profile, "evaluate on this CPU profile instead of this host");
  explain->add_option("--policy", options.policy, "selection policy: default, esx-3.5, esx-4.0 or a path");

  bool stats = false;
  auto* run = app.add_subcommand("run", "power on a VM under the selected monitor mode");
  run->add_option("vm", vm_file, "VM declaration (YAML)")->required();
  run->add_option("--policy", options.policy, "selection policy");
  run->add_flag("--stats", stats, "print the monitor's counters when the VM stops");

  for (auto* sub : {host, plugins, explain, run}) sub->add_flag("--json", options.json, "machine-readable output");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : cli::kExitBadInput;
  }

  try {
    cli::Context context(options);
    if (host->parsed()) return cli::command_host(context, options.json);
    if (plugins->parsed()) return cli::command_plugins(context, options.json);
    if (explain->parsed()) return cli::command_explain(context, vm_file, options.json);
    if (run->parsed()) return cli::command_run(context, vm_file, options.json, stats);
    return cli::command_cpus(context, options.json);
  } catch (const host::InputError& e) {
    fmt::print(stderr, "modevisor: {}\n", e.what());
    return cli::kExitBadInput;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "modevisor: {}\n", e.what());
    return cli::kExitBadInput;
  }
}
