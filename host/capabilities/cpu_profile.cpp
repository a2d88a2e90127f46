#include "capabilities/cpu_profile.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>
#include <system_error>

#include "capabilities/probe.hpp"
#include "common/errors.hpp"
#include "common/yaml_input.hpp"

namespace modevisor::host {

namespace {

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// The driver a profile describes.  Without a `driver` key: a VMkernel-like
// driver that lets each VM pick its MMU technique.  `kind: kvm`: a Linux KVM
// host whose ept/npt module parameter fixes the choice for the whole host.
api::DriverState load_driver(const YamlInput& in, const YAML::Node& profile, const api::HostCapabilities& caps) {
  api::DriverState driver;
  driver.present = true;
  driver.usable = caps.hardware_virtualization;
  if (!driver.usable) driver.detail = "the CPU has no VT-x/AMD-V";

  const YAML::Node node = profile["driver"];
  if (!node) {
    driver.name = "modelled";
    driver.mmu_selection = api::MmuSelection::PerVm;
    driver.nested_paging_enabled = caps.nested_paging;
    return driver;
  }
  in.expect_map(node, "a driver description such as {kind: kvm, nested_paging: true}");
  in.reject_unknown_keys(node, {"kind", "nested_paging"});
  const YAML::Node kind_node = in.required(node, "kind");
  const std::string kind = in.scalar(kind_node, "kvm or modelled");
  if (kind == "modelled") {
    if (node["nested_paging"])
      throw in.error(node["nested_paging"], "a modelled driver chooses the MMU per VM; nested_paging applies to kind: kvm");
    driver.name = "modelled";
    driver.mmu_selection = api::MmuSelection::PerVm;
    driver.nested_paging_enabled = caps.nested_paging;
    return driver;
  }
  if (kind != "kvm") throw in.error(kind_node, fmt::format("expected kvm or modelled, found '{}'", kind));

  const YAML::Node param_node = in.required(node, "nested_paging");
  const bool param = in.boolean(param_node);
  // KVM clears ept/npt itself on a CPU without them, so "true" there cannot be observed.
  if (param && !caps.nested_paging)
    throw in.error(param_node, "nested_paging: true needs a CPU with EPT/NPT (KVM switches it off otherwise)");
  driver.name = caps.vendor == api::CpuVendor::Intel ? "kvm_intel" : "kvm_amd";
  driver.mmu_selection = api::MmuSelection::HostWide;
  driver.nested_paging_enabled = param;
  driver.api_version = 12;
  return driver;
}

}  // namespace

api::HostCapabilities load_cpu_profile(const std::filesystem::path& file) {
  YamlInput in(file);
  const YAML::Node& root = in.root();
  in.expect_map(root, "a CPU profile (a map with name, vendor, family, model and feature booleans)");
  in.reject_unknown_keys(root, {"name", "description", "vendor", "model_name", "family", "model", "stepping",
                                "long_mode", "hardware_virtualization", "nested_paging", "apic_virtualization",
                                "long_mode_segment_limits", "quirks", "driver"});

  api::HostCapabilities caps;
  const std::string name = in.scalar(in.required(root, "name"), "a profile name");
  caps.source = "profile: " + name;
  if (const YAML::Node description = root["description"]) in.scalar(description, "a description");

  const YAML::Node vendor_node = in.required(root, "vendor");
  caps.vendor_id = in.scalar(vendor_node, "GenuineIntel or AuthenticAMD");
  if (caps.vendor_id == "GenuineIntel") caps.vendor = api::CpuVendor::Intel;
  else if (caps.vendor_id == "AuthenticAMD") caps.vendor = api::CpuVendor::Amd;
  else throw in.error(vendor_node, fmt::format("expected GenuineIntel or AuthenticAMD, found '{}'", caps.vendor_id));
  caps.model_name = root["model_name"] ? in.scalar(root["model_name"], "a CPU model name") : name;

  // Display family/model as /proc/cpuinfo shows them (extended fields folded in).
  auto bounded = [&](const char* key, std::uint64_t max, bool required) -> unsigned {
    const YAML::Node node = required ? in.required(root, key) : root[key];
    if (!node) return 0;
    const auto value = in.unsigned_value(node, fmt::format("a number up to {:#x} (hex with 0x)", max));
    if (value > max) throw in.error(node, fmt::format("{} must be at most {:#x}", key, max));
    return static_cast<unsigned>(value);
  };
  caps.family = bounded("family", 0xf + 0xff, true);
  caps.model = bounded("model", 0xff, true);
  caps.stepping = bounded("stepping", 0xf, false);

  auto feature = [&](const char* key) { return in.boolean(in.required(root, key)); };
  caps.long_mode = feature("long_mode");
  caps.hardware_virtualization = feature("hardware_virtualization");
  caps.nested_paging = feature("nested_paging");
  caps.apic_virtualization = feature("apic_virtualization");
  caps.long_mode_segment_limits = feature("long_mode_segment_limits");

  // Contradictions a real CPU cannot have.
  if (caps.nested_paging && !caps.hardware_virtualization)
    throw in.error(root["nested_paging"], "nested_paging needs hardware_virtualization (EPT/RVI are parts of VT-x/AMD-V)");
  if (caps.apic_virtualization && !caps.hardware_virtualization)
    throw in.error(root["apic_virtualization"],
                   "apic_virtualization needs hardware_virtualization (TPR shadow/AVIC are parts of VT-x/AMD-V)");
  if (caps.long_mode_segment_limits && (caps.vendor != api::CpuVendor::Amd || !caps.long_mode))
    throw in.error(root["long_mode_segment_limits"],
                   "long_mode_segment_limits exist only on 64-bit AMD CPUs (long_mode: true, vendor AuthenticAMD)");

  if (const YAML::Node quirks = root["quirks"]) {
    caps.quirks = in.string_list(quirks, "quirk names");
    const auto& known = known_quirks();
    for (std::size_t i = 0; i < caps.quirks.size(); ++i)
      if (std::find(known.begin(), known.end(), caps.quirks[i]) == known.end())
        throw in.error(quirks[i], fmt::format("unknown quirk '{}' (known: {})", caps.quirks[i], join(known)));
  }

  caps.driver = load_driver(in, root, caps);
  return caps;
}

std::vector<std::string> list_cpu_profiles(const std::filesystem::path& config_dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(config_dir / "cpus", ec))
    if (entry.is_regular_file(ec) && entry.path().extension() == ".yaml") names.push_back(entry.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::filesystem::path find_cpu_profile(const std::filesystem::path& config_dir, std::string_view name_or_path) {
  const std::filesystem::path given{name_or_path};
  const bool looks_like_path = name_or_path.find('/') != std::string_view::npos || given.extension() == ".yaml" ||
                               given.extension() == ".yml";
  std::error_code ec;
  if (looks_like_path) {
    if (!std::filesystem::is_regular_file(given, ec)) throw InputError(given, 0, 0, "no such CPU profile file");
    return given;
  }
  const std::filesystem::path file = config_dir / "cpus" / (std::string(name_or_path) + ".yaml");
  if (std::filesystem::is_regular_file(file, ec)) return file;
  const auto known = list_cpu_profiles(config_dir);
  throw InputError(config_dir / "cpus", 0, 0,
                   fmt::format("unknown CPU profile '{}' (known: {})", name_or_path,
                               known.empty() ? std::string("none") : join(known)));
}

const std::vector<std::string>& maskable_features() {
  static const std::vector<std::string> features{"hardware_virtualization", "nested_paging", "apic_virtualization",
                                                 "long_mode_segment_limits"};
  return features;
}

void apply_capability_mask(api::HostCapabilities& caps, const std::vector<std::string>& features) {
  const auto& maskable = maskable_features();
  for (const auto& feature : features)
    if (std::find(maskable.begin(), maskable.end(), feature) == maskable.end())
      throw std::invalid_argument(
          fmt::format("cannot mask unknown feature '{}' (maskable: {})", feature, join(maskable)));

  auto record = [&](const std::string& feature) {
    if (std::find(caps.masked.begin(), caps.masked.end(), feature) == caps.masked.end())
      caps.masked.push_back(feature);
  };
  for (const auto& feature : features) {
    record(feature);
    if (feature == "hardware_virtualization") {
      caps.hardware_virtualization = false;
      const std::string reason = "hardware virtualization (VT-x/AMD-V) is masked by host configuration";
      if (caps.driver.detail.find(reason) == std::string::npos)
        caps.driver.detail = reason + (caps.driver.detail.empty() ? "" : "; " + caps.driver.detail);
      caps.driver.usable = false;
    } else if (feature == "nested_paging") {
      caps.nested_paging = false;
      caps.driver.nested_paging_enabled = false;
    } else if (feature == "apic_virtualization") {
      caps.apic_virtualization = false;
    } else if (feature == "long_mode_segment_limits") {
      caps.long_mode_segment_limits = false;
    }
  }
}

}  // namespace modevisor::host
