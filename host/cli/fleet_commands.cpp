#include "cli/fleet_commands.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <map>

#include "config/vm_config.hpp"
#include "fleet/etcd_client.hpp"
#include "fleet/ownership.hpp"
#include "fleet/placement.hpp"
#include "runtime/exit_status.hpp"
#include "selection/mode_log.hpp"

namespace modevisor::cli {

using nlohmann::json;

namespace {

std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

int etcd_failure(bool as_json, const std::string& message) {
  if (as_json) std::cout << dump(json{{"error", {{"code", "monitor-failed"}, {"message", message}}}, {"exit_status", host::kExitMonitorFailed}}) << "\n";
  else fmt::print(stderr, "modevisor: {}\n", message);
  return host::kExitMonitorFailed;
}

// Every host ever registered (known/), marked alive when its leased record (hosts/) exists.
json read_hosts(fleet::EtcdClient& etcd, const fleet::Keys& keys) {
  std::map<std::string, json> hosts;
  for (const auto& kv : etcd.get_prefix(keys.known_hosts())) {
    json h = json::parse(kv.value, nullptr, false);
    if (!h.is_object()) continue;
    h["alive"] = false;
    hosts[h.value("name", kv.key)] = h;
  }
  for (const auto& kv : etcd.get_prefix(keys.hosts())) {
    json h = json::parse(kv.value, nullptr, false);
    if (!h.is_object()) continue;
    h["alive"] = true;
    hosts[h.value("name", kv.key)] = h;
  }
  json out = json::array();
  for (auto& [name, h] : hosts) out.push_back(h);
  return out;
}

std::string mib(std::uint64_t bytes) { return fmt::format("{} MiB", bytes >> 20); }

}  // namespace

int command_fleet_hosts(const FleetTarget& fleet, bool as_json) {
  try {
    fleet::EtcdClient etcd(fleet.etcd);
    const json hosts = read_hosts(etcd, fleet::Keys{fleet.prefix});
    if (as_json) {
      json out = json::array();
      for (const auto& h : hosts) {
        json brief = h;
        brief.erase("capabilities");
        brief.erase("plugins");
        out.push_back(brief);
      }
      std::cout << dump(json{{"hosts", out}}) << "\n";
      return host::kExitOk;
    }
    fmt::print("{:<16} {:<6} {:<22} {:<14} {:<12} {:>10} {:>6}  {}\n", "HOST", "ALIVE", "MIGRATION", "MODES", "POLICY",
               "FREE MEM", "VCPUS", "CPU");
    for (const auto& h : hosts) {
      std::vector<std::string> modes;
      for (const auto& m : h.value("modes", json::array())) modes.push_back(m.get<std::string>());
      fmt::print("{:<16} {:<6} {:<22} {:<14} {:<12} {:>10} {:>6}  {}\n", h.value("name", "?"),
                 h.value("alive", false) ? "yes" : "no", h.value("migration_address", ""), fmt::join(modes, ","),
                 h.value("policy", ""), mib(h.value("free_memory_bytes", std::uint64_t{0})), h.value("free_vcpus", 0),
                 h.value("cpu", ""));
    }
    return host::kExitOk;
  } catch (const fleet::EtcdError& e) {
    return etcd_failure(as_json, e.what());
  }
}

int command_fleet_vms(const FleetTarget& fleet, bool as_json) {
  try {
    fleet::EtcdClient etcd(fleet.etcd);
    const fleet::Keys keys{fleet.prefix};
    json vms = json::array();
    for (const auto& kv : etcd.get_prefix(keys.vms())) vms.push_back(fleet::OwnerRecord::parse(kv).to_json());
    if (as_json) {
      std::cout << dump(json{{"vms", vms}}) << "\n";
      return host::kExitOk;
    }
    fmt::print("{:<20} {:<16} {:>6}  {}\n", "VM", "OWNER", "EPOCH", "HOW");
    for (const auto& v : vms)
      fmt::print("{:<20} {:<16} {:>6}  {}\n", v.value("vm", "?"), v.value("owner", "?"), v.value("epoch", 0),
                 v.contains("from") ? fmt::format("migrated from {} ({})", v.value("from", ""), v.value("migration_id", ""))
                                    : std::string("started there"));
    return host::kExitOk;
  } catch (const fleet::EtcdError& e) {
    return etcd_failure(as_json, e.what());
  }
}

int command_fleet_explain(host::Host& host, const FleetTarget& fleet, const std::string& vm_file, bool as_json) {
  const host::VmConfig vm = host::load_vm_config(vm_file, host.guest_os());
  try {
    fleet::EtcdClient etcd(fleet.etcd);
    const json hosts = read_hosts(etcd, fleet::Keys{fleet.prefix});
    json out = json::array();
    for (const auto& record : hosts) {
      const auto verdict = fleet::evaluate_host(vm, record, host.config_dir());
      if (as_json) {
        out.push_back(verdict.to_json());
        continue;
      }
      fmt::print("== {} ({}) ==\n", verdict.host, verdict.alive ? "alive" : "not alive");
      if (verdict.selection)
        for (const auto& line : host::monitor_mode_lines(*verdict.selection)) fmt::print("  {}\n", line);
      fmt::print("  => {}\n", verdict.summary());
    }
    if (as_json) std::cout << dump(json{{"vm", vm.name}, {"hosts", out}}) << "\n";
    return host::kExitOk;
  } catch (const fleet::EtcdError& e) {
    return etcd_failure(as_json, e.what());
  }
}

}  // namespace modevisor::cli
