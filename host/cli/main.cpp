// modevisor: the command line of the host core.  One-shot commands build the
// host runtime in this process; with --socket, commands go to modevisord.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <stdexcept>

#include "cli/client.hpp"
#include "cli/commands.hpp"
#include "cli/fleet_commands.hpp"
#include "config/host_config.hpp"
#include "fleet/etcd_client.hpp"
#include "common/errors.hpp"
#include "runtime/exit_status.hpp"
#include "runtime/host.hpp"

using namespace modevisor;

namespace {

// With --json, errors are JSON too (on stdout, where the answer would be).
int report_error(bool json, const char* code, const std::string& message, int status) {
  if (json)
    std::cout << nlohmann::json{{"error", {{"code", code}, {"message", message}}}, {"exit_status", status}}.dump(
                     2, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  else
    fmt::print(stderr, "modevisor: {}\n", message);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modevisor: an x86 hypervisor whose monitor modes (BT, HV, HWMMU) are plugins loaded at run time"};
  app.set_version_flag("--version", std::string("modevisor ") + MODEVISOR_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand too
  app.footer(host::kExitStatusTable);

  host::HostOptions options;
  bool json = false;
  std::string socket;
  app.add_option("--socket", socket, "talk to modevisord on this control socket (vm, plugins, host)");
  app.add_option("--config-dir", options.config_dir, "folder with cpus/, policies/, guest-os.yaml ($MODEVISOR_CONFIG_DIR)");
  app.add_option("--host-config", options.host_config, "host configuration YAML ($MODEVISOR_HOST_CONFIG)");
  app.add_option("--plugin-dir", options.extra_plugin_dirs, "another plugin directory (repeatable; adds to the configured ones)");
  app.add_option("--log-level", options.log_level, "trace, debug, info, warn or error");
  app.add_option("--log-dir", options.log_dir, "where host.log and <vm>.log are written");
  app.add_flag("--json", json, "machine-readable output (errors too)");
  std::string etcd;
  cli::FleetTarget fleet_target;
  app.add_option("--etcd", etcd, "the fleet's etcd endpoints, host:port[,host:port...] (hosts, --fleet)");
  app.add_option("--etcd-prefix", fleet_target.prefix, "the fleet's key prefix in etcd (/modevisor)");

  auto* host = app.add_subcommand("host", "this host's probed capabilities (or a CPU profile's with --cpu)");
  host->add_option("--cpu", options.cpu_profile, "describe the host with this CPU profile instead");

  auto* plugins = app.add_subcommand("plugins", "installed mode plugins and whether this host can run each");
  plugins->add_option("--cpu", options.cpu_profile, "evaluate against this CPU profile instead of this host");
  auto* rescan = plugins->add_subcommand("rescan", "(--socket) make the daemon scan its plugin directories again");

  auto* cpus = app.add_subcommand("cpus", "the CPU profiles in configs/cpus");
  auto* hosts = app.add_subcommand("hosts", "the fleet's hosts, alive or not, and the modes each offers (--etcd)");
  bool fleet = false;

  std::string vm_file;
  auto* explain = app.add_subcommand("explain", "which monitor mode a VM gets on a host, and why");
  explain->add_option("vm", vm_file, "VM declaration (YAML)")->required();
  explain->add_option("--cpu", options.cpu_profile, "evaluate on this CPU profile instead of this host");
  explain->add_option("--policy", options.policy, "selection policy: default, esx-3.5, esx-4.0 or a path");
  explain->add_flag("--fleet", fleet, "for each host of the fleet (--etcd): the mode it would pick and why");

  bool stats = false;
  auto* run = app.add_subcommand("run", "power on a VM under the selected monitor mode (in this process)");
  run->add_option("vm", vm_file, "VM declaration (YAML)")->required();
  run->add_option("--policy", options.policy, "selection policy");
  run->add_flag("--stats", stats, "print the monitor's counters when the VM stops");

  // The daemon's VMs (needs --socket).
  cli::ClientRequest client;
  auto* vm = app.add_subcommand("vm", "VMs of modevisord (needs --socket)");
  vm->require_subcommand(1);
  std::string name, file;
  auto* vm_start = vm->add_subcommand("start", "start a VM from its YAML in its own monitor process");
  vm_start->add_option("file", file, "VM declaration (YAML)")->required();
  auto* vm_list = vm->add_subcommand("list", "the daemon's VMs: name, state, mode and plugin, uptime");
  auto* vm_status = vm->add_subcommand("status", "one VM's state and counters");
  auto* vm_log = vm->add_subcommand("log", "one VM's log (its MONITOR MODE lines included)");
  auto* vm_console = vm->add_subcommand("console", "attach to the serial console (Ctrl-] detaches)");
  bool no_follow = false;
  vm_console->add_flag("--no-follow", no_follow, "print what the guest wrote so far and return");
  auto* vm_pause = vm->add_subcommand("pause", "pause a running VM");
  auto* vm_resume = vm->add_subcommand("resume", "resume a paused VM");
  auto* vm_stop = vm->add_subcommand("stop", "stop a VM (its monitor process ends)");
  auto* vm_save = vm->add_subcommand("save", "save a paused VM into a snapshot file");
  auto* vm_restore = vm->add_subcommand("restore", "restore a VM from a snapshot file (paused)");
  auto* vm_resolve = vm->add_subcommand(
      "resolve", "ask a migration's destination again how it ended (a VM left paused in doubt): the VM then runs "
                 "on exactly one of the two hosts");
  vm_restore->add_option("file", file, "snapshot file")->required();
  for (auto* sub : {vm_status, vm_log, vm_console, vm_pause, vm_resume, vm_stop, vm_save, vm_resolve})
    sub->add_option("name", name, "VM name")->required();
  vm_save->add_option("file", file, "snapshot file to write")->required();
  vm_list->add_flag("--fleet", fleet, "every VM of the fleet and its owner, from etcd (--etcd)");

  auto* migrate = app.add_subcommand("migrate", "(--socket) move a running VM to another host, live");
  migrate->add_option("name", name, "VM name")->required();
  migrate->add_option("--to", client.to, "a fleet host, a name from the host's peers:, address:port, or auto (a fleet host that honours the VM's hints and fits)")->required();
  migrate->add_option("--downtime-ms", client.downtime_ms, "switch over when the estimated downtime is under this (300)");
  migrate->add_flag("--force-converge", client.force_converge,
                    "throttle the guest's vCPUs at a cap instead of cancelling");

  for (auto* sub : {hosts, host, plugins, rescan, cpus, explain, run, vm, vm_start, vm_list, vm_status, vm_log, vm_console,
                    vm_pause, vm_resume, vm_stop, vm_save, vm_restore, vm_resolve, migrate})
    sub->add_flag("--json", json, "machine-readable output (errors too)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (json) return report_error(true, "bad-input", e.what(), host::kExitBadInput);
    app.exit(e);
    return host::kExitBadInput;
  }

  // The fleet's views come from etcd: --etcd, else the host YAML's fleet: section.
  const bool fleet_command = hosts->parsed() || (fleet && (vm_list->parsed() || explain->parsed()));
  if (fleet_command) {
    fleet_target.etcd = fleet::split_endpoints(etcd);
    try {
      if (fleet_target.etcd.empty() && !options.host_config.empty()) {
        const auto config = host::load_host_config(options.host_config);
        if (config.daemon.fleet) {
          fleet_target.etcd = config.daemon.fleet->etcd;
          if (!app.get_option("--etcd-prefix")->count()) fleet_target.prefix = config.daemon.fleet->prefix;
        }
      }
      if (fleet_target.etcd.empty())
        return report_error(json, "bad-input", "the fleet lives in etcd: give its endpoints with --etcd HOST:PORT[,...]",
                            host::kExitBadInput);
      if (hosts->parsed()) return cli::command_fleet_hosts(fleet_target, json);
      if (vm_list->parsed()) return cli::command_fleet_vms(fleet_target, json);
      host::Host context(options);
      return cli::command_fleet_explain(context, fleet_target, vm_file, json);
    } catch (const host::InputError& e) {
      return report_error(json, "bad-input", e.what(), host::kExitBadInput);
    } catch (const fleet::EtcdError& e) {
      return report_error(json, "bad-input", e.what(), host::kExitBadInput);
    }
  }

  const bool daemon_command = vm->parsed() || rescan->parsed() || migrate->parsed() || (!socket.empty() && (host->parsed() || plugins->parsed()));
  if (daemon_command) {
    if (socket.empty())
      return report_error(json, "bad-input",
                          std::string(vm->parsed() ? "vm" : migrate->parsed() ? "migrate" : "plugins rescan") +
                              " talks to modevisord: give its control socket with --socket PATH",
                          host::kExitBadInput);
    client.socket = socket;
    client.json = json;
    client.follow = !no_follow;
    auto absolute = [](const std::string& path) { return std::filesystem::absolute(path).lexically_normal().string(); };
    if (host->parsed()) client.words = {"host"};
    else if (plugins->parsed()) client.words = rescan->parsed() ? std::vector<std::string>{"plugins", "rescan"}
                                                                : std::vector<std::string>{"plugins"};
    else if (vm_start->parsed()) client.words = {"vm", "start", absolute(file)};
    else if (vm_list->parsed()) client.words = {"vm", "list"};
    else if (migrate->parsed()) client.words = {"migrate", name};
    else if (vm_restore->parsed()) client.words = {"vm", "restore", absolute(file)};
    else if (vm_save->parsed()) client.words = {"vm", "save", name, absolute(file)};
    else
      for (auto* sub : {vm_status, vm_log, vm_console, vm_pause, vm_resume, vm_stop, vm_resolve})
        if (sub->parsed()) client.words = {"vm", sub->get_name(), name};
    return cli::run_client(client);
  }

  try {
    options.log_to_file = run->parsed();  // commands that run no VM write no files
    host::Host context(options);
    if (host->parsed()) return cli::command_host(context, json);
    if (plugins->parsed()) return cli::command_plugins(context, json);
    if (explain->parsed()) return cli::command_explain(context, vm_file, json);
    if (run->parsed()) return cli::command_run(context, vm_file, json, stats);
    return cli::command_cpus(context, json);
  } catch (const host::InputError& e) {
    return report_error(json, "bad-input", e.what(), host::kExitBadInput);
  } catch (const std::invalid_argument& e) {
    return report_error(json, "bad-input", e.what(), host::kExitBadInput);
  }
}
