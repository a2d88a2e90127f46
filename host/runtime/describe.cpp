#include "runtime/describe.hpp"

namespace modevisor::host {

using nlohmann::json;

namespace {

const char* technique(api::Technique t) { return t == api::Technique::Hardware ? "hardware" : "software"; }

// The guests a plugin runs, as a list of words a program can test for.
json guests_json(const api::GuestSupport& g) {
  json out = json::array();
  if (g.bits32) out.push_back("32-bit");
  if (g.bits64) out.push_back("64-bit");
  return out;
}

}  // namespace

json capabilities_json(const api::HostCapabilities& h) {
  const auto& d = h.driver;
  return json{{"source", h.source},
              {"vendor", h.vendor_id},
              {"model_name", h.model_name},
              {"family", h.family},
              {"model", h.model},
              {"stepping", h.stepping},
              {"long_mode", h.long_mode},
              {"hardware_virtualization", h.hardware_virtualization},
              {"nested_paging", h.nested_paging},
              {"apic_virtualization", h.apic_virtualization},
              {"long_mode_segment_limits", h.long_mode_segment_limits},
              {"quirks", h.quirks},
              {"masked", h.masked},
              {"driver",
               {{"present", d.present},
                {"usable", d.usable},
                {"name", d.name},
                {"detail", d.detail},
                {"mmu_selection", d.mmu_selection == api::MmuSelection::PerVm ? "per-vm" : "host-wide"},
                {"nested_paging_enabled", d.nested_paging_enabled},
                {"api_version", d.api_version}}},
              {"usable",
               {{"hardware_execution", api::can_use_hardware_execution(h)},
                {"nested_paging", api::can_use_nested_paging(h)},
                {"driver_shadow_paging", api::can_use_driver_shadow_paging(h)}}}};
}

json plugins_json(const Host& host) {
  const auto& registry = host.registry();
  json out{{"host", host.capabilities().source}, {"directories", json::array()}, {"plugins", json::array()},
           {"problems", json::array()}};
  for (const auto& dir : registry.directories()) out["directories"].push_back(dir.string());
  for (const auto& plugin : registry.plugins()) {
    const auto& d = plugin->descriptor;
    auto problems = host_problems(*plugin, host.capabilities());
    out["plugins"].push_back({{"name", d.name},
                              {"version", d.version},
                              {"mode", plugin->mode},
                              {"log_token", d.log_token},
                              {"abi_version", d.abi_version},
                              {"file", plugin->file.string()},
                              {"execution", technique(d.execution)},
                              {"mmu", technique(d.mmu)},
                              {"deterministic", d.deterministic},
                              {"guests", guests_json(d.guests)},
                              {"bits64_needs_segment_limits", d.guests.bits64 && d.guests.bits64_needs_segment_limits},
                              {"max_vcpus", d.guests.max_vcpus},
                              {"summary", d.summary},
                              {"runs_here", problems.empty()},
                              {"why_not", problems}});
  }
  for (const auto& problem : registry.problems())
    out["problems"].push_back({{"file", problem.file.string()}, {"reason", problem.reason}});
  return out;
}

}  // namespace modevisor::host
