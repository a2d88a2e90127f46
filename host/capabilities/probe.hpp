// The host capability probe: CPU vendor/family/model and the virtualization
// features that decide which monitor modes can run here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <modevisor/api/host_capabilities.hpp>

#include "kernel-driver/kvm_probe.hpp"

namespace modevisor::host {

// The first processor block of /proc/cpuinfo.
struct CpuinfoFacts {
  std::string vendor_id;
  std::string model_name;
  unsigned family = 0, model = 0, stepping = 0;
  std::set<std::string> flags;      // "flags" line
  std::set<std::string> vmx_flags;  // "vmx flags" line (Linux >= 5.8 on Intel)
};
CpuinfoFacts parse_cpuinfo(std::string_view text);

// Raw CPUID results.  Text form, one leaf per line (blank lines and # comments
// ignored):   LEAF SUBLEAF: EAX EBX ECX EDX     (all hex, e.g. "80000008 0: 3030 ...")
struct CpuidLeaf {
  std::uint32_t leaf = 0, subleaf = 0;
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};
class CpuidTable {
 public:
  static CpuidTable from_this_cpu();
  static CpuidTable parse(std::string_view text, const std::filesystem::path& origin);  // throws InputError
  std::optional<CpuidLeaf> find(std::uint32_t leaf, std::uint32_t subleaf = 0) const;
  // The text form above, so a host's CPUID can be captured as a fixture.
  std::string to_text() const;
  std::vector<CpuidLeaf> leaves;
};

// The quirk names the probe can report (profiles may list only these).
inline constexpr std::string_view kQuirkAmdVRevFErratum = "amd-v-revf-erratum";
const std::vector<std::string>& known_quirks();

// Pure: combine the three sources into capabilities.  Flags and CPUID bits
// are OR-ed (either source may be missing); EPT is visible only in the
// cpuinfo flags (its CPUID-less home is the IA32_VMX_PROCBASED_CTLS2 MSR).
api::HostCapabilities capabilities_from(const CpuinfoFacts& cpuinfo, const CpuidTable& cpuid,
                                        const kvm::KvmFacts& kvm);

struct ProbeSources {
  std::filesystem::path cpuinfo = "/proc/cpuinfo";
  std::optional<CpuidTable> cpuid;  // this CPU's when absent
  std::filesystem::path kvm_device = "/dev/kvm";
  std::filesystem::path sys_module = "/sys/module";
};
api::HostCapabilities probe_host(const ProbeSources& sources = {});

}  // namespace modevisor::host
