#include "capabilities/probe.hpp"

#include "common/bounded_file.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

#include "common/errors.hpp"

namespace modevisor::host {

namespace {

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

std::set<std::string> split_words(std::string_view text) {
  std::set<std::string> words;
  std::istringstream in{std::string(text)};
  for (std::string word; in >> word;) words.insert(word);
  return words;
}

// cpuinfo prints family/model/stepping in decimal; anything else ("unknown")
// leaves the field at 0, which capabilities_from treats as absent.
unsigned parse_decimal(std::string_view text) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return (ec == std::errc() && end == text.data() + text.size()) ? value : 0;
}

std::optional<std::uint32_t> parse_hex32(std::string_view text) {
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) text.remove_prefix(2);
  if (text.empty()) return std::nullopt;
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  if (ec != std::errc() || end != text.data() + text.size() || value > 0xffffffffULL) return std::nullopt;
  return static_cast<std::uint32_t>(value);
}

// Register contents as the 4 ASCII bytes the CPU means them to be (little endian).
void append_register_chars(std::string& out, std::uint32_t reg) {
  for (int shift = 0; shift < 32; shift += 8) out.push_back(static_cast<char>((reg >> shift) & 0xff));
}

enum class Reg { Eax, Ebx, Ecx, Edx };

bool cpuid_bit(const CpuidTable& cpuid, std::uint32_t leaf, Reg reg, unsigned bit) {
  const auto found = cpuid.find(leaf);
  if (!found) return false;
  const std::uint32_t value = reg == Reg::Eax   ? found->eax
                              : reg == Reg::Ebx ? found->ebx
                              : reg == Reg::Ecx ? found->ecx
                                                : found->edx;
  return (value >> bit) & 1u;
}

// CPUID bit positions used below (Intel SDM vol. 2A, AMD APM vol. 3 appendix E).
constexpr unsigned kLeaf1EcxVmx = 5;
constexpr unsigned kExt1EcxSvm = 2;
constexpr unsigned kExt1EdxLongMode = 29;
constexpr unsigned kSvmEdxNestedPaging = 0;
constexpr unsigned kSvmEdxAvic = 13;
constexpr unsigned kExt8EbxEferLmsleUnsupported = 20;

std::string vendor_from_cpuid(const CpuidTable& cpuid) {
  const auto leaf0 = cpuid.find(0);
  if (!leaf0) return {};
  std::string vendor;
  append_register_chars(vendor, leaf0->ebx);
  append_register_chars(vendor, leaf0->edx);
  append_register_chars(vendor, leaf0->ecx);
  return vendor;
}

std::string brand_from_cpuid(const CpuidTable& cpuid) {
  std::string brand;
  for (std::uint32_t leaf = 0x80000002; leaf <= 0x80000004; ++leaf) {
    const auto regs = cpuid.find(leaf);
    if (!regs) return {};
    for (std::uint32_t reg : {regs->eax, regs->ebx, regs->ecx, regs->edx}) append_register_chars(brand, reg);
  }
  brand.erase(std::find(brand.begin(), brand.end(), '\0'), brand.end());
  return std::string(trim(brand));
}

// Display family/model as Linux computes them from CPUID leaf 1: the extended
// family counts only when the base family is 0xf, the extended model when the
// base family is 0xf (both vendors) or 6 (Intel).
void signature_from_cpuid(const CpuidTable& cpuid, api::CpuVendor vendor, api::HostCapabilities& caps) {
  const auto leaf1 = cpuid.find(1);
  if (!leaf1) return;
  const unsigned base_family = (leaf1->eax >> 8) & 0xf;
  const unsigned base_model = (leaf1->eax >> 4) & 0xf;
  caps.family = base_family == 0xf ? base_family + ((leaf1->eax >> 20) & 0xff) : base_family;
  caps.model = base_model;
  if (base_family == 0xf || (base_family == 6 && vendor == api::CpuVendor::Intel))
    caps.model += ((leaf1->eax >> 16) & 0xf) << 4;
  caps.stepping = leaf1->eax & 0xf;
}

std::string read_file(const std::filesystem::path& file) {
  return read_bounded_text(file, kMaxProcTextBytes, "CPU information");
}

// Why the KVM driver cannot give this CPU hardware-assisted execution; empty
// when it can.  Every cause found is listed, most specific first.
std::string kvm_unusable_reasons(const kvm::KvmFacts& kvm, const api::HostCapabilities& caps) {
  const std::string device = kvm.device.string();
  const std::string expected_module = caps.vendor == api::CpuVendor::Intel ? "kvm_intel"
                                      : caps.vendor == api::CpuVendor::Amd ? "kvm_amd"
                                                                           : "kvm_intel or kvm_amd";
  std::vector<std::string> reasons;
  // Three different hosts: no node at all, a node backed by kvm_pvm, a node
  // of a vendor module.  kvm_pvm without a node provides nothing.
  constexpr std::string_view kPvmLimits = "runs only PVM-aware guest kernels and offers no VT-x/AMD-V to guests";
  if (kvm.vendor_module == "kvm_pvm" && kvm.device_present) {
    reasons.push_back(fmt::format("{} is provided by kvm_pvm (PVM), which {}", device, kPvmLimits));
  } else if (kvm.vendor_module == "kvm_pvm") {
    reasons.push_back(fmt::format("no {}: the kvm_pvm module is loaded but there is no device node (and PVM {})",
                                  device, kPvmLimits));
  } else if (!kvm.device_present) {
    if (kvm.vendor_module.empty())
      reasons.push_back(fmt::format("no {}: the {} module is not loaded", device, expected_module));
    else
      reasons.push_back(fmt::format("no {} although {} is loaded (the device node is missing, e.g. not "
                                    "passed into this container)",
                                    device, kvm.vendor_module));
  } else if (kvm.vendor_module.empty()) {
    reasons.push_back(fmt::format("{} exists but no vendor module ({}) is loaded", device, expected_module));
  }
  if (kvm.device_present && !kvm.opens) {
    reasons.push_back(fmt::format("cannot open {}: {}", device, kvm.open_error));
  } else if (kvm.opens && kvm.api_version != 12) {
    reasons.push_back(fmt::format("{} reports KVM API version {}, expected 12", device, kvm.api_version));
  }
  if (!caps.hardware_virtualization) reasons.push_back("the CPU has no VT-x/AMD-V");

  std::string joined;
  for (const auto& reason : reasons) joined += (joined.empty() ? "" : "; ") + reason;
  return joined;
}

}  // namespace

CpuinfoFacts parse_cpuinfo(std::string_view text) {
  CpuinfoFacts facts;
  bool in_block = false;
  while (!text.empty()) {
    const auto newline = text.find('\n');
    const std::string_view line = text.substr(0, newline);
    text = newline == std::string_view::npos ? std::string_view{} : text.substr(newline + 1);

    if (trim(line).empty()) {
      if (in_block) break;  // end of the first processor block
      continue;
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    in_block = true;
    const std::string_view key = trim(line.substr(0, colon));
    const std::string_view value = trim(line.substr(colon + 1));
    if (key == "vendor_id") facts.vendor_id = value;
    else if (key == "model name") facts.model_name = value;
    else if (key == "cpu family") facts.family = parse_decimal(value);
    else if (key == "model") facts.model = parse_decimal(value);
    else if (key == "stepping") facts.stepping = parse_decimal(value);
    else if (key == "flags") facts.flags = split_words(value);
    else if (key == "vmx flags") facts.vmx_flags = split_words(value);
  }
  return facts;
}

CpuidTable CpuidTable::from_this_cpu() {
  CpuidTable table;
#if defined(__x86_64__) || defined(__i386__)
  const unsigned max_basic = __get_cpuid_max(0, nullptr);
  const unsigned max_extended = __get_cpuid_max(0x80000000, nullptr);
  auto add = [&](std::uint32_t leaf, std::uint32_t subleaf) {
    const unsigned max = leaf >= 0x80000000 ? max_extended : max_basic;
    if (leaf > max) return;  // reading beyond the maximum returns another leaf's data
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    __cpuid_count(leaf, subleaf, eax, ebx, ecx, edx);
    table.leaves.push_back({leaf, subleaf, eax, ebx, ecx, edx});
  };
  for (std::uint32_t leaf : {0u, 1u}) add(leaf, 0);
  add(7, 0);
  // 0x80000002-4 hold the brand string, used when cpuinfo gives no model name.
  for (std::uint32_t leaf :
       {0x80000000u, 0x80000001u, 0x80000002u, 0x80000003u, 0x80000004u, 0x80000008u, 0x8000000au})
    add(leaf, 0);
#endif
  return table;
}

CpuidTable CpuidTable::parse(std::string_view text, const std::filesystem::path& origin) {
  CpuidTable table;
  int line_number = 0;
  while (!text.empty()) {
    const auto newline = text.find('\n');
    std::string_view line = text.substr(0, newline);
    text = newline == std::string_view::npos ? std::string_view{} : text.substr(newline + 1);
    ++line_number;
    const std::string_view full_line = line;
    if (const auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    if (trim(line).empty()) continue;

    // Tokens with their 1-based columns, so errors point at the bad field.
    std::vector<std::pair<std::string_view, int>> tokens;
    bool colon_seen = false;
    std::size_t tokens_before_colon = 0;
    for (std::size_t pos = 0; pos < line.size();) {
      if (line[pos] == ' ' || line[pos] == '\t' || line[pos] == '\r') { ++pos; continue; }
      if (line[pos] == ':') {
        if (colon_seen) throw InputError(origin, line_number, static_cast<int>(pos) + 1, "a second ':'");
        colon_seen = true;
        tokens_before_colon = tokens.size();
        ++pos;
        continue;
      }
      const auto end = line.find_first_of(" \t\r:", pos);
      const auto length = (end == std::string_view::npos ? line.size() : end) - pos;
      tokens.emplace_back(line.substr(pos, length), static_cast<int>(pos) + 1);
      pos += length;
    }
    const std::string expected = "expected 'LEAF SUBLEAF: EAX EBX ECX EDX' (hex)";
    if (!colon_seen || tokens_before_colon != 2 || tokens.size() != 6)
      throw InputError(origin, line_number, 1, fmt::format("{}, found '{}'", expected, trim(full_line)));
    std::uint32_t values[6];
    for (std::size_t i = 0; i < 6; ++i) {
      const auto value = parse_hex32(tokens[i].first);
      if (!value)
        throw InputError(origin, line_number, tokens[i].second,
                         fmt::format("'{}' is not a 32-bit hex number; {}", tokens[i].first, expected));
      values[i] = *value;
    }
    if (table.find(values[0], values[1]))
      throw InputError(origin, line_number, tokens[0].second,
                       fmt::format("leaf {:x} subleaf {:x} appears twice", values[0], values[1]));
    table.leaves.push_back({values[0], values[1], values[2], values[3], values[4], values[5]});
  }
  return table;
}

std::optional<CpuidLeaf> CpuidTable::find(std::uint32_t leaf, std::uint32_t subleaf) const {
  for (const auto& entry : leaves)
    if (entry.leaf == leaf && entry.subleaf == subleaf) return entry;
  return std::nullopt;
}

std::string CpuidTable::to_text() const {
  std::string out = "# LEAF SUBLEAF: EAX EBX ECX EDX\n";
  for (const auto& l : leaves)
    out += fmt::format("{:08x} {:x}: {:08x} {:08x} {:08x} {:08x}\n", l.leaf, l.subleaf, l.eax, l.ebx, l.ecx, l.edx);
  return out;
}

const std::vector<std::string>& known_quirks() {
  static const std::vector<std::string> quirks{std::string(kQuirkAmdVRevFErratum)};
  return quirks;
}

api::HostCapabilities capabilities_from(const CpuinfoFacts& cpuinfo, const CpuidTable& cpuid,
                                        const kvm::KvmFacts& kvm) {
  api::HostCapabilities caps;
  caps.vendor_id = !cpuinfo.vendor_id.empty() ? cpuinfo.vendor_id : vendor_from_cpuid(cpuid);
  caps.vendor = caps.vendor_id == "GenuineIntel"   ? api::CpuVendor::Intel
                : caps.vendor_id == "AuthenticAMD" ? api::CpuVendor::Amd
                                                   : api::CpuVendor::Other;
  const bool intel = caps.vendor == api::CpuVendor::Intel;
  const bool amd = caps.vendor == api::CpuVendor::Amd;
  caps.model_name = !cpuinfo.model_name.empty() ? cpuinfo.model_name : brand_from_cpuid(cpuid);
  if (cpuinfo.family != 0) {
    caps.family = cpuinfo.family;
    caps.model = cpuinfo.model;
    caps.stepping = cpuinfo.stepping;
  } else {
    signature_from_cpuid(cpuid, caps.vendor, caps);
  }
  caps.source = fmt::format("probed: this host ({})", caps.model_name.empty() ? "unknown CPU" : caps.model_name);

  auto flag = [&](const char* name) { return cpuinfo.flags.count(name) > 0; };
  auto vmx_feature = [&](const char* name) { return cpuinfo.vmx_flags.count(name) > 0 || flag(name); };

  caps.long_mode = flag("lm") || cpuid_bit(cpuid, 0x80000001, Reg::Edx, kExt1EdxLongMode);

  // The vendor decides which CPUID bit to trust: the other vendor's position is reserved.
  const bool vmx = flag("vmx") || (!amd && cpuid_bit(cpuid, 1, Reg::Ecx, kLeaf1EcxVmx));
  const bool svm = flag("svm") || (!intel && cpuid_bit(cpuid, 0x80000001, Reg::Ecx, kExt1EcxSvm));
  caps.hardware_virtualization = vmx || svm;

  // EPT/RVI and TPR shadow/AVIC are parts of VT-x/AMD-V: without it they are
  // unusable, and CPUID leaf 0x8000000A is not even defined.
  if (vmx) {
    caps.nested_paging = vmx_feature("ept");
    // Linux names the TPR shadow "tpr_shadow" in flags and "vtpr" in vmx flags.
    caps.apic_virtualization = vmx_feature("flexpriority") || vmx_feature("tpr_shadow") ||
                               cpuinfo.vmx_flags.count("vtpr") > 0;
  }
  if (svm) {
    caps.nested_paging = caps.nested_paging || flag("npt") ||
                         cpuid_bit(cpuid, 0x8000000a, Reg::Edx, kSvmEdxNestedPaging);
    caps.apic_virtualization = caps.apic_virtualization || flag("avic") ||
                               cpuid_bit(cpuid, 0x8000000a, Reg::Edx, kSvmEdxAvic);
  }

  // Segment limits in 64-bit code (EFER.LMSLE): AMD from Opteron Rev D (K8
  // model 0x10) until Zen 3 dropped them; Intel never had them.
  const bool k8_rev_c_or_earlier = caps.family == 0xf && caps.model < 0x10;
  const bool lmsle_unsupported = cpuid_bit(cpuid, 0x80000008, Reg::Ebx, kExt8EbxEferLmsleUnsupported);
  caps.long_mode_segment_limits =
      amd && caps.long_mode && !k8_rev_c_or_earlier && !lmsle_unsupported && caps.family < 0x19;

  // The first AMD-V (Opteron Rev F, family 0xf) has an issue VMware chose not to work around.
  if (amd && svm && caps.family == 0xf) caps.quirks.emplace_back(kQuirkAmdVRevFErratum);

  api::DriverState& driver = caps.driver;
  driver.present = kvm.device_present;
  driver.name = kvm.vendor_module.empty() ? "none" : kvm.vendor_module;
  driver.mmu_selection = api::MmuSelection::HostWide;
  driver.api_version = kvm.api_version;
  // KVM switches ept/npt off itself on CPUs without them; trust the CPU too.
  driver.nested_paging_enabled = kvm.nested_paging_enabled.value_or(false) && caps.nested_paging;
  driver.detail = kvm_unusable_reasons(kvm, caps);
  const bool vendor_module = kvm.vendor_module == "kvm_intel" || kvm.vendor_module == "kvm_amd";
  driver.usable = kvm.device_present && kvm.opens && kvm.api_version == 12 && vendor_module &&
                  caps.hardware_virtualization;
  return caps;
}

api::HostCapabilities probe_host(const ProbeSources& sources) {
  const CpuinfoFacts cpuinfo = parse_cpuinfo(read_file(sources.cpuinfo));
  const CpuidTable cpuid = sources.cpuid ? *sources.cpuid : CpuidTable::from_this_cpu();
  const kvm::KvmFacts kvm = kvm::probe_kvm(sources.kvm_device, sources.sys_module);
  return capabilities_from(cpuinfo, cpuid, kvm);
}

}  // namespace modevisor::host
