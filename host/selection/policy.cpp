#include "selection/policy.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "common/yaml_input.hpp"

namespace modevisor::host {

namespace {

struct CapabilityName {
  std::string_view name;
  bool api::HostCapabilities::*field;
  std::string_view missing;  // what the log says when the CPU lacks it
};

constexpr CapabilityName kCapabilities[] = {
    {"long_mode", &api::HostCapabilities::long_mode, "the CPU has no long mode (x86-64)"},
    {"hardware_virtualization", &api::HostCapabilities::hardware_virtualization,
     "the CPU has no hardware virtualization (VT-x/AMD-V)"},
    {"nested_paging", &api::HostCapabilities::nested_paging, "the CPU has no nested paging (EPT/RVI)"},
    {"apic_virtualization", &api::HostCapabilities::apic_virtualization,
     "the CPU does not virtualize the APIC/TPR"},
    {"long_mode_segment_limits", &api::HostCapabilities::long_mode_segment_limits,
     "the CPU has no segment limits in long mode (BT is limited to 32-bit guests)"},
};

const CapabilityName* capability(std::string_view name) {
  for (const auto& c : kCapabilities)
    if (c.name == name) return &c;
  return nullptr;
}

std::string known_capabilities() {
  std::string out;
  for (const auto& c : kCapabilities) out += (out.empty() ? "" : ", ") + std::string(c.name);
  return out;
}

std::string mode_token(const YamlInput& in, const YAML::Node& node) {
  std::string token = in.scalar(node, "a monitor mode (BT, HV or HWMMU)");
  const auto& modes = all_modes();
  if (std::find(modes.begin(), modes.end(), token) == modes.end())
    throw in.error(node, fmt::format("unknown monitor mode '{}' (expected BT, HV or HWMMU)", token));
  return token;
}

std::vector<std::string> mode_list(const YamlInput& in, const YAML::Node& node) {
  if (!node.IsSequence()) throw in.error(node, "expected a list of monitor modes (BT, HV, HWMMU)");
  std::vector<std::string> out;
  for (const auto& item : node) out.push_back(mode_token(in, item));
  return out;
}

std::vector<unsigned> bitness_list(const YamlInput& in, const YAML::Node& node) {
  if (!node.IsSequence()) throw in.error(node, "expected a list of guest bitnesses, e.g. [32, 64]");
  std::vector<unsigned> out;
  for (const auto& item : node) out.push_back(in.bitness(item));
  return out;
}

ModeRule read_mode_rule(const YamlInput& in, const YAML::Node& node) {
  in.expect_map(node, "a rule {vendor, bits, requires, unless}");
  in.reject_unknown_keys(node, {"vendor", "bits", "requires", "unless"});
  ModeRule rule;
  if (node["vendor"]) {
    rule.vendor = in.scalar(node["vendor"], "intel or amd");
    if (rule.vendor != "intel" && rule.vendor != "amd")
      throw in.error(node["vendor"], fmt::format("unknown vendor '{}' (expected intel or amd)", rule.vendor));
  }
  if (node["bits"]) rule.bits = bitness_list(in, node["bits"]);
  if (node["requires"]) {
    rule.requires_caps = in.string_list(node["requires"], "capability names");
    for (std::size_t i = 0; i < rule.requires_caps.size(); ++i)
      if (!is_known_capability(rule.requires_caps[i]))
        throw in.error(node["requires"][i], fmt::format("unknown capability '{}' (expected one of: {})",
                                                        rule.requires_caps[i], known_capabilities()));
  }
  if (node["unless"]) rule.unless_quirks = in.string_list(node["unless"], "CPU quirk names");
  return rule;
}

PreferenceRule read_preference(const YamlInput& in, const YAML::Node& node,
                               const std::vector<std::string>* known_families) {
  in.expect_map(node, "a preference rule {when, order, disallow, note}");
  in.reject_unknown_keys(node, {"when", "order", "disallow", "note"});
  PreferenceRule rule;
  if (const YAML::Node when = node["when"]) {
    in.expect_map(when, "conditions {os_family, bits, apic_virtualization}");
    in.reject_unknown_keys(when, {"os_family", "bits", "apic_virtualization"});
    if (when["os_family"]) {
      rule.os_families = in.string_list(when["os_family"], "guest OS families");
      for (std::size_t i = 0; i < rule.os_families.size() && known_families; ++i)
        if (std::find(known_families->begin(), known_families->end(), rule.os_families[i]) ==
            known_families->end())
          throw in.error(when["os_family"][i],
                         fmt::format("unknown guest OS family '{}' (the guest OS types know: {})",
                                     rule.os_families[i], fmt::join(*known_families, ", ")));
    }
    if (when["bits"]) rule.bits = in.bitness(when["bits"]);
    if (when["apic_virtualization"]) rule.apic_virtualization = in.boolean(when["apic_virtualization"]);
  }
  const YAML::Node order = in.required(node, "order");
  rule.order = mode_list(in, order);
  for (const auto& mode : all_modes())
    if (std::find(rule.order.begin(), rule.order.end(), mode) == rule.order.end() && !node["disallow"])
      throw in.error(order, fmt::format("order must list every mode ({} is missing) or the rule must "
                                        "disallow the ones it leaves out", mode));
  if (node["disallow"]) rule.disallow = mode_list(in, node["disallow"]);
  if (node["note"]) rule.note = in.scalar(node["note"], "a note");
  return rule;
}

}  // namespace

bool is_known_capability(std::string_view name) { return capability(name) != nullptr; }

bool has_capability(const api::HostCapabilities& host, std::string_view name) {
  const CapabilityName* c = capability(name);
  return c && host.*(c->field);
}

std::string describe_missing_capability(const api::HostCapabilities& host, std::string_view name) {
  const CapabilityName* c = capability(name);
  if (!c) return fmt::format("unknown capability {}", name);
  const bool masked = std::find(host.masked.begin(), host.masked.end(), name) != host.masked.end();
  return masked ? fmt::format("{} (masked by host configuration)", c->missing) : std::string(c->missing);
}

const ModePolicy* Policy::mode(std::string_view token) const {
  for (const auto& m : modes)
    if (m.mode == token) return &m;
  return nullptr;
}

bool Policy::recognizes(std::string_view hint) const {
  return std::find(hints.begin(), hints.end(), hint) != hints.end();
}

Policy load_policy(const std::filesystem::path& file) {
  // A policy in <config_dir>/policies/ is checked against <config_dir>/guest-os.yaml.
  const std::filesystem::path sibling_table = file.parent_path().parent_path() / "guest-os.yaml";
  std::error_code ec;
  if (!file.parent_path().empty() && std::filesystem::is_regular_file(sibling_table, ec))
    return load_policy(file, GuestOsTable::load(sibling_table));
  return load_policy_checked(file, nullptr);
}

Policy load_policy(const std::filesystem::path& file, const GuestOsTable& guest_os) {
  const std::vector<std::string> families = guest_os.families();
  return load_policy_checked(file, &families);
}

Policy load_policy_checked(const std::filesystem::path& file, const std::vector<std::string>* known_families) {
  YamlInput in(file);
  const YAML::Node& root = in.root();
  in.expect_map(root, "a selection policy");
  in.reject_unknown_keys(root,
                         {"name", "description", "modes", "hints", "preferences", "fault_tolerance", "bt32_long_mode"});
  Policy policy;
  policy.file = file;
  policy.name = in.scalar(in.required(root, "name"), "the policy's name");
  if (root["description"]) policy.description = in.scalar(root["description"], "a description");

  const YAML::Node modes = in.required(root, "modes");
  in.expect_map(modes, "a map from mode (BT, HV, HWMMU) to its rules");
  in.reject_duplicate_keys(modes);  // a repeated mode would add a second, silently merged rule set
  for (const auto& entry : modes) {
    ModePolicy mode;
    mode.mode = mode_token(in, entry.first);
    if (!entry.second.IsSequence())
      throw in.error(entry.second, "expected a list of rules (an empty list: the mode is not implemented)");
    for (const auto& rule : entry.second) mode.rules.push_back(read_mode_rule(in, rule));
    policy.modes.push_back(std::move(mode));
  }

  if (root["hints"]) {
    policy.hints = in.string_list(root["hints"], "hint names");
    for (std::size_t i = 0; i < policy.hints.size(); ++i)
      if (policy.hints[i] != "virtual_exec" && policy.hints[i] != "virtual_mmu")
        throw in.error(root["hints"][i], fmt::format("unknown hint '{}' (expected virtual_exec or virtual_mmu)",
                                                     policy.hints[i]));
  }

  const YAML::Node preferences = in.required(root, "preferences");
  if (!preferences.IsSequence()) throw in.error(preferences, "expected a list of preference rules");
  for (const auto& rule : preferences) policy.preferences.push_back(read_preference(in, rule, known_families));

  if (const YAML::Node ft = root["fault_tolerance"]) {
    in.expect_map(ft, "{supported, requires_deterministic, avoid}");
    in.reject_unknown_keys(ft, {"supported", "requires_deterministic", "avoid"});
    policy.fault_tolerance.supported = ft["supported"] ? in.boolean(ft["supported"]) : true;
    if (ft["requires_deterministic"]) policy.fault_tolerance.requires_deterministic = in.boolean(ft["requires_deterministic"]);
    if (ft["avoid"]) policy.fault_tolerance.avoid = mode_list(in, ft["avoid"]);
  }

  if (const YAML::Node lm = root["bt32_long_mode"]) {
    in.expect_map(lm, "{otherwise, reason}");
    in.reject_unknown_keys(lm, {"otherwise", "reason"});
    if (lm["otherwise"]) {
      const std::string otherwise = in.scalar(lm["otherwise"], "stop or bt64");
      if (otherwise == "stop")
        policy.bt32_long_mode.otherwise = Bt32LongModePolicy::Otherwise::Stop;
      else if (otherwise == "bt64")
        policy.bt32_long_mode.otherwise = Bt32LongModePolicy::Otherwise::Bt64;
      else
        throw in.error(lm["otherwise"], fmt::format("unknown bt32_long_mode.otherwise '{}' (expected stop or bt64)",
                                                    otherwise));
    }
    if (lm["reason"]) policy.bt32_long_mode.reason = in.scalar(lm["reason"], "a reason");
  }
  return policy;
}

std::vector<std::string> list_policies(const std::filesystem::path& config_dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(config_dir / "policies", ec))
    if (entry.path().extension() == ".yaml") names.push_back(entry.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::filesystem::path find_policy(const std::filesystem::path& config_dir, std::string_view name_or_path) {
  std::filesystem::path candidate(name_or_path);
  if (candidate.has_parent_path() || candidate.extension() == ".yaml") return candidate;
  std::filesystem::path named = config_dir / "policies" / (std::string(name_or_path) + ".yaml");
  if (std::filesystem::exists(named)) return named;
  throw InputError(named, 0, 0, fmt::format("no selection policy named '{}' (known: {})", name_or_path,
                                            fmt::join(list_policies(config_dir), ", ")));
}

}  // namespace modevisor::host
