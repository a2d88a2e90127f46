#include "config/host_config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <climits>

#include "config_test_support.hpp"

namespace modevisor::host {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::expect_input_error;
using testing::ScopedEnv;
using testing::TempDir;

const std::filesystem::path kSourceDir = MODEVISOR_SOURCE_DIR;

class HostConfigTest : public ::testing::Test {
 protected:
  HostConfig load(const std::string& yaml) { return load_host_config(dir_.write("hosts/host.yaml", yaml)); }
  InputError load_error(const std::string& yaml) {
    return expect_input_error([&] { load(yaml); });
  }
  std::filesystem::path hosts() const { return dir_.path() / "hosts"; }

  TempDir dir_;
};

TEST(DefaultHostConfigTest, UsesTheBuildTreeAndTheWorkingDirectory) {
  const HostConfig config = default_host_config();
  EXPECT_TRUE(config.file.empty());
  std::array<char, HOST_NAME_MAX + 1> hostname{};
  ASSERT_EQ(gethostname(hostname.data(), hostname.size() - 1), 0);
  EXPECT_EQ(config.name, hostname.data());
  EXPECT_THAT(config.plugin_dirs, ElementsAre(std::filesystem::path(MODEVISOR_BINARY_DIR) / "plugins"));
  EXPECT_EQ(config.log_dir, std::filesystem::current_path() / "logs");
  EXPECT_EQ(config.log_level, "info");
  EXPECT_EQ(config.policy, "default");
  EXPECT_FALSE(config.cpu_profile.has_value());
  EXPECT_FALSE(config.kvm_nested_paging.has_value());
  EXPECT_TRUE(config.mask.empty());
}

TEST_F(HostConfigTest, KeysLeftOutKeepTheDefaults) {
  const HostConfig config = load("name: bare\n");
  const HostConfig defaults = default_host_config();
  EXPECT_EQ(config.name, "bare");
  EXPECT_EQ(config.file, hosts() / "host.yaml");
  EXPECT_EQ(config.plugin_dirs, defaults.plugin_dirs);
  EXPECT_EQ(config.log_dir, defaults.log_dir);
  EXPECT_EQ(config.log_level, "info");
  EXPECT_EQ(config.policy, "default");
  EXPECT_FALSE(config.kvm_nested_paging.has_value());
}

TEST_F(HostConfigTest, EveryKeySet) {
  std::filesystem::create_directories(hosts() / "plugins");
  std::filesystem::create_directories(dir_.path() / "more-plugins");
  const HostConfig config = load(R"(name: lab-7
plugin_dirs: [plugins, ../more-plugins]
log_dir: ../logs
log_level: debug
policy: esx-4.0
cpu_profile: amd-genoa
kvm:
  nested_paging: false
mask: [nested_paging, long_mode]
)");
  EXPECT_EQ(config.name, "lab-7");
  EXPECT_THAT(config.plugin_dirs, ElementsAre(hosts() / "plugins", dir_.path() / "more-plugins"));
  EXPECT_EQ(config.log_dir, dir_.path() / "logs");
  EXPECT_EQ(config.log_level, "debug");
  EXPECT_EQ(config.policy, "esx-4.0");
  EXPECT_EQ(config.cpu_profile, "amd-genoa");
  EXPECT_EQ(config.kvm_nested_paging, false);
  EXPECT_THAT(config.mask, ElementsAre("nested_paging", "long_mode"));
}

TEST_F(HostConfigTest, KvmNestedPagingTrue) {
  EXPECT_EQ(load("kvm: {nested_paging: true}\n").kvm_nested_paging, true);
}

TEST_F(HostConfigTest, EmptyMaskAndPluginListAreAllowed) {
  const HostConfig config = load("plugin_dirs: []\nmask: []\n");
  EXPECT_TRUE(config.plugin_dirs.empty());
  EXPECT_TRUE(config.mask.empty());
}

TEST_F(HostConfigTest, PathsExpandEnvironmentVariables) {
  std::filesystem::create_directories(dir_.path() / "build/plugins");
  const ScopedEnv env("MODEVISOR_TEST_BUILD", (dir_.path() / "build").string());
  const HostConfig config = load("plugin_dirs:\n  - ${MODEVISOR_TEST_BUILD}/plugins\nlog_dir: ${MODEVISOR_TEST_BUILD}/logs\n");
  EXPECT_THAT(config.plugin_dirs, ElementsAre(dir_.path() / "build/plugins"));
  EXPECT_EQ(config.log_dir, dir_.path() / "build/logs");
}

TEST_F(HostConfigTest, PolicyAndProfilePathsResolveAgainstTheFileButNamesStayNames) {
  const HostConfig by_path = load("policy: policies/mine.yaml\ncpu_profile: ../profiles/box.yaml\n");
  EXPECT_EQ(by_path.policy, (hosts() / "policies/mine.yaml").string());
  EXPECT_EQ(by_path.cpu_profile, (dir_.path() / "profiles/box.yaml").string());
  const HostConfig by_name = load("policy: esx-3.5\ncpu_profile: intel-nehalem\n");
  EXPECT_EQ(by_name.policy, "esx-3.5");
  EXPECT_EQ(by_name.cpu_profile, "intel-nehalem");
}

TEST_F(HostConfigTest, MissingPluginDirIsAnErrorWithItsAbsolutePath) {
  std::filesystem::create_directories(hosts() / "plugins");
  EXPECT_ERROR_AT(load_error("name: x\nplugin_dirs:\n  - plugins\n  - nowhere\n"), 4, 5,
                  "plugin directory '" + (hosts() / "nowhere").string() + "' does not exist");
}

TEST_F(HostConfigTest, PluginDirThatIsAFileIsAnError) {
  dir_.write("hosts/file", "x");
  EXPECT_ERROR_AT(load_error("plugin_dirs: [file]\n"), 1, 15, "not a directory");
}

TEST_F(HostConfigTest, UndefinedVariableInPluginDir) {
  const ScopedEnv env("MODEVISOR_TEST_UNSET", std::nullopt);
  EXPECT_ERROR_AT(load_error("plugin_dirs:\n  - ${MODEVISOR_TEST_UNSET}/plugins\n"), 2, 5,
                  "environment variable 'MODEVISOR_TEST_UNSET' is not defined");
}

TEST_F(HostConfigTest, UnknownKeysAreListed) {
  const InputError e = load_error("name: x\nplugins: [a]\n");
  EXPECT_ERROR_AT(e, 2, 1, "unknown key 'plugins'");
  EXPECT_THAT(e.message(), HasSubstr("name, plugin_dirs, log_dir, log_level, policy, cpu_profile, kvm, mask"));
  EXPECT_ERROR_AT(load_error("kvm:\n  npt: false\n"), 2, 3, "unknown key 'npt' (expected one of: nested_paging)");
}

TEST_F(HostConfigTest, BadValuesAndTypes) {
  EXPECT_ERROR_AT(load_error("log_level: verbose\n"), 1, 12,
                  "expected a log level (trace, debug, info, warn or error), found 'verbose'");
  EXPECT_ERROR_AT(load_error("plugin_dirs: plugins\n"), 1, 14, "expected a list of plugin directories");
  EXPECT_ERROR_AT(load_error("mask: nested_paging\n"), 1, 7, "expected a list of capability names");
  EXPECT_ERROR_AT(load_error("mask: [nested_paging, [x]]\n"), 1, 23, "expected capability names, found a list");
  EXPECT_ERROR_AT(load_error("kvm: false\n"), 1, 6, "expected a map with nested_paging");
  EXPECT_ERROR_AT(load_error("kvm:\n  nested_paging: 0\n"), 2, 18, "expected true or false, found '0'");
  EXPECT_ERROR_AT(load_error("name: {a: b}\n"), 1, 7, "expected a host name, found a map");
  EXPECT_ERROR_AT(load_error("- name: x\n"), 1, 1, "expected a host configuration");
}

TEST_F(HostConfigTest, MissingAndEmptyKeys) {
  // A missing key is reported where its map starts.
  EXPECT_ERROR_AT(load_error("name: x\nkvm:\n  {}\n"), 3, 3, "missing required key 'nested_paging'");
  EXPECT_ERROR_AT(load_error("name: x\nlog_dir:\npolicy: default\n"), 2, 1, "key 'log_dir' has no value");
}

TEST_F(HostConfigTest, DuplicateKey) {
  EXPECT_ERROR_AT(load_error("policy: a\nname: x\npolicy: b\n"), 3, 1, "key 'policy' appears twice");
}

TEST_F(HostConfigTest, EveryShippedHostLoads) {
  const ScopedEnv env("MODEVISOR_PLUGIN_DIR", dir_.path().string());
  int loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kSourceDir / "configs/hosts")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    HostConfig config;
    ASSERT_NO_THROW(config = load_host_config(entry.path()));
    EXPECT_EQ(config.name, entry.path().stem().string()) << "a host's name should match its file";
    ++loaded;
  }
  EXPECT_GE(loaded, 4);
}

TEST_F(HostConfigTest, ShippedHostsSayWhatTheirCommentsPromise) {
  const ScopedEnv env("MODEVISOR_PLUGIN_DIR", dir_.path().string());
  const auto dir = kSourceDir / "configs/hosts";

  const HostConfig local = load_host_config(dir / "local.yaml");
  EXPECT_THAT(local.plugin_dirs, ElementsAre(dir_.path()));
  EXPECT_EQ(local.log_dir, kSourceDir / "logs");  // ignored by git
  EXPECT_EQ(local.policy, "default");
  EXPECT_FALSE(local.cpu_profile.has_value());

  const HostConfig esx = load_host_config(dir / "esx40-shanghai.yaml");
  EXPECT_EQ(esx.cpu_profile, "amd-shanghai");
  EXPECT_EQ(esx.policy, "esx-4.0");
  EXPECT_FALSE(esx.kvm_nested_paging.has_value());

  const HostConfig kvm = load_host_config(dir / "kvm-npt0-epyc.yaml");
  EXPECT_EQ(kvm.cpu_profile, "amd-genoa");
  EXPECT_EQ(kvm.kvm_nested_paging, false);

  EXPECT_THAT(load_host_config(dir / "evc-masked.yaml").mask, ElementsAre("nested_paging"));
}

}  // namespace
}  // namespace modevisor::host
