// Rendering a Selection: the seed's "MONITOR MODE:" log lines (for the VM log
// and `modevisor explain`) and JSON (for tools).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "selection/selector.hpp"

namespace modevisor::host {

// The five lines of the seed's format, in its order, plus one line for each
// mode that is not allowed, each hint ignored and each feature exclusion.
std::vector<std::string> monitor_mode_lines(const Selection& selection);

nlohmann::json to_json(const Selection& selection);

// A switch mid-run (the seed's BT32 -> hardware virtualization): the lines of
// the selection made again for the 64-bit guest, then one "switch" line:
//   MONITOR MODE: switch                 : BT32 -> HV (hv-swmmu 0.1.0) (why)
//   MONITOR MODE: switch                 : none, BT32 -> stop (why)
std::vector<std::string> mode_switch_lines(const ModeSwitch& change);

// The same decision made ahead of time (`modevisor explain` of a VM that
// starts under BT): one line saying what happens if the guest enters
// 64-bit mode, and its JSON form (from, to, plugin, reason).
std::string mode_switch_plan_line(const ModeSwitch& change);
nlohmann::json to_json(const ModeSwitch& change);

}  // namespace modevisor::host
