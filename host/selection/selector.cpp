#include "selection/selector.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>

namespace modevisor::host {

namespace {

bool contains(const std::vector<std::string>& list, const std::string& item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

std::string vendor_name(api::CpuVendor vendor) {
  switch (vendor) {
    case api::CpuVendor::Intel: return "intel";
    case api::CpuVendor::Amd: return "amd";
    default: return "other";
  }
}

std::string vendor_display(const std::string& vendor) { return vendor == "intel" ? "Intel" : "AMD"; }

// Semantic-version order for choosing among plugins of one mode.
std::vector<unsigned> version_parts(const std::string& version) {
  std::vector<unsigned> parts;
  const char* p = version.data();
  const char* end = p + version.size();
  while (p < end) {
    unsigned value = 0;
    auto [next, ec] = std::from_chars(p, end, value);
    if (ec != std::errc()) break;
    parts.push_back(value);
    p = next;
    if (p < end && *p == '.') ++p; else break;
  }
  return parts;
}

// Why the policy does not implement `mode` for this guest on this CPU; empty if it does.
std::vector<std::string> policy_reasons(const api::HostCapabilities& host, const Policy& policy,
                                        const std::string& mode, unsigned bits) {
  const ModePolicy* rules = policy.mode(mode);
  if (!rules || rules->rules.empty()) return {fmt::format("{} does not implement {}", policy.name, mode)};
  if (bits == 64 && !host.long_mode) return {"the CPU has no long mode, so it cannot run 64-bit guests"};

  const std::string vendor = vendor_name(host.vendor);
  std::vector<std::string> reasons;
  bool some_rule_for_guest = false;
  for (const ModeRule& rule : rules->rules) {
    if (!rule.vendor.empty() && rule.vendor != vendor) continue;
    if (std::find(rule.bits.begin(), rule.bits.end(), bits) == rule.bits.end()) continue;
    some_rule_for_guest = true;
    std::vector<std::string> missing;
    for (const auto& cap : rule.requires_caps)
      if (!has_capability(host, cap)) missing.push_back(describe_missing_capability(host, cap));
    for (const auto& quirk : rule.unless_quirks)
      if (contains(host.quirks, quirk))
        missing.push_back(fmt::format("{} does not use {} on this CPU (quirk {})", policy.name,
                                      mode == "BT" ? "binary translation" : "AMD-V/VT-x", quirk));
    if (missing.empty()) return {};
    for (auto& m : missing)
      if (!contains(reasons, m)) reasons.push_back(std::move(m));
  }
  if (!some_rule_for_guest) {
    // Say which guests the mode is for, on this vendor's CPUs.
    std::vector<std::string> for_vendor;
    for (const ModeRule& rule : rules->rules)
      if (rule.vendor.empty() || rule.vendor == vendor)
        for (unsigned b : rule.bits) {
          std::string s = fmt::format("{}-bit", b);
          if (!contains(for_vendor, s)) for_vendor.push_back(s);
        }
    const std::string cpu = vendor == "other" ? "this CPU" : vendor_display(vendor) + " CPUs";
    if (for_vendor.empty())
      reasons.push_back(fmt::format("{} does not implement {} on {}", policy.name, mode, cpu));
    else
      reasons.push_back(fmt::format("{} runs only {} guests with {} on {}", policy.name, fmt::join(for_vendor, " and "),
                                    mode, cpu));
  }
  return reasons;
}

// Why `plugin` cannot run this VM on this host; empty if it can.
std::vector<std::string> plugin_reasons(const api::HostCapabilities& host, const PluginCandidate& plugin,
                                        const VmConfig& vm) {
  const auto& d = plugin.descriptor;
  const unsigned bits = vm.guest.os.bits;
  std::vector<std::string> reasons;
  for (const auto& p : plugin.host_problems) reasons.push_back(fmt::format("{}: {}", d.name, p));
  if (bits == 32 && !d.guests.bits32) reasons.push_back(fmt::format("{} does not run 32-bit guests", d.name));
  if (bits == 64 && !d.guests.bits64) reasons.push_back(fmt::format("{} does not run 64-bit guests", d.name));
  if (bits == 64 && d.guests.bits64 && d.guests.bits64_needs_segment_limits && !host.long_mode_segment_limits)
    reasons.push_back(fmt::format("{} runs 64-bit guests only where long mode keeps segment limits: {}", d.name,
                                  describe_missing_capability(host, "long_mode_segment_limits")));
  if (d.guests.max_vcpus && vm.vcpus > d.guests.max_vcpus)
    reasons.push_back(d.guests.max_vcpus == 1
                          ? fmt::format("{} runs only VMs with one vCPU; this VM has {}", d.name, vm.vcpus)
                          : fmt::format("{} runs VMs of at most {} vCPUs; this VM has {}", d.name,
                                        d.guests.max_vcpus, vm.vcpus));
  return reasons;
}

// Among the plugins of one mode that can run the guest, the newest (then by name).
std::optional<PluginCandidate> best_plugin(const std::vector<const PluginCandidate*>& usable) {
  const PluginCandidate* best = nullptr;
  for (const PluginCandidate* p : usable) {
    if (!best) { best = p; continue; }
    auto a = version_parts(p->descriptor.version), b = version_parts(best->descriptor.version);
    if (a > b || (a == b && p->descriptor.name < best->descriptor.name)) best = p;
  }
  if (!best) return std::nullopt;
  return *best;
}

const PreferenceRule* matching_preference(const Policy& policy, const api::HostCapabilities& host,
                                          const GuestOsType& os) {
  for (const PreferenceRule& rule : policy.preferences) {
    if (!rule.os_families.empty() && !contains(rule.os_families, os.family)) continue;
    if (rule.bits && *rule.bits != os.bits) continue;
    if (rule.apic_virtualization && *rule.apic_virtualization != host.apic_virtualization) continue;
    return &rule;
  }
  return nullptr;
}

std::string describe_rule(const PreferenceRule& rule) {
  std::vector<std::string> parts;
  if (!rule.os_families.empty()) parts.push_back(fmt::format("{} guests", fmt::join(rule.os_families, "/")));
  if (rule.bits) parts.push_back(fmt::format("{}-bit guests", *rule.bits));
  if (rule.apic_virtualization)
    parts.push_back(*rule.apic_virtualization ? "CPU virtualizes the APIC/TPR" : "CPU does not virtualize the APIC/TPR");
  std::string text = parts.empty() ? "any guest" : fmt::format("{}", fmt::join(parts, ", "));
  if (!rule.note.empty()) text += ": " + rule.note;
  return text;
}

// The modes a hint permits: software/hardware for execution or the MMU.
bool hint_permits(TechniqueHint hint, bool hardware) {
  return hint == TechniqueHint::Automatic || (hint == TechniqueHint::Hardware) == hardware;
}
bool mode_has_hardware_execution(const std::string& mode) { return mode != "BT"; }
bool mode_has_hardware_mmu(const std::string& mode) { return mode == "HWMMU"; }

}  // namespace

std::string Selection::display(const std::string& mode) const {
  return mode == "BT" && bt_limited_to_32bit ? "BT32" : mode;
}

Selection select_monitor_mode(const api::HostCapabilities& host, const std::vector<PluginCandidate>& plugins,
                              const Policy& policy, const VmConfig& vm) {
  Selection s;
  s.vm_name = vm.name;
  s.host_source = host.source;
  s.policy_name = policy.name;
  // BT is listed as BT32 where it runs 32-bit guests only: on CPUs without
  // long-mode segment limits for a 32-bit guest (the seed's BT32), and for a
  // 64-bit guest where no installed BT plugin runs one here.
  const bool software_bt64 = std::any_of(plugins.begin(), plugins.end(), [&](const PluginCandidate& p) {
    const char* token = api::mode_token(p.descriptor.execution, p.descriptor.mmu);
    return token && std::string_view(token) == "BT" && p.descriptor.guests.bits64 &&
           !p.descriptor.guests.bits64_needs_segment_limits;
  });
  s.bt_limited_to_32bit = !host.long_mode_segment_limits && (vm.guest.os.bits == 32 || !software_bt64);
  if (vm.guest.os.bits == 64 && software_bt64 && !host.long_mode_segment_limits)
    s.bt64_checks = "software checks (a table per 1 GiB of the guest's address space) instead of segment limits, "
                    "which this CPU does not have in long mode";
  const unsigned bits = vm.guest.os.bits;

  // 1. Allowed: the policy implements the mode here and an installed plugin can run it.
  for (const std::string& mode : all_modes()) {
    ModeVerdict verdict;
    verdict.mode = mode;
    verdict.reasons = policy_reasons(host, policy, mode, bits);
    std::vector<const PluginCandidate*> usable;
    std::vector<std::string> plugin_problems;
    bool any_plugin = false;
    for (const PluginCandidate& p : plugins) {
      const char* token = api::mode_token(p.descriptor.execution, p.descriptor.mmu);
      if (!token || mode != token) continue;
      any_plugin = true;
      auto problems = plugin_reasons(host, p, vm);
      if (problems.empty()) usable.push_back(&p);
      for (auto& problem : problems) plugin_problems.push_back(std::move(problem));
    }
    // The plugins' reasons matter only where the policy would allow the mode;
    // otherwise they would restate the policy's.
    if (!any_plugin)
      verdict.reasons.push_back(fmt::format("no installed plugin implements {}", mode));
    else if (usable.empty() && verdict.reasons.empty())
      verdict.reasons = std::move(plugin_problems);
    verdict.plugin = best_plugin(usable);
    verdict.allowed = verdict.reasons.empty();
    if (verdict.allowed) s.allowed.push_back(mode);
    s.verdicts.push_back(std::move(verdict));
  }

  // 2. The hints narrow the allowed modes; a hint the host cannot honour is ignored.
  s.requested = s.allowed;
  const auto exec = vm.monitor.virtual_exec, mmu = vm.monitor.virtual_mmu;
  std::vector<std::string> honoured_hints;
  TechniqueHint effective_exec = TechniqueHint::Automatic, effective_mmu = TechniqueHint::Automatic;
  auto consider = [&](const char* key, TechniqueHint hint, TechniqueHint& effective) {
    if (hint == TechniqueHint::Automatic) return;
    const std::string text = fmt::format("monitor.{} = {}", key, to_string(hint));
    if (!policy.recognizes(key)) {
      s.ignored_hints.push_back({text, fmt::format("{} does not recognize monitor.{}", policy.name, key)});
      return;
    }
    effective = hint;
    honoured_hints.push_back(text);
  };
  consider("virtual_exec", exec, effective_exec);
  consider("virtual_mmu", mmu, effective_mmu);
  if (effective_exec == TechniqueHint::Software && effective_mmu == TechniqueHint::Hardware) {
    s.ignored_hints.push_back({fmt::format("{}", fmt::join(honoured_hints, ", ")),
                               "software execution with a hardware MMU is not a valid monitor mode"});
  } else if (!honoured_hints.empty()) {
    std::vector<std::string> narrowed;
    for (const auto& mode : s.allowed)
      if (hint_permits(effective_exec, mode_has_hardware_execution(mode)) &&
          hint_permits(effective_mmu, mode_has_hardware_mmu(mode)))
        narrowed.push_back(mode);
    if (narrowed.empty()) {
      // Name what was asked for and why the host cannot give it.
      std::vector<std::string> why;
      for (const auto& verdict : s.verdicts)
        if (!verdict.allowed && hint_permits(effective_exec, mode_has_hardware_execution(verdict.mode)) &&
            hint_permits(effective_mmu, mode_has_hardware_mmu(verdict.mode)))
          why.push_back(fmt::format("{} is not allowed here: {}", s.display(verdict.mode),
                                    fmt::join(verdict.reasons, "; ")));
      s.ignored_hints.push_back({fmt::format("{}", fmt::join(honoured_hints, ", ")),
                                 why.empty() ? "no allowed mode matches" : fmt::format("{}", fmt::join(why, "; "))});
    } else {
      s.requested = std::move(narrowed);
    }
  }

  // 3. The guest OS's preference orders them (and may disallow some).
  const PreferenceRule* rule = matching_preference(policy, host, vm.guest.os);
  std::vector<std::string> order = rule ? rule->order : all_modes();
  if (rule) s.preference_note = describe_rule(*rule);
  for (const auto& mode : order)
    if (contains(s.allowed, mode) && !(rule && contains(rule->disallow, mode))) s.preferred.push_back(mode);
  if (rule)
    for (const auto& mode : rule->disallow)
      if (contains(s.allowed, mode))
        s.feature_notes.push_back(fmt::format("{} is disallowed for {} guests by {}{}", s.display(mode),
                                              vm.guest.os.name, policy.name,
                                              rule->note.empty() ? "" : " (" + rule->note + ")"));

  // 4. Features narrow further: Fault Tolerance needs deterministic execution
  // and avoids what the policy says it avoids.
  std::vector<std::string> feature_allowed = s.preferred;
  if (vm.fault_tolerance) {
    const auto& ft = policy.fault_tolerance;
    std::vector<std::string> kept;
    for (const auto& mode : s.preferred) {
      const ModeVerdict& verdict = *std::find_if(s.verdicts.begin(), s.verdicts.end(),
                                                 [&](const ModeVerdict& v) { return v.mode == mode; });
      if (!ft.supported) {
        s.feature_notes.push_back(fmt::format("fault_tolerance removes {}: {} has no Fault Tolerance",
                                              s.display(mode), policy.name));
      } else if (contains(ft.avoid, mode)) {
        s.feature_notes.push_back(fmt::format("fault_tolerance removes {}: {} avoids it", s.display(mode), policy.name));
      } else if (ft.requires_deterministic && verdict.plugin && !verdict.plugin->descriptor.deterministic) {
        s.feature_notes.push_back(fmt::format("fault_tolerance removes {}: {} is not deterministic", s.display(mode),
                                              verdict.plugin->descriptor.name));
      } else {
        kept.push_back(mode);
      }
    }
    feature_allowed = std::move(kept);
  }

  for (const auto& mode : feature_allowed)
    if (contains(s.requested, mode)) s.filtered.push_back(mode);

  // A hint that would leave nothing for this guest or these features is
  // ignored too: hints never stop a VM that could otherwise run.
  if (s.filtered.empty() && !feature_allowed.empty() && s.requested != s.allowed) {
    std::vector<std::string> requested_display;
    for (const auto& mode : s.requested) requested_display.push_back(s.display(mode));
    s.ignored_hints.push_back({fmt::format("{}", fmt::join(honoured_hints, ", ")),
                               fmt::format("it asks for {}, which this guest or its features exclude",
                                           fmt::join(requested_display, " "))});
    s.requested = s.allowed;
    s.filtered = feature_allowed;
  }

  // 5. The first remaining mode wins.
  if (!s.filtered.empty()) {
    s.selected = s.filtered.front();
    for (const auto& verdict : s.verdicts)
      if (verdict.mode == *s.selected) s.selected_plugin = verdict.plugin;
  } else if (s.allowed.empty()) {
    s.none_reason = "no monitor mode is allowed for this VM on this host";
  } else if (s.preferred.empty()) {
    s.none_reason = "the guest OS type disallows every allowed mode";
  } else {
    s.none_reason = "the VM's features exclude every allowed mode";
  }
  return s;
}

ModeSwitch select_mode_switch(const api::HostCapabilities& host, const std::vector<PluginCandidate>& plugins,
                              const Policy& policy, const VmConfig& vm, const std::string& current_mode,
                              const std::string& guest_event) {
  ModeSwitch out;
  out.guest_event = guest_event;
  VmConfig now = vm;
  now.guest.os.bits = 64;  // what the guest needs from here on
  out.selection = select_monitor_mode(host, plugins, policy, now);
  const Selection& s = out.selection;
  // As the VM was selected (32-bit): BT32 where BT cannot run 64-bit guests.
  out.from = current_mode == "BT" && !host.long_mode_segment_limits ? "BT32" : current_mode;

  // The plugin gave the guest up: the first hardware mode of the candidates
  // takes it (the seed's rule: software for as long as possible, then
  // hardware); BT64 only where no hardware mode is allowed.
  // A hint that kept only BT cannot hold either: the guest OS's order of
  // the allowed modes is next.
  auto first_hardware = [&](const std::vector<std::string>& modes) {
    return std::find_if(modes.begin(), modes.end(), [&](const std::string& mode) {
      return mode_has_hardware_execution(mode) && mode != current_mode;
    });
  };
  auto hardware = first_hardware(s.filtered);
  const bool hint_overruled = hardware == s.filtered.end() && !vm.fault_tolerance &&
                              first_hardware(s.preferred) != s.preferred.end();
  if (hint_overruled) hardware = first_hardware(s.preferred);
  if (hint_overruled || hardware != s.filtered.end()) {
    out.to = s.display(*hardware);
    for (const auto& verdict : s.verdicts)
      if (verdict.mode == *hardware) out.plugin = verdict.plugin;
    out.reason = "the VM entered 64-bit mode; " + out.from +
                 " runs it with software virtualization for as long as possible, "
                 "then switches to hardware virtualization (" + guest_event + ")" +
                 (hint_overruled ? "; the VM's hints asked for BT, which cannot run it now" : "");
    return out;
  }

  // No hardware mode takes it: say why not, mode by mode.
  std::vector<std::string> why_not;
  for (const auto& verdict : s.verdicts)
    if (mode_has_hardware_execution(verdict.mode)) {
      if (!verdict.allowed)
        why_not.push_back(fmt::format("{}: {}", verdict.mode, fmt::join(verdict.reasons, "; ")));
      else if (!contains(s.filtered, verdict.mode))
        why_not.push_back(fmt::format("{}: not among the selection's candidates ({})", verdict.mode,
                                      s.selected ? "the filtered list prefers " + s.display(*s.selected)
                                                 : s.none_reason));
    }
  const std::string no_hardware =
      why_not.empty() ? "no hardware mode is allowed"
                      : fmt::format("no hardware mode is allowed ({})", fmt::join(why_not, "; "));
  // BT64: a BT plugin that claims 64-bit guests, where the policy allows BT
  // for them, takes the guest over (the same plugin, its BT64 engine).
  const bool bt64_selected = s.selected && *s.selected == "BT" && s.selected_plugin;
  if (bt64_selected) {
    out.to = "BT64";
    out.plugin = s.selected_plugin;
    out.reason = fmt::format("{} for the 64-bit guest, so {} continues under BT64{}", no_hardware, policy.name,
                             host.long_mode_segment_limits
                                 ? ""
                                 : " (each guest address confined by software checks: this CPU has no long-mode "
                                   "segment limits)");
    return out;
  }
  if (policy.bt32_long_mode.otherwise == Bt32LongModePolicy::Otherwise::Bt64) {
    std::string bt_reason;
    for (const auto& verdict : s.verdicts)
      if (verdict.mode == "BT" && !verdict.reasons.empty())
        bt_reason = fmt::format("{}", fmt::join(verdict.reasons, "; "));
    out.reason = fmt::format("{} for the 64-bit guest, and {} would continue under BT64, which no installed plugin "
                             "allowed here provides{}",
                             no_hardware, policy.name, bt_reason.empty() ? "" : " (BT: " + bt_reason + ")");
    return out;
  }
  std::string bt_reason;
  for (const auto& verdict : s.verdicts)
    if (verdict.mode == "BT" && !verdict.reasons.empty()) bt_reason = fmt::format("{}", fmt::join(verdict.reasons, "; "));
  out.reason = fmt::format("{} for the 64-bit guest, and {} stops it: {}{}", no_hardware, policy.name,
                           policy.bt32_long_mode.reason.empty() ? "BT64 is not allowed" : policy.bt32_long_mode.reason,
                           bt_reason.empty() ? "" : " (BT: " + bt_reason + ")");
  return out;
}

}  // namespace modevisor::host
