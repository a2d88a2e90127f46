// The host capability probe, CPU profiles and capability masks.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include "capabilities/cpu_profile.hpp"
#include "capabilities/probe.hpp"
#include "common/errors.hpp"
#include "kernel-driver/kvm_probe.hpp"

namespace modevisor::host {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

namespace fs = std::filesystem;

const fs::path kFixtures = MODEVISOR_FIXTURE_DIR;
const fs::path kConfigDir = fs::path(MODEVISOR_SOURCE_DIR) / "configs";
const fs::path kNoDevice = kFixtures / "no-such-dev-kvm";

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot read fixture " + file.string());
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

CpuinfoFacts cpuinfo_fixture(const std::string& name) { return parse_cpuinfo(read_text(kFixtures / "cpuinfo" / name)); }

CpuidTable cpuid_fixture(const std::string& name) {
  const fs::path file = kFixtures / "cpuid" / name;
  return CpuidTable::parse(read_text(file), file);
}

kvm::KvmFacts kvm_fixture(const std::string& tree, const fs::path& device = kNoDevice) {
  return kvm::probe_kvm(device, kFixtures / "sysmodule" / tree);
}

// A KVM host whose /dev/kvm opens and answers like a real one.  probe_kvm can
// only produce this on a machine with working KVM, so tests build it by hand.
kvm::KvmFacts working_kvm(const std::string& module, bool nested_paging_param) {
  kvm::KvmFacts facts;
  facts.device_present = true;
  facts.opens = true;
  facts.api_version = 12;
  facts.vendor_module = module;
  facts.nested_paging_enabled = nested_paging_param;
  return facts;
}

bool has(const std::set<std::string>& words, const std::string& word) { return words.count(word) > 0; }

// ---------------------------------------------------------------- cpuinfo

TEST(ParseCpuinfo, NehalemOldKernelListsVmxFeaturesInFlags) {
  const auto facts = cpuinfo_fixture("intel-xeon-x5570-nehalem-2.6.32.txt");
  EXPECT_EQ(facts.vendor_id, "GenuineIntel");
  EXPECT_EQ(facts.model_name, "Intel(R) Xeon(R) CPU           X5570  @ 2.93GHz");
  EXPECT_EQ(facts.family, 6u);
  EXPECT_EQ(facts.model, 26u);
  EXPECT_EQ(facts.stepping, 5u);
  for (const char* flag : {"lm", "vmx", "ept", "flexpriority", "tpr_shadow", "vpid"}) EXPECT_TRUE(has(facts.flags, flag)) << flag;
  EXPECT_FALSE(has(facts.flags, "svm"));
  EXPECT_THAT(facts.vmx_flags, IsEmpty());
}

TEST(ParseCpuinfo, ReadsOnlyTheFirstProcessorBlock) {
  const auto facts = parse_cpuinfo(
      "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 26\nflags\t\t: fpu vmx\n\n"
      "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 16\nmodel\t\t: 4\nflags\t\t: fpu svm\n");
  EXPECT_EQ(facts.vendor_id, "GenuineIntel");
  EXPECT_EQ(facts.family, 6u);
  EXPECT_EQ(facts.model, 26u);
  EXPECT_TRUE(has(facts.flags, "vmx"));
  EXPECT_FALSE(has(facts.flags, "svm"));
}

TEST(ParseCpuinfo, SapphireRapidsHasSeparateVmxFlagsLine) {
  const auto facts = cpuinfo_fixture("intel-xeon-8480-sapphire-rapids-6.8.txt");
  EXPECT_EQ(facts.vendor_id, "GenuineIntel");
  EXPECT_EQ(facts.model_name, "Intel(R) Xeon(R) Platinum 8480+");
  EXPECT_EQ(facts.family, 6u);
  EXPECT_EQ(facts.model, 0x8fu);
  EXPECT_EQ(facts.stepping, 8u);
  EXPECT_TRUE(has(facts.flags, "vmx"));
  for (const char* flag : {"ept", "vtpr", "flexpriority", "apicv", "unrestricted_guest", "ipi_virt"})
    EXPECT_TRUE(has(facts.vmx_flags, flag)) << flag;
  EXPECT_FALSE(has(facts.vmx_flags, "avx512f")) << "the flags line must not leak into vmx flags";
}

TEST(ParseCpuinfo, OpteronShanghaiHasSvmAndNptButNoAvic) {
  const auto facts = cpuinfo_fixture("amd-opteron-2384-shanghai-2.6.32.txt");
  EXPECT_EQ(facts.vendor_id, "AuthenticAMD");
  EXPECT_EQ(facts.model_name, "Quad-Core AMD Opteron(tm) Processor 2384");
  EXPECT_EQ(facts.family, 16u);
  EXPECT_EQ(facts.model, 4u);
  EXPECT_EQ(facts.stepping, 2u);
  EXPECT_TRUE(has(facts.flags, "svm"));
  EXPECT_TRUE(has(facts.flags, "npt"));
  EXPECT_FALSE(has(facts.flags, "avic"));
}

TEST(ParseCpuinfo, EpycGenoaHasSvmNptAvic) {
  const auto facts = cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt");
  EXPECT_EQ(facts.model_name, "AMD EPYC 9654 96-Core Processor");
  EXPECT_EQ(facts.family, 25u);
  EXPECT_EQ(facts.model, 17u);
  EXPECT_EQ(facts.stepping, 1u);
  for (const char* flag : {"lm", "svm", "npt", "avic", "x2avic"}) EXPECT_TRUE(has(facts.flags, flag)) << flag;
}

TEST(ParseCpuinfo, SandboxEpycHasNoSvm) {
  const auto facts = cpuinfo_fixture("sandbox-amd-epyc-pvm.txt");
  EXPECT_EQ(facts.vendor_id, "AuthenticAMD");
  EXPECT_EQ(facts.model_name, "AMD EPYC");
  EXPECT_EQ(facts.family, 25u);
  EXPECT_EQ(facts.model, 17u);
  EXPECT_EQ(facts.stepping, 1u);
  EXPECT_TRUE(has(facts.flags, "lm"));
  EXPECT_TRUE(has(facts.flags, "hypervisor"));
  EXPECT_FALSE(has(facts.flags, "svm"));
  EXPECT_FALSE(has(facts.flags, "npt"));
}

TEST(ParseCpuinfo, CloudGuestIntelHasNoVmx) {
  const auto facts = cpuinfo_fixture("intel-xeon-8259cl-cloud-guest-no-vmx.txt");
  EXPECT_EQ(facts.vendor_id, "GenuineIntel");
  EXPECT_EQ(facts.family, 6u);
  EXPECT_EQ(facts.model, 85u);
  EXPECT_EQ(facts.stepping, 7u);
  EXPECT_TRUE(has(facts.flags, "hypervisor"));
  EXPECT_FALSE(has(facts.flags, "vmx"));
  EXPECT_FALSE(has(facts.flags, "ept"));
}

TEST(ParseCpuinfo, EmptyTextGivesNoFacts) {
  const auto facts = parse_cpuinfo("");
  EXPECT_EQ(facts.vendor_id, "");
  EXPECT_EQ(facts.family, 0u);
  EXPECT_THAT(facts.flags, IsEmpty());
}

// ---------------------------------------------------------------- CPUID table

TEST(CpuidTable, ParsesFixtureWithCommentsAndHex) {
  const auto table = cpuid_fixture("amd-k8-revf-opteron-2218.txt");
  ASSERT_EQ(table.leaves.size(), 6u);
  const auto svm = table.find(0x8000000a);
  ASSERT_TRUE(svm);
  EXPECT_EQ(svm->eax, 1u);
  EXPECT_EQ(svm->ebx, 0x40u);
  EXPECT_EQ(svm->edx, 0u);
  EXPECT_EQ(table.find(1)->eax, 0x00040f12u);
  EXPECT_FALSE(table.find(7));
  EXPECT_FALSE(table.find(1, 1));
}

TEST(CpuidTable, TextRoundTrips) {
  const auto table = cpuid_fixture("amd-epyc-7763-milan-lmsle-unsupported.txt");
  const auto again = CpuidTable::parse(table.to_text(), "round-trip");
  ASSERT_EQ(again.leaves.size(), table.leaves.size());
  for (std::size_t i = 0; i < table.leaves.size(); ++i) {
    EXPECT_EQ(again.leaves[i].leaf, table.leaves[i].leaf);
    EXPECT_EQ(again.leaves[i].ebx, table.leaves[i].ebx);
    EXPECT_EQ(again.leaves[i].edx, table.leaves[i].edx);
  }
}

TEST(CpuidTable, BadHexNamesLineAndColumn) {
  try {
    CpuidTable::parse("# header\n00000001 0: 00a10f11 0102zz00 fffa3203 178bfbff\n", "t.txt");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(e.line(), 2);
    EXPECT_EQ(e.column(), 22);
    EXPECT_THAT(e.what(), StartsWith("t.txt:2:22: "));
    EXPECT_THAT(e.message(), HasSubstr("'0102zz00'"));
  }
}

TEST(CpuidTable, MissingColonOrFieldsIsAnError) {
  try {
    CpuidTable::parse("\n\n00000001 0 00a10f11 01020800 fffa3203 178bfbff\n", "t.txt");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(e.line(), 3);
    EXPECT_THAT(e.message(), HasSubstr("LEAF SUBLEAF: EAX EBX ECX EDX"));
  }
  try {
    CpuidTable::parse("00000001 0: 00a10f11 01020800 fffa3203\n", "t.txt");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(e.line(), 1);
  }
}

TEST(CpuidTable, DuplicateLeafIsAnError) {
  try {
    CpuidTable::parse("1 0: 0 0 0 0\n  1 0: 0 0 0 0\n", "t.txt");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(e.line(), 2);
    EXPECT_EQ(e.column(), 3);
    EXPECT_THAT(e.message(), HasSubstr("twice"));
  }
}

TEST(CpuidTable, ValueWiderThan32BitsIsAnError) {
  EXPECT_THROW(CpuidTable::parse("1 0: 100000000 0 0 0\n", "t.txt"), InputError);
}

TEST(CpuidTable, ThisCpuAgreesWithProcCpuinfo) {
  const auto table = CpuidTable::from_this_cpu();
  ASSERT_TRUE(table.find(0));
  ASSERT_TRUE(table.find(1));
  const auto cpuinfo = parse_cpuinfo(read_text("/proc/cpuinfo"));
  const auto caps = capabilities_from(CpuinfoFacts{}, table, kvm::KvmFacts{});
  EXPECT_EQ(caps.vendor_id, cpuinfo.vendor_id);
  EXPECT_EQ(caps.family, cpuinfo.family);
  EXPECT_EQ(caps.model, cpuinfo.model);
  EXPECT_EQ(caps.stepping, cpuinfo.stepping);
}

// ---------------------------------------------------------------- capabilities_from

TEST(CapabilitiesFrom, NehalemWithKvmEptOn) {
  const auto caps = capabilities_from(cpuinfo_fixture("intel-xeon-x5570-nehalem-2.6.32.txt"), CpuidTable{},
                                      working_kvm("kvm_intel", true));
  EXPECT_EQ(caps.source, "probed: this host (Intel(R) Xeon(R) CPU           X5570  @ 2.93GHz)");
  EXPECT_EQ(caps.vendor, api::CpuVendor::Intel);
  EXPECT_EQ(caps.vendor_id, "GenuineIntel");
  EXPECT_EQ(caps.family, 6u);
  EXPECT_EQ(caps.model, 0x1au);
  EXPECT_EQ(caps.stepping, 5u);
  EXPECT_TRUE(caps.long_mode);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.apic_virtualization);
  EXPECT_FALSE(caps.long_mode_segment_limits);
  EXPECT_THAT(caps.quirks, IsEmpty());
  EXPECT_THAT(caps.masked, IsEmpty());
  EXPECT_TRUE(caps.driver.present);
  EXPECT_TRUE(caps.driver.usable);
  EXPECT_EQ(caps.driver.name, "kvm_intel");
  EXPECT_EQ(caps.driver.detail, "");
  EXPECT_EQ(caps.driver.mmu_selection, api::MmuSelection::HostWide);
  EXPECT_TRUE(caps.driver.nested_paging_enabled);
  EXPECT_EQ(caps.driver.api_version, 12);
  EXPECT_TRUE(api::can_use_nested_paging(caps));
  EXPECT_FALSE(api::can_use_driver_shadow_paging(caps)) << "ept=Y fixes nested paging for the whole host";
}

TEST(CapabilitiesFrom, NehalemWithKvmEptOffOffersOnlyShadowPaging) {
  const auto caps = capabilities_from(cpuinfo_fixture("intel-xeon-x5570-nehalem-2.6.32.txt"), CpuidTable{},
                                      working_kvm("kvm_intel", false));
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.driver.usable);
  EXPECT_FALSE(caps.driver.nested_paging_enabled);
  EXPECT_FALSE(api::can_use_nested_paging(caps));
  EXPECT_TRUE(api::can_use_driver_shadow_paging(caps));
}

TEST(CapabilitiesFrom, SapphireRapidsFromFixture) {
  const auto caps = capabilities_from(cpuinfo_fixture("intel-xeon-8480-sapphire-rapids-6.8.txt"), CpuidTable{},
                                      kvm_fixture("kvm-intel-ept-y"));
  EXPECT_EQ(caps.vendor, api::CpuVendor::Intel);
  EXPECT_EQ(caps.model, 0x8fu);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.apic_virtualization);
  EXPECT_FALSE(caps.long_mode_segment_limits);
  // The fixture tree has the module but the device path does not exist.
  EXPECT_FALSE(caps.driver.present);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.name, "kvm_intel");
  EXPECT_TRUE(caps.driver.nested_paging_enabled);
  EXPECT_THAT(caps.driver.detail, HasSubstr("no " + kNoDevice.string() + " although kvm_intel is loaded"));
  EXPECT_THAT(caps.driver.detail, Not(HasSubstr("the CPU has no VT-x/AMD-V")));
}

TEST(CapabilitiesFrom, EptAndTprShadowOnlyInVmxFlagsLine) {
  CpuinfoFacts facts;
  facts.vendor_id = "GenuineIntel";
  facts.family = 6;
  facts.model = 0x8f;
  facts.flags = {"lm", "vmx"};
  facts.vmx_flags = {"ept", "vtpr"};
  auto caps = capabilities_from(facts, CpuidTable{}, working_kvm("kvm_intel", true));
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.apic_virtualization) << "vtpr is the TPR shadow's name in vmx flags";

  facts.vmx_flags = {"flexpriority"};
  caps = capabilities_from(facts, CpuidTable{}, working_kvm("kvm_intel", true));
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_TRUE(caps.apic_virtualization);
  EXPECT_FALSE(caps.driver.nested_paging_enabled) << "ept=Y cannot mean anything without EPT";

  facts.vmx_flags = {};
  caps = capabilities_from(facts, CpuidTable{}, working_kvm("kvm_intel", true));
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_FALSE(caps.apic_virtualization);
}

TEST(CapabilitiesFrom, ShanghaiHasSegmentLimitsAndNptNoAvic) {
  const auto caps = capabilities_from(cpuinfo_fixture("amd-opteron-2384-shanghai-2.6.32.txt"), CpuidTable{},
                                      working_kvm("kvm_amd", true));
  EXPECT_EQ(caps.vendor, api::CpuVendor::Amd);
  EXPECT_EQ(caps.family, 0x10u);
  EXPECT_EQ(caps.model, 4u);
  EXPECT_TRUE(caps.long_mode);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_FALSE(caps.apic_virtualization);
  EXPECT_TRUE(caps.long_mode_segment_limits);
  EXPECT_THAT(caps.quirks, IsEmpty());
  EXPECT_TRUE(caps.driver.usable);
  EXPECT_EQ(caps.driver.name, "kvm_amd");
  EXPECT_TRUE(caps.driver.nested_paging_enabled);
}

TEST(CapabilitiesFrom, GenoaWithKvmNpt0) {
  const auto caps = capabilities_from(cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt"), CpuidTable{},
                                      kvm_fixture("kvm-amd-npt0"));
  EXPECT_EQ(caps.vendor, api::CpuVendor::Amd);
  EXPECT_EQ(caps.family, 0x19u);
  EXPECT_EQ(caps.model, 0x11u);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.apic_virtualization);
  EXPECT_FALSE(caps.long_mode_segment_limits) << "Zen 3 and later have no EFER.LMSLE";
  EXPECT_FALSE(caps.driver.nested_paging_enabled);
  EXPECT_EQ(caps.driver.name, "kvm_amd");
}

TEST(CapabilitiesFrom, SandboxPvmHost) {
  // /dev/null exists and opens but answers no KVM ioctl: the probe's real code path.
  const auto caps = capabilities_from(cpuinfo_fixture("sandbox-amd-epyc-pvm.txt"),
                                      cpuid_fixture("sandbox-amd-epyc-pvm.txt"), kvm_fixture("kvm-pvm", "/dev/null"));
  EXPECT_EQ(caps.source, "probed: this host (AMD EPYC)");
  EXPECT_EQ(caps.vendor, api::CpuVendor::Amd);
  EXPECT_EQ(caps.family, 0x19u);
  EXPECT_TRUE(caps.long_mode);
  EXPECT_FALSE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_FALSE(caps.apic_virtualization);
  EXPECT_FALSE(caps.long_mode_segment_limits) << "family 0x19 even though the hypervisor hides the LMSLE bit";
  EXPECT_THAT(caps.quirks, IsEmpty());
  EXPECT_TRUE(caps.driver.present);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.name, "kvm_pvm");
  EXPECT_FALSE(caps.driver.nested_paging_enabled);
  EXPECT_THAT(caps.driver.detail,
              HasSubstr("/dev/null is provided by kvm_pvm (PVM), which runs only PVM-aware guest kernels and "
                        "offers no VT-x/AMD-V to guests"));
  EXPECT_THAT(caps.driver.detail, HasSubstr("KVM API version -1, expected 12"));
  EXPECT_THAT(caps.driver.detail, HasSubstr("the CPU has no VT-x/AMD-V"));
  EXPECT_FALSE(api::can_use_hardware_execution(caps));
}

TEST(CapabilitiesFrom, PvmEvenWithWorkingDeviceIsNotUsable) {
  auto kvm = working_kvm("kvm_pvm", false);
  kvm.nested_paging_enabled.reset();
  const auto caps = capabilities_from(cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt"), CpuidTable{}, kvm);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.detail,
            "/dev/kvm is provided by kvm_pvm (PVM), which runs only PVM-aware guest kernels and offers no VT-x/AMD-V "
            "to guests");
}

// What the probe finds decides what it says: a loaded kvm_pvm without a
// device node (a paravirtualized host whose /dev/kvm is not passed in)
// provides nothing, a node with kvm_pvm is PVM's, a node with kvm_amd/kvm_intel
// is the vendor module's.  The node is the fixture's device path: absent, or
// /dev/null (it opens but answers no KVM ioctl).
TEST(CapabilitiesFrom, PvmLoadedWithoutDeviceNodeSaysThereIsNoNode) {
  const auto kvm = kvm_fixture("kvm-pvm");
  EXPECT_EQ(kvm.vendor_module, "kvm_pvm");
  EXPECT_FALSE(kvm.device_present);
  const auto caps = capabilities_from(cpuinfo_fixture("sandbox-amd-epyc-pvm.txt"),
                                      cpuid_fixture("sandbox-amd-epyc-pvm.txt"), kvm);
  EXPECT_FALSE(caps.driver.present);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.name, "kvm_pvm");
  EXPECT_EQ(caps.driver.detail,
            "no " + kNoDevice.string() +
                ": the kvm_pvm module is loaded but there is no device node (and PVM runs only PVM-aware guest "
                "kernels and offers no VT-x/AMD-V to guests); the CPU has no VT-x/AMD-V");
  EXPECT_THAT(caps.driver.detail, Not(HasSubstr("provided by")));
  EXPECT_THAT(caps.driver.detail, Not(HasSubstr("cannot open"))) << "nothing to open";
}

TEST(CapabilitiesFrom, PvmBesideKvmAmdWithoutDeviceNodeSaysThereIsNoNode) {
  const auto caps = capabilities_from(cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt"), CpuidTable{},
                                      kvm_fixture("kvm-pvm-beside-kvm-amd"));
  EXPECT_FALSE(caps.driver.present);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_THAT(caps.driver.detail, StartsWith("no " + kNoDevice.string() + ": the kvm_pvm module is loaded"));
  EXPECT_THAT(caps.driver.detail, Not(HasSubstr("provided by")));
}

TEST(CapabilitiesFrom, DeviceNodeOfKvmAmdIsTheVendorModules) {
  const auto kvm = kvm_fixture("kvm-amd-npt1", "/dev/null");
  EXPECT_TRUE(kvm.device_present);
  EXPECT_TRUE(kvm.opens);
  const auto caps = capabilities_from(cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt"), CpuidTable{}, kvm);
  EXPECT_TRUE(caps.driver.present);
  EXPECT_EQ(caps.driver.name, "kvm_amd");
  EXPECT_FALSE(caps.driver.usable) << "/dev/null answers no KVM ioctl";
  EXPECT_EQ(caps.driver.detail, "/dev/null reports KVM API version -1, expected 12");
}

TEST(CapabilitiesFrom, DeviceNodeOfKvmIntelIsTheVendorModules) {
  const auto caps = capabilities_from(cpuinfo_fixture("intel-xeon-8480-sapphire-rapids-6.8.txt"), CpuidTable{},
                                      kvm_fixture("kvm-intel-ept-y", "/dev/null"));
  EXPECT_TRUE(caps.driver.present);
  EXPECT_EQ(caps.driver.name, "kvm_intel");
  EXPECT_TRUE(caps.driver.nested_paging_enabled);
  EXPECT_EQ(caps.driver.detail, "/dev/null reports KVM API version -1, expected 12");
}

TEST(CapabilitiesFrom, VendorModuleWithoutDeviceNodeSaysTheNodeIsMissing) {
  const auto caps = capabilities_from(cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt"), CpuidTable{},
                                      kvm_fixture("kvm-amd-npt1"));
  EXPECT_FALSE(caps.driver.present);
  EXPECT_EQ(caps.driver.name, "kvm_amd");
  EXPECT_EQ(caps.driver.detail, "no " + kNoDevice.string() +
                                    " although kvm_amd is loaded (the device node is missing, e.g. not passed into "
                                    "this container)");
}

TEST(CapabilitiesFrom, NoKvmModuleAndNoDeviceNode) {
  const auto caps = capabilities_from(cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt"), CpuidTable{},
                                      kvm_fixture("no-kvm"));
  EXPECT_FALSE(caps.driver.present);
  EXPECT_EQ(caps.driver.name, "none");
  EXPECT_EQ(caps.driver.detail, "no " + kNoDevice.string() + ": the kvm_amd module is not loaded");
}

TEST(CapabilitiesFrom, IntelWithoutVmxAndNoKvm) {
  const auto caps = capabilities_from(cpuinfo_fixture("intel-xeon-8259cl-cloud-guest-no-vmx.txt"), CpuidTable{},
                                      kvm_fixture("no-kvm"));
  EXPECT_EQ(caps.vendor, api::CpuVendor::Intel);
  EXPECT_TRUE(caps.long_mode);
  EXPECT_FALSE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_FALSE(caps.apic_virtualization);
  EXPECT_FALSE(caps.long_mode_segment_limits);
  EXPECT_FALSE(caps.driver.present);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.name, "none");
  EXPECT_EQ(caps.driver.detail,
            "no " + kNoDevice.string() + ": the kvm_intel module is not loaded; the CPU has no VT-x/AMD-V");
}

TEST(CapabilitiesFrom, AmdWithoutKvmModule) {
  const auto caps = capabilities_from(cpuinfo_fixture("amd-epyc-9654-genoa-6.8.txt"), CpuidTable{}, kvm::KvmFacts{});
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.detail, "no /dev/kvm: the kvm_amd module is not loaded");
}

TEST(CapabilitiesFrom, DeviceThatDoesNotOpen) {
  auto kvm = working_kvm("kvm_amd", true);
  kvm.opens = false;
  kvm.api_version = 0;
  kvm.open_error = "Permission denied";
  const auto caps = capabilities_from(cpuinfo_fixture("amd-opteron-2384-shanghai-2.6.32.txt"), CpuidTable{}, kvm);
  EXPECT_TRUE(caps.driver.present);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.detail, "cannot open /dev/kvm: Permission denied");
}

TEST(CapabilitiesFrom, UnexpectedApiVersion) {
  auto kvm = working_kvm("kvm_amd", true);
  kvm.api_version = 11;
  const auto caps = capabilities_from(cpuinfo_fixture("amd-opteron-2384-shanghai-2.6.32.txt"), CpuidTable{}, kvm);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.detail, "/dev/kvm reports KVM API version 11, expected 12");
}

TEST(CapabilitiesFrom, OpteronRevCFromCpuidOnly) {
  const auto caps = capabilities_from(CpuinfoFacts{}, cpuid_fixture("amd-k8-revc-opteron-248.txt"), kvm::KvmFacts{});
  EXPECT_EQ(caps.vendor_id, "AuthenticAMD");
  EXPECT_EQ(caps.vendor, api::CpuVendor::Amd);
  EXPECT_EQ(caps.family, 0xfu);
  EXPECT_EQ(caps.model, 0x5u);
  EXPECT_EQ(caps.stepping, 0xau);
  EXPECT_TRUE(caps.long_mode);
  EXPECT_FALSE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_FALSE(caps.long_mode_segment_limits) << "Rev C predates the 64-bit segment limits of Rev D";
  EXPECT_THAT(caps.quirks, IsEmpty());
  EXPECT_THAT(caps.driver.detail, HasSubstr("the CPU has no VT-x/AMD-V"));
}

TEST(CapabilitiesFrom, OpteronRevFFromCpuidOnly) {
  const auto caps = capabilities_from(CpuinfoFacts{}, cpuid_fixture("amd-k8-revf-opteron-2218.txt"),
                                      working_kvm("kvm_amd", true));
  EXPECT_EQ(caps.family, 0xfu);
  EXPECT_EQ(caps.model, 0x41u);
  EXPECT_EQ(caps.stepping, 2u);
  EXPECT_TRUE(caps.long_mode);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_FALSE(caps.apic_virtualization);
  EXPECT_TRUE(caps.long_mode_segment_limits);
  EXPECT_THAT(caps.quirks, ElementsAre("amd-v-revf-erratum"));
  EXPECT_TRUE(caps.driver.usable);
  EXPECT_FALSE(caps.driver.nested_paging_enabled) << "npt=1 on a CPU without NPT";
}

TEST(CapabilitiesFrom, RomeFromCpuidHasNptAvicAndSegmentLimits) {
  const auto caps = capabilities_from(CpuinfoFacts{}, cpuid_fixture("amd-epyc-7742-rome.txt"), kvm::KvmFacts{});
  EXPECT_EQ(caps.family, 0x17u);
  EXPECT_EQ(caps.model, 0x31u);
  EXPECT_EQ(caps.stepping, 0u);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.apic_virtualization);
  EXPECT_TRUE(caps.long_mode_segment_limits);
}

TEST(CapabilitiesFrom, EferLmsleUnsupportedBitAloneClearsSegmentLimits) {
  auto table = cpuid_fixture("amd-epyc-7742-rome.txt");
  for (auto& leaf : table.leaves)
    if (leaf.leaf == 0x80000008) leaf.ebx |= 1u << 20;
  const auto caps = capabilities_from(CpuinfoFacts{}, table, kvm::KvmFacts{});
  EXPECT_EQ(caps.family, 0x17u);
  EXPECT_FALSE(caps.long_mode_segment_limits);
}

TEST(CapabilitiesFrom, MilanFromCpuidHasNoSegmentLimits) {
  const auto caps =
      capabilities_from(CpuinfoFacts{}, cpuid_fixture("amd-epyc-7763-milan-lmsle-unsupported.txt"), kvm::KvmFacts{});
  EXPECT_EQ(caps.model_name, "AMD EPYC 7763 64-Core Processor");
  EXPECT_EQ(caps.source, "probed: this host (AMD EPYC 7763 64-Core Processor)");
  EXPECT_EQ(caps.family, 0x19u);
  EXPECT_EQ(caps.model, 0x01u);
  EXPECT_EQ(caps.stepping, 1u);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.apic_virtualization);
  EXPECT_FALSE(caps.long_mode_segment_limits);
}

TEST(CapabilitiesFrom, NehalemCpuidOnlyShowsVmxButNotEpt) {
  const auto caps = capabilities_from(CpuinfoFacts{}, cpuid_fixture("intel-xeon-x5570-nehalem.txt"), kvm::KvmFacts{});
  EXPECT_EQ(caps.vendor, api::CpuVendor::Intel);
  EXPECT_EQ(caps.family, 6u);
  EXPECT_EQ(caps.model, 0x1au) << "Intel family 6 folds in the extended model";
  EXPECT_EQ(caps.stepping, 5u);
  EXPECT_TRUE(caps.long_mode);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_FALSE(caps.long_mode_segment_limits);
  EXPECT_EQ(caps.driver.detail, "no /dev/kvm: the kvm_intel module is not loaded");
}

TEST(CapabilitiesFrom, OtherVendorsCpuidBitIsIgnored) {
  // Leaf 1 ECX[5] is VMX on Intel but reserved on AMD.
  CpuidTable table = cpuid_fixture("sandbox-amd-epyc-pvm.txt");
  for (auto& leaf : table.leaves)
    if (leaf.leaf == 1) leaf.ecx |= 1u << 5;
  const auto caps = capabilities_from(CpuinfoFacts{}, table, kvm::KvmFacts{});
  EXPECT_EQ(caps.vendor, api::CpuVendor::Amd);
  EXPECT_FALSE(caps.hardware_virtualization);
}

TEST(CapabilitiesFrom, CpuinfoFamilyWinsOverCpuid) {
  auto facts = cpuinfo_fixture("amd-opteron-2384-shanghai-2.6.32.txt");
  const auto caps = capabilities_from(facts, cpuid_fixture("amd-k8-revc-opteron-248.txt"), kvm::KvmFacts{});
  EXPECT_EQ(caps.family, 0x10u);
  EXPECT_EQ(caps.model_name, "Quad-Core AMD Opteron(tm) Processor 2384");
}

// ---------------------------------------------------------------- probe_kvm on fixture trees

TEST(ProbeKvm, FixtureTrees) {
  struct Case {
    const char* tree;
    const char* module;
    std::optional<bool> nested_paging;
  };
  const Case cases[] = {
      {"kvm-amd-npt1", "kvm_amd", true},   {"kvm-amd-npt0", "kvm_amd", false},
      {"kvm-intel-ept-y", "kvm_intel", true}, {"kvm-intel-ept-n", "kvm_intel", false},
      {"kvm-pvm", "kvm_pvm", std::nullopt}, {"kvm-pvm-beside-kvm-amd", "kvm_pvm", std::nullopt},
      {"no-kvm", "", std::nullopt},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.tree);
    const auto facts = kvm_fixture(c.tree);
    EXPECT_EQ(facts.device, kNoDevice);
    EXPECT_FALSE(facts.device_present);
    EXPECT_FALSE(facts.opens);
    EXPECT_EQ(facts.api_version, 0);
    EXPECT_EQ(facts.vendor_module, c.module);
    EXPECT_EQ(facts.nested_paging_enabled, c.nested_paging);
    EXPECT_THAT(facts.extensions, IsEmpty());
  }
}

TEST(ProbeKvm, DeviceThatIsNotKvm) {
  const auto facts = kvm_fixture("kvm-amd-npt1", "/dev/null");
  EXPECT_TRUE(facts.device_present);
  EXPECT_TRUE(facts.opens);
  EXPECT_NE(facts.api_version, 12);
}

// ---------------------------------------------------------------- probe_host on this machine

TEST(ProbeHost, MatchesItsSourcesOnThisMachine) {
  const auto caps = probe_host();
  const auto expected = capabilities_from(parse_cpuinfo(read_text("/proc/cpuinfo")), CpuidTable::from_this_cpu(),
                                          kvm::probe_kvm());
  EXPECT_THAT(caps.source, StartsWith("probed: this host ("));
  EXPECT_EQ(caps.source, expected.source);
  EXPECT_FALSE(caps.vendor_id.empty());
  EXPECT_EQ(caps.hardware_virtualization, expected.hardware_virtualization);
  EXPECT_EQ(caps.nested_paging, expected.nested_paging);
  EXPECT_EQ(caps.long_mode_segment_limits, expected.long_mode_segment_limits);
  EXPECT_EQ(caps.driver.usable, expected.driver.usable);
  EXPECT_EQ(caps.driver.detail, expected.driver.detail);
  if (!caps.driver.usable) {
    EXPECT_FALSE(caps.driver.detail.empty());
  }
}

TEST(ProbeHost, MissingCpuinfoIsAnInputError) {
  ProbeSources sources;
  sources.cpuinfo = kFixtures / "cpuinfo" / "does-not-exist.txt";
  sources.cpuid = CpuidTable{};
  sources.kvm_device = kNoDevice;
  sources.sys_module = kFixtures / "sysmodule" / "no-kvm";
  EXPECT_THROW(probe_host(sources), InputError);
}

TEST(ProbeHost, FixtureSources) {
  ProbeSources sources;
  sources.cpuinfo = kFixtures / "cpuinfo" / "amd-epyc-9654-genoa-6.8.txt";
  sources.cpuid = CpuidTable{};
  sources.kvm_device = kNoDevice;
  sources.sys_module = kFixtures / "sysmodule" / "kvm-amd-npt1";
  const auto caps = probe_host(sources);
  EXPECT_EQ(caps.model_name, "AMD EPYC 9654 96-Core Processor");
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_TRUE(caps.driver.nested_paging_enabled);
  EXPECT_FALSE(caps.driver.usable);
}

// ---------------------------------------------------------------- CPU profiles

struct ProfileExpectation {
  const char* name;
  api::CpuVendor vendor;
  unsigned family, model;
  bool hardware_virtualization, nested_paging, apic_virtualization, long_mode_segment_limits;
  bool revf_quirk;
};

const ProfileExpectation kShippedProfiles[] = {
    {"amd-barcelona", api::CpuVendor::Amd, 0x10, 0x2, true, true, false, true, false},
    {"amd-genoa", api::CpuVendor::Amd, 0x19, 0x11, true, true, true, false, false},
    {"amd-genoa-kvm-npt0", api::CpuVendor::Amd, 0x19, 0x11, true, true, true, false, false},
    {"amd-opteron-revc", api::CpuVendor::Amd, 0xf, 0x5, false, false, false, false, false},
    {"amd-opteron-revf", api::CpuVendor::Amd, 0xf, 0x41, true, false, false, true, true},
    {"amd-shanghai", api::CpuVendor::Amd, 0x10, 0x4, true, true, false, true, false},
    {"intel-core2-65nm", api::CpuVendor::Intel, 0x6, 0xf, true, false, false, false, false},
    {"intel-nehalem", api::CpuVendor::Intel, 0x6, 0x1a, true, true, true, false, false},
    {"intel-p4-prescott", api::CpuVendor::Intel, 0xf, 0x4, true, false, false, false, false},
    {"intel-penryn", api::CpuVendor::Intel, 0x6, 0x17, true, false, true, false, false},
    {"intel-sapphire-rapids", api::CpuVendor::Intel, 0x6, 0x8f, true, true, true, false, false},
};

TEST(CpuProfiles, ListIsSortedAndComplete) {
  std::vector<std::string> expected;
  for (const auto& p : kShippedProfiles) expected.push_back(p.name);
  EXPECT_EQ(list_cpu_profiles(kConfigDir), expected);
}

TEST(CpuProfiles, EveryShippedProfileLoadsWithItsCapabilities) {
  for (const auto& p : kShippedProfiles) {
    SCOPED_TRACE(p.name);
    const auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, p.name));
    EXPECT_EQ(caps.source, std::string("profile: ") + p.name);
    EXPECT_EQ(caps.vendor, p.vendor);
    EXPECT_EQ(caps.vendor_id, p.vendor == api::CpuVendor::Intel ? "GenuineIntel" : "AuthenticAMD");
    EXPECT_FALSE(caps.model_name.empty());
    EXPECT_EQ(caps.family, p.family);
    EXPECT_EQ(caps.model, p.model);
    EXPECT_TRUE(caps.long_mode);
    EXPECT_EQ(caps.hardware_virtualization, p.hardware_virtualization);
    EXPECT_EQ(caps.nested_paging, p.nested_paging);
    EXPECT_EQ(caps.apic_virtualization, p.apic_virtualization);
    EXPECT_EQ(caps.long_mode_segment_limits, p.long_mode_segment_limits);
    if (p.revf_quirk) EXPECT_THAT(caps.quirks, ElementsAre("amd-v-revf-erratum"));
    else EXPECT_THAT(caps.quirks, IsEmpty());
    EXPECT_THAT(caps.masked, IsEmpty());
    EXPECT_TRUE(caps.driver.present);
    EXPECT_EQ(caps.driver.usable, p.hardware_virtualization);
  }
}

// The profiles and the probe must tell the same story: feed each profile's
// CPU to capabilities_from as cpuinfo flags and compare the derived rules.
TEST(CpuProfiles, AgreeWithTheProbeRules) {
  for (const auto& p : kShippedProfiles) {
    SCOPED_TRACE(p.name);
    const auto profile = load_cpu_profile(find_cpu_profile(kConfigDir, p.name));
    CpuinfoFacts facts;
    facts.vendor_id = profile.vendor_id;
    facts.model_name = profile.model_name;
    facts.family = profile.family;
    facts.model = profile.model;
    facts.flags = {"lm"};
    const bool intel = profile.vendor == api::CpuVendor::Intel;
    if (profile.hardware_virtualization) facts.flags.insert(intel ? "vmx" : "svm");
    if (profile.nested_paging) facts.flags.insert(intel ? "ept" : "npt");
    if (profile.apic_virtualization) facts.flags.insert(intel ? "flexpriority" : "avic");
    const auto probed = capabilities_from(facts, CpuidTable{}, kvm::KvmFacts{});
    EXPECT_EQ(probed.long_mode_segment_limits, profile.long_mode_segment_limits);
    EXPECT_EQ(probed.quirks, profile.quirks);
  }
}

TEST(CpuProfiles, DefaultDriverIsModelledPerVm) {
  const auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, "intel-nehalem"));
  EXPECT_EQ(caps.model_name, "Intel(R) Xeon(R) CPU X5570 @ 2.93GHz");
  EXPECT_EQ(caps.stepping, 5u);
  EXPECT_EQ(caps.driver.name, "modelled");
  EXPECT_EQ(caps.driver.mmu_selection, api::MmuSelection::PerVm);
  EXPECT_TRUE(caps.driver.usable);
  EXPECT_TRUE(caps.driver.nested_paging_enabled);
  EXPECT_EQ(caps.driver.detail, "");
  EXPECT_TRUE(api::can_use_nested_paging(caps));
  EXPECT_TRUE(api::can_use_driver_shadow_paging(caps));
}

TEST(CpuProfiles, RevCModelledDriverIsUnusable) {
  const auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, "amd-opteron-revc"));
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.detail, "the CPU has no VT-x/AMD-V");
  EXPECT_FALSE(api::can_use_hardware_execution(caps));
}

TEST(CpuProfiles, KvmDriverWithNpt0) {
  const auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, "amd-genoa-kvm-npt0"));
  EXPECT_EQ(caps.driver.name, "kvm_amd");
  EXPECT_EQ(caps.driver.mmu_selection, api::MmuSelection::HostWide);
  EXPECT_FALSE(caps.driver.nested_paging_enabled);
  EXPECT_TRUE(caps.driver.usable);
  EXPECT_EQ(caps.driver.api_version, 12);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_FALSE(api::can_use_nested_paging(caps));
  EXPECT_TRUE(api::can_use_driver_shadow_paging(caps));
}

// Writes a profile into a fresh temporary folder.
class ProfileFile : public ::testing::Test {
 protected:
  fs::path write(const std::string& text) {
    static std::atomic<int> counter{0};
    const fs::path dir = fs::path(::testing::TempDir()) /
                         ("modevisor-profiles-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::create_directories(dir);
    const fs::path file = dir / "p.yaml";
    std::ofstream(file) << text;
    return file;
  }

  // Loads `text`, expecting an InputError at line:column whose message has `words`.
  void expect_error(const std::string& text, int line, int column, const std::string& words) {
    const fs::path file = write(text);
    try {
      load_cpu_profile(file);
      ADD_FAILURE() << "expected InputError for:\n" << text;
    } catch (const InputError& e) {
      EXPECT_EQ(e.file(), file);
      EXPECT_EQ(e.line(), line) << e.what();
      EXPECT_EQ(e.column(), column) << e.what();
      EXPECT_THAT(e.message(), HasSubstr(words));
      EXPECT_THAT(e.what(), StartsWith(file.string() + ":" + std::to_string(line) + ":" + std::to_string(column) + ": "));
    }
  }

  static constexpr const char* kValid =
      "name: test\n"                       // 1
      "vendor: AuthenticAMD\n"             // 2
      "family: 0x10\n"                     // 3
      "model: 2\n"                         // 4
      "long_mode: true\n"                  // 5
      "hardware_virtualization: true\n"    // 6
      "nested_paging: true\n"              // 7
      "apic_virtualization: false\n"       // 8
      "long_mode_segment_limits: true\n";  // 9
};

TEST_F(ProfileFile, MinimalProfileLoads) {
  const auto caps = load_cpu_profile(write(kValid));
  EXPECT_EQ(caps.source, "profile: test");
  EXPECT_EQ(caps.model_name, "test");
  EXPECT_EQ(caps.family, 0x10u);
  EXPECT_EQ(caps.model, 2u);
  EXPECT_EQ(caps.stepping, 0u);
  EXPECT_TRUE(caps.nested_paging);
}

TEST_F(ProfileFile, UnknownKey) {
  expect_error(std::string(kValid) + "  \nnested_pagin: true\n", 11, 1, "unknown key 'nested_pagin'");
}

TEST_F(ProfileFile, BadBoolean) {
  std::string text = kValid;
  text.replace(text.find("nested_paging: true"), 19, "nested_paging: maybe");
  expect_error(text, 7, 16, "expected true or false, found 'maybe'");
}

TEST_F(ProfileFile, MissingName) {
  std::string text = kValid;
  text.erase(0, text.find('\n') + 1);
  expect_error(text, 1, 1, "missing required key 'name'");
}

TEST_F(ProfileFile, MissingFeatureBoolean) {
  std::string text = kValid;
  text.erase(text.find("apic_virtualization"), std::string("apic_virtualization: false\n").size());
  expect_error(text, 1, 1, "missing required key 'apic_virtualization'");
}

TEST_F(ProfileFile, BadVendor) {
  std::string text = kValid;
  text.replace(text.find("AuthenticAMD"), 12, "CyrixInstead");
  expect_error(text, 2, 9, "expected GenuineIntel or AuthenticAMD");
}

TEST_F(ProfileFile, BadFamilyNumber) {
  std::string text = kValid;
  text.replace(text.find("0x10"), 4, "0xzz");
  expect_error(text, 3, 9, "'0xzz'");
}

TEST_F(ProfileFile, SteppingOutOfRange) {
  expect_error(std::string(kValid) + "stepping: 16\n", 10, 11, "stepping must be at most 0xf");
}

TEST_F(ProfileFile, NestedPagingWithoutHardwareVirtualization) {
  std::string text = kValid;
  text.replace(text.find("hardware_virtualization: true"), 29, "hardware_virtualization: false");
  expect_error(text, 7, 16, "nested_paging needs hardware_virtualization");
}

TEST_F(ProfileFile, SegmentLimitsOnIntel) {
  std::string text = kValid;
  text.replace(text.find("AuthenticAMD"), 12, "GenuineIntel");
  expect_error(text, 9, 27, "only on 64-bit AMD CPUs");
}

TEST_F(ProfileFile, UnknownQuirk) {
  expect_error(std::string(kValid) + "quirks:\n  - amd-v-revf-erratum\n  - fast-tlb\n", 12, 5,
               "unknown quirk 'fast-tlb' (known: amd-v-revf-erratum)");
}

TEST_F(ProfileFile, DriverKinds) {
  expect_error(std::string(kValid) + "driver:\n  kind: xen\n", 11, 9, "expected kvm or modelled, found 'xen'");
  expect_error(std::string(kValid) + "driver:\n  kind: kvm\n", 11, 3, "missing required key 'nested_paging'");
  expect_error(std::string(kValid) + "driver:\n  kind: kvm\n  nested_paging: yes\n  ept: true\n", 13, 3,
               "unknown key 'ept'");
  expect_error(std::string(kValid) + "driver: kvm\n", 10, 9, "expected a driver description");
}

TEST_F(ProfileFile, KvmNestedPagingOnCpuWithoutNpt) {
  std::string text = kValid;
  text.replace(text.find("nested_paging: true"), 19, "nested_paging: false");
  expect_error(text + "driver: {kind: kvm, nested_paging: true}\n", 10, 36, "needs a CPU with EPT/NPT");
}

TEST_F(ProfileFile, KvmDriverOnIntel) {
  std::string text = kValid;
  text.replace(text.find("AuthenticAMD"), 12, "GenuineIntel");
  text.replace(text.find("long_mode_segment_limits: true"), 30, "long_mode_segment_limits: false");
  const auto caps = load_cpu_profile(write(text + "driver: {kind: kvm, nested_paging: true}\n"));
  EXPECT_EQ(caps.driver.name, "kvm_intel");
  EXPECT_TRUE(caps.driver.nested_paging_enabled);
  EXPECT_EQ(caps.driver.mmu_selection, api::MmuSelection::HostWide);
  EXPECT_TRUE(api::can_use_nested_paging(caps));
  EXPECT_FALSE(api::can_use_driver_shadow_paging(caps));
}

TEST_F(ProfileFile, YamlSyntaxError) {
  expect_error("name: [unclosed\n", 2, 1, "YAML syntax error");
}

// ---------------------------------------------------------------- find_cpu_profile

TEST(FindCpuProfile, ByNameAndByPath) {
  EXPECT_EQ(find_cpu_profile(kConfigDir, "amd-shanghai"), kConfigDir / "cpus" / "amd-shanghai.yaml");
  const fs::path path = kConfigDir / "cpus" / "intel-penryn.yaml";
  EXPECT_EQ(find_cpu_profile(kConfigDir, path.string()), path);
}

TEST(FindCpuProfile, UnknownNameListsKnownOnes) {
  try {
    find_cpu_profile(kConfigDir, "intel-nehalam");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_THAT(e.message(), HasSubstr("unknown CPU profile 'intel-nehalam'"));
    EXPECT_THAT(e.message(), HasSubstr("amd-barcelona, amd-genoa,"));
    EXPECT_THAT(e.message(), HasSubstr("intel-nehalem"));
  }
}

TEST(FindCpuProfile, MissingPathIsAnError) {
  EXPECT_THROW(find_cpu_profile(kConfigDir, "./no/such/profile.yaml"), InputError);
  EXPECT_THROW(find_cpu_profile(kConfigDir, "missing.yaml"), InputError);
}

TEST(FindCpuProfile, EmptyConfigDirHasNoProfiles) {
  EXPECT_THAT(list_cpu_profiles(kFixtures / "no-such-config"), IsEmpty());
  try {
    find_cpu_profile(kFixtures / "no-such-config", "intel-nehalem");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_THAT(e.message(), HasSubstr("(known: none)"));
  }
}

// ---------------------------------------------------------------- masks

TEST(CapabilityMask, MaskableFeatures) {
  EXPECT_THAT(maskable_features(), ElementsAre("hardware_virtualization", "nested_paging", "apic_virtualization",
                                               "long_mode_segment_limits"));
}

TEST(CapabilityMask, NestedPaging) {
  auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, "intel-nehalem"));
  apply_capability_mask(caps, {"nested_paging"});
  EXPECT_FALSE(caps.nested_paging);
  EXPECT_FALSE(caps.driver.nested_paging_enabled);
  EXPECT_TRUE(caps.hardware_virtualization);
  EXPECT_TRUE(caps.apic_virtualization);
  EXPECT_THAT(caps.masked, ElementsAre("nested_paging"));
  EXPECT_FALSE(api::can_use_nested_paging(caps));
  EXPECT_TRUE(api::can_use_hardware_execution(caps));
}

TEST(CapabilityMask, HardwareVirtualizationMakesTheDriverUnusable) {
  auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, "amd-genoa"));
  apply_capability_mask(caps, {"hardware_virtualization", "apic_virtualization", "hardware_virtualization"});
  EXPECT_FALSE(caps.hardware_virtualization);
  EXPECT_FALSE(caps.apic_virtualization);
  EXPECT_FALSE(caps.driver.usable);
  EXPECT_EQ(caps.driver.detail, "hardware virtualization (VT-x/AMD-V) is masked by host configuration");
  EXPECT_THAT(caps.masked, ElementsAre("hardware_virtualization", "apic_virtualization"));
  EXPECT_FALSE(api::can_use_hardware_execution(caps));
  EXPECT_FALSE(api::can_use_nested_paging(caps));
}

TEST(CapabilityMask, SegmentLimits) {
  auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, "amd-barcelona"));
  apply_capability_mask(caps, {"long_mode_segment_limits"});
  EXPECT_FALSE(caps.long_mode_segment_limits);
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_THAT(caps.masked, ElementsAre("long_mode_segment_limits"));
}

TEST(CapabilityMask, KeepsTheProbedReasonWhenAlreadyUnusable) {
  auto caps = capabilities_from(cpuinfo_fixture("intel-xeon-8259cl-cloud-guest-no-vmx.txt"), CpuidTable{},
                                kvm::KvmFacts{});
  apply_capability_mask(caps, {"hardware_virtualization"});
  EXPECT_THAT(caps.driver.detail, StartsWith("hardware virtualization (VT-x/AMD-V) is masked by host configuration; "));
  EXPECT_THAT(caps.driver.detail, HasSubstr("the kvm_intel module is not loaded"));
}

TEST(CapabilityMask, UnknownFeatureChangesNothing) {
  auto caps = load_cpu_profile(find_cpu_profile(kConfigDir, "intel-nehalem"));
  try {
    apply_capability_mask(caps, {"nested_paging", "ept"});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("'ept'"));
    EXPECT_THAT(e.what(), HasSubstr("nested_paging"));
  }
  EXPECT_TRUE(caps.nested_paging);
  EXPECT_THAT(caps.masked, IsEmpty());
}

}  // namespace
}  // namespace modevisor::host
