// End-to-end: the modevisor binary as an operator runs it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

const fs::path kSource = MODEVISOR_SOURCE_DIR;
const fs::path kBinary = fs::path(MODEVISOR_BINARY_DIR) / "bin" / "modevisor";

struct Result {
  int status = -1;
  std::string out;  // stdout and stderr together
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_dir_ = fs::temp_directory_path() / ("modevisor-cli-" + std::to_string(::getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(log_dir_);
  }
  void TearDown() override { fs::remove_all(log_dir_); }

  Result run(const std::string& args) const {
    const std::string command = "cd " + kSource.string() + " && " + kBinary.string() + " --log-dir " +
                                log_dir_.string() + " " + args + " 2>&1";
    Result result;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) return result;
    std::array<char, 4096> buffer{};
    while (std::fgets(buffer.data(), buffer.size(), pipe)) result.out += buffer.data();
    int raw = ::pclose(pipe);
    result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return result;
  }

  std::string read_log(const std::string& name) const {
    std::ifstream in(log_dir_ / name);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  fs::path log_dir_;
};

// The seed's VM has one vCPU here: ESX's BT ran SMP guests, bt-swmmu does not
// (configs/vms/seed-linux-64.yaml says so; the next test shows the 2-vCPU VM).
TEST_F(CliTest, ExplainReproducesTheSeedsEsx40ShanghaiExample) {
  Result r = run("explain configs/vms/seed-linux-64.yaml --cpu amd-shanghai --policy esx-4.0");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("MONITOR MODE: allowed modes          : BT HV HWMMU\n"));
  EXPECT_THAT(r.out, HasSubstr("MONITOR MODE: selected               : HWMMU (hv-hwmmu 0.1.0)\n"));
}

TEST_F(CliTest, ExplainOfAnSmpVmSaysWhyBtIsNotAllowed) {
  Result r = run("explain configs/vms/nested-hint-64.yaml --cpu amd-shanghai --policy esx-4.0");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("MONITOR MODE: allowed modes          : HV HWMMU\n"));
  EXPECT_THAT(r.out, HasSubstr("MONITOR MODE: not allowed            : BT (bt-swmmu runs only VMs with one vCPU; "
                               "this VM has 4)\n"));
  EXPECT_THAT(r.out, HasSubstr("MONITOR MODE: selected               : HWMMU (hv-hwmmu 0.1.0)\n"));
  Result two = run("explain configs/vms/linux-64.yaml --cpu amd-shanghai --policy esx-4.0");
  EXPECT_THAT(two.out, HasSubstr("BT (bt-swmmu runs only VMs with one vCPU; this VM has 2)"));
}

TEST_F(CliTest, PluginsShowsBtsVcpuLimit) {
  Result r = run("plugins --json");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const auto& p : nlohmann::json::parse(r.out)["plugins"]) {
    const bool bt = p["name"] == "bt-swmmu";
    EXPECT_EQ(p["max_vcpus"], bt ? 1 : 0) << p.dump();
    // Supported guests are data: a list of words.
    ASSERT_TRUE(p["guests"].is_array()) << p.dump();
    EXPECT_THAT(p["guests"], ::testing::Contains("32-bit")) << p.dump();
  }
}

TEST_F(CliTest, ExplainReproducesTheSeedsLogExample) {
  Result r = run("explain configs/vms/bt-requested-32.yaml --cpu amd-shanghai --policy esx-4.0");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("MONITOR MODE: allowed modes          : BT HV HWMMU\n"
                               "MONITOR MODE: user requested modes   : BT\n"
                               "MONITOR MODE: guestOS preferred modes: BT HWMMU HV\n"
                               "MONITOR MODE: filtered list          : BT\n"
                               "MONITOR MODE: selected               : BT (bt-swmmu 0.1.0)\n"));
}

// "No mode" is 8: every status of the host is even, the guest's own is odd.
TEST_F(CliTest, ExplainExitsEightWhenNoModeCanRunTheVm) {
  Result r = run("explain configs/vms/os2.yaml --cpu amd-opteron-revc --policy esx-4.0");
  EXPECT_EQ(r.status, 8) << r.out;
  EXPECT_THAT(r.out, HasSubstr("selected               : none"));
}

TEST_F(CliTest, ExplainJsonIsMachineReadable) {
  Result r = run("explain configs/vms/linux-64.yaml --cpu intel-nehalem --policy esx-3.5 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["selected"], "HV");
  EXPECT_EQ(j["plugin"]["name"], "hv-swmmu");
}

TEST_F(CliTest, BadYamlExitsTwoNamingFileLineAndColumn) {
  fs::create_directories(log_dir_);
  const fs::path bad = log_dir_ / "bad.yaml";
  std::ofstream(bad) << "name: bad\nguest:\n  os: linux-64\n  kernal: x\nmemory: 1GiB\n";
  Result r = run("explain " + bad.string());
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr(bad.string() + ":4:3:"));
  EXPECT_THAT(r.out, HasSubstr("kernal"));
}

TEST_F(CliTest, UnknownCpuProfileAndPolicyAreBadInput) {
  EXPECT_EQ(run("explain configs/vms/linux-64.yaml --cpu intel-8086").status, 2);
  Result r = run("explain configs/vms/linux-64.yaml --policy esx-9");
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.out, HasSubstr("esx-4.0"));  // lists the known ones
}

TEST_F(CliTest, PluginsListsTheThreeModesAndWhetherThisHostRunsThem) {
  Result r = run("plugins --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["plugins"].size(), 3u);
  for (const auto& p : j["plugins"]) {
    EXPECT_EQ(p["abi_version"], 5);  // kAbiVersion
    if (!p["runs_here"].get<bool>()) EXPECT_FALSE(p["why_not"].empty()) << p.dump();
  }
}

TEST_F(CliTest, PluginsOnADescribedKvmHostWithNestedPagingOffSaysWhyHwMmuCannotRun) {
  Result r = run("--host-config configs/hosts/kvm-npt0-epyc.yaml plugins");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("npt"));
}

TEST_F(CliTest, HostConfigMaskHidesNestedPagingLikeEvc) {
  Result masked = run("--host-config configs/hosts/evc-masked.yaml explain configs/vms/linux-64.yaml --cpu intel-nehalem");
  EXPECT_EQ(masked.status, 0) << masked.out;
  EXPECT_THAT(masked.out, HasSubstr("not allowed            : HWMMU"));
  EXPECT_THAT(masked.out, HasSubstr("masked by host configuration"));
  EXPECT_THAT(masked.out, HasSubstr("selected               : HV (hv-swmmu"));
  Result unmasked = run("explain configs/vms/linux-64.yaml --cpu intel-nehalem");
  EXPECT_THAT(unmasked.out, HasSubstr("selected               : HWMMU (hv-hwmmu"));
}

TEST_F(CliTest, HostJsonDescribesTheDriver) {
  Result r = run("host --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j.contains("driver"));
  if (!j["driver"]["usable"].get<bool>()) EXPECT_FALSE(j["driver"]["detail"].get<std::string>().empty());
}

TEST_F(CliTest, RunBootsTheGuestUnderTheSelectedModeAndReturnsItsExitStatus) {
  Result r = run("run configs/vms/hello-32.yaml");
  // hello writes 0 to the debug-exit port: QEMU's convention makes that (0 << 1) | 1.
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("hello from hello"));
  const std::string log = read_log("hello-32.log");
  EXPECT_THAT(log, HasSubstr("MONITOR MODE: allowed modes"));
  EXPECT_THAT(log, HasSubstr("MONITOR MODE: selected"));
  EXPECT_THAT(log, HasSubstr("console| hello from hello"));
  EXPECT_THAT(log, HasSubstr("power off: guest-exit"));
}

TEST_F(CliTest, AnUnwritableLogDirectoryIsABadInputNotACrash) {
  std::ofstream(log_dir_) << "a file where the log directory should be\n";
  Result r = run("run configs/vms/hello-32.yaml");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("cannot write the VM log"));
  EXPECT_THAT(r.out, HasSubstr("hello-32.log"));
  fs::remove(log_dir_);
}

TEST_F(CliTest, TheLinuxGuestNeedsA64BitModeAndSaysSoWhereThereIsNone) {
  if (!fs::exists(fs::path(MODEVISOR_BINARY_DIR) / "guests/busybox-initramfs.cpio.gz"))
    GTEST_SKIP() << "the Linux guest is not built (needs linux-image-amd64 and busybox-static)";
  Result host = run("--json host");
  const auto j = nlohmann::json::parse(host.out.substr(host.out.find('{')));
  if (j["driver"]["usable"].get<bool>()) GTEST_SKIP() << "this host has a usable KVM: the HV modes run it";
  Result r = run("run configs/vms/linux-busybox.yaml");
  EXPECT_EQ(r.status, 8) << r.out;  // no mode: BT here runs 32-bit guests only
  EXPECT_THAT(read_log("linux-busybox.log"), HasSubstr("MONITOR MODE: not allowed"));
}

TEST_F(CliTest, EveryExample32BitVmRunsToItsPassLine) {
  for (const char* vm : {"hello-32", "bt-requested-32", "os2", "windows-xp-32", "procs-32", "portable-32"}) {
    Result r = run(std::string("run configs/vms/") + vm + ".yaml");
    EXPECT_EQ(r.status, 1) << vm << ":\n" << r.out;
    EXPECT_THAT(r.out, HasSubstr("RESULT: PASS")) << vm;
  }
}

TEST_F(CliTest, ATripleFaultingGuestStopsWithARegisterDumpAndTheHostGoesOn) {
  fs::create_directories(log_dir_);
  const fs::path vm = log_dir_ / "triple.yaml";
  std::ofstream(vm) << "name: triple\nguest:\n  os: other-32\n  kernel: " << MODEVISOR_BINARY_DIR
                    << "/guests/triple.elf\nmemory: 16MiB\n";
  Result r = run("run " + vm.string());
  EXPECT_EQ(r.status, 6) << r.out;
  EXPECT_THAT(r.out, HasSubstr("triple: loading an empty IDT"));
  EXPECT_THAT(r.out, Not(HasSubstr("still running")));
  const std::string log = read_log("triple.log");
  EXPECT_THAT(log, HasSubstr("power off: shutdown"));
  EXPECT_THAT(log, ::testing::ContainsRegex("(EIP|eip|RIP|rip)=[0-9a-f]+"));  // the register dump
  // The host goes on: the next VM runs normally.
  EXPECT_EQ(run("run configs/vms/hello-32.yaml").status, 1);
}

TEST_F(CliTest, RunJsonCarriesConsoleCountersAndExitStatus) {
  Result r = run("--json run configs/vms/hello-32.yaml --stats");
  ASSERT_EQ(r.status, 1) << r.out;
  auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(j["result"], "guest-exit");
  EXPECT_EQ(j["exit_status"], 1);
  EXPECT_THAT(j["console"].get<std::string>(), HasSubstr("RESULT: PASS"));
  EXPECT_FALSE(j["counters"].empty());
}

TEST_F(CliTest, RunOfAVmNoModeCanRunExitsEightAndSaysWhy) {
  auto host = nlohmann::json::parse(run("host --json").out);
  if (host["usable"]["hardware_execution"].get<bool>() || host["long_mode_segment_limits"].get<bool>())
    GTEST_SKIP() << "this host can run 64-bit guests";
  Result r = run("run configs/vms/linux-64.yaml");
  EXPECT_EQ(r.status, 8) << r.out;
  EXPECT_THAT(r.out, HasSubstr("no monitor mode can run it here"));
  EXPECT_THAT(read_log("linux-64.log"), HasSubstr("power on failed"));
}

TEST_F(CliTest, RunRefusesAHostConfigurationThatDescribesAnotherHost) {
  Result r = run("--host-config configs/hosts/esx40-shanghai.yaml run configs/vms/hello-32.yaml");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("describes another host"));
}

}  // namespace
