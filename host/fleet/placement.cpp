#include "fleet/placement.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "selection/mode_log.hpp"
#include "selection/policy.hpp"

namespace modevisor::fleet {

using nlohmann::json;

namespace {

std::vector<std::string> strings(const json& j) {
  std::vector<std::string> out;
  if (j.is_array())
    for (const auto& v : j)
      if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

std::string mib(std::uint64_t bytes) { return fmt::format("{} MiB", bytes >> 20); }

}  // namespace

api::HostCapabilities capabilities_from_json(const json& j) {
  api::HostCapabilities h;
  if (!j.is_object()) return h;
  h.source = j.value("source", "");
  h.vendor_id = j.value("vendor", "");
  h.vendor = h.vendor_id == "GenuineIntel" ? api::CpuVendor::Intel
             : h.vendor_id == "AuthenticAMD" ? api::CpuVendor::Amd
                                             : api::CpuVendor::Other;
  h.model_name = j.value("model_name", "");
  h.family = j.value("family", 0u);
  h.model = j.value("model", 0u);
  h.stepping = j.value("stepping", 0u);
  h.long_mode = j.value("long_mode", false);
  h.hardware_virtualization = j.value("hardware_virtualization", false);
  h.nested_paging = j.value("nested_paging", false);
  h.apic_virtualization = j.value("apic_virtualization", false);
  h.long_mode_segment_limits = j.value("long_mode_segment_limits", false);
  h.quirks = strings(j.value("quirks", json::array()));
  h.masked = strings(j.value("masked", json::array()));
  const json d = j.value("driver", json::object());
  h.driver.present = d.value("present", false);
  h.driver.usable = d.value("usable", false);
  h.driver.name = d.value("name", "");
  h.driver.detail = d.value("detail", "");
  h.driver.mmu_selection = d.value("mmu_selection", "per-vm") == "per-vm" ? api::MmuSelection::PerVm : api::MmuSelection::HostWide;
  h.driver.nested_paging_enabled = d.value("nested_paging_enabled", false);
  h.driver.api_version = d.value("api_version", 0);
  return h;
}

std::vector<host::PluginCandidate> candidates_from_json(const json& plugins) {
  std::vector<host::PluginCandidate> out;
  if (!plugins.is_array()) return out;
  for (const auto& p : plugins) {
    if (!p.is_object()) continue;
    host::PluginCandidate c;
    c.file = p.value("file", "");
    auto& d = c.descriptor;
    d.name = p.value("name", "");
    d.version = p.value("version", "");
    d.log_token = p.value("log_token", "");
    d.abi_version = p.value("abi_version", api::kAbiVersion);
    d.execution = p.value("execution", "software") == "hardware" ? api::Technique::Hardware : api::Technique::Software;
    d.mmu = p.value("mmu", "software") == "hardware" ? api::Technique::Hardware : api::Technique::Software;
    d.deterministic = p.value("deterministic", false);
    d.summary = p.value("summary", "");
    const auto guests = strings(p.value("guests", json::array()));
    d.guests.bits32 = std::count(guests.begin(), guests.end(), "32-bit") > 0;
    d.guests.bits64 = std::count(guests.begin(), guests.end(), "64-bit") > 0;
    d.guests.bits64_needs_segment_limits = p.value("bits64_needs_segment_limits", false);
    d.guests.max_vcpus = p.value("max_vcpus", 0u);
    c.host_problems = strings(p.value("why_not", json::array()));
    out.push_back(std::move(c));
  }
  return out;
}

json HostVerdict::to_json() const {
  json out{{"host", host},
           {"alive", alive},
           {"mode", selection && selection->selected ? selection->display(*selection->selected) : ""},
           {"plugin", selection && selection->selected_plugin ? selection->selected_plugin->descriptor.name : ""},
           {"hints_honoured", hints_honoured},
           {"fits", fits},
           {"eligible", eligible},
           {"why_not", why_not},
           {"free_memory_bytes", free_memory_bytes},
           {"free_vcpus", free_vcpus}};
  if (selection) {
    out["selection"] = host::to_json(*selection);
    out["reasoning"] = host::monitor_mode_lines(*selection);
  }
  return out;
}

std::string HostVerdict::summary() const {
  std::string mode = selection && selection->selected ? selection->display(*selection->selected) : "no mode";
  if (selection && selection->selected_plugin) mode += " (" + selection->selected_plugin->descriptor.name + ")";
  if (eligible)
    return fmt::format("{}: {}, hints honoured, {} and {} vCPUs free", host, mode, mib(free_memory_bytes), free_vcpus);
  return fmt::format("{}: {}; not eligible: {}", host, mode, fmt::join(why_not, "; "));
}

HostVerdict evaluate_host(const host::VmConfig& vm, const json& record, const std::filesystem::path& config_dir) {
  HostVerdict v;
  v.host = record.value("name", "?");
  v.alive = record.value("alive", true);
  v.free_memory_bytes = record.value("free_memory_bytes", std::uint64_t{0});
  v.free_vcpus = record.value("free_vcpus", 0u);
  if (!v.alive) v.why_not.push_back("not alive (its lease expired)");
  try {
    const std::string policy_name = record.value("policy", "default");
    const host::Policy policy = host::load_policy(host::find_policy(config_dir, policy_name));
    v.selection = host::select_monitor_mode(capabilities_from_json(record.value("capabilities", json::object())),
                                            candidates_from_json(record.value("plugins", json::array())), policy, vm);
  } catch (const std::exception& e) {
    v.why_not.push_back(std::string("cannot evaluate its selector here: ") + e.what());
  }
  if (v.selection) {
    if (!v.selection->selected) v.why_not.push_back("no mode: " + v.selection->none_reason);
    v.hints_honoured = v.selection->ignored_hints.empty();
    for (const auto& hint : v.selection->ignored_hints)
      v.why_not.push_back(fmt::format("hint not honoured: {} ({})", hint.hint, hint.reason));
  }
  v.fits = v.free_memory_bytes >= vm.memory_bytes && v.free_vcpus >= vm.vcpus;
  if (!v.fits)
    v.why_not.push_back(fmt::format("does not fit: needs {} and {} vCPUs, {} and {} vCPUs free", mib(vm.memory_bytes),
                                    vm.vcpus, mib(v.free_memory_bytes), v.free_vcpus));
  v.eligible = v.alive && v.selection && v.selection->selected && v.hints_honoured && v.fits;
  return v;
}

DestinationChoice choose_destination(const host::VmConfig& vm, const json& hosts, const std::string& self,
                                     const std::string& to, const std::filesystem::path& config_dir) {
  DestinationChoice out;
  const HostVerdict* best = nullptr;
  const json* best_record = nullptr;
  std::vector<const json*> records;
  for (const auto& record : hosts)
    if (record.is_object() && record.value("name", "") != self && (to == "auto" || record.value("name", "") == to))
      records.push_back(&record);
  if (records.empty()) {
    out.explanation = to == "auto" ? "no other live host in the fleet" : "no live host named " + to + " in the fleet";
    return out;
  }
  for (const json* record : records) out.verdicts.push_back(evaluate_host(vm, *record, config_dir));
  for (std::size_t i = 0; i < out.verdicts.size(); ++i) {
    const auto& v = out.verdicts[i];
    if (!v.eligible) continue;
    // Most free memory first, then the name: a spread, and the same answer for the same fleet.
    if (!best || v.free_memory_bytes > best->free_memory_bytes ||
        (v.free_memory_bytes == best->free_memory_bytes && v.host < best->host)) {
      best = &v;
      best_record = records[i];
    }
  }
  std::vector<std::string> lines;
  for (const auto& v : out.verdicts) lines.push_back(v.summary());
  if (!best) {
    out.explanation = fmt::format("no host can take VM {}: {}", vm.name, fmt::join(lines, " | "));
    return out;
  }
  out.host = *best_record;
  out.explanation = fmt::format("{} chosen for VM {} ({}{}): {}", best->host, vm.name,
                                to == "auto" ? "the eligible host with the most free memory" : "named by the operator",
                                "", fmt::join(lines, " | "));
  return out;
}

}  // namespace modevisor::fleet
