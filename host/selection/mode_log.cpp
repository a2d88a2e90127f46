#include "selection/mode_log.hpp"

#include <fmt/format.h>

namespace modevisor::host {

namespace {

// "MONITOR MODE: <label padded to the seed's 23 columns>: <value>"
std::string line(std::string_view label, std::string_view value) {
  return fmt::format("MONITOR MODE: {:<23}: {}", label, value);
}

std::string token_list(const Selection& s, const std::vector<std::string>& modes) {
  std::string out;
  for (const auto& mode : modes) out += (out.empty() ? "" : " ") + s.display(mode);
  return out.empty() ? "(none)" : out;
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : std::string(separator)) + item;
  return out;
}

}  // namespace

std::vector<std::string> monitor_mode_lines(const Selection& s) {
  std::vector<std::string> out;
  out.push_back(line("allowed modes", token_list(s, s.allowed)));
  for (const auto& verdict : s.verdicts)
    if (!verdict.allowed) out.push_back(line("not allowed", fmt::format("{} ({})", s.display(verdict.mode), join(verdict.reasons, "; "))));
  out.push_back(line("user requested modes", token_list(s, s.requested)));
  for (const auto& hint : s.ignored_hints) out.push_back(line("hint ignored", fmt::format("{} ({})", hint.hint, hint.reason)));
  out.push_back(line("guestOS preferred modes", token_list(s, s.preferred)));
  for (const auto& note : s.feature_notes) out.push_back(line("excluded", note));
  out.push_back(line("filtered list", token_list(s, s.filtered)));
  if (s.selected) {
    std::string plugin = s.selected_plugin
                             ? fmt::format(" ({} {})", s.selected_plugin->descriptor.name, s.selected_plugin->descriptor.version)
                             : "";
    out.push_back(line("selected", s.display(*s.selected) + plugin));
    if (*s.selected == "BT" && !s.bt64_checks.empty()) out.push_back(line("BT64 confinement", s.bt64_checks));
  } else {
    out.push_back(line("selected", fmt::format("none ({})", s.none_reason)));
  }
  return out;
}

std::vector<std::string> mode_switch_lines(const ModeSwitch& change) {
  std::vector<std::string> out;
  out.push_back(line("guest entered", fmt::format("64-bit mode under {} ({}); selecting again for a 64-bit guest",
                                                  change.from, change.guest_event)));
  for (auto& l : monitor_mode_lines(change.selection)) out.push_back(std::move(l));
  if (change.to) {
    const std::string plugin =
        change.plugin ? fmt::format(" ({} {})", change.plugin->descriptor.name, change.plugin->descriptor.version) : "";
    out.push_back(line("switch", fmt::format("{} -> {}{}: {}", change.from, *change.to, plugin, change.reason)));
  } else {
    out.push_back(line("switch", fmt::format("none, the VM stops under {}: {}", change.from, change.reason)));
  }
  return out;
}

std::string mode_switch_plan_line(const ModeSwitch& change) {
  if (!change.to) return line("on 64-bit mode", fmt::format("the VM stops under {}: {}", change.from, change.reason));
  const std::string plugin =
      change.plugin ? fmt::format(" ({} {})", change.plugin->descriptor.name, change.plugin->descriptor.version) : "";
  return line("on 64-bit mode", fmt::format("switch {} -> {}{}: {}", change.from, *change.to, plugin, change.reason));
}

nlohmann::json to_json(const ModeSwitch& change) {
  nlohmann::json out{{"from", change.from}, {"reason", change.reason}};
  if (change.to) out["to"] = *change.to;
  if (change.plugin) out["plugin"] = change.plugin->descriptor.name;
  return out;
}

nlohmann::json to_json(const Selection& s) {
  using nlohmann::json;
  auto tokens = [&](const std::vector<std::string>& modes) {
    json list = json::array();
    for (const auto& mode : modes) list.push_back(s.display(mode));
    return list;
  };
  json verdicts = json::array();
  for (const auto& v : s.verdicts) {
    json entry{{"mode", s.display(v.mode)}, {"allowed", v.allowed}, {"reasons", v.reasons}};
    if (v.plugin)
      entry["plugin"] = {{"name", v.plugin->descriptor.name}, {"version", v.plugin->descriptor.version},
                         {"file", v.plugin->file.string()}};
    verdicts.push_back(entry);
  }
  json ignored = json::array();
  for (const auto& h : s.ignored_hints) ignored.push_back({{"hint", h.hint}, {"reason", h.reason}});
  json out{{"vm", s.vm_name},
           {"host", s.host_source},
           {"policy", s.policy_name},
           {"modes", verdicts},
           {"allowed", tokens(s.allowed)},
           {"requested", tokens(s.requested)},
           {"ignored_hints", ignored},
           {"preferred", tokens(s.preferred)},
           {"preference_rule", s.preference_note},
           {"excluded", s.feature_notes},
           {"filtered", tokens(s.filtered)},
           {"log", monitor_mode_lines(s)}};
  if (s.selected) {
    out["selected"] = s.display(*s.selected);
    if (s.selected_plugin)
      out["plugin"] = {{"name", s.selected_plugin->descriptor.name},
                       {"version", s.selected_plugin->descriptor.version},
                       {"file", s.selected_plugin->file.string()}};
  } else {
    out["selected"] = nullptr;
    out["reason"] = s.none_reason;
  }
  return out;
}

}  // namespace modevisor::host
