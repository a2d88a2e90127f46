// The plugin registry against the real plugins and the broken fixtures of
// tests/plugins/, and host_problems() against hand-built hosts.
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/dll/shared_library.hpp>

#include "platform/guest_ram.hpp"
#include "platform/machine.hpp"
#include "plugins/registry.hpp"

namespace modevisor::host {
namespace {

namespace fs = std::filesystem;
using api::CpuVendor;
using api::HostCapabilities;
using api::MmuSelection;
using api::Technique;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

const fs::path kRealPlugins = MODEVISOR_DEFAULT_PLUGIN_DIR;
const fs::path kFixtures = MODEVISOR_TEST_PLUGIN_DIR;

std::vector<std::string> names_of(const PluginRegistry& registry) {
  std::vector<std::string> names;
  for (const auto& p : registry.plugins()) names.push_back(p->descriptor.name);
  return names;
}

PluginRegistry scanned(std::vector<fs::path> directories) {
  PluginRegistry registry(std::move(directories));
  registry.rescan();
  return registry;
}

// ---------------------------------------------------------------------------
// The real plugins

TEST(PluginRegistryReal, LoadsTheThreeModesWithTheirDescriptors) {
  auto registry = scanned({kRealPlugins});
  EXPECT_THAT(registry.problems(), IsEmpty());
  // Listed in file-name order.
  ASSERT_THAT(names_of(registry), ElementsAre("bt-swmmu", "hv-hwmmu", "hv-swmmu"));

  const LoadedPlugin* bt = registry.find("bt-swmmu");
  ASSERT_NE(bt, nullptr);
  EXPECT_EQ(bt->file, kRealPlugins / "bt-swmmu.so");
  EXPECT_EQ(bt->mode, "BT");
  EXPECT_EQ(bt->descriptor.log_token, "BT");
  EXPECT_EQ(bt->descriptor.execution, Technique::Software);
  EXPECT_EQ(bt->descriptor.mmu, Technique::Software);
  EXPECT_TRUE(bt->descriptor.deterministic);
  EXPECT_FALSE(bt->descriptor.host.hardware_virtualization);
  EXPECT_TRUE(bt->descriptor.guests.bits32);
  EXPECT_TRUE(bt->descriptor.guests.bits64);  // BT64
  EXPECT_FALSE(bt->descriptor.guests.bits64_needs_segment_limits);  // its software checks

  const LoadedPlugin* hv = registry.find("hv-swmmu");
  ASSERT_NE(hv, nullptr);
  EXPECT_EQ(hv->mode, "HV");
  EXPECT_EQ(hv->descriptor.log_token, "HV");
  EXPECT_EQ(hv->descriptor.execution, Technique::Hardware);
  EXPECT_EQ(hv->descriptor.mmu, Technique::Software);
  EXPECT_TRUE(hv->descriptor.deterministic);
  EXPECT_TRUE(hv->descriptor.host.driver_shadow_paging);

  const LoadedPlugin* hw = registry.find("hv-hwmmu");
  ASSERT_NE(hw, nullptr);
  EXPECT_EQ(hw->mode, "HWMMU");
  EXPECT_EQ(hw->descriptor.log_token, "HWMMU");
  EXPECT_EQ(hw->descriptor.execution, Technique::Hardware);
  EXPECT_EQ(hw->descriptor.mmu, Technique::Hardware);
  EXPECT_FALSE(hw->descriptor.deterministic);
  EXPECT_TRUE(hw->descriptor.host.nested_paging);

  for (const auto& plugin : registry.plugins()) {
    EXPECT_EQ(plugin->descriptor.abi_version, api::kAbiVersion) << plugin->descriptor.name;
    EXPECT_NE(plugin->monitor, nullptr) << plugin->descriptor.name;
    EXPECT_NE(plugin->library, nullptr) << plugin->descriptor.name;
  }
  EXPECT_EQ(registry.find("no-such-plugin"), nullptr);
}

// ---------------------------------------------------------------------------
// Broken fixtures: one problem each, naming the file and the reason.

struct BrokenCase {
  std::string dir;
  std::string file;
  std::string reason;          // the whole reason, or
  std::string reason_prefix;   // its beginning (when it quotes dlerror)
};

std::ostream& operator<<(std::ostream& os, const BrokenCase& c) { return os << c.dir; }

class PluginRegistryBroken : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(PluginRegistryBroken, GivesExactlyOneProblemWithFileAndReason) {
  const BrokenCase& c = GetParam();
  auto registry = scanned({kFixtures / c.dir});
  EXPECT_THAT(registry.plugins(), IsEmpty());
  ASSERT_EQ(registry.problems().size(), 1u);
  const PluginProblem& problem = registry.problems().front();
  EXPECT_EQ(problem.file, kFixtures / c.dir / c.file);
  if (!c.reason.empty()) {
    EXPECT_EQ(problem.reason, c.reason);
  }
  if (!c.reason_prefix.empty()) {
    EXPECT_THAT(problem.reason, StartsWith(c.reason_prefix));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, PluginRegistryBroken,
    ::testing::Values(
        BrokenCase{"missing-factory", "test-missing-factory.so",
                   "not a modevisor plugin: no modevisor_plugin_create symbol", ""},
        BrokenCase{"wrong-abi", "test-wrong-abi.so",
                   "ABI version " + std::to_string(api::kAbiVersion + 6) + ", this host speaks " +
                       std::to_string(api::kAbiVersion),
                   ""},
        BrokenCase{"throws-describe", "test-throws-describe.so",
                   "threw while describing itself: describe failed on purpose", ""},
        BrokenCase{"bad-descriptor", "test-bad-descriptor.so",
                   "its descriptor combines software execution with a hardware MMU, which is no monitor mode "
                   "(nested paging exists only with VT-x/AMD-V)",
                   ""},
        BrokenCase{"token-mismatch", "test-token-mismatch.so",
                   "its descriptor's log token 'HWMMU' does not match its mode HV (from its techniques)", ""},
        BrokenCase{"unrelated", "libunrelated.so",
                   "not a modevisor plugin: no modevisor_plugin_abi_version symbol", ""},
        BrokenCase{"not-a-library", "garbage.so", "", "not a loadable shared library: "},
        // Plugin code that would take the host down runs first in a throwaway child.
        BrokenCase{"throws-static-init", "test-throws-static-init.so",
                   "threw while being loaded: static initializer failed on purpose", ""},
        BrokenCase{"exits-while-loading", "test-exits-while-loading.so",
                   "ended the process (exit status 0) while being loaded, described and creating its monitor; "
                   "a plugin must never exit",
                   ""},
        BrokenCase{"dangling-link", "dangling.so",
                   "a dangling symbolic link (-> no-such-plugin.so): its target does not exist", ""}),
    [](const auto& info) {
      std::string name = info.param.dir;
      for (char& ch : name)
        if (ch == '-') ch = '_';
      return name;
    });

TEST(PluginRegistryBroken, NotALibraryQuotesTheDynamicLinker) {
  auto registry = scanned({kFixtures / "not-a-library"});
  ASSERT_EQ(registry.problems().size(), 1u);
  // dlerror() names the file it could not map.
  EXPECT_THAT(registry.problems().front().reason, HasSubstr("garbage.so"));
}

TEST(PluginRegistryBroken, DuplicateNameKeepsTheFirstFile) {
  const fs::path dir = kFixtures / "duplicate-name";
  auto registry = scanned({dir});
  ASSERT_THAT(names_of(registry), ElementsAre("test-good"));
  EXPECT_EQ(registry.plugins().front()->file, dir / "a-test-good.so");
  ASSERT_EQ(registry.problems().size(), 1u);
  EXPECT_EQ(registry.problems().front().file, dir / "b-test-good.so");
  EXPECT_EQ(registry.problems().front().reason,
            "plugin name 'test-good' already provided by " + (dir / "a-test-good.so").string());
}

TEST(PluginRegistryBroken, ThrowingProbeLoadsAndBecomesAHostProblem) {
  auto registry = scanned({kFixtures / "throws-probe"});
  EXPECT_THAT(registry.problems(), IsEmpty());
  const LoadedPlugin* plugin = registry.find("test-throws-probe");
  ASSERT_NE(plugin, nullptr);
  HostCapabilities host;
  host.long_mode = true;
  EXPECT_THAT(host_problems(*plugin, host), ElementsAre("probe threw: probe failed on purpose"));
}

TEST(PluginRegistryBroken, ALoopingLinkIsReportedForEachOfItsNames) {
  auto registry = scanned({kFixtures / "looping-link"});
  std::vector<fs::path> files;
  for (const auto& p : registry.problems()) files.push_back(p.file);
  EXPECT_THAT(files, ElementsAre(kFixtures / "looping-link" / "loop-a.so", kFixtures / "looping-link" / "loop-b.so"));
  ASSERT_EQ(registry.problems().size(), 2u);
  EXPECT_EQ(registry.problems()[0].reason, "a symbolic link loop (-> loop-b.so): it never reaches a file");
  EXPECT_THAT(registry.plugins(), IsEmpty());
}

TEST(PluginRegistryBroken, CrashingProbeLoadsAndBecomesAHostProblem) {
  auto registry = scanned({kFixtures / "crashes-probe"});
  EXPECT_THAT(registry.problems(), IsEmpty());
  const LoadedPlugin* plugin = registry.find("test-crashes-probe");
  ASSERT_NE(plugin, nullptr);
  HostCapabilities host;
  host.long_mode = true;
  // The probe ran in a child that died of it; this process is still here.
  EXPECT_THAT(host_problems(*plugin, host),
              ElementsAre("probe failed: it crashed while probing the host (signal 11 SIGSEGV: a bad memory "
                          "access)"));
  // And again: a crashed probe leaves the plugin usable for the next question.
  EXPECT_EQ(host_problems(*plugin, host).size(), 1u);
}

TEST(PluginRegistryBroken, ProbeReasonsComeBackFromTheChildIntact) {
  auto registry = scanned({kRealPlugins});
  const LoadedPlugin* bt = registry.find("bt-swmmu");
  ASSERT_NE(bt, nullptr);
  HostCapabilities host;  // no long mode: bt-swmmu's probe explains why it cannot run
  const auto direct = bt->monitor->probe(host);
  ASSERT_FALSE(direct.empty());
  EXPECT_THAT(host_problems(*bt, host), ::testing::IsSupersetOf(direct));
}

class NoLog final : public api::Logger {
 public:
  void log(api::LogLevel, std::string_view) override {}
};

TEST(PluginRegistryBroken, AnyExceptionFromCreateVmBecomesAMonitorError) {
  auto registry = scanned({kFixtures / "throws-create-vm"});
  ASSERT_THAT(registry.problems(), IsEmpty());
  const LoadedPlugin* plugin = registry.find("test-throws-create-vm");
  ASSERT_NE(plugin, nullptr);
  GuestRam ram(1 << 20);
  Machine machine;
  NoLog log;
  api::VmSpec spec;
  spec.name = "victim";
  try {
    plugin->monitor->create_vm(spec, api::VmServices{ram, machine, log});
    FAIL() << "create_vm returned";
  } catch (const api::MonitorError& e) {
    EXPECT_STREQ(e.what(),
                 "plugin test-throws-create-vm failed while creating VM 'victim': create_vm failed on purpose");
  }
}

TEST(PluginRegistryBroken, TheHostGoesOnPastEveryBrokenPlugin) {
  std::vector<fs::path> dirs{kRealPlugins};
  for (const char* c : {"bad-descriptor", "duplicate-name", "good", "missing-factory", "not-a-library",
                        "throws-describe", "throws-probe", "token-mismatch", "unrelated", "wrong-abi"})
    dirs.push_back(kFixtures / c);
  dirs.push_back(kFixtures / "no-such-case");

  auto registry = scanned(dirs);
  // duplicate-name comes before good: its first file provides test-good.
  EXPECT_THAT(names_of(registry),
              ElementsAre("bt-swmmu", "hv-hwmmu", "hv-swmmu", "test-good", "test-throws-probe"));
  EXPECT_EQ(registry.find("test-good")->file, kFixtures / "duplicate-name" / "a-test-good.so");

  std::vector<fs::path> problem_files;
  for (const auto& p : registry.problems()) problem_files.push_back(p.file);
  EXPECT_THAT(problem_files,
              ElementsAre(kFixtures / "bad-descriptor" / "test-bad-descriptor.so",
                          kFixtures / "duplicate-name" / "b-test-good.so",
                          kFixtures / "good" / "test-good.so",
                          kFixtures / "missing-factory" / "test-missing-factory.so",
                          kFixtures / "not-a-library" / "garbage.so",
                          kFixtures / "throws-describe" / "test-throws-describe.so",
                          kFixtures / "token-mismatch" / "test-token-mismatch.so",
                          kFixtures / "unrelated" / "libunrelated.so",
                          kFixtures / "wrong-abi" / "test-wrong-abi.so",
                          kFixtures / "no-such-case"));
}

// One scan vets every new file in one child; a plugin that ends that child
// (exit(0) in a static initializer) is blamed alone, and the files after it
// still get their own verdicts from a new child.
TEST(PluginRegistryBroken, AChildEndedByOnePluginDoesNotTakeTheOthersVerdicts) {
  std::vector<fs::path> dirs;
  for (const char* c : {"good", "exits-while-loading", "throws-describe", "throws-static-init", "crashes-probe",
                        "throws-create-vm", "dangling-link", "wrong-abi"})
    dirs.push_back(kFixtures / c);
  auto registry = scanned(dirs);
  EXPECT_THAT(names_of(registry), ElementsAre("test-good", "test-crashes-probe", "test-throws-create-vm"));
  std::vector<std::string> reasons;
  for (const auto& p : registry.problems()) reasons.push_back(p.file.filename().string() + ": " + p.reason);
  EXPECT_THAT(reasons,
              ElementsAre("test-exits-while-loading.so: ended the process (exit status 0) while being loaded, "
                          "described and creating its monitor; a plugin must never exit",
                          "test-throws-describe.so: threw while describing itself: describe failed on purpose",
                          "test-throws-static-init.so: threw while being loaded: static initializer failed on purpose",
                          "dangling.so: a dangling symbolic link (-> no-such-plugin.so): its target does not exist",
                          "test-wrong-abi.so: ABI version " + std::to_string(api::kAbiVersion + 6) +
                              ", this host speaks " + std::to_string(api::kAbiVersion)));
}

TEST(PluginRegistryDirectories, MissingDirectoryIsAProblemForThatPath) {
  const fs::path missing = kFixtures / "no-such-case";
  auto registry = scanned({missing, kFixtures / "good"});
  EXPECT_THAT(names_of(registry), ElementsAre("test-good"));
  ASSERT_EQ(registry.problems().size(), 1u);
  EXPECT_EQ(registry.problems().front().file, missing);
  EXPECT_EQ(registry.problems().front().reason, "plugin directory does not exist");
}

TEST(PluginRegistryDirectories, IgnoresFilesThatAreNotNamedSo) {
  // The build leaves no other files there, so compare with a directory that
  // has a non-.so file next to a plugin.
  const fs::path dir = fs::temp_directory_path() / ("modevisor-registry-ext-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "sub.so");  // a directory named like a plugin
  fs::copy_file(kFixtures / "good" / "test-good.so", dir / "test-good.so.disabled");
  fs::copy_file(kFixtures / "good" / "test-good.so", dir / "test-good.so");
  auto registry = scanned({dir});
  EXPECT_THAT(names_of(registry), ElementsAre("test-good"));
  EXPECT_THAT(registry.problems(), IsEmpty());
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------
// Rescan: files dropped in, removed, replaced; and unloading order.

class PluginRegistryRescan : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("modevisor-registry-" + std::string(info->name()) + "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Put a file in place the way a careful operator does: copy, then rename,
  // so a library the host has mapped is never rewritten in place.
  void drop_in(const fs::path& from, const std::string& name) {
    const fs::path staging = dir_ / (name + ".partial");
    fs::copy_file(from, staging, fs::copy_options::overwrite_existing);
    fs::rename(staging, dir_ / name);
  }

  fs::path dir_;
};

TEST_F(PluginRegistryRescan, PicksUpANewPluginAndDropsARemovedOne) {
  PluginRegistry registry({dir_});
  registry.rescan();
  EXPECT_THAT(registry.plugins(), IsEmpty());
  EXPECT_THAT(registry.problems(), IsEmpty());

  drop_in(kFixtures / "good" / "test-good.so", "test-good.so");
  registry.rescan();
  ASSERT_THAT(names_of(registry), ElementsAre("test-good"));
  const api::Monitor* first_monitor = registry.plugins().front()->monitor.get();

  // An unchanged file keeps its loaded plugin and live monitor.
  registry.rescan();
  ASSERT_THAT(names_of(registry), ElementsAre("test-good"));
  EXPECT_EQ(registry.plugins().front()->monitor.get(), first_monitor);

  fs::remove(dir_ / "test-good.so");
  registry.rescan();
  EXPECT_THAT(registry.plugins(), IsEmpty());
  EXPECT_THAT(registry.problems(), IsEmpty());
}

TEST_F(PluginRegistryRescan, ReloadsAReplacedFile) {
  PluginRegistry registry({dir_});
  drop_in(kFixtures / "good" / "test-good.so", "plugin.so");
  registry.rescan();
  ASSERT_THAT(names_of(registry), ElementsAre("test-good"));

  drop_in(kFixtures / "throws-probe" / "test-throws-probe.so", "plugin.so");
  registry.rescan();
  EXPECT_THAT(names_of(registry), ElementsAre("test-throws-probe"));
  EXPECT_THAT(registry.problems(), IsEmpty());
}

// Each version of a file is loaded from a private copy: a replaced file loads
// afresh at once, and the plugin a VM still holds keeps running its old code.
TEST_F(PluginRegistryRescan, ReplacedFileLoadsAfreshWhileAHeldPluginKeepsItsOldCode) {
  PluginRegistry registry({dir_});
  drop_in(kFixtures / "good" / "test-good.so", "plugin.so");
  registry.rescan();
  ASSERT_THAT(names_of(registry), ElementsAre("test-good"));
  std::shared_ptr<const LoadedPlugin> in_use = registry.share("test-good");
  ASSERT_NE(in_use, nullptr);

  drop_in(kFixtures / "throws-probe" / "test-throws-probe.so", "plugin.so");
  registry.rescan();
  EXPECT_THAT(names_of(registry), ElementsAre("test-throws-probe"));
  EXPECT_THAT(registry.problems(), IsEmpty());
  // The held plugin is the old version, still loaded and callable.
  EXPECT_EQ(in_use->descriptor.name, "test-good");
  EXPECT_THAT(in_use->monitor->probe(HostCapabilities{}), IsEmpty());
}

// A file overwritten in place (not renamed) while its plugin is held: the
// held code is a private copy, so it is not touched.
TEST_F(PluginRegistryRescan, AFileOverwrittenInPlaceDoesNotChangeHeldCode) {
  PluginRegistry registry({dir_});
  drop_in(kFixtures / "good" / "test-good.so", "plugin.so");
  registry.rescan();
  std::shared_ptr<const LoadedPlugin> in_use = registry.share("test-good");
  ASSERT_NE(in_use, nullptr);
  {
    std::ofstream clobber(dir_ / "plugin.so", std::ios::binary | std::ios::trunc);
    clobber << "not a library any more";
  }
  EXPECT_THAT(in_use->monitor->probe(HostCapabilities{}), IsEmpty());
  registry.rescan();
  EXPECT_THAT(registry.plugins(), IsEmpty());
  ASSERT_EQ(registry.problems().size(), 1u);
  EXPECT_THAT(registry.problems().front().reason, HasSubstr("plugin.so"));
  EXPECT_THAT(in_use->monitor->probe(HostCapabilities{}), IsEmpty());
}

TEST_F(PluginRegistryRescan, TwoRegistriesShareOneUnchangedFile) {
  drop_in(kFixtures / "good" / "test-good.so", "test-good.so");
  PluginRegistry first({dir_}), second({dir_});
  first.rescan();
  second.rescan();
  EXPECT_THAT(names_of(first), ElementsAre("test-good"));
  EXPECT_THAT(names_of(second), ElementsAre("test-good"));
  EXPECT_THAT(second.problems(), IsEmpty());
}

TEST_F(PluginRegistryRescan, ProblemsOfAScanReplaceThoseOfTheLast) {
  PluginRegistry registry({dir_});
  drop_in(kFixtures / "wrong-abi" / "test-wrong-abi.so", "broken.so");
  registry.rescan();
  ASSERT_EQ(registry.problems().size(), 1u);
  fs::remove(dir_ / "broken.so");
  registry.rescan();
  EXPECT_THAT(registry.problems(), IsEmpty());
}

TEST_F(PluginRegistryRescan, AKeptPluginWinsANameOverANewFile) {
  PluginRegistry registry({dir_});
  drop_in(kFixtures / "good" / "test-good.so", "z-test-good.so");
  registry.rescan();
  // Sorts first, but arrives later: the plugin already in use keeps the name.
  drop_in(kFixtures / "good" / "test-good.so", "a-test-good.so");
  registry.rescan();
  ASSERT_THAT(names_of(registry), ElementsAre("test-good"));
  EXPECT_EQ(registry.plugins().front()->file, dir_ / "z-test-good.so");
  ASSERT_EQ(registry.problems().size(), 1u);
  EXPECT_EQ(registry.problems().front().file, dir_ / "a-test-good.so");
}

TEST_F(PluginRegistryRescan, MonitorOutlivingTheRegistryKeepsItsLibraryLoaded) {
  drop_in(kFixtures / "good" / "test-good.so", "test-good.so");
  const std::string path = (dir_ / "test-good.so").string();
  std::shared_ptr<api::Monitor> monitor;
  std::weak_ptr<boost::dll::shared_library> library;
  {
    PluginRegistry registry({dir_});
    registry.rescan();
    ASSERT_EQ(registry.plugins().size(), 1u);
    monitor = registry.plugins().front()->monitor;
    library = registry.plugins().front()->library;
  }
  // The registry is gone; the monitor's code must still be mapped.
  EXPECT_FALSE(library.expired());
  const std::string image = library.lock()->location().string();
  void* still_loaded = ::dlopen(image.c_str(), RTLD_NOW | RTLD_NOLOAD);
  EXPECT_NE(still_loaded, nullptr);
  if (still_loaded) ::dlclose(still_loaded);
  EXPECT_THAT(monitor->probe(HostCapabilities{}), IsEmpty());  // calls into the plugin

  monitor.reset();  // destroys the monitor, then releases the last library reference
  EXPECT_TRUE(library.expired());
  EXPECT_EQ(::dlopen(image.c_str(), RTLD_NOW | RTLD_NOLOAD), nullptr) << "the plugin was not unloaded";
}

// ---------------------------------------------------------------------------
// host_problems against hand-built hosts

// A host whose CPU has VT-x/AMD-V and EPT/NPT, with a working KVM.
HostCapabilities kvm_host(CpuVendor vendor, MmuSelection selection, bool nested_paging_enabled) {
  HostCapabilities h;
  h.source = "test";
  h.vendor = vendor;
  h.long_mode = true;
  h.hardware_virtualization = true;
  h.nested_paging = true;
  h.driver.present = true;
  h.driver.usable = true;
  h.driver.name = vendor == CpuVendor::Intel ? "kvm_intel" : "kvm_amd";
  h.driver.mmu_selection = selection;
  h.driver.nested_paging_enabled = nested_paging_enabled;
  h.driver.api_version = 12;
  return h;
}

class HostProblems : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new PluginRegistry({kRealPlugins});
    registry_->rescan();
  }
  static void TearDownTestSuite() {
    delete registry_;
    registry_ = nullptr;
  }
  static const LoadedPlugin& plugin(std::string_view name) {
    const LoadedPlugin* p = registry_->find(name);
    if (!p) throw std::runtime_error("real plugin not loaded: " + std::string(name));
    return *p;
  }
  static PluginRegistry* registry_;
};
PluginRegistry* HostProblems::registry_ = nullptr;

TEST_F(HostProblems, NoVtx) {
  HostCapabilities host;
  host.long_mode = true;
  EXPECT_THAT(host_problems(plugin("hv-hwmmu"), host),
              ElementsAre("needs VT-x/AMD-V: the CPU has none", "needs nested paging (EPT/NPT): the CPU has none"));
  EXPECT_THAT(host_problems(plugin("hv-swmmu"), host), ElementsAre("needs VT-x/AMD-V: the CPU has none"));
  EXPECT_THAT(host_problems(plugin("bt-swmmu"), host), IsEmpty());
}

TEST_F(HostProblems, KvmPvmGivesNoHardwareExecution) {
  HostCapabilities host = kvm_host(CpuVendor::Intel, MmuSelection::HostWide, true);
  host.driver.name = "kvm_pvm";
  host.driver.usable = false;
  host.driver.detail = "kvm_pvm runs guests without VT-x/AMD-V (pvm); load kvm_intel instead";
  const std::string expected = "needs VT-x/AMD-V through KVM: " + host.driver.detail;
  EXPECT_THAT(host_problems(plugin("hv-hwmmu"), host), ElementsAre(expected));
  EXPECT_THAT(host_problems(plugin("hv-swmmu"), host), ElementsAre(expected));
}

TEST_F(HostProblems, NoKvmAtAll) {
  HostCapabilities host = kvm_host(CpuVendor::Amd, MmuSelection::HostWide, true);
  host.driver = {};
  host.driver.mmu_selection = MmuSelection::HostWide;
  EXPECT_THAT(host_problems(plugin("hv-swmmu"), host),
              ElementsAre("needs VT-x/AMD-V through KVM: no KVM driver is present (no /dev/kvm)"));
}

TEST_F(HostProblems, AmdNestedPagingSwitchedOff) {
  const HostCapabilities host = kvm_host(CpuVendor::Amd, MmuSelection::HostWide, false);
  EXPECT_THAT(host_problems(plugin("hv-hwmmu"), host),
              ElementsAre("needs nested paging: KVM runs this host with nested paging switched off (kvm_amd npt=0; "
                          "KVM chooses the MMU for the whole host, not per VM)"));
  EXPECT_THAT(host_problems(plugin("hv-swmmu"), host), IsEmpty());
}

TEST_F(HostProblems, AmdNestedPagingOn) {
  const HostCapabilities host = kvm_host(CpuVendor::Amd, MmuSelection::HostWide, true);
  EXPECT_THAT(host_problems(plugin("hv-swmmu"), host),
              ElementsAre("needs shadow paging in KVM: KVM runs this host with nested paging on (kvm_amd npt=1); "
                          "reload the module with npt=0"));
  EXPECT_THAT(host_problems(plugin("hv-hwmmu"), host), IsEmpty());
}

TEST_F(HostProblems, IntelNamesTheEptParameter) {
  EXPECT_THAT(host_problems(plugin("hv-swmmu"), kvm_host(CpuVendor::Intel, MmuSelection::HostWide, true)),
              ElementsAre("needs shadow paging in KVM: KVM runs this host with nested paging on (kvm_intel ept=1); "
                          "reload the module with ept=0"));
  EXPECT_THAT(host_problems(plugin("hv-hwmmu"), kvm_host(CpuVendor::Intel, MmuSelection::HostWide, false)),
              ElementsAre("needs nested paging: KVM runs this host with nested paging switched off (kvm_intel "
                          "ept=0; KVM chooses the MMU for the whole host, not per VM)"));
}

TEST_F(HostProblems, PerVmDriverRunsBothMmuTechniques) {
  for (bool enabled : {false, true}) {
    HostCapabilities host = kvm_host(CpuVendor::Intel, MmuSelection::PerVm, enabled);
    host.driver.name = "modelled";
    EXPECT_THAT(host_problems(plugin("hv-hwmmu"), host), IsEmpty()) << "nested_paging_enabled=" << enabled;
    EXPECT_THAT(host_problems(plugin("hv-swmmu"), host), IsEmpty()) << "nested_paging_enabled=" << enabled;
  }
}

TEST_F(HostProblems, CpuWithoutNestedPaging) {
  HostCapabilities host = kvm_host(CpuVendor::Intel, MmuSelection::PerVm, false);
  host.driver.name = "modelled";
  host.nested_paging = false;
  EXPECT_THAT(host_problems(plugin("hv-hwmmu"), host),
              ElementsAre("needs nested paging (EPT/NPT): the CPU has none"));
  EXPECT_THAT(host_problems(plugin("hv-swmmu"), host), IsEmpty());
}

TEST_F(HostProblems, ProbeReasonsFollowTheDescriptorOnes) {
  HostCapabilities host;  // no long mode
  EXPECT_THAT(host_problems(plugin("bt-swmmu"), host),
              ElementsAre(HasSubstr("this CPU has no long mode")));
}

// Over every combination of the facts involved, the words agree with the
// API's can_use_* helpers: no reason exactly when the helper says yes.
TEST_F(HostProblems, AgreesWithTheCapabilityHelpers) {
  for (int bits = 0; bits < 64; ++bits) {
    HostCapabilities host = kvm_host(CpuVendor::Amd, MmuSelection::PerVm, false);
    host.hardware_virtualization = bits & 1;
    host.nested_paging = bits & 2;
    host.driver.present = bits & 4;
    host.driver.usable = bits & 8;
    host.driver.mmu_selection = (bits & 16) ? MmuSelection::HostWide : MmuSelection::PerVm;
    host.driver.nested_paging_enabled = bits & 32;
    SCOPED_TRACE("combination " + std::to_string(bits));
    EXPECT_EQ(host_problems(plugin("hv-hwmmu"), host).empty(), api::can_use_nested_paging(host));
    EXPECT_EQ(host_problems(plugin("hv-swmmu"), host).empty(), api::can_use_driver_shadow_paging(host));
    EXPECT_THAT(host_problems(plugin("bt-swmmu"), host), IsEmpty());
  }
}

}  // namespace
}  // namespace modevisor::host
