// The selector against the seed's "Choice of Monitor Mode" examples, on the
// shipped CPU profiles and policies, with the real plugins' descriptors.  The
// seed's ESX had BT64 where long mode keeps segment limits; bt-swmmu has not
// built it yet and its descriptor says so.  The tests that reproduce the
// seed's decisions give bt-swmmu the seed's BT64 claim (seed_candidates); the
// ones that say "shipped" take the descriptors as they are.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "capabilities/cpu_profile.hpp"
#include "common/errors.hpp"
#include "plugins/registry.hpp"
#include "selection/mode_log.hpp"
#include "selection/policy.hpp"
#include "selection/selector.hpp"

namespace modevisor::host {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using Modes = std::vector<std::string>;

const std::filesystem::path kConfigs = std::filesystem::path(MODEVISOR_SOURCE_DIR) / "configs";

class SelectorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new PluginRegistry({MODEVISOR_DEFAULT_PLUGIN_DIR});
    registry_->rescan();
    guest_os_ = new GuestOsTable(GuestOsTable::load(kConfigs / "guest-os.yaml"));
  }
  static void TearDownTestSuite() {
    delete registry_;
    delete guest_os_;
  }

  static api::HostCapabilities cpu(const std::string& profile) {
    return load_cpu_profile(find_cpu_profile(kConfigs, profile));
  }

  static VmConfig vm(const std::string& os, TechniqueHint exec = TechniqueHint::Automatic,
                     TechniqueHint mmu = TechniqueHint::Automatic, bool ft = false) {
    VmConfig config;
    config.name = "test-vm";
    const GuestOsType* type = guest_os_->find(os);
    EXPECT_NE(type, nullptr) << os;
    if (type) config.guest.os = *type;
    config.memory_bytes = 256 << 20;
    config.monitor.virtual_exec = exec;
    config.monitor.virtual_mmu = mmu;
    config.fault_tolerance = ft;
    return config;
  }

  // The installed plugins as they describe themselves.
  static std::vector<PluginCandidate> shipped_candidates(const api::HostCapabilities& host) {
    std::vector<PluginCandidate> candidates;
    for (const auto& plugin : registry_->plugins())
      candidates.push_back({plugin->file, plugin->descriptor, host_problems(*plugin, host)});
    return candidates;
  }
  // The same, with bt-swmmu claiming the seed's BT64 (64-bit guests where long
  // mode keeps segment limits): the plugin set ESX 4.0 chose from.
  static std::vector<PluginCandidate> seed_candidates(const api::HostCapabilities& host) {
    std::vector<PluginCandidate> candidates = shipped_candidates(host);
    for (auto& c : candidates)
      if (c.descriptor.name == "bt-swmmu") {
        c.descriptor.guests.bits64 = true;
        c.descriptor.guests.bits64_needs_segment_limits = true;
      }
    return candidates;
  }

  static Selection select(const api::HostCapabilities& host, const std::string& policy, const VmConfig& config) {
    return select_monitor_mode(host, seed_candidates(host), load_policy(find_policy(kConfigs, policy)), config);
  }
  static Selection select_shipped(const api::HostCapabilities& host, const std::string& policy,
                                  const VmConfig& config) {
    return select_monitor_mode(host, shipped_candidates(host), load_policy(find_policy(kConfigs, policy)), config);
  }

  static Selection select(const std::string& profile, const std::string& policy, const VmConfig& config) {
    return select(cpu(profile), policy, config);
  }

  static Modes display(const Selection& s, const Modes& modes) {
    Modes out;
    for (const auto& m : modes) out.push_back(s.display(m));
    return out;
  }

  static PluginRegistry* registry_;
  static GuestOsTable* guest_os_;
};
PluginRegistry* SelectorTest::registry_ = nullptr;
GuestOsTable* SelectorTest::guest_os_ = nullptr;

TEST_F(SelectorTest, RealPluginsAreInstalled) {
  ASSERT_EQ(registry_->plugins().size(), 3u) << "the three mode plugins must be built";
}

// --- The seed's five examples -------------------------------------------------

TEST_F(SelectorTest, Esx35OnShanghaiWith64BitGuestPicksHwMmuAmongBtAndHwMmu) {
  Selection s = select("amd-shanghai", "esx-3.5", vm("linux-64"));
  EXPECT_THAT(s.allowed, ElementsAre("BT", "HWMMU"));
  EXPECT_EQ(s.selected, "HWMMU");
}

TEST_F(SelectorTest, Esx35OnNehalemWith64BitGuestRunsHvSwMmuBecauseNoEpt) {
  Selection s = select("intel-nehalem", "esx-3.5", vm("windows-7-64"));
  EXPECT_THAT(s.allowed, ElementsAre("HV"));
  EXPECT_EQ(s.selected, "HV");
  const auto& hwmmu = s.verdicts[2];
  ASSERT_EQ(hwmmu.mode, "HWMMU");
  EXPECT_THAT(hwmmu.reasons.front(), HasSubstr("esx-3.5"));
}

TEST_F(SelectorTest, Esx40OnShanghaiWith64BitGuestChoosesAmongAllThreeAndHwMmuWins) {
  Selection s = select("amd-shanghai", "esx-4.0", vm("linux-64"));
  EXPECT_THAT(s.allowed, ElementsAre("BT", "HV", "HWMMU"));
  EXPECT_EQ(s.selected, "HWMMU");
}

TEST_F(SelectorTest, Esx40OnOpteronRevFWith64BitGuestHasOnlyBt) {
  Selection s = select("amd-opteron-revf", "esx-4.0", vm("linux-64"));
  EXPECT_THAT(s.allowed, ElementsAre("BT"));
  EXPECT_EQ(s.selected, "BT");
  EXPECT_THAT(s.verdicts[1].reasons.front(), HasSubstr("amd-v-revf-erratum"));
}

TEST_F(SelectorTest, Esx40OnNehalemWith64BitGuestAllowsHvAndHwMmuNotBt) {
  Selection s = select("intel-nehalem", "esx-4.0", vm("windows-7-64"));
  EXPECT_THAT(s.allowed, ElementsAre("HV", "HWMMU"));
  EXPECT_EQ(s.selected, "HWMMU");
  ASSERT_FALSE(s.verdicts[0].allowed);
  EXPECT_EQ(s.display("BT"), "BT32");
}

// --- Features and priorities ---------------------------------------------------

TEST_F(SelectorTest, FaultToleranceNarrowsToHvSwMmu) {
  for (const char* profile : {"amd-shanghai", "intel-nehalem"}) {
    Selection s = select(profile, "esx-4.0",
                         vm("linux-64", TechniqueHint::Automatic, TechniqueHint::Automatic, /*ft=*/true));
    EXPECT_THAT(s.filtered, ElementsAre("HV")) << profile;
    EXPECT_EQ(s.selected, "HV") << profile;
  }
}

TEST_F(SelectorTest, FaultToleranceDoesNotExistInEsx35) {
  Selection s = select("amd-shanghai", "esx-3.5", vm("linux-64", TechniqueHint::Automatic, TechniqueHint::Automatic, true));
  EXPECT_FALSE(s.selected);
  EXPECT_THAT(s.feature_notes.front(), HasSubstr("no Fault Tolerance"));
}

TEST_F(SelectorTest, Esx35Prefers32BitBtAndHwMmuForOs2UnixWareOpenServer) {
  EXPECT_EQ(select("amd-shanghai", "esx-3.5", vm("linux-32")).selected, "BT");
  EXPECT_EQ(select("amd-shanghai", "esx-3.5", vm("windows-xp-32")).selected, "BT");
  for (const char* os : {"os2", "unixware", "openserver"})
    EXPECT_EQ(select("amd-shanghai", "esx-3.5", vm(os)).selected, "HWMMU") << os;
}

TEST_F(SelectorTest, Esx35On32BitIntelIsBtAnd64BitIntelIsHv) {
  for (const char* profile : {"intel-core2-65nm", "intel-penryn", "intel-nehalem"}) {
    EXPECT_EQ(select(profile, "esx-3.5", vm("windows-xp-32")).selected, "BT") << profile;
    EXPECT_EQ(select(profile, "esx-3.5", vm("linux-64")).selected, "HV") << profile;
  }
}

TEST_F(SelectorTest, Esx40WithApicVirtualizationOrdersHwMmuHvBt) {
  Selection s = select("intel-nehalem", "esx-4.0", vm("windows-xp-32"));
  EXPECT_THAT(display(s, s.preferred), ElementsAre("HWMMU", "HV", "BT32"));
  Selection penryn = select("intel-penryn", "esx-4.0", vm("linux-32"));
  EXPECT_THAT(display(penryn, penryn.preferred), ElementsAre("HV", "BT32"));
  EXPECT_EQ(penryn.selected, "HV");
}

TEST_F(SelectorTest, Esx40Without32BitWindowsApicVirtualizationOrdersHwMmuBtHv) {
  Selection s = select("amd-shanghai", "esx-4.0", vm("windows-xp-32"));
  EXPECT_THAT(s.preferred, ElementsAre("HWMMU", "BT", "HV"));
  Selection core2 = select("intel-core2-65nm", "esx-4.0", vm("windows-xp-32"));
  EXPECT_THAT(display(core2, core2.allowed), ElementsAre("BT32", "HV"));
  EXPECT_EQ(core2.selected, "BT");
}

TEST_F(SelectorTest, Esx40DisallowsBtForOs2UnixWareOpenServer) {
  Selection s = select("intel-core2-65nm", "esx-4.0", vm("os2"));
  EXPECT_THAT(s.preferred, ElementsAre("HV"));
  EXPECT_EQ(s.selected, "HV");
  Selection revc = select("amd-opteron-revc", "esx-4.0", vm("unixware"));
  EXPECT_THAT(revc.allowed, ElementsAre("BT"));
  EXPECT_FALSE(revc.selected) << "BT is the only mode and the guest disallows it";
}

TEST_F(SelectorTest, SeedLogExampleIsReproducedLineForLine) {
  Selection s = select("amd-shanghai", "esx-4.0", vm("linux-32", TechniqueHint::Software));
  EXPECT_THAT(monitor_mode_lines(s),
              ElementsAre("MONITOR MODE: allowed modes          : BT HV HWMMU",
                          "MONITOR MODE: user requested modes   : BT",
                          "MONITOR MODE: guestOS preferred modes: BT HWMMU HV",
                          "MONITOR MODE: filtered list          : BT",
                          "MONITOR MODE: selected               : BT (bt-swmmu 0.1.0)"));
}

TEST_F(SelectorTest, BtIsListedAsBt32WhereLongModeHasNoSegmentLimits) {
  for (const char* profile : {"intel-nehalem", "intel-sapphire-rapids", "amd-opteron-revc", "amd-genoa"}) {
    Selection s = select(profile, "esx-4.0", vm("linux-32"));
    EXPECT_TRUE(s.bt_limited_to_32bit) << profile;
    EXPECT_THAT(monitor_mode_lines(s).front(), HasSubstr("BT32")) << profile;
  }
  EXPECT_FALSE(select("amd-barcelona", "esx-4.0", vm("linux-32")).bt_limited_to_32bit);
}

// --- Hints are hints -------------------------------------------------------------

TEST_F(SelectorTest, ImpossibleHintIsIgnoredAndTakesEffectAgainOnACapableHost) {
  const VmConfig wants_nested_paging = vm("linux-64", TechniqueHint::Automatic, TechniqueHint::Hardware);
  Selection penryn = select("intel-penryn", "esx-4.0", wants_nested_paging);
  ASSERT_EQ(penryn.ignored_hints.size(), 1u);
  EXPECT_EQ(penryn.ignored_hints[0].hint, "monitor.virtual_mmu = hardware");
  EXPECT_THAT(penryn.ignored_hints[0].reason, HasSubstr("nested paging"));
  EXPECT_EQ(penryn.selected, "HV");

  Selection nehalem = select("intel-nehalem", "esx-4.0", wants_nested_paging);
  EXPECT_TRUE(nehalem.ignored_hints.empty());
  EXPECT_THAT(nehalem.requested, ElementsAre("HWMMU"));
  EXPECT_EQ(nehalem.selected, "HWMMU");
}

TEST_F(SelectorTest, SoftwareExecutionHintForA64BitGuestOnIntelIsIgnoredAndHonouredOnAmd) {
  const VmConfig wants_bt = vm("linux-64", TechniqueHint::Software);
  Selection intel = select("intel-nehalem", "esx-4.0", wants_bt);
  ASSERT_EQ(intel.ignored_hints.size(), 1u);
  EXPECT_THAT(intel.ignored_hints[0].reason, HasSubstr("BT32"));
  EXPECT_EQ(intel.selected, "HWMMU");
  Selection amd = select("amd-shanghai", "esx-4.0", wants_bt);
  EXPECT_TRUE(amd.ignored_hints.empty());
  EXPECT_EQ(amd.selected, "BT");
}

TEST_F(SelectorTest, Esx35DoesNotRecognizeVirtualExec) {
  Selection s = select("amd-shanghai", "esx-3.5", vm("linux-64", TechniqueHint::Software));
  ASSERT_EQ(s.ignored_hints.size(), 1u);
  EXPECT_THAT(s.ignored_hints[0].reason, HasSubstr("does not recognize monitor.virtual_exec"));
  EXPECT_EQ(s.selected, "HWMMU");
  // virtual_mmu alone expresses every ESX 3.5 choice.
  EXPECT_EQ(select("amd-shanghai", "esx-3.5", vm("linux-64", TechniqueHint::Automatic, TechniqueHint::Software)).selected,
            "BT");
}

TEST_F(SelectorTest, SoftwareExecutionWithHardwareMmuIsNotAValidModeAndIsIgnored) {
  Selection s = select("amd-shanghai", "esx-4.0", vm("linux-64", TechniqueHint::Software, TechniqueHint::Hardware));
  ASSERT_EQ(s.ignored_hints.size(), 1u);
  EXPECT_THAT(s.ignored_hints[0].reason, HasSubstr("not a valid monitor mode"));
  EXPECT_EQ(s.requested, s.allowed);
}

TEST_F(SelectorTest, HintThatOnlyTheGuestOsForbidsIsIgnoredRatherThanStoppingTheVm) {
  Selection s = select("amd-shanghai", "esx-4.0", vm("os2", TechniqueHint::Software));
  ASSERT_EQ(s.ignored_hints.size(), 1u);
  EXPECT_EQ(s.selected, "HWMMU");
}

// --- Linux KVM: the MMU is a host-wide choice --------------------------------------

TEST_F(SelectorTest, KvmWithNestedPagingOffOffersHvNotHwMmuAndSaysWhy) {
  api::HostCapabilities host = cpu("amd-genoa");
  host.driver.name = "kvm_amd";
  host.driver.mmu_selection = api::MmuSelection::HostWide;
  host.driver.nested_paging_enabled = false;
  Selection s = select(host, "default", vm("linux-64"));
  EXPECT_THAT(s.allowed, ElementsAre("HV"));
  EXPECT_THAT(s.verdicts[2].reasons.front(), HasSubstr("npt"));

  host.driver.nested_paging_enabled = true;
  Selection npt = select(host, "default", vm("linux-64"));
  EXPECT_THAT(npt.allowed, ElementsAre("HWMMU"));
  EXPECT_THAT(npt.verdicts[1].reasons.front(), HasSubstr("npt"));
}

TEST_F(SelectorTest, NoModeAtAllGivesAReason) {
  api::HostCapabilities host = cpu("amd-genoa");
  host.hardware_virtualization = false;
  host.driver.usable = false;
  Selection s = select(host, "default", vm("linux-64"));
  EXPECT_TRUE(s.allowed.empty());
  EXPECT_FALSE(s.selected);
  EXPECT_THAT(monitor_mode_lines(s).back(), HasSubstr("selected               : none"));
}

TEST_F(SelectorTest, MaskedCapabilityIsReportedAsMasked) {
  api::HostCapabilities host = cpu("intel-nehalem");
  apply_capability_mask(host, {"nested_paging"});
  Selection s = select(host, "esx-4.0", vm("linux-64"));
  EXPECT_THAT(s.allowed, ElementsAre("HV"));
  EXPECT_THAT(s.verdicts[2].reasons.front(), HasSubstr("masked"));
}

// --- A plugin's vCPU limit (bt-swmmu: one vCPU) -----------------------------------

TEST_F(SelectorTest, PluginsDeclareTheirVcpuLimit) {
  for (const auto& plugin : registry_->plugins())
    EXPECT_EQ(plugin->descriptor.guests.max_vcpus, plugin->descriptor.name == "bt-swmmu" ? 1u : 0u)
        << plugin->descriptor.name;
}

// bt-swmmu as shipped claims 64-bit guests (BT64) without long-mode segment
// limits: its software checks confine each guest address.  What a policy
// allows is the policy's: esx-4.0 keeps the seed's rule (BT64 only on AMD with
// segment limits), default allows it on any CPU.
TEST_F(SelectorTest, ShippedBtSwmmuClaims64BitGuestsWithSoftwareChecks) {
  for (const auto& plugin : registry_->plugins())
    if (plugin->descriptor.name == "bt-swmmu") {
      EXPECT_TRUE(plugin->descriptor.guests.bits32);
      EXPECT_TRUE(plugin->descriptor.guests.bits64);
      EXPECT_FALSE(plugin->descriptor.guests.bits64_needs_segment_limits);
    }
  // The seed's example again: Shanghai allows BT HV HWMMU and picks HWMMU.
  const Selection shanghai = select_shipped(cpu("amd-shanghai"), "esx-4.0", vm("linux-64"));
  EXPECT_THAT(shanghai.allowed, ElementsAre("BT", "HV", "HWMMU"));
  EXPECT_EQ(shanghai.selected, "HWMMU");
  // Opteron Rev F (segment limits, no usable AMD-V): BT64 is the only mode.
  const Selection revf = select_shipped(cpu("amd-opteron-revf"), "esx-4.0", vm("linux-64"));
  EXPECT_THAT(revf.allowed, ElementsAre("BT"));
  EXPECT_EQ(revf.selected, "BT");
  // Nehalem without VT-x: esx-4.0 refuses BT64 on Intel, default allows it.
  api::HostCapabilities nehalem = cpu("intel-nehalem");
  nehalem.hardware_virtualization = false;
  nehalem.nested_paging = false;
  EXPECT_FALSE(select_shipped(nehalem, "esx-4.0", vm("linux-64")).selected);
  const Selection dflt = select_shipped(nehalem, "default", vm("linux-64"));
  EXPECT_EQ(dflt.selected, "BT");
  ASSERT_TRUE(dflt.selected_plugin);
  EXPECT_EQ(dflt.selected_plugin->descriptor.name, "bt-swmmu");
  // 32-bit guests are unchanged.
  EXPECT_EQ(select_shipped(cpu("amd-opteron-revf"), "esx-4.0", vm("linux-32")).selected, "BT");
}

TEST_F(SelectorTest, AnSmpVmRulesOutBtByItsPluginsVcpuLimitAndSaysSoInPlainWords) {
  VmConfig smp = vm("linux-64");
  smp.vcpus = 4;
  Selection s = select("amd-shanghai", "esx-4.0", smp);
  EXPECT_THAT(s.allowed, ElementsAre("HV", "HWMMU"));
  ASSERT_EQ(s.verdicts[0].mode, "BT");
  EXPECT_FALSE(s.verdicts[0].allowed);
  EXPECT_THAT(s.verdicts[0].reasons, ElementsAre("bt-swmmu runs only VMs with one vCPU; this VM has 4"));
  EXPECT_EQ(s.selected, "HWMMU");
  EXPECT_THAT(monitor_mode_lines(s),
              Contains("MONITOR MODE: not allowed            : BT (bt-swmmu runs only VMs with one vCPU; this VM has 4)"));
  // The same VM with one vCPU: BT is allowed again, as in the seed's example.
  smp.vcpus = 1;
  EXPECT_THAT(select("amd-shanghai", "esx-4.0", smp).allowed, ElementsAre("BT", "HV", "HWMMU"));
}

TEST_F(SelectorTest, AnSmpVmWhereBtIsTheOnlyModeCannotRunAndTheReasonIsTheVcpuCount) {
  VmConfig smp = vm("linux-32");
  smp.vcpus = 2;
  Selection s = select("amd-opteron-revc", "esx-4.0", smp);  // no AMD-V: BT or nothing
  EXPECT_TRUE(s.allowed.empty());
  EXPECT_FALSE(s.selected);
  EXPECT_THAT(s.verdicts[0].reasons, ElementsAre("bt-swmmu runs only VMs with one vCPU; this VM has 2"));
  smp.vcpus = 1;
  EXPECT_EQ(select("amd-opteron-revc", "esx-4.0", smp).selected, "BT");
}

TEST_F(SelectorTest, ABtHintForAnSmpVmIsIgnoredWithTheReason) {
  VmConfig smp = vm("linux-32", TechniqueHint::Software);
  smp.vcpus = 2;
  Selection s = select("amd-shanghai", "esx-4.0", smp);
  ASSERT_EQ(s.ignored_hints.size(), 1u);
  EXPECT_THAT(s.ignored_hints[0].reason, HasSubstr("bt-swmmu runs only VMs with one vCPU"));
  EXPECT_TRUE(s.selected);
  EXPECT_NE(*s.selected, "BT");
}

TEST_F(SelectorTest, JsonCarriesTheSameDecision) {
  Selection s = select("amd-shanghai", "esx-4.0", vm("linux-64"));
  nlohmann::json j = to_json(s);
  EXPECT_EQ(j["selected"], "HWMMU");
  EXPECT_EQ(j["plugin"]["name"], "hv-hwmmu");
  EXPECT_EQ(j["allowed"].size(), 3u);
}

// --- The seed's BT32 switch, mid-run ------------------------------------------
// "When using BT32, the monitor runs the virtual machine with software
// virtualization for as long as possible, but it dynamically switches to
// hardware virtualization if the virtual machine enters 64-bit mode."

class ModeSwitchTest : public SelectorTest {
 protected:
  static ModeSwitch change(const api::HostCapabilities& host, const std::string& policy, const VmConfig& config,
                           bool shipped = false) {
    return select_mode_switch(host, shipped ? shipped_candidates(host) : seed_candidates(host),
                              load_policy(find_policy(kConfigs, policy)), config, "BT",
                              "the guest activated long mode");
  }
  static api::HostCapabilities without_hardware(const std::string& profile) {
    api::HostCapabilities host = cpu(profile);
    host.hardware_virtualization = false;
    host.nested_paging = false;
    return host;
  }
  // A 32-bit guest with the software hint: it starts under BT32.
  static VmConfig bt_guest() { return vm("other-32", TechniqueHint::Software); }
};

TEST_F(ModeSwitchTest, TheGuestStartsUnderBt32) {
  for (const char* policy : {"default", "esx-4.0"}) {
    const Selection s = select("intel-nehalem", policy, bt_guest());
    ASSERT_TRUE(s.selected) << policy;
    EXPECT_EQ(s.display(*s.selected), "BT32") << policy;
  }
}

TEST_F(ModeSwitchTest, DefaultSwitchesBt32ToHardwareWithNestedPaging) {
  const ModeSwitch c = change(cpu("intel-nehalem"), "default", bt_guest());
  EXPECT_EQ(c.from, "BT32");
  ASSERT_TRUE(c.to);
  EXPECT_EQ(*c.to, "HWMMU");
  ASSERT_TRUE(c.plugin);
  EXPECT_EQ(c.plugin->descriptor.name, "hv-hwmmu");
  EXPECT_THAT(c.reason, HasSubstr("switches to hardware virtualization"));
  EXPECT_THAT(c.reason, HasSubstr("the guest activated long mode"));
  // The software hint cannot hold for the 64-bit guest: it is ignored, saying why.
  ASSERT_FALSE(c.selection.ignored_hints.empty());
  EXPECT_THAT(c.selection.ignored_hints.front().reason, HasSubstr("BT32 is not allowed here"));
}

TEST_F(ModeSwitchTest, Esx40SwitchesBt32ToHvWhereThereIsNoNestedPaging) {
  api::HostCapabilities host = cpu("intel-nehalem");
  host.nested_paging = false;
  const ModeSwitch c = change(host, "esx-4.0", bt_guest());
  ASSERT_TRUE(c.to);
  EXPECT_EQ(*c.to, "HV");
  ASSERT_TRUE(c.plugin);
  EXPECT_EQ(c.plugin->descriptor.name, "hv-swmmu");
}

TEST_F(ModeSwitchTest, DefaultWithoutAHardwareModeGoesOnUnderBt64) {
  const ModeSwitch c = change(without_hardware("intel-nehalem"), "default", bt_guest(), /*shipped=*/true);
  ASSERT_TRUE(c.to);
  EXPECT_EQ(*c.to, "BT64");
  ASSERT_TRUE(c.plugin);
  EXPECT_EQ(c.plugin->descriptor.name, "bt-swmmu");
  EXPECT_THAT(c.reason, HasSubstr("no hardware mode is allowed"));
  EXPECT_THAT(c.reason, HasSubstr("the CPU has no hardware virtualization"));
  EXPECT_THAT(c.reason, HasSubstr("default continues under BT64 (each guest address confined by software checks"));
  EXPECT_THAT(mode_switch_lines(c).back(),
              HasSubstr("MONITOR MODE: switch                 : BT32 -> BT64 (bt-swmmu "));
}

TEST_F(ModeSwitchTest, DefaultStopsWhenNoInstalledPluginProvidesBt64) {
  // The seed's plugin set: bt-swmmu's BT64 needs segment limits, which Nehalem has not.
  const ModeSwitch c = change(without_hardware("intel-nehalem"), "default", bt_guest());
  EXPECT_FALSE(c.to);
  EXPECT_FALSE(c.plugin);
  EXPECT_THAT(c.reason, HasSubstr("default would continue under BT64, which no installed plugin allowed here provides"));
  EXPECT_THAT(c.reason, HasSubstr("runs 64-bit guests only where long mode keeps segment limits"));
}

TEST_F(ModeSwitchTest, Esx40WithoutAHardwareModeStopsWithTheSeedsReason) {
  for (const char* policy : {"esx-4.0", "esx-3.5"}) {
    const ModeSwitch c = change(without_hardware("intel-nehalem"), policy, bt_guest());
    EXPECT_FALSE(c.to) << policy;
    EXPECT_THAT(c.reason, HasSubstr("stops it")) << policy;
    EXPECT_THAT(c.reason, HasSubstr("BT64 could not virtualize the 64-bit architecture efficiently")) << policy;
    EXPECT_THAT(c.reason, HasSubstr("runs only 32-bit guests with BT on Intel CPUs")) << policy;
  }
}

TEST_F(ModeSwitchTest, WhereBt64IsAllowedAHardwareModeStillTakesTheGuestBtGaveUp) {
  // Shanghai keeps segment limits in long mode: BT64 is allowed (and the
  // hint asks for BT), but the plugin that gave the guest up cannot run it.
  const ModeSwitch c = change(cpu("amd-shanghai"), "esx-4.0", bt_guest());
  EXPECT_EQ(c.from, "BT");
  ASSERT_TRUE(c.to);
  EXPECT_EQ(*c.to, "HWMMU");
}

TEST_F(ModeSwitchTest, WhereBt64IsTheOnlyModeTheGuestContinuesUnderIt) {
  // Shanghai without AMD-V under esx-4.0: the seed's BT64 case (segment limits).
  const ModeSwitch c = change(without_hardware("amd-shanghai"), "esx-4.0", bt_guest(), /*shipped=*/true);
  ASSERT_TRUE(c.to);
  EXPECT_EQ(*c.to, "BT64");
  ASSERT_TRUE(c.selection.selected);
  EXPECT_EQ(*c.selection.selected, "BT");
  EXPECT_THAT(c.reason, HasSubstr("continues under BT64"));
  EXPECT_THAT(c.reason, Not(HasSubstr("software checks")));  // this CPU keeps segment limits
  // With AMD-V the hardware mode still takes it (software for as long as possible).
  const ModeSwitch hw = change(cpu("amd-shanghai"), "esx-4.0", bt_guest(), /*shipped=*/true);
  ASSERT_TRUE(hw.to);
  EXPECT_EQ(*hw.to, "HWMMU");
}

TEST_F(ModeSwitchTest, TheLogSaysBt32ToHvAndWhy) {
  api::HostCapabilities host = cpu("intel-nehalem");
  host.nested_paging = false;
  const auto lines = mode_switch_lines(change(host, "default", bt_guest()));
  ASSERT_GE(lines.size(), 3u);
  EXPECT_THAT(lines.front(), HasSubstr("MONITOR MODE: guest entered          : 64-bit mode under BT32"));
  EXPECT_THAT(lines, Contains(HasSubstr("MONITOR MODE: selected               : HV (hv-swmmu")));
  EXPECT_THAT(lines.back(), HasSubstr("MONITOR MODE: switch                 : BT32 -> HV (hv-swmmu "));
  EXPECT_THAT(lines.back(), HasSubstr("switches to hardware virtualization"));
  const auto stop = mode_switch_lines(change(without_hardware("intel-nehalem"), "esx-4.0", bt_guest()));
  EXPECT_THAT(stop.back(), HasSubstr("MONITOR MODE: switch                 : none, the VM stops under BT32: "));
}

TEST_F(ModeSwitchTest, TheSelectorIsPureTheSameInputsGiveTheSameSwitch) {
  const ModeSwitch a = change(cpu("intel-nehalem"), "default", bt_guest());
  const ModeSwitch b = change(cpu("intel-nehalem"), "default", bt_guest());
  EXPECT_EQ(mode_switch_lines(a), mode_switch_lines(b));
}

TEST(Bt32LongModePolicy, ShippedPoliciesSayWhatHappensWithoutAHardwareMode) {
  EXPECT_EQ(load_policy(find_policy(kConfigs, "default")).bt32_long_mode.otherwise,
            Bt32LongModePolicy::Otherwise::Bt64);
  const Policy esx = load_policy(find_policy(kConfigs, "esx-4.0"));
  EXPECT_EQ(esx.bt32_long_mode.otherwise, Bt32LongModePolicy::Otherwise::Stop);
  EXPECT_THAT(esx.bt32_long_mode.reason, HasSubstr("limited to 32-bit virtual machines"));
}

TEST(Bt32LongModePolicy, AnUnknownChoiceIsBadInputNamingWhere) {
  const auto dir = std::filesystem::temp_directory_path() / ("bt32-policy-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "bad.yaml";
  {
    std::ofstream out(file);
    out << "name: bad\nmodes:\n  BT:\n    - bits: [32]\npreferences:\n  - order: [BT, HV, HWMMU]\n"
           "bt32_long_mode:\n  otherwise: emulate\n";
  }
  try {
    load_policy_checked(file, nullptr);
    ADD_FAILURE() << "accepted otherwise: emulate";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("bad.yaml:8"));
    EXPECT_THAT(e.what(), HasSubstr("unknown bt32_long_mode.otherwise 'emulate' (expected stop or bt64)"));
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace modevisor::host
