// The monitor-mode selector: a pure function of (host capabilities, installed
// plugins, selection policy, VM declaration) that returns the chosen mode and
// all of its reasoning, in the seed's order:
//   allowed modes -> narrowed by the hints -> ordered by the guest OS's
//   preference -> narrowed by features (Fault Tolerance) -> the first.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <modevisor/api/descriptor.hpp>
#include <modevisor/api/host_capabilities.hpp>

#include "config/vm_config.hpp"
#include "selection/policy.hpp"

namespace modevisor::host {

// An installed plugin as the selector sees it: its descriptor and why it
// cannot run on the host being evaluated (empty when it can).
struct PluginCandidate {
  std::filesystem::path file;
  api::PluginDescriptor descriptor;
  std::vector<std::string> host_problems;
};

struct ModeVerdict {
  std::string mode;                  // BT, HV, HWMMU
  bool allowed = false;
  std::vector<std::string> reasons;  // why not, when not allowed
  std::optional<PluginCandidate> plugin;  // the plugin that would run it
};

struct IgnoredHint {
  std::string hint;    // "monitor.virtual_mmu = hardware"
  std::string reason;
};

struct Selection {
  std::string vm_name;
  std::string host_source;   // HostCapabilities::source
  std::string policy_name;
  bool bt_limited_to_32bit = false;  // list BT as BT32 (the seed, on Intel CPUs)
  // A 64-bit guest BT may run without long-mode segment limits: how its
  // addresses are confined instead (logged when BT is selected).
  std::string bt64_checks;

  std::vector<ModeVerdict> verdicts;      // one per mode, in log order
  std::vector<std::string> allowed;
  std::vector<std::string> requested;     // after the hints
  std::vector<IgnoredHint> ignored_hints;
  std::vector<std::string> preferred;     // the guest OS's order of the allowed modes
  std::string preference_note;            // which rule gave it
  std::vector<std::string> feature_notes; // what Fault Tolerance removed and why
  std::vector<std::string> filtered;      // the final candidates, best first
  std::optional<std::string> selected;    // a mode token
  std::optional<PluginCandidate> selected_plugin;
  std::string none_reason;                // when nothing is selected

  // The token as the log shows it: BT32 where BT cannot run 64-bit guests.
  std::string display(const std::string& mode) const;
};

Selection select_monitor_mode(const api::HostCapabilities& host, const std::vector<PluginCandidate>& plugins,
                              const Policy& policy, const VmConfig& vm);

// The seed's BT32, mid-run: "the monitor runs the virtual machine with
// software virtualization for as long as possible, but it dynamically
// switches to hardware virtualization if the virtual machine enters 64-bit
// mode."  The selection is made again for the guest as it is now (64-bit);
// a hardware mode it selects takes the VM over, otherwise the VM stops with
// the reason (the policy's bt32_long_mode: the seed's reason, or BT64, which
// is not implemented yet).
struct ModeSwitch {
  std::string from;                       // the mode the VM runs under, as the log shows it ("BT32")
  std::string guest_event;                // what the guest did (the plugin's words)
  Selection selection;                    // made again, for a 64-bit guest
  std::optional<std::string> to;          // the mode it continues under (display token), when it switches
  std::optional<PluginCandidate> plugin;  // the plugin that runs it from now on
  std::string reason;                     // why it switches, or why the VM stops
};

ModeSwitch select_mode_switch(const api::HostCapabilities& host, const std::vector<PluginCandidate>& plugins,
                              const Policy& policy, const VmConfig& vm, const std::string& current_mode,
                              const std::string& guest_event);

}  // namespace modevisor::host
