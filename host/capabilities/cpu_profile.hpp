// CPU profiles: YAML descriptions of other hosts' CPUs (configs/cpus/), for
// what-if evaluation; and capability masks (EVC-like) that hide features.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <modevisor/api/host_capabilities.hpp>

namespace modevisor::host {

// Throws InputError naming file, line and column.
api::HostCapabilities load_cpu_profile(const std::filesystem::path& file);

// `name_or_path`: a profile name ("intel-nehalem") looked up in
// <config_dir>/cpus/, or a path to a YAML file.  Throws InputError listing the
// known names when not found.
std::filesystem::path find_cpu_profile(const std::filesystem::path& config_dir, std::string_view name_or_path);
std::vector<std::string> list_cpu_profiles(const std::filesystem::path& config_dir);

// Names accepted by apply_capability_mask.
const std::vector<std::string>& maskable_features();
// Hide `features` from VMs: clears them and records them in `masked` (once
// each).  Masking hardware_virtualization also makes the driver unusable, with
// a detail saying so; nested_paging and apic_virtualization then stay as CPU
// facts but are unreachable, since every can_use_* needs hardware execution.
// Masking nested_paging also clears driver.nested_paging_enabled.
// Throws std::invalid_argument naming an unknown feature (nothing is changed).
void apply_capability_mask(api::HostCapabilities& caps, const std::vector<std::string>& features);

}  // namespace modevisor::host
