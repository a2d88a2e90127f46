// Selection policies (configs/policies/*.yaml): the rules of one monitor
// version, as data.  A policy says which modes it implements on which CPUs and
// guests, which configuration hints it recognizes, how guest OS types order
// the allowed modes, and what features such as Fault Tolerance exclude.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <modevisor/api/host_capabilities.hpp>

#include "selection/guest_os.hpp"

namespace modevisor::host {

// The seed's three monitor modes, in the order the log lists them.
inline const std::vector<std::string>& all_modes() {
  static const std::vector<std::string> modes{"BT", "HV", "HWMMU"};
  return modes;
}

// One way a policy allows a mode: on CPUs of `vendor` ("intel", "amd" or
// empty for any), for guests of the listed bitnesses, when the CPU has every
// capability in `requires` and none of the quirks in `unless`.
struct ModeRule {
  std::string vendor;
  std::vector<unsigned> bits{32, 64};
  std::vector<std::string> requires_caps;
  std::vector<std::string> unless_quirks;
};

struct ModePolicy {
  std::string mode;  // BT, HV, HWMMU
  std::vector<ModeRule> rules;  // allowed when any rule matches; none: not implemented
};

// First matching preference rule orders the allowed modes for a guest.
struct PreferenceRule {
  std::vector<std::string> os_families;    // empty: any
  std::optional<unsigned> bits;            // 32 or 64; empty: any
  std::optional<bool> apic_virtualization; // empty: either
  std::vector<std::string> order;          // most preferred first
  std::vector<std::string> disallow;       // removed for these guests
  std::string note;                        // why, for the log
};

struct FaultTolerancePolicy {
  bool supported = false;
  bool requires_deterministic = true;  // drop plugins whose execution is not deterministic
  std::vector<std::string> avoid;      // modes FT does not use
};

// The seed's BT32: a guest that enters 64-bit mode under BT32 continues
// under a hardware mode when one is allowed for it; otherwise the policy
// either continues under BT64 or stops the VM with `reason`.
struct Bt32LongModePolicy {
  enum class Otherwise { Stop, Bt64 } otherwise = Otherwise::Stop;
  std::string reason;  // why a stop, for the log (the seed's words)
};

struct Policy {
  std::filesystem::path file;
  std::string name;
  std::string description;
  std::vector<ModePolicy> modes;
  std::vector<std::string> hints;  // recognized: "virtual_exec", "virtual_mmu"
  std::vector<PreferenceRule> preferences;
  FaultTolerancePolicy fault_tolerance;
  Bt32LongModePolicy bt32_long_mode;

  const ModePolicy* mode(std::string_view token) const;
  bool recognizes(std::string_view hint) const;
};

// Throws InputError.  Every os_family a preference names must be a family of
// `guest_os`; the one-argument form checks against the guest-os.yaml of the
// config directory the policy lives in (<dir>/policies/X.yaml ->
// <dir>/guest-os.yaml) when there is one.
Policy load_policy(const std::filesystem::path& file);
Policy load_policy(const std::filesystem::path& file, const GuestOsTable& guest_os);
// known_families null: os_family values are not checked.
Policy load_policy_checked(const std::filesystem::path& file, const std::vector<std::string>* known_families);
// A name in <config_dir>/policies/ or a path; InputError lists known names.
std::filesystem::path find_policy(const std::filesystem::path& config_dir, std::string_view name_or_path);
std::vector<std::string> list_policies(const std::filesystem::path& config_dir);

// Capability names a policy may require; each maps to a HostCapabilities field.
bool has_capability(const api::HostCapabilities& host, std::string_view name);
std::string describe_missing_capability(const api::HostCapabilities& host, std::string_view name);
bool is_known_capability(std::string_view name);

}  // namespace modevisor::host
